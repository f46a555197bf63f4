'use strict';
/*
 * Peer (c) for loadtest/compare_peers.py: Node.js + `ws` 8, one room broadcast with a frame built
 * once per message and written to each viewer's raw socket (the fastest design measured in
 * ../shared/research/fanout.md). `ws` does the HTTP upgrade and parses client frames (join,
 * send, pings); broadcasts bypass `ws.send()` and go straight to the net.Socket, so the frame
 * header and payload are encoded once for all viewers.
 *
 *   node loadtest/peers/ws_server.js --port 9001
 *
 * Protocol (the subset of docs/protocol.md the benchmark needs; see README.md here):
 *   {"op":"join","room":R}                 -> {"op":"joined","room":R,"seq":<last seq>}
 *   {"op":"send","room":R,"cmid":C,"body":B} -> seq += 1; every joined connection gets
 *        {"op":"danmaku","room":R,"seq":n,"id":..,"user":..,"name":..,"ts":ms,"kind":"danmaku","body":B}
 *        and the sender {"op":"ack","room":R,"cmid":C,"seq":n,"ts":ms}
 *   anything else (hello, ...) is ignored.
 * Prints {"event":"listening","port":P} on stdout when ready; SIGTERM/SIGINT close and exit 0.
 */
const http = require('node:http');
const { WebSocketServer } = require('ws');
const { parseArgs, makeRooms, listening } = require('./common');

const opts = parseArgs(process.argv.slice(2));
const rooms = makeRooms();
const SENDER = 'bench-sender-0'; // no accounts here: every comment is from one user

// RFC 6455 unmasked text frame: FIN + opcode 1, 7/16/64-bit payload length.
function textFrame(payload) {
  const n = payload.length;
  const head = n < 126 ? 2 : n < 65536 ? 4 : 10;
  const frame = Buffer.allocUnsafe(head + n);
  frame[0] = 0x81;
  if (n < 126) {
    frame[1] = n;
  } else if (n < 65536) {
    frame[1] = 126;
    frame.writeUInt16BE(n, 2);
  } else {
    frame[1] = 127;
    frame.writeBigUInt64BE(BigInt(n), 2);
  }
  payload.copy(frame, head);
  return frame;
}

const server = http.createServer((_req, res) => {
  res.writeHead(426);
  res.end();
});
const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false, clientTracking: false });

server.on('upgrade', (req, socket, head) => {
  wss.handleUpgrade(req, socket, head, (ws) => {
    const viewer = { socket, room: null };
    ws.on('message', (data, isBinary) => {
      if (isBinary) return;
      let msg;
      try {
        msg = JSON.parse(data);
      } catch {
        return;
      }
      if (msg.op === 'join' && typeof msg.room === 'string') {
        if (viewer.room !== null) rooms.members(viewer.room).delete(viewer);
        viewer.room = msg.room;
        rooms.members(msg.room).add(viewer);
        ws.send(JSON.stringify({ op: 'joined', room: msg.room, seq: rooms.lastSeq(msg.room) }));
      } else if (msg.op === 'send' && msg.room === viewer.room) {
        const m = rooms.sequence(msg.room, SENDER, msg.body);
        const frame = textFrame(Buffer.from(JSON.stringify({ op: 'danmaku', room: msg.room, ...m })));
        for (const v of rooms.members(msg.room)) {
          if (v.socket.writable) v.socket.write(frame);
        }
        ws.send(JSON.stringify({ op: 'ack', room: msg.room, cmid: msg.cmid, seq: m.seq, ts: m.ts }));
      }
    });
    ws.on('close', () => {
      if (viewer.room !== null) rooms.members(viewer.room).delete(viewer);
    });
    ws.on('error', () => {});
  });
});

listening(server, opts.port);
