/**
 * 16-bit wire formats (`--wire bf16|fp16`): conversions between fp32 arrays
 * and 16-bit codes, element by element, rounding to nearest even. The
 * aggregator decodes into fp32 and keeps master weights and momentum in fp32.
 */

import { encodeBf16Native } from '../worker/host-memory.ts';
import { FloatArena, arenaOf, tryArena } from './simd.ts';

export const WIRE_FORMATS = ['fp32', 'bf16', 'fp16'] as const;
export type WireFormat = (typeof WIRE_FORMATS)[number];

/** Bytes per value on the wire. */
export function wireBytes(wire: WireFormat): number {
  return wire === 'fp32' ? 4 : 2;
}

const u32Of = (f: Float32Array) => new Uint32Array(f.buffer, f.byteOffset, f.length);

/** Staging room for the SIMD conversions of arrays that live outside an arena (12 MiB, made on first use). */
let helper: FloatArena | null | undefined;
const simdHelper = (): FloatArena | undefined => {
  if (helper === undefined) helper = tryArena(3 << 20, 1) ?? null;
  return helper ?? undefined;
};

/**
 * The arena for a SIMD conversion of `n` values whose fp32 side is `floats`: the one
 * it lives in (no staging), else the shared helper; none for a few values.
 */
const simdFor = (floats: Float32Array, n: number): FloatArena | undefined => (n >= 64 ? arenaOf(floats) ?? simdHelper() : undefined);

/** bfloat16: the top 16 bits of the fp32, rounded to nearest even; NaN stays NaN. SIMD where it can: the addon's widest vectors, else wasm's. */
export function encodeBf16(src: Float32Array, dst: Uint16Array): void {
  if (encodeBf16Native(src, dst) !== undefined) return;
  const arena = simdFor(src, src.length);
  if (arena !== undefined) arena.encodeBf16(src, dst, encodeBf16Scalar);
  else encodeBf16Scalar(src, dst);
}

export function decodeBf16(src: Uint16Array, dst: Float32Array): void {
  const arena = simdFor(dst, src.length);
  if (arena !== undefined) arena.decodeBf16(src, dst);
  else decodeBf16Scalar(src, dst);
}

/** The element-by-element reference of encodeBf16. */
export function encodeBf16Scalar(src: Float32Array, dst: Uint16Array): void {
  const u = u32Of(src);
  for (let i = 0; i < u.length; i += 1) {
    const x = u[i] as number;
    dst[i] = (x & 0x7fffffff) > 0x7f800000 ? ((x >>> 16) | 0x40) : (x + 0x7fff + ((x >>> 16) & 1)) >>> 16;
  }
}

export function decodeBf16Scalar(src: Uint16Array, dst: Float32Array): void {
  const u = u32Of(dst);
  for (let i = 0; i < src.length; i += 1) u[i] = (src[i] as number) << 16;
}

/**
 * IEEE half, rounded to nearest even. Magnitudes beyond 65504 saturate to
 * +-65504 instead of becoming Inf (a gradient spike must not read as a
 * divergence); NaN and +-Inf inputs stay NaN and +-Inf, so they are still refused.
 */
export function encodeFp16(src: Float32Array, dst: Uint16Array): void {
  const u = u32Of(src);
  for (let i = 0; i < u.length; i += 1) {
    const x = u[i] as number;
    const sign = (x >>> 16) & 0x8000;
    const exp = (x >>> 23) & 0xff;
    const mant = x & 0x7fffff;
    if (exp === 0xff) {
      dst[i] = sign | 0x7c00 | (mant !== 0 ? 0x200 : 0);
      continue;
    }
    const e = exp - 112; // rebias 127 -> 15
    if (e >= 31) {
      dst[i] = sign | 0x7bff;
    } else if (e <= 0) {
      if (e < -10) { dst[i] = sign; continue; }
      const m = mant | 0x800000;
      const shift = 14 - e;
      let h = m >>> shift;
      const rest = m & ((1 << shift) - 1);
      const halfway = 1 << (shift - 1);
      if (rest > halfway || (rest === halfway && (h & 1) === 1)) h += 1;
      dst[i] = sign | h;
    } else {
      let h = (e << 10) | (mant >>> 13);
      const rest = mant & 0x1fff;
      if (rest > 0x1000 || (rest === 0x1000 && (h & 1) === 1)) h += 1;
      dst[i] = sign | Math.min(h, 0x7bff);
    }
  }
}

let fp16Table: Float32Array | undefined;

/** All 65,536 half values as fp32 (256 KiB, built once): decoding is one lookup per value. */
function halfTable(): Float32Array {
  if (fp16Table !== undefined) return fp16Table;
  const t = new Float32Array(65536);
  for (let h = 0; h < 65536; h += 1) {
    const sign = h & 0x8000 ? -1 : 1;
    const exp = (h >>> 10) & 0x1f;
    const mant = h & 0x3ff;
    t[h] = exp === 0 ? sign * mant * 2 ** -24 : exp === 31 ? (mant !== 0 ? Number.NaN : sign * Infinity) : sign * (1 + mant / 1024) * 2 ** (exp - 15);
  }
  fp16Table = t;
  return t;
}

export function decodeFp16(src: Uint16Array, dst: Float32Array): void {
  const t = halfTable();
  for (let i = 0; i < src.length; i += 1) dst[i] = t[src[i] as number] as number;
}

/**
 * Error feedback for a 16-bit wire: what rounding dropped from one step's
 * gradient is added to the next one's, so the rounding error does not
 * accumulate over steps (the sum of what was sent stays within one rounding of
 * the sum of the true gradients).
 */
export class ErrorFeedback {
  readonly wire: 'bf16' | 'fp16';
  readonly residual: Float32Array;
  private readonly codes = new Uint16Array(1 << 16);
  private readonly back = new Float32Array(1 << 16);

  constructor(wire: 'bf16' | 'fp16', n: number) {
    this.wire = wire;
    this.residual = new Float32Array(n);
  }

  /**
   * g <- g + residual, in place; residual <- g - round16(g). Call once per
   * gradient (not per resend of it): the wire then carries round16(g) exactly.
   * Elementwise, so a gradient may be compensated in parts: [lo, hi) here.
   */
  compensate(g: Float32Array, lo = 0, hi = g.length): void {
    if (g.length !== this.residual.length) throw new RangeError(`error feedback: expected ${this.residual.length} values, got ${g.length}`);
    const r = this.residual;
    for (let off = lo; off < hi; off += this.codes.length) {
      const part = g.subarray(off, Math.min(hi, off + this.codes.length));
      for (let i = 0; i < part.length; i += 1) part[i] = (part[i] as number) + (r[off + i] as number);
      const codes = this.codes.subarray(0, part.length);
      const back = this.back.subarray(0, part.length);
      encode16(this.wire, part, codes);
      decode16(this.wire, codes, back);
      for (let i = 0; i < part.length; i += 1) r[off + i] = (part[i] as number) - (back[i] as number);
    }
  }
}

export function encode16(wire: 'bf16' | 'fp16', src: Float32Array, dst: Uint16Array): void {
  if (wire === 'bf16') encodeBf16(src, dst);
  else encodeFp16(src, dst);
}

export function decode16(wire: 'bf16' | 'fp16', src: Uint16Array, dst: Float32Array): void {
  if (wire === 'bf16') decodeBf16(src, dst);
  else decodeFp16(src, dst);
}
