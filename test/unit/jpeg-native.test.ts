import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import sharp from 'sharp';
import { Rng } from '../../shared/rng.ts';
import { jpegHeader, nativeDecodeCrop, type DecodeCrop } from '../../worker/data/jpeg-native.ts';

/**
 * The native training-crop decoder against a reference computed here: the
 * whole image decoded by sharp, rescaled bilinearly (half-pixel centres) to
 * w x h, cropped, flipped, normalised. The picture is smooth waves with a
 * period of ~30 px: a half-pixel misplacement or a wrong flip moves the result
 * by 5+ levels on average. Where the JPEG is decoded at full size the
 * native result is the reference to rounding; where the DCT scales it down (a
 * different low-pass than bilinear sampling) it is within 1 level on average.
 */
const W = 160;
const H = 120;
const SIDE = 64;

function waves(): Buffer {
  const px = Buffer.alloc(W * H * 3);
  for (let y = 0; y < H; y += 1) {
    for (let x = 0; x < W; x += 1) {
      const o = (y * W + x) * 3;
      px[o] = Math.round(127 + 100 * Math.sin(x / 5));
      px[o + 1] = Math.round(127 + 100 * Math.sin(y / 4 + 1));
      px[o + 2] = Math.round((x + y) * 0.9);
    }
  }
  return px;
}

/** A crop of cw x ch (SIDE x SIDE unless given) at (x, y) of the image rescaled to w x h. */
interface Crop { w: number; h: number; x: number; y: number; flip: boolean; cw?: number; ch?: number }

function reference(rgb: Buffer, c: Crop, add: number[], div: number[]): Float32Array {
  const cw = c.cw ?? SIDE;
  const ch = c.ch ?? SIDE;
  const out = new Float32Array(cw * ch * 3);
  const sx = W / c.w;
  const sy = H / c.h;
  const clamp = (v: number, hi: number): number => Math.min(Math.max(v, 0), hi);
  for (let i = 0; i < ch; i += 1) {
    const v = clamp((c.y + i + 0.5) * sy - 0.5, H - 1);
    const v0 = Math.floor(v);
    const v1 = Math.min(v0 + 1, H - 1);
    for (let j = 0; j < cw; j += 1) {
      const u = clamp((c.x + (c.flip ? cw - 1 - j : j) + 0.5) * sx - 0.5, W - 1);
      const u0 = Math.floor(u);
      const u1 = Math.min(u0 + 1, W - 1);
      for (let k = 0; k < 3; k += 1) {
        const at = (yy: number, xx: number): number => rgb[(yy * W + xx) * 3 + k] as number;
        const top = at(v0, u0) * (1 - (u - u0)) + at(v0, u1) * (u - u0);
        const bottom = at(v1, u0) * (1 - (u - u0)) + at(v1, u1) * (u - u0);
        out[(i * cw + j) * 3 + k] = (top * (1 - (v - v0)) + bottom * (v - v0) + (add[k] as number)) / (div[k] as number);
      }
    }
  }
  return out;
}

function meanAbs(a: Float32Array, b: Float32Array, scale = 1): number {
  let sum = 0;
  for (let i = 0; i < a.length; i += 1) sum += Math.abs((a[i] as number) - (b[i] as number));
  return (sum / a.length) * scale;
}

function specOf(c: Crop, add: number[], div: number[]): Float64Array {
  return Float64Array.of(c.cw ?? SIDE, c.ch ?? SIDE, c.w, c.h, c.x, c.y, c.flip ? 1 : 0, ...add, ...div);
}

describe('native training-crop JPEG decoder', async () => {
  const raw = waves();
  const jpeg = await sharp(raw, { raw: { width: W, height: H, channels: 3 } }).jpeg({ quality: 100, chromaSubsampling: '4:4:4' }).toBuffer();
  const decoded = await sharp(jpeg).raw().toBuffer();
  const decode = nativeDecodeCrop as DecodeCrop;

  test('is built and loaded (npm test builds it; VGG_JPEG_DECODER=sharp is not set)', () => {
    assert.equal(typeof nativeDecodeCrop, 'function');
  });

  test('jpegHeader reads size and components, and refuses what the native decoder must not take', async () => {
    assert.deepEqual(jpegHeader(jpeg), { width: W, height: H, components: 3 });
    const grey = await sharp(raw, { raw: { width: W, height: H, channels: 3 } }).toColourspace('b-w').jpeg().toBuffer();
    assert.deepEqual(jpegHeader(grey), { width: W, height: H, components: 1 });
    const png = await sharp(raw, { raw: { width: W, height: H, channels: 3 } }).png().toBuffer();
    assert.equal(jpegHeader(png), null);
    assert.equal(jpegHeader(jpeg.subarray(0, jpeg.length - 100)), null, 'a file cut short (no EOI) goes to sharp');
    assert.equal(jpegHeader(Buffer.from('this is not a jpeg')), null);
  });

  // Upscales (DCT scale 8/8), the identity, and downscales through DCT scales 6/8 and 5/8;
  // crops at the corners and inside; flipped and not.
  const crops: [string, Crop][] = [
    ['S = 120 (same size), top-left', { w: 160, h: 120, x: 0, y: 0, flip: false }],
    ['S = 150 (upscale), bottom-right, flipped', { w: 200, h: 150, x: 136, y: 86, flip: true }],
    ['S = 90 (DCT 6/8), inside, flipped', { w: 120, h: 90, x: 31, y: 13, flip: true }],
    ['S = 70 (DCT 5/8), inside', { w: 93, h: 70, x: 17, y: 5, flip: false }],
    ['the whole image rescaled to Q = 90 (dense evaluation), not square', { w: 120, h: 90, x: 0, y: 0, flip: false, cw: 120, ch: 90 }],
  ];
  for (const [name, c] of crops) {
    test(`writes the crop the full rescale would give: ${name}`, async () => {
      const add = [-120, -110, -100];
      const div = [2, 4, 8];
      const n = (c.cw ?? SIDE) * (c.ch ?? SIDE) * 3;
      const out = new Float32Array(n + 10).fill(Number.NaN);
      assert.equal(await decode(jpeg, specOf(c, add, div), out, 5), undefined);
      assert.ok(out.subarray(0, 5).every(Number.isNaN) && out.subarray(5 + n).every(Number.isNaN), 'nothing written outside the crop');
      const got = out.subarray(5, 5 + n);
      const want = reference(decoded, c, add, div);
      // Mean absolute difference in 0-255 levels, each channel scaled back by its divisor.
      const levels = meanAbs(got.filter((_, i) => i % 3 === 0), want.filter((_, i) => i % 3 === 0), div[0])
        + meanAbs(got.filter((_, i) => i % 3 === 1), want.filter((_, i) => i % 3 === 1), div[1])
        + meanAbs(got.filter((_, i) => i % 3 === 2), want.filter((_, i) => i % 3 === 2), div[2]);
      assert.ok(levels / 3 < (c.w < W ? 1 : 0.05), `mean |native - reference| = ${(levels / 3).toFixed(2)} levels`);
      const mirrored = reference(decoded, { ...c, flip: !c.flip }, add, div);
      assert.ok(meanAbs(got, mirrored, div[0]) > 5, 'the other flip is far from it');
    });
  }

  test('4:2:0 chroma, baseline and progressive (most photographs): the crop equals the full decode\'s, edges included', async () => {
    // Colour blocks of 3x3 pixels: strong chroma edges everywhere.
    const blocks = Buffer.alloc(W * H * 3);
    for (let i = 0; i < blocks.length; i += 1) {
      const p = Math.floor(i / 3);
      blocks[i] = (Math.floor((p % W) / 3) * 97 + Math.floor(p / W / 3) * 57 + (i % 3) * 101) % 256;
    }
    for (const progressive of [false, true]) {
      const sub = await sharp(blocks, { raw: { width: W, height: H, channels: 3 } }).jpeg({ quality: 90, chromaSubsampling: '4:2:0', progressive }).toBuffer();
      const full = await sharp(sub).raw().toBuffer();
      // A crop whose edges fall inside the image, where a partial decode lacks the chroma's outer
      // neighbours (without two pixels of margin this one is off by up to 54 levels).
      const c = { w: 171, h: 128, x: 77, y: 50, flip: false };
      const out = new Float32Array(SIDE * SIDE * 3);
      assert.equal(await decode(sub, specOf(c, [0, 0, 0], [1, 1, 1]), out, 0), undefined);
      const want = reference(full, c, [0, 0, 0], [1, 1, 1]);
      const worst = out.reduce((m, v, i) => Math.max(m, Math.abs(v - (want[i] as number))), 0);
      assert.ok(worst < 0.05, `progressive ${progressive}: largest |native - reference| = ${worst.toFixed(3)} levels`);
    }
  });

  test('a greyscale JPEG gives equal R, G and B', async () => {
    const grey = await sharp(raw, { raw: { width: W, height: H, channels: 3 } }).toColourspace('b-w').jpeg().toBuffer();
    const out = new Float32Array(SIDE * SIDE * 3);
    assert.equal(await decode(grey, specOf({ w: 120, h: 90, x: 10, y: 10, flip: false }, [0, 0, 0], [1, 1, 1]), out, 0), undefined);
    for (let p = 0; p < out.length; p += 3) assert.ok(out[p] === out[p + 1] && out[p] === out[p + 2]);
  });

  test('declines CMYK and corrupt data with the reason, and writes nothing', async () => {
    const out = new Float32Array(SIDE * SIDE * 3).fill(7);
    const spec = specOf({ w: 160, h: 120, x: 96, y: 56, flip: false }, [0, 0, 0], [1, 1, 1]);
    const cmyk = await sharp(raw, { raw: { width: W, height: H, channels: 3 } }).toColourspace('cmyk').jpeg().toBuffer();
    assert.match(await decode(cmyk, spec, out, 0) ?? '', /4 colour components \(expected 1 or 3\)/);
    // The scan cut in half, then an EOI: libjpeg warns of a premature end before the crop (the bottom-right) is decoded.
    const cut = Buffer.concat([jpeg.subarray(0, Math.floor(jpeg.length / 2)), Buffer.from([0xff, 0xd9])]);
    assert.match(await decode(cut, spec, out, 0) ?? '', /premature end|corrupt/i);
    assert.match(await decode(Buffer.from('not a jpeg at all'), spec, out, 0) ?? '', /not a JPEG/i);
    assert.ok(out.every((v) => v === 7));
  });

  test('mangled files (flipped bytes anywhere, cuts with an EOI appended) resolve as a crop or a reason, never a crash', async () => {
    const rng = new Rng(11);
    const spec = specOf({ w: 160, h: 120, x: 40, y: 30, flip: true }, [0, 0, 0], [1, 1, 1]);
    const out = new Float32Array(SIDE * SIDE * 3);
    const outcomes = { written: 0, declined: 0 };
    for (let k = 0; k < 300; k += 1) {
      const bad = Buffer.from(jpeg);
      if (k % 3 === 2) {
        const cut = Buffer.concat([bad.subarray(0, rng.int(2, bad.length - 3)), Buffer.from([0xff, 0xd9])]);
        outcomes[await decode(cut, spec, out, 0) === undefined ? 'written' : 'declined'] += 1;
        continue;
      }
      for (let f = 0; f < 1 + (k % 4); f += 1) bad[rng.int(0, bad.length - 1)] = rng.int(0, 255);
      const r = await decode(bad, spec, out, 0);
      assert.ok(r === undefined || (typeof r === 'string' && r.length > 0));
      outcomes[r === undefined ? 'written' : 'declined'] += 1;
    }
    assert.ok(outcomes.declined > 50 && outcomes.written > 0, JSON.stringify(outcomes));
  });

  test('refuses a crop outside the image or an output too short, with what it expected', () => {
    const out = new Float32Array(SIDE * SIDE * 3);
    assert.throws(() => decode(jpeg, specOf({ w: 160, h: 120, x: 100, y: 0, flip: false }, [0, 0, 0], [1, 1, 1]), out, 0),
      { name: 'TypeError', message: /expected a crop inside the rescaled image/ });
    assert.throws(() => decode(jpeg, specOf({ w: 160, h: 120, x: 0, y: 0, flip: false }, [0, 0, 0], [1, 1, 1]), out, 1),
      { name: 'TypeError', message: /expected offset \+ cropW\*cropH\*3 within out/ });
    assert.throws(() => decode(jpeg, specOf({ w: 160, h: 120, x: -1, y: 0, flip: false }, [0, 0, 0], [1, 1, 1]), out, 0),
      { name: 'TypeError', message: /expected spec\[0\.\.6\] as integers in 0\.\.65535/ });
    assert.throws(() => decode(jpeg, new Float64Array(3), out, 0), { name: 'TypeError', message: /Float64Array of 13 numbers/ });
  });
});
