// What plays under the comments: a <video> (a `?src=` URL) or a generated moving test pattern.
// Both are wrapped as a "playback" with one interface, which live and replay modes use for
// `offset_ms` (the position on the stream's timeline):
//   currentMs(), durationMs() (NaN when unknown), playing, play(), pause(), seek(ms),
//   onChange(fn) -> called on play, pause, seek and when the duration becomes known.

class Emitter {
  constructor() { this._fns = new Set(); }

  onChange(fn) { this._fns.add(fn); return () => this._fns.delete(fn); }

  _changed(why) { for (const fn of this._fns) fn(why); }
}

export class VideoPlayback extends Emitter {
  constructor(video, src) {
    super();
    this.video = video;
    video.src = src;
    video.hidden = false;
    for (const ev of ['play', 'pause', 'seeking', 'durationchange', 'ended']) {
      video.addEventListener(ev, () => this._changed(ev));
    }
  }

  get playing() { return !this.video.paused && !this.video.ended; }

  currentMs() { return this.video.currentTime * 1000; }

  durationMs() { return Number.isFinite(this.video.duration) ? this.video.duration * 1000 : NaN; }

  play() { return this.video.play().catch(() => {}); }

  pause() { this.video.pause(); }

  seek(ms) { this.video.currentTime = Math.max(0, ms) / 1000; }
}

/**
 * A test pattern drawn on a canvas: moving colour bars, a sweeping marker and the timeline
 * position, so motion (and a paused state) is visible in a screenshot. Its clock is the
 * playback position: it starts at 0 when the page opens (live) or at the slider (replay).
 */
export class PatternPlayback extends Emitter {
  constructor(canvas, { label = 'LIVE', autoplay = true, now = () => performance.now() } = {}) {
    super();
    this.canvas = canvas;
    this.label = label;
    this._now = now;
    this._pos = 0; // ms, at _since (when playing)
    this._since = now();
    this._playing = autoplay;
    this._duration = NaN;
    this._ctx = canvas.getContext('2d');
    canvas.hidden = false;
    const draw = () => {
      this.draw();
      this._raf = requestAnimationFrame(draw);
    };
    this._raf = requestAnimationFrame(draw);
  }

  get playing() { return this._playing; }

  currentMs() {
    const ms = this._playing ? this._pos + (this._now() - this._since) : this._pos;
    return Number.isFinite(this._duration) ? Math.min(ms, this._duration) : ms;
  }

  durationMs() { return this._duration; }

  setDuration(ms) { this._duration = ms; this._changed('durationchange'); }

  play() {
    if (this._playing) return;
    if (Number.isFinite(this._duration) && this._pos >= this._duration) this._pos = 0;
    this._since = this._now();
    this._playing = true;
    this._changed('play');
  }

  pause() {
    if (!this._playing) return;
    this._pos = this.currentMs();
    this._playing = false;
    this._changed('pause');
  }

  seek(ms) {
    this._pos = Math.max(0, Number.isFinite(this._duration) ? Math.min(ms, this._duration) : ms);
    this._since = this._now();
    this._changed('seeking');
  }

  /** Stop at the end of a known duration, like a video does. */
  _checkEnd() {
    if (this._playing && Number.isFinite(this._duration) && this.currentMs() >= this._duration) {
      this._pos = this._duration;
      this._playing = false;
      this._changed('ended');
    }
  }

  draw() {
    this._checkEnd();
    const c = this.canvas;
    const ctx = this._ctx;
    const W = c.width;
    const H = c.height;
    const t = this.currentMs();
    const colors = ['#c0c0c0', '#c0c000', '#00c0c0', '#00c000', '#c000c0', '#c00000', '#0000c0'];
    const barW = W / colors.length;
    const shift = ((t / 40) % W + W) % W;
    for (let i = 0; i < colors.length + 1; i++) {
      ctx.fillStyle = colors[i % colors.length];
      const x = (i * barW + shift) % (W + barW) - barW;
      ctx.fillRect(Math.floor(x), 0, Math.ceil(barW) + 1, H * 0.68);
    }
    // lower band: a grey ramp and a sweeping marker
    const grad = ctx.createLinearGradient(0, 0, W, 0);
    grad.addColorStop(0, '#111');
    grad.addColorStop(1, '#eee');
    ctx.fillStyle = grad;
    ctx.fillRect(0, H * 0.68, W, H * 0.12);
    ctx.fillStyle = '#101418';
    ctx.fillRect(0, H * 0.8, W, H * 0.2);
    const period = 4000;
    const phase = (t % period) / period;
    const mx = W * (phase < 0.5 ? phase * 2 : 2 - phase * 2);
    ctx.fillStyle = '#ff3b30';
    ctx.beginPath();
    ctx.arc(mx, H * 0.74, H * 0.045, 0, Math.PI * 2);
    ctx.fill();
    // caption
    ctx.fillStyle = '#f5f5f5';
    ctx.font = `600 ${Math.round(H * 0.075)}px ui-monospace, "DejaVu Sans Mono", monospace`;
    ctx.textBaseline = 'middle';
    ctx.textAlign = 'left';
    ctx.fillText(`${this.label}  ${formatTime(t, true)}`, W * 0.04, H * 0.9);
    if (!this._playing) {
      ctx.textAlign = 'right';
      ctx.fillText('PAUSED', W * 0.96, H * 0.9);
    }
  }
}

/** m:ss (or h:mm:ss), with tenths when asked. */
export function formatTime(ms, tenths = false) {
  const total = Math.max(0, ms) / 1000;
  const h = Math.floor(total / 3600);
  const m = Math.floor((total % 3600) / 60);
  const s = Math.floor(total % 60);
  const base = h ? `${h}:${String(m).padStart(2, '0')}:${String(s).padStart(2, '0')}`
    : `${m}:${String(s).padStart(2, '0')}`;
  return tenths ? `${base}.${Math.floor((total * 10) % 10)}` : base;
}
