/*
 * Keeps glibc's malloc from giving large blocks back to the kernel (Node-API addon).
 *
 * A worker allocates and frees hundreds of MB of host memory every step: the
 * weights copied out of each received version, TensorFlow's host tensors made
 * from them, the gradients read back from the GPU (VGG-16: 553 MB each, fc6 alone
 * 411 MB). glibc serves every block over its mmap threshold (at most 32 MB) with
 * a fresh mmap and unmaps it on free, so every step faults in and zeroes all of
 * those pages again: ~185 ms of the ~220 ms a fresh 411 MB copy took on the
 * development box, against ~35 ms for the copy into memory already mapped.
 *
 * mallopt(M_MMAP_MAX, 0) makes the main thread's large blocks come from the heap
 * (a thread's arena still maps what its heap cannot hold), and a trim threshold
 * of 2 GiB keeps freed memory mapped for the next step. The process's resident
 * memory then stays at its peak instead of following each step's allocations.
 * mallopt cannot raise M_MMAP_THRESHOLD past 32 MB (the environment's
 * GLIBC_TUNABLES=glibc.malloc.mmap_threshold can, but only before the process
 * starts).
 *
 * JS: reuseFreedMemory() -> boolean: true when glibc took both settings, false
 * elsewhere (another C library: nothing changed).
 */
#include <limits.h>
#include <node_api.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

static napi_value reuse_freed_memory(napi_env env, napi_callback_info info) {
  (void)info;
  int ok = 0;
#if defined(__GLIBC__)
  ok = mallopt(M_MMAP_MAX, 0) == 1 && mallopt(M_TRIM_THRESHOLD, INT_MAX) == 1;
#endif
  napi_value result;
  napi_get_boolean(env, ok, &result);
  return result;
}

NAPI_MODULE_INIT() {
  napi_value fn;
  napi_create_function(env, "reuseFreedMemory", NAPI_AUTO_LENGTH, reuse_freed_memory, NULL, &fn);
  napi_set_named_property(env, exports, "reuseFreedMemory", fn);
  return exports;
}
