/* ntpload: a bounded SNTP loader for bench_ntp.py (compiled there at run time).
 *
 *   ntpload HOST PORT SECONDS OUTSTANDING TIMEOUT [STEP_US]
 *
 * Keeps exactly OUTSTANDING client requests (mode 3, version 4, 48 bytes) in
 * flight on one connected UDP socket for SECONDS, then waits up to TIMEOUT for
 * the last ones. Each request carries a unique transmit timestamp: the current
 * time (CLOCK_REALTIME) in NTP format, made strictly increasing, with the slot
 * number in its lowest bits. With STEP_US > 0 each transmit timestamp is also at
 * least STEP_US after the previous one (so the "client clock" runs ahead of the
 * real one: with 1000, every request shows a different millisecond, i.e. a
 * different event for hs100local's event store). A reply is matched by its originate field, which
 * must equal that request's transmit field byte for byte; then it is valid if it
 * is mode 4 (server), stratum 1-15 and LI != 3 (and 48 bytes or more), invalid
 * otherwise. Either way the slot is free and gets a new request at once (within
 * the window). A request unanswered after TIMEOUT is lost and its slot reused;
 * a reply that matches no request in flight (late, duplicated, forged) is
 * counted as unmatched.
 *
 * Prints "key value" lines: counts, responses/s within the window, latency
 * (average, p50, p99, max; from the send to the read of the batch holding the
 * reply) and its own CPU time (getrusage).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define PACKET 48
#define BATCH 64
#define RECV_SIZE 512
#define NTP_UNIX_OFFSET 2208988800ULL
#define HIST_US 100000 /* 1 µs buckets up to 100 ms; beyond counts as overflow */
#define CHECK_NS 10000000LL /* look for timed-out requests every 10 ms */

struct slot {
    uint64_t xmt;    /* transmit timestamp sent, host order */
    int64_t sent_ns; /* CLOCK_MONOTONIC at send */
    int busy;
    unsigned char buf[PACKET];
};

static struct slot *slots;
static int nslots, bits;
static uint64_t last_base, step_base = 1;
static uint32_t hist[HIST_US];
static uint64_t hist_over;

static int64_t mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* A strictly increasing NTP timestamp near now, with `slot` in its low `bits` bits. */
static uint64_t next_xmt(int slot) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t seconds = ((uint64_t)ts.tv_sec + NTP_UNIX_OFFSET) & 0xffffffffULL;
    uint64_t fraction = ((uint64_t)ts.tv_nsec << 32) / 1000000000ULL;
    uint64_t base = ((seconds << 32) | fraction) >> bits;
    if (base < last_base + step_base)
        base = last_base + step_base;
    last_base = base;
    return (base << bits) | (uint64_t)slot;
}

static void put_be64(unsigned char *p, uint64_t v) {
    for (int i = 7; i >= 0; i--) {
        p[i] = (unsigned char)v;
        v >>= 8;
    }
}

static uint64_t get_be64(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = (v << 8) | p[i];
    return v;
}

static int pending[65536]; /* slots waiting to be (re)sent */
static int npending;
static uint64_t sent, send_errors;

static void flush_sends(int fd) {
    struct mmsghdr msgs[BATCH];
    struct iovec iov[BATCH];
    int done = 0;
    while (done < npending) {
        int n = npending - done < BATCH ? npending - done : BATCH;
        int64_t now = mono_ns();
        for (int i = 0; i < n; i++) {
            struct slot *s = &slots[pending[done + i]];
            s->xmt = next_xmt(pending[done + i]);
            put_be64(s->buf + 40, s->xmt);
            s->sent_ns = now;
            s->busy = 1;
            iov[i].iov_base = s->buf;
            iov[i].iov_len = PACKET;
            memset(&msgs[i], 0, sizeof msgs[i]);
            msgs[i].msg_hdr.msg_iov = &iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        int r = sendmmsg(fd, msgs, (unsigned)n, 0);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            /* e.g. ECONNREFUSED from an earlier ICMP error: this one datagram is
               treated as sent and will time out (counted lost); go on with the rest */
            send_errors++;
            r = 1;
        }
        sent += (uint64_t)r;
        done += r;
    }
    npending = 0;
}

int main(int argc, char **argv) {
    if (argc != 6 && argc != 7) {
        fprintf(stderr, "usage: %s HOST PORT SECONDS OUTSTANDING TIMEOUT [STEP_US]\n", argv[0]);
        return 2;
    }
    const char *host = argv[1];
    int port = atoi(argv[2]);
    double seconds = atof(argv[3]);
    nslots = atoi(argv[4]);
    double timeout = atof(argv[5]);
    double step_us = argc == 7 ? atof(argv[6]) : 0.0;
    if (port <= 0 || port > 65535 || seconds <= 0 || nslots < 1 || nslots > 65536 ||
        timeout <= 0 || step_us < 0 || step_us > 1e6) {
        fprintf(stderr, "bad arguments\n");
        return 2;
    }
    while ((1 << bits) < nslots)
        bits++;
    /* STEP_US in units of 2^bits NTP fraction units (2^-32 s), at least 1 */
    uint64_t step = (uint64_t)(step_us * 4294.967296) >> bits;
    if (step_us > 0)
        step_base = step + 1;
    slots = calloc((size_t)nslots, sizeof *slots);
    if (!slots)
        return 1;

    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0) {
        perror("socket");
        return 1;
    }
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
        fprintf(stderr, "bad host %s\n", host);
        return 2;
    }
    int size = 1 << 20;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof size);
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
    /* a blocking read returns after 10 ms without a reply, to look for timeouts */
    struct timeval tv = {.tv_sec = 0, .tv_usec = 10000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        perror("connect");
        return 1;
    }
    for (int i = 0; i < nslots; i++) {
        memset(slots[i].buf, 0, PACKET);
        slots[i].buf[0] = (0 << 6) | (4 << 3) | 3; /* LI 0, VN 4, mode 3 (client) */
        slots[i].buf[2] = 6;                      /* poll 2^6 s, as ntpd/chrony send */
    }

    static unsigned char rbuf[BATCH][RECV_SIZE];
    struct mmsghdr rmsgs[BATCH];
    struct iovec riov[BATCH];

    uint64_t valid = 0, invalid = 0, lost = 0, unmatched = 0, recv_errors = 0;
    uint64_t window_valid = 0, lat_n = 0;
    double lat_sum = 0.0;
    int64_t lat_max = 0;
    int64_t timeout_ns = (int64_t)(timeout * 1e9);
    int outstanding = 0;

    int64_t start = mono_ns();
    int64_t end = start + (int64_t)(seconds * 1e9);
    int64_t next_check = start + CHECK_NS;
    int ending = 0;
    double window_s = seconds;

    for (int i = 0; i < nslots; i++)
        pending[npending++] = i;
    outstanding = nslots;
    flush_sends(fd);

    while (outstanding > 0) {
        for (int i = 0; i < BATCH; i++) {
            riov[i].iov_base = rbuf[i];
            riov[i].iov_len = RECV_SIZE;
            memset(&rmsgs[i], 0, sizeof rmsgs[i]);
            rmsgs[i].msg_hdr.msg_iov = &riov[i];
            rmsgs[i].msg_hdr.msg_iovlen = 1;
        }
        int n = recvmmsg(fd, rmsgs, BATCH, MSG_WAITFORONE, NULL);
        int64_t now = mono_ns();
        if (!ending && now >= end) {
            ending = 1;
            window_s = (double)(now - start) / 1e9;
            window_valid = valid;
        }
        if (n < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                recv_errors++; /* ECONNREFUSED: nobody listening (an ICMP error) */
                if (recv_errors % 1000 == 0)
                    usleep(1000);
            }
            n = 0;
        }
        for (int i = 0; i < n; i++) {
            unsigned len = rmsgs[i].msg_len;
            unsigned char *p = rbuf[i];
            if (len < 32) {
                unmatched++;
                continue;
            }
            uint64_t org = get_be64(p + 24);
            uint64_t idx = org & ((1ULL << bits) - 1);
            if (idx >= (uint64_t)nslots || !slots[idx].busy || slots[idx].xmt != org) {
                unmatched++;
                continue;
            }
            struct slot *s = &slots[idx];
            s->busy = 0;
            outstanding--;
            int li = p[0] >> 6, mode = p[0] & 7, stratum = p[1];
            if (len >= PACKET && mode == 4 && stratum >= 1 && stratum <= 15 && li != 3) {
                valid++;
                int64_t lat = now - s->sent_ns;
                lat_sum += (double)lat;
                lat_n++;
                if (lat > lat_max)
                    lat_max = lat;
                int64_t us = lat / 1000;
                if (us < HIST_US)
                    hist[us]++;
                else
                    hist_over++;
            } else {
                invalid++;
            }
            if (!ending) {
                pending[npending++] = (int)idx;
                outstanding++;
            }
        }
        if (now >= next_check) {
            next_check = now + CHECK_NS;
            for (int i = 0; i < nslots; i++) {
                if (slots[i].busy && now - slots[i].sent_ns >= timeout_ns) {
                    slots[i].busy = 0;
                    lost++;
                    outstanding--;
                    if (!ending) {
                        pending[npending++] = i;
                        outstanding++;
                    }
                }
            }
        }
        if (npending)
            flush_sends(fd);
    }
    if (!ending) { /* cannot happen: the loop runs while requests are in flight */
        window_s = (double)(mono_ns() - start) / 1e9;
        window_valid = valid;
    }
    double wall = (double)(mono_ns() - start) / 1e9;

    /* percentiles from the histogram */
    double p50 = -1, p99 = -1;
    uint64_t acc = 0, want50 = (lat_n + 1) / 2, want99 = lat_n - lat_n / 100;
    for (int us = 0; us < HIST_US && lat_n; us++) {
        acc += hist[us];
        if (p50 < 0 && acc >= want50)
            p50 = us;
        if (p99 < 0 && acc >= want99) {
            p99 = us;
            break;
        }
    }

    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("outstanding %d\n", nslots);
    printf("sent %llu\n", (unsigned long long)sent);
    printf("valid %llu\n", (unsigned long long)valid);
    printf("invalid %llu\n", (unsigned long long)invalid);
    printf("lost %llu\n", (unsigned long long)lost);
    printf("unmatched %llu\n", (unsigned long long)unmatched);
    printf("send_errors %llu\n", (unsigned long long)send_errors);
    printf("recv_errors %llu\n", (unsigned long long)recv_errors);
    printf("window_s %.6f\n", window_s);
    printf("window_valid %llu\n", (unsigned long long)window_valid);
    printf("rate %.1f\n", (double)window_valid / window_s);
    printf("latency_avg_us %.2f\n", lat_n ? lat_sum / (double)lat_n / 1000.0 : -1.0);
    printf("latency_p50_us %.0f\n", p50);
    printf("latency_p99_us %.0f\n", p99);
    printf("latency_max_us %.0f\n", (double)lat_max / 1000.0);
    printf("latency_over_100ms %llu\n", (unsigned long long)hist_over);
    printf("wall_s %.6f\n", wall);
    printf("cpu_user_s %.6f\n", (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6);
    printf("cpu_sys_s %.6f\n", (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6);
    close(fd);
    return 0;
}
