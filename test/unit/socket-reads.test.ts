import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import https from 'node:https';
import net, { type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import WebSocket, { WebSocketServer } from 'ws';
import { gatherFrames, inPlaceOf, receiverOf } from '../../shared/frame-slot.ts';
import { NEXT_HEAD_READ_BYTES, READ_BYTES, readIntoOneBuffer } from '../../shared/socket-reads.ts';
import { sendChunk } from '../../shared/wire-protocol.ts';

const pattern = (n: number, seed: number) => Buffer.from(Array.from({ length: n }, (_, i) => (i * 131 + seed * 17 + (i >> 9)) & 0xff));

/** The bytes of a whole message as the listener saw them, copied at once (the buffers are valid only during the event). */
const copy = (data: Buffer | Buffer[]) => Buffer.concat(Array.isArray(data) ? data : [data]);

/**
 * Real ws on loopback: a server whose sockets gather frames of at least 64 KiB
 * as they arrive (into fresh room, or one 1 MiB room when asked) and read into
 * the thread's one buffer; each socket's messages are recorded per client.
 */
async function setup(t: { after: (fn: () => unknown) => void }, o: { fragments?: boolean; sharedRoom?: boolean } = {}) {
  const server = new WebSocketServer({ host: '127.0.0.1', port: 0, maxPayload: 64 << 20 });
  const got = new Map<number, Buffer[]>();
  const switched: boolean[] = [];
  const waiters: (() => void)[] = [];
  const sockets: WebSocket[] = [];
  const room = o.sharedRoom === true ? Buffer.from(new SharedArrayBuffer(1 << 20)) : Buffer.alloc(1 << 20);
  let holder: WebSocket | undefined;
  server.on('connection', (ws) => {
    sockets.push(ws);
    ws.on('error', () => {}); // a broken frame: ws closes the socket (1002)
    if (o.fragments === true) ws.binaryType = 'fragments';
    let client = -1;
    ws.on('message', (data: Buffer | Buffer[]) => {
      const bytes = copy(data);
      if (holder === ws) holder = undefined;
      if (client < 0) { client = bytes.readUInt8(0); got.set(client, []); return; }
      got.get(client)?.push(bytes);
      waiters.splice(0).forEach((w) => w());
    });
    assert.equal(gatherFrames(ws, 64 * 1024, (n) => {
      if (holder !== undefined || n > room.length) return undefined;
      holder = ws;
      return room.subarray(0, n);
    }), true);
    switched.push(readIntoOneBuffer(ws));
  });
  await new Promise<void>((r) => server.once('listening', r));
  const port = (server.address() as AddressInfo).port;
  const clients: WebSocket[] = [];
  const connect = async (id: number): Promise<WebSocket> => {
    const c = new WebSocket(`ws://127.0.0.1:${port}`, { perMessageDeflate: false, maxPayload: 64 << 20 });
    clients.push(c);
    await new Promise((r) => c.once('open', r));
    c.send(Buffer.from([id]));
    return c;
  };
  const count = () => [...got.values()].reduce((a, l) => a + l.length, 0);
  const messages = async (n: number) => { while (count() < n) await new Promise<void>((r) => waiters.push(r)); };
  t.after(async () => {
    for (const c of clients) c.terminate();
    await new Promise((r) => server.close(r));
  });
  return { port, connect, got, messages, switched, sockets };
}

describe('readIntoOneBuffer: sockets read into one reused buffer', () => {
  test('many sizes from three clients at once (random masks, fragmented messages, pings between) arrive intact and in order', async (t) => {
    const s = await setup(t);
    const clients = await Promise.all([1, 2, 3].map((id) => s.connect(id)));
    // Sizes around the read size, the gathering threshold and header-length boundaries, and a few large ones.
    const sizes = [0, 1, 125, 126, 65_535, 65_536, 65_537, READ_BYTES - 1, READ_BYTES, READ_BYTES + 7, 3_000_000, 17, 1 << 20, (1 << 20) + 1, 4 << 20, 9];
    const sent = new Map<number, Buffer[]>();
    clients.forEach((c, k) => {
      const id = k + 1;
      const mine = sizes.map((n, i) => pattern(n, id * 100 + i));
      sent.set(id, []);
      mine.forEach((m, i) => {
        if (i % 5 === 4 && m.length > 2) {
          // Two fragments with a ping between them.
          c.send(m.subarray(0, m.length >> 1), { fin: false });
          c.ping(Buffer.from('between'));
          c.send(m.subarray(m.length >> 1), { fin: true });
        } else c.send(m);
        sent.get(id)?.push(m);
      });
    });
    await s.messages(3 * sizes.length);
    assert.deepEqual(s.switched, [true, true, true]);
    for (const [id, want] of sent) {
      const have = s.got.get(id) ?? [];
      assert.equal(have.length, want.length, `client ${id}: message count`);
      want.forEach((w, i) => assert.ok(w.equals(have[i] as Buffer), `client ${id}, message ${i} (${w.length} bytes) intact`));
    }
  });

  for (const sharedRoom of [false, true]) test(`a large frame is read by the kernel straight into its room${sharedRoom ? ' (in shared memory)' : ''} (most of its bytes), no copy out of the read buffer; small ones are not`, async (t) => {
    const s = await setup(t, { sharedRoom });
    const c = await s.connect(1);
    await s.messages(0);
    const receiver = receiverOf(s.sockets[0] as WebSocket);
    const inPlace = receiver === undefined ? undefined : inPlaceOf(receiver);
    assert.ok(inPlace !== undefined, 'gatherFrames set the socket up for reads in place');
    const small = pattern(30_000, 5);
    c.send(small);
    await s.messages(1);
    assert.equal(inPlace.landedBytes, 0, 'a frame below the gathering threshold goes through the read buffer');
    // Into the 1 MiB room, then (larger than the room) into fresh room of their own, one after another.
    const sizes = [900_000, 3_000_000, 2_000_000, 1_500_000];
    for (const [i, n] of sizes.entries()) c.send(pattern(n, 6 + i));
    await s.messages(1 + sizes.length);
    const have = s.got.get(1) ?? [];
    assert.ok(small.equals(have[0] as Buffer));
    sizes.forEach((n, i) => assert.ok(pattern(n, 6 + i).equals(have[i + 1] as Buffer), `${n} bytes intact`));
    // The first frame's first read holds its header and some payload (copied out of the read buffer); after a
    // frame gathered in place, the next read is short (NEXT_HEAD_READ_BYTES): the rest of the next frame lands in place.
    const total = sizes.reduce((a, b) => a + b, 0);
    assert.ok(inPlace.landedBytes >= total - READ_BYTES && inPlace.landedBytes <= total, `${inPlace.landedBytes} of ${total} bytes read in place`);
    // Chunks as the transport sends them (sendChunk: a small head fragment, then the data fragment), one after another.
    const before = inPlace.landedBytes;
    const chunks = [2_000_000, 1_200_000, 3_000_000, 2_500_000];
    for (const [i, n] of chunks.entries()) sendChunk(c, [pattern(48, 20 + i), pattern(n, 30 + i)]);
    await s.messages(1 + sizes.length + chunks.length);
    chunks.forEach((n, i) => assert.ok(Buffer.concat([pattern(48, 20 + i), pattern(n, 30 + i)]).equals(have[1 + sizes.length + i] as Buffer), `chunk of ${n} bytes intact`));
    const data = chunks.reduce((a, b) => a + b, 0);
    const landed = inPlace.landedBytes - before;
    assert.ok(landed >= data - NEXT_HEAD_READ_BYTES * chunks.length && landed <= data, `${landed} of ${data} chunk bytes read in place`);
  });

  test('with binaryType fragments, a message in two frames keeps its first fragment (copied out of the read buffer) until the last', async (t) => {
    const s = await setup(t, { fragments: true });
    const c = await s.connect(1);
    const head = pattern(40, 1);
    const body = pattern(2_000_000, 2);
    for (let i = 0; i < 5; i += 1) {
      c.send(head, { fin: false });
      c.send(body, { fin: true });
      c.send(pattern(300, 3 + i));
    }
    await s.messages(10);
    const have = s.got.get(1) ?? [];
    for (let i = 0; i < 5; i += 1) {
      assert.ok(Buffer.concat([head, body]).equals(have[2 * i] as Buffer), `message ${2 * i}`);
      assert.ok(pattern(300, 3 + i).equals(have[2 * i + 1] as Buffer), `message ${2 * i + 1}`);
    }
  });

  test('bytes that came with the upgrade reach ws before the socket switches to the shared buffer', async (t) => {
    const s = await setup(t);
    // A raw client: the upgrade request and two frames in one write, so ws's server gets them as the upgrade's head.
    const frame = (payload: Buffer) => {
      const mask = Buffer.from([1, 2, 3, 4]);
      const header = payload.length < 126 ? Buffer.from([0x82, 0x80 | payload.length]) : Buffer.from([0x82, 0x80 | 126, payload.length >> 8, payload.length & 0xff]);
      return Buffer.concat([header, mask, Buffer.from(payload.map((b, i) => b ^ (mask[i % 4] as number)))]);
    };
    const later = pattern(60_000, 9);
    const sock = net.connect(s.port, '127.0.0.1');
    await new Promise((r) => sock.once('connect', r));
    sock.write(Buffer.concat([
      Buffer.from(`GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n`),
      frame(Buffer.from([7])), frame(pattern(100, 8)),
    ]));
    await s.messages(1);
    sock.write(frame(later));
    await s.messages(2);
    sock.destroy(); // before the server's close, which waits for its connections
    assert.deepEqual(s.switched, [true]);
    const have = s.got.get(7) ?? [];
    assert.ok(pattern(100, 8).equals(have[0] as Buffer) && later.equals(have[1] as Buffer));
  });

  test('a client socket reads into the buffer too: large messages from the server arrive intact', async (t) => {
    const server = new WebSocketServer({ host: '127.0.0.1', port: 0 });
    t.after(() => new Promise((r) => server.close(r)));
    await new Promise<void>((r) => server.once('listening', r));
    const msgs = [pattern(5_000_000, 1), pattern(10, 2), pattern(700_000, 3)];
    server.on('connection', (ws) => { for (const m of msgs) ws.send(m); });
    const c = new WebSocket(`ws://127.0.0.1:${(server.address() as AddressInfo).port}`, { perMessageDeflate: false });
    const got: Buffer[] = [];
    const done = new Promise<void>((resolve) => c.on('message', (d: Buffer) => { got.push(copy(d)); if (got.length === msgs.length) resolve(); }));
    await new Promise((r) => c.once('open', r));
    assert.equal(gatherFrames(c, 64 * 1024, () => undefined), true);
    assert.equal(readIntoOneBuffer(c), true);
    await done;
    c.terminate(); // before the server's close, which waits for its connections
    msgs.forEach((m, i) => assert.ok(m.equals(got[i] as Buffer), `message ${i}`));
  });

  test('a broken frame closes only that socket, as ws would; the other socket keeps reading', async (t) => {
    const s = await setup(t);
    const good = await s.connect(1);
    const bad = await s.connect(2);
    const failed = new Promise<string>((r) => s.sockets[1]?.once('error', (err: Error & { code?: string }) => r(String(err.code))));
    const closed = new Promise<void>((r) => s.sockets[1]?.once('close', () => r()));
    // A reserved opcode (0x3): ws rejects the frame and closes the socket.
    (bad as unknown as { _socket: net.Socket })._socket.write(Buffer.from([0x83, 0x80, 0, 0, 0, 0]));
    assert.equal(await failed, 'WS_ERR_INVALID_OPCODE');
    await closed;
    good.send(pattern(1 << 20, 5));
    await s.messages(1);
    assert.ok(pattern(1 << 20, 5).equals(s.got.get(1)?.[0] as Buffer));
  });

  test('a TLS socket (wss://) is left to ws: not switched, its messages intact', async () => {
    // A self-signed certificate for 127.0.0.1, made here with openssl.
    const dir = mkdtempSync(path.join(tmpdir(), 'vgg-wss-'));
    const [cert, key] = [path.join(dir, 'cert.pem'), path.join(dir, 'key.pem')];
    execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', cert, '-days', '2',
      '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1'], { stdio: 'ignore' });
    const tls = https.createServer({ cert: readFileSync(cert), key: readFileSync(key) });
    const server = new WebSocketServer({ server: tls });
    await new Promise<void>((r) => tls.listen(0, '127.0.0.1', r));
    const switched: boolean[] = [];
    const got: Buffer[] = [];
    const msgs = [pattern(3_000_000, 1), pattern(20, 2)];
    const done = new Promise<void>((resolve) => server.on('connection', (ws) => {
      gatherFrames(ws, 64 * 1024, () => undefined);
      switched.push(readIntoOneBuffer(ws));
      ws.on('message', (d: Buffer) => { got.push(copy(d)); if (got.length === msgs.length) resolve(); });
    }));
    const c = new WebSocket(`wss://127.0.0.1:${(tls.address() as AddressInfo).port}`, { ca: readFileSync(cert), perMessageDeflate: false });
    await new Promise((r) => c.once('open', r));
    for (const m of msgs) c.send(m);
    await done;
    c.terminate();
    await new Promise((r) => server.close(r));
    tls.closeAllConnections();
    await new Promise((r) => tls.close(r));
    assert.deepEqual(switched, [false]);
    msgs.forEach((m, i) => assert.ok(m.equals(got[i] as Buffer), `message ${i}`));
  });
});
