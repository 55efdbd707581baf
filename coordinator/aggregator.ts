import { WebSocketServer, type WebSocket } from 'ws';
import type { Logger } from '../shared/logger.ts';
import { FlatMomentumSgd } from '../shared/flat-sgd.ts';
import { WrittenRanges } from '../shared/written-ranges.ts';
import { advance, complete, position, runEnd, runsOf, startAt, unitAt, type SplitCursor } from '../shared/split-order.ts';
import { decodeBf16Scalar, encodeBf16, type WireFormat } from '../shared/half.ts';
import { sliceLayout } from '../shared/shard.ts';
import { FrameSlot } from '../shared/frame-slot.ts';
import { readIntoOneBuffer } from '../shared/socket-reads.ts';
import { LocalSocket } from '../shared/local-link.ts';
import { FRAME_SLOTS_MAX, FRAME_SLOT_FLOATS, arenaOf, type FloatArena } from '../shared/simd.ts';
import type { Metrics } from '../shared/metrics.ts';
import {
  CHUNK_FLOATS, MAX_PAYLOAD_BYTES, PROTOCOL_VERSION, ProtocolError, chunkFrame, codesOf, decodeFragments, decodeFrame, encode, field, fragmentBytes, sameSecret, valuesOf,
  type BatchStats, type ServerMessage,
} from '../shared/wire-protocol.ts';
import { shardTicket, type ShardLeader } from './shard-leader.ts';
import { hasStreamPutTwo } from '../worker/host-memory.ts';
import { DeferredContributions, putFloats } from './deferred-contributions.ts';
import { WeightsSender } from './weights-sender.ts';

/** One worker connection. */
export interface Member {
  id: number;
  ws: WebSocket;
  workerId: string;
  host: string;
  gpu: number | null;
  backend: string;
  /** Expected in the current step (holds or is fetching a job). */
  active: boolean;
  jobId?: string;
  lockToken?: string;
  /** The gradient coming in, in the order of shared/split-order.ts (the classifier's part first). */
  receiving?: SplitCursor & { jobId: string; sampleIds: number[]; stats: BatchStats; values?: 'fp32' };
  discarding: boolean;
  /** Sent a matching model hash; gets weights and may join steps. */
  ready: boolean;
  /** The step this member last said it has no job for (`idle`): it is not waited for. */
  idleStep?: number;
  /** performance.now() of the last frame or pong from this member. */
  lastSeen: number;
}

/** A member's complete gradient in the step being committed. */
export interface Contribution { memberId: number; workerId: string; jobId: string; sampleIds: number[]; stats: BatchStats }

export interface AggregatorOptions {
  host: string;
  port: number;
  token: string;
  modelHash: string;
  /** fp32 master weights, updated in place. */
  weights: Float32Array;
  sgd: FlatMomentumSgd;
  step: number;
  /** Sent to each worker in `welcome`: where the data and queues are, augmentation, model. */
  runInfo: Record<string, unknown>;
  /** 'applied' / 'unknown' jobs are refused at join (exactly once). */
  jobStatus: (jobId: string) => 'pending' | 'applied' | 'unknown';
  /** Called after the update is applied and before weights go out: write the ledger, checkpoint. */
  onCommit: (step: number, contributions: Contribution[]) => Promise<void>;
  /** A member left; its job (if any) should go back to the queue. */
  onMemberLost: (member: Member) => void;
  log: Logger;
  /**
   * A member silent (no frame, no pong) for this long is removed from the step,
   * as if its socket had closed; pings go out every third of it. A worker's
   * transport thread answers them while its main thread computes; a worker
   * process that hangs or dies stops answering. @defaultValue 30000
   */
  heartbeatTimeoutMs?: number;
  /** Bytes in and out and rejected frames are counted here when given. */
  metrics?: Metrics;
  /** Values on the wire (gradients in, weights out); master weights and momentum stay fp32. @defaultValue 'fp32' */
  wire?: WireFormat;
  /**
   * This is shard 0 of K (`--shards K`): `weights` and `sgd` cover the whole vector, this
   * aggregator reduces and updates shard 0's range of it; the follower shards connect here,
   * and the step's membership, aborts and commits are decided here.
   */
  shardLeader?: ShardLeader;
  /** This is a follower shard: `weights` and `sgd` cover its range; the leader decides each step. */
  follower?: FollowerHooks;
  /**
   * Early commit: a commit that staged more than this many floats finishes them after its weights
   * went out, a slice per turn of the event loop (settle() forces the rest). @defaultValue DEFER_FINISH_FLOATS
   */
  deferFinishAbove?: number;
  /** Early commit (see EarlyStream; the run option --early-commit); a follower shard follows its leader's rosters either way. @defaultValue false */
  earlyCommit?: boolean;
  /** Floats a deferred finish does per turn of the event loop. @defaultValue 4 chunks (16 MiB) */
  finishSliceFloats?: number;
  /** How a step with fewer samples than the full step updates (PartialSteps; the run option --partial-steps). @defaultValue 'scale' */
  partialSteps?: PartialSteps;
  /** The full step's samples so far (a resumed run's, from its checkpoint). @defaultValue 0 */
  fullStepSamples?: number;
}

/** Staged floats a commit finishes at once (fewer: not worth a deferral); 8 chunks, 32 MiB. */
const DEFER_FINISH_FLOATS = 8 * (1 << 20);

export interface FollowerHooks {
  /** The leader's per-run secret: a gradient is admitted with the ticket of its `joined`. */
  secret: Buffer;
  /** A member's gradient for (step, attempt) is complete here. */
  onHave: (step: number, attempt: number, jobId: string) => void;
  /** A member's socket closed: the leader drops it from the step. */
  onLost: (workerId: string) => void;
}

/**
 * The leader's decision on a step, applied by a follower shard; `divisor`: what the gradients' sum is divided by
 * (the step's samples, or more: see PartialSteps).
 */
export interface LeaderCommit { step: number; attempt: number; jobs: string[]; totalSamples: number; divisor: number; learningRate: number }

/** A step's membership once sealed (no join is taken after it): the jobs, their samples, the sum's divisor, the learning rate. */
export interface Roster { step: number; attempt: number; jobs: string[]; totalSamples: number; divisor: number; learningRate: number }

/**
 * How a step with fewer samples than the run's full step updates the weights (a worker lost or not yet
 * back, an epoch's last short step). 'scale': the gradients' sum is divided by the full step's samples
 * (the most any step of the run has had), so every sample moves the weights by the same learning rate
 * per sample as in a full step and a step with 2 of 3 workers moves 2/3 as far: the linear scaling rule
 * (Goyal et al. 2017) applied to the steps that lost workers, which elastic trainers leave to the user
 * (Horovod elastic's docs: rescale the learning rate on a reset). 'mean': by the step's own samples, the
 * full learning rate on fewer samples. Measured with `npm run chaos` (3 workers, seeds 7, 8, 9, 2026-11-29):
 * 40-51% of a faulted run's steps had fewer workers; its final accuracy minus the fault-free run's was
 * -1.42 / -1.08 / +0.46 with 'mean' (seed 7: -1.2 to -2.4 in all five of its runs) and +0.32 / -0.52 / +0.66
 * with 'scale', in the same hour (docs/measurements/dev-chaos-partial-steps-*.txt).
 */
export type PartialSteps = 'scale' | 'mean';
export const PARTIAL_STEPS = ['scale', 'mean'] as const;

/**
 * Early commit (opt-in: the run option --early-commit, or VGG_EARLY_COMMIT=1 where the coordinator runs): the update of a
 * range and its new weights' broadcast start as soon as every member of the step has sent that range,
 * while the rest of the gradients still arrive (the classifier's 89% while the conv body
 * differentiates). Positions count floats in the gradients' order (from `split` to the end, then
 * from 0): [0, pos) went out to `targets`. Measured on the 2-core development box (2026-11-28):
 * bench:scaling with overlap, 1 worker hosting its shard 340-364 ms a step against 429 (85% / 80%
 * efficiency against 68%), but 2 hosting workers 692-763 against 647, 1 aggregator 584-715 against
 * 529, and bench:allreduce (no compute) 2 hosting workers 553-564 against 457-476 ms: where every
 * core is busy already, its extra pass (finish) and the two streams at once cost more than they hide.
 * Opt-in until a many-core or multi-host run shows where it pays.
 */
interface EarlyStream { split: number; pos: number; targets: Set<Member> }

/**
 * Errors a trusted peer can cause by racing the step (an old step, a job that
 * was just taken or applied, a diverged gradient): answered, connection kept.
 * Every other rejection after the handshake means the peer is broken or hostile:
 * its partial gradient is dropped and the connection closed.
 */
const BENIGN_CODES = new Set(['VGG_ERR_STALE_STEP', 'VGG_ERR_DUPLICATE_JOB', 'VGG_ERR_NONFINITE']);

/**
 * The synchronous all-reduce: workers stream gradients in chunks, reduced on
 * arrival into one fp32 sum weighted by sample count; when every active member
 * has contributed, momentum SGD runs on the master weights and the new weights
 * are broadcast. A member lost mid-step aborts the step: the others resend.
 */
export class Aggregator {
  readonly options: AggregatorOptions;
  readonly members = new Map<number, Member>();
  step: number;
  learningRate: number;
  private server?: WebSocketServer;
  private nextId = 1;
  /** The master weights and SGD this aggregator updates: all of them, or shard 0's range. */
  private readonly weights: Float32Array;
  private readonly sgd: FlatMomentumSgd;
  private readonly sum: Float32Array;
  /** What this step's contributions have written of `sum` (the rest holds stale values). */
  private readonly written = new WrittenRanges();
  /** Where the weights and momentum live, if in a FloatArena: the sum and scratch go there too (SIMD loops). */
  private readonly arena?: FloatArena;
  private readonly wire: WireFormat;
  /** Decoded values of one 16-bit chunk. */
  private readonly scratch: Float32Array;
  private totalSamples = 0;
  /** The most samples a committed step of this run has had (PartialSteps 'scale' divides no step's sum by fewer). */
  fullStepSamples: number;
  private readonly done = new Map<number, Contribution>();
  private committing = false;
  private closing?: Promise<void>;
  private heartbeat?: NodeJS.Timeout;
  /** Bumped by each abort of the step (workers echo it to the follower shards); 0 at a new step. */
  attempt = 0;
  /** Follower: the leader's commit of the current step, applied once its gradients are all here. */
  private pendingCommit?: LeaderCommit & { resolve: () => void; reject: (e: Error) => void };
  /** Leader: members whose welcome waits until the follower shards are ready. */
  private waitingWelcome: Member[] = [];
  /** Frames rejected, by error code (for status and tests). */
  readonly rejected = new Map<string, number>();
  /** Where large frames from the workers are gathered (in the arena), if there is an arena. */
  readonly frameSlot?: FrameSlot;
  /** The step's sealed membership (early commit); joins after it wait for the next step. */
  private roster?: Roster;
  private early?: EarlyStream;
  /** The weights on their way to members: straight from the weights (fp32) or through stage rooms (16-bit, early commit). */
  private readonly sender: WeightsSender;
  private staging = false;
  private earlyFailed = false;
  private readonly earlyCommit: boolean;
  /** A hosting worker's own fp32 chunks not yet in the sum (defers()): they go in with another member's. */
  private readonly deferred = new DeferredContributions<Member>();
  /** A hosting worker whose gradient is complete while part of it waits in `deferred`: the leader hears of it (onHave) once none does. */
  private heldHave?: { member: Member; jobId: string };
  /** A commit's staged ranges not yet finished into the weights and momentum (settle()). */
  private unfinished?: { runs: [number, number][]; scale: number; lr: number };
  /** Floats of the last committed step whose update went out before its commit (early commit). */
  lastEarlyFloats = 0;

  /** Floats of the current step whose update went out already. */
  get earlyFloats(): number {
    return this.early?.pos ?? 0;
  }

  constructor(options: AggregatorOptions) {
    this.options = options;
    this.step = options.step;
    this.earlyCommit = options.earlyCommit ?? false;
    this.learningRate = options.sgd.options.learningRate;
    this.fullStepSamples = options.fullStepSamples ?? 0;
    const own = options.shardLeader?.attach(this, options.weights, options.sgd.velocity);
    const { sgd } = options;
    this.weights = own === undefined ? options.weights : options.weights.subarray(own.lo, own.hi);
    this.sgd = own === undefined ? sgd : new FlatMomentumSgd(sliceLayout(sgd.layout, own), sgd.options, sgd.velocity.subarray(own.lo, own.hi));
    this.arena = arenaOf(this.weights, this.sgd.velocity);
    const floats = (n: number) => this.arena?.alloc(n) ?? new Float32Array(n);
    this.sum = floats(this.weights.length);
    this.wire = options.wire ?? 'fp32';
    this.scratch = floats(this.wire === 'fp32' ? 0 : CHUNK_FLOATS);
    this.sender = new WeightsSender({ weights: this.weights, wire: this.wire, arena: this.arena, metrics: options.metrics, onRoomFree: () => this.advanceEarly() });
    // Gradient chunks gathered straight into the arena as they arrive: one copy from the socket to the reduce.
    // One slot per socket streaming at once (the members' frames interleave), made as needed.
    const arena = this.arena;
    this.frameSlot = arena === undefined ? undefined : new FrameSlot(() => arena.allocBytes(4 * FRAME_SLOT_FLOATS), 256 * 1024, FRAME_SLOTS_MAX);
  }

  async start(): Promise<number> {
    const server = new WebSocketServer({ host: this.options.host, port: this.options.port, maxPayload: MAX_PAYLOAD_BYTES });
    this.server = server;
    server.on('connection', (ws, req) => this.accept(ws, req.socket.remoteAddress ?? '?'));
    await new Promise<void>((resolve, reject) => {
      server.once('listening', resolve);
      server.once('error', reject);
    });
    server.on('error', (err) => this.options.log.error({ err: err.message }, 'aggregator server error'));
    const timeout = this.options.heartbeatTimeoutMs ?? 30_000;
    this.heartbeat = setInterval(() => this.checkHeartbeats(timeout), Math.max(10, Math.floor(timeout / 3)));
    const address = server.address();
    return typeof address === 'object' && address !== null ? address.port : this.options.port;
  }

  /** Members that passed the model-hash check and take part in steps. */
  readyMembers(): Member[] {
    return [...this.members.values()].filter((m) => m.ready);
  }

  setLearningRate(lr: number): void {
    this.learningRate = lr;
    this.sgd.options.learningRate = lr;
  }

  /** Members silent for longer than `timeout` are removed; the others are pinged. */
  private checkHeartbeats(timeout: number): void {
    const now = performance.now();
    for (const m of [...this.members.values()]) {
      if (now - m.lastSeen > timeout) {
        this.options.log.warn({ member: m.id, workerId: m.workerId, silentMs: Math.round(now - m.lastSeen), timeoutMs: timeout }, 'member silent; removed');
        this.count('VGG_ERR_HEARTBEAT');
        this.lose(m, 1001);
        m.ws.terminate();
      } else if (m.ws.readyState === m.ws.OPEN) {
        m.ws.ping();
      }
    }
  }

  private count(code: string): void {
    this.rejected.set(code, (this.rejected.get(code) ?? 0) + 1);
    this.options.metrics?.rejectedFrames.inc({ code });
  }

  /** A worker in this thread, through an in-process link (a shard hosted by a worker: shard-follower.ts). */
  acceptLocal(end: LocalSocket): void {
    this.accept(end as unknown as WebSocket, 'in-process');
  }

  private accept(ws: WebSocket, remote: string): void {
    // A chunk sent as head + floats arrives as those two fragments, not concatenated: its floats are
    // read where ws gathered them (the frame slot), or, in process, where the worker keeps them.
    ws.binaryType = 'fragments';
    let member: Member | undefined;
    let shardLink: ((msg: Record<string, unknown>) => void) | undefined;
    ws.on('error', (err: Error & { code?: string }) => {
      // ws closes the socket itself (1009) when a frame exceeds maxPayload.
      if (err.code === 'WS_ERR_UNSUPPORTED_MESSAGE_LENGTH') this.count('VGG_ERR_FRAME_TOO_LARGE');
      this.options.log.warn({ remote, code: err.code, err: err.message }, 'worker socket error');
    });
    ws.on('pong', () => { if (member !== undefined) member.lastSeen = performance.now(); });
    // Binary messages come as their fragments; a text frame (no peer of ours sends one) as one Buffer.
    ws.on('message', (raw: Buffer | Buffer[]) => {
      this.options.metrics?.receivedBytes.inc(Array.isArray(raw) ? fragmentBytes(raw) : raw.length);
      // A member already removed (rejected, silent) is not listened to while its socket closes.
      if (member !== undefined && !this.members.has(member.id)) return;
      try {
        const msg = Array.isArray(raw) ? decodeFragments(raw) : decodeFrame(raw);
        if (shardLink !== undefined) { shardLink(msg); return; }
        if (member === undefined) {
          shardLink = this.options.shardLeader?.accept(ws, msg);
          if (shardLink === undefined) member = this.hello(ws, msg, remote);
          return;
        }
        member.lastSeen = performance.now();
        this.handle(member, msg);
      } catch (err) {
        this.reject(ws, err, member);
      }
    });
    ws.on('close', (code) => { if (member !== undefined) this.lose(member, code); });
    // Large frames gathered into the arena as they arrive; then the socket can read into one reused buffer.
    if (this.frameSlot?.attach(ws) === true) readIntoOneBuffer(ws);
  }

  /**
   * Answers a rejected frame with its code and message. Before the handshake,
   * and after it for any but the benign codes, the peer is removed at once
   * (its part of the step dropped, the others resend) and the socket closed.
   */
  private reject(ws: WebSocket, err: unknown, m: Member | undefined): void {
    const e = err instanceof ProtocolError ? err : new ProtocolError('VGG_ERR_INTERNAL', (err as Error).message);
    this.count(e.code);
    this.options.log.warn({ code: e.code, error: e.message, member: m?.id }, 'frame rejected');
    this.send(ws, { t: 'error', code: e.code, message: e.message });
    if (m === undefined || !BENIGN_CODES.has(e.code)) {
      if (m !== undefined) this.lose(m, 1008);
      ws.close(1008, e.code);
    }
  }

  private hello(ws: WebSocket, msg: Record<string, unknown>, remote: string): Member {
    if (msg.t !== 'hello') throw new ProtocolError('VGG_ERR_HANDSHAKE', `first frame: expected "hello", got ${JSON.stringify(msg.t)}`);
    const protocol = field<number>(msg, 'protocol', 'int');
    if (protocol !== PROTOCOL_VERSION) {
      throw new ProtocolError('VGG_ERR_PROTOCOL_VERSION', `hello.protocol: expected ${PROTOCOL_VERSION}, got ${protocol}`);
    }
    if (typeof msg.token !== 'string') throw new ProtocolError('VGG_ERR_AUTH', 'hello.token: expected the run token, got none');
    if (!sameSecret(msg.token, this.options.token)) {
      throw new ProtocolError('VGG_ERR_AUTH', 'hello.token: expected the run token, got a wrong or missing one');
    }
    const member: Member = {
      id: this.nextId++, ws, workerId: field<string>(msg, 'workerId', 'string'), host: field<string>(msg, 'host', 'string'),
      gpu: typeof msg.gpu === 'number' ? msg.gpu : null, backend: field<string>(msg, 'backend', 'string'), active: false, discarding: false,
      ready: false, lastSeen: performance.now(),
    };
    this.members.set(member.id, member);
    this.options.log.info({ member: member.id, workerId: member.workerId, remote, step: this.step }, 'member joined');
    if (this.options.shardLeader?.ready() === false) this.waitingWelcome.push(member);
    else this.welcome(member);
    return member;
  }

  private welcome(m: Member): void {
    const shards = this.options.shardLeader?.shardList();
    this.send(m.ws, { t: 'welcome', memberId: m.id, step: this.step, modelHash: this.options.modelHash, run: shards === undefined ? this.options.runInfo : { ...this.options.runInfo, shards } });
  }

  /** Leader: every follower shard is ready; welcome the workers that connected before. */
  welcomeWaiting(): void {
    for (const m of this.waitingWelcome.splice(0)) if (this.members.has(m.id)) this.welcome(m);
  }

  /**
   * Leader: a worker's socket to a follower shard closed. If it is in the step, the step
   * cannot complete there: the worker is dropped here too (it reconnects to all shards).
   * Otherwise its own connection here closes as well (a worker drops all or none).
   */
  dropWorker(workerId: string): void {
    for (const m of [...this.members.values()]) {
      if (m.workerId !== workerId || !this.inShardedStep(m)) continue;
      this.lose(m, 1001);
      m.ws.terminate();
    }
  }

  /**
   * Validates and applies one frame, synchronously: a rejection removes a
   * hostile peer before its next frame (often in the same TCP read) is seen.
   */
  private handle(m: Member, msg: Record<string, unknown>): void {
    if (msg.t === 'ready') {
      // The worker built the model from the run info; its own layout hash must agree with ours.
      const hash = field<string>(msg, 'modelHash', 'string');
      if (hash !== this.options.modelHash) {
        throw new ProtocolError('VGG_ERR_MODEL_HASH', `ready.modelHash: expected ${this.options.modelHash}, got ${hash}`);
      }
      if (m.ready) throw new ProtocolError('VGG_ERR_HANDSHAKE', 'ready: expected once per connection, got it again');
      m.ready = true;
      // During a commit the weights are half updated: the commit sends this member the new ones at its end.
      if (!this.committing) this.sendWeights([m]);
      return;
    }
    if (!m.ready) throw new ProtocolError('VGG_ERR_HANDSHAKE', `frame ${JSON.stringify(msg.t)}: expected "ready" first`);
    switch (msg.t) {
      case 'join': {
        if (this.options.follower !== undefined) throw new ProtocolError('VGG_ERR_UNKNOWN_TYPE', 'join: expected at shard 0 (the coordinator), got it at a follower shard');
        const step = field<number>(msg, 'step', 'int');
        const jobId = field<string>(msg, 'jobId', 'string');
        const lockToken = field<string>(msg, 'lockToken', 'string');
        // A sealed step (early commit: part of its update went out) takes no one more; the next one will.
        if (step !== this.step || this.committing || this.roster !== undefined) { this.send(m.ws, { t: 'stale', step: this.step }); return; }
        const status = this.options.jobStatus(jobId);
        const heldByOther = [...this.members.values()].some((o) => o !== m && o.jobId === jobId);
        if (status !== 'pending' || heldByOther) {
          throw new ProtocolError('VGG_ERR_DUPLICATE_JOB', `join.jobId: expected a pending job, got ${jobId} (${heldByOther ? 'held by another member' : status})`);
        }
        Object.assign(m, { active: true, jobId, lockToken });
        // The step may have been aborted already: its gradient must carry the current attempt.
        this.send(m.ws, { t: 'joined', step, attempt: this.attempt, ticket: this.options.shardLeader?.ticket(step, m.workerId, jobId) });
        return;
      }
      case 'idle': {
        if (this.options.follower !== undefined || m.receiving !== undefined || this.done.has(m.id)) return;
        if (msg.step === this.step) m.idleStep = this.step;
        // With shards, a joined member may have sent part of its gradient to a follower: that step is void.
        if (this.inShardedStep(m)) this.abortStep(m);
        Object.assign(m, { active: false, jobId: undefined, lockToken: undefined });
        this.commitWhenComplete();
        this.advanceEarly();
        return;
      }
      case 'grad-begin': {
        const step = field<number>(msg, 'step', 'int');
        const jobId = field<string>(msg, 'jobId', 'string');
        if (step < this.step) throw new ProtocolError('VGG_ERR_STALE_STEP', `grad-begin.step: expected ${this.step}, got the older ${step}`);
        if (step > this.step) throw new ProtocolError('VGG_ERR_FUTURE_STEP', `grad-begin.step: expected ${this.step}, got ${step}, a step not reached yet`);
        if (this.options.follower !== undefined) this.checkTicket(m, msg, step, jobId);
        else if (!m.active || m.jobId !== jobId) {
          throw new ProtocolError('VGG_ERR_NOT_JOINED', `grad-begin.jobId: expected the joined job ${m.jobId ?? '(none)'}, got ${jobId}`);
        }
        // A gradient of an aborted attempt (sent before its `resend` arrived) is dropped; the resend follows.
        const attempt = msg.attempt === undefined ? this.attempt : field<number>(msg, 'attempt', 'int');
        if (attempt < this.attempt) {
          Object.assign(m, { receiving: undefined, discarding: true });
          return;
        }
        if (attempt > this.attempt) {
          if (this.options.follower === undefined) throw new ProtocolError('VGG_ERR_FUTURE_STEP', `grad-begin.attempt: expected ${this.attempt}, got ${attempt}, an attempt not started`);
          this.restartAttempt(attempt);
        }
        if (this.options.follower !== undefined && ([...this.members.values()].some((o) => o !== m && o.receiving?.jobId === jobId) || [...this.done.values()].some((c) => c.jobId === jobId))) {
          throw new ProtocolError('VGG_ERR_DUPLICATE_JOB', `grad-begin.jobId: expected a job no other member sends, got ${jobId} twice in step ${step}`);
        }
        if (m.receiving !== undefined || this.done.has(m.id)) {
          throw new ProtocolError('VGG_ERR_DUPLICATE_GRADIENT', `grad-begin: expected one gradient per member and step, got a second for step ${step}`);
        }
        const total = field<number>(msg, 'totalFloats', 'int');
        if (total !== this.sum.length) throw new ProtocolError('VGG_ERR_LAYOUT', `grad-begin.totalFloats: expected ${this.sum.length}, got ${total}`);
        const sampleIds = field<number[]>(msg, 'sampleIds', 'int[]');
        const split = msg.split === undefined ? 0 : field<number>(msg, 'split', 'int');
        if (split > 0 && split >= total) throw new ProtocolError('VGG_ERR_LAYOUT', `grad-begin.split: expected 0..${total - 1}, got ${split}`);
        // A bf16 run's hosting worker sends its own range as fp32 (no encode): rounded here as its encode would have.
        const values = msg.values === undefined ? undefined : field<string>(msg, 'values', 'string');
        const local = (m.ws as unknown) instanceof LocalSocket;
        if (values !== undefined && (values !== 'fp32' || this.wire !== 'bf16' || !local)) {
          throw new ProtocolError('VGG_ERR_FRAME_FIELD', `grad-begin.values: expected "fp32" only from a worker in this process in a bf16 run, got ${JSON.stringify(values)} ${local ? 'in process' : 'over a socket'} in a ${this.wire} run`);
        }
        m.receiving = { jobId, sampleIds, stats: checkStats(field<Record<string, unknown>>(msg, 'stats', 'object'), sampleIds.length), ...startAt(split), ...(values === 'fp32' ? { values } : {}) };
        m.discarding = false;
        this.advanceEarly();
        return;
      }
      case 'grad-chunk': {
        if (m.discarding) return;
        this.settle(); // the sum still holds the last commit's staged momentum until it is finished
        const r = m.receiving;
        const offset = field<number>(msg, 'offset', 'int');
        if (r === undefined) throw new ProtocolError('VGG_ERR_NOT_JOINED', `grad-chunk: expected a grad-begin first, got a chunk at ${offset}`);
        const chunkStep = field<number>(msg, 'step', 'int');
        if (chunkStep !== this.step) throw new ProtocolError('VGG_ERR_STEP_MISMATCH', `grad-chunk.step: expected ${this.step}, got ${chunkStep}`);
        const raw = field<Uint8Array>(msg, 'data', 'bytes');
        // fp32 floats from a bf16 run's hosting worker (grad-begin.values): they go in rounded to bf16 precision.
        const round = r.values === 'fp32';
        // bf16 into an arena: the SIMD reduce widens the codes itself (no decoded copy).
        const codes = this.arena !== undefined && this.wire === 'bf16' && !round ? codesOf(raw, 'bf16', CHUNK_FLOATS) : undefined;
        const g = codes === undefined ? valuesOf(raw, round ? 'fp32' : this.wire, this.scratch) : undefined;
        const length = codes?.length ?? (g as Float32Array).length;
        if (offset !== r.next) throw new ProtocolError('VGG_ERR_LAYOUT', `grad-chunk.offset: expected ${r.next}, got ${offset}`);
        const limit = runEnd(r, this.sum.length);
        if (offset + length > limit) {
          throw new ProtocolError('VGG_ERR_LAYOUT', `grad-chunk at ${offset}: expected at most ${limit - offset} floats (layout of ${this.sum.length}${r.split === 0 ? '' : `, split at ${r.split}`}), got ${length}`);
        }
        advance(r, length, this.sum.length);
        const n = r.stats.samples;
        const { arena, sum } = this;
        // The first contribution to a range of the sum stores it, later ones add (no zeroing pass).
        const voided: Member[] = [];
        const defer = g !== undefined && this.defers(m, g, raw);
        // Another's floats waiting here go in first where these cannot be fused with them (the fused pass rounds only the waiting ones).
        if (!defer && round && this.deferred.size > 0) this.putDeferred(offset, offset + length);
        const finite = defer ? this.deferLocal(m, offset, g as Float32Array, n, round)
          : this.written.take(offset, offset + length, (lo, hi, put) => {
            const part = codes !== undefined ? codes.subarray(lo - offset, hi - offset) : (g as Float32Array).subarray(lo - offset, hi - offset);
            if (arena === undefined) return accumulate(sum, lo, round ? bf16Floats(part as Float32Array) : part as Float32Array, n, put);
            if (put && this.deferred.size > 0 && !round) {
              const fused = this.deferred.putWith(arena, sum, lo, hi, part, n);
              voided.push(...fused.voided);
              return fused.finite;
            }
            return part instanceof Uint16Array ? arena.accumulateBf16(sum, lo, part, n, put) : putFloats(arena, sum, lo, part, n, round, put);
          });
        for (const v of voided) this.voidDeferred(v);
        this.releaseHave();
        if (!finite) {
          this.deferred.drop(m);
          // Part of it is in the sum already: abort the step, the others resend, this member gives up its job.
          // (At a follower the leader aborts: it drops the worker from the step, and the abort resets this sum.)
          if (this.options.follower !== undefined) {
            Object.assign(m, { receiving: undefined, discarding: true });
            this.options.follower.onLost(m.workerId);
            this.settleDeferred();
          } else this.abortStep(m);
          throw new ProtocolError('VGG_ERR_NONFINITE', `grad-chunk at ${offset}: expected finite values, got NaN or Inf (job ${r.jobId})`);
        }
        this.advanceEarly();
        return;
      }
      case 'grad-end': {
        if (m.discarding) { m.discarding = false; return; }
        const r = m.receiving;
        const endStep = field<number>(msg, 'step', 'int');
        if (r !== undefined && endStep !== this.step) throw new ProtocolError('VGG_ERR_STEP_MISMATCH', `grad-end.step: expected ${this.step}, got ${endStep}`);
        if (r === undefined || !complete(r, this.sum.length)) {
          const got = r === undefined ? 0 : position(r, this.sum.length);
          throw new ProtocolError('VGG_ERR_LAYOUT', `grad-end: expected ${this.sum.length} floats, got ${got}`);
        }
        m.receiving = undefined;
        this.totalSamples += r.stats.samples;
        this.done.set(m.id, { memberId: m.id, workerId: m.workerId, jobId: r.jobId, sampleIds: r.sampleIds, stats: r.stats });
        if (this.deferred.has(m)) this.heldHave = { member: m, jobId: r.jobId };
        else this.options.follower?.onHave(this.step, this.attempt, r.jobId);
        this.settleDeferred();
        this.advanceEarly();
        this.commitWhenComplete();
        return;
      }
      default:
        throw new ProtocolError('VGG_ERR_UNKNOWN_TYPE', `frame.t: expected ready, join, idle, grad-begin, grad-chunk or grad-end, got ${JSON.stringify(msg.t)}`);
    }
  }

  /**
   * Whether `m`'s fp32 chunk `g` waits for another member's chunk of the same floats (DeferredContributions): at a
   * follower shard with an arena and the addon's fused put, from its hosting worker (the in-process link: `g` is
   * a view of the worker's gradient, not of a buffer reused for the next frame), while no other member's wait (a
   * second member in process would be a second worker in one process: its floats then go in as they come).
   */
  private defers(m: Member, g: Float32Array, raw: Uint8Array): boolean {
    return this.options.follower !== undefined && this.arena !== undefined && (this.wire === 'fp32' || m.receiving?.values === 'fp32') && (m.ws as unknown) instanceof LocalSocket
      && g.buffer === raw.buffer && g.length > 0 && hasStreamPutTwo() && !this.deferred.holdsOtherThan(m);
  }

  /** `m`'s chunk at `offset`: floats another member wrote already are added now, the rest wait. Whether those added were finite. */
  private deferLocal(m: Member, offset: number, g: Float32Array, n: number, round: boolean): boolean {
    let finite = true;
    this.written.pieces(offset, offset + g.length, (lo, hi, fresh) => {
      const part = g.subarray(lo - offset, hi - offset);
      if (fresh) this.deferred.add({ member: m, lo, hi, g: part, n, round });
      else finite = putFloats(this.arena as FloatArena, this.sum, lo, part, n, round, false) && finite;
    });
    return finite;
  }

  /** Puts the deferred floats within [lo, hi) alone (no other member sends them any more); false if some were not finite (their members voided). */
  private putDeferred(lo: number, hi: number): boolean {
    this.settle();
    const voided: Member[] = [];
    for (const d of this.deferred.takeWithin(lo, hi)) {
      const ok = this.written.take(d.lo, d.hi, (a, b, fresh) => putFloats(this.arena as FloatArena, this.sum, a, d.g.subarray(a - d.lo, b - d.lo), d.n, d.round, fresh));
      if (!ok && !voided.includes(d.member)) voided.push(d.member);
    }
    for (const v of voided) this.voidDeferred(v);
    this.releaseHave();
    return voided.length === 0;
  }

  /** With floats deferred and no other member sending (none will fuse them): they go in now. */
  private settleDeferred(): void {
    if (this.deferred.size === 0) return;
    for (const o of this.members.values()) if (o.receiving !== undefined && !this.deferred.has(o)) return;
    this.putDeferred(0, this.sum.length);
  }

  /** The hosting worker heard of (onHave) once none of its floats wait any more. */
  private releaseHave(): void {
    const h = this.heldHave;
    if (h === undefined || this.deferred.has(h.member)) return;
    this.heldHave = undefined;
    this.options.follower?.onHave(this.step, this.attempt, h.jobId);
  }

  /**
   * `m`'s deferred floats were not finite: as when a chunk is refused on arrival (VGG_ERR_NONFINITE, answered,
   * connection kept), the leader drops the worker from the step and aborts it (the abort resets this sum).
   */
  private voidDeferred(m: Member): void {
    this.deferred.drop(m);
    if (this.heldHave?.member === m) this.heldHave = undefined;
    const jobId = m.receiving?.jobId ?? this.done.get(m.id)?.jobId;
    Object.assign(m, { receiving: undefined, discarding: m.receiving !== undefined });
    this.reject(m.ws, new ProtocolError('VGG_ERR_NONFINITE', `grad-chunk: expected finite values, got NaN or Inf (job ${jobId})`), m);
    this.options.follower?.onLost(m.workerId);
  }

  /** Leader with shards: `m` joined this step, so part of its gradient may be at a follower already. */
  private inShardedStep(m: Member): boolean {
    return this.options.shardLeader !== undefined && m.jobId !== undefined;
  }

  /** Follower: only a gradient with the leader's ticket for (step, worker, job) is admitted. */
  private checkTicket(m: Member, msg: Record<string, unknown>, step: number, jobId: string): void {
    if (!sameSecret(msg.ticket, shardTicket((this.options.follower as FollowerHooks).secret, step, m.workerId, jobId))) {
      throw new ProtocolError('VGG_ERR_AUTH', `grad-begin.ticket: expected the leader's ticket for job ${jobId} at step ${step}, got a wrong or missing one`);
    }
  }

  /** Follower: a newer attempt voids the step's sum so far, as the leader's abort would. */
  private restartAttempt(attempt: number): void {
    this.resetStep();
    for (const o of this.members.values()) {
      if (o.receiving !== undefined) Object.assign(o, { receiving: undefined, discarding: true });
    }
    this.attempt = attempt;
  }

  /** Follower: the leader aborted the step; the members resend as `attempt`. */
  leaderAbort(step: number, attempt: number): void {
    if (step === this.step && attempt > this.attempt) this.restartAttempt(attempt);
  }

  /** Follower: the leader sealed the step's membership; its ranges' updates may go out as they complete. */
  leaderRoster(r: Roster): void {
    if (r.step !== this.step || r.attempt < this.attempt || this.committing) return;
    if (r.attempt > this.attempt) this.restartAttempt(r.attempt);
    this.roster = r;
    this.setLearningRate(r.learningRate);
    this.advanceEarly();
  }

  /**
   * Early commit: seals the step once every ready member has begun its gradient or said it is idle
   * (the leader then tells the followers), then stages the update of each range every member of
   * the roster has sent (FlatMomentumSgd.stage: the weights and momentum stay as they were, an abort
   * leaves them so) and sends its new weights, up to STAGE_ROOMS chunks in flight. The commit then
   * finishes those ranges and updates the rest in place; workers use nothing before `weights-end`.
   */
  private advanceEarly(): void {
    if ((!this.earlyCommit && this.options.follower === undefined) || this.committing || this.staging || this.earlyFailed) return;
    if (this.roster === undefined) {
      if (this.options.follower !== undefined) return;
      let totalSamples = 0;
      const jobs: string[] = [];
      for (const m of this.members.values()) {
        if (!m.ready || (!m.active && m.idleStep === this.step)) continue;
        const stats = m.receiving?.stats ?? this.done.get(m.id)?.stats;
        if (!m.active || stats === undefined || m.jobId === undefined) return; // not begun, or not heard from in this step
        totalSamples += stats.samples;
        jobs.push(m.jobId);
      }
      if (jobs.length === 0) return;
      this.roster = { step: this.step, attempt: this.attempt, jobs, totalSamples, divisor: this.divisorOf(totalSamples), learningRate: this.learningRate };
      this.options.shardLeader?.roster(this.roster);
    }
    const r = this.roster;
    const total = this.sum.length;
    if (r.attempt !== this.attempt || r.totalSamples === 0 || total === 0) return;
    // How far every job of the roster is, in its gradient's order; they must share one order.
    let common = total;
    let split = this.early?.split;
    for (const job of r.jobs) {
      const m = [...this.members.values()].find((o) => o.receiving?.jobId === job);
      const done = m === undefined && [...this.done.values()].some((c) => c.jobId === job);
      if (done) continue;
      const g = m?.receiving;
      if (g === undefined) return;
      if (split !== undefined && g.split !== split) return; // an odd order: the commit does the rest
      split = g.split;
      common = Math.min(common, position(g, total));
    }
    const e = this.early ??= { split: split ?? 0, pos: 0, targets: new Set() };
    this.settle();
    this.staging = true;
    try {
      while (e.pos < common) {
        const [lo, hi] = unitAt(e.pos, e.split, total);
        const end = e.pos + (hi - lo);
        if (end > common) break; // a unit only when every member has all of it
        if (this.deferred.size > 0 && !this.putDeferred(lo, hi)) break; // no other member sends these floats any more
        if (!this.written.covers(lo, hi)) break;
        const room = this.sender.room();
        if (room === undefined) break; // resumed when a room is free
        if (e.pos === 0) {
          for (const m of this.readyMembers()) if (m.ws.readyState === m.ws.OPEN) e.targets.add(m);
          const begin = encode({ t: 'weights-begin', step: this.step + 1, totalFloats: total, learningRate: this.learningRate, split: e.split });
          for (const m of e.targets) m.ws.send(begin);
        }
        const out = room.f32.subarray(0, hi - lo);
        this.sgd.stage(this.weights, this.sum, 1 / r.divisor, lo, hi, out);
        if (room.u16 !== undefined) this.sender.codes(room, out, this.step + 1, lo, e.targets);
        else this.sender.fromRoom(room, chunkFrame('weights-chunk', this.step + 1, lo, out), e.targets);
        e.pos = end;
      }
    } catch (err) {
      // A fault here must not cost the step: the commit updates what did not go out, as without early commit.
      this.earlyFailed = true;
      this.options.log.error({ step: this.step, err: (err as Error).message }, 'early commit failed; the commit does the rest');
    } finally {
      this.staging = false;
    }
  }

  /** Follower: applies the leader's commit once every gradient it lists is here; resolves after the broadcast. */
  leaderCommit(c: LeaderCommit): Promise<void> {
    if (c.step !== this.step) return Promise.reject(new Error(`commit: expected step ${this.step}, got ${c.step}`));
    return new Promise<void>((resolve, reject) => {
      this.pendingCommit = { ...c, resolve, reject };
      this.commitWhenComplete();
    });
  }

  commitWhenComplete(): void {
    this.maybeCommit().catch((err: Error) => {
      this.options.log.error({ step: this.step, err: err.message }, 'commit failed');
      this.pendingCommit?.reject(err);
      this.pendingCommit = undefined;
    });
  }

  private async maybeCommit(): Promise<void> {
    if (this.committing || this.done.size === 0) return;
    const pending = this.pendingCommit;
    if (this.options.follower !== undefined) {
      if (pending === undefined) return;
      const have = new Set([...this.done.values()].map((c) => c.jobId));
      if (!pending.jobs.every((j) => have.has(j))) return;
      if (have.size !== pending.jobs.length || this.totalSamples !== pending.totalSamples || this.attempt !== pending.attempt) {
        throw new Error(`commit of step ${this.step}: expected jobs ${pending.jobs.join(',')} (${pending.totalSamples} samples, attempt ${pending.attempt}), got ${[...have].join(',')} (${this.totalSamples} samples, attempt ${this.attempt})`);
      }
      if (this.early !== undefined && this.roster?.learningRate !== pending.learningRate) {
        throw new Error(`commit of step ${this.step}: expected the roster's learning rate ${this.roster?.learningRate}, got ${pending.learningRate}`);
      }
      this.setLearningRate(pending.learningRate);
    } else {
      for (const m of this.members.values()) if (m.active && !this.done.has(m.id)) return;
      const jobs = [...this.done.values()].map((c) => c.jobId);
      if (this.options.shardLeader?.complete(this.step, this.attempt, jobs) === false) return;
    }
    this.committing = true;
    try {
      const contributions = [...this.done.values()];
      const early = this.early;
      /** Members that got this commit's weights chunk by chunk as they were updated (they need the end only). */
      let streamed: Set<Member> | undefined;
      if (early !== undefined) {
        const jobs = new Set(contributions.map((c) => c.jobId));
        const roster = this.roster as Roster;
        if (jobs.size !== roster.jobs.length || !roster.jobs.every((j) => jobs.has(j)) || roster.totalSamples !== this.totalSamples) {
          throw new Error(`commit of step ${this.step}: expected the roster's jobs ${roster.jobs.join(',')} (${roster.totalSamples} samples), got ${[...jobs].join(',')} (${this.totalSamples})`);
        }
      }
      await this.sender.drained(() => this.members.values());
      this.settle();
      // A follower divides as its leader says; the leader (or the only aggregator) as the roster did, if any.
      const divisor = pending?.divisor ?? this.roster?.divisor ?? this.divisorOf(this.totalSamples);
      this.options.shardLeader?.commit(this.step, this.attempt, contributions.map((c) => c.jobId), this.totalSamples, divisor, this.learningRate);
      if (this.totalSamples > 0) {
        if (this.deferred.size > 0 && !this.putDeferred(0, this.sum.length)) throw new Error(`commit of step ${this.step}: a hosting worker's deferred gradient was not finite`);
        if (!this.written.covers(0, this.sum.length)) throw new Error(`commit of step ${this.step}: expected every float of the sum written by ${contributions.length} complete gradients, got gaps`);
        const scale = 1 / divisor;
        if (early === undefined) streamed = await this.updateAndSend(scale);
        else {
          // The rest updated in place; what went out early is finished (the staged update made the state):
          // past DEFER_FINISH_FLOATS after the weights went out, off the step's path (settle() before any use).
          for (const [lo, hi] of runsOf(early.split, early.pos, this.sum.length, this.sum.length)) this.sgd.apply(this.weights, this.sum, scale, lo, hi);
          this.unfinished = { runs: runsOf(early.split, 0, early.pos, this.sum.length), scale, lr: this.sgd.options.learningRate };
          if (early.pos <= (this.options.deferFinishAbove ?? DEFER_FINISH_FLOATS)) this.settle();
        }
      }
      this.step += 1;
      this.attempt = 0;
      this.fullStepSamples = Math.max(this.fullStepSamples, this.totalSamples);
      this.lastEarlyFloats = early?.pos ?? 0;
      this.pendingCommit = undefined;
      await this.options.onCommit(this.step, contributions);
      this.resetStep();
      for (const c of contributions) {
        const m = this.members.get(c.memberId);
        if (m !== undefined) Object.assign(m, { jobId: undefined, lockToken: undefined });
      }
      if (streamed === undefined) this.sendWeights(this.readyMembers(), early);
      else {
        const end = encode({ t: 'weights-end', step: this.step, learningRate: this.learningRate });
        for (const m of streamed) if (m.ws.readyState === m.ws.OPEN) m.ws.send(end);
        this.sendWeights(this.readyMembers().filter((m) => !streamed.has(m)));
      }
      if (this.unfinished !== undefined) this.finishLater();
      pending?.resolve();
    } finally {
      this.committing = false;
    }
  }

  /**
   * The commit's update a chunk at a time, each chunk's new weights sent to every ready member
   * right after it is updated (from cache; fp32 straight from the weights, 16-bit through a stage
   * room), the event loop turned between chunks so the sockets drain while the rest is updated,
   * instead of the whole update first and then the whole broadcast. `weights-end` follows after
   * onCommit (the caller): workers use nothing before it. Returns the members sent to.
   */
  private async updateAndSend(scale: number): Promise<Set<Member>> {
    const total = this.sum.length;
    const step = this.step + 1;
    const targets = new Set(this.readyMembers().filter((m) => m.ws.readyState === m.ws.OPEN));
    const begin = encode({ t: 'weights-begin', step, totalFloats: total, learningRate: this.learningRate });
    for (const m of targets) m.ws.send(begin);
    for (let lo = 0; lo < total; lo += CHUNK_FLOATS) {
      const hi = Math.min(total, lo + CHUNK_FLOATS);
      this.sgd.apply(this.weights, this.sum, scale, lo, hi);
      if (this.wire === 'fp32') this.sender.fromWeights(step, lo, hi, targets);
      else this.sender.codes(await this.sender.nextRoom(), this.weights.subarray(lo, hi), step, lo, targets);
      await new Promise((r) => setImmediate(r));
    }
    return targets;
  }

  /** What a step's gradient sum of `samples` samples is divided by (PartialSteps). */
  private divisorOf(samples: number): number {
    return this.options.partialSteps === 'mean' ? samples : Math.max(samples, this.fullStepSamples);
  }

  /** Finishes the last commit's staged ranges now: before anything reads the weights or momentum, or writes the sum. */
  settle(): void {
    const u = this.unfinished;
    if (u === undefined) return;
    this.unfinished = undefined;
    for (const [lo, hi] of u.runs) this.sgd.finish(this.weights, this.sum, u.scale, lo, hi, u.lr);
  }

  /** Finishes the staged ranges a few chunks per turn of the event loop (sockets and links served between). */
  private finishLater(): void {
    setImmediate(() => {
      const u = this.unfinished;
      if (u === undefined) return;
      for (let budget = this.options.finishSliceFloats ?? 4 * CHUNK_FLOATS; budget > 0 && u.runs.length > 0;) {
        const [lo, hi] = u.runs[0] as [number, number];
        const end = Math.min(hi, lo + budget);
        this.sgd.finish(this.weights, this.sum, u.scale, lo, end, u.lr);
        budget -= end - lo;
        if (end === hi) u.runs.shift();
        else u.runs[0] = [end, hi];
      }
      if (u.runs.length === 0) this.unfinished = undefined;
      else this.finishLater();
    });
  }

  private resetStep(): void {
    this.deferred.clear();
    this.heldHave = undefined;
    this.roster = undefined;
    this.early = undefined;
    this.earlyFailed = false;
    this.written.clear();
    this.totalSamples = 0;
    this.done.clear();
  }

  private lose(m: Member, code: number): void {
    if (!this.members.delete(m.id)) return;
    const clean = code === 1000 || this.closing !== undefined;
    this.options.log[clean ? 'info' : 'warn']({ member: m.id, workerId: m.workerId, jobId: m.jobId, step: this.step, code }, clean ? 'member left' : 'member lost');
    if (this.options.follower !== undefined) {
      // The leader decides: it drops the worker from the step (and aborts it if the worker was in it).
      this.deferred.drop(m);
      if (this.heldHave?.member === m) this.heldHave = undefined;
      if (m.ready) this.options.follower.onLost(m.workerId);
      this.settleDeferred();
      return;
    }
    // With shards, a member of the step may have sent (part of) its gradient to a follower already.
    const contributed = m.receiving !== undefined || this.done.has(m.id) || this.inShardedStep(m);
    if (contributed && !this.committing) this.abortStep(m);
    this.options.onMemberLost(m);
    this.commitWhenComplete();
  }

  /**
   * Drops the step's sum because `culprit`'s part of it is void; every other member of the
   * step is told the new attempt: contributors resend, and one that joined but has not sent
   * yet sends as that attempt (with the old one its gradient would be dropped as void).
   */
  private abortStep(culprit: Member): void {
    const resenders = [...this.members.values()].filter((o) => o !== culprit && (o.receiving !== undefined || this.done.has(o.id) || o.jobId !== undefined));
    this.resetStep();
    this.attempt += 1;
    this.options.shardLeader?.abort(this.step, this.attempt);
    culprit.receiving = undefined;
    culprit.discarding = true;
    Object.assign(culprit, { active: false, jobId: undefined, lockToken: undefined });
    for (const o of resenders) {
      o.discarding = o.receiving !== undefined;
      o.receiving = undefined;
      this.send(o.ws, { t: 'resend', step: this.step, attempt: this.attempt });
    }
    this.options.log.warn({ step: this.step, member: culprit.id, resend: resenders.length }, 'step aborted');
  }

  private send(ws: WebSocket, msg: ServerMessage): void {
    if (ws.readyState === ws.OPEN) ws.send(encode(msg));
  }

  /**
   * Current weights to `targets`: each chunk's head encoded once, the floats
   * sent straight from the master weights (no copy; see WeightsSender.drained). Members that
   * had the step's early stream get the rest of it and its end.
   */
  private sendWeights(targets: Member[], early?: EarlyStream): void {
    const total = this.weights.length;
    const streamed = early === undefined ? [] : targets.filter((m) => early.targets.has(m));
    if (streamed.length > 0) this.broadcast(streamed, runsOf((early as EarlyStream).split, (early as EarlyStream).pos, total, total), false);
    const fresh = targets.filter((m) => !streamed.includes(m));
    if (fresh.length > 0) this.broadcast(fresh, [[0, total]], true);
  }

  /**
   * `runs` of the weights (in order), with a `weights-begin` first if `begin`, then `weights-end`.
   * fp32: every chunk sent straight from the weights at once. 16-bit: a chunk at a time encoded
   * into a stage room and sent to every target (no 16-bit copy of all the weights: half the
   * weights' bytes less memory), the next when a room is free (pump()).
   */
  private broadcast(targets: Member[], runs: [number, number][], begin: boolean): void {
    if (begin) this.settle();
    const live = targets.filter((m) => m.ws.readyState === m.ws.OPEN);
    if (live.length === 0) return;
    const total = this.weights.length;
    const first = begin ? encode({ t: 'weights-begin', step: this.step, totalFloats: total, learningRate: this.learningRate }) : undefined;
    const end = encode({ t: 'weights-end', step: this.step, learningRate: this.learningRate });
    const units: [number, number][] = [];
    for (const [lo, hi] of runs) for (let offset = lo; offset < hi; offset += CHUNK_FLOATS) units.push([offset, Math.min(hi, offset + CHUNK_FLOATS)]);
    for (const m of live) if (first !== undefined) m.ws.send(first);
    this.options.metrics?.sentBytes.inc(live.length * ((first?.length ?? 0) + end.length)); // the chunks: counted by the sender
    if (this.wire !== 'fp32') {
      this.sender.stream16(live, units, this.step, end);
      return;
    }
    for (const [lo, hi] of units) this.sender.fromWeights(this.step, lo, hi, live);
    for (const m of live) m.ws.send(end);
  }

  close(): Promise<void> {
    clearInterval(this.heartbeat);
    this.settle();
    this.options.shardLeader?.close();
    this.closing ??= new Promise<void>((resolve) => {
      for (const m of this.members.values()) m.ws.terminate();
      if (this.server === undefined) resolve();
      else this.server.close(() => resolve());
    }).then(() => this.arena?.close()); // its helper threads, if any (the weights stay readable)
    return this.closing;
  }
}

/** `g` rounded to bfloat16 precision, as floats (the floats of the codes its encode gives; without an arena). */
function bf16Floats(g: Float32Array): Float32Array {
  const codes = new Uint16Array(g.length);
  encodeBf16(g, codes);
  const out = new Float32Array(g.length);
  decodeBf16Scalar(codes, out);
  return out;
}

/** A batch's metrics: counts are integers, `samples` is the number of sample ids sent, the loss is finite. */
function checkStats(raw: Record<string, unknown>, ids: number): BatchStats {
  const s: Record<string, unknown> = { ...raw, t: 'grad-begin.stats' };
  if (typeof s.loss === 'number' && !Number.isFinite(s.loss)) {
    throw new ProtocolError('VGG_ERR_NONFINITE', `grad-begin.stats.loss: expected a finite number, got ${s.loss}`);
  }
  const stats: BatchStats = {
    samples: field<number>(s, 'samples', 'int'), loss: field<number>(s, 'loss', 'number'), top1: field<number>(s, 'top1', 'int'),
    top5: field<number>(s, 'top5', 'int'), skipped: field<number>(s, 'skipped', 'int'),
  };
  if (stats.samples !== ids || stats.top1 > ids || stats.top5 > ids) {
    throw new ProtocolError('VGG_ERR_FRAME_FIELD', `grad-begin.stats: expected samples = ${ids} sample ids and top1, top5 <= it, got samples ${stats.samples}, top1 ${stats.top1}, top5 ${stats.top5}`);
  }
  return stats;
}

/**
 * sum[offset + i] += n * g[i], the reduce on arrival (with `put`: sum[offset + i] = 0 + n * g[i],
 * the sum not read). Returns false when g holds a NaN or an Inf (the sum is then void). Four
 * independent probes keep the check off the loop's critical path.
 */
function accumulate(sum: Float32Array, offset: number, g: Float32Array, n: number, put: boolean): boolean {
  if (put) sum.fill(0, offset, offset + g.length); // the JS fallback (no SIMD) keeps one loop
  const len = g.length;
  const tail = len - (len % 4);
  let p0 = 0;
  let p1 = 0;
  let p2 = 0;
  let p3 = 0;
  for (let i = 0; i < tail; i += 4) {
    const a = g[i] as number;
    const b = g[i + 1] as number;
    const c = g[i + 2] as number;
    const d = g[i + 3] as number;
    p0 += a * 0; // NaN as soon as a value is NaN or +-Inf
    p1 += b * 0;
    p2 += c * 0;
    p3 += d * 0;
    const j = offset + i;
    // fp32 per operation, as the SIMD kernels (n g rounded, then the add): the same sum either way.
    sum[j] = (sum[j] as number) + Math.fround(n * a);
    sum[j + 1] = (sum[j + 1] as number) + Math.fround(n * b);
    sum[j + 2] = (sum[j + 2] as number) + Math.fround(n * c);
    sum[j + 3] = (sum[j + 3] as number) + Math.fround(n * d);
  }
  for (let i = tail; i < len; i += 1) {
    const a = g[i] as number;
    p0 += a * 0;
    sum[offset + i] = (sum[offset + i] as number) + Math.fround(n * a);
  }
  return !Number.isNaN(p0 + p1 + p2 + p3);
}
