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
 *
 * streamCopy(dst, src): src's bytes into the start of dst (typed arrays over
 * ArrayBuffers or SharedArrayBuffers), with non-temporal stores where the CPU
 * has them (x86-64's SSE2). A store to a line not in cache first reads it
 * (read for ownership); a non-temporal store writes the line without reading
 * it and leaves it out of the cache. For the worker's large copies into memory
 * read next only much later (a tensor's gradient into the gradient buffer, a
 * hosted shard's new weights into the weights version; hundreds of MB each
 * step, far beyond any cache) that is one memory stream of three fewer: 69M
 * floats from a cold source 29-34 ms with memcpy against 17-21 here, from a hot
 * 4 MiB chunk 17-23 against 12 (C probe on the development box). Throws a
 * RangeError, copying nothing, where dst is shorter than src; overlapping
 * ranges are copied as memmove copies them.
 *
 * streamDecodeBf16(dst, src) -> boolean: bfloat16 codes (a Uint16Array) to
 * fp32 into the start of dst, with non-temporal stores: 138M floats into a cold
 * version 24-26 ms against 34-37 with plain stores (C probe). False, nothing
 * written, where the ranges overlap.
 *
 * streamPut(dst, src, k) -> boolean: dst[i] = 0 + k * src[i] (src a
 * Float32Array, or a Uint16Array of bfloat16 codes), the first contribution to
 * a range of the aggregator's gradient sum, with non-temporal stores: the sum
 * is read next only at the commit, hundreds of MB later. Operation for
 * operation the SIMD kernels' put and putbf16 (shared/simd.ts): the same
 * floats, bit for bit. False where src holds a NaN or an Inf (dst is written
 * all the same, as the kernels do). 69M floats from a cold source 18 against
 * 24.6 ms with plain stores, from a hot 4 MiB chunk 11.4 against 16.7 (C
 * probe): the store's read for ownership, 4 bytes a float, is gone.
 * Undefined, nothing written, where the ranges overlap; throws, writing
 * nothing, where dst is not a Float32Array at least as long as src.
 *
 * streamPutTwo(dst, a, ka, b, kb[, round]) -> number: dst[i] = (0 + ka * a[i])
 * + kb * b[i], the first two contributions to a range of the gradient sum in
 * one pass with streaming stores (a follower shard's hosting worker's floats,
 * kept out of the sum until another member's come: coordinator/deferred-
 * contributions.ts): operation for operation a put of a and a reduce of b, so
 * bit for bit those two, without the sum's write, read and write between them.
 * b holds floats, or bfloat16 codes; with `round`, a's floats are first rounded
 * to bfloat16 precision as the worker's encode would have sent them (a bf16 run
 * whose hosting worker sends its own range as fp32). Bit 0 of the result: a held
 * a NaN or an Inf (or a float rounded to Inf); bit 1: b did (dst is written all
 * the same). Undefined, nothing written, where dst overlaps a source.
 *
 * encodeBf16(dst, src[, isa]) -> string | undefined: fp32 (a Float32Array) to
 * bfloat16 codes (a Uint16Array), rounded to nearest even, NaN kept NaN
 * (quiet): the rule of shared/half.ts's encodeBf16Scalar, bit for bit, 16
 * lanes at a time with AVX-512BW, 8 with AVX2, chosen once by what the CPU has;
 * undefined, nothing written, on a CPU with neither (the caller's wasm kernel,
 * 4 lanes, is as fast as SSE2 would be). `isa` ('avx512', 'avx2' or 'scalar')
 * for the tests; one the CPU lacks throws. Plain stores: the codes are sent
 * (read) next. Returns the instruction set used. 69M floats from a cold source
 * 16-17 ms against 19-20 with SSE2 (and the wasm kernel in process), from
 * cache 5.1 against 14 (C probe on the development box, an AMD EPYC).
 */
#include <limits.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <node_api.h>
#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#if defined(__x86_64__)
#include <immintrin.h>
#endif
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

/* A typed array: its address, its length in bytes and its element type. */
struct view { uint8_t *data; size_t bytes; napi_typedarray_type type; };

/* v as a view (over an ArrayBuffer or a SharedArrayBuffer); 0 where v is not a typed array. */
static int view_of(napi_env env, napi_value v, struct view *out) {
  bool is_view = false;
  size_t length = 0;
  void *p = NULL;
  if (napi_is_typedarray(env, v, &is_view) != napi_ok || !is_view
      || napi_get_typedarray_info(env, v, &out->type, &length, &p, NULL, NULL) != napi_ok) return 0;
  static const size_t width[] = { 1, 1, 1, 2, 2, 4, 4, 4, 8, 8, 8 };
  out->data = (uint8_t *)p;
  out->bytes = length * ((size_t)out->type < sizeof width / sizeof width[0] ? width[out->type] : 1);
  return 1;
}

static napi_value view_offset(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  struct view v;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 1 || !view_of(env, argv[0], &v)) {
    napi_throw_type_error(env, NULL, "viewOffset: expected a typed array");
    return NULL;
  }
  napi_value result;
  napi_create_uint32(env, (uint32_t)((uintptr_t)v.data & 4095u), &result);
  return result;
}

static void stream_bytes(uint8_t *dst, const uint8_t *src, size_t n) {
#if defined(__SSE2__)
  size_t head = (16 - ((uintptr_t)dst & 15u)) & 15u;
  if (head > n) head = n;
  memcpy(dst, src, head);
  dst += head;
  src += head;
  n -= head;
  size_t i = 0;
  for (; i + 64 <= n; i += 64) {
    __m128i a = _mm_loadu_si128((const __m128i *)(src + i));
    __m128i b = _mm_loadu_si128((const __m128i *)(src + i + 16));
    __m128i c = _mm_loadu_si128((const __m128i *)(src + i + 32));
    __m128i d = _mm_loadu_si128((const __m128i *)(src + i + 48));
    _mm_stream_si128((__m128i *)(dst + i), a);
    _mm_stream_si128((__m128i *)(dst + i + 16), b);
    _mm_stream_si128((__m128i *)(dst + i + 32), c);
    _mm_stream_si128((__m128i *)(dst + i + 48), d);
  }
  memcpy(dst + i, src + i, n - i);
  _mm_sfence();
#else
  memcpy(dst, src, n);
#endif
}

/* The call's first two arguments (dst, src) as views and, in `rest`, up to `more` after them (undefined where not
 * given; `given`: how many arguments came); 0 where the first two are not typed arrays. */
static int two_views(napi_env env, napi_callback_info info, struct view *dst, struct view *src, napi_value *rest, size_t more, size_t *given) {
  napi_value argv[4];
  size_t argc = 2 + more;
  if (more > 2 || napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 2) return 0;
  for (size_t i = 0; i < more; i += 1) rest[i] = argv[2 + i];
  if (given != NULL) *given = argc;
  return view_of(env, argv[0], dst) && view_of(env, argv[1], src);
}

static napi_value stream_copy(napi_env env, napi_callback_info info) {
  struct view d, s;
  if (!two_views(env, info, &d, &s, NULL, 0, NULL)) {
    napi_throw_type_error(env, NULL, "streamCopy: expected (dst, src) typed arrays");
    return NULL;
  }
  uint8_t *dst = d.data, *src = s.data;
  size_t src_bytes = s.bytes;
  if (d.bytes < src_bytes) {
    napi_throw_range_error(env, NULL, "streamCopy: expected a destination at least as long as the source");
    return NULL;
  }
  // Overlapping ranges (two views of one memory) are copied as memmove does.
  if (dst < src + src_bytes && src < dst + src_bytes) memmove(dst, src, src_bytes);
  else stream_bytes(dst, src, src_bytes);
  return NULL;
}

/* bfloat16 codes to fp32 (a code is the float's top 16 bits) with streaming stores: the weights version a worker
 * decodes into is far beyond any cache, as in streamCopy. */
static void stream_bf16(uint32_t *dst, const uint16_t *src, size_t n) {
  size_t i = 0;
#if defined(__SSE2__)
  for (; i < n && ((uintptr_t)(dst + i) & 15u) != 0; i += 1) dst[i] = (uint32_t)src[i] << 16;
  const __m128i zero = _mm_setzero_si128();
  for (; i + 8 <= n; i += 8) {
    __m128i c = _mm_loadu_si128((const __m128i *)(src + i));
    _mm_stream_si128((__m128i *)(dst + i), _mm_unpacklo_epi16(zero, c));
    _mm_stream_si128((__m128i *)(dst + i + 4), _mm_unpackhi_epi16(zero, c));
  }
  _mm_sfence();
#endif
  for (; i < n; i += 1) dst[i] = (uint32_t)src[i] << 16;
}

static napi_value stream_decode_bf16(napi_env env, napi_callback_info info) {
  struct view d, s;
  if (!two_views(env, info, &d, &s, NULL, 0, NULL) || ((uintptr_t)d.data & 3u) != 0 || ((uintptr_t)s.data & 1u) != 0) {
    napi_throw_type_error(env, NULL, "streamDecodeBf16: expected (dst Float32Array, src Uint16Array)");
    return NULL;
  }
  uint8_t *dst = d.data, *src = s.data;
  size_t src_bytes = s.bytes;
  size_t n = src_bytes / 2;
  if (d.bytes < 4 * n) {
    napi_throw_range_error(env, NULL, "streamDecodeBf16: expected a destination of at least twice the codes' bytes");
    return NULL;
  }
  napi_value done;
  // Overlapping ranges: not decoded here (false); the caller decodes them its own way.
  bool overlap = dst < src + src_bytes && src < dst + 4 * n;
  if (!overlap) stream_bf16((uint32_t *)dst, (const uint16_t *)src, n);
  napi_get_boolean(env, !overlap, &done);
  return done;
}

static inline float f32_of_code(uint16_t c) {
  uint32_t u = (uint32_t)c << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}

/* src[i] as a float: src holds floats, or (`codes`) bfloat16 codes. */
static inline float value_at(const void *src, bool codes, size_t i) {
  return codes ? f32_of_code(((const uint16_t *)src)[i]) : ((const float *)src)[i];
}

#if defined(__SSE2__)
/* src[i..i+4) as floats, as value_at (codes widened: each code the top half of its lane). */
static inline __m128 values4_at(const void *src, bool codes, size_t i) {
  return codes ? _mm_castsi128_ps(_mm_unpacklo_epi16(_mm_setzero_si128(), _mm_loadl_epi64((const __m128i *)((const uint16_t *)src + i))))
    : _mm_loadu_ps((const float *)src + i);
}
#endif

/* The bits of x rounded to nearest even at bit 16 (bfloat16's precision), before the low half is dropped. */
static inline uint32_t bf16_rne(uint32_t x) {
  return x + 0x7fffu + ((x >> 16) & 1u);
}

/* dst = 0 + k g and the probe p += g * 0 (NaN once a g is NaN or Inf) as the wasm kernels compute them (a multiply,
 * then an add: no fused multiply-add), 4 lanes at a time with streaming stores from dst's first 16-byte boundary;
 * src holds floats, or bfloat16 codes with `codes` (a constant at each call: the loops are specialized). */
static inline __attribute__((always_inline)) bool put_scaled(float *dst, const void *src, bool codes, size_t n, float k) {
  float probe = 0.0f;
  size_t i = 0;
#if defined(__SSE2__)
  for (; i < n && ((uintptr_t)(dst + i) & 15u) != 0; i += 1) {
    float g = value_at(src, codes, i);
    dst[i] = 0.0f + k * g;
    probe += g * 0.0f;
  }
  const __m128 kv = _mm_set1_ps(k), zero = _mm_setzero_ps();
  __m128 p = zero;
  for (; i + 4 <= n; i += 4) {
    __m128 g = values4_at(src, codes, i);
    _mm_stream_ps(dst + i, _mm_add_ps(zero, _mm_mul_ps(g, kv)));
    p = _mm_add_ps(p, _mm_mul_ps(g, zero));
  }
  _mm_sfence();
  float lanes[4];
  _mm_storeu_ps(lanes, p);
  probe += lanes[0] + lanes[1] + lanes[2] + lanes[3];
#endif
  for (; i < n; i += 1) {
    float g = value_at(src, codes, i);
    dst[i] = 0.0f + k * g;
    probe += g * 0.0f;
  }
  return !isnan(probe);
}

static napi_value stream_put(napi_env env, napi_callback_info info) {
  struct view d, s;
  napi_value scale;
  size_t argc = 0;
  double k = 0;
  if (!two_views(env, info, &d, &s, &scale, 1, &argc) || argc < 3 || napi_get_value_double(env, scale, &k) != napi_ok
      || d.type != napi_float32_array || (s.type != napi_float32_array && s.type != napi_uint16_array) || ((uintptr_t)d.data & 3u) != 0) {
    napi_throw_type_error(env, NULL, "streamPut: expected (dst Float32Array, src Float32Array or Uint16Array, k number)");
    return NULL;
  }
  uint8_t *dst = d.data, *src = s.data;
  size_t src_bytes = s.bytes;
  size_t n = s.type == napi_float32_array ? src_bytes / 4 : src_bytes / 2;
  if (d.bytes < 4 * n) {
    napi_throw_range_error(env, NULL, "streamPut: expected a destination at least as long as the source");
    return NULL;
  }
  napi_value result;
  // Overlapping ranges: nothing written (undefined); the caller puts them its own way.
  if (dst < src + src_bytes && src < dst + 4 * n) {
    napi_get_undefined(env, &result);
    return result;
  }
  bool finite = s.type == napi_float32_array ? put_scaled((float *)dst, src, false, n, (float)k) : put_scaled((float *)dst, src, true, n, (float)k);
  napi_get_boolean(env, finite, &result);
  return result;
}

/* f rounded to bfloat16 precision (to nearest even; the float of its code, encodeBf16Scalar's rule for every finite
 * f; a NaN may come out as another value: the caller's probe looks at f itself too). */
static inline float bf16_round(float f) {
  uint32_t x;
  memcpy(&x, &f, 4);
  x = bf16_rne(x) & 0xffff0000u;
  memcpy(&f, &x, 4);
  return f;
}

/* dst = (0 + ka a') + kb b', the probes pa += a * 0 (and a' * 0) and pb += b' * 0: operation for operation a put of a'
 * (put_scaled) then the SIMD reduce of b' (shared/simd.ts's acc: dst + b' kb), in one pass with streaming stores.
 * a' is a, or (`round`) a rounded to bfloat16 precision, as the worker's encode would have sent it; b' is b's floats,
 * or (`codes`) its bfloat16 codes' (constants at each call: the loops are specialized). Bit 0 of the result: a held a
 * NaN or an Inf, or one rounded to Inf; bit 1: b did. */
static inline __attribute__((always_inline)) int put_two(float *dst, const float *a, float ka, bool round, const void *b, bool codes, float kb, size_t n) {
  float pa = 0.0f, pb = 0.0f;
  size_t i = 0;
#if defined(__SSE2__)
  for (; i < n && ((uintptr_t)(dst + i) & 15u) != 0; i += 1) {
    float x = round ? bf16_round(a[i]) : a[i];
    float y = value_at(b, codes, i);
    dst[i] = (0.0f + ka * x) + y * kb;
    pa += a[i] * 0.0f + x * 0.0f;
    pb += y * 0.0f;
  }
  const __m128 kav = _mm_set1_ps(ka), kbv = _mm_set1_ps(kb), zero = _mm_setzero_ps();
  const __m128i half = _mm_set1_epi32(0x7fff), one = _mm_set1_epi32(1), top = _mm_set1_epi32((int)0xffff0000u);
  __m128 qa = zero, qb = zero;
  for (; i + 4 <= n; i += 4) {
    __m128 raw = _mm_loadu_ps(a + i), x = raw;
    if (round) {
      __m128i u = _mm_castps_si128(raw);
      u = _mm_and_si128(_mm_add_epi32(_mm_add_epi32(u, half), _mm_and_si128(_mm_srli_epi32(u, 16), one)), top);
      x = _mm_castsi128_ps(u);
      qa = _mm_add_ps(qa, _mm_mul_ps(raw, zero));
    }
    __m128 y = values4_at(b, codes, i);
    _mm_stream_ps(dst + i, _mm_add_ps(_mm_add_ps(zero, _mm_mul_ps(x, kav)), _mm_mul_ps(y, kbv)));
    qa = _mm_add_ps(qa, _mm_mul_ps(x, zero));
    qb = _mm_add_ps(qb, _mm_mul_ps(y, zero));
  }
  _mm_sfence();
  float la[4], lb[4];
  _mm_storeu_ps(la, qa);
  _mm_storeu_ps(lb, qb);
  pa += la[0] + la[1] + la[2] + la[3];
  pb += lb[0] + lb[1] + lb[2] + lb[3];
#endif
  for (; i < n; i += 1) {
    float x = round ? bf16_round(a[i]) : a[i];
    float y = value_at(b, codes, i);
    dst[i] = (0.0f + ka * x) + y * kb;
    pa += a[i] * 0.0f + x * 0.0f;
    pb += y * 0.0f;
  }
  return (isnan(pa) ? 1 : 0) | (isnan(pb) ? 2 : 0);
}

static napi_value stream_put_two(napi_env env, napi_callback_info info) {
  napi_value argv[6];
  size_t argc = 6;
  struct view d, a, b;
  double ka = 0, kb = 0;
  bool round = false;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc < 5 || !view_of(env, argv[0], &d) || !view_of(env, argv[1], &a)
      || napi_get_value_double(env, argv[2], &ka) != napi_ok || !view_of(env, argv[3], &b) || napi_get_value_double(env, argv[4], &kb) != napi_ok
      || (argc > 5 && napi_get_value_bool(env, argv[5], &round) != napi_ok)
      || d.type != napi_float32_array || a.type != napi_float32_array || (b.type != napi_float32_array && b.type != napi_uint16_array)
      || ((uintptr_t)d.data & 3u) != 0 || ((uintptr_t)a.data & 3u) != 0) {
    napi_throw_type_error(env, NULL, "streamPutTwo: expected (dst Float32Array, a Float32Array, ka number, b Float32Array or Uint16Array, kb number[, round boolean])");
    return NULL;
  }
  bool codes = b.type == napi_uint16_array;
  size_t n = a.bytes / 4;
  if (b.bytes != (codes ? 2 : 4) * n || d.bytes < a.bytes) {
    napi_throw_range_error(env, NULL, "streamPutTwo: expected a and b of one length and a destination at least as long");
    return NULL;
  }
  napi_value result;
  // dst overlapping a source: nothing written (undefined); the caller puts and adds them its own way.
  if ((d.data < a.data + a.bytes && a.data < d.data + 4 * n) || (d.data < b.data + b.bytes && b.data < d.data + 4 * n)) {
    napi_get_undefined(env, &result);
    return result;
  }
  float *dst = (float *)d.data;
  const float *x = (const float *)a.data;
  int flags = codes ? (round ? put_two(dst, x, (float)ka, true, b.data, true, (float)kb, n) : put_two(dst, x, (float)ka, false, b.data, true, (float)kb, n))
    : (round ? put_two(dst, x, (float)ka, true, b.data, false, (float)kb, n) : put_two(dst, x, (float)ka, false, b.data, false, (float)kb, n));
  napi_create_int32(env, flags, &result);
  return result;
}

/* The rule of encodeBf16Scalar: NaN (magnitude above Inf's) keeps its top bits, made quiet; else round to nearest even. */
static inline uint16_t bf16_of(float f) {
  uint32_t x;
  memcpy(&x, &f, 4);
  return (x & 0x7fffffffu) > 0x7f800000u ? (uint16_t)((x >> 16) | 0x40u) : (uint16_t)(bf16_rne(x) >> 16);
}

static size_t bf16_scalar(uint16_t *d, const float *s, size_t n) {
  for (size_t i = 0; i < n; i += 1) d[i] = bf16_of(s[i]);
  return n;
}

#if defined(__x86_64__)
/* Each returns how many it encoded (a multiple of its lanes); the caller does the rest. x != x marks the NaN lanes. */
__attribute__((target("avx512f,avx512bw"))) static size_t bf16_avx512(uint16_t *d, const float *s, size_t n) {
  const __m512i one = _mm512_set1_epi32(1), half = _mm512_set1_epi32(0x7fff), quiet = _mm512_set1_epi32(0x40);
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __m512 f = _mm512_loadu_ps(s + i);
    __m512i x = _mm512_castps_si512(f);
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(x, half), _mm512_and_si512(_mm512_srli_epi32(x, 16), one)), 16);
    r = _mm512_mask_or_epi32(r, _mm512_cmp_ps_mask(f, f, _CMP_UNORD_Q), _mm512_srli_epi32(x, 16), quiet);
    _mm256_storeu_si256((__m256i *)(d + i), _mm512_cvtepi32_epi16(r));
  }
  return i;
}

__attribute__((target("avx2"))) static size_t bf16_avx2(uint16_t *d, const float *s, size_t n) {
  const __m256i one = _mm256_set1_epi32(1), half = _mm256_set1_epi32(0x7fff), quiet = _mm256_set1_epi32(0x40);
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    __m256i r[2];
    for (int k = 0; k < 2; k += 1) {
      __m256 f = _mm256_loadu_ps(s + i + 8 * k);
      __m256i x = _mm256_castps_si256(f);
      __m256i v = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(x, half), _mm256_and_si256(_mm256_srli_epi32(x, 16), one)), 16);
      __m256i nan = _mm256_or_si256(_mm256_srli_epi32(x, 16), quiet);
      r[k] = _mm256_blendv_epi8(v, nan, _mm256_castps_si256(_mm256_cmp_ps(f, f, _CMP_UNORD_Q)));
    }
    // packus interleaves the two halves by 128-bit lane: the permute puts them back in order.
    _mm256_storeu_si256((__m256i *)(d + i), _mm256_permute4x64_epi64(_mm256_packus_epi32(r[0], r[1]), 0xd8));
  }
  return i;
}
#endif

typedef size_t (*bf16_encoder)(uint16_t *, const float *, size_t);
static const struct { const char *name; bf16_encoder run; } BF16_ENCODERS[] = {
#if defined(__x86_64__)
  { "avx512", bf16_avx512 }, { "avx2", bf16_avx2 },
#endif
  { "scalar", bf16_scalar },
};
#define BF16_ENCODER_COUNT (sizeof BF16_ENCODERS / sizeof BF16_ENCODERS[0])

static bool bf16_encoder_runs(size_t k) {
#if defined(__x86_64__)
  const char *name = BF16_ENCODERS[k].name;
  if (strcmp(name, "avx512") == 0) return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
  if (strcmp(name, "avx2") == 0) return __builtin_cpu_supports("avx2");
#else
  (void)k;
#endif
  return true;
}

static napi_value encode_bf16(napi_env env, napi_callback_info info) {
  struct view d, s;
  napi_value isa;
  size_t argc = 0;
  if (!two_views(env, info, &d, &s, &isa, 1, &argc) || d.type != napi_uint16_array || s.type != napi_float32_array) {
    napi_throw_type_error(env, NULL, "encodeBf16: expected (dst Uint16Array, src Float32Array[, isa])");
    return NULL;
  }
  uint8_t *dst = d.data, *src = s.data;
  size_t n = s.bytes / 4;
  if (d.bytes < 2 * n || (dst < src + s.bytes && src < dst + 2 * n)) {
    napi_throw_range_error(env, NULL, "encodeBf16: expected a destination of at least half the source's bytes, not overlapping it");
    return NULL;
  }
  // The best the CPU runs (found once), or the one asked for.
  static size_t best = BF16_ENCODER_COUNT;
  size_t k = best;
  if (argc >= 3) {
    char name[16] = { 0 };
    size_t len = 0;
    if (napi_get_value_string_utf8(env, isa, name, sizeof name, &len) != napi_ok) {
      napi_throw_type_error(env, NULL, "encodeBf16: expected isa to be a string");
      return NULL;
    }
    for (k = 0; k < BF16_ENCODER_COUNT && strcmp(BF16_ENCODERS[k].name, name) != 0; k += 1) {}
    if (k == BF16_ENCODER_COUNT || !bf16_encoder_runs(k)) {
      napi_throw_range_error(env, NULL, "encodeBf16: expected an instruction set this CPU runs (avx512, avx2, scalar)");
      return NULL;
    }
  } else {
    if (k == BF16_ENCODER_COUNT) {
      for (k = 0; !bf16_encoder_runs(k); k += 1) {}
      best = k;
    }
    // Without AVX2 the caller's wasm kernel (4 lanes) is as fast: undefined, nothing written.
    if (BF16_ENCODERS[k].run == bf16_scalar) {
      napi_value none;
      napi_get_undefined(env, &none);
      return none;
    }
  }
  size_t done = BF16_ENCODERS[k].run((uint16_t *)dst, (const float *)src, n);
  bf16_scalar((uint16_t *)dst + done, (const float *)src + done, n - done);
  napi_value result;
  napi_create_string_utf8(env, BF16_ENCODERS[k].name, NAPI_AUTO_LENGTH, &result);
  return result;
}

NAPI_MODULE_INIT() {
  const napi_property_descriptor functions[] = {
    { "reuseFreedMemory", NULL, reuse_freed_memory, NULL, NULL, NULL, napi_enumerable, NULL },
    { "viewOffset", NULL, view_offset, NULL, NULL, NULL, napi_enumerable, NULL },
    { "streamCopy", NULL, stream_copy, NULL, NULL, NULL, napi_enumerable, NULL },
    { "streamDecodeBf16", NULL, stream_decode_bf16, NULL, NULL, NULL, napi_enumerable, NULL },
    { "streamPut", NULL, stream_put, NULL, NULL, NULL, napi_enumerable, NULL },
    { "streamPutTwo", NULL, stream_put_two, NULL, NULL, NULL, napi_enumerable, NULL },
    { "encodeBf16", NULL, encode_bf16, NULL, NULL, NULL, napi_enumerable, NULL },
  };
  napi_define_properties(env, exports, sizeof functions / sizeof functions[0], functions);
  return exports;
}
