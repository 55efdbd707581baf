import { EventEmitter } from 'node:events';
import { fragmentBytes } from './wire-protocol.ts';

/** Bytes delivered per turn of the event loop: a large backlog does not starve the thread's sockets. */
const TURN_BYTES = 16 * 1024 * 1024;

/**
 * One end of an in-process link: the part of a ws WebSocket that the
 * aggregator and its client use (send with fragments, 'message', ping and
 * 'pong', bufferedAmount, close, terminate, 'close'), between two objects in
 * the same thread. A worker that hosts an aggregator shard reaches it through
 * this link instead of a loopback socket, so its own slice of the gradient and
 * of the weights never crosses the kernel (`worker start --host-shard i/K`).
 *
 * Semantics kept from a socket: messages arrive in order, later (never within
 * `send`); the bytes sent are not copied, so, as with ws, the sender must not
 * change them until `bufferedAmount` says they were delivered, or the send's
 * callback was called (after the other end's listeners had the message, as ws
 * calls it once the bytes are in the kernel). A message sent
 * as fragments (`fin: false`, then `fin: true`) arrives whole, or as its
 * fragments where `binaryType` is 'fragments'.
 */
export class LocalSocket extends EventEmitter {
  readonly CONNECTING = 0;
  readonly OPEN = 1;
  readonly CLOSING = 2;
  readonly CLOSED = 3;
  readyState = 1;
  binaryType: 'nodebuffer' | 'fragments' = 'nodebuffer';
  /** Bytes sent and not yet delivered to the other end. */
  bufferedAmount = 0;
  private peer!: LocalSocket;
  private fragments: Buffer[] = [];
  /** The callbacks of the fragments sent so far of the message being sent. */
  private fragmentsDone: ((err?: Error) => void)[] = [];
  private queue: { parts: Buffer[]; bytes: number; done: ((err?: Error) => void)[] }[] = [];
  private flushing = false;

  /** Two connected ends: the first is the client's (it emits 'open' on the next turn), the second the server's. */
  static pair(): [LocalSocket, LocalSocket] {
    const a = new LocalSocket();
    const b = new LocalSocket();
    a.peer = b;
    b.peer = a;
    setImmediate(() => { if (a.readyState === a.OPEN) a.emit('open'); });
    return [a, b];
  }

  send(data: Uint8Array | string, options?: { fin?: boolean } | ((err?: Error) => void), cb?: (err?: Error) => void): void {
    const done = typeof options === 'function' ? options : cb;
    if (this.readyState !== this.OPEN) {
      done?.(new Error(`local link: expected an open link, got readyState ${this.readyState}`));
      return;
    }
    const buf = typeof data === 'string' ? Buffer.from(data) : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
    this.fragments.push(buf);
    if (done !== undefined) this.fragmentsDone.push(done);
    if (typeof options === 'object' && options.fin === false) return;
    const parts = this.fragments;
    this.fragments = [];
    const bytes = fragmentBytes(parts);
    this.bufferedAmount += bytes;
    this.queue.push({ parts, bytes, done: this.fragmentsDone });
    this.fragmentsDone = [];
    this.flush();
  }

  /** Delivers queued messages on later turns, about TURN_BYTES per turn. */
  private flush(): void {
    if (this.flushing) return;
    this.flushing = true;
    setImmediate(() => {
      this.flushing = false;
      let delivered = 0;
      while (delivered < TURN_BYTES && this.queue.length > 0 && this.readyState !== this.CLOSED) {
        const m = this.queue.shift() as LocalSocket['queue'][number];
        this.bufferedAmount -= m.bytes;
        delivered += m.bytes;
        this.peer.receive(m.parts);
        // The other end's listeners are done with the bytes: the sender may reuse them.
        for (const done of m.done) done();
      }
      if (this.queue.length > 0 && this.readyState !== this.CLOSED) this.flush();
    });
  }

  private receive(parts: Buffer[]): void {
    if (this.readyState === this.CLOSED) return;
    const payload = this.binaryType === 'fragments' ? parts : parts.length === 1 ? parts[0] : Buffer.concat(parts);
    this.emit('message', payload, true);
  }

  ping(): void {
    if (this.readyState !== this.OPEN) return;
    setImmediate(() => {
      if (this.peer.readyState !== this.OPEN) return;
      this.peer.emit('ping', Buffer.alloc(0));
      if (this.readyState === this.OPEN) this.emit('pong', Buffer.alloc(0));
    });
  }

  /** Closes both ends once what was sent before has been delivered (as ws sends queued data before its close frame). */
  close(code = 1000, reason = ''): void {
    if (this.readyState !== this.OPEN) return;
    this.readyState = this.CLOSING;
    this.peer.readyState = this.peer.CLOSING;
    // Both ends' flushes go on while CLOSING; the link ends once neither has anything queued.
    const finish = () => {
      if (this.readyState === this.CLOSED) return;
      if (this.queue.length > 0 || this.peer.queue.length > 0) setImmediate(finish);
      else this.end(code, reason);
    };
    setImmediate(finish);
  }

  /** Drops the link at once, undelivered messages with it (a killed peer). */
  terminate(): void {
    if (this.readyState === this.CLOSED) return;
    this.end(1006, '');
  }

  private end(code: number, reason: string): void {
    for (const side of [this, this.peer]) {
      side.readyState = side.CLOSED;
      // Undelivered sends fail, as ws's callbacks do when the socket closes first.
      const undelivered = [...side.queue.flatMap((m) => m.done), ...side.fragmentsDone];
      side.queue = [];
      side.fragments = [];
      side.fragmentsDone = [];
      if (undelivered.length > 0) setImmediate(() => { for (const done of undelivered) done(new Error('local link: closed before the message was delivered')); });
      side.bufferedAmount = 0;
    }
    setImmediate(() => {
      this.emit('close', code, Buffer.from(reason));
      this.peer.emit('close', code, Buffer.from(reason));
    });
  }
}

const listeners = new Map<string, (server: LocalSocket) => void>();

/**
 * Makes `url` reachable in this thread through a LocalSocket: `connectLocal(url)` from
 * then on hands `accept` the server's end. Returns the function that undoes it.
 */
export function listenLocal(url: string, accept: (server: LocalSocket) => void): () => void {
  listeners.set(url, accept);
  return () => { if (listeners.get(url) === accept) listeners.delete(url); };
}

/** The client's end of a new link to `url` if something in this thread listens there (listenLocal), else undefined. */
export function connectLocal(url: string): LocalSocket | undefined {
  const accept = listeners.get(url);
  if (accept === undefined) return undefined;
  const [client, server] = LocalSocket.pair();
  accept(server);
  return client;
}
