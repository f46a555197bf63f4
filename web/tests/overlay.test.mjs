// Unit tests of the lane allocator and the replay index (pure parts of the page's modules).
//   node --test web/tests/

import assert from 'node:assert/strict';
import { test } from 'node:test';

import { LaneAllocator, PausableClock } from '../../engine/gateway/static/overlay.js';
import { ReplayIndex, loadArchive, ReplayUnavailable } from '../../engine/gateway/static/replay.js';

/** Positions of a scroll item at time t: [left, right]. */
function span(W, it, t) {
  const x = W - it.v * (t - it.start);
  return [x, x + it.w];
}

test('scroll comments fill rows top-down, follow each other without overlap, then drop', () => {
  const W = 800;
  const lanes = new LaneAllocator({ rows: 3, width: W, gapPx: 20 });
  assert.equal(lanes.scroll(0, 200, 8000), 0);
  assert.equal(lanes.scroll(0, 200, 8000), 1);
  assert.equal(lanes.scroll(0, 200, 8000), 2);
  assert.equal(lanes.scroll(10, 200, 8000), -1); // full: dropped, not queued
  // Row 0's comment moves at 1000/8000 px/ms: its tail + gap is in after 1760 ms.
  assert.equal(lanes.scroll(1700, 200, 8000), -1);
  assert.equal(lanes.scroll(1800, 200, 8000), 0);
});

test('a faster (longer) comment never catches up with the one ahead in its row', () => {
  const W = 800;
  const lanes = new LaneAllocator({ rows: 1, width: W, gapPx: 10 });
  lanes.scroll(0, 50, 8000); // slow: 850 px in 8 s
  // A 700 px comment moves 1500 px in 8 s: starting at 1 s it would pass the first one.
  assert.equal(lanes.scroll(1000, 700, 8000), -1);
  // Its head reaches the left edge at t + 800/(1500/8000) = t + 4267 ms; the first one's tail
  // leaves at 8000 ms, so from t = 3734 ms on it is safe.
  assert.equal(lanes.scroll(3700, 700, 8000), -1);
  assert.equal(lanes.scroll(3800, 700, 8000), 0);
  // Check by simulation: the two never overlap.
  const a = { start: 0, w: 50, v: 850 / 8000 };
  const b = { start: 3800, w: 700, v: 1500 / 8000 };
  for (let t = 3800; t <= 8000; t += 10) {
    const [al, ar] = span(W, a, t);
    const [bl] = span(W, b, t);
    assert.ok(ar <= 0 || bl >= ar || al >= W, `overlap at ${t}`);
  }
});

test('pinned comments take free rows from their edge, for their duration, then drop', () => {
  const lanes = new LaneAllocator({ rows: 4, usable: 2, width: 800 });
  assert.equal(lanes.pinned('top', 0, 100, 4000), 0);
  assert.equal(lanes.pinned('top', 0, 100, 4000), 1);
  assert.equal(lanes.pinned('top', 0, 100, 4000), -1); // only `usable` rows: dropped
  assert.equal(lanes.pinned('bottom', 0, 100, 4000), 3);
  assert.equal(lanes.pinned('bottom', 0, 100, 4000), 2);
  assert.equal(lanes.pinned('top', 4000, 100, 4000), 0); // expired
});

test('scroll and pinned comments in one row never cross', () => {
  const lanes = new LaneAllocator({ rows: 2, width: 800, gapPx: 0 });
  assert.equal(lanes.pinned('top', 0, 200, 4000), 0); // centred box [300, 500] until 4 s
  // A scroll comment starting now would reach x = 500 after (800-500)/(1000/8000) = 2400 ms,
  // while the pinned one is still shown: it goes to row 1 instead.
  assert.equal(lanes.scroll(0, 200, 8000), 1);
  // Row 1's scroll comment covers the centre from 2.4 s to 5.6 s: a top comment at 2 s
  // cannot use row 1 (row 0 is taken too), so it is dropped.
  assert.equal(lanes.pinned('top', 2000, 200, 4000), -1);
});

test('density limits the rows in use; reset frees them', () => {
  const lanes = new LaneAllocator({ rows: 10, usable: 2, width: 800 });
  assert.equal(lanes.scroll(0, 100, 8000), 0);
  assert.equal(lanes.scroll(0, 100, 8000), 1);
  assert.equal(lanes.scroll(0, 100, 8000), -1);
  lanes.configure({ usable: 3 });
  assert.equal(lanes.scroll(0, 100, 8000), 2);
  lanes.reset();
  assert.equal(lanes.scroll(0, 100, 8000), 0);
});

test('the pausable clock stops while paused', () => {
  let now = 100;
  const clock = new PausableClock(() => now);
  now = 600;
  assert.equal(clock.now(), 500);
  clock.pause();
  now = 5000;
  assert.equal(clock.now(), 500);
  clock.resume();
  now = 5100;
  assert.equal(clock.now(), 600);
});

const m = (seq, offset) => ({ seq, id: `i${seq}`, user: 'u', name: 'U', ts: 0, kind: 'danmaku',
  body: { text: `t${seq}`, offset_ms: offset } });

test('the replay index keeps (offset, seq) order, dedupes by seq and answers ranges', () => {
  const idx = new ReplayIndex();
  idx.add([m(3, 2000), m(1, 1000), m(2, 1000)]);
  idx.add([m(2, 1000), m(4, 5000)]);
  assert.deepEqual(idx.msgs.map((x) => x.seq), [1, 2, 3, 4]);
  assert.deepEqual(idx.between(999, 1000).map((x) => x.seq), [1, 2]);
  assert.deepEqual(idx.between(1000, 4999).map((x) => x.seq), [3]);
  assert.equal(idx.lastOffset, 5000);
});

test('loadArchive follows the server\'s next cursor (from_ms, after_seq) to the end', async () => {
  const all = [m(1, 0), m(2, 0), m(3, 0), m(4, 700)];
  const urls = [];
  const fakeFetch = async (url) => {
    urls.push(url);
    const q = new URL(url, 'http://x').searchParams;
    const from = Number(q.get('from_ms'));
    const after = Number(q.get('after_seq') ?? 0);
    const rest = all.filter((x) => x.body.offset_ms > from
      || (x.body.offset_ms === from && x.seq > after));
    const page = rest.slice(0, 2);
    const last = page.at(-1);
    const next = page.length === 2 ? { from_ms: last.body.offset_ms, after_seq: last.seq } : null;
    return { ok: true, status: 200, json: async () => ({ room: 'r', msgs: page, next }) };
  };
  const idx = new ReplayIndex();
  await loadArchive('', 'r', idx, { fetch: fakeFetch, limit: 2 });
  assert.deepEqual(idx.msgs.map((x) => x.seq), [1, 2, 3, 4]);
  assert.match(urls[1], /from_ms=0&.*&after_seq=2$/);
  assert.equal(urls.length, 3);
});

test('loadArchive pages from the last offset and reports a missing endpoint', async () => {
  const all = Array.from({ length: 5 }, (_, i) => m(i + 1, i * 100));
  const urls = [];
  const fakeFetch = async (url) => {
    urls.push(url);
    const from = Number(new URL(url, 'http://x').searchParams.get('from_ms'));
    const page = all.filter((x) => x.body.offset_ms >= from).slice(0, 2);
    return { ok: true, status: 200, json: async () => ({ room: 'r', msgs: page }) };
  };
  const idx = new ReplayIndex();
  await loadArchive('', 'r', idx, { fetch: fakeFetch, limit: 2 });
  assert.deepEqual(idx.msgs.map((x) => x.seq), [1, 2, 3, 4, 5]);
  assert.match(urls[0], /^\/v1\/rooms\/r\/replay\?from_ms=0&to_ms=\d+&limit=2$/);
  const missing = async () => ({ ok: false, status: 404, json: async () => ({}) });
  await assert.rejects(loadArchive('', 'r', new ReplayIndex(), { fetch: missing }),
    (err) => err instanceof ReplayUnavailable);
  const noArchive = async () => ({ ok: false, status: 503,
    json: async () => ({ error: { code: 'archive_unavailable', message: 'no archive here' } }) });
  await assert.rejects(loadArchive('', 'r', new ReplayIndex(), { fetch: noArchive }),
    (err) => err instanceof ReplayUnavailable && err.message === 'no archive here');
});
