/*
 * swarm: N WebSocket viewers of one danmaku room in one process (epoll, level-triggered).
 *
 *   cc -O2 -o loadtest/swarm/swarm loadtest/swarm/swarm.c
 *   loadtest/swarm/swarm --port 8080 --room bench -n 5000 --duration 20 --warmup 5
 *
 * Per connection: HTTP upgrade to /ws (expects 101), masked text frames hello (guest) and join,
 * then reads. Server frames are parsed with 7/16/64-bit lengths and may be split across reads.
 * Pings are answered with pongs; close frames are counted by code.
 *
 * For every `batch`: frames, messages, wire bytes; continuity per connection (`from` must be the
 * previous `to` + 1, else a gap); inside the batch the seqs must be increasing, within from..to,
 * and with the `skipped` ranges account for from..to exactly (else an inner gap). Latency: the
 * sender writes its wall clock as `"text":"t=<unix us>` and we take CLOCK_REALTIME at receipt
 * (once per read) minus that into a log-bucketed histogram (32 sub-buckets per power of two).
 *
 * Phases: connect at --rate per second until every connection joined or failed (deadline
 * --connect-timeout), print {"event":"ready",...} on stderr; with --wait-go wait for a line on
 * stdin; then --warmup seconds (stats reset afterwards, {"event":"measuring"} on stderr), then
 * --duration seconds measured ({"event":"done"} on stderr), then ONE JSON line on stdout.
 * SIGINT/SIGTERM end the measurement early (the JSON is still printed).
 *
 * --proto selects the server's protocol (loadtest/compare_peers.py; default danmaku):
 *   danmaku  GET /ws; hello + join; `batch` frames as above.
 *   ws       GET /ws; {"op":"join","room":R} -> {"op":"joined","seq":n}; then one frame per
 *            message, {"op":"danmaku",...,"seq":n,...,"body":{"text":"t=<us>..."}} (the peers
 *            loadtest/peers/ws_server.js and websockets_server.py).
 *   sio      Socket.IO 4 = Engine.IO v4 over WebSocket: GET /socket.io/?EIO=4&transport=websocket,
 *            open packet "0{...}" -> send "40" (connect to "/"), "40{...}" -> send
 *            42["join",R], 42["joined",{"seq":n}]; messages 42["danmaku",{...,"seq":n,...}];
 *            ping "2" is answered with pong "3" (loadtest/peers/socketio_server.js).
 * For ws and sio every message is its own frame: a seq other than the previous + 1 is a gap and
 * `lost_msgs` adds the seqs jumped over (for danmaku: those between batches); a seq at or below
 * the previous one counts as an inner gap (duplicate or out of order).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { ST_CONNECTING = 1, ST_HTTP, ST_OPEN, ST_DEAD };

typedef struct {
    int fd;
    uint8_t state;
    uint8_t joined;
    uint8_t sampled;  /* latency measured on this connection */
    uint8_t failed;
    int64_t last_to;  /* -1: no position yet */
    char *partial;    /* bytes of an incomplete frame (or HTTP head) */
    uint32_t plen, pcap;
    char *wbuf;       /* bytes not yet written (rare: only tiny client frames) */
    uint32_t wlen, woff;
} conn_t;

/* ---- options ---------------------------------------------------------------------------- */
static const char *opt_host = "127.0.0.1";
static int opt_port = 8080;
static const char *opt_room = "bench";
static int opt_n = 1000;
static double opt_duration = 20, opt_warmup = 5, opt_rate = 2000, opt_ping_s = 0;
static double opt_connect_timeout = 60;
static int opt_lat_every = 1, opt_wait_go = 0, opt_quiet = 0;
enum { PROTO_DANMAKU, PROTO_WS, PROTO_SIO };
static int opt_proto = PROTO_DANMAKU;
static const char *const proto_names[] = {"danmaku", "ws", "sio"};
static const char *opt_path = NULL;  /* default by protocol */

/* ---- stats ------------------------------------------------------------------------------ */
#define SUB_BITS 5
#define SUB (1 << SUB_BITS)
#define NBUCKETS (64 * SUB)
typedef struct {
    uint64_t frames, msgs, bytes, gaps, inner_gaps, skipped_ranges, skipped_msgs, resets,
        errors, pongs, other, control, fragmented, lat_n, lat_max_us, lost_msgs;
    uint64_t hist[NBUCKETS];
} stats_t;
static stats_t S;

static uint64_t n_ok, n_failed, fail_connect, fail_http, fail_eof, fail_timeout;
static uint64_t closes[5000], closes_other, eof_after_join, reset_errors;
static uint64_t pings_answered, pings_sent;

static conn_t *conns;
static int epfd;
static char *scratch;
static size_t scratch_cap = 1 << 20;
static volatile sig_atomic_t stop_flag;
static uint64_t rng = 0x9E3779B97F4A7C15ull;

static void on_signal(int sig) { (void)sig; stop_flag = 1; }

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int64_t wall_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static double user_s(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6;
}

static double cpu_s(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

static void event(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    fflush(stderr);
}

/* ---- histogram -------------------------------------------------------------------------- */
static int bucket_of(uint64_t v) {
    if (v < SUB) return (int)v;
    int msb = 63 - __builtin_clzll(v);
    int shift = msb - SUB_BITS;
    return (shift + 1) * SUB + (int)((v >> shift) & (SUB - 1));
}

static uint64_t bucket_high(int b) {  /* largest value that falls in bucket b */
    if (b < SUB) return (uint64_t)b;
    int shift = b / SUB - 1;
    uint64_t base = ((uint64_t)SUB + (uint64_t)(b % SUB)) << shift;
    return base + ((1ull << shift) - 1);
}

static void record_latency(int64_t lat) {
    uint64_t v = lat < 0 ? 0 : (uint64_t)lat;
    S.hist[bucket_of(v)]++;
    S.lat_n++;
    if (v > S.lat_max_us) S.lat_max_us = v;
}

static double percentile_ms(double q) {
    if (!S.lat_n) return -1;
    uint64_t rank = (uint64_t)(q * (double)S.lat_n);
    if (rank >= S.lat_n) rank = S.lat_n - 1;
    uint64_t seen = 0;
    for (int b = 0; b < NBUCKETS; b++) {
        seen += S.hist[b];
        if (seen > rank) {
            uint64_t hi = bucket_high(b);
            if (hi > S.lat_max_us) hi = S.lat_max_us;
            return hi / 1000.0;
        }
    }
    return S.lat_max_us / 1000.0;
}

/* ---- writing ---------------------------------------------------------------------------- */
static void conn_kill(conn_t *c);

static void conn_write(conn_t *c, const void *data, size_t len) {
    if (c->state == ST_DEAD) return;
    if (c->wlen == 0) {
        ssize_t n = write(c->fd, data, len);
        if (n < 0) {
            if (errno != EAGAIN) { reset_errors++; conn_kill(c); return; }
            n = 0;
        }
        if ((size_t)n == len) return;
        data = (const char *)data + n;
        len -= (size_t)n;
    }
    c->wbuf = realloc(c->wbuf, c->wlen + len);
    memcpy(c->wbuf + c->wlen, data, len);
    c->wlen += (uint32_t)len;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.u32 = (uint32_t)(c - conns)};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

static void conn_flush(conn_t *c) {
    while (c->woff < c->wlen) {
        ssize_t n = write(c->fd, c->wbuf + c->woff, c->wlen - c->woff);
        if (n < 0) {
            if (errno == EAGAIN) return;
            reset_errors++;
            conn_kill(c);
            return;
        }
        c->woff += (uint32_t)n;
    }
    free(c->wbuf);
    c->wbuf = NULL;
    c->wlen = c->woff = 0;
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)(c - conns)};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

/* A masked client frame (RFC 6455 5.3). */
static void send_frame(conn_t *c, int opcode, const char *payload, size_t len) {
    unsigned char buf[512];
    size_t h = 0;
    if (len > sizeof buf - 14) return;
    buf[h++] = (unsigned char)(0x80 | opcode);
    if (len < 126) {
        buf[h++] = (unsigned char)(0x80 | len);
    } else {
        buf[h++] = 0x80 | 126;
        buf[h++] = (unsigned char)(len >> 8);
        buf[h++] = (unsigned char)len;
    }
    rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17;
    unsigned char key[4] = {(unsigned char)rng, (unsigned char)(rng >> 8),
                            (unsigned char)(rng >> 16), (unsigned char)(rng >> 24)};
    memcpy(buf + h, key, 4);
    h += 4;
    for (size_t i = 0; i < len; i++) buf[h + i] = (unsigned char)payload[i] ^ key[i & 3];
    conn_write(c, buf, h + len);
}

static void send_text(conn_t *c, const char *text) { send_frame(c, 1, text, strlen(text)); }

/* ---- connection lifecycle --------------------------------------------------------------- */
static void conn_kill(conn_t *c) {
    if (c->state == ST_DEAD) return;
    if (!c->joined && !c->failed) { c->failed = 1; n_failed++; }
    c->state = ST_DEAD;
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c->partial);
    free(c->wbuf);
    c->partial = c->wbuf = NULL;
    c->plen = c->pcap = c->wlen = c->woff = 0;
}

static struct sockaddr_in server_addr;

static void conn_start(conn_t *c) {
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    c->last_to = -1;
    if (c->fd < 0) {
        fail_connect++;
        c->failed = 1;
        n_failed++;
        c->state = ST_DEAD;
        if (!opt_quiet) event("{\"event\":\"socket_error\",\"errno\":%d}", errno);
        return;
    }
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->state = ST_CONNECTING;
    int r = connect(c->fd, (struct sockaddr *)&server_addr, sizeof server_addr);
    if (r < 0 && errno != EINPROGRESS) {
        fail_connect++;
        c->failed = 1;
        n_failed++;
        close(c->fd);
        c->state = ST_DEAD;
        return;
    }
    struct epoll_event ev = {.events = EPOLLOUT | EPOLLIN, .data.u32 = (uint32_t)(c - conns)};
    epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev);
}

static void on_connected(conn_t *c) {
    int err = 0;
    socklen_t len = sizeof err;
    getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
    if (err) {
        fail_connect++;
        conn_kill(c);
        return;
    }
    char req[512];
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     "Sec-WebSocket-Version: 13\r\n\r\n",
                     opt_path, opt_host, opt_port);
    c->state = ST_HTTP;
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)(c - conns)};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
    conn_write(c, req, (size_t)n);
}

/* ---- parsing ---------------------------------------------------------------------------- */
static int64_t parse_int_after(const char *p, size_t len, const char *key) {
    size_t kl = strlen(key);
    const char *q = memmem(p, len, key, kl);
    if (!q) return -1;
    q += kl;
    const char *end = p + len;
    int64_t v = 0;
    int any = 0;
    while (q < end && *q >= '0' && *q <= '9') { v = v * 10 + (*q++ - '0'); any = 1; }
    return any ? v : -1;
}

/* The sender's wall clock in the message starting at d: '=' appears in a message only in the
   sender's "t=" (ids are hex, no base64), so a SIMD memchr finds it; then check the "text":"t=
   around it. */
static void latency_from(const char *d, const char *end, int64_t now) {
    size_t win = (size_t)(end - d);
    if (win > 1024) win = 1024;
    const char *t = memchr(d, '=', win);
    if (t && t - d >= 9 && memcmp(t - 9, "\"text\":\"t=", 10) == 0) {
        t += 1;
        int64_t us = 0;
        while (t < end && *t >= '0' && *t <= '9') us = us * 10 + (*t++ - '0');
        record_latency(now - us);
    }
}

static void on_batch(conn_t *c, const char *p, size_t len, int64_t now) {
    size_t head = len < 256 ? len : 256;
    int64_t from = parse_int_after(p, head, ",\"from\":");
    int64_t to = parse_int_after(p, head, ",\"to\":");
    S.frames++;
    if (from < 0 || to < from) { S.inner_gaps++; return; }
    if (c->last_to >= 0 && from != c->last_to + 1) {
        S.gaps++;
        if (from > c->last_to + 1) S.lost_msgs += (uint64_t)(from - c->last_to - 1);
        if (!opt_quiet && S.gaps <= 5)
            event("{\"event\":\"gap\",\"conn\":%ld,\"expected\":%ld,\"from\":%ld}",
                  (long)(c - conns), (long)(c->last_to + 1), (long)from);
    }
    c->last_to = to;
    /* skipped: `],"skipped":[[a,b],...]}` at the very end; scan back over digits/,/[/]. */
    const char *end = p + len;
    const char *msgs_end = end;
    uint64_t skipped_msgs = 0;
    if (len > 16 && end[-1] == '}' && end[-2] == ']' && end[-3] == ']') {
        const char *q = end - 2;
        while (q > p && ((*q >= '0' && *q <= '9') || *q == ',' || *q == '[' || *q == ']')) q--;
        static const char key[] = ",\"skipped\":";
        size_t kl = sizeof key - 1;
        if (q - p >= (ptrdiff_t)kl && memcmp(q - kl + 1, key, kl) == 0) {
            msgs_end = q - kl + 1;
            const char *r = q + 1;  /* at "[[" */
            while (r < end - 1) {
                if (*r == '[' && r[1] >= '0' && r[1] <= '9') {
                    int64_t a = 0, b = 0;
                    r++;
                    while (*r >= '0' && *r <= '9') a = a * 10 + (*r++ - '0');
                    if (*r == ',') r++;
                    while (*r >= '0' && *r <= '9') b = b * 10 + (*r++ - '0');
                    S.skipped_ranges++;
                    skipped_msgs += (uint64_t)(b - a + 1);
                } else {
                    r++;
                }
            }
            S.skipped_msgs += skipped_msgs;
        }
    }
    /* messages: each object starts with {"seq": (user text is JSON-escaped, so exact). */
    const char *q = memmem(p, head, "\"msgs\":[", 8);
    q = q ? q + 8 : p;
    uint64_t count = 0;
    int64_t prev = from - 1;
    int bad = 0;
    while (q < msgs_end) {
        q = memchr(q, '{', (size_t)(msgs_end - q));
        if (!q) break;
        if ((size_t)(msgs_end - q) > 7 && memcmp(q, "{\"seq\":", 7) == 0) {
            const char *d = q + 7;
            int64_t seq = 0;
            while (d < msgs_end && *d >= '0' && *d <= '9') seq = seq * 10 + (*d++ - '0');
            if (seq <= prev || seq > to) bad = 1;
            prev = seq;
            count++;
            if (c->sampled) latency_from(d, msgs_end, now);
            q = d;
        } else {
            q++;
        }
    }
    if (bad || count + skipped_msgs != (uint64_t)(to - from + 1)) {
        S.inner_gaps++;
        if (!opt_quiet && S.inner_gaps <= 5)
            event("{\"event\":\"inner_gap\",\"from\":%ld,\"to\":%ld,\"count\":%lu,\"skipped\":%lu}",
                  (long)from, (long)to, (unsigned long)count, (unsigned long)skipped_msgs);
    }
    S.msgs += count;
}

static void on_text_danmaku(conn_t *c, const char *p, size_t len, int64_t now) {
    if (len >= 13 && memcmp(p, "{\"op\":\"batch\"", 13) == 0) {
        on_batch(c, p, len, now);
    } else if (len >= 14 && memcmp(p, "{\"op\":\"joined\"", 14) == 0) {
        int64_t seq = parse_int_after(p, len, ",\"seq\":");
        if (c->last_to < 0) c->last_to = seq;
        if (!c->joined && !c->failed) { c->joined = 1; n_ok++; }
    } else if (len >= 13 && memcmp(p, "{\"op\":\"reset\"", 13) == 0) {
        S.resets++;
        c->last_to = parse_int_after(p, len, ",\"seq\":");
    } else if (len >= 12 && memcmp(p, "{\"op\":\"pong\"", 12) == 0) {
        S.pongs++;
    } else if (len >= 13 && memcmp(p, "{\"op\":\"error\"", 13) == 0) {
        S.errors++;
        if (!opt_quiet && S.errors <= 3) event("{\"event\":\"server_error\",\"frame\":%.*s}",
                                               (int)(len < 300 ? len : 300), p);
    } else if (len >= 15 && memcmp(p, "{\"op\":\"welcome\"", 15) == 0) {
        /* nothing */
    } else {
        S.other++;
    }
}

/* One message per frame (peers): p..p+len is the message object, its first "seq": is its seq. */
static void on_single(conn_t *c, const char *p, size_t len, int64_t now) {
    size_t head = len < 256 ? len : 256;
    int64_t seq = parse_int_after(p, head, "\"seq\":");
    S.frames++;
    if (seq < 0) { S.inner_gaps++; return; }
    S.msgs++;
    if (c->last_to >= 0 && seq != c->last_to + 1) {
        if (seq > c->last_to + 1) {
            S.gaps++;
            S.lost_msgs += (uint64_t)(seq - c->last_to - 1);
            if (!opt_quiet && S.gaps <= 5)
                event("{\"event\":\"gap\",\"conn\":%ld,\"expected\":%ld,\"from\":%ld}",
                      (long)(c - conns), (long)(c->last_to + 1), (long)seq);
        } else {
            S.inner_gaps++;  /* duplicate or out of order */
            return;
        }
    }
    c->last_to = seq;
    if (c->sampled) latency_from(p, p + len, now);
}

static void on_joined(conn_t *c, const char *p, size_t len) {
    int64_t seq = parse_int_after(p, len, "\"seq\":");
    if (c->last_to < 0) c->last_to = seq;
    if (!c->joined && !c->failed) { c->joined = 1; n_ok++; }
}

static void on_text_ws(conn_t *c, const char *p, size_t len, int64_t now) {
    if (len >= 15 && memcmp(p, "{\"op\":\"danmaku\"", 15) == 0) on_single(c, p, len, now);
    else if (len >= 14 && memcmp(p, "{\"op\":\"joined\"", 14) == 0) on_joined(c, p, len);
    else S.other++;
}


/* Engine.IO v4 packet types: 0 open, 2 ping, 3 pong, 4 message; Socket.IO inside 4: 0 connect,
   1 disconnect, 2 event. */
static void on_text_sio(conn_t *c, const char *p, size_t len, int64_t now) {
    if (len >= 13 && memcmp(p, "42[\"danmaku\",", 13) == 0) {
        on_single(c, p + 13, len - 14, now);
    } else if (len == 1 && p[0] == '2') {
        pings_answered++;
        send_text(c, "3");
    } else if (len >= 12 && memcmp(p, "42[\"joined\",", 12) == 0) {
        on_joined(c, p, len);
    } else if (len >= 2 && p[0] == '0' && p[1] == '{') {
        send_text(c, "40");
    } else if (len >= 2 && memcmp(p, "40", 2) == 0) {
        char join[160];
        snprintf(join, sizeof join, "42[\"join\",\"%s\"]", opt_room);
        send_text(c, join);
    } else if (len >= 2 && memcmp(p, "41", 2) == 0) {
        closes_other++;
        if (c->joined) eof_after_join++;
        conn_kill(c);
    } else if (len >= 2 && memcmp(p, "44", 2) == 0) {
        S.errors++;
        if (!opt_quiet && S.errors <= 3) event("{\"event\":\"server_error\",\"packet\":\"%.*s\"}",
                                               (int)(len < 200 ? len : 200), p);
    } else {
        S.other++;
    }
}

static void on_text(conn_t *c, const char *p, size_t len, int64_t now) {
    if (opt_proto == PROTO_DANMAKU) on_text_danmaku(c, p, len, now);
    else if (opt_proto == PROTO_WS) on_text_ws(c, p, len, now);
    else on_text_sio(c, p, len, now);
}

static void on_close_frame(conn_t *c, const unsigned char *p, size_t len) {
    int code = len >= 2 ? (p[0] << 8 | p[1]) : 1005;
    if (code >= 0 && code < 5000) closes[code]++; else closes_other++;
    static int shown;
    if (!opt_quiet && shown++ < 5)
        event("{\"event\":\"close\",\"conn\":%ld,\"code\":%d}", (long)(c - conns), code);
    static const unsigned char reply[] = {0x88, 0x80, 0, 0, 0, 0};  /* masked, empty */
    conn_write(c, reply, sizeof reply);
    conn_kill(c);
}

/* Parses complete frames in buf[0..n); returns the bytes consumed. */
static size_t parse_frames(conn_t *c, char *buf, size_t n, int64_t now, size_t *need) {
    size_t off = 0;
    *need = 0;
    while (off + 2 <= n && c->state == ST_OPEN) {
        unsigned char b0 = (unsigned char)buf[off], b1 = (unsigned char)buf[off + 1];
        uint64_t plen = b1 & 0x7f;
        size_t h = 2;
        if (plen == 126) {
            if (off + 4 > n) break;
            plen = ((unsigned char)buf[off + 2] << 8) | (unsigned char)buf[off + 3];
            h = 4;
        } else if (plen == 127) {
            if (off + 10 > n) break;
            plen = 0;
            for (int i = 0; i < 8; i++) plen = plen << 8 | (unsigned char)buf[off + 2 + i];
            h = 10;
        }
        if (b1 & 0x80) h += 4;  /* servers must not mask; tolerate and skip the key */
        if (off + h + plen > n) { *need = h + plen; break; }
        char *pl = buf + off + h;
        int op = b0 & 0x0f;
        if (!(b0 & 0x80) || op == 0) S.fragmented++;
        if (op == 1) {
            S.bytes += h + plen;
            on_text(c, pl, plen, now);
        } else if (op == 9) {
            S.control++;
            pings_answered++;
            send_frame(c, 10, pl, plen);
        } else if (op == 8) {
            S.control++;
            on_close_frame(c, (unsigned char *)pl, plen);
        } else {
            S.control++;
        }
        off += h + plen;
    }
    return off;
}

static void on_open(conn_t *c) {
    if (opt_proto == PROTO_SIO) return;  /* the server speaks first (Engine.IO open packet) */
    if (opt_proto == PROTO_DANMAKU) send_text(c, "{\"op\":\"hello\",\"client\":\"swarm/1\"}");
    char join[160];
    snprintf(join, sizeof join, "{\"op\":\"join\",\"room\":\"%s\"}", opt_room);
    send_text(c, join);
}

static void on_readable(conn_t *c) {
    for (int round = 0; round < 8 && c->state != ST_DEAD; round++) {
        size_t have = c->plen;
        if (have + 65536 > scratch_cap) {
            while (have + 65536 > scratch_cap) scratch_cap *= 2;
            scratch = realloc(scratch, scratch_cap);
        }
        if (have) memcpy(scratch, c->partial, have);
        ssize_t r = read(c->fd, scratch + have, scratch_cap - have);
        if (r < 0) {
            if (errno == EAGAIN) return;
            reset_errors++;
            if (c->joined) eof_after_join++; else fail_eof++;
            conn_kill(c);
            return;
        }
        if (r == 0) {
            if (c->joined) eof_after_join++; else fail_eof++;
            conn_kill(c);
            return;
        }
        size_t n = have + (size_t)r;
        size_t off = 0, need = 0;
        if (c->state == ST_HTTP) {
            char *e = memmem(scratch, n, "\r\n\r\n", 4);
            if (!e) {
                if (n > 8192) { fail_http++; conn_kill(c); return; }
                off = 0;
                goto keep;
            }
            if (n < 12 || memcmp(scratch, "HTTP/1.1 101", 12) != 0) {
                fail_http++;
                if (!opt_quiet && fail_http <= 3)
                    event("{\"event\":\"http_fail\",\"status\":\"%.*s\"}", 12, scratch);
                conn_kill(c);
                return;
            }
            off = (size_t)(e + 4 - scratch);
            c->state = ST_OPEN;
            on_open(c);
            if (c->state == ST_DEAD) return;
        }
        off += parse_frames(c, scratch + off, n - off, wall_us(), &need);
        if (c->state == ST_DEAD) return;
    keep:
        c->plen = 0;
        if (off < n) {
            size_t rest = n - off;
            size_t want = rest > need ? rest : need;
            if (want > c->pcap) {
                c->pcap = (uint32_t)want;
                c->partial = realloc(c->partial, c->pcap);
            }
            memcpy(c->partial, scratch + off, rest);
            c->plen = (uint32_t)rest;
        } else if (c->pcap > 65536) {
            free(c->partial);
            c->partial = NULL;
            c->pcap = 0;
        }
        if ((size_t)r < scratch_cap - have) return;  /* drained the socket */
    }
}

/* ---- main ------------------------------------------------------------------------------- */
static void usage(void) {
    fprintf(stderr,
            "usage: swarm [--host H] [--port P] [--room R] [-n N] [--duration S] [--warmup S]\n"
            "             [--rate CONNECTS_PER_S] [--ping-s S] [--lat-every K]\n"
            "             [--connect-timeout S] [--wait-go] [--quiet]\n"
            "             [--proto danmaku|ws|sio] [--path /upgrade/path?query]\n");
    exit(2);
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--wait-go")) { opt_wait_go = 1; continue; }
        if (!strcmp(a, "--quiet")) { opt_quiet = 1; continue; }
        if (!v) usage();
        if (!strcmp(a, "--host")) opt_host = v;
        else if (!strcmp(a, "--port")) opt_port = atoi(v);
        else if (!strcmp(a, "--room")) opt_room = v;
        else if (!strcmp(a, "-n")) opt_n = atoi(v);
        else if (!strcmp(a, "--duration")) opt_duration = atof(v);
        else if (!strcmp(a, "--warmup")) opt_warmup = atof(v);
        else if (!strcmp(a, "--rate")) opt_rate = atof(v);
        else if (!strcmp(a, "--ping-s")) opt_ping_s = atof(v);
        else if (!strcmp(a, "--lat-every")) opt_lat_every = atoi(v);
        else if (!strcmp(a, "--connect-timeout")) opt_connect_timeout = atof(v);
        else if (!strcmp(a, "--path")) opt_path = v;
        else if (!strcmp(a, "--proto")) {
            int found = -1;
            for (int k = 0; k < 3; k++)
                if (!strcmp(v, proto_names[k])) found = k;
            if (found < 0) usage();
            opt_proto = found;
        }
        else usage();
        i++;
    }
    if (opt_n < 1 || opt_lat_every < 1 || strlen(opt_room) > 64) usage();
    if (!opt_path) opt_path = opt_proto == PROTO_SIO ? "/socket.io/?EIO=4&transport=websocket" : "/ws";
    if (strlen(opt_path) > 256) usage();

    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rlim_t want = (rlim_t)opt_n + 64;
    if (rl.rlim_cur < want) {
        rl.rlim_cur = want < rl.rlim_max ? want : rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    signal(SIGPIPE, SIG_IGN);
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);

    memset(&server_addr, 0, sizeof server_addr);
    server_addr.sin_family = AF_INET;
    server_addr.sin_port = htons((uint16_t)opt_port);
    if (inet_pton(AF_INET, opt_host, &server_addr.sin_addr) != 1) {
        fprintf(stderr, "swarm: --host must be an IPv4 address\n");
        return 2;
    }
    conns = calloc((size_t)opt_n, sizeof *conns);
    scratch = malloc(scratch_cap);
    epfd = epoll_create1(EPOLL_CLOEXEC);
    for (int i = 0; i < opt_n; i++) conns[i].sampled = (i % opt_lat_every) == 0;
    if (opt_wait_go) {
        fcntl(0, F_SETFL, fcntl(0, F_GETFL) | O_NONBLOCK);
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = UINT32_MAX};
        epoll_ctl(epfd, EPOLL_CTL_ADD, 0, &ev);
    }

    struct epoll_event evs[1024];
    double t0 = now_s();
    int started = 0;
    int phase = 0;  /* 0 connecting, 1 waiting for go, 2 warmup, 3 measuring */
    double phase_end = 0, measure_t0 = 0, cpu0 = 0, user0 = 0, next_ping = 0;
    int ping_cursor = 0;
    double measured = 0;

    while (!stop_flag) {
        double t = now_s();
        if (phase == 0) {
            long due = (long)((t - t0) * opt_rate) + 1;
            if (due > opt_n) due = opt_n;
            while (started < due) conn_start(&conns[started++]);
            int timed_out = t - t0 > opt_connect_timeout;
            if (started == opt_n && (n_ok + n_failed == (uint64_t)opt_n || timed_out)) {
                for (int i = 0; i < opt_n; i++)
                    if (!conns[i].joined && !conns[i].failed) { fail_timeout++; conn_kill(&conns[i]); }
                event("{\"event\":\"ready\",\"ok\":%lu,\"failed\":%lu,\"connect_s\":%.2f}",
                      (unsigned long)n_ok, (unsigned long)n_failed, t - t0);
                phase = opt_wait_go ? 1 : 2;
                phase_end = t + opt_warmup;
                next_ping = t + opt_ping_s;
            } else if (timed_out) {
                /* unreachable: loop above finishes */
            }
        } else if (phase == 2 && t >= phase_end) {
            memset(&S, 0, sizeof S);
            measure_t0 = t;
            cpu0 = cpu_s();
            user0 = user_s();
            phase = 3;
            phase_end = t + opt_duration;
            event("{\"event\":\"measuring\"}");
        } else if (phase == 3 && t >= phase_end) {
            break;
        }
        if (opt_ping_s > 0 && phase >= 2 && t >= next_ping) {
            /* spread: a slice of connections per loop, the whole set once per interval */
            int slice = opt_n / 50 + 1;
            for (int k = 0; k < slice && ping_cursor < opt_n; k++, ping_cursor++) {
                conn_t *c = &conns[ping_cursor];
                if (c->state == ST_OPEN && opt_proto == PROTO_DANMAKU) {
                    send_text(c, "{\"op\":\"ping\",\"t\":1}");
                    pings_sent++;
                }
            }
            if (ping_cursor >= opt_n) { ping_cursor = 0; next_ping = t + opt_ping_s; }
        }
        int timeout = phase == 0 ? 1 : 10;
        int nev = epoll_wait(epfd, evs, 1024, timeout);
        for (int i = 0; i < nev; i++) {
            uint32_t idx = evs[i].data.u32;
            if (idx == UINT32_MAX) {
                char line[64];
                ssize_t r = read(0, line, sizeof line);
                if (phase == 1 && r != 0) {
                    phase = 2;
                    phase_end = now_s() + opt_warmup;
                }
                if (r == 0) epoll_ctl(epfd, EPOLL_CTL_DEL, 0, NULL);
                continue;
            }
            conn_t *c = &conns[idx];
            if (c->state == ST_DEAD) continue;
            if (c->state == ST_CONNECTING) {
                if (evs[i].events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) on_connected(c);
                continue;
            }
            if ((evs[i].events & EPOLLOUT) && c->wlen) conn_flush(c);
            if (c->state != ST_DEAD && (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)))
                on_readable(c);
        }
    }
    double t_end = now_s();
    if (phase == 3) measured = t_end - measure_t0;
    double cpu = phase == 3 ? cpu_s() - cpu0 : 0;
    double user = phase == 3 ? user_s() - user0 : 0;
    event("{\"event\":\"done\"}");

    int64_t max_to = -1;
    uint64_t open = 0, behind = 0;
    int64_t lag_max = 0;
    for (int i = 0; i < opt_n; i++)
        if (conns[i].state == ST_OPEN && conns[i].last_to > max_to) max_to = conns[i].last_to;
    for (int i = 0; i < opt_n; i++) {
        if (conns[i].state != ST_OPEN) continue;
        open++;
        int64_t lag = max_to - conns[i].last_to;
        if (lag > 0) behind++;
        if (lag > lag_max) lag_max = lag;
    }

    printf("{\"connections\":%d,\"ok\":%lu,\"failed\":%lu,\"fail\":{\"connect\":%lu,\"http\":%lu,"
           "\"eof\":%lu,\"timeout\":%lu},\"open_at_end\":%lu,\"closes\":{",
           opt_n, (unsigned long)n_ok, (unsigned long)n_failed, (unsigned long)fail_connect,
           (unsigned long)fail_http, (unsigned long)fail_eof, (unsigned long)fail_timeout,
           (unsigned long)open);
    int first = 1;
    for (int code = 0; code < 5000; code++)
        if (closes[code]) {
            printf("%s\"%d\":%lu", first ? "" : ",", code, (unsigned long)closes[code]);
            first = 0;
        }
    if (closes_other) printf("%s\"other\":%lu", first ? "" : ",", (unsigned long)closes_other);
    printf("},\"eof_after_join\":%lu,\"socket_errors\":%lu,"
           "\"measured_s\":%.3f,\"frames\":%lu,\"messages\":%lu,\"bytes\":%lu,"
           "\"gaps\":%lu,\"inner_gaps\":%lu,\"skipped_ranges\":%lu,\"skipped_msgs\":%lu,"
           "\"resets\":%lu,\"errors\":%lu,\"other_frames\":%lu,\"control_frames\":%lu,"
           "\"fragmented\":%lu,\"pings_sent\":%lu,\"pongs\":%lu,\"pings_answered\":%lu,",
           (unsigned long)eof_after_join, (unsigned long)reset_errors, measured,
           (unsigned long)S.frames, (unsigned long)S.msgs, (unsigned long)S.bytes,
           (unsigned long)S.gaps, (unsigned long)S.inner_gaps, (unsigned long)S.skipped_ranges,
           (unsigned long)S.skipped_msgs, (unsigned long)S.resets, (unsigned long)S.errors,
           (unsigned long)S.other, (unsigned long)S.control, (unsigned long)S.fragmented,
           (unsigned long)pings_sent, (unsigned long)S.pongs, (unsigned long)pings_answered);
    printf("\"latency_ms\":{\"n\":%lu,\"p50\":%.2f,\"p90\":%.2f,\"p99\":%.2f,\"p999\":%.2f,"
           "\"max\":%.2f},",
           (unsigned long)S.lat_n, percentile_ms(0.50), percentile_ms(0.90), percentile_ms(0.99),
           percentile_ms(0.999), S.lat_n ? S.lat_max_us / 1000.0 : -1.0);
    printf("\"frames_per_s\":%.1f,\"messages_per_s\":%.1f,\"mbytes_per_s\":%.2f,"
           "\"swarm_cpu_pct\":%.1f,\"swarm_user_pct\":%.1f,\"last_seq\":%ld,\"behind_at_end\":%lu,\"lag_max_seqs\":%ld,"
           "\"proto\":\"%s\",\"lost_msgs\":%lu}\n",
           measured > 0 ? S.frames / measured : 0, measured > 0 ? S.msgs / measured : 0,
           measured > 0 ? S.bytes / measured / 1e6 : 0, measured > 0 ? 100 * cpu / measured : 0,
           measured > 0 ? 100 * user / measured : 0, (long)max_to, (unsigned long)behind, (long)lag_max,
           proto_names[opt_proto], (unsigned long)S.lost_msgs);
    fflush(stdout);
    return 0;
}
