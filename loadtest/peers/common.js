'use strict';
// Shared by the Node peers: options, per-room seq counters and member sets, readiness, shutdown.

function parseArgs(argv) {
  const opts = { port: 9001, heartbeatMs: 25000 };
  for (let i = 0; i < argv.length; i += 2) {
    const [key, value] = [argv[i], argv[i + 1]];
    if (key === '--port') opts.port = Number(value);
    else if (key === '--heartbeat-ms') opts.heartbeatMs = Number(value);
    else throw new Error(`unknown option ${key}`);
  }
  return opts;
}

// Each room: the viewers joined to it and its last seq. A message gets the room's next seq and
// the same fields (and so about the same size) as a message inside a danmaku batch.
function makeRooms() {
  const members = new Map();
  const seqs = new Map();
  return {
    members(room) {
      let set = members.get(room);
      if (set === undefined) {
        set = new Set();
        members.set(room, set);
      }
      return set;
    },
    lastSeq(room) {
      return seqs.get(room) ?? 0;
    },
    sequence(room, user, body) {
      const seq = (seqs.get(room) ?? 0) + 1;
      seqs.set(room, seq);
      const id = seq.toString(16).padStart(16, '0');
      return { seq, id, user, name: user, ts: Date.now(), kind: 'danmaku', body };
    },
  };
}

function listening(server, port) {
  server.listen(port, '127.0.0.1', () => {
    process.stdout.write(`${JSON.stringify({ event: 'listening', port: server.address().port })}\n`);
  });
  const stop = () => {
    server.close();
    process.exit(0);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
}

module.exports = { parseArgs, makeRooms, listening };
