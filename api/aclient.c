/*
 * api/aclient.c: asynchronous HTTP/1.1 client on h2o 2.2.5's evloop sockets
 * (see aclient.h).
 *
 * Why our own and not h2o_http1client: in 2.2.5 that client resolves names
 * on a thread pool of its own, hands bodies over in pieces through a
 * socketpool whose reuse of a connection the upstream already closed shows
 * up as an error to the caller (no retry), and its callbacks expose h2o
 * types we keep inside api/. What a proxy needs is small: write a request,
 * parse one response with picohttpparser (which libh2o exports), pool the
 * connection, and retry once when a reused connection turns out dead.
 *
 * Life of a call: send picks an idle connection of the upstream (newest
 * first) or connects; writes the request head and body in one write; reads
 * and parses; on a complete response hands the connection back to the pool
 * (or closes it) *before* calling the callback, so the callback may send at
 * once and reuse it. Errors are always delivered from a loop callback,
 * never from inside api_aclient_send (a zero-length timer when the error is
 * known at once).
 *
 * Must never: block, call a callback twice, or touch a call after its
 * callback returned.
 */
#include "api/aclient.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include <h2o.h>

#include "api/server_loop.h"

/* picohttpparser, as bundled in and exported by libh2o 2.2.5 (Debian ships
 * no header for it). */
struct phr_header {
    const char *name;
    size_t name_len;
    const char *value;
    size_t value_len;
};
struct phr_chunked_decoder {
    size_t bytes_left_in_chunk;
    char consume_trailer;
    char _hex_count;
    char _state;
};
int phr_parse_response(const char *buf, size_t len, int *minor_version, int *status, const char **msg,
                       size_t *msg_len, struct phr_header *headers, size_t *num_headers, size_t last_len);
ssize_t phr_decode_chunked(struct phr_chunked_decoder *decoder, char *buf, size_t *bufsz);

#define ACLIENT_MAX_HEADERS 64
#define ACLIENT_MAX_HEAD (64 * 1024)

struct upstream {
    char key[192]; /* "host:port" as written in the URL */
    struct sockaddr_storage addr;
    socklen_t addrlen;
    h2o_linklist_t idle; /* struct conn, oldest first */
    size_t nidle;
    struct upstream *next;
};

struct conn {
    h2o_timeout_entry_t idle_timer; /* must stay first */
    struct api_aclient *c;
    struct upstream *up;
    h2o_socket_t *sock;
    struct api_aclient_call *call; /* NULL while idle */
    h2o_linklist_t link;           /* in up->idle while idle */
};

enum call_state { ST_CONNECTING, ST_HEAD, ST_BODY_LEN, ST_BODY_CHUNKED, ST_BODY_EOF };

struct api_aclient_call {
    h2o_timeout_entry_t timer;   /* the whole request; must stay first */
    h2o_timeout_entry_t ctimer;  /* connect */
    h2o_timeout_entry_t soon;    /* delivers an error known at send time */
    struct api_aclient *c;
    struct upstream *up;
    struct conn *conn;
    api_aclient_cb cb;
    void *ud;
    char *head; /* request line and headers */
    size_t head_len;
    const void *body;
    size_t body_len;
    int head_only, reused, retried, got_bytes, write_done, keepalive;
    enum call_state state;
    size_t remaining; /* ST_BODY_LEN */
    struct phr_chunked_decoder dec;
    struct api_aclient_resp resp;
    size_t body_cap;
    struct api_err err; /* for soon */
    int err_not_sent;
    h2o_linklist_t link; /* in c->calls */
};

struct api_aclient {
    struct api_server *server;
    h2o_evloop_t *loop;
    struct api_aclient_config cfg;
    h2o_timeout_t *t_total, *t_connect, *t_idle, *t_soon;
    struct upstream *ups;
    h2o_linklist_t calls;
    struct api_aclient_stats stats;
};

/* ------------------------------------------------------------------ */
/* connections                                                         */

static void conn_close(struct conn *cn)
{
    if (h2o_linklist_is_linked(&cn->link)) {
        h2o_linklist_unlink(&cn->link);
        cn->up->nidle--;
    }
    if (h2o_timeout_is_linked(&cn->idle_timer))
        h2o_timeout_unlink(&cn->idle_timer);
    if (cn->sock != NULL)
        h2o_socket_close(cn->sock);
    free(cn);
}

static void on_idle_timeout(h2o_timeout_entry_t *entry)
{
    conn_close((struct conn *)entry);
}

/* Anything on an idle connection (EOF, a reset, stray bytes) ends it. */
static void on_idle_read(h2o_socket_t *sock, const char *err)
{
    /* evloop may notify without new data (it says so in read_on_ready) */
    if (err != NULL || sock->input->size > 0)
        conn_close(sock->data);
}

static void conn_park(struct conn *cn)
{
    struct api_aclient *c = cn->c;
    cn->call = NULL;
    if (cn->up->nidle >= c->cfg.max_idle) {
        conn_close(cn);
        return;
    }
    h2o_socket_read_start(cn->sock, on_idle_read);
    h2o_linklist_insert(&cn->up->idle, &cn->link);
    cn->up->nidle++;
    h2o_timeout_link(c->loop, c->t_idle, &cn->idle_timer);
}

/* ------------------------------------------------------------------ */
/* finishing a call                                                    */

static void call_free(struct api_aclient_call *call)
{
    if (h2o_timeout_is_linked(&call->timer))
        h2o_timeout_unlink(&call->timer);
    if (h2o_timeout_is_linked(&call->ctimer))
        h2o_timeout_unlink(&call->ctimer);
    if (h2o_timeout_is_linked(&call->soon))
        h2o_timeout_unlink(&call->soon);
    if (h2o_linklist_is_linked(&call->link))
        h2o_linklist_unlink(&call->link);
    free(call->resp.body);
    free(call->resp.store_);
    free(call->resp.headers);
    free(call->head);
    free(call);
}

static void call_fail(struct api_aclient_call *call, int code, int not_sent, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void call_fail(struct api_aclient_call *call, int code, int not_sent, const char *fmt, ...)
{
    struct api_err err;
    va_list ap;
    int n;

    err.code = code;
    n = snprintf(err.msg, sizeof(err.msg), "http://%s: ", call->up != NULL ? call->up->key : "?");
    va_start(ap, fmt);
    if (n > 0 && (size_t)n < sizeof(err.msg))
        vsnprintf(err.msg + n, sizeof(err.msg) - (size_t)n, fmt, ap);
    va_end(ap);
    if (call->conn != NULL) {
        call->conn->call = NULL;
        conn_close(call->conn);
        call->conn = NULL;
    }
    call->c->stats.failures++;
    call->cb(call->ud, code, NULL, &err, not_sent);
    call_free(call);
}

static void call_done(struct api_aclient_call *call)
{
    struct conn *cn = call->conn;
    call->conn = NULL;
    if (call->keepalive && call->write_done && cn->sock->input->size == 0)
        conn_park(cn);
    else
        conn_close(cn);
    if (call->resp.body == NULL && (call->resp.body = malloc(1)) == NULL) {
        call_fail(call, API_ENOMEM, 0, "out of memory");
        return;
    }
    call->resp.body[call->resp.body_len] = '\0';
    call->cb(call->ud, API_OK, &call->resp, NULL, 0);
    call_free(call);
}

/* ------------------------------------------------------------------ */
/* the exchange                                                        */

static void call_start(struct api_aclient_call *call, int fresh);

/* The connection of CALL failed with MSG. A reused connection that gave
 * no byte of a response is replaced once by a fresh one. */
static void call_conn_error(struct api_aclient_call *call, const char *msg)
{
    if (call->reused && !call->got_bytes && !call->retried) {
        call->conn->call = NULL;
        conn_close(call->conn);
        call->conn = NULL;
        call->retried = 1;
        call->c->stats.stale_retries++;
        call_start(call, 1);
        return;
    }
    call_fail(call, API_EUPSTREAM, 0, "%s", msg);
}

static int body_reserve(struct api_aclient_call *call, size_t more)
{
    size_t need = call->resp.body_len + more + 1;
    if (need - 1 > call->c->cfg.max_body + (call->state == ST_BODY_CHUNKED ? 4096 : 0))
        return -1;
    if (need > call->body_cap) {
        /* a length known in advance gets exactly that: most answers are
         * small, and a small block is the allocator's cheapest */
        size_t cap = call->body_cap ? call->body_cap : call->state == ST_BODY_LEN ? need : 4096;
        while (cap < need)
            cap *= 2;
        char *b = realloc(call->resp.body, cap);
        if (b == NULL)
            return -1;
        call->resp.body = b;
        call->body_cap = cap;
    }
    return 0;
}

/* Copies the N bytes at IN to the end of CALL's body (not counted in
 * body_len: the caller decides, chunked bodies decode in place). Fails
 * CALL and returns -1 when the body would pass its limit. */
static int body_copy_in(struct api_aclient_call *call, const char *in, size_t n)
{
    if (body_reserve(call, n) != 0) {
        call_fail(call, API_EUPSTREAM, 0, "response body over the limit of %zu bytes", call->c->cfg.max_body);
        return -1;
    }
    memcpy(call->resp.body + call->resp.body_len, in, n);
    return 0;
}

static int value_is(const struct phr_header *h, const char *word)
{
    size_t wl = strlen(word);
    /* a comma list ("keep-alive, close", "gzip, chunked") counts the word anywhere */
    for (size_t i = 0; i + wl <= h->value_len; i++)
        if (strncasecmp(h->value + i, word, wl) == 0 && (i == 0 || h->value[i - 1] == ' ' || h->value[i - 1] == ',') &&
            (i + wl == h->value_len || h->value[i + wl] == ',' || h->value[i + wl] == ' '))
            return 1;
    return 0;
}

/* Parses the head in BUF (LEN bytes, the whole of it). Returns bytes used,
 * 0 if incomplete, -1 on error (message set through call_fail). */
static ssize_t parse_head(struct api_aclient_call *call, const char *buf, size_t len)
{
    struct phr_header hs[ACLIENT_MAX_HEADERS];
    size_t nh = ACLIENT_MAX_HEADERS, store_len = 0, off = 0;
    int minor, status, chunked = 0, have_len = 0;
    const char *msg;
    size_t msg_len, clen = 0;
    int r = phr_parse_response(buf, len, &minor, &status, &msg, &msg_len, hs, &nh, 0);

    if (r == -2) {
        if (len > ACLIENT_MAX_HEAD) {
            call_fail(call, API_EUPSTREAM, 0, "response head over %d bytes", ACLIENT_MAX_HEAD);
            return -1;
        }
        return 0;
    }
    if (r < 0) {
        call_fail(call, API_EUPSTREAM, 0, "malformed HTTP response");
        return -1;
    }
    if (status >= 100 && status < 200)
        return r; /* an interim response: the real one follows */
    call->keepalive = minor >= 1;
    for (size_t i = 0; i < nh; i++) {
        const struct phr_header *h = &hs[i];
        store_len += h->name_len + h->value_len + 2;
        if (h->name_len == 10 && strncasecmp(h->name, "connection", 10) == 0) {
            if (value_is(h, "close"))
                call->keepalive = 0;
            else if (value_is(h, "keep-alive"))
                call->keepalive = 1;
        } else if (h->name_len == 17 && strncasecmp(h->name, "transfer-encoding", 17) == 0) {
            chunked = value_is(h, "chunked");
            if (!chunked) {
                call_fail(call, API_EUPSTREAM, 0, "unsupported transfer-encoding");
                return -1;
            }
        } else if (h->name_len == 14 && strncasecmp(h->name, "content-length", 14) == 0) {
            size_t v = 0;
            if (h->value_len == 0 || h->value_len > 18) {
                call_fail(call, API_EUPSTREAM, 0, "bad content-length");
                return -1;
            }
            for (size_t k = 0; k < h->value_len; k++) {
                if (!isdigit((unsigned char)h->value[k])) {
                    call_fail(call, API_EUPSTREAM, 0, "bad content-length");
                    return -1;
                }
                v = v * 10 + (size_t)(h->value[k] - '0');
            }
            if (have_len && v != clen) {
                call_fail(call, API_EUPSTREAM, 0, "conflicting content-length");
                return -1;
            }
            clen = v;
            have_len = 1;
        }
    }
    call->resp.status = status;
    call->resp.nheaders = nh;
    if ((call->resp.headers = calloc(nh ? nh : 1, sizeof(*call->resp.headers))) == NULL ||
        (call->resp.store_ = malloc(store_len + 1)) == NULL) {
        call_fail(call, API_ENOMEM, 0, "out of memory");
        return -1;
    }
    for (size_t i = 0; i < nh; i++) {
        struct api_aclient_header *o = &call->resp.headers[i];
        char *p = call->resp.store_ + off;
        for (size_t k = 0; k < hs[i].name_len; k++) {
            char ch = hs[i].name[k];
            p[k] = ch >= 'A' && ch <= 'Z' ? (char)(ch + ('a' - 'A')) : ch; /* header names are ASCII */
        }
        p[hs[i].name_len] = '\0';
        o->name = p;
        o->name_len = hs[i].name_len;
        p += hs[i].name_len + 1;
        memcpy(p, hs[i].value, hs[i].value_len);
        p[hs[i].value_len] = '\0';
        o->value = p;
        o->value_len = hs[i].value_len;
        off += hs[i].name_len + hs[i].value_len + 2;
    }
    if (call->head_only || status == 204 || status == 304) {
        call->state = ST_BODY_LEN;
        call->remaining = 0;
    } else if (chunked) {
        call->state = ST_BODY_CHUNKED;
        memset(&call->dec, 0, sizeof(call->dec));
        call->dec.consume_trailer = 1;
    } else if (have_len) {
        if (clen > call->c->cfg.max_body) {
            call_fail(call, API_EUPSTREAM, 0, "response body of %zu bytes is over the limit of %zu", clen,
                      call->c->cfg.max_body);
            return -1;
        }
        call->state = ST_BODY_LEN;
        call->remaining = clen;
        if (body_reserve(call, clen) != 0) {
            call_fail(call, API_ENOMEM, 0, "out of memory");
            return -1;
        }
    } else {
        call->state = ST_BODY_EOF;
        call->keepalive = 0;
    }
    return r;
}

static void on_read(h2o_socket_t *sock, const char *err)
{
    struct conn *cn = sock->data;
    struct api_aclient_call *call = cn->call;
    h2o_buffer_t *in;

    if (err != NULL) {
        if (call->state == ST_BODY_EOF) {
            call_done(call);
            return;
        }
        if (call->state == ST_HEAD || call->state == ST_CONNECTING || !call->got_bytes)
            call_conn_error(call, err == h2o_socket_error_closed ? "connection closed before a response" : err);
        else
            call_fail(call, API_EUPSTREAM, 0, "connection lost in the response: %s", err);
        return;
    }
    in = sock->input;
    if (in->size > 0)
        call->got_bytes = 1;
    for (;;) {
        switch (call->state) {
        case ST_CONNECTING:
        case ST_HEAD: {
            ssize_t r = parse_head(call, in->bytes, in->size);
            if (r < 0)
                return; /* failed; call is gone */
            if (r == 0)
                return;
            h2o_buffer_consume(&sock->input, (size_t)r);
            in = sock->input;
            if (call->state == ST_HEAD || call->state == ST_CONNECTING) {
                if (in->size == 0)
                    return; /* a 1xx; wait for the final response */
                continue;
            }
            break;
        }
        case ST_BODY_LEN: {
            size_t n = in->size < call->remaining ? in->size : call->remaining;
            if (n > 0) {
                memcpy(call->resp.body + call->resp.body_len, in->bytes, n);
                call->resp.body_len += n;
                call->remaining -= n;
                h2o_buffer_consume(&sock->input, n);
                in = sock->input;
            }
            if (call->remaining == 0) {
                call_done(call);
                return;
            }
            return;
        }
        case ST_BODY_CHUNKED: {
            size_t n = in->size;
            ssize_t r;
            if (n == 0 || body_copy_in(call, in->bytes, n) != 0)
                return;
            h2o_buffer_consume(&sock->input, n);
            r = phr_decode_chunked(&call->dec, call->resp.body + call->resp.body_len, &n);
            if (r == -1) {
                call_fail(call, API_EUPSTREAM, 0, "malformed chunked response body");
                return;
            }
            call->resp.body_len += n;
            if (r >= 0) {
                if (r > 0)
                    call->keepalive = 0; /* bytes after the last chunk */
                call_done(call);
            }
            return;
        }
        case ST_BODY_EOF: {
            size_t n = in->size;
            if (n == 0 || body_copy_in(call, in->bytes, n) != 0)
                return;
            call->resp.body_len += n;
            h2o_buffer_consume(&sock->input, n);
            return;
        }
        }
    }
}

static void on_write(h2o_socket_t *sock, const char *err)
{
    struct conn *cn = sock->data;
    struct api_aclient_call *call = cn->call;
    if (call == NULL)
        return;
    if (err != NULL) {
        call_conn_error(call, err);
        return;
    }
    call->write_done = 1;
}

static void call_write(struct api_aclient_call *call)
{
    h2o_iovec_t bufs[2] = {h2o_iovec_init(call->head, call->head_len), h2o_iovec_init(call->body, call->body_len)};
    h2o_socket_t *sock = call->conn->sock;
    call->state = ST_HEAD;
    h2o_socket_read_start(sock, on_read);
    h2o_socket_write(sock, bufs, call->body_len > 0 ? 2 : 1, on_write);
}

static void on_connect(h2o_socket_t *sock, const char *err)
{
    struct conn *cn = sock->data;
    struct api_aclient_call *call = cn->call;
    int one = 1;

    if (h2o_timeout_is_linked(&call->ctimer))
        h2o_timeout_unlink(&call->ctimer);
    if (err != NULL) {
        call_fail(call, API_EUPSTREAM, 1, "cannot connect: %s", err);
        return;
    }
    setsockopt(h2o_socket_get_fd(sock), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    call_write(call);
}

static void on_connect_timeout(h2o_timeout_entry_t *entry)
{
    struct api_aclient_call *call = H2O_STRUCT_FROM_MEMBER(struct api_aclient_call, ctimer, entry);
    call_fail(call, API_EUPSTREAM, 1, "connect timed out after %ld ms", call->c->cfg.connect_timeout_ms);
}

static void on_total_timeout(h2o_timeout_entry_t *entry)
{
    struct api_aclient_call *call = (struct api_aclient_call *)entry;
    call_fail(call, API_ETIMEOUT, call->state == ST_CONNECTING, "no complete response within %ld ms",
              call->c->cfg.timeout_ms);
}

static void on_soon(h2o_timeout_entry_t *entry)
{
    struct api_aclient_call *call = H2O_STRUCT_FROM_MEMBER(struct api_aclient_call, soon, entry);
    struct api_err err = call->err;
    call->c->stats.failures++;
    call->cb(call->ud, err.code, NULL, &err, call->err_not_sent);
    call_free(call);
}

/* Reports an error of CALL from the next loop turn. */
static void call_fail_soon(struct api_aclient_call *call, int code, int not_sent, const char *msg)
{
    call->err.code = code;
    snprintf(call->err.msg, sizeof(call->err.msg), "http://%s: %s", call->up ? call->up->key : "?", msg);
    call->err_not_sent = not_sent;
    h2o_timeout_link(call->c->loop, call->c->t_soon, &call->soon);
}

/* Puts CALL on an idle connection of its upstream, or a new one (always a
 * new one when FRESH). */
static void call_start(struct api_aclient_call *call, int fresh)
{
    struct api_aclient *c = call->c;
    struct upstream *up = call->up;
    struct conn *cn;

    call->state = ST_CONNECTING;
    call->got_bytes = 0;
    call->write_done = 0;
    if (!fresh && !h2o_linklist_is_empty(&up->idle)) {
        cn = H2O_STRUCT_FROM_MEMBER(struct conn, link, up->idle.prev); /* the newest */
        h2o_linklist_unlink(&cn->link);
        up->nidle--;
        if (h2o_timeout_is_linked(&cn->idle_timer))
            h2o_timeout_unlink(&cn->idle_timer);
        cn->call = call;
        call->conn = cn;
        call->reused = 1;
        c->stats.reuses++;
        call_write(call);
        return;
    }
    call->reused = 0;
    if ((cn = calloc(1, sizeof(*cn))) == NULL) {
        call_fail_soon(call, API_ENOMEM, 1, "out of memory");
        return;
    }
    cn->c = c;
    cn->up = up;
    cn->idle_timer.cb = on_idle_timeout;
    cn->sock = h2o_socket_connect(c->loop, (struct sockaddr *)&up->addr, up->addrlen, on_connect);
    if (cn->sock == NULL) {
        free(cn);
        call_fail_soon(call, API_EUPSTREAM, 1, "cannot connect: connection refused");
        return;
    }
    c->stats.connects++;
    cn->sock->data = cn;
    cn->call = call;
    call->conn = cn;
    h2o_timeout_link(c->loop, c->t_connect, &call->ctimer);
}

/* ------------------------------------------------------------------ */
/* upstreams                                                           */

/* Splits "http://HOST:PORT[/]" into HOST (brackets removed) and PORT. */
static int split_url(const char *url, char *key, size_t kcap, char *host, size_t hcap, unsigned *port)
{
    const char *p, *colon, *end;
    size_t hl;
    char *e;
    unsigned long v;

    if (strncmp(url, "http://", 7) != 0)
        return -1;
    p = url + 7;
    end = p + strcspn(p, "/?#");
    if ((size_t)(end - p) >= kcap)
        return -1;
    memcpy(key, p, (size_t)(end - p));
    key[end - p] = '\0';
    if (key[0] == '[') {
        char *rb = strchr(key, ']');
        if (rb == NULL)
            return -1;
        hl = (size_t)(rb - key - 1);
        if (hl >= hcap)
            return -1;
        memcpy(host, key + 1, hl);
        host[hl] = '\0';
        colon = rb[1] == ':' ? rb + 1 : NULL;
    } else {
        colon = strrchr(key, ':');
        hl = colon ? (size_t)(colon - key) : strlen(key);
        if (hl == 0 || hl >= hcap)
            return -1;
        memcpy(host, key, hl);
        host[hl] = '\0';
    }
    if (colon == NULL) {
        *port = 80;
        return 0;
    }
    v = strtoul(colon + 1, &e, 10);
    if (*e != '\0' || e == colon + 1 || v == 0 || v > 65535)
        return -1;
    *port = (unsigned)v;
    return 0;
}

static struct upstream *upstream_find(struct api_aclient *c, const char *key)
{
    for (struct upstream *u = c->ups; u != NULL; u = u->next)
        if (strcmp(u->key, key) == 0)
            return u;
    return NULL;
}

static struct upstream *upstream_add(struct api_aclient *c, const char *key, const struct sockaddr *sa, socklen_t len)
{
    struct upstream *u = calloc(1, sizeof(*u));
    if (u == NULL)
        return NULL;
    snprintf(u->key, sizeof(u->key), "%s", key);
    memcpy(&u->addr, sa, len);
    u->addrlen = len;
    h2o_linklist_init_anchor(&u->idle);
    u->next = c->ups;
    c->ups = u;
    return u;
}

/* The upstream of URL: known, or a numeric address. Returns NULL with a
 * message in MSG. */
static struct upstream *upstream_of(struct api_aclient *c, const char *url, char *msg, size_t cap)
{
    char key[192], host[128];
    unsigned port;
    struct upstream *u;
    struct sockaddr_in a4;
    struct sockaddr_in6 a6;

    if (split_url(url, key, sizeof(key), host, sizeof(host), &port) != 0) {
        snprintf(msg, cap, "'%.100s' is not an http://HOST:PORT URL", url);
        return NULL;
    }
    if ((u = upstream_find(c, key)) != NULL)
        return u;
    memset(&a4, 0, sizeof(a4));
    memset(&a6, 0, sizeof(a6));
    if (strcmp(host, "localhost") == 0)
        snprintf(host, sizeof(host), "127.0.0.1");
    if (inet_pton(AF_INET, host, &a4.sin_addr) == 1) {
        a4.sin_family = AF_INET;
        a4.sin_port = htons((uint16_t)port);
        u = upstream_add(c, key, (struct sockaddr *)&a4, sizeof(a4));
    } else if (inet_pton(AF_INET6, host, &a6.sin6_addr) == 1) {
        a6.sin6_family = AF_INET6;
        a6.sin6_port = htons((uint16_t)port);
        u = upstream_add(c, key, (struct sockaddr *)&a6, sizeof(a6));
    } else {
        snprintf(msg, cap, "host '%s' was not resolved at start-up", host);
        return NULL;
    }
    if (u == NULL)
        snprintf(msg, cap, "out of memory");
    return u;
}

int api_aclient_resolve(struct api_aclient *c, const char *url, struct api_err *err)
{
    char key[192], host[128], portstr[8], msg[200];
    unsigned port;
    struct addrinfo hints, *res = NULL;
    int rc;

    if (split_url(url, key, sizeof(key), host, sizeof(host), &port) != 0)
        return api_err_set(err, API_EINVAL, "'%.100s' is not an http://HOST:PORT URL", url);
    if (upstream_find(c, key) != NULL || upstream_of(c, url, msg, sizeof(msg)) != NULL)
        return API_OK;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    snprintf(portstr, sizeof(portstr), "%u", port);
    if ((rc = getaddrinfo(host, portstr, &hints, &res)) != 0 || res == NULL)
        return api_err_set(err, API_EUPSTREAM, "resolving '%s': %s", host, gai_strerror(rc));
    if (upstream_add(c, key, res->ai_addr, res->ai_addrlen) == NULL) {
        freeaddrinfo(res);
        return api_err_set(err, API_ENOMEM, "out of memory");
    }
    freeaddrinfo(res);
    return API_OK;
}

/* ------------------------------------------------------------------ */
/* public                                                              */

int api_aclient_new(struct api_server *s, const struct api_aclient_config *cfg, struct api_aclient **out,
                    struct api_err *err)
{
    struct api_aclient *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return api_err_set(err, API_ENOMEM, "out of memory");
    if (cfg != NULL)
        c->cfg = *cfg;
    if (c->cfg.connect_timeout_ms <= 0)
        c->cfg.connect_timeout_ms = 2000;
    if (c->cfg.timeout_ms <= 0)
        c->cfg.timeout_ms = 60000;
    if (c->cfg.idle_ms <= 0)
        c->cfg.idle_ms = 4000;
    if (c->cfg.max_idle == 0)
        c->cfg.max_idle = 64;
    if (c->cfg.max_body == 0)
        c->cfg.max_body = (size_t)64 << 20;
    c->server = s;
    c->loop = api_server_evloop(s);
    h2o_linklist_init_anchor(&c->calls);
    if ((c->t_total = api_server_timeout(s, (uint32_t)c->cfg.timeout_ms)) == NULL ||
        (c->t_connect = api_server_timeout(s, (uint32_t)c->cfg.connect_timeout_ms)) == NULL ||
        (c->t_idle = api_server_timeout(s, (uint32_t)c->cfg.idle_ms)) == NULL ||
        (c->t_soon = api_server_timeout(s, 0)) == NULL) {
        free(c);
        return api_err_set(err, API_ENOMEM, "out of memory");
    }
    *out = c;
    return API_OK;
}

void api_aclient_free(struct api_aclient *c)
{
    if (c == NULL)
        return;
    while (!h2o_linklist_is_empty(&c->calls)) {
        struct api_aclient_call *call = H2O_STRUCT_FROM_MEMBER(struct api_aclient_call, link, c->calls.next);
        api_aclient_cancel(call);
    }
    while (c->ups != NULL) {
        struct upstream *u = c->ups;
        while (!h2o_linklist_is_empty(&u->idle))
            conn_close(H2O_STRUCT_FROM_MEMBER(struct conn, link, u->idle.next));
        c->ups = u->next;
        free(u);
    }
    free(c);
}

/* Appends V in decimal at BUF+*N (the caller sized BUF). */
static void head_put_size(char *buf, size_t *n, size_t v)
{
    char digits[24];
    size_t k = sizeof(digits);
    do {
        digits[--k] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    memcpy(buf + *n, digits + k, sizeof(digits) - k);
    *n += sizeof(digits) - k;
}

/* Appends the string S at BUF+*N (the caller sized BUF). */
static void head_put(char *buf, size_t *n, const char *s)
{
    size_t l = strlen(s);
    memcpy(buf + *n, s, l);
    *n += l;
}

struct api_aclient_call *api_aclient_send(struct api_aclient *c, const struct api_aclient_req *rq, api_aclient_cb cb,
                                          void *ud)
{
    struct api_aclient_call *call = calloc(1, sizeof(*call));
    char msg[200];
    size_t cap, n;

    if (call == NULL)
        h2o_fatal("out of memory");
    call->c = c;
    call->cb = cb;
    call->ud = ud;
    call->timer.cb = on_total_timeout;
    call->ctimer.cb = on_connect_timeout;
    call->soon.cb = on_soon;
    call->body = rq->body;
    call->body_len = rq->body_len;
    call->head_only = strcmp(rq->method, "HEAD") == 0;
    h2o_linklist_insert(&c->calls, &call->link);
    c->stats.requests++;
    if ((call->up = upstream_of(c, rq->url, msg, sizeof(msg))) == NULL) {
        call_fail_soon(call, API_EINVAL, 1, msg);
        return call;
    }
    cap = strlen(rq->method) + strlen(rq->path) + strlen(call->up->key) + 96;
    for (size_t i = 0; i < rq->nheaders; i++)
        cap += strlen(rq->headers[i]) + 2;
    if ((call->head = malloc(cap)) == NULL) {
        call_fail_soon(call, API_ENOMEM, 1, "out of memory");
        return call;
    }
    n = 0;
    head_put(call->head, &n, rq->method);
    head_put(call->head, &n, " ");
    head_put(call->head, &n, rq->path[0] ? rq->path : "/");
    head_put(call->head, &n, " HTTP/1.1\r\nhost: ");
    head_put(call->head, &n, call->up->key);
    head_put(call->head, &n, "\r\n");
    if (rq->body_len > 0 || strcmp(rq->method, "POST") == 0 || strcmp(rq->method, "PUT") == 0 ||
        strcmp(rq->method, "PATCH") == 0) {
        head_put(call->head, &n, "content-length: ");
        head_put_size(call->head, &n, rq->body_len);
        head_put(call->head, &n, "\r\n");
    }
    for (size_t i = 0; i < rq->nheaders; i++) {
        size_t l = strlen(rq->headers[i]);
        memcpy(call->head + n, rq->headers[i], l);
        memcpy(call->head + n + l, "\r\n", 2);
        n += l + 2;
    }
    memcpy(call->head + n, "\r\n", 2);
    call->head_len = n + 2;
    h2o_timeout_link(c->loop, c->t_total, &call->timer);
    call_start(call, 0);
    return call;
}

void api_aclient_cancel(struct api_aclient_call *call)
{
    if (call->conn != NULL) {
        call->conn->call = NULL;
        conn_close(call->conn);
        call->conn = NULL;
    }
    call_free(call);
}

const char *api_aclient_resp_header(const struct api_aclient_resp *resp, const char *name, size_t *len)
{
    size_t nl = strlen(name);
    for (size_t i = 0; i < resp->nheaders; i++)
        if (resp->headers[i].name_len == nl && memcmp(resp->headers[i].name, name, nl) == 0) {
            if (len != NULL)
                *len = resp->headers[i].value_len;
            return resp->headers[i].value;
        }
    if (len != NULL)
        *len = 0;
    return NULL;
}

void api_aclient_stats(const struct api_aclient *c, struct api_aclient_stats *out)
{
    *out = c->stats;
    out->idle = 0;
    for (const struct upstream *u = c->ups; u != NULL; u = u->next)
        out->idle += u->nidle;
}
