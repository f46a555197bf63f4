// danmaku-client.js: a small standalone client of the danmaku wire protocol, version 1.
//
// Plain ES module, no dependencies, usable in browsers and in Node (inject `WebSocket` and
// `fetch` there). It speaks only the documented contract (docs/protocol.md, sections 1-8):
//
//   dispatch    GET /v1/dispatch?room=r  -> gateway URL, heartbeat_ms, backoff values
//   session     hello -> welcome; ping every heartbeat_ms / 2 (pong expected)
//   rooms       join with `since` = the last (epoch, seq) handed to the application
//   delivery    batches deduplicated by seq and delivered in order; a hole (a seq neither
//               delivered nor listed in `skipped`) makes the client re-join with `since`
//   sending     every send has a cmid; unacked sends are resent with the SAME frame (same cmid)
//               after a timeout and after every reconnect, so the server dedupes them
//   reconnect   exponential backoff with jitter from the dispatch `backoff` values; 4001
//               (unauthorized) and 4003 (kicked) stop the client instead
//
// Events (client.on(type, fn) returns an unsubscribe function):
//   state     {state, previous, attempt, delayMs, code, reason}; state is one of
//             "idle", "connecting", "open", "reconnecting", "resumed", "closed"
//   welcome   the welcome frame
//   joined    {room, epoch, seq, online}            reset  {room, epoch, seq, reason}
//   message   a message object of a batch plus `room` (each seq exactly once, in order)
//   skipped   {room, from, to}: seqs the server chose not to deliver
//   ack       {room, cmid, seq, ts}                 nack   {room, cmid, code, message, retry_after_ms}
//   resync    {room, since}: a hole was seen; the client re-joins with `since`
//   error     an `error` frame of the server        pong   {t, ts, rttMs}
//   frame     every frame received, before it is handled (for extension ops)

export const CLIENT_NAME = 'web/1.0';
export const DEFAULT_BACKOFF = Object.freeze({ base_ms: 500, max_ms: 30000, jitter: 0.5 });
export const DEFAULT_HEARTBEAT_MS = 30000;

/** Close codes after which reconnecting blindly is wrong (docs/protocol.md 10.3). */
const FATAL_CLOSE = new Map([
  [4001, 'unauthorized'],
  [4003, 'kicked'],
]);
const CLOSE_FLOODING = 4008;

/**
 * The delay before reconnect attempt `attempt` (0-based): base * 2^attempt capped at max,
 * minus up to `jitter` of it, so a crowd of clients spreads out instead of reconnecting at once.
 */
export function backoffDelay(attempt, backoff = DEFAULT_BACKOFF, random = Math.random) {
  const base = Math.max(1, Number(backoff.base_ms) || DEFAULT_BACKOFF.base_ms);
  const max = Math.max(base, Number(backoff.max_ms) || DEFAULT_BACKOFF.max_ms);
  const jitter = Math.min(1, Math.max(0, Number(backoff.jitter ?? DEFAULT_BACKOFF.jitter)));
  const ceiling = Math.min(max, base * 2 ** Math.min(attempt, 30));
  return Math.round(ceiling * (1 - jitter * random()));
}

/** A fresh client message id: 1-64 printable ASCII characters, unique per user. */
export function newCmid(random = Math.random) {
  let s = 'w';
  for (let i = 0; i < 4; i++) s += Math.floor(random() * 2 ** 32).toString(36);
  return s + Date.now().toString(36);
}

/**
 * An error carrying a nack's code (`fromServer`: the server's own words in `message`) or a local
 * refusal's (the connection closed for good, the room was left or refused).
 */
export class SendError extends Error {
  constructor(code, message, retryAfterMs = null, fromServer = false) {
    super(message || code);
    this.name = 'SendError';
    this.code = code;
    this.retryAfterMs = retryAfterMs;
    this.fromServer = fromServer;
  }
}

// -- the client's position in one room ------------------------------------------------------------

/**
 * The client's ordered, exactly-once view of one room (sans-IO, like engine/client/reorder.py).
 *
 * `last` is the highest seq handed to the application (or skipped, or adopted from `joined` /
 * `reset`). Messages and skipped ranges of each batch are kept sorted by first seq and drained
 * while they start at or before last + 1; anything at or below `last` is a duplicate. After a
 * batch, `last < batch.to` means a seq covered by the batch is unreachable: a hole, reported once
 * as `resync` until the server answers the resulting join.
 */
export class RoomStream {
  constructor(room, epoch = null, last = 0, { maxBuffered = 10000 } = {}) {
    this.room = room;
    this.epoch = epoch;
    this.last = last;
    this.maxBuffered = maxBuffered;
    this.resyncPending = false;
    this.duplicates = 0;
    this.holes = 0;
    this._items = []; // sorted by first seq: {first, last, msg|null}
  }

  get buffered() {
    return this._items.length;
  }

  /** Where to resume: null before the first `joined`. */
  since() {
    return this.epoch === null ? null : { epoch: this.epoch, seq: this.last };
  }

  /** Apply a `joined`, `batch` or `reset` frame: {events, resync, duplicates}. */
  feed(frame) {
    switch (frame.op) {
      case 'batch':
        return this._onBatch(frame);
      case 'joined':
        return this._onJoined(frame);
      case 'reset':
        return this._onReset(frame);
      default:
        throw new TypeError(`RoomStream cannot apply a ${JSON.stringify(frame.op)} frame`);
    }
  }

  /** A resync asked for from outside; null when one is already pending or never joined. */
  requestResync() {
    if (this.resyncPending || this.epoch === null) return null;
    this.resyncPending = true;
    this.holes += 1;
    return this.since();
  }

  _onJoined(frame) {
    const result = { events: [], resync: null, duplicates: 0 };
    if (frame.epoch !== this.epoch) this._adopt(frame.epoch, frame.seq);
    this.resyncPending = false;
    result.events.push({ type: 'joined', room: this.room, epoch: frame.epoch, seq: frame.seq,
      online: frame.online });
    return result;
  }

  _onReset(frame) {
    const result = { events: [{ type: 'reset', room: this.room, epoch: frame.epoch,
      seq: frame.seq, reason: frame.reason }], resync: null, duplicates: 0 };
    if (frame.epoch === this.epoch) {
      // Seqs are never reused within an epoch: moving back would deliver twice.
      this.last = Math.max(this.last, frame.seq);
      this._drain(result);
    } else {
      this._adopt(frame.epoch, frame.seq);
    }
    this.resyncPending = false;
    this.duplicates += result.duplicates;
    return result;
  }

  _onBatch(frame) {
    const result = { events: [], resync: null, duplicates: 0 };
    if (!Array.isArray(frame.msgs) || !Number.isInteger(frame.to)) {
      result.resync = this.requestResync();
      return result;
    }
    if (this.epoch === null || frame.epoch !== this.epoch) {
      // Stale (an earlier epoch) or ahead of a reset not seen yet: a resync settles it.
      result.resync = this.requestResync();
      return result;
    }
    const items = frame.msgs
      .filter((m) => m && Number.isInteger(m.seq))
      .map((m) => ({ first: m.seq, last: m.seq, msg: m }));
    for (const pair of frame.skipped || []) {
      if (Array.isArray(pair) && Number.isInteger(pair[0]) && Number.isInteger(pair[1])
          && pair[0] <= pair[1]) {
        items.push({ first: pair[0], last: pair[1], msg: null });
      }
    }
    items.sort((a, b) => a.first - b.first || a.last - b.last);
    for (const item of items) {
      this._push(item, result);
      this._drain(result);
    }
    if (this.last < frame.to && !this.resyncPending) {
      this.resyncPending = true;
      this.holes += 1;
      result.resync = this.since();
    }
    this.duplicates += result.duplicates;
    return result;
  }

  _adopt(epoch, seq) {
    this.epoch = epoch;
    this.last = seq;
    this._items = [];
  }

  _push(item, result) {
    if (item.last <= this.last) {
      if (item.msg) result.duplicates += 1;
      return;
    }
    if (this._items.length >= this.maxBuffered && item.first > this.last + 1) {
      return; // beyond the bound and behind a hole: the resync delivers it again
    }
    // Insert keeping the array sorted by (first, last); usually at the end.
    let i = this._items.length;
    while (i > 0 && (this._items[i - 1].first > item.first
      || (this._items[i - 1].first === item.first && this._items[i - 1].last > item.last))) i--;
    this._items.splice(i, 0, item);
  }

  _drain(result) {
    const items = this._items;
    let n = 0;
    while (n < items.length && items[n].first <= this.last + 1) {
      const item = items[n++];
      if (item.last <= this.last) {
        if (item.msg) result.duplicates += 1;
        continue;
      }
      if (item.msg) {
        result.events.push({ type: 'message', room: this.room, msg: item.msg });
      } else {
        result.events.push({ type: 'skipped', room: this.room,
          from: Math.max(item.first, this.last + 1), to: item.last });
      }
      this.last = item.last;
    }
    if (n) items.splice(0, n);
  }
}

// -- the client -----------------------------------------------------------------------------------

/**
 * One connection to a danmaku deployment, re-made as needed, carrying any number of rooms.
 *
 * Options (all optional): baseUrl (http(s) origin of a gateway; default: the page's origin),
 * token (null: a guest), clientName, WebSocket, fetch, random, now (ms clock), timers
 * ({setTimeout, clearTimeout, setInterval, clearInterval}), sendTimeoutMs (resend an unacked
 * send after this long; default 10000), logger.
 */
export class DanmakuClient {
  constructor(options = {}) {
    const g = globalThis;
    this.baseUrl = (options.baseUrl ?? g.location?.origin ?? '').replace(/\/+$/, '');
    this.token = options.token || null;
    this.clientName = options.clientName || CLIENT_NAME;
    this._WebSocket = options.WebSocket || g.WebSocket;
    this._fetch = options.fetch || g.fetch?.bind(g);
    this._random = options.random || Math.random;
    this._now = options.now || (() => Date.now());
    const t = options.timers || g;
    this._timers = {
      setTimeout: t.setTimeout.bind(t), clearTimeout: t.clearTimeout.bind(t),
      setInterval: t.setInterval.bind(t), clearInterval: t.clearInterval.bind(t),
    };
    this.sendTimeoutMs = options.sendTimeoutMs ?? 10000;
    this._log = options.logger || null;

    this.state = 'idle';
    this.welcome = null;
    this.backoff = { ...DEFAULT_BACKOFF };
    this.heartbeatMs = DEFAULT_HEARTBEAT_MS;
    this.attempt = 0; // failed connection attempts since the last welcome
    this.connections = 0; // welcomes received, over the client's life
    this.closeInfo = null; // {code, reason} of the last socket close

    this._listeners = new Map();
    this._rooms = new Map(); // room -> {stream, joinedConn, refused}
    this._pending = new Map(); // cmid -> {room, cmid, frame, attempts, lastSentAt, conn, ...}
    this._ws = null;
    this._conn = 0; // id of the current connection (bumped on every socket)
    this._awaitingJoins = new Set();
    this._reconnectTimer = null;
    this._pingTimer = null;
    this._resendTimer = null;
    this._lastFrameAt = 0;
    this._pingSeq = 0;
    this._pings = new Map();
    this._stopped = true;
  }

  // -- events ------------------------------------------------------------------------------
  on(type, fn) {
    if (!this._listeners.has(type)) this._listeners.set(type, new Set());
    this._listeners.get(type).add(fn);
    return () => this._listeners.get(type)?.delete(fn);
  }

  _emit(type, detail) {
    for (const fn of [...(this._listeners.get(type) || [])]) {
      try {
        fn(detail);
      } catch (err) {
        // A listener's bug must not break the protocol machinery.
        (this._log?.error || console.error).call(this._log || console, err);
      }
    }
  }

  _setState(state, extra = {}) {
    const previous = this.state;
    this.state = state;
    this._emit('state', { state, previous, attempt: this.attempt, ...extra });
  }

  // -- public API --------------------------------------------------------------------------
  /** Start connecting (idempotent). */
  connect() {
    if (!this._stopped) return this;
    this._stopped = false;
    this._resendTimer = this._timers.setInterval(() => this._resendDue(), 1000);
    this._open();
    return this;
  }

  /** Stop for good: close the socket, reject every pending send. */
  close(reason = 'closed by the application') {
    this._stopped = true;
    this._timers.clearTimeout(this._reconnectTimer);
    this._timers.clearInterval(this._resendTimer);
    this._stopHeartbeat();
    const ws = this._ws;
    this._ws = null;
    if (ws) {
      this._detach(ws);
      try { ws.close(1000, 'bye'); } catch { /* already closed */ }
    }
    this._failPending('closed', reason);
    if (this.state !== 'closed') this._setState('closed', { reason });
  }

  /** Join a room (now if connected, else on connect); resumes after `since` when given. */
  join(room, { since = null } = {}) {
    let entry = this._rooms.get(room);
    if (!entry) {
      entry = { stream: new RoomStream(room, since?.epoch ?? null, since?.seq ?? 0),
        joinedConn: 0, refused: null };
      this._rooms.set(room, entry);
    }
    entry.refused = null;
    if (this._isOpen()) this._sendJoin(room);
    return this;
  }

  leave(room) {
    if (!this._rooms.delete(room)) return;
    for (const p of [...this._pending.values()]) {
      if (p.room === room) this._settle(p, null, new SendError('not_joined', 'room left'));
    }
    if (this._isOpen()) this._write({ op: 'leave', room });
  }

  /** The (epoch, last seq) of a room, as a `since` object (null before the first join). */
  position(room) {
    return this._rooms.get(room)?.stream.since() ?? null;
  }

  /**
   * Send a message; resolves with the ack {room, cmid, seq, ts}, rejects with a SendError.
   * The frame is kept and resent unchanged (same cmid) until an ack or nack settles it.
   */
  send(room, body, { kind = null, cmid = null } = {}) {
    if (!this._rooms.has(room)) {
      return Promise.reject(new SendError('not_joined', `join ${room} before sending`));
    }
    const id = cmid || newCmid(this._random);
    if (this._pending.has(id)) {
      return Promise.reject(new SendError('bad_request', `cmid ${id} is already pending`));
    }
    const frame = { op: 'send', room, cmid: id, body };
    if (kind) frame.kind = kind;
    let resolve, reject;
    const promise = new Promise((res, rej) => { resolve = res; reject = rej; });
    // Outcomes are also emitted as `ack`/`nack` events: a caller may ignore the promise.
    promise.catch(() => {});
    const entry = { room, cmid: id, frame: JSON.stringify(frame), attempts: 0, lastSentAt: 0,
      conn: 0, resolve, reject, promise, firstAt: this._now() };
    this._pending.set(id, entry);
    this._writePending(entry);
    promise.cmid = id;
    return promise;
  }

  /**
   * Write any other frame (an extension op) on the current connection; false when offline.
   * Answers arrive as `frame` events.
   */
  sendFrame(obj) {
    return this._isOpen() && this._write(obj);
  }

  /** cmids of the sends not settled yet, oldest first. */
  pendingCmids() {
    return [...this._pending.keys()];
  }

  // -- connection lifecycle ----------------------------------------------------------------
  _isOpen() {
    return this._ws !== null && this.welcome !== null && this._ws.readyState === 1;
  }

  async _open() {
    if (this._stopped) return;
    this._reconnectTimer = null;
    this._setState(this.connections === 0 ? 'connecting' : 'reconnecting', { phase: 'dispatch' });
    const conn = ++this._conn;
    let url;
    try {
      url = await this._dispatch();
    } catch (err) {
      if (this._stopped || conn !== this._conn) return;
      this._scheduleReconnect({ code: 0, reason: `dispatch failed: ${err.message || err}` });
      return;
    }
    if (this._stopped || conn !== this._conn) return;
    let ws;
    try {
      ws = new this._WebSocket(url);
    } catch (err) {
      this._scheduleReconnect({ code: 0, reason: `cannot open ${url}: ${err.message || err}` });
      return;
    }
    this._ws = ws;
    this.welcome = null;
    ws.onopen = () => {
      if (ws !== this._ws) return;
      const hello = { op: 'hello', client: this.clientName };
      if (this.token) hello.token = this.token;
      this._write(hello);
    };
    ws.onmessage = (ev) => {
      if (ws !== this._ws) return;
      this._lastFrameAt = this._now();
      let frame;
      try {
        frame = JSON.parse(typeof ev.data === 'string' ? ev.data : String(ev.data));
      } catch {
        return; // not JSON: ignore (the contract says the server never does this)
      }
      if (frame && typeof frame === 'object') this._onFrame(frame);
    };
    ws.onclose = (ev) => {
      if (ws !== this._ws) return;
      this._lost(ev.code ?? 1006, ev.reason || '');
    };
    ws.onerror = () => { /* a close event follows */ };
  }

  async _dispatch() {
    const first = this._rooms.keys().next().value;
    const q = first ? `?room=${encodeURIComponent(first)}` : '';
    const resp = await this._fetch(`${this.baseUrl}/v1/dispatch${q}`, { cache: 'no-store' });
    if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
    const info = await resp.json();
    if (info.backoff && typeof info.backoff === 'object') this.backoff = { ...DEFAULT_BACKOFF, ...info.backoff };
    if (Number.isInteger(info.heartbeat_ms) && info.heartbeat_ms > 0) this.heartbeatMs = info.heartbeat_ms;
    const gateways = (info.gateways || []).filter((g) => g && typeof g.url === 'string');
    if (!gateways.length) throw new Error('no gateway');
    // Weighted random choice spreads viewers over the gateways.
    const total = gateways.reduce((s, g) => s + Math.max(0, Number(g.weight ?? 1)), 0);
    let pick = this._random() * total;
    for (const g of gateways) {
      pick -= Math.max(0, Number(g.weight ?? 1));
      if (pick < 0) return g.url;
    }
    return gateways[gateways.length - 1].url;
  }

  _detach(ws) {
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
  }

  _lost(code, reason) {
    const ws = this._ws;
    this._ws = null;
    this.welcome = null;
    if (ws) this._detach(ws);
    this._stopHeartbeat();
    this._awaitingJoins.clear();
    this.closeInfo = { code, reason };
    for (const entry of this._rooms.values()) entry.joinedConn = 0;
    if (this._stopped) return;
    if (FATAL_CLOSE.has(code)) {
      const why = FATAL_CLOSE.get(code);
      this._stopped = true;
      this._timers.clearInterval(this._resendTimer);
      this._failPending(why, reason || why);
      this._setState('closed', { code, reason: reason || why });
      return;
    }
    if (code === CLOSE_FLOODING) this.attempt = Math.max(this.attempt, 3);
    this._scheduleReconnect({ code, reason });
  }

  _scheduleReconnect({ code, reason }) {
    if (this._stopped) return;
    const delayMs = backoffDelay(this.attempt, this.backoff, this._random);
    this.attempt += 1;
    this._setState('reconnecting', { delayMs, code, reason });
    this._timers.clearTimeout(this._reconnectTimer);
    this._reconnectTimer = this._timers.setTimeout(() => this._open(), delayMs);
  }

  // -- heartbeats --------------------------------------------------------------------------
  _startHeartbeat() {
    this._stopHeartbeat();
    const every = Math.max(50, Math.floor(this.heartbeatMs / 2));
    this._lastFrameAt = this._now();
    this._pingTimer = this._timers.setInterval(() => {
      if (!this._isOpen()) return;
      // Two pings without any frame back: the path is dead even if the socket does not know.
      if (this._now() - this._lastFrameAt > every * 2 + 1000) {
        const ws = this._ws;
        try { ws.close(4000, 'no pong'); } catch { /* ignore */ }
        this._lost(4002, 'no pong from the server');
        return;
      }
      const t = ++this._pingSeq;
      this._pings.set(t, this._now());
      if (this._pings.size > 16) this._pings.delete(this._pings.keys().next().value);
      this._write({ op: 'ping', t });
    }, every);
  }

  _stopHeartbeat() {
    if (this._pingTimer !== null) this._timers.clearInterval(this._pingTimer);
    this._pingTimer = null;
  }

  // -- frames in ---------------------------------------------------------------------------
  _onFrame(frame) {
    this._emit('frame', frame); // every frame, for ops this module does not know (extensions)
    switch (frame.op) {
      case 'welcome':
        return this._onWelcome(frame);
      case 'pong': {
        const sent = this._pings.get(frame.t);
        this._pings.delete(frame.t);
        return this._emit('pong', { t: frame.t, ts: frame.ts,
          rttMs: sent === undefined ? null : this._now() - sent });
      }
      case 'joined':
      case 'reset':
      case 'batch':
        return this._onRoomFrame(frame);
      case 'ack':
      case 'nack':
        return this._onReply(frame);
      case 'error':
        return this._onError(frame);
      default:
        return undefined; // `left` and ops added later: nothing to do
    }
  }

  _onWelcome(frame) {
    this.welcome = frame;
    if (Number.isInteger(frame.heartbeat_ms) && frame.heartbeat_ms > 0) {
      this.heartbeatMs = frame.heartbeat_ms;
    }
    this.attempt = 0;
    this.connections += 1;
    this._startHeartbeat();
    this._emit('welcome', frame);
    this._awaitingJoins = new Set();
    for (const [room, entry] of this._rooms) {
      if (!entry.refused) this._sendJoin(room);
    }
    this._maybeOpened();
  }

  _sendJoin(room) {
    const entry = this._rooms.get(room);
    const frame = { op: 'join', room };
    const since = entry.stream.since();
    if (since) frame.since = since;
    this._awaitingJoins.add(room);
    this._write(frame);
  }

  /** After a welcome, once every room's join is answered: "open" (first) or "resumed". */
  _maybeOpened() {
    if (!this.welcome || this._awaitingJoins.size) return;
    if (this.state === 'open' || this.state === 'resumed') return;
    this._setState(this.connections > 1 ? 'resumed' : 'open');
  }

  _onRoomFrame(frame) {
    const entry = this._rooms.get(frame.room);
    if (!entry) return; // a room left meanwhile
    const result = entry.stream.feed(frame);
    if (frame.op === 'joined') {
      entry.joinedConn = this._conn;
      this._awaitingJoins.delete(frame.room);
    }
    for (const ev of result.events) {
      if (ev.type === 'message') this._emit('message', { ...ev.msg, room: ev.room });
      else if (ev.type === 'skipped') this._emit('skipped', { room: ev.room, from: ev.from, to: ev.to });
      else this._emit(ev.type, { room: ev.room, epoch: ev.epoch, seq: ev.seq,
        ...(ev.type === 'joined' ? { online: ev.online } : { reason: ev.reason }) });
    }
    if (result.resync) {
      this._emit('resync', { room: frame.room, since: result.resync });
      if (this._isOpen()) {
        // The server answers with the missing messages (or a reset), then live ones.
        this._write({ op: 'join', room: frame.room, since: result.resync });
      }
    }
    if (frame.op === 'joined') {
      // Unacked sends of this room go (again) on this connection, unchanged: same cmid.
      for (const p of this._pending.values()) {
        if (p.room === frame.room && p.conn !== this._conn) this._writePending(p);
      }
      this._maybeOpened();
    }
  }

  _onReply(frame) {
    const entry = this._pending.get(frame.cmid);
    if (!entry || entry.room !== frame.room) return; // a duplicate answer to a resend
    if (frame.op === 'ack') {
      this._settle(entry, { room: frame.room, cmid: frame.cmid, seq: frame.seq, ts: frame.ts });
    } else {
      const retry = Number.isInteger(frame.retry_after_ms) ? frame.retry_after_ms : null;
      this._settle(entry, null,
        new SendError(frame.code || 'bad_request', frame.message || '', retry, true));
    }
  }

  _onError(frame) {
    this._emit('error', frame);
    // An error naming a room (and no other op's `action`) answers that room's join
    // (extension 9.5): it was refused.
    if (typeof frame.room === 'string' && !('action' in frame)
        && this._awaitingJoins.has(frame.room)) {
      const entry = this._rooms.get(frame.room);
      if (entry) entry.refused = frame.code || 'error';
      this._awaitingJoins.delete(frame.room);
      for (const p of [...this._pending.values()]) {
        if (p.room === frame.room) this._settle(p, null, new SendError(frame.code, frame.message));
      }
      this._maybeOpened();
    }
  }

  // -- sends -------------------------------------------------------------------------------
  _writePending(entry) {
    const room = this._rooms.get(entry.room);
    if (!this._isOpen() || !room || room.joinedConn !== this._conn) return false;
    if (!this._writeRaw(entry.frame)) return false;
    entry.attempts += 1;
    entry.lastSentAt = this._now();
    entry.conn = this._conn;
    return true;
  }

  _resendDue() {
    const now = this._now();
    for (const p of this._pending.values()) {
      if (p.attempts > 0 && now - p.lastSentAt >= this.sendTimeoutMs) this._writePending(p);
    }
  }

  _settle(entry, ack, error = null) {
    if (this._pending.get(entry.cmid) !== entry) return;
    this._pending.delete(entry.cmid);
    if (ack) {
      this._emit('ack', ack);
      entry.resolve(ack);
    } else {
      this._emit('nack', { room: entry.room, cmid: entry.cmid, code: error.code,
        message: error.message, retry_after_ms: error.retryAfterMs });
      entry.reject(error);
    }
  }

  _failPending(code, message) {
    for (const p of [...this._pending.values()]) this._settle(p, null, new SendError(code, message));
  }

  // -- frames out --------------------------------------------------------------------------
  _write(obj) {
    return this._writeRaw(JSON.stringify(obj));
  }

  _writeRaw(text) {
    const ws = this._ws;
    if (!ws || ws.readyState !== 1) return false;
    try {
      ws.send(text);
      return true;
    } catch {
      return false;
    }
  }
}
