// The comment overlay: lanes for `scroll` comments (right to left), pinned `top` and `bottom`
// comments, and a renderer that never queues: a comment that finds no free lane now is DROPPED
// (and counted), so a flood costs a bounded amount of work and the screen stays readable.

/**
 * Lane allocation, pure (no DOM): times in ms, sizes in px.
 *
 * The stage is cut into `rows` rows of equal height; `usable` of them (the density setting) may
 * take comments: scroll and `top` comments use rows 0..usable-1 from the top, `bottom` comments
 * the same number from the bottom. Nothing overlaps:
 * - Scroll comments cross the stage in `durationMs` whatever their width (a long one moves
 *   faster). A new one may follow the row's last one when (1) that one has fully entered plus a
 *   gap, and (2) the new one, if faster, cannot catch up before that one has left: its head
 *   reaches the left edge no earlier than the other's tail.
 * - A pinned comment is centred and holds its row for `durationMs`; a scroll comment may not
 *   take a row whose pinned comment it would pass over, nor a pinned comment a row where a scroll
 *   comment will cross its box while it is shown.
 * When no row fits, the caller drops the comment.
 */
export class LaneAllocator {
  constructor({ rows = 10, usable = rows, width = 800, gapPx = 24 } = {}) {
    this.gapPx = gapPx;
    this._rows = [];
    this.configure({ rows, usable, width });
  }

  configure({ rows = this.rows, usable = this.usable, width = this.width } = {}) {
    this.rows = Math.max(1, Math.floor(rows));
    this.usable = Math.min(this.rows, Math.max(1, Math.floor(usable)));
    this.width = Math.max(1, width);
    while (this._rows.length < this.rows) this._rows.push({ scroll: [], pinned: null });
  }

  /** A row for a scroll comment `w` px wide starting now, or -1 when every row is busy. */
  scroll(now, w, durationMs) {
    const item = { start: now, w, v: (this.width + w) / durationMs, end: now + durationMs };
    for (let r = 0; r < this.usable; r++) {
      const row = this._row(r, now);
      const last = row.scroll[row.scroll.length - 1];
      if (last && !this._canFollow(last, item)) continue;
      const p = row.pinned;
      if (p && this._crosses(item, p.a, p.b, p.t0, p.t1)) continue;
      row.scroll.push(item);
      return r;
    }
    return -1;
  }

  /** A row for a pinned comment ('top' or 'bottom') `w` px wide, held for `durationMs`, or -1. */
  pinned(mode, now, w, durationMs) {
    const a = (this.width - w) / 2;
    const b = a + w;
    const t1 = now + durationMs;
    for (let i = 0; i < this.usable; i++) {
      const r = mode === 'bottom' ? this.rows - 1 - i : i;
      const row = this._row(r, now);
      if (row.pinned) continue;
      if (row.scroll.some((s) => this._crosses(s, a, b, now, t1))) continue;
      row.pinned = { a, b, t0: now, t1 };
      return r;
    }
    return -1;
  }

  /** Forget every row (after a seek or a clear). */
  reset() {
    for (const row of this._rows) {
      row.scroll = [];
      row.pinned = null;
    }
  }

  _row(r, now) {
    const row = this._rows[r];
    if (row.scroll.length && row.scroll[0].end <= now) row.scroll = row.scroll.filter((s) => s.end > now);
    if (row.pinned && row.pinned.t1 <= now) row.pinned = null;
    return row;
  }

  _canFollow(prev, next) {
    const travelled = (next.start - prev.start) * prev.v;
    if (travelled < prev.w + this.gapPx) return false; // its tail is not in yet
    if (next.v <= prev.v) return true; // never catches up
    const prevTailOut = prev.start + (this.width + prev.w) / prev.v;
    const headOut = next.start + this.width / next.v;
    return headOut >= prevTailOut;
  }

  /** Whether scroll item `s` overlaps the box [a, b] at some time in (t0, t1). */
  _crosses(s, a, b, t0, t1) {
    // Its left edge is at width - v (t - start); it covers [a, b] while that edge is in
    // (a - w, b), with a small gap on both sides.
    const g = this.gapPx / 2;
    const enter = s.start + (this.width - b - g) / s.v;
    const leave = s.start + (this.width + s.w - a + g) / s.v;
    return enter < t1 && leave > t0;
  }
}

/** A clock that can be paused: the overlay's time stops while the video is paused. */
export class PausableClock {
  constructor(now = () => performance.now()) {
    this._now = now;
    this._base = now();
    this._pausedAt = null;
  }

  get paused() {
    return this._pausedAt !== null;
  }

  now() {
    return (this._pausedAt ?? this._now()) - this._base;
  }

  pause() {
    if (this._pausedAt === null) this._pausedAt = this._now();
  }

  resume() {
    if (this._pausedAt === null) return;
    this._base += this._now() - this._pausedAt;
    this._pausedAt = null;
  }
}

const FONT_FAMILY = '"Noto Sans", "Noto Sans CJK SC", "PingFang SC", "Microsoft YaHei", system-ui, sans-serif';

/**
 * The DOM renderer over a stage element. `add(comment)` returns 'shown', 'dropped' or 'hidden'
 * (comments switched off). Each comment is one absolutely positioned element animated with the
 * Web Animations API (compositor-driven, pausable) and removed when its animation ends.
 */
export class Overlay {
  constructor(root, { scrollMs = 8000, pinnedMs = 4500, maxNodes = 250 } = {}) {
    this.root = root;
    this.scrollMs = scrollMs;
    this.pinnedMs = pinnedMs;
    this.maxNodes = maxNodes;
    this.density = 1;
    this.visible = true;
    this.clock = new PausableClock();
    this.lanes = new LaneAllocator();
    this.stats = { shown: 0, dropped: 0 };
    this._live = new Set(); // {el, anim}
    this._measure = document.createElement('canvas').getContext('2d');
    this.layout();
    if (typeof ResizeObserver !== 'undefined') {
      new ResizeObserver(() => this.layout()).observe(root);
    }
  }

  /** Recompute font size and lanes from the stage's size and the density setting. */
  layout() {
    const w = this.root.clientWidth || 640;
    const h = this.root.clientHeight || 360;
    this.fontPx = Math.round(Math.min(28, Math.max(14, w / 30)));
    const rows = Math.max(1, Math.floor(h / (this.fontPx * 1.35)));
    this.laneH = h / rows; // rows fill the stage exactly, so bottom comments sit on the edge
    this.font = `700 ${this.fontPx}px ${FONT_FAMILY}`;
    this.lanes.configure({ rows, usable: Math.max(1, Math.round(rows * this.density)), width: w });
    this.width = w;
    this.height = h;
  }

  /** The share of the stage's height comments may use, 0.1 to 1. */
  setDensity(fraction) {
    this.density = Math.min(1, Math.max(0.1, fraction));
    this.layout();
  }

  setVisible(visible) {
    this.visible = visible;
    this.root.classList.toggle('off', !visible);
  }

  pause() {
    this.clock.pause();
    for (const { anim } of this._live) anim.pause();
  }

  resume() {
    this.clock.resume();
    for (const { anim } of this._live) anim.play();
  }

  get paused() {
    return this.clock.paused;
  }

  clear() {
    for (const { el, anim } of this._live) {
      anim.cancel();
      el.remove();
    }
    this._live.clear();
    this.lanes.reset();
  }

  get onScreen() {
    return this._live.size;
  }

  /** comment: {text, color, mode, own, kind, seq}. */
  add(comment) {
    if (!this.visible) return 'hidden';
    if (this._live.size >= this.maxNodes) return this._drop();
    const text = String(comment.text ?? '');
    if (!text) return 'hidden';
    this._measure.font = this.font;
    const w = Math.ceil(this._measure.measureText(text).width) + 8 + (comment.own ? 8 : 0);
    const now = this.clock.now();
    let mode = comment.mode === 'top' || comment.mode === 'bottom' ? comment.mode : 'scroll';
    if (comment.kind === 'superchat' || comment.kind === 'gift' || comment.kind === 'system') {
      mode = mode === 'bottom' ? 'bottom' : 'top';
    }
    const lane = mode === 'scroll'
      ? this.lanes.scroll(now, w, this.scrollMs)
      : this.lanes.pinned(mode, now, w, this.pinnedMs);
    if (lane < 0) return this._drop();

    const el = document.createElement('div');
    el.className = `dm dm-${mode}` + (comment.own ? ' dm-own' : '')
      + (comment.kind && comment.kind !== 'danmaku' ? ` dm-${comment.kind}` : '');
    el.textContent = text;
    el.style.font = this.font;
    el.style.color = /^#[0-9a-fA-F]{6}$/.test(comment.color || '') ? comment.color : '#ffffff';
    el.style.lineHeight = `${this.laneH}px`;
    if (comment.seq !== undefined) el.dataset.seq = String(comment.seq);
    el.style.top = `${lane * this.laneH}px`;
    this.root.append(el);

    let anim;
    if (mode === 'scroll') {
      anim = el.animate(
        [{ transform: `translateX(${this.width}px)` }, { transform: `translateX(${-w}px)` }],
        { duration: this.scrollMs, easing: 'linear', fill: 'forwards' },
      );
    } else {
      // Pinned: centred; a constant animation gives it a pausable lifetime.
      anim = el.animate([{ opacity: 1 }, { opacity: 1 }], { duration: this.pinnedMs, fill: 'forwards' });
    }
    const item = { el, anim };
    this._live.add(item);
    anim.onfinish = () => { el.remove(); this._live.delete(item); };
    if (this.clock.paused) anim.pause();
    this.stats.shown += 1;
    return 'shown';
  }

  _drop() {
    this.stats.dropped += 1;
    return 'dropped';
  }
}
