// Replay mode: the archived broadcast's comments, shown at their `offset_ms` as the video (or
// the test pattern) plays. Data comes from the contract's replay endpoint:
//   GET /v1/rooms/{room}/replay?from_ms=&to_ms=&limit=[&after_seq=]
//     -> {"room":r, "msgs":[...ordered by offset_ms, seq], "next":{from_ms, after_seq}|null}
// The index is loaded page by page in the background (from the last offset seen, deduplicated
// by seq); the controller shows, on every animation frame, the messages whose offset lies in
// (previous position, current position]. A jump of the position (seek) clears the screen; a
// pause freezes the overlay.

export const MAX_OFFSET_MS = 2 ** 53;

/** Archived messages sorted by (offset_ms, seq), deduplicated by seq. */
export class ReplayIndex {
  constructor() {
    this.msgs = [];
    this._seqs = new Set();
  }

  get length() { return this.msgs.length; }

  get lastOffset() { return this.msgs.length ? offsetOf(this.msgs[this.msgs.length - 1]) : 0; }

  add(msgs) {
    let added = 0;
    for (const m of msgs) {
      if (!m || !Number.isInteger(m.seq) || this._seqs.has(m.seq)) continue;
      this._seqs.add(m.seq);
      const i = this._upper(offsetOf(m), m.seq);
      this.msgs.splice(i, 0, m);
      added += 1;
    }
    return added;
  }

  /** Index of the first message after (offset, seq). */
  _upper(offset, seq = Infinity) {
    let lo = 0;
    let hi = this.msgs.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      const o = offsetOf(this.msgs[mid]);
      if (o < offset || (o === offset && this.msgs[mid].seq <= seq)) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /** Messages with fromMs < offset_ms <= toMs, in order. */
  between(fromMs, toMs) {
    const out = [];
    for (let i = this._upper(fromMs); i < this.msgs.length && offsetOf(this.msgs[i]) <= toMs; i++) {
      out.push(this.msgs[i]);
    }
    return out;
  }
}

export function offsetOf(m) {
  const o = m?.body?.offset_ms;
  return Number.isInteger(o) ? o : 0;
}

export class ReplayUnavailable extends Error {}

async function errorText(resp) {
  try {
    const body = await resp.json();
    return body?.error?.message || `HTTP ${resp.status}`;
  } catch {
    return `HTTP ${resp.status}`;
  }
}

/**
 * Load the room's archive into `index`, page by page, calling onPage() after each. Resolves
 * when the archive is exhausted (or `maxPages` were read). Rejects with ReplayUnavailable when
 * the server has no replay endpoint or no archive (404/405/501/503).
 *
 * Paging: the engine answers `next: {from_ms, after_seq}` (null on the last page), which is
 * followed as is. A server without `next` is paged from the last offset seen (duplicates are
 * dropped by seq; a page made of a single offset steps past it).
 */
export async function loadArchive(baseUrl, room, index, {
  fetch: fetchFn = globalThis.fetch.bind(globalThis), limit = 1000, maxPages = 500,
  onPage = () => {}, signal,
} = {}) {
  let from = 0;
  let afterSeq = null;
  for (let page = 0; page < maxPages; page++) {
    const url = `${baseUrl}/v1/rooms/${encodeURIComponent(room)}/replay`
      + `?from_ms=${from}&to_ms=${MAX_OFFSET_MS}&limit=${limit}`
      + (afterSeq === null ? '' : `&after_seq=${afterSeq}`);
    const resp = await fetchFn(url, { signal, cache: 'no-store' });
    if ([404, 405, 501, 503].includes(resp.status)) {
      throw new ReplayUnavailable(await errorText(resp));
    }
    if (!resp.ok) throw new Error(`replay: ${await errorText(resp)}`);
    const data = await resp.json();
    const msgs = Array.isArray(data) ? data : (data.msgs ?? data.messages ?? []);
    index.add(msgs);
    onPage(msgs.length);
    if (data && !Array.isArray(data) && 'next' in data) {
      const next = data.next;
      if (!next || !Number.isInteger(next.from_ms)) return;
      from = next.from_ms;
      afterSeq = Number.isInteger(next.after_seq) ? next.after_seq : null;
      continue;
    }
    if (msgs.length < limit) return;
    const lastOffset = offsetOf(msgs[msgs.length - 1]);
    from = lastOffset === from ? lastOffset + 1 : lastOffset;
  }
}

/**
 * Drives the overlay from a playback. `show(msg)` renders one message; `onTick(ms)` lets the
 * page move its slider. Call `start()` once; it runs on animation frames.
 */
export class ReplayController {
  constructor({ index, playback, overlay, show, onTick = () => {} }) {
    this.index = index;
    this.playback = playback;
    this.overlay = overlay;
    this.show = show;
    this.onTick = onTick;
    this._last = null;
    playback.onChange((why) => {
      if (why === 'seeking') this._jump();
      if (why === 'pause' || why === 'ended') overlay.pause();
      if (why === 'play') overlay.resume();
    });
  }

  _jump() {
    this.overlay.clear();
    this._last = null;
  }

  start() {
    const step = () => {
      this.tick();
      requestAnimationFrame(step);
    };
    requestAnimationFrame(step);
  }

  tick() {
    const now = this.playback.currentMs();
    if (this._last === null || now < this._last || now - this._last > 1500) {
      // First frame or a jump: comments from the new position on (offset >= now).
      if (this._last !== null) this.overlay.clear();
      this._last = now - 1;
    }
    if (this.playback.playing) {
      if (this.overlay.paused) this.overlay.resume();
      for (const m of this.index.between(this._last, now)) this.show(m, now);
      this._last = now;
    } else if (!this.overlay.paused) {
      this.overlay.pause();
    }
    this.onTick(now);
  }
}
