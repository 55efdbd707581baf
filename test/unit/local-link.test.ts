import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { LocalSocket, connectLocal, listenLocal } from '../../shared/local-link.ts';

/** The next `n` messages `end` receives. */
function messages(end: LocalSocket, n: number): Promise<unknown[]> {
  return new Promise((resolve) => {
    const got: unknown[] = [];
    const on = (m: unknown) => {
      got.push(m);
      if (got.length === n) { end.off('message', on); resolve(got); }
    };
    end.on('message', on);
  });
}

describe('the in-process link (a worker reaching the shard it hosts)', () => {
  test('messages arrive in order after send returns, fragments whole or as fragments, bytes not copied; bufferedAmount counts what is undelivered', async () => {
    const [client, server] = LocalSocket.pair();
    client.binaryType = 'fragments';
    const body = new Float32Array([1, 2, 3, 4]);
    const toServer = messages(server, 3);
    let delivered = false;
    server.once('message', () => { delivered = true; });
    client.send(Buffer.from('a'));
    client.send(Buffer.from('head'), { fin: false });
    client.send(new Uint8Array(body.buffer), { fin: true });
    client.send('z');
    assert.equal(delivered, false, 'not delivered within send');
    assert.equal(client.bufferedAmount, 1 + 4 + 16 + 1);
    const got = await toServer as Buffer[];
    assert.deepEqual(got.map((b) => b.length), [1, 20, 1]);
    assert.equal(got[1]?.subarray(0, 4).toString(), 'head');
    assert.equal(client.bufferedAmount, 0);

    // The other way, to an end that takes fragments: the floats are the sender's own bytes.
    const toClient = messages(client, 1);
    server.send(Buffer.from('hd'), { fin: false });
    server.send(new Uint8Array(body.buffer), { fin: true });
    const [parts] = await toClient as Buffer[][];
    assert.equal(parts?.length, 2);
    assert.equal(parts?.[1]?.buffer, body.buffer, 'a view of the sent floats, not a copy');
  });

  test("a send's callback comes after the other end had the message, also past a turn's worth of backlog; undelivered sends fail on terminate", async () => {
    const [client, server] = LocalSocket.pair();
    server.binaryType = 'fragments';
    const mb = 1 << 20;
    // 40 messages of 1 MiB: more than one turn delivers (16 MiB).
    const n = 40;
    const received: number[] = [];
    const order: string[] = [];
    server.on('message', (parts: Buffer[]) => { received.push(parts[1]?.[0] as number); order.push(`got ${parts[1]?.[0]}`); });
    const all = Array.from({ length: n }, (_, i) => new Promise<void>((resolve) => {
      client.send(Buffer.from([i]), { fin: false }, () => order.push(`head done ${i}`));
      client.send(Buffer.alloc(mb, i), { fin: true }, () => {
        order.push(`done ${i}`);
        assert.ok(received.includes(i), `message ${i}: callback after delivery`);
        resolve();
      });
    }));
    await Promise.all(all);
    for (let i = 0; i < n; i += 1) assert.ok(order.indexOf(`got ${i}`) < order.indexOf(`head done ${i}`) && order.indexOf(`head done ${i}`) < order.indexOf(`done ${i}`), `message ${i}: ${order.join(', ')}`);

    const [c2] = LocalSocket.pair();
    const failed: string[] = [];
    c2.send(Buffer.alloc(10), (err) => failed.push(String(err?.message)));
    c2.terminate();
    await once(c2, 'close');
    assert.deepEqual(failed, ['local link: closed before the message was delivered']);
  });

  test('close delivers what was queued, then both ends close with the code; terminate drops it; sends after closing fail without throwing', async () => {
    const [client, server] = LocalSocket.pair();
    const got = messages(server, 2);
    client.send(Buffer.from('one'));
    client.send(Buffer.from('two'));
    const closes = Promise.all([once(client, 'close'), once(server, 'close')]);
    client.close(1000, 'bye');
    assert.deepEqual((await got as Buffer[]).map(String), ['one', 'two']);
    const [[a], [b]] = await closes;
    assert.deepEqual([a, b], [1000, 1000]);
    let err: Error | undefined;
    client.send(Buffer.from('late'), (e) => { err = e; });
    assert.match(String(err?.message), /expected an open link, got readyState 3/);

    const [c2, s2] = LocalSocket.pair();
    let received = 0;
    s2.on('message', () => { received += 1; });
    c2.send(Buffer.from('lost'));
    const closed = once(s2, 'close');
    c2.terminate();
    assert.deepEqual((await closed)[0], 1006);
    assert.equal(received, 0);
    assert.equal(c2.bufferedAmount, 0);
  });

  test('a ping reaches the other end and comes back as a pong; the client end emits open', async () => {
    const [client, server] = LocalSocket.pair();
    await once(client, 'open');
    const pinged = once(client, 'ping');
    const ponged = once(server, 'pong');
    server.ping();
    await Promise.all([pinged, ponged]);
  });

  test('connectLocal reaches only a URL listened to in this thread, until unlistened', async () => {
    assert.equal(connectLocal('ws://127.0.0.1:1'), undefined);
    const accepted: LocalSocket[] = [];
    const unlisten = listenLocal('ws://127.0.0.1:1', (end) => accepted.push(end));
    const client = connectLocal('ws://127.0.0.1:1');
    assert.ok(client !== undefined);
    assert.equal(accepted.length, 1);
    const got = messages(accepted[0] as LocalSocket, 1);
    client.send(Buffer.from('hello'));
    assert.equal(String((await got)[0]), 'hello');
    unlisten();
    assert.equal(connectLocal('ws://127.0.0.1:1'), undefined);
  });
});
