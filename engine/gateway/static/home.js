// The room list at /: GET /v1/rooms every 10 s (rooms with viewers, busiest first).

const list = document.getElementById('rooms');
const empty = document.getElementById('empty');
const status = document.getElementById('status');

function roomLink(room, replay = false) {
  return `/r/${encodeURIComponent(room)}${replay ? '?replay=1' : ''}`;
}

function render(rooms) {
  list.replaceChildren(...rooms.map((r) => {
    const li = document.createElement('li');
    li.className = 'room-card';
    li.dataset.room = r.room;
    const a = document.createElement('a');
    a.className = 'name';
    a.href = roomLink(r.room);
    a.textContent = r.room;
    const count = document.createElement('span');
    count.className = 'count';
    count.textContent = `${Number(r.online).toLocaleString()} watching`;
    const replay = document.createElement('a');
    replay.href = roomLink(r.room, true);
    replay.textContent = 'Replay';
    replay.setAttribute('aria-label', `Replay of ${r.room}`);
    li.append(a, count, replay);
    return li;
  }));
  empty.hidden = rooms.length > 0;
  list.setAttribute('aria-busy', 'false');
}

async function refresh() {
  try {
    const resp = await fetch('/v1/rooms', { cache: 'no-store' });
    if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
    render((await resp.json()).rooms || []);
    status.textContent = `Updated ${new Date().toLocaleTimeString()}`;
  } catch (err) {
    status.textContent = `Cannot load the room list (${err.message}); retrying.`;
  }
}

const form = document.getElementById('go');
const input = document.getElementById('room');
form.addEventListener('submit', (ev) => {
  ev.preventDefault();
  if (form.reportValidity()) location.href = roomLink(input.value.trim());
});
document.getElementById('go-replay').addEventListener('click', () => {
  if (form.reportValidity()) location.href = roomLink(input.value.trim(), true);
});

refresh();
setInterval(refresh, 10000);
