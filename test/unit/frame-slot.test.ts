import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import type { AddressInfo } from 'node:net';
import WebSocket, { WebSocketServer } from 'ws';
import { FrameSlot } from '../../shared/frame-slot.ts';

/** Real ws on loopback: a server whose sockets go through one FrameSlot, and clients. */
async function setup(t: { after: (fn: () => unknown) => void }, slotBytes: number, count = 1) {
  const backing = new Uint8Array(count * slotBytes + 64);
  let made = 0;
  const slot = new FrameSlot(() => backing.subarray(16 + made * slotBytes, 16 + (made += 1) * slotBytes), 64 * 1024, count);
  const server = new WebSocketServer({ host: '127.0.0.1', port: 0, maxPayload: 16 << 20 });
  const received: { client: number; bytes: Buffer; inSlot: boolean }[] = [];
  const waiters: (() => void)[] = [];
  const sockets: WebSocket[] = [];
  server.on('connection', (ws) => {
    sockets.push(ws);
    let client = -1;
    ws.on('message', (data: Buffer) => {
      if (client < 0) { client = data.readUInt8(0); return; } // the first message names the client
      // Copied here, as the aggregator consumes a chunk before returning.
      received.push({ client, bytes: Buffer.from(data), inSlot: data.buffer === backing.buffer });
      waiters.splice(0).forEach((w) => w());
    });
    assert.equal(slot.attach(ws), true);
  });
  await new Promise<void>((r) => server.once('listening', r));
  const port = (server.address() as AddressInfo).port;
  const clients: WebSocket[] = [];
  const connect = async (id: number): Promise<WebSocket> => {
    const c = new WebSocket(`ws://127.0.0.1:${port}`, { perMessageDeflate: false });
    clients.push(c);
    await new Promise((r) => c.once('open', r));
    c.send(Buffer.from([id]));
    return c;
  };
  const messages = async (n: number) => { while (received.length < n) await new Promise<void>((r) => waiters.push(r)); };
  t.after(async () => {
    for (const c of clients) c.terminate();
    await new Promise((r) => server.close(r));
  });
  return { slot, connect, received, messages, sockets };
}

const pattern = (n: number, seed: number) => Buffer.from(Array.from({ length: n }, (_, i) => (i * 31 + seed) & 0xff));

describe('FrameSlot: large frames gathered into one reusable buffer', () => {
  test('a large frame lands in the slot intact; small ones and ones larger than the slot are left to ws', async (t) => {
    const s = await setup(t, 1 << 20);
    const c = await s.connect(1);
    const big = pattern(700 * 1024, 1);
    const small = pattern(1000, 2);
    const huge = pattern((1 << 20) + 5000, 3);
    c.send(big);
    c.send(small);
    c.send(huge);
    c.send(big);
    await s.messages(4);
    assert.deepEqual(s.received.map((r) => r.inSlot), [true, false, false, true]);
    assert.ok(s.received[0]?.bytes.equals(big) && s.received[1]?.bytes.equals(small) && s.received[2]?.bytes.equals(huge) && s.received[3]?.bytes.equals(big));
    assert.deepEqual(s.slot.counts, { slot: 2, fallback: 1 });
    assert.equal(s.slot.made, 1, 'one socket at a time: one slot');
  });

  test('a fragmented message holds the slot until its last fragment: another client\'s frame meanwhile is gathered by ws, both intact', async (t) => {
    const s = await setup(t, 1 << 20);
    const a = await s.connect(1);
    const b = await s.connect(2);
    const a1 = pattern(300 * 1024, 4);
    const a2 = pattern(200 * 1024, 5);
    const bMsg = pattern(400 * 1024, 6);
    const pinged = new Promise((r) => s.sockets[0]?.once('ping', r));
    a.send(a1, { fin: false });
    a.ping(); // frames are handled in order: the ping arrives after the first fragment was gathered
    await pinged;
    b.send(bMsg);
    await s.messages(1);
    a.send(a2, { fin: true });
    await s.messages(2);
    assert.equal(s.received[0]?.client, 2);
    assert.ok(s.received[0]?.bytes.equals(bMsg));
    assert.ok(s.received[1]?.bytes.equals(Buffer.concat([a1, a2])));
    assert.deepEqual(s.slot.counts, { slot: 1, fallback: 2 }, "a's first fragment took the slot; b's frame and a's last fragment found it taken");
  });

  test('a socket closed while holding the slot gives it back', async (t) => {
    const s = await setup(t, 1 << 20);
    const a = await s.connect(1);
    const b = await s.connect(2);
    const closed = new Promise((r) => s.sockets[0]?.once('close', r));
    const pinged = new Promise((r) => s.sockets[0]?.once('ping', r));
    a.send(pattern(300 * 1024, 7), { fin: false });
    a.ping();
    await pinged;
    a.terminate();
    await closed;
    const msg = pattern(500 * 1024, 8);
    b.send(msg);
    await s.messages(1);
    assert.equal(s.received[0]?.inSlot, true);
    assert.ok(s.received[0]?.bytes.equals(msg));
    assert.deepEqual(s.slot.counts, { slot: 2, fallback: 0 });
  });

  test('with two slots two sockets hold one each at once; a third finds none and is gathered into fresh room, all intact', async (t) => {
    const s = await setup(t, 1 << 20, 2);
    const [a, b, c] = [await s.connect(1), await s.connect(2), await s.connect(3)];
    const parts = [1, 2].map((k) => [pattern(300 * 1024, 10 + k), pattern(100 * 1024, 20 + k)] as const);
    for (const [k, ws] of [a, b].entries()) {
      const pinged = new Promise((r) => s.sockets[k]?.once('ping', r));
      ws.send(parts[k]?.[0] as Buffer, { fin: false });
      ws.ping();
      await pinged;
    }
    const cMsg = pattern(400 * 1024, 30);
    c.send(cMsg);
    await s.messages(1);
    a.send(parts[0]?.[1] as Buffer, { fin: true });
    await s.messages(2);
    b.send(parts[1]?.[1] as Buffer, { fin: true });
    await s.messages(3);
    assert.deepEqual(s.received.map((r) => [r.client, r.inSlot]), [[3, false], [1, false], [2, false]], 'c first; a\'s and b\'s fragments are concatenated (nodebuffer)');
    assert.ok(s.received[0]?.bytes.equals(cMsg));
    assert.ok(s.received[1]?.bytes.equals(Buffer.concat(parts[0] as readonly Buffer[])) && s.received[2]?.bytes.equals(Buffer.concat(parts[1] as readonly Buffer[])));
    assert.deepEqual(s.slot.counts, { slot: 2, fallback: 3 }, "a's and b's first fragments took the slots; c's frame and their last fragments did not");
    assert.equal(s.slot.made, 2, 'slots are made as sockets need them, up to the limit');
  });
});
