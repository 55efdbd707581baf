import type { WebSocket } from 'ws';
import { CHUNK_FLOATS, ProtocolError, chunkFrame, encode, field, floatsOf, sendChunk } from '../shared/wire-protocol.ts';

/**
 * A shard's range of the weights, then of the momentum, as `state-chunk` frames
 * (offsets into their concatenation) and a `state-end`: the leader's start state
 * for a follower, and a follower's answer to `state-request`. The floats go out
 * without a copy: the caller keeps both arrays unchanged until the bytes are sent.
 */
export function sendRangeState(ws: WebSocket, step: number, weights: Float32Array, velocity: Float32Array): void {
  if (ws.readyState !== ws.OPEN) return;
  const n = weights.length;
  [weights, velocity].forEach((values, k) => {
    for (let off = 0; off < n; off += CHUNK_FLOATS) sendChunk(ws, chunkFrame('state-chunk', step, k * n + off, values.subarray(off, off + CHUNK_FLOATS)));
  });
  ws.send(encode({ t: 'state-end', step, floats: 2 * n }));
}

/** Receives sendRangeState's frames, in order, into a range's weights and momentum. */
export class RangeStateReceiver {
  private next = 0;
  private readonly weights: Float32Array;
  private readonly velocity: Float32Array;

  constructor(weights: Float32Array, velocity: Float32Array) {
    this.weights = weights;
    this.velocity = velocity;
  }

  /** One `state-chunk`: the next floats, without a gap or an overflow (else VGG_ERR_LAYOUT). */
  chunk(msg: Record<string, unknown>): void {
    const n = this.weights.length;
    const offset = field<number>(msg, 'offset', 'int');
    const values = floatsOf(field<Uint8Array>(msg, 'data', 'bytes'));
    if (offset !== this.next || offset + values.length > 2 * n) {
      throw new ProtocolError('VGG_ERR_LAYOUT', `state-chunk: expected offset ${this.next} within ${2 * n} floats, got ${offset} + ${values.length}`);
    }
    const inWeights = Math.max(0, Math.min(values.length, n - offset));
    if (inWeights > 0) this.weights.set(values.subarray(0, inWeights), offset);
    if (inWeights < values.length) this.velocity.set(values.subarray(inWeights), offset + inWeights - n);
    this.next = offset + values.length;
  }

  /** The `state-end`: every float came. */
  end(): void {
    const total = 2 * this.weights.length;
    if (this.next !== total) throw new ProtocolError('VGG_ERR_LAYOUT', `state-end: expected ${total} floats, got ${this.next}`);
  }
}
