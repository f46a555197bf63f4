// The player page at /r/{room}: live mode (default) or replay mode (?replay=1).
//
// Query parameters: src (a video URL; without it a test pattern plays), token (a JWT; else the
// one stored in this browser; without any, a read-only guest), replay=1.
//
// For tests and the curious, window.__dm holds the live state: delivered (seqs handed to the
// page, in order), states (connection states seen), shownSeqs, replayShown, client, overlay.

import { DanmakuClient } from './danmaku-client.js';
import { PatternPlayback, VideoPlayback, formatTime } from './media.js';
import { ModerationPanel } from './moderation.js';
import { Overlay } from './overlay.js';
import { ReplayController, ReplayIndex, ReplayUnavailable, loadArchive, offsetOf } from './replay.js';
import { clearToken, readToken, saveToken, tokenInfo } from './token.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const room = decodeURIComponent(location.pathname.replace(/^\/r\//, '').replace(/\/$/, ''));
const replayMode = params.get('replay') === '1';
const LOG_MAX = 200;

const debug = {
  room, replay: replayMode, delivered: [], states: [], shownSeqs: [], replayShown: [],
  client: null, overlay: null, playback: null,
};
window.__dm = debug;

// -- prefs (density, comments on/off) survive reloads -------------------------------------------
const prefs = (() => {
  try {
    return JSON.parse(localStorage.getItem('danmaku.prefs') || '{}') || {};
  } catch {
    return {};
  }
})();
function savePrefs() {
  try { localStorage.setItem('danmaku.prefs', JSON.stringify(prefs)); } catch { /* ignore */ }
}

// -- stage ----------------------------------------------------------------------------------------
document.title = `${room} · danmaku${replayMode ? ' replay' : ''}`;
$('room-title').textContent = room;
const overlay = new Overlay($('overlay'));
debug.overlay = overlay;

const src = params.get('src');
const playback = src
  ? new VideoPlayback($('video'), src)
  : new PatternPlayback($('pattern'), { label: replayMode ? 'REPLAY' : 'LIVE' });
debug.playback = playback;
if (src) {
  $('video').muted = true; // browsers allow muted autoplay
  playback.play();
}

// -- display controls -----------------------------------------------------------------------------
const toggle = $('toggle');
function setCommentsVisible(on) {
  overlay.setVisible(on);
  toggle.setAttribute('aria-pressed', String(on));
  toggle.textContent = on ? 'Comments on' : 'Comments off';
  prefs.visible = on;
  savePrefs();
}
toggle.addEventListener('click', () => setCommentsVisible(!overlay.visible));
setCommentsVisible(prefs.visible !== false);

const density = $('density');
function setDensity(pct) {
  density.value = String(pct);
  $('density-value').textContent = `${pct}%`;
  density.setAttribute('aria-valuetext', `${pct}% of the screen`);
  overlay.setDensity(pct / 100);
  prefs.density = pct;
  savePrefs();
}
density.addEventListener('input', () => setDensity(Number(density.value)));
setDensity(Number(prefs.density) >= 10 ? Number(prefs.density) : 100);

// Keyboard: "c" toggles comments, space/k plays and pauses a replay (not while typing).
document.addEventListener('keydown', (ev) => {
  const t = ev.target;
  if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
  if (t instanceof HTMLInputElement || t instanceof HTMLTextAreaElement || t instanceof HTMLSelectElement
      || t?.isContentEditable || t instanceof HTMLButtonElement) return;
  if (ev.key === 'c') setCommentsVisible(!overlay.visible);
  if (replayMode && (ev.key === ' ' || ev.key === 'k')) {
    ev.preventDefault();
    togglePlay();
  }
});

function updateStats() {
  const s = overlay.stats;
  $('stats').textContent = `${overlay.onScreen} on screen · ${s.dropped} dropped`;
}
setInterval(updateStats, 1000);

// -- the comment list (the accessible, persistent view of what flew by) -------------------------
const log = $('log');
function addToLog(msg, { own = false } = {}) {
  const li = document.createElement('li');
  li.className = `log-item kind-${msg.kind || 'danmaku'}` + (own ? ' own' : '');
  li.dataset.seq = String(msg.seq);
  li.dataset.user = msg.user || '';
  const name = document.createElement('span');
  name.className = 'who';
  name.textContent = `${msg.name || msg.user || '?'}:`;
  const text = document.createElement('span');
  text.className = 'what';
  text.textContent = msg.body?.text ?? '';
  const color = msg.body?.color;
  if (/^#[0-9a-fA-F]{6}$/.test(color || '') && color.toLowerCase() !== '#ffffff') {
    const sw = document.createElement('span');
    sw.className = 'swatch';
    sw.style.background = color;
    sw.setAttribute('aria-hidden', 'true');
    li.append(sw);
  }
  li.append(name, ' ', text);
  if (replayMode) {
    const at = document.createElement('span');
    at.className = 'at muted';
    at.textContent = formatTime(offsetOf(msg));
    li.append(at);
  }
  if (moderation?.enabled && msg.seq > 0) li.tabIndex = 0; // keyboard: Tab to it, Enter selects
  li.addEventListener('click', () => selectItem(li, msg));
  li.addEventListener('keydown', (ev) => { if (ev.key === 'Enter') selectItem(li, msg); });
  const stick = log.scrollTop + log.clientHeight >= log.scrollHeight - 24;
  log.append(li);
  while (log.children.length > LOG_MAX) log.firstElementChild.remove();
  if (stick) log.scrollTop = log.scrollHeight;
}
function selectItem(li, msg) {
  if (!moderation?.enabled) return;
  log.querySelector('.selected')?.classList.remove('selected');
  li.classList.add('selected');
  moderation.select(msg);
}

function render(msg, { own = false } = {}) {
  const body = msg.body || {};
  const outcome = overlay.add({
    text: body.text, color: body.color, mode: body.mode, kind: msg.kind, seq: msg.seq, own,
  });
  if (outcome === 'shown') debug.shownSeqs.push(msg.seq);
  addToLog(msg, { own });
  updateStats();
}

// -- connection indicator ---------------------------------------------------------------------
const conn = $('conn');
let resumedTimer = null;
function setConn(state, text) {
  conn.dataset.state = state;
  $('conn-text').textContent = text;
}

// -- identity ---------------------------------------------------------------------------------
const { token: initialToken } = readToken();
let who = tokenInfo(initialToken);
let client = null;
let moderation = null;

function describeWho() {
  if (who.refused) return 'Token refused by the server: watching as a guest';
  if (who.guest) return 'Watching as a guest';
  if (who.invalid) return 'Token not readable: watching as a guest';
  if (who.expired) return `Token of ${who.name} expired: sign in again`;
  return `Signed in as ${who.name}` + (who.role !== 'viewer' ? ` (${who.role})` : '');
}

function updateIdentityUi() {
  $('who').textContent = describeWho();
  $('token').value = '';
}

$('token-form').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const value = $('token').value.trim();
  if (!value) return;
  saveToken(value);
  who = tokenInfo(value);
  restart();
});
$('signout').addEventListener('click', () => {
  clearToken();
  who = tokenInfo(null);
  restart();
});
$('guest-signin').addEventListener('click', () => {
  $('token-box').open = true;
  $('token').focus();
});

// -- live mode --------------------------------------------------------------------------------
const form = $('send-form');
const input = $('text');
const sendBtn = $('send');
const status = $('send-status');
let countdownUntil = 0;
let countdownTimer = null;
let canSend = false;

function setStatus(text, kind = '') {
  status.textContent = text;
  status.dataset.kind = kind;
}

function updateSendUi() {
  const blocked = Date.now() < countdownUntil;
  input.disabled = !canSend;
  $('mode').disabled = !canSend;
  $('color').disabled = !canSend;
  sendBtn.disabled = !canSend || blocked;
  $('guest-hint').hidden = canSend || replayMode || !(who.guest || who.invalid || who.expired);
}

function startCountdown(ms) {
  countdownUntil = Date.now() + ms;
  clearInterval(countdownTimer);
  const tick = () => {
    const left = countdownUntil - Date.now();
    if (left <= 0) {
      clearInterval(countdownTimer);
      countdownTimer = null;
      setStatus('You can send again.', 'ok');
      updateSendUi();
      return;
    }
    setStatus(`Slow down: you can send again in ${Math.ceil(left / 1000)} s.`, 'wait');
    status.dataset.retryMs = String(left);
  };
  tick();
  countdownTimer = setInterval(tick, 200);
  updateSendUi();
}

const NACK_TEXT = {
  muted: 'You are muted in this room.',
  banned: 'You are banned from this room.',
  filtered: 'Your comment was blocked by the room\'s filter.',
  unauthorized: 'You cannot send here: sign in with a token that allows it.',
  not_joined: 'Not in the room yet; try again in a moment.',
  room_closed: 'This room no longer accepts comments.',
  closed: 'Not sent: the connection was closed.',
  kicked: 'Not sent: you were disconnected by a moderator.',
};

function sentence(text) {
  const t = text.trim();
  return t ? t[0].toUpperCase() + t.slice(1) + (/[.!?]$/.test(t) ? '' : '.') : '';
}

function showNack(err, text) {
  if (err.code === 'rate_limited' && err.retryAfterMs) {
    startCountdown(err.retryAfterMs);
  } else if (err.code === 'too_long') {
    setStatus(`Too long: at most ${input.maxLength} characters.`, 'error');
  } else {
    // The server's words say the most (how long a mute lasts, which rule refused the text).
    const said = err.fromServer ? sentence(err.message || '') : '';
    setStatus(said || NACK_TEXT[err.code] || `Not sent: ${err.message || err.code}`, 'error');
  }
  status.dataset.code = err.code;
  if (!input.value && err.code !== 'filtered') input.value = text; // let them fix and resend
}

form.addEventListener('submit', (ev) => {
  ev.preventDefault();
  if (!client || !canSend) return;
  if (Date.now() < countdownUntil) {
    input.focus();
    return;
  }
  const text = input.value.trim();
  if (!text) return;
  const body = {
    text, mode: $('mode').value, color: $('color').value.toLowerCase(),
    offset_ms: Math.max(0, Math.round(playback.currentMs())),
  };
  input.value = '';
  status.dataset.code = '';
  setStatus(client.state === 'open' || client.state === 'resumed'
    ? 'Sending…' : 'Queued: it is sent when the connection is back.', 'pending');
  client.send(room, body).then(
    (ack) => setStatus(`Sent ✓ (#${ack.seq})`, 'ok'),
    (err) => showNack(err, text),
  );
});

let onlineTimer = null;
async function refreshOnline() {
  try {
    const resp = await fetch(`/v1/rooms/${encodeURIComponent(room)}`, { cache: 'no-store' });
    if (resp.ok) setOnline((await resp.json()).online);
  } catch { /* offline: the indicator says so */ }
}
function setOnline(n) {
  if (Number.isInteger(n)) $('online-count').textContent = n.toLocaleString();
}

function startLive() {
  const token = who.guest || who.invalid || who.expired ? null : who.token;
  client = new DanmakuClient({ token });
  debug.client = client;
  moderation.attach(client);
  canSend = false;
  updateSendUi();
  client.on('state', ({ state, delayMs, reason, code }) => {
    debug.states.push(state);
    clearTimeout(resumedTimer);
    if (state === 'connecting') setConn('connecting', 'Connecting…');
    else if (state === 'open') setConn('live', 'Live');
    else if (state === 'resumed') {
      setConn('resumed', 'Resumed');
      resumedTimer = setTimeout(() => setConn('live', 'Live'), 4000);
    } else if (state === 'reconnecting') {
      setConn('reconnecting', delayMs !== undefined
        ? `Reconnecting in ${Math.max(1, Math.round(delayMs / 1000))} s…` : 'Reconnecting…');
    } else if (state === 'closed') {
      setConn('closed', reason ? `Disconnected: ${reason}` : 'Disconnected');
      canSend = false;
      updateSendUi();
      if (code === 4001 && !who.guest) {
        // The server refused the token (bad, expired or revoked): keep watching as a guest.
        who = { ...tokenInfo(null), refused: true };
        restart();
      }
    }
  });
  client.on('welcome', (w) => {
    canSend = !w.guest;
    const max = w.limits?.max_text_chars;
    if (Number.isInteger(max) && max > 0) input.maxLength = max;
    updateSendUi();
  });
  client.on('joined', (j) => setOnline(j.online));
  client.on('message', (msg) => {
    debug.delivered.push(msg.seq);
    render(msg, { own: !who.guest && msg.user === who.user });
  });
  client.on('reset', (r) => {
    if (r.reason === 'epoch_changed' && debug.delivered.length) {
      addToLog({ seq: -1, kind: 'system', name: '·', body: { text: 'The room was restarted.' } });
    }
  });
  client.on('error', (e) => {
    if (e.room === room) {
      setConn('closed', `Cannot join: ${e.message || e.code}`);
      canSend = false;
      updateSendUi();
    }
  });
  client.join(room);
  client.connect();
  clearInterval(onlineTimer);
  onlineTimer = setInterval(refreshOnline, 10000);
}

function restart() {
  const old = client;
  client = null;
  old?.close('signed in as someone else');
  updateIdentityUi();
  moderation?.setIdentity(who);
  startLive();
}

// -- replay mode ------------------------------------------------------------------------------
function startReplay() {
  $('mode-badge').hidden = false;
  form.hidden = true;
  $('replay-controls').hidden = false;
  conn.hidden = true; // the Replay badge says it: no live connection here
  $('online').hidden = true;
  const index = new ReplayIndex();
  const timeline = $('timeline');
  const timeOut = $('time');
  let dragging = false;

  const durationMs = () => {
    const d = playback.durationMs();
    return Number.isFinite(d) && d > 0 ? d : Math.max(10000, index.lastOffset + 5000);
  };
  const controller = new ReplayController({
    index, playback, overlay,
    show: (msg, at) => {
      debug.replayShown.push({ seq: msg.seq, offset_ms: offsetOf(msg), at_ms: Math.round(at) });
      render(msg);
    },
    onTick: (now) => {
      const d = durationMs();
      timeline.max = String(Math.round(d));
      if (!dragging) timeline.value = String(Math.round(now));
      const label = `${formatTime(now)} / ${formatTime(d)}`;
      if (timeOut.textContent !== label) {
        timeOut.textContent = label;
        timeline.setAttribute('aria-valuetext', `${formatTime(now)} of ${formatTime(d)}`);
      }
      const playing = playback.playing;
      $('play').textContent = playing ? '❚❚' : '▶';
      $('play').setAttribute('aria-label', playing ? 'Pause' : 'Play');
    },
  });
  timeline.addEventListener('pointerdown', () => { dragging = true; });
  timeline.addEventListener('pointerup', () => { dragging = false; });
  timeline.addEventListener('input', () => playback.seek(Number(timeline.value)));
  timeline.addEventListener('change', () => { dragging = false; });
  $('play').addEventListener('click', togglePlay);

  if (!src) playback.pause(); // the pattern waits for the archive before it plays
  const note = $('stage-note');
  note.hidden = false;
  note.textContent = 'Loading the archive…';
  let started = false;
  const go = () => {
    if (started) return;
    started = true;
    note.hidden = true;
    controller.start();
    if (!src) {
      playback.setDuration(durationMs());
      if (params.get('autoplay') !== '0') playback.play();
    }
  };
  loadArchive('', room, index, {
    onPage: () => {
      if (!src) playback.setDuration(Math.max(10000, index.lastOffset + 5000));
      go();
    },
  }).then(() => {
    go();
    if (!index.length) {
      note.hidden = false;
      note.textContent = 'No archived comments for this room.';
    }
    debug.replayLoaded = index.length;
  }, (err) => {
    note.hidden = false;
    note.textContent = err instanceof ReplayUnavailable
      ? `Replay is not available here: ${err.message}`
      : `Could not load the archive: ${err.message}`;
    debug.replayError = err.message;
  });
}

function togglePlay() {
  if (playback.playing) playback.pause();
  else playback.play();
}

// -- start ------------------------------------------------------------------------------------
moderation = new ModerationPanel({
  root: $('mod-panel'),
  room,
  getClient: () => client,
  identity: who,
});
updateIdentityUi();
if (replayMode) {
  canSend = false;
  updateSendUi();
  startReplay();
} else {
  startLive();
}
