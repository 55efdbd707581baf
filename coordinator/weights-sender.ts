import type { WebSocket } from 'ws';
import { encode16, type WireFormat } from '../shared/half.ts';
import type { Metrics } from '../shared/metrics.ts';
import { STAGE_ROOMS, STAGE_ROOM_FLOATS, type FloatArena } from '../shared/simd.ts';
import { chunkFrame, sendChunk } from '../shared/wire-protocol.ts';

/** Whoever weight chunks go to: a member's socket (a WebSocket or the in-process link). */
export interface WeightsTarget { ws: WebSocket }

/**
 * A room of a chunk's new weights: staged before the step's commit (early commit), or a 16-bit chunk's
 * codes; sent to every target, free again once all those sends are out (STAGE_ROOMS of them).
 */
export interface StageRoom { f32: Float32Array; u16?: Uint16Array; busy: number }

/** A 16-bit broadcast in progress: its chunks [lo, hi), the next to send, its targets and end frame. */
interface Broadcast16 { targets: WeightsTarget[]; units: [number, number][]; next: number; step: number; end: Buffer }

export interface WeightsSenderOptions {
  /** The master weights (an aggregator's range of them): fp32 chunks go out straight from these bytes. */
  weights: Float32Array;
  wire: WireFormat;
  /** Where stage rooms are made (plain arrays without one). */
  arena?: FloatArena;
  metrics?: Metrics;
  /** A stage room is free again (after the waiting 16-bit broadcasts took their turn): early commit may stage more. */
  onRoomFree: () => void;
}

/**
 * The aggregator's weights on their way to the members: fp32 chunks sent straight from the master weights
 * (no copy: drained() tells when the next update may write them), 16-bit chunks encoded a chunk at a time
 * into a stage room and sent to every target (no 16-bit copy of all the weights), the next when a room is
 * free. Bytes counted in `metrics.sentBytes` as they are queued.
 */
export class WeightsSender {
  private readonly o: WeightsSenderOptions;
  private readonly rooms: StageRoom[] = [];
  private roomsMade = 0;
  /** Waiting for a free stage room (the commit's 16-bit chunks): called when one is released. */
  private roomWaiters: (() => void)[] = [];
  /** 16-bit broadcasts still sending (the next update waits for them: drained()). */
  private readonly streams = new Set<Broadcast16>();
  /** Sends straight from the weights not yet out: the next update waits for them (drained()). */
  private weightSends = 0;

  constructor(options: WeightsSenderOptions) {
    this.o = options;
  }

  /** A free stage room, made in the arena while fewer than STAGE_ROOMS exist; undefined when all are in flight. */
  room(): StageRoom | undefined {
    const free = this.rooms.pop();
    if (free !== undefined || this.roomsMade === STAGE_ROOMS) return free;
    this.roomsMade += 1;
    const f32 = this.o.arena?.alloc(STAGE_ROOM_FLOATS) ?? new Float32Array(STAGE_ROOM_FLOATS);
    const u16 = this.o.wire === 'fp32' ? undefined : this.o.arena?.alloc16(STAGE_ROOM_FLOATS) ?? new Uint16Array(STAGE_ROOM_FLOATS);
    return { f32, u16, busy: 0 };
  }

  /** A stage room, once one is free. */
  async nextRoom(): Promise<StageRoom> {
    let room = this.room();
    while (room === undefined) room = await new Promise<StageRoom | undefined>((resolve) => { this.roomWaiters.push(() => resolve(this.room())); });
    return room;
  }

  /** fp32 weights [lo, hi) of `step` to every open target, straight from the weights (drained() waits for them). */
  fromWeights(step: number, lo: number, hi: number, targets: Iterable<WeightsTarget>): void {
    const frame = chunkFrame('weights-chunk', step, lo, this.o.weights.subarray(lo, hi));
    for (const m of targets) {
      if (m.ws.readyState !== m.ws.OPEN) continue;
      this.o.metrics?.sentBytes.inc(frame[0].length + frame[1].length);
      this.weightSends += 1;
      sendChunk(m.ws, frame, () => { this.weightSends -= 1; });
    }
  }

  /** `values` (the weights at `lo` of `step`) as 16-bit codes in `room`, sent to every open target (fromRoom). */
  codes(room: StageRoom, values: Float32Array, step: number, lo: number, targets: Iterable<WeightsTarget>): void {
    const codes = (room.u16 as Uint16Array).subarray(0, values.length);
    encode16(this.o.wire as 'bf16' | 'fp16', values, codes);
    this.fromRoom(room, chunkFrame('weights-chunk', step, lo, codes), targets);
  }

  /** `frame` (its bytes in `room`) to every open target; the room is free again once all those sends are out. */
  fromRoom(room: StageRoom, frame: [Buffer, Uint8Array], targets: Iterable<WeightsTarget>): void {
    const release = () => {
      room.busy -= 1;
      if (room.busy > 0) return;
      this.rooms.push(room);
      this.roomWaiters.shift()?.();
      setImmediate(() => {
        for (const b of this.streams) this.pump(b);
        this.o.onRoomFree();
      });
    };
    room.busy = 1; // held while sending: a callback that comes at once does not free it early
    for (const m of targets) {
      if (m.ws.readyState !== m.ws.OPEN) continue;
      room.busy += 1;
      this.o.metrics?.sentBytes.inc(frame[0].length + frame[1].length);
      sendChunk(m.ws, frame, release);
    }
    release();
  }

  /** The weights' `units` of `step` to `targets` in 16-bit codes, as stage rooms come free, then `end`. */
  stream16(targets: WeightsTarget[], units: [number, number][], step: number, end: Buffer): void {
    const b: Broadcast16 = { targets, units, next: 0, step, end };
    this.streams.add(b);
    this.pump(b);
  }

  /**
   * Sends a 16-bit broadcast's next chunks while stage rooms are free; its end once all are out.
   * A room is free once every target took its chunk: a member that does not read holds the
   * broadcast for all until the heartbeat drops it (with the old full 16-bit copy it held the
   * next commit instead, drained()).
   */
  private pump(b: Broadcast16): void {
    while (b.next < b.units.length) {
      const room = this.room();
      if (room === undefined) return; // resumed when a room is free
      const [lo, hi] = b.units[b.next] as [number, number];
      b.next += 1;
      this.codes(room, this.o.weights.subarray(lo, hi), b.step, lo, b.targets);
    }
    for (const m of b.targets) if (m.ws.readyState === m.ws.OPEN) m.ws.send(b.end);
    this.streams.delete(b);
  }

  /**
   * Resolves when no socket of `members()` still holds queued bytes of the weights: they are sent
   * without a copy, so the update must not run before. Members of the step have drained by
   * construction (they had the weights before computing); this waits only for slow bystanders, and
   * for 16-bit broadcasts still encoding from the weights. (Bytes in stage rooms are not waited for.)
   */
  async drained(members: () => Iterable<WeightsTarget>): Promise<void> {
    for (;;) {
      const busy = [...members()].some((m) => m.ws.readyState === m.ws.OPEN && m.ws.bufferedAmount > 0);
      if ((!busy || this.weightSends === 0) && this.streams.size === 0) return;
      await new Promise((r) => setTimeout(r, 1));
    }
  }
}
