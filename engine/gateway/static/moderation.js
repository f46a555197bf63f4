// The moderator panel: offered to moderators, streamers and admins (the role is read from the
// token's payload only to decide what to show: the engine checks the actor's role in the room
// again on every op) and only when the server speaks the moderation extension op `mod`.
//
// Feature check: once the room is joined, the panel sends the read-only action
//   {"op":"mod","room":r,"action":"get_config","ref":"probe-…"}
// A `mod_result` with that ref means the op exists and this user may moderate the room: the
// panel appears (showing the room's slow mode). An `error` (`unknown_op` from a server without
// the extension, `unauthorized` for a user without rights here) or no answer keeps it hidden.
//
// The actions are the documented `mod` op's (docs/protocol.md 9.8): mute / unmute (duration_s),
// ban / unban (duration_s, absent = permanent), kick, and `config` {slow_s} for slow mode. Every
// answer is a `mod_result` or an `error` carrying the same `ref`. (There is no "delete a
// message" action in the engine, so the panel offers none.)

import { MODERATOR_ROLES } from './token.js';

const PROBE_TIMEOUT_MS = 5000;

/** The frames the panel sends, by action. */
export const MOD_FRAMES = {
  probe: ({ room, ref }) => ({ op: 'mod', room, action: 'get_config', ref }),
  // A mute always has an end: "permanent" is a year.
  mute: ({ room, user, durationS, ref }) => ({ op: 'mod', room, action: 'mute', user,
    duration_s: durationS || 365 * 86400, ref }),
  unmute: ({ room, user, ref }) => ({ op: 'mod', room, action: 'unmute', user, ref }),
  ban: ({ room, user, durationS, ref }) => (durationS
    ? { op: 'mod', room, action: 'ban', user, duration_s: durationS, ref }
    : { op: 'mod', room, action: 'ban', user, ref }),
  unban: ({ room, user, ref }) => ({ op: 'mod', room, action: 'unban', user, ref }),
  kick: ({ room, user, ref }) => ({ op: 'mod', room, action: 'kick', user, ref }),
  slow: ({ room, slowS, ref }) => ({ op: 'mod', room, action: 'config', config: { slow_s: slowS },
    ref }),
};

const TARGETED = new Set(['mute', 'unmute', 'ban', 'unban', 'kick']);
const DONE = {
  mute: 'muted', unmute: 'unmuted', ban: 'banned', unban: 'unbanned', kick: 'kicked',
};

let refs = 0;
function newRef(what) {
  refs += 1;
  return `${what}-${Date.now().toString(36)}-${refs}`;
}

export class ModerationPanel {
  constructor({ root, room, getClient, identity }) {
    this.root = root;
    this.room = room;
    this.getClient = getClient;
    this.identity = identity;
    this.supported = false;
    this.target = null;
    this._waiting = new Map(); // ref -> action
    this._probeRef = null;
    this._probeTimer = null;
    this._q = (sel) => root.querySelector(sel);
    for (const btn of root.querySelectorAll('[data-mod]')) {
      btn.addEventListener('click', () => this.act(btn.dataset.mod));
    }
    this._update();
  }

  get eligible() {
    return !!this.identity && MODERATOR_ROLES.has(this.identity.role) && !this.identity.expired
      && !this.identity.invalid;
  }

  get enabled() {
    return this.supported && this.eligible;
  }

  setIdentity(identity) {
    this.identity = identity;
    this.supported = false;
    this.target = null;
    this._update();
  }

  /** Hook the panel to a (new) client: probe once the room is joined, read every answer. */
  attach(client) {
    this.supported = false;
    this._update();
    client.on('joined', (j) => {
      if (j.room === this.room && this.eligible) this._probe(client);
    });
    client.on('frame', (f) => this._onFrame(f));
  }

  _probe(client) {
    this._probeRef = newRef('probe');
    clearTimeout(this._probeTimer);
    this._probeTimer = setTimeout(() => { this._probeRef = null; }, PROBE_TIMEOUT_MS);
    client.sendFrame(MOD_FRAMES.probe({ room: this.room, ref: this._probeRef }));
  }

  _onFrame(f) {
    if (f.op === 'mod_result' && f.ref && f.ref === this._probeRef) {
      clearTimeout(this._probeTimer);
      this._probeRef = null;
      this.supported = true;
      this._showConfig(f.result);
      this._update();
      return;
    }
    if (f.op === 'error' && this._probeRef && (f.ref === this._probeRef || f.code === 'unknown_op')) {
      clearTimeout(this._probeTimer);
      this._probeRef = null;
      this.supported = false;
      this._update();
      return;
    }
    const action = f.ref ? this._waiting.get(f.ref) : undefined;
    if (action === undefined) return;
    this._waiting.delete(f.ref);
    if (f.op === 'mod_result') {
      if (action === 'slow') {
        this._showConfig(f.result);
        this._status(`Slow mode ${this._slowText(f.result)}.`, 'ok');
      } else {
        const until = f.result?.until_ms ? ` until ${new Date(f.result.until_ms).toLocaleTimeString()}` : '';
        this._status(`${this.target?.name || f.result?.user || 'User'} ${DONE[action]}${until}.`, 'ok');
      }
    } else if (f.op === 'error') {
      this._status(`Refused: ${f.message || f.code}`, 'error');
    }
  }

  _slowText(result) {
    const s = result?.config?.slow_s;
    return s ? `on: one comment per ${s} s` : 'off';
  }

  _showConfig(result) {
    const s = result?.config?.slow_s;
    if (Number.isInteger(s)) {
      const select = this._q('#mod-slow');
      if (![...select.options].some((o) => o.value === String(s))) {
        select.add(new Option(`${s} s`, String(s)));
      }
      select.value = String(s);
      this._q('#mod-config').textContent = `Slow mode ${this._slowText(result)}.`;
    }
  }

  select(msg) {
    this.target = msg;
    this._q('#mod-target').textContent = `Selected: ${msg.name || msg.user} — “${msg.body?.text ?? ''}”`;
    this._update();
  }

  act(action) {
    const client = this.getClient();
    if (!client || !this.enabled || (TARGETED.has(action) && !this.target)) return;
    const ref = newRef(action);
    const frame = MOD_FRAMES[action]({
      room: this.room,
      user: this.target?.user,
      durationS: Math.round(Number(this._q('#mod-duration').value) / 1000),
      slowS: Number(this._q('#mod-slow').value),
      ref,
    });
    if (!client.sendFrame(frame)) {
      this._status('Not connected; try again when the connection is back.', 'error');
      return;
    }
    this._waiting.set(ref, action);
    this._status(`Sending ${action}…`, 'pending');
  }

  _status(text, kind) {
    const el = this._q('#mod-status');
    el.textContent = text;
    el.dataset.kind = kind;
  }

  _update() {
    this.root.hidden = !this.enabled;
    document.body.classList.toggle('mod-on', this.enabled);
    for (const btn of this.root.querySelectorAll('[data-mod]')) {
      btn.disabled = TARGETED.has(btn.dataset.mod) && !this.target;
    }
  }
}
