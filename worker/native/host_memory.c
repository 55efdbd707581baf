/*
 * The worker's host memory, as TensorFlow and glibc see it (Node-API addon).
 *
 * reuseFreedMemory() -> boolean: keeps glibc's malloc from giving large blocks
 * back to the kernel. A worker allocates and frees hundreds of MB of host memory
 * every step: TensorFlow's host tensors, the gradients read back from the GPU
 * (VGG-16: 553 MB, fc6 alone 411 MB). glibc serves every block over its mmap
 * threshold (at most 32 MB) with a fresh mmap and unmaps it on free, so every
 * step faults in and zeroes all of those pages again: ~185 ms of the ~220 ms a
 * fresh 411 MB copy took on the development box, against ~35 ms for the copy
 * into memory already mapped. mallopt(M_MMAP_MAX, 0) makes the main thread's
 * large blocks come from the heap (a thread's arena still maps what its heap
 * cannot hold), and a trim threshold of 2 GiB keeps freed memory mapped for the
 * next step. The process's resident memory then stays at its peak instead of
 * following each step's allocations. mallopt cannot raise M_MMAP_THRESHOLD past
 * 32 MB (the environment's GLIBC_TUNABLES=glibc.malloc.mmap_threshold can, but
 * only before the process starts). True when glibc took both settings, false
 * elsewhere (another C library: nothing changed).
 *
 * viewOffset(typedArray) -> number: where the view's first byte lies in its
 * memory page (0..4095), over an ArrayBuffer or a SharedArrayBuffer
 * (napi_get_typedarray_info gives the address of either; the worker's weights
 * versions are shared memory). JavaScript cannot see an address; TensorFlow's
 * TF_NewTensor wraps a host buffer without copying it only when the address is
 * a multiple of EIGEN_MAX_ALIGN_BYTES (16, 32 or 64 by the build's vector
 * width) and copies it otherwise, so the worker places the weights it receives
 * at 64-byte boundaries (worker/host-memory.ts, sharedAlignedFloats).
 */
#include <limits.h>
#include <stdint.h>
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

static napi_value view_offset(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  bool is_view = false;
  void *data = NULL;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1
      || napi_is_typedarray(env, argv[0], &is_view) != napi_ok || !is_view
      || napi_get_typedarray_info(env, argv[0], NULL, NULL, &data, NULL, NULL) != napi_ok) {
    napi_throw_type_error(env, NULL, "viewOffset: expected a typed array");
    return NULL;
  }
  napi_value result;
  napi_create_uint32(env, (uint32_t)((uintptr_t)data & 4095u), &result);
  return result;
}

NAPI_MODULE_INIT() {
  napi_value fn;
  napi_create_function(env, "reuseFreedMemory", NAPI_AUTO_LENGTH, reuse_freed_memory, NULL, &fn);
  napi_set_named_property(env, exports, "reuseFreedMemory", fn);
  napi_create_function(env, "viewOffset", NAPI_AUTO_LENGTH, view_offset, NULL, &fn);
  napi_set_named_property(env, exports, "viewOffset", fn);
  return exports;
}
