'use strict';
/*
 * Peer (a) for loadtest/compare_peers.py: Socket.IO 4 on Node.js, one room broadcast with
 * rooms and `io.to(room).emit` (the stock way; the adapter encodes the packet once per emit and
 * hands it to every socket of the room).
 *
 *   node loadtest/peers/socketio_server.js --port 9002 [--heartbeat-ms 25000]
 *
 * Events (Engine.IO v4 over WebSocket, /socket.io/?EIO=4&transport=websocket):
 *   "join" R                          -> "joined" {"room":R,"seq":<last seq>}
 *   "send" {"room":R,"cmid":C,"body":B} -> seq += 1; io.to(R).emit("danmaku", {seq, id, user,
 *        name, ts, kind, body}) and to the sender "ack" {"room":R,"cmid":C,"seq":n,"ts":ms}
 * Prints {"event":"listening","port":P} on stdout when ready; SIGTERM/SIGINT close and exit 0.
 */
const http = require('node:http');
const { Server } = require('socket.io');
const { parseArgs, makeRooms, listening } = require('./common');

const opts = parseArgs(process.argv.slice(2));
const rooms = makeRooms();
const SENDER = 'bench-sender-0'; // no accounts here: every comment is from one user

const server = http.createServer();
const io = new Server(server, {
  serveClient: false,
  perMessageDeflate: false, // the default; as for every engine here, no per-connection compression
  pingInterval: opts.heartbeatMs,
  pingTimeout: Math.max(20000, opts.heartbeatMs),
});

io.on('connection', (socket) => {
  socket.on('join', (room) => {
    if (typeof room !== 'string') return;
    socket.join(room);
    socket.emit('joined', { room, seq: rooms.lastSeq(room) });
  });
  socket.on('send', (msg) => {
    if (!msg || typeof msg.room !== 'string' || !socket.rooms.has(msg.room)) return;
    const m = rooms.sequence(msg.room, SENDER, msg.body);
    io.to(msg.room).emit('danmaku', m);
    socket.emit('ack', { room: msg.room, cmid: msg.cmid, seq: m.seq, ts: m.ts });
  });
});

listening(server, opts.port);
