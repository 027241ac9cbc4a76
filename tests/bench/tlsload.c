/* tlsload: a TLS connection loader for bench_serve.py (compiled there at run time).
 *
 *   tlsload HOST PORT SECONDS CONCURRENCY HELLO_FILE MODE SOURCES TIMEOUT
 *
 * Keeps CONCURRENCY connections open at all times for SECONDS (one epoll loop,
 * non-blocking sockets, no TLS library): each connects, sends the ClientHello
 * read from HELLO_FILE (raw bytes: a captured hello, TLS records included), and
 * then, by MODE:
 *
 *   alert  like a plug that pins its CA: reads the server's first flight up to
 *          ServerHelloDone (plaintext in TLS <= 1.2), answers a fatal unknown_ca
 *          alert (in the record version of the server's ServerHello) and closes.
 *          This is what the listener's cloud-mode "handshake" records as
 *          outcome unknown_ca.
 *   eof    reads until the server closes (cloud-mode "log": the server closes
 *          with a FIN after the hello), then closes.
 *
 * A connection that ended that way is "completed"; anything else is counted
 * failed by reason (refused, reset, closed_early = the server closed before
 * ServerHelloDone, server_alert, unexpected = a record that is neither handshake
 * nor alert, or data in eof mode, timeout = not done within TIMEOUT seconds,
 * error). Either way its slot opens a new connection at once, until SECONDS are
 * over; then no new connection starts and the loader waits up to TIMEOUT for the
 * ones in flight, so that every connection it started has ended when it exits
 * (the figures then account for every connection the server accepted).
 *
 * SOURCES > 0: slot i binds to 127.0.2.(1 + i % SOURCES) before connecting
 * (IP_BIND_ADDRESS_NO_PORT: the port is picked at connect), so the server sees
 * SOURCES different clients, as from that many plugs; 0 = the kernel's choice.
 *
 * Prints "key value" lines: started, completed, window_completed (completed
 * within SECONDS), rate (window_completed / SECONDS), failed_<reason>, latency
 * (connect to close: avg, p50, p99, max in µs, 10 µs buckets), cpu_user_s,
 * cpu_sys_s (getrusage) and wall_s.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

#define BUF_SIZE 32768
#define HIST_BUCKETS 1000000 /* 10 µs buckets up to 10 s */
#define BUCKET_US 10

enum { MODE_ALERT, MODE_EOF };
enum { S_FREE, S_CONNECTING, S_READING };
enum { R_REFUSED, R_RESET, R_CLOSED_EARLY, R_SERVER_ALERT, R_UNEXPECTED, R_TIMEOUT,
       R_ERROR, R_COUNT };
static const char *reason_names[R_COUNT] = {"refused", "reset", "closed_early",
                                            "server_alert", "unexpected", "timeout",
                                            "error"};

struct slot {
    int fd;
    int state;
    int64_t start_ns;
    size_t len;         /* bytes in buf */
    size_t rec_off;     /* next record to parse in buf */
    unsigned char hs[BUF_SIZE]; /* handshake stream (record payloads of type 22) */
    size_t hs_len, hs_off;
    unsigned char ver[2]; /* the ServerHello's version, for the alert record */
    unsigned char buf[BUF_SIZE];
};

static struct slot *slots;
static int nslots, mode, sources, epfd;
static struct sockaddr_in target;
static unsigned char *hello;
static size_t hello_len;
static uint32_t hist[HIST_BUCKETS];
static uint64_t hist_over, completed, window_completed, started, failed[R_COUNT];
static double lat_sum_us, lat_max_us;
static int accepting = 1; /* still starting new connections */
static int64_t window_end_ns;

static int64_t mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void die(const char *what) {
    perror(what);
    exit(2);
}

static void start(int i);

static void finish(int i, int reason) { /* reason < 0: completed */
    struct slot *s = &slots[i];
    int64_t now = mono_ns();
    if (s->fd >= 0) {
        epoll_ctl(epfd, EPOLL_CTL_DEL, s->fd, NULL);
        close(s->fd);
        s->fd = -1;
    }
    if (reason < 0) {
        double us = (double)(now - s->start_ns) / 1000.0;
        completed++;
        if (now <= window_end_ns)
            window_completed++;
        lat_sum_us += us;
        if (us > lat_max_us)
            lat_max_us = us;
        uint64_t b = (uint64_t)(us / BUCKET_US);
        if (b < HIST_BUCKETS)
            hist[b]++;
        else
            hist_over++;
    } else {
        failed[reason]++;
    }
    s->state = S_FREE;
    if (accepting && reason != R_REFUSED) /* refused: the sweep retries, no busy loop */
        start(i);
}

static void start(int i) {
    struct slot *s = &slots[i];
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        die("socket");
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (sources > 0) {
        struct sockaddr_in src = {.sin_family = AF_INET};
        src.sin_addr.s_addr = htonl((127u << 24) | (2u << 8) | (uint32_t)(1 + i % sources));
        setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
        if (bind(fd, (struct sockaddr *)&src, sizeof src) < 0)
            die("bind");
    }
    s->fd = fd;
    s->state = S_CONNECTING;
    s->start_ns = mono_ns();
    s->len = s->rec_off = s->hs_len = s->hs_off = 0;
    s->ver[0] = 3;
    s->ver[1] = 1;
    started++;
    struct epoll_event ev = {.events = EPOLLOUT, .data.u32 = (uint32_t)i};
    if (connect(fd, (struct sockaddr *)&target, sizeof target) < 0 && errno != EINPROGRESS) {
        int e = errno;
        close(fd);
        s->fd = -1;
        failed[e == ECONNREFUSED ? R_REFUSED : R_ERROR]++;
        s->state = S_FREE;
        return; /* the timeout sweep restarts the slot (no busy loop on a dead server) */
    }
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0)
        die("epoll_ctl");
}

static int error_reason(int e) {
    if (e == ECONNREFUSED)
        return R_REFUSED;
    if (e == ECONNRESET || e == EPIPE)
        return R_RESET;
    return R_ERROR;
}

/* Parse what arrived: returns -1 (completed: alert sent), a reason, or -2 (need more). */
static int parse(struct slot *s) {
    while (s->len - s->rec_off >= 5) {
        unsigned char *r = s->buf + s->rec_off;
        size_t rlen = ((size_t)r[3] << 8) | r[4];
        if (s->len - s->rec_off < 5 + rlen)
            break;
        if (r[0] == 21)
            return R_SERVER_ALERT;
        if (r[0] != 22)
            return R_UNEXPECTED;
        if (s->hs_len + rlen > sizeof s->hs)
            return R_UNEXPECTED;
        memcpy(s->hs + s->hs_len, r + 5, rlen);
        s->hs_len += rlen;
        s->rec_off += 5 + rlen;
        while (s->hs_len - s->hs_off >= 4) {
            unsigned char *m = s->hs + s->hs_off;
            size_t mlen = ((size_t)m[1] << 16) | ((size_t)m[2] << 8) | m[3];
            if (s->hs_len - s->hs_off < 4 + mlen)
                break;
            if (m[0] == 2 && mlen >= 2) { /* ServerHello: its version */
                s->ver[0] = m[4];
                s->ver[1] = m[5];
            }
            s->hs_off += 4 + mlen;
            if (m[0] == 14) { /* ServerHelloDone: answer unknown_ca, as a plug does */
                unsigned char alert[7] = {21, s->ver[0], s->ver[1], 0, 2, 2, 48};
                if (write(s->fd, alert, sizeof alert) != (ssize_t)sizeof alert)
                    return R_RESET;
                return -1;
            }
        }
    }
    if (s->rec_off == s->len)
        s->rec_off = s->len = 0;
    if (s->len == sizeof s->buf)
        return R_UNEXPECTED;
    return -2;
}

static void readable(int i) {
    struct slot *s = &slots[i];
    for (;;) {
        ssize_t n = read(s->fd, s->buf + s->len, sizeof s->buf - s->len);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR)
                return;
            finish(i, error_reason(errno));
            return;
        }
        if (n == 0) {
            finish(i, mode == MODE_EOF ? -1 : R_CLOSED_EARLY);
            return;
        }
        if (mode == MODE_EOF) { /* the server should say nothing */
            finish(i, R_UNEXPECTED);
            return;
        }
        s->len += (size_t)n;
        int r = parse(s);
        if (r != -2) {
            finish(i, r);
            return;
        }
    }
}

static void writable(int i) {
    struct slot *s = &slots[i];
    int err = 0;
    socklen_t el = sizeof err;
    getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &el);
    if (err) {
        finish(i, error_reason(err));
        return;
    }
    ssize_t n = write(s->fd, hello, hello_len);
    if (n != (ssize_t)hello_len) {
        finish(i, n < 0 ? error_reason(errno) : R_ERROR);
        return;
    }
    s->state = S_READING;
    struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
    if (epoll_ctl(epfd, EPOLL_CTL_MOD, s->fd, &ev) < 0)
        die("epoll_ctl");
}

static void sweep(int64_t now, int64_t timeout_ns) {
    for (int i = 0; i < nslots; i++) {
        if (slots[i].state != S_FREE && now - slots[i].start_ns > timeout_ns)
            finish(i, R_TIMEOUT);
        else if (slots[i].state == S_FREE && accepting)
            start(i);
    }
}

static double percentile(double p) {
    uint64_t want = (uint64_t)(p * (double)completed), seen = 0;
    if (want == 0)
        want = 1;
    for (int b = 0; b < HIST_BUCKETS; b++) {
        seen += hist[b];
        if (seen >= want)
            return (b + 0.5) * BUCKET_US;
    }
    return lat_max_us;
}

int main(int argc, char **argv) {
    if (argc != 9) {
        fprintf(stderr, "usage: %s HOST PORT SECONDS CONCURRENCY HELLO_FILE alert|eof "
                        "SOURCES TIMEOUT\n", argv[0]);
        return 2;
    }
    target.sin_family = AF_INET;
    target.sin_port = htons((uint16_t)atoi(argv[2]));
    if (inet_pton(AF_INET, argv[1], &target.sin_addr) != 1) {
        fprintf(stderr, "bad host %s\n", argv[1]);
        return 2;
    }
    double seconds = atof(argv[3]), timeout = atof(argv[8]);
    nslots = atoi(argv[4]);
    sources = atoi(argv[7]);
    if (strcmp(argv[6], "alert") == 0)
        mode = MODE_ALERT;
    else if (strcmp(argv[6], "eof") == 0)
        mode = MODE_EOF;
    else {
        fprintf(stderr, "mode must be alert or eof\n");
        return 2;
    }
    if (seconds <= 0 || timeout <= 0 || nslots < 1 || sources < 0 || sources > 254) {
        fprintf(stderr, "bad arguments\n");
        return 2;
    }
    FILE *f = fopen(argv[5], "rb");
    if (!f)
        die(argv[5]);
    hello = malloc(BUF_SIZE);
    hello_len = fread(hello, 1, BUF_SIZE, f);
    fclose(f);
    if (hello_len < 5) {
        fprintf(stderr, "hello file too short\n");
        return 2;
    }
    slots = calloc((size_t)nslots, sizeof *slots);
    if (!slots)
        die("calloc");
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0)
        die("epoll_create1");

    int64_t t0 = mono_ns(), timeout_ns = (int64_t)(timeout * 1e9);
    window_end_ns = t0 + (int64_t)(seconds * 1e9);
    for (int i = 0; i < nslots; i++) {
        slots[i].fd = -1;
        start(i);
    }
    struct epoll_event events[256];
    int64_t next_sweep = t0 + 10000000LL, drain_end = window_end_ns + timeout_ns;
    for (;;) {
        int64_t now = mono_ns();
        if (accepting && now >= window_end_ns)
            accepting = 0;
        if (!accepting) {
            int busy = 0;
            for (int i = 0; i < nslots; i++)
                busy += slots[i].state != S_FREE;
            if (!busy || now >= drain_end)
                break;
        }
        if (now >= next_sweep) {
            sweep(now, timeout_ns);
            next_sweep = now + 10000000LL;
        }
        int n = epoll_wait(epfd, events, 256, 10);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("epoll_wait");
        }
        for (int k = 0; k < n; k++) {
            int i = (int)events[k].data.u32;
            if (slots[i].state == S_CONNECTING)
                writable(i);
            else if (slots[i].state == S_READING)
                readable(i);
        }
    }
    for (int i = 0; i < nslots; i++)
        if (slots[i].state != S_FREE)
            finish(i, R_TIMEOUT);
    double wall = (double)(mono_ns() - t0) / 1e9;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("started %llu\n", (unsigned long long)started);
    printf("completed %llu\n", (unsigned long long)completed);
    printf("window_completed %llu\n", (unsigned long long)window_completed);
    printf("rate %.1f\n", (double)window_completed / seconds);
    for (int r = 0; r < R_COUNT; r++)
        printf("failed_%s %llu\n", reason_names[r], (unsigned long long)failed[r]);
    printf("latency_avg_us %.1f\n", completed ? lat_sum_us / (double)completed : -1.0);
    printf("latency_p50_us %.1f\n", completed ? percentile(0.50) : -1.0);
    printf("latency_p99_us %.1f\n", completed ? percentile(0.99) : -1.0);
    printf("latency_max_us %.1f\n", completed ? lat_max_us : -1.0);
    printf("latency_over_10s %llu\n", (unsigned long long)hist_over);
    printf("cpu_user_s %.3f\n", (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6);
    printf("cpu_sys_s %.3f\n", (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6);
    printf("wall_s %.3f\n", wall);
    return 0;
}
