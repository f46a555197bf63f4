/*
 * blaster: a minimal fake gateway that measures the swarm's own ceiling.
 *
 *   cc -O2 -o loadtest/swarm/blaster loadtest/swarm/blaster.c
 *   loadtest/swarm/blaster --port 9000 --msgs 20 --seconds 40
 *
 * Accepts WebSocket upgrades on /ws (answers 101 without checking the key; the swarm checks only
 * the status), answers each new connection with a `joined` at the current seq, discards whatever
 * clients send, and broadcasts `batch` frames of --msgs messages (each shaped like the engine's,
 * with "text":"t=<unix us> ...") to every connection as fast as it can: one frame per round,
 * written completely to each viewer (a full socket buffer blocks the round, so no viewer ever
 * misses a frame and the swarm must see no gap). When the blaster's core is not saturated, the
 * swarm is the bottleneck: that frames/s is the swarm's ceiling. Accepted sockets get TCP_NODELAY
 * like the gateway's (trio sets it); --nodelay 0 leaves Nagle on, for comparison.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    int fd;
    int state; /* 1 reading the HTTP head, 2 member */
    char head[4096];
    size_t hlen;
} conn_t;

static volatile sig_atomic_t stop_flag;
static void on_signal(int s) { (void)s; stop_flag = 1; }

static int64_t wall_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static double mono(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int write_all(int fd, const char *p, size_t n) {
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EAGAIN) {
                struct pollfd pfd = {.fd = fd, .events = POLLOUT};
                if (poll(&pfd, 1, 1000) <= 0) return -1;
                continue;
            }
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static size_t frame_header(unsigned char *h, size_t len) {
    h[0] = 0x81;
    if (len < 126) { h[1] = (unsigned char)len; return 2; }
    if (len < 65536) { h[1] = 126; h[2] = (unsigned char)(len >> 8); h[3] = (unsigned char)len; return 4; }
    h[1] = 127;
    for (int i = 0; i < 8; i++) h[2 + i] = (unsigned char)((uint64_t)len >> (56 - 8 * i));
    return 10;
}

int main(int argc, char **argv) {
    int port = 9000, msgs = 20, nodelay = 1;
    double seconds = 60;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--port")) port = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--msgs")) msgs = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--seconds")) seconds = atof(argv[i + 1]);
        else if (!strcmp(argv[i], "--nodelay")) nodelay = atoi(argv[i + 1]);
        else {
            fprintf(stderr, "usage: blaster [--port P] [--msgs M] [--seconds S] [--nodelay 0|1]\n");
            return 2;
        }
    }
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
    signal(SIGPIPE, SIG_IGN);
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);

    int ls = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    int one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(ls, (struct sockaddr *)&a, sizeof a) < 0 || listen(ls, 4096) < 0) {
        perror("blaster: bind/listen");
        return 1;
    }
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, ls, &ev);
    size_t cap = 1024, nmembers = 0;
    int *members = malloc(cap * sizeof *members);
    char *payload = malloc(1 << 20);
    unsigned char *frame = malloc((1 << 20) + 16);
    int64_t seq = 0;
    uint64_t frames = 0;
    double t0 = mono();
    fprintf(stderr, "{\"event\":\"listening\",\"port\":%d}\n", port);
    while (!stop_flag && mono() - t0 < seconds) {
        struct epoll_event evs[256];
        int n = epoll_wait(ep, evs, 256, nmembers ? 0 : 10);
        for (int i = 0; i < n; i++) {
            conn_t *c = evs[i].data.ptr;
            if (!c) {
                int fd;
                while ((fd = accept4(ls, NULL, NULL, SOCK_NONBLOCK)) >= 0) {
                    if (nodelay) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    conn_t *nc = calloc(1, sizeof *nc);
                    nc->fd = fd;
                    nc->state = 1;
                    struct epoll_event e2 = {.events = EPOLLIN, .data.ptr = nc};
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e2);
                }
                continue;
            }
            char buf[4096];
            ssize_t r = read(c->fd, buf, sizeof buf);
            if (r <= 0) {
                if (r < 0 && errno == EAGAIN) continue;
                epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                for (size_t k = 0; k < nmembers; k++)
                    if (members[k] == c->fd) { members[k] = members[--nmembers]; break; }
                close(c->fd);
                free(c);
                continue;
            }
            if (c->state != 1) continue; /* discard client frames */
            size_t take = (size_t)r < sizeof c->head - c->hlen ? (size_t)r : sizeof c->head - c->hlen;
            memcpy(c->head + c->hlen, buf, take);
            c->hlen += take;
            if (!memmem(c->head, c->hlen, "\r\n\r\n", 4)) continue;
            static const char resp[] =
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
            char joined[160];
            int jl = snprintf(joined + 2, sizeof joined - 2,
                              "{\"op\":\"joined\",\"room\":\"bench\",\"epoch\":\"e\",\"seq\":%ld,"
                              "\"online\":1}", (long)seq);
            joined[0] = (char)0x81;
            joined[1] = (char)jl;
            if (write_all(c->fd, resp, sizeof resp - 1) || write_all(c->fd, joined, (size_t)jl + 2))
                continue;
            c->state = 2;
            if (nmembers == cap) members = realloc(members, (cap *= 2) * sizeof *members);
            members[nmembers++] = c->fd;
        }
        if (!nmembers) continue;
        /* one batch of `msgs` messages, shaped like the engine's */
        int64_t now = wall_us();
        size_t len = (size_t)sprintf(payload,
                                     "{\"op\":\"batch\",\"room\":\"bench\",\"epoch\":\"e\","
                                     "\"from\":%ld,\"to\":%ld,\"msgs\":[",
                                     (long)seq + 1, (long)(seq + msgs));
        for (int m = 1; m <= msgs; m++) {
            len += (size_t)sprintf(payload + len,
                                   "%s{\"seq\":%ld,\"id\":\"0123456789abcdef\",\"ts\":%ld,"
                                   "\"user\":\"bench-sender-0\",\"name\":\"bench-sender-0\","
                                   "\"kind\":\"danmaku\",\"body\":{\"text\":\"t=%ld "
                                   "xxxxxxxxxxxxxxxxxxxxx\",\"mode\":\"scroll\","
                                   "\"color\":\"#ffffff\",\"offset_ms\":0}}",
                                   m > 1 ? "," : "", (long)(seq + m), (long)(now / 1000),
                                   (long)now);
        }
        len += (size_t)sprintf(payload + len, "]}");
        size_t h = frame_header(frame, len);
        memcpy(frame + h, payload, len);
        seq += msgs;
        for (size_t k = 0; k < nmembers; k++) {
            if (write_all(members[k], (char *)frame, h + len) == 0) frames++;
        }
    }
    double el = mono() - t0;
    printf("{\"blaster_frames\":%lu,\"seconds\":%.2f,\"frames_per_s\":%.0f}\n",
           (unsigned long)frames, el, frames / el);
    return 0;
}
