import { readFile } from 'node:fs/promises';
import path from 'node:path';
import sharp, { type Sharp } from 'sharp';
import { DataError } from '../../shared/errors.ts';
import { hashInts, Rng } from '../../shared/rng.ts';
import { jpegHeader, nativeDecodeCrop, type JpegHeader } from './jpeg-native.ts';

sharp.cache(false);

/** sharp's default limitInputPixels: larger images are refused as decompression bombs. */
const SHARP_PIXEL_LIMIT = 0x3fff * 0x3fff;

/** How images become network inputs. */
export interface AugmentOptions {
  /** Network input side (crop size). */
  inputSize: number;
  /** Training scale S: the shorter side is rescaled to S, or to a value drawn from [sMin, sMax] per sample. */
  sMin: number;
  sMax: number;
  /** Random horizontal flip. @defaultValue true */
  flip: boolean;
  /** Std of the AlexNet PCA colour shift; 0 disables. @defaultValue 0.1 */
  pcaStd: number;
  /** Mean RGB (0-255) subtracted from every pixel (the paper's only normalisation). */
  meanRgb: [number, number, number];
  /** Per-channel divisor after mean subtraction; [1,1,1] is the paper's recipe. */
  stdRgb: [number, number, number];
}

/** AlexNet's PCA of ImageNet RGB covariance (pixels in [0,1]). */
const PCA_EIGVAL = [0.2175, 0.0188, 0.0045];
const PCA_EIGVEC = [
  [-0.5675, 0.7192, 0.4009],
  [-0.5808, -0.0045, -0.814],
  [-0.5836, -0.6948, 0.4203],
];

export const IMAGENET_MEAN_RGB: [number, number, number] = [123.68, 116.779, 103.939];

/** Where a crop sits and how the image is scaled; a pure function of (seed, epoch, sample id). */
export interface AugmentDraw {
  scale: number;
  cropX: number;
  cropY: number;
  flip: boolean;
  rgbShift: [number, number, number];
}

function resizedDims(width: number, height: number, shorter: number): [number, number] {
  const ratio = shorter / Math.min(width, height);
  return [Math.max(shorter, Math.round(width * ratio)), Math.max(shorter, Math.round(height * ratio))];
}

function imageError(file: string, err: unknown): DataError {
  return new DataError('VGG_ERR_IMAGE', `${file}: expected a readable JPEG or PNG, got: ${(err as Error).message}`, { cause: err });
}

async function readImage(file: string): Promise<Buffer> {
  try {
    return await readFile(file);
  } catch (err) {
    throw imageError(file, err);
  }
}

/** The size sharp reads from a file's header (PNG, or a JPEG whose header this code does not parse). */
async function sizeOf(file: string, bytes: Buffer): Promise<{ width: number; height: number }> {
  try {
    const meta = await sharp(bytes, { failOn: 'error' }).metadata();
    if (meta.width === undefined || meta.height === undefined) throw new Error('no dimensions');
    return { width: meta.width, height: meta.height };
  } catch (err) {
    throw imageError(file, err);
  }
}

/** An image's bytes and size: from the JPEG header where there is one, else from sharp. */
async function openImage(file: string): Promise<{ bytes: Buffer; header: JpegHeader | null; width: number; height: number }> {
  const bytes = await readImage(file);
  const header = jpegHeader(bytes);
  if (header !== null) return { bytes, header, width: header.width, height: header.height };
  const { width, height } = await sizeOf(file, bytes);
  return { bytes, header, width, height };
}

async function toRgb(pipeline: Sharp, file: string, width: number, height: number): Promise<Buffer> {
  try {
    const { data, info } = await pipeline.toColourspace('srgb').removeAlpha().raw().toBuffer({ resolveWithObject: true });
    if (info.channels !== 3 || info.width !== width || info.height !== height) {
      throw new Error(`decoded ${info.width}x${info.height}x${info.channels}, expected ${width}x${height}x3`);
    }
    return data;
  } catch (err) {
    if (err instanceof DataError) throw err;
    throw imageError(file, err);
  }
}

/** Where a crop of the rescaled image lies, and what is done to its pixels. */
interface CropSpec {
  /** The crop's size. */
  cropW: number;
  cropH: number;
  /** The rescaled image's size. */
  w: number;
  h: number;
  cropX: number;
  cropY: number;
  flip: boolean;
  shift: [number, number, number];
}

/**
 * Writes the crop of the image rescaled to w x h (all of it when the crop is
 * w x h) into `out` at `offset` as normalised floats. JPEGs go through the native crop decoder where it is
 * built (only the crop's region is decoded); other files, and JPEGs it
 * declines (CMYK, corrupt data), through sharp, whose verdict on the file stands.
 */
async function writeCrop(file: string, image: { bytes: Buffer; header: JpegHeader | null }, c: CropSpec, opts: AugmentOptions,
  out: Float32Array, offset: number): Promise<void> {
  const { header } = image;
  // Past sharp's pixel limit, sharp refuses the file; the native decoder is not asked to read it first.
  if (nativeDecodeCrop !== null && header !== null && (header.components === 1 || header.components === 3) && header.width * header.height <= SHARP_PIXEL_LIMIT) {
    const [m0, m1, m2] = opts.meanRgb;
    const [s0, s1, s2] = opts.stdRgb;
    const spec = Float64Array.of(c.cropW, c.cropH, c.w, c.h, c.cropX, c.cropY, c.flip ? 1 : 0, c.shift[0] - m0, c.shift[1] - m1, c.shift[2] - m2, s0, s1, s2);
    if (await nativeDecodeCrop(image.bytes, spec, out, offset) === undefined) return;
  }
  // The flip is applied here, after the crop: sharp would flop the whole image before extracting.
  const pipeline = sharp(image.bytes, { failOn: 'error' }).resize(c.w, c.h, { fit: 'fill' })
    .extract({ left: c.cropX, top: c.cropY, width: c.cropW, height: c.cropH });
  normalise(await toRgb(pipeline, file, c.cropW, c.cropH), out, offset, opts, c.shift, c.flip ? c.cropW : 0);
}

/**
 * Writes RGB bytes into `out` at `offset` as normalised floats; with
 * `mirrorWidth` > 0 each row of that many pixels is written mirrored.
 */
function normalise(rgb: Buffer, out: Float32Array, offset: number, opts: AugmentOptions, shift: [number, number, number], mirrorWidth = 0): void {
  const [m0, m1, m2] = opts.meanRgb;
  const [s0, s1, s2] = opts.stdRgb;
  const a0 = shift[0] - m0;
  const a1 = shift[1] - m1;
  const a2 = shift[2] - m2;
  const row = mirrorWidth * 3;
  for (let i = 0; i < rgb.length; i += 3) {
    // Mirrored: pixel x of a row goes to width-1-x of the same row.
    const o = offset + (row === 0 ? i : i - (i % row) + row - 3 - (i % row));
    out[o] = ((rgb[i] as number) + a0) / s0;
    out[o + 1] = ((rgb[i + 1] as number) + a1) / s1;
    out[o + 2] = ((rgb[i + 2] as number) + a2) / s2;
  }
}

/** The random choices for one training sample. */
export function drawAugment(opts: AugmentOptions, seed: number, epoch: number, sampleId: number, width: number, height: number): AugmentDraw {
  const rng = new Rng(hashInts(seed, epoch, sampleId));
  const scale = opts.sMin === opts.sMax ? opts.sMin : rng.int(opts.sMin, opts.sMax);
  const [w, h] = resizedDims(width, height, scale);
  const cropX = rng.int(0, w - opts.inputSize);
  const cropY = rng.int(0, h - opts.inputSize);
  const flip = opts.flip && rng.next() < 0.5;
  const alphas = [rng.normal() * opts.pcaStd, rng.normal() * opts.pcaStd, rng.normal() * opts.pcaStd];
  const rgbShift: [number, number, number] = [0, 0, 0];
  for (let c = 0; c < 3; c += 1) {
    let s = 0;
    for (let k = 0; k < 3; k += 1) s += (PCA_EIGVEC[c]?.[k] ?? 0) * (alphas[k] ?? 0) * (PCA_EIGVAL[k] ?? 0);
    rgbShift[c] = s * 255;
  }
  return { scale, cropX, cropY, flip, rgbShift };
}

/**
 * Training augmentation of one image into `out` (HWC floats at `offset`):
 * isotropic rescale of the shorter side to S, random crop, random flip, PCA
 * colour shift, mean subtraction. Same (seed, epoch, sampleId) -> same floats.
 */
export async function loadTrainImage(file: string, opts: AugmentOptions, seed: number, epoch: number, sampleId: number,
  out: Float32Array, offset: number): Promise<void> {
  const image = await openImage(file);
  const d = drawAugment(opts, seed, epoch, sampleId, image.width, image.height);
  const [w, h] = resizedDims(image.width, image.height, d.scale);
  const side = opts.inputSize;
  await writeCrop(file, image, { cropW: side, cropH: side, w, h, cropX: d.cropX, cropY: d.cropY, flip: d.flip, shift: d.rgbShift }, opts, out, offset);
}

/** Evaluation view: rescale the shorter side to Q, centre crop, mean subtraction. */
export async function loadEvalImage(file: string, opts: AugmentOptions, q: number, out: Float32Array, offset: number): Promise<void> {
  const image = await openImage(file);
  const [w, h] = resizedDims(image.width, image.height, q);
  const crop = { w, h, cropX: Math.floor((w - opts.inputSize) / 2), cropY: Math.floor((h - opts.inputSize) / 2), flip: false };
  await writeCrop(file, image, { ...crop, cropW: opts.inputSize, cropH: opts.inputSize, shift: [0, 0, 0] }, opts, out, offset);
}

/**
 * The whole image with its shorter side rescaled to Q, mean-subtracted, no
 * crop (dense and multi-crop evaluation): HWC floats and the size.
 */
export async function loadScaledImage(file: string, opts: AugmentOptions, q: number): Promise<{ data: Float32Array; width: number; height: number }> {
  const image = await openImage(file);
  const [w, h] = resizedDims(image.width, image.height, q);
  const out = new Float32Array(w * h * 3);
  await writeCrop(file, image, { cropW: w, cropH: h, w, h, cropX: 0, cropY: 0, flip: false, shift: [0, 0, 0] }, opts, out, 0);
  return { data: out, width: w, height: h };
}

export interface BatchItem {
  /** Stable sample id (index into the dataset's train or val list). */
  id: number;
  path: string;
  label: number;
}

export interface LoadedBatch {
  /** NHWC floats of the images that loaded, in order. */
  images: Float32Array;
  labels: Int32Array;
  ids: number[];
  /** Files that could not be read: skipped, named, counted. */
  skipped: { id: number; path: string; error: string }[];
}

/**
 * Loads a batch concurrently. Unreadable images are skipped and reported;
 * the batch is then shorter, and the step weighs it by its real size.
 */
export async function loadBatch(root: string, items: BatchItem[], opts: AugmentOptions,
  mode: { kind: 'train'; seed: number; epoch: number } | { kind: 'eval'; q: number }): Promise<LoadedBatch> {
  const pixels = opts.inputSize * opts.inputSize * 3;
  const staging = new Float32Array(items.length * pixels);
  const results = await Promise.allSettled(items.map((item, i) => {
    const file = path.join(root, item.path);
    return mode.kind === 'train'
      ? loadTrainImage(file, opts, mode.seed, mode.epoch, item.id, staging, i * pixels)
      : loadEvalImage(file, opts, mode.q, staging, i * pixels);
  }));
  const keep: number[] = [];
  const skipped: LoadedBatch['skipped'] = [];
  results.forEach((r, i) => {
    const item = items[i] as BatchItem;
    if (r.status === 'fulfilled') keep.push(i);
    else if (r.reason instanceof DataError) skipped.push({ id: item.id, path: item.path, error: r.reason.message });
    else throw r.reason;
  });
  const images = keep.length === items.length ? staging : new Float32Array(keep.length * pixels);
  if (images !== staging) {
    keep.forEach((src, dst) => images.set(staging.subarray(src * pixels, (src + 1) * pixels), dst * pixels));
  }
  return {
    images,
    labels: Int32Array.from(keep.map((i) => (items[i] as BatchItem).label)),
    ids: keep.map((i) => (items[i] as BatchItem).id),
    skipped,
  };
}

/**
 * Mean and std of RGB over up to `limit` training images (the paper subtracts
 * the training set's mean RGB). Images are decoded at `side` px to keep it quick.
 */
export async function estimateRgbStats(root: string, files: string[], limit = 256, side = 32):
Promise<{ meanRgb: [number, number, number]; stdRgb: [number, number, number] }> {
  const step = Math.max(1, Math.floor(files.length / limit));
  const sum = [0, 0, 0];
  const sq = [0, 0, 0];
  let n = 0;
  for (let i = 0; i < files.length && n < limit * side * side; i += step) {
    try {
      const rgb = await sharp(path.join(root, files[i] as string)).resize(side, side, { fit: 'fill' })
        .toColourspace('srgb').removeAlpha().raw().toBuffer();
      for (let p = 0; p < rgb.length; p += 3) {
        for (let c = 0; c < 3; c += 1) {
          const v = rgb[p + c] as number;
          sum[c] = (sum[c] as number) + v;
          sq[c] = (sq[c] as number) + v * v;
        }
        n += 1;
      }
    } catch { /* unreadable images are reported by the loader, not here */ }
  }
  if (n === 0) return { meanRgb: [...IMAGENET_MEAN_RGB], stdRgb: [58.395, 57.12, 57.375] };
  const mean = sum.map((s) => s / n) as [number, number, number];
  const std = sq.map((s, c) => Math.max(1, Math.sqrt(s / n - (mean[c] as number) ** 2))) as [number, number, number];
  return { meanRgb: mean, stdRgb: std };
}
