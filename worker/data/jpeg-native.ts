import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * The training-crop JPEG decoder (worker/data/native/jpeg_crop.c, built into
 * build/jpeg_crop.node by `npm run build:native`): decodes only the crop's
 * region, with DCT scaling, and resamples it straight into the network input.
 * Resolves undefined when the crop is written, or with the reason it declined
 * the file (the caller then decodes it with sharp).
 */
export type DecodeCrop = (jpeg: Uint8Array, spec: Float64Array, out: Float32Array, offset: number) => Promise<string | undefined>;

const ADDON = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../build/jpeg_crop.node');

function load(): DecodeCrop | null {
  const choice = process.env.VGG_JPEG_DECODER ?? 'auto';
  if (choice !== 'auto' && choice !== 'native' && choice !== 'sharp') {
    throw new Error(`VGG_JPEG_DECODER: expected auto, native or sharp, got ${JSON.stringify(choice)}`);
  }
  if (choice === 'sharp') return null;
  if (!existsSync(ADDON)) {
    if (choice === 'native') throw new Error(`VGG_JPEG_DECODER=native: expected ${ADDON} (npm run build:native), got no such file`);
    return null;
  }
  return (createRequire(import.meta.url)(ADDON) as { decodeCrop: DecodeCrop }).decodeCrop;
}

/** The native decoder, or null where it is not built or VGG_JPEG_DECODER=sharp. */
export const nativeDecodeCrop: DecodeCrop | null = load();

export interface JpegHeader {
  width: number;
  height: number;
  components: number;
}

/**
 * Size and colour components from a JPEG's frame header, or null for anything
 * else (PNG, a file cut before its frame header, a JPEG not ending in EOI: the
 * general decoder takes those).
 */
export function jpegHeader(bytes: Uint8Array): JpegHeader | null {
  const n = bytes.length;
  if (n < 4 || bytes[0] !== 0xff || bytes[1] !== 0xd8 || bytes[n - 2] !== 0xff || bytes[n - 1] !== 0xd9) return null;
  let i = 2;
  while (i + 4 <= n) {
    if (bytes[i] !== 0xff) return null;
    const marker = bytes[i + 1] as number;
    if (marker === 0xff) { i += 1; continue; } // fill byte
    if (marker === 0x01 || (marker >= 0xd0 && marker <= 0xd7)) { i += 2; continue; } // no length
    if (marker === 0xd9 || marker === 0xda) return null; // image end or scan data before a frame header
    const length = ((bytes[i + 2] as number) << 8) | (bytes[i + 3] as number);
    const isFrame = marker >= 0xc0 && marker <= 0xcf && marker !== 0xc4 && marker !== 0xc8 && marker !== 0xcc;
    if (isFrame) {
      if (i + 10 > n) return null;
      const height = ((bytes[i + 5] as number) << 8) | (bytes[i + 6] as number);
      const width = ((bytes[i + 7] as number) << 8) | (bytes[i + 8] as number);
      const components = bytes[i + 9] as number;
      return width > 0 && height > 0 ? { width, height, components } : null;
    }
    i += 2 + length;
  }
  return null;
}
