// Unit tests of engine/gateway/static/danmaku-client.js with node's built-in test runner:
//   node --test web/tests/
// The socket and the clock here are FAKES (FakeWebSocket, FakeClock): they let a test play the
// server's side frame by frame. The real socket is covered by tests/test_web_player.py, which
// drives the page in headless Chromium against a real engine.

import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  DanmakuClient, RoomStream, SendError, backoffDelay, newCmid,
} from '../../engine/gateway/static/danmaku-client.js';

// -- fakes ----------------------------------------------------------------------------------------

class FakeClock {
  constructor() {
    this.now = 1_000_000;
    this.timers = new Map();
    this.nextId = 1;
  }

  setTimeout(fn, ms) {
    const id = this.nextId++;
    this.timers.set(id, { fn, at: this.now + ms, every: null });
    return id;
  }

  setInterval(fn, ms) {
    const id = this.nextId++;
    this.timers.set(id, { fn, at: this.now + ms, every: ms });
    return id;
  }

  clearTimeout(id) { this.timers.delete(id); }

  clearInterval(id) { this.timers.delete(id); }

  /** Run every timer due within `ms`, in time order. */
  async advance(ms) {
    const end = this.now + ms;
    for (;;) {
      let next = null;
      for (const [id, t] of this.timers) if (t.at <= end && (!next || t.at < next[1].at)) next = [id, t];
      if (!next) break;
      const [id, t] = next;
      this.now = t.at;
      if (t.every) t.at += t.every; else this.timers.delete(id);
      t.fn();
      await flush();
    }
    this.now = end;
    await flush();
  }
}

/** A fake of the browser's WebSocket: records what the client writes, lets the test answer. */
class FakeWebSocket {
  static instances = [];

  constructor(url) {
    this.url = url;
    this.readyState = 0;
    this.sent = [];
    this.closedWith = null;
    FakeWebSocket.instances.push(this);
  }

  static last() { return FakeWebSocket.instances[FakeWebSocket.instances.length - 1]; }

  send(text) {
    if (this.readyState !== 1) throw new Error('not open');
    this.sent.push(JSON.parse(text));
    this.sentRaw = [...(this.sentRaw || []), text];
  }

  close(code, reason) { this.closedWith = { code, reason }; this.readyState = 3; }

  // the server's side
  serverOpen() { this.readyState = 1; this.onopen?.({}); }

  serverSend(obj) { this.onmessage?.({ data: JSON.stringify(obj) }); }

  serverClose(code, reason = '') { this.readyState = 3; this.onclose?.({ code, reason }); }

  ops() { return this.sent.map((f) => f.op); }

  lastOf(op) { return this.sent.filter((f) => f.op === op).at(-1); }
}

async function flush() {
  for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
}

function fakeFetch(calls) {
  return async (url) => {
    calls.push(url);
    return {
      ok: true,
      status: 200,
      json: async () => ({
        gateways: [{ url: 'ws://gw.test/ws', weight: 1 }],
        heartbeat_ms: 1000,
        backoff: { base_ms: 100, max_ms: 1000, jitter: 0.5 },
      }),
    };
  };
}

function makeClient(extra = {}) {
  FakeWebSocket.instances = [];
  const clock = new FakeClock();
  const fetchCalls = [];
  const client = new DanmakuClient({
    baseUrl: 'http://gw.test', token: 't0k', WebSocket: FakeWebSocket, fetch: fakeFetch(fetchCalls),
    random: () => 0.5, now: () => clock.now, timers: clock, sendTimeoutMs: 5000, ...extra,
  });
  const seen = { messages: [], states: [], acks: [], nacks: [], resyncs: [] };
  client.on('message', (m) => seen.messages.push(m.seq));
  client.on('state', (s) => seen.states.push(s.state));
  client.on('ack', (a) => seen.acks.push(a));
  client.on('nack', (n) => seen.nacks.push(n));
  client.on('resync', (r) => seen.resyncs.push(r.since));
  return { client, clock, seen, fetchCalls };
}

/** Connect and join `room`; returns the socket, after `joined` (epoch e1, last seq `seq`). */
async function connectJoined(client, room = 'r', seq = 0, epoch = 'e1') {
  client.join(room);
  client.connect();
  await flush();
  const ws = FakeWebSocket.last();
  ws.serverOpen();
  ws.serverSend({ op: 'welcome', session: 's', user: 'u', guest: false, heartbeat_ms: 1000,
    max_frame_bytes: 4096 });
  ws.serverSend({ op: 'joined', room, epoch, seq, online: 1 });
  return ws;
}

const msg = (seq, text = `m${seq}`) => ({ seq, id: `i${seq}`, user: 'u', name: 'U', ts: seq,
  kind: 'danmaku', body: { text } });
const batch = (from, to, seqs = null, extra = {}) => ({
  op: 'batch', room: 'r', epoch: 'e1', from, to,
  msgs: (seqs ?? Array.from({ length: to - from + 1 }, (_, i) => from + i)).map((s) => msg(s)),
  ...extra,
});

// -- backoff and cmids ----------------------------------------------------------------------------

test('backoff doubles from base_ms, is capped at max_ms, and jitter only shortens it', () => {
  const b = { base_ms: 500, max_ms: 30000, jitter: 0.5 };
  assert.deepEqual([0, 1, 2, 3].map((a) => backoffDelay(a, b, () => 0)), [500, 1000, 2000, 4000]);
  assert.equal(backoffDelay(20, b, () => 0), 30000);
  assert.equal(backoffDelay(0, b, () => 1), 250);
  for (let i = 0; i < 200; i++) {
    const d = backoffDelay(3, b);
    assert.ok(d >= 2000 && d <= 4000, String(d));
  }
});

test('cmids are 1-64 printable ASCII characters and differ', () => {
  const a = newCmid();
  assert.match(a, /^[!-~]{1,64}$/);
  assert.notEqual(a, newCmid());
});

// -- RoomStream: dedupe and order -----------------------------------------------------------------

test('RoomStream drops duplicate and overlapping batches', () => {
  const s = new RoomStream('r');
  s.feed({ op: 'joined', room: 'r', epoch: 'e1', seq: 0, online: 1 });
  const seqs = (res) => res.events.filter((e) => e.type === 'message').map((e) => e.msg.seq);
  assert.deepEqual(seqs(s.feed(batch(1, 3))), [1, 2, 3]);
  const again = s.feed(batch(1, 3));
  assert.deepEqual(seqs(again), []);
  assert.equal(again.duplicates, 3);
  assert.deepEqual(seqs(s.feed(batch(2, 5))), [4, 5]);
  assert.equal(s.last, 5);
  assert.equal(s.duplicates, 5);
});

test('RoomStream reorders a late batch and reports skipped ranges once', () => {
  const s = new RoomStream('r', 'e1', 0);
  const first = s.feed(batch(3, 4));
  assert.deepEqual(first.events, []); // 1-2 missing: held back
  assert.deepEqual(first.resync, { epoch: 'e1', seq: 0 });
  const second = s.feed(batch(1, 2));
  assert.deepEqual(second.events.map((e) => e.msg.seq), [1, 2, 3, 4]);
  const third = s.feed(batch(5, 9, [5, 9], { skipped: [[6, 8]] }));
  assert.deepEqual(third.events.map((e) => e.type === 'message' ? e.msg.seq : `${e.from}-${e.to}`),
    [5, '6-8', 9]);
  assert.equal(third.resync, null);
});

test('RoomStream: a hole outside skipped asks for one resync with since, until joined', () => {
  const s = new RoomStream('r', 'e1', 2);
  const res = s.feed(batch(5, 6));
  assert.deepEqual(res.resync, { epoch: 'e1', seq: 2 });
  assert.equal(s.feed(batch(7, 7)).resync, null); // no storm of joins before the answer
  s.feed({ op: 'joined', room: 'r', epoch: 'e1', seq: 7, online: 1 });
  assert.equal(s.last, 2); // same epoch: resume after `since`, keep position
  const fill = s.feed(batch(3, 7));
  assert.deepEqual(fill.events.map((e) => e.msg.seq), [3, 4, 5, 6, 7]);
});

test('RoomStream: a reset of another epoch adopts it; of the same epoch never goes back', () => {
  const s = new RoomStream('r', 'e1', 10);
  s.feed({ op: 'reset', room: 'r', epoch: 'e1', seq: 4, reason: 'too_old' });
  assert.equal(s.last, 10);
  s.feed({ op: 'reset', room: 'r', epoch: 'e2', seq: 3, reason: 'epoch_changed' });
  assert.deepEqual(s.since(), { epoch: 'e2', seq: 3 });
  assert.equal(s.feed(batch(1, 1)).events.length, 0); // a stale batch of e1
});

// -- the client over a fake socket ----------------------------------------------------------------

test('connect: dispatch, hello with token, join, then "open" and ordered delivery', async () => {
  const { client, seen, fetchCalls } = makeClient();
  const ws = await connectJoined(client);
  assert.deepEqual(fetchCalls, ['http://gw.test/v1/dispatch?room=r']);
  assert.equal(ws.url, 'ws://gw.test/ws');
  assert.deepEqual(ws.sent[0], { op: 'hello', client: 'web/1.0', token: 't0k' });
  assert.deepEqual(ws.sent[1], { op: 'join', room: 'r' });
  assert.deepEqual(seen.states, ['connecting', 'open']);
  ws.serverSend(batch(1, 2));
  ws.serverSend(batch(1, 2)); // duplicated by the network or a resync: dropped
  ws.serverSend(batch(3, 3));
  assert.deepEqual(seen.messages, [1, 2, 3]);
  client.close();
});

test('heartbeat: a ping every heartbeat_ms / 2; silence means a reconnect', async () => {
  const { client, clock, seen } = makeClient();
  const ws = await connectJoined(client);
  await clock.advance(500);
  assert.equal(ws.lastOf('ping').t, 1);
  ws.serverSend({ op: 'pong', t: 1, ts: 5 });
  await clock.advance(500);
  assert.equal(ws.sent.filter((f) => f.op === 'ping').length, 2);
  await clock.advance(3000); // no frame back for two intervals and more
  assert.equal(ws.closedWith?.code, 4000);
  assert.equal(seen.states.at(-1), 'reconnecting');
  client.close();
});

test('resume: after a 1001 close it reconnects with backoff and re-joins with since, no duplicates',
  async () => {
    const { client, clock, seen } = makeClient();
    const ws1 = await connectJoined(client);
    ws1.serverSend(batch(1, 3));
    ws1.serverClose(1001, 'server going away');
    assert.equal(seen.states.at(-1), 'reconnecting');
    await clock.advance(49);
    assert.equal(FakeWebSocket.instances.length, 1); // base 100 ms x (1 - 0.5 x 0.5) = 75 ms
    await clock.advance(30);
    const ws2 = FakeWebSocket.last();
    assert.notEqual(ws2, ws1);
    ws2.serverOpen();
    ws2.serverSend({ op: 'welcome', session: 's2', user: 'u', guest: false, heartbeat_ms: 1000,
      max_frame_bytes: 4096 });
    assert.deepEqual(ws2.lastOf('join'), { op: 'join', room: 'r', since: { epoch: 'e1', seq: 3 } });
    ws2.serverSend({ op: 'joined', room: 'r', epoch: 'e1', seq: 5, online: 2 });
    assert.equal(seen.states.at(-1), 'resumed');
    ws2.serverSend(batch(2, 5)); // overlaps what was seen before the close
    assert.deepEqual(seen.messages, [1, 2, 3, 4, 5]);
    client.close();
  });

test('backoff grows while the server stays away, and resets after a welcome', async () => {
  const delays = [];
  const { client, clock } = makeClient();
  client.on('state', (s) => { if (s.delayMs !== undefined) delays.push(s.delayMs); });
  const ws1 = await connectJoined(client);
  ws1.serverClose(1006);
  for (let i = 0; i < 4; i++) {
    await clock.advance(2000);
    FakeWebSocket.last().serverClose(1006); // refused again
  }
  assert.deepEqual(delays, [75, 150, 300, 600, 750]);
  await clock.advance(2000);
  const ws = FakeWebSocket.last();
  ws.serverOpen();
  ws.serverSend({ op: 'welcome', session: 's', user: 'u', guest: false, heartbeat_ms: 1000,
    max_frame_bytes: 4096 });
  assert.equal(client.attempt, 0);
  client.close();
});

test('an unacked send is resent with the SAME cmid after a reconnect, settled once', async () => {
  const { client, clock, seen } = makeClient();
  const ws1 = await connectJoined(client);
  const p = client.send('r', { text: 'hi', mode: 'scroll', color: '#ffffff', offset_ms: 0 });
  const frame1 = ws1.sentRaw.at(-1);
  assert.equal(JSON.parse(frame1).cmid, p.cmid);
  ws1.serverClose(1001);
  await clock.advance(100);
  const ws2 = FakeWebSocket.last();
  ws2.serverOpen();
  ws2.serverSend({ op: 'welcome', session: 's2', user: 'u', guest: false, heartbeat_ms: 1000,
    max_frame_bytes: 4096 });
  assert.ok(!ws2.ops().includes('send'), 'no send before the room is joined again');
  ws2.serverSend({ op: 'joined', room: 'r', epoch: 'e1', seq: 0, online: 1 });
  assert.equal(ws2.sentRaw.at(-1), frame1); // byte for byte: same cmid
  ws2.serverSend({ op: 'ack', room: 'r', cmid: p.cmid, seq: 1, ts: 9 });
  ws2.serverSend({ op: 'ack', room: 'r', cmid: p.cmid, seq: 1, ts: 9 }); // duplicate answer
  assert.deepEqual(await p, { room: 'r', cmid: p.cmid, seq: 1, ts: 9 });
  assert.equal(seen.acks.length, 1);
  assert.deepEqual(client.pendingCmids(), []);
  client.close();
});

test('an unacked send is resent after sendTimeoutMs on the same connection', async () => {
  const { client, clock } = makeClient();
  const ws = await connectJoined(client);
  const p = client.send('r', { text: 'slow' });
  const sendCount = () => ws.sent.filter((f) => f.op === 'send').length;
  const live = async (ms) => { // the server keeps answering pings, but never this send
    for (let t = 0; t < ms; t += 500) { ws.serverSend({ op: 'pong', t: 0, ts: 0 }); await clock.advance(500); }
  };
  await live(4500);
  assert.equal(sendCount(), 1);
  await live(1500);
  const sends = ws.sent.filter((f) => f.op === 'send');
  assert.equal(sends.length, 2);
  assert.equal(sends[0].cmid, sends[1].cmid);
  ws.serverSend({ op: 'ack', room: 'r', cmid: p.cmid, seq: 7, ts: 1 });
  assert.equal((await p).seq, 7);
  client.close();
});

test('a hole in live batches makes the client re-join with since', async () => {
  const { client, seen } = makeClient();
  const ws = await connectJoined(client);
  ws.serverSend(batch(1, 2));
  ws.serverSend(batch(5, 6)); // 3-4 lost, not in skipped
  assert.deepEqual(ws.lastOf('join'), { op: 'join', room: 'r', since: { epoch: 'e1', seq: 2 } });
  assert.deepEqual(seen.resyncs, [{ epoch: 'e1', seq: 2 }]);
  ws.serverSend({ op: 'joined', room: 'r', epoch: 'e1', seq: 6, online: 1 });
  ws.serverSend(batch(3, 6));
  assert.deepEqual(seen.messages, [1, 2, 3, 4, 5, 6]);
  client.close();
});

test('a nack rejects with its code and retry_after_ms', async () => {
  const { client, seen } = makeClient();
  const ws = await connectJoined(client);
  const p = client.send('r', { text: 'spam' });
  ws.serverSend({ op: 'nack', room: 'r', cmid: p.cmid, code: 'rate_limited', message: 'slow down',
    retry_after_ms: 1500 });
  await assert.rejects(p, (err) => err instanceof SendError && err.code === 'rate_limited'
    && err.retryAfterMs === 1500);
  assert.equal(seen.nacks[0].retry_after_ms, 1500);
  client.close();
});

test('close 4001 stops the client: no reconnect, pending sends fail', async () => {
  const { client, clock, seen } = makeClient();
  const ws = await connectJoined(client);
  const p = client.send('r', { text: 'x' });
  ws.serverClose(4001, 'bad token');
  await assert.rejects(p, (err) => err.code === 'unauthorized');
  await clock.advance(60000);
  assert.equal(FakeWebSocket.instances.length, 1);
  assert.equal(seen.states.at(-1), 'closed');
});

test('a guest sends no token in hello', async () => {
  const { client } = makeClient({ token: null });
  const ws = await connectJoined(client);
  assert.deepEqual(ws.sent[0], { op: 'hello', client: 'web/1.0' });
  client.close();
});

test('extension ops: sendFrame writes when open, every frame is emitted, an error of another op is not a join refusal',
  async () => {
    const { client } = makeClient();
    const frames = [];
    client.on('frame', (f) => frames.push(f.op));
    assert.equal(client.sendFrame({ op: 'mod', room: 'r', action: 'get_config' }), false); // offline
    client.join('r');
    client.connect();
    await flush();
    const ws = FakeWebSocket.last();
    ws.serverOpen();
    ws.serverSend({ op: 'welcome', session: 's', user: 'u', guest: false, heartbeat_ms: 1000,
      max_frame_bytes: 4096 });
    // Before `joined`, an error about another op of the room must not count as a refused join.
    ws.serverSend({ op: 'error', code: 'unauthorized', message: 'no', room: 'r', action: 'mute' });
    ws.serverSend({ op: 'joined', room: 'r', epoch: 'e1', seq: 0, online: 1 });
    assert.equal(client.state, 'open');
    assert.equal(client.sendFrame({ op: 'mod', room: 'r', action: 'get_config', ref: 'x' }), true);
    assert.deepEqual(ws.lastOf('mod'), { op: 'mod', room: 'r', action: 'get_config', ref: 'x' });
    ws.serverSend({ op: 'mod_result', room: 'r', action: 'get_config', ref: 'x', ok: true });
    assert.deepEqual(frames, ['welcome', 'error', 'joined', 'mod_result']);
    client.close();
  });

test('a join refused with an error naming the room settles the room and its sends', async () => {
  const { client, seen } = makeClient();
  client.join('vip');
  const p = client.send('vip', { text: 'x' });
  client.connect();
  await flush();
  const ws = FakeWebSocket.last();
  ws.serverOpen();
  ws.serverSend({ op: 'welcome', session: 's', user: 'u', guest: false, heartbeat_ms: 1000,
    max_frame_bytes: 4096 });
  ws.serverSend({ op: 'error', code: 'unauthorized', message: 'token not valid for room vip',
    room: 'vip' });
  await assert.rejects(p, (err) => err.code === 'unauthorized');
  assert.equal(seen.states.at(-1), 'open');
  client.close();
});
