/*
 * Training-crop JPEG decoder for the data pipeline (Node-API addon).
 *
 * The paper's augmentation rescales the whole image so its shorter side is S,
 * then keeps a random 224x224 crop: most of the decoded and resized pixels are
 * thrown away. This decodes only what the crop needs, with libjpeg-turbo:
 *   - DCT-domain scaling (scale_num/8): when S shrinks the image, the IDCT
 *     produces the smallest size M/8 that is still at least the target, so the
 *     IDCT does less work and the low-pass is the DCT's own;
 *   - jpeg_crop_scanline: IDCT and colour conversion only for the iMCU columns
 *     under the crop;
 *   - jpeg_skip_scanlines above the crop, and no decoding below it;
 * then resamples the region bilinearly (half-pixel centres, as the full-size
 * rescale would) straight into the network's float input, with the flip, the
 * PCA colour shift and the normalisation in the same pass.
 *
 * JS: decodeCrop(jpeg: Uint8Array, spec: Float64Array(13), out: Float32Array,
 *     offset: number) -> Promise<string | undefined>
 *   spec = [cropW, cropH, w, h, cropX, cropY, flip, add0, add1, add2, div0, div1, div2]
 *   (w, h: the rescaled image's size; out[offset + (y*cropW + x)*3 + c] =
 *   (sample + add[c]) / div[c]; a crop of the whole image is the rescale alone). Resolves undefined when the crop is written,
 *   or with libjpeg's message when this decoder declines the file (CMYK, a
 *   warning such as corrupt data, an error): the caller then decodes it the
 *   general way, which decides whether the file is usable. The decoding runs
 *   on the libuv thread pool, like sharp's.
 */
#include <math.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>
#include <node_api.h>

typedef struct {
  struct jpeg_error_mgr pub;
  jmp_buf jump;
  int warned;
  char message[JMSG_LENGTH_MAX];
} ErrorManager;

static void on_error(j_common_ptr cinfo) {
  ErrorManager *e = (ErrorManager *)cinfo->err;
  (*cinfo->err->format_message)(cinfo, e->message);
  longjmp(e->jump, 1);
}

/* A warning (corrupt data, premature end) declines the file: the general
 * decoder then applies the pipeline's policy to it. Trace messages are ignored. */
static void on_message(j_common_ptr cinfo, int level) {
  ErrorManager *e = (ErrorManager *)cinfo->err;
  if (level >= 0 || e->warned) return;
  e->warned = 1;
  (*cinfo->err->format_message)(cinfo, e->message);
}

typedef struct {
  const unsigned char *jpeg;
  size_t size;
  int out_w, out_h, w, h, crop_x, crop_y, flip;
  float add[3], div[3];
  float *out;
  int declined;
  char message[JMSG_LENGTH_MAX];
  napi_async_work work;
  napi_deferred deferred;
  napi_ref jpeg_ref, out_ref;
} Job;

static int clampi(int v, int lo, int hi) { return v < lo ? lo : v > hi ? hi : v; }

/* Source coordinate (in the decoded image) of output pixel i's centre. */
static double source_of(int i, double scale) { return (i + 0.5) * scale - 0.5; }

static void decode(Job *job) {
  struct jpeg_decompress_struct cinfo;
  ErrorManager err;
  unsigned char *volatile rows = NULL;
  int *volatile taps = NULL;
  cinfo.err = jpeg_std_error(&err.pub);
  err.pub.error_exit = on_error;
  err.pub.emit_message = on_message;
  err.warned = 0;
  err.message[0] = '\0';
  jpeg_create_decompress(&cinfo);
  /* Every way of declining the file ends here: libjpeg's errors, and the cases below that put
   * their reason in err.message and jump (destroying twice is harmless: it clears cinfo.mem). */
  if (setjmp(err.jump)) {
    jpeg_destroy_decompress(&cinfo);
    free(rows);
    free(taps);
    job->declined = 1;
    snprintf(job->message, sizeof job->message, "%s", err.message);
    return;
  }
  jpeg_mem_src(&cinfo, job->jpeg, (unsigned long)job->size);
  jpeg_read_header(&cinfo, TRUE);
  if (cinfo.num_components != 1 && cinfo.num_components != 3) {
    snprintf(err.message, sizeof err.message, "%d colour components (expected 1 or 3)", cinfo.num_components);
    longjmp(err.jump, 1);
  }
  const int out_w = job->out_w, out_h = job->out_h;
  const double rx = (double)job->w / cinfo.image_width, ry = (double)job->h / cinfo.image_height;
  /* Smallest DCT scale M/8 whose output is at least the rescaled size. */
  int m = (int)ceil(8.0 * (rx > ry ? rx : ry) - 1e-9);
  cinfo.scale_num = (unsigned)clampi(m, 1, 8);
  cinfo.scale_denom = 8;
  cinfo.out_color_space = JCS_RGB;
  jpeg_start_decompress(&cinfo);

  const int wd = (int)cinfo.output_width, hd = (int)cinfo.output_height;
  const double sx = (double)wd / job->w, sy = (double)hd / job->h;
  const int c0 = clampi((int)floor(source_of(job->crop_x, sx)) - 2, 0, wd - 1);
  const int c1 = clampi((int)floor(source_of(job->crop_x + out_w - 1, sx)) + 3, 0, wd - 1);
  /* Two pixels more on every side: the edge rows and columns of a partial decode are upsampled
   * (4:2:0 chroma) without their outer neighbours and can differ from a full decode by a few levels. */
  const int r0 = clampi((int)floor(source_of(job->crop_y, sy)) - 2, 0, hd - 1);
  const int r1 = clampi((int)floor(source_of(job->crop_y + out_h - 1, sy)) + 3, 0, hd - 1);
  JDIMENSION x_offset = (JDIMENSION)c0, cropped = (JDIMENSION)(c1 - c0 + 1);
  if (cropped < (JDIMENSION)wd) jpeg_crop_scanline(&cinfo, &x_offset, &cropped);
  else x_offset = 0;
  const int stride = (int)cinfo.output_width * 3, n_rows = r1 - r0 + 1;
  rows = malloc((size_t)stride * n_rows);
  taps = malloc(sizeof(int) * 2 * (out_w + out_h));
  if (rows == NULL || taps == NULL) {
    snprintf(err.message, sizeof err.message, "out of memory for %d rows of %d bytes", n_rows, stride);
    longjmp(err.jump, 1);
  }
  if (r0 > 0) jpeg_skip_scanlines(&cinfo, (JDIMENSION)r0);
  while ((int)cinfo.output_scanline <= r1) {
    JSAMPROW row = rows + (size_t)((int)cinfo.output_scanline - r0) * stride;
    jpeg_read_scanlines(&cinfo, &row, 1);
  }
  jpeg_destroy_decompress(&cinfo); /* the rows below the crop are never decoded */
  if (err.warned) longjmp(err.jump, 1);

  /* Bilinear taps: per output column its two source byte offsets, per output
   * row its two source rows; weights in 1/65536ths. */
  int *xa = taps, *xw = taps + out_w, *ya = taps + 2 * out_w, *yw = taps + 2 * out_w + out_h;
  const int last_col = (int)cinfo.output_width - 1;
  for (int j = 0; j < out_w; j += 1) {
    int x = job->crop_x + (job->flip ? out_w - 1 - j : j);
    double u = source_of(x, sx) - (double)x_offset;
    u = u < 0 ? 0 : u > last_col ? last_col : u;
    int u0 = (int)u;
    xa[j] = u0;
    xw[j] = (int)lround((u - u0) * 65536.0);
  }
  for (int i = 0; i < out_h; i += 1) {
    double v = source_of(job->crop_y + i, sy) - r0;
    v = v < 0 ? 0 : v > n_rows - 1 ? n_rows - 1 : v;
    int v0 = (int)v;
    ya[i] = v0;
    yw[i] = (int)lround((v - v0) * 65536.0);
  }
  const float scale = 1.0f / 65536.0f / 65536.0f;
  float mul[3], add[3];
  for (int c = 0; c < 3; c += 1) {
    mul[c] = scale / job->div[c];
    add[c] = job->add[c] / job->div[c];
  }
  float *o = job->out;
  for (int i = 0; i < out_h; i += 1) {
    const unsigned char *top = rows + (size_t)ya[i] * stride;
    const unsigned char *bottom = ya[i] + 1 < n_rows ? top + stride : top;
    const long long wb = yw[i], wt = 65536 - wb;
    for (int j = 0; j < out_w; j += 1, o += 3) {
      const int p = xa[j] * 3, q = xa[j] < last_col ? p + 3 : p;
      const long long wr = xw[j], wl = 65536 - wr;
      for (int c = 0; c < 3; c += 1) {
        const long long s = wt * (wl * top[p + c] + wr * top[q + c]) + wb * (wl * bottom[p + c] + wr * bottom[q + c]);
        o[c] = (float)s * mul[c] + add[c];
      }
    }
  }
  free(rows);
  free(taps);
}

static void execute(napi_env env, void *data) {
  (void)env;
  decode((Job *)data);
}

static void complete(napi_env env, napi_status status, void *data) {
  Job *job = (Job *)data;
  napi_value result;
  if (status != napi_ok) {
    napi_create_string_utf8(env, "decode cancelled", NAPI_AUTO_LENGTH, &result);
  } else if (job->declined) {
    napi_create_string_utf8(env, job->message, NAPI_AUTO_LENGTH, &result);
  } else {
    napi_get_undefined(env, &result);
  }
  napi_resolve_deferred(env, job->deferred, result);
  napi_delete_reference(env, job->jpeg_ref);
  napi_delete_reference(env, job->out_ref);
  napi_delete_async_work(env, job->work);
  free(job);
}

static napi_value fail(napi_env env, const char *message) {
  napi_throw_type_error(env, "VGG_ERR_ARGUMENT", message);
  return NULL;
}

static napi_value decode_crop(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok || argc != 4) {
    return fail(env, "decodeCrop: expected (jpeg: Uint8Array, spec: Float64Array(13), out: Float32Array, offset: number)");
  }
  napi_typedarray_type type;
  size_t length, spec_length, out_length;
  void *jpeg, *spec_data, *out;
  bool is_typed;
  napi_is_typedarray(env, argv[0], &is_typed);
  if (!is_typed || napi_get_typedarray_info(env, argv[0], &type, &length, &jpeg, NULL, NULL) != napi_ok || type != napi_uint8_array) {
    return fail(env, "decodeCrop: expected the JPEG's bytes as a Uint8Array");
  }
  napi_is_typedarray(env, argv[1], &is_typed);
  if (!is_typed || napi_get_typedarray_info(env, argv[1], &type, &spec_length, &spec_data, NULL, NULL) != napi_ok ||
      type != napi_float64_array || spec_length != 13) {
    return fail(env, "decodeCrop: expected spec as a Float64Array of 13 numbers");
  }
  napi_is_typedarray(env, argv[2], &is_typed);
  if (!is_typed || napi_get_typedarray_info(env, argv[2], &type, &out_length, &out, NULL, NULL) != napi_ok || type != napi_float32_array) {
    return fail(env, "decodeCrop: expected out as a Float32Array");
  }
  double offset;
  if (napi_get_value_double(env, argv[3], &offset) != napi_ok) return fail(env, "decodeCrop: expected offset as a number");
  const double *spec = (const double *)spec_data;
  for (int k = 0; k < 7; k += 1) {
    if (!(spec[k] >= 0 && spec[k] <= 65535 && spec[k] == floor(spec[k]))) return fail(env, "decodeCrop: expected spec[0..6] as integers in 0..65535");
  }
  const int ow = (int)spec[0], oh = (int)spec[1], w = (int)spec[2], h = (int)spec[3], cx = (int)spec[4], cy = (int)spec[5];
  if (ow < 1 || oh < 1 || cx + ow > w || cy + oh > h) {
    return fail(env, "decodeCrop: expected a crop inside the rescaled image (size >= 1, crop + size <= rescaled size)");
  }
  if (offset < 0 || offset != floor(offset) || offset + 3.0 * ow * oh > (double)out_length) {
    return fail(env, "decodeCrop: expected offset + cropW*cropH*3 within out");
  }
  Job *job = calloc(1, sizeof(Job));
  if (job == NULL) return fail(env, "decodeCrop: out of memory");
  job->jpeg = jpeg;
  job->size = length;
  job->out_w = ow;
  job->out_h = oh;
  job->w = w;
  job->h = h;
  job->crop_x = cx;
  job->crop_y = cy;
  job->flip = spec[6] != 0;
  for (int c = 0; c < 3; c += 1) {
    job->add[c] = (float)spec[7 + c];
    job->div[c] = (float)spec[10 + c];
  }
  job->out = (float *)out + (size_t)offset;
  napi_value promise, name;
  napi_create_promise(env, &job->deferred, &promise);
  napi_create_reference(env, argv[0], 1, &job->jpeg_ref);
  napi_create_reference(env, argv[2], 1, &job->out_ref);
  napi_create_string_utf8(env, "vgg-train:decodeCrop", NAPI_AUTO_LENGTH, &name);
  napi_create_async_work(env, NULL, name, execute, complete, job, &job->work);
  napi_queue_async_work(env, job->work);
  return promise;
}

NAPI_MODULE_INIT() {
  napi_value fn;
  napi_create_function(env, "decodeCrop", NAPI_AUTO_LENGTH, decode_crop, NULL, &fn);
  napi_set_named_property(env, exports, "decodeCrop", fn);
  return exports;
}
