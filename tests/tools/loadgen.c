/*
 * tests/tools/loadgen.c: a closed-loop HTTP/1.1 load generator for the
 * benchmarks under ops/bench. One thread, epoll, CONC keep-alive connections
 * to one loopback server, each with one request in flight; so the client
 * costs little next to what it measures, which a Node.js client could not
 * promise at tens of thousands of requests per second.
 *
 *   loadgen [-c CONC] [-d SECONDS | -n COUNT] [-r RATE] [-X METHOD] [-H 'Name: value']... [-k TOKENS_FILE]
 *           [-t TENANTS] URL [BODY]
 *
 * -n sends exactly COUNT requests (numbered 0..COUNT-1) and stops, for
 * benchmarks that create things (tenants) rather than repeat a request.
 *
 * -r RATE makes it open loop: one request every 1/RATE s on an idle
 * connection of the CONC, for -d SECONDS; a request due while all CONC are
 * busy is counted as "late" and not sent (not queued: the offered rate stays
 * what it was). Latency is from the moment a request is sent.
 *
 * URL and BODY may contain {t} (the request's tenant number, request number
 * mod TENANTS), {i} (the request number) and {k} (a row key from 1 to 1000,
 * spread over the requests). With -k, request i carries
 * "Authorization: Bearer <line {t} of TOKENS_FILE>". Prints one JSON line:
 *   {"requests":N,"ok":N,"failed":N,"errors":N,"late":N,"seconds":S,"rate":R,"p50_ms":X,"p99_ms":Y,"cpu_us":U}
 * ("errors" is "failed" again; cpu_us is this process's own CPU time, so a
 * bench can tell what the load generator took from the machine)
 * where ok counts 2xx answers whose body does not contain "\"type\":\"error\""
 * (a Hrana error inside a 200). Not a test; never used by one.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_HEADERS 16
#define RESP_MAX (4u << 20)

struct conn {
    int fd;
    char *out;
    size_t out_len, out_off;
    char *in;
    size_t in_len, in_cap;
    double started;
    int busy;               /* a request is in flight (open loop) */
    struct conn *next_idle; /* open loop: the idle list */
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static char **tokens;
static size_t ntokens;
static const char *headers[MAX_HEADERS];
static size_t nheaders;
static const char *method = "POST", *host_port, *path_tpl, *body_tpl = "";
static unsigned long tenants = 1;
static struct sockaddr_in addr;

static void die(const char *what)
{
    fprintf(stderr, "loadgen: %s: %s\n", what, strerror(errno));
    exit(1);
}

/* Appends TPL with {t} and {i} replaced to BUF (realloc'd). */
static void expand(char **buf, size_t *len, size_t *cap, const char *tpl, unsigned long i)
{
    char num[32];
    for (const char *p = tpl; *p;) {
        const char *piece = p;
        size_t n = 1;
        if (strncmp(p, "{t}", 3) == 0 || strncmp(p, "{i}", 3) == 0 || strncmp(p, "{k}", 3) == 0) {
            /* {k}: a multiplicative hash spreads consecutive requests over the keys */
            snprintf(num, sizeof(num), "%lu", p[1] == 't' ? i % tenants : p[1] == 'i' ? i : (i * 2654435761u) % 1000 + 1);
            piece = num;
            n = strlen(num);
            p += 3;
        } else {
            p++;
        }
        if (*len + n + 1 > *cap) {
            *cap = (*len + n + 1) * 2;
            if ((*buf = realloc(*buf, *cap)) == NULL)
                die("realloc");
        }
        memcpy(*buf + *len, piece, n);
        *len += n;
        (*buf)[*len] = '\0';
    }
}

static void build_request(struct conn *c, unsigned long i)
{
    char *body = NULL, *out = NULL;
    size_t blen = 0, bcap = 0, olen = 0, ocap = 0;
    char line[8192];
    expand(&body, &blen, &bcap, body_tpl, i);
    snprintf(line, sizeof(line), "%s ", method);
    expand(&out, &olen, &ocap, line, i);
    expand(&out, &olen, &ocap, path_tpl, i);
    snprintf(line, sizeof(line), " HTTP/1.1\r\nHost: %s\r\nContent-Length: %zu\r\n", host_port, blen);
    expand(&out, &olen, &ocap, line, i);
    if (blen)
        expand(&out, &olen, &ocap, "Content-Type: application/json\r\n", i);
    for (size_t h = 0; h < nheaders; h++) {
        expand(&out, &olen, &ocap, headers[h], i);
        expand(&out, &olen, &ocap, "\r\n", i);
    }
    if (ntokens) {
        snprintf(line, sizeof(line), "Authorization: Bearer %s\r\n", tokens[(i % tenants) % ntokens]);
        expand(&out, &olen, &ocap, line, i);
    }
    expand(&out, &olen, &ocap, "\r\n", i);
    if (blen) {
        if (olen + blen + 1 > ocap && (out = realloc(out, ocap = olen + blen + 1)) == NULL)
            die("realloc");
        memcpy(out + olen, body, blen);
        olen += blen;
    }
    free(body);
    free(c->out);
    c->out = out;
    c->out_len = olen;
    c->out_off = 0;
    c->in_len = 0;
}

static int connect_one(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;
    if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof(addr)) != 0)
        die("connect");
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    return fd;
}

/* 1 when C holds a whole response: sets *STATUS and *OK_BODY. */
static int response_done(struct conn *c, int *status, int *ok_body)
{
    char *end = memmem(c->in, c->in_len, "\r\n\r\n", 4);
    if (end == NULL)
        return 0;
    size_t head = (size_t)(end - c->in) + 4;
    long clen = -1;
    *status = atoi(c->in + 9);
    for (char *p = c->in; p < end; p++) {
        if ((p == c->in || p[-1] == '\n') && strncasecmp(p, "content-length:", 15) == 0)
            clen = strtol(p + 15, NULL, 10);
    }
    if (clen < 0)
        clen = 0; /* our servers always send a length; treat anything else as empty */
    if (c->in_len < head + (size_t)clen)
        return 0;
    *ok_body = memmem(c->in + head, (size_t)clen, "\"type\":\"error\"", 14) == NULL;
    return 1;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void load_tokens(const char *file)
{
    FILE *f = fopen(file, "r");
    char line[4096];
    if (f == NULL)
        die(file);
    while (fgets(line, sizeof(line), f)) {
        line[strcspn(line, "\r\n")] = '\0';
        if (!line[0])
            continue;
        if ((tokens = realloc(tokens, (ntokens + 1) * sizeof(*tokens))) == NULL || (tokens[ntokens] = strdup(line)) == NULL)
            die("realloc");
        ntokens++;
    }
    fclose(f);
}

int main(int argc, char **argv)
{
    int conc = 1, opt;
    double secs = 3;
    unsigned long count = 0; /* -n: this many requests, then stop; 0: run for SECS */
    double rate = 0;         /* -r: open loop at this many requests per second */
    while ((opt = getopt(argc, argv, "c:d:n:r:X:H:k:t:")) != -1) {
        switch (opt) {
        case 'r': rate = atof(optarg); break;
        case 'c': conc = atoi(optarg); break;
        case 'd': secs = atof(optarg); break;
        case 'n': count = strtoul(optarg, NULL, 10); break;
        case 'X': method = optarg; break;
        case 'H':
            if (nheaders < MAX_HEADERS)
                headers[nheaders++] = optarg;
            break;
        case 'k': load_tokens(optarg); break;
        case 't': tenants = strtoul(optarg, NULL, 10); break;
        default: return 2;
        }
    }
    if (optind >= argc || conc < 1 || tenants < 1 || rate < 0 || (rate > 0 && count > 0) ||
        strncmp(argv[optind], "http://", 7) != 0) {
        fprintf(stderr, "usage: loadgen [-c CONC] [-d SECONDS | -n COUNT | -r RATE -d SECONDS] [-X METHOD] [-H HEADER]... [-k TOKENS] [-t TENANTS] "
                        "http://HOST:PORT/PATH [BODY]\n");
        return 2;
    }
    static char hp[256];
    const char *u = argv[optind] + 7, *slash = strchr(u, '/');
    snprintf(hp, sizeof(hp), "%.*s", slash ? (int)(slash - u) : (int)strlen(u), u);
    host_port = hp;
    path_tpl = slash ? slash : "/";
    if (optind + 1 < argc)
        body_tpl = argv[optind + 1];
    char *colon = strrchr(hp, ':');
    memset(&addr, 0, sizeof(addr));
    addr.sin_family = AF_INET;
    addr.sin_port = htons(colon ? (uint16_t)atoi(colon + 1) : 80);
    if (inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr) != 1)
        die("inet_pton");

    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct conn *conns = calloc((size_t)conc, sizeof(*conns));
    size_t lat_cap = 1 << 16, nlat = 0;
    double *lat = malloc(lat_cap * sizeof(*lat));
    unsigned long next = 0, ok = 0, failed = 0, late = 0;
    struct conn *idle = NULL;
    double due = 0, interval = rate > 0 ? 1.0 / rate : 0;
    int inflight = 0;
    if (ep < 0 || conns == NULL || lat == NULL)
        die("setup");
    if (count > 0 && (unsigned long)conc > count)
        conc = (int)count;
    double t0 = now_s(), deadline = count > 0 ? t0 + 86400.0 : t0 + secs;
    for (int k = 0; k < conc; k++) {
        struct conn *c = &conns[k];
        c->fd = connect_one();
        c->in = malloc(c->in_cap = 65536);
        if (rate > 0) { /* open loop: idle until a request is due */
            struct epoll_event ev = {.events = 0, .data.ptr = c};
            epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
            c->next_idle = idle;
            idle = c;
            continue;
        }
        build_request(c, next++);
        c->started = now_s();
        c->busy = 1;
        struct epoll_event ev = {.events = EPOLLOUT | EPOLLIN, .data.ptr = c};
        epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
    }
    int active = rate > 0 ? 1 : conc;
    while (active > 0) {
        struct epoll_event evs[256];
        int timeout = 1000;
        if (rate > 0) {
            double now = now_s();
            while (now < deadline && t0 + due <= now) { /* send what is due */
                struct conn *c = idle;
                if (c == NULL) {
                    late++;
                } else {
                    idle = c->next_idle;
                    build_request(c, next++);
                    c->started = now;
                    c->busy = 1;
                    inflight++;
                    struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = c};
                    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
                }
                due += interval;
            }
            if (now >= deadline && inflight == 0)
                break;
            if (now < deadline) {
                /* rounded up: epoll's millisecond timer may send a request up
                 * to 1 ms late (as a timer-driven client does), but it never spins */
                double wait_ms = (t0 + due - now) * 1000.0;
                timeout = wait_ms <= 0 ? 0 : (int)wait_ms + 1;
            }
        }
        int n = epoll_wait(ep, evs, 256, timeout);
        if (n < 0 && errno != EINTR)
            die("epoll_wait");
        for (int e = 0; e < n; e++) {
            struct conn *c = evs[e].data.ptr;
            if (c->out_off < c->out_len) {
                ssize_t w = write(c->fd, c->out + c->out_off, c->out_len - c->out_off);
                if (w > 0)
                    c->out_off += (size_t)w;
                if (c->out_off == c->out_len) {
                    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
                    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
                }
                continue;
            }
            if (c->in_len == c->in_cap) {
                if (c->in_cap >= RESP_MAX || (c->in = realloc(c->in, c->in_cap *= 2)) == NULL)
                    die("response too large");
            }
            ssize_t r = read(c->fd, c->in + c->in_len, c->in_cap - c->in_len);
            if (r <= 0) { /* the server closed: count it, reconnect */
                failed++;
                epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                close(c->fd);
                c->fd = connect_one();
                if (rate > 0) { /* back to the idle list */
                    struct epoll_event ev = {.events = 0, .data.ptr = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
                    if (c->busy)
                        inflight--;
                    c->busy = 0;
                    c->next_idle = idle;
                    idle = c;
                    continue;
                }
                build_request(c, next++);
                c->started = now_s();
                struct epoll_event ev = {.events = EPOLLOUT | EPOLLIN, .data.ptr = c};
                epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev);
                continue;
            }
            c->in_len += (size_t)r;
            int status, ok_body;
            if (!response_done(c, &status, &ok_body))
                continue;
            double t = now_s();
            if (status >= 200 && status < 300 && ok_body)
                ok++;
            else
                failed++;
            if (nlat == lat_cap && (lat = realloc(lat, (lat_cap *= 2) * sizeof(*lat))) == NULL)
                die("realloc");
            lat[nlat++] = (t - c->started) * 1000.0;
            if (rate > 0) {
                struct epoll_event ev = {.events = 0, .data.ptr = c};
                epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
                c->busy = 0;
                inflight--;
                c->next_idle = idle;
                idle = c;
                continue;
            }
            if (t >= deadline || (count > 0 && next >= count)) {
                epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
                close(c->fd);
                active--;
                continue;
            }
            build_request(c, next++);
            c->started = t;
            struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = c};
            epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
        }
    }
    double took = now_s() - t0;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    long long cpu_us = (long long)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000LL + ru.ru_utime.tv_usec +
                       ru.ru_stime.tv_usec;
    qsort(lat, nlat, sizeof(*lat), cmp_double);
    printf("{\"requests\":%zu,\"ok\":%lu,\"failed\":%lu,\"errors\":%lu,\"late\":%lu,\"seconds\":%.3f,\"rate\":%.1f,"
           "\"p50_ms\":%.3f,\"p99_ms\":%.3f,\"cpu_us\":%lld}\n",
           nlat, ok, failed, failed, late, took, (double)nlat / took, nlat ? lat[nlat / 2] : 0.0,
           nlat ? lat[(size_t)((double)nlat * 0.99)] : 0.0, cpu_us);
    for (int k = 0; k < conc; k++) {
        free(conns[k].out);
        free(conns[k].in);
    }
    free(conns);
    free(lat);
    for (size_t k = 0; k < ntokens; k++)
        free(tokens[k]);
    free(tokens);
    close(ep);
    return 0;
}
