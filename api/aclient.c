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
 * Pipelining (calls sent with `pipeline` set): such a call waits in its
 * upstream's queue until the end of the loop turn (a zero-length timer,
 * which h2o 2.2.5 runs after the turn's socket callbacks). The calls queued
 * by then leave together: up to `max_pipeline` of them on one connection,
 * copied into one buffer and written with one write, and their responses
 * are read in order from that connection. On a loaded proxy this takes the
 * upstream side from two system calls per request (a write, a read) to
 * about 2/k for k requests that arrived in the same turn, and the upstream
 * reads k requests with one read; on this kind of VM a system call costs
 * over a microsecond before it does anything. A lone call goes as before.
 * The cost: the upstream (h2o 2.2.5 serves a connection's requests one
 * after the other) answers the k in sequence, so only idempotent requests
 * may be pipelined, and a connection that fails or closes under a
 * pipelined call that has no byte of its answer yet sends that call again,
 * once, on a fresh connection.
 *
 * A connection holds the calls written on it in order (the first is the
 * one being answered). When one of them fails on its own (a malformed
 * answer, a timeout, a cancel) the connection is out of step and closes;
 * the others are sent again or fail. Those failures are reported from the
 * zero-length timer, never from inside another call's callback, so no
 * callback runs while a connection's list is being taken apart.
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
#define ACLIENT_PIPE_MAX_BODY 16384 /* a request with a larger body is never pipelined (it is copied) */

struct upstream {
    char key[192]; /* "host:port" as written in the URL */
    struct sockaddr_storage addr;
    socklen_t addrlen;
    h2o_linklist_t idle; /* struct conn, oldest first */
    size_t nidle;
    h2o_linklist_t queued; /* pipelinable calls (clink) waiting for the end of the loop turn */
    struct upstream *next;
};

struct conn {
    h2o_timeout_entry_t idle_timer; /* must stay first */
    h2o_timeout_entry_t ctimer;     /* connect */
    struct api_aclient *c;
    struct upstream *up;
    h2o_socket_t *sock;
    h2o_linklist_t calls; /* struct api_aclient_call (clink), in the order written; empty while idle */
    size_t ncalls;
    int connected, writing, reused;
    char *wbuf;          /* a pipelined batch, copied; owned until its write completes */
    h2o_linklist_t link; /* in up->idle while idle */
};

enum call_state { ST_CONNECTING, ST_HEAD, ST_BODY_LEN, ST_BODY_CHUNKED, ST_BODY_EOF };

struct api_aclient_call {
    h2o_timeout_entry_t timer; /* the whole request; must stay first */
    h2o_timeout_entry_t soon;  /* delivers an error from the zero-length timer */
    struct api_aclient *c;
    struct upstream *up;
    struct conn *conn; /* the connection it is written on (in its calls), or NULL */
    api_aclient_cb cb;
    void *ud;
    char *head; /* request line and headers */
    size_t head_len;
    const void *body;
    size_t body_len;
    int head_only, pipeline, reused, retried, got_bytes, keepalive;
    enum call_state state;
    size_t remaining; /* ST_BODY_LEN */
    struct phr_chunked_decoder dec;
    struct api_aclient_resp resp;
    size_t body_cap;
    struct api_err err; /* for soon */
    int err_not_sent;
    h2o_linklist_t link;  /* in c->calls */
    h2o_linklist_t clink; /* in conn->calls, in up->queued, or in a local list */
};

struct api_aclient {
    h2o_timeout_entry_t flush; /* the end of the loop turn: sends queued calls */
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

/* Closes CN, which has no call left on it. */
static void conn_close(struct conn *cn)
{
    if (h2o_linklist_is_linked(&cn->link)) {
        h2o_linklist_unlink(&cn->link);
        cn->up->nidle--;
    }
    if (h2o_timeout_is_linked(&cn->idle_timer))
        h2o_timeout_unlink(&cn->idle_timer);
    if (h2o_timeout_is_linked(&cn->ctimer))
        h2o_timeout_unlink(&cn->ctimer);
    if (cn->sock != NULL)
        h2o_socket_close(cn->sock);
    free(cn->wbuf);
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
    if (cn->up->nidle >= c->cfg.max_idle) {
        conn_close(cn);
        return;
    }
    h2o_socket_read_start(cn->sock, on_idle_read);
    h2o_linklist_insert(&cn->up->idle, &cn->link);
    cn->up->nidle++;
    h2o_timeout_link(c->loop, c->t_idle, &cn->idle_timer);
}

/* Puts CALL last on CN. */
static void conn_add(struct conn *cn, struct api_aclient_call *call)
{
    h2o_linklist_insert(&cn->calls, &call->clink);
    cn->ncalls++;
    call->conn = cn;
    call->reused = cn->reused;
    call->state = ST_CONNECTING;
    call->got_bytes = 0;
}

/* Takes CALL off its connection (which stays as it is). */
static void call_detach(struct api_aclient_call *call)
{
    if (call->conn == NULL)
        return;
    h2o_linklist_unlink(&call->clink);
    call->conn->ncalls--;
    call->conn = NULL;
}

/* The first call on CN (the one being answered), or NULL. */
static struct api_aclient_call *conn_first(struct conn *cn)
{
    if (h2o_linklist_is_empty(&cn->calls))
        return NULL;
    return H2O_STRUCT_FROM_MEMBER(struct api_aclient_call, clink, cn->calls.next);
}

/* ------------------------------------------------------------------ */
/* finishing a call                                                    */

/* Frees CALL, which is on no connection. */
static void call_free(struct api_aclient_call *call)
{
    if (h2o_timeout_is_linked(&call->timer))
        h2o_timeout_unlink(&call->timer);
    if (h2o_timeout_is_linked(&call->soon))
        h2o_timeout_unlink(&call->soon);
    if (h2o_linklist_is_linked(&call->link))
        h2o_linklist_unlink(&call->link);
    if (h2o_linklist_is_linked(&call->clink))
        h2o_linklist_unlink(&call->clink);
    free(call->resp.body);
    free(call->resp.store_);
    free(call->resp.headers);
    free(call->head);
    free(call);
}

static void on_soon(h2o_timeout_entry_t *entry)
{
    struct api_aclient_call *call = H2O_STRUCT_FROM_MEMBER(struct api_aclient_call, soon, entry);
    struct api_err err = call->err;
    call->c->stats.failures++;
    call->cb(call->ud, err.code, NULL, &err, call->err_not_sent);
    call_free(call);
}

/* Reports an error of CALL (on no connection) from the zero-length timer. */
static void call_fail_soon(struct api_aclient_call *call, int code, int not_sent, const char *msg)
{
    call->err.code = code;
    snprintf(call->err.msg, sizeof(call->err.msg), "http://%s: %s", call->up ? call->up->key : "?", msg);
    call->err_not_sent = not_sent;
    if (h2o_linklist_is_linked(&call->clink))
        h2o_linklist_unlink(&call->clink);
    h2o_timeout_link(call->c->loop, call->c->t_soon, &call->soon);
}

static void call_start(struct api_aclient_call *call, int fresh);

/* CALL, taken off its connection, lost it before a complete answer (MSG
 * says how; NOT_SENT when no byte can have left). It is sent again, once,
 * on a fresh connection when the upstream cannot have acted on it: a reused
 * connection that gave no byte of its answer (a close that raced the
 * request), or a pipelined (idempotent) call with no byte of its answer.
 * Otherwise it fails, from the zero-length timer. Runs no callback. */
static void call_lost(struct api_aclient_call *call, const char *msg, int not_sent)
{
    char m[sizeof(call->err.msg)];
    if (!not_sent && !call->retried && !call->got_bytes && (call->reused || call->pipeline)) {
        call->retried = 1;
        call->c->stats.stale_retries++;
        call_start(call, 1);
        return;
    }
    if (call->got_bytes && call->state != ST_HEAD && call->state != ST_CONNECTING)
        snprintf(m, sizeof(m), "connection lost in the response: %s", msg);
    else
        snprintf(m, sizeof(m), "%s", msg);
    call_fail_soon(call, API_EUPSTREAM, not_sent, m);
}

/* Closes CN and hands every call still on it to call_lost. Runs no
 * callback, so it is safe anywhere. */
static void conn_abandon(struct conn *cn, const char *msg, int not_sent)
{
    h2o_linklist_t list;
    h2o_linklist_init_anchor(&list);
    while (!h2o_linklist_is_empty(&cn->calls)) {
        struct api_aclient_call *call = conn_first(cn);
        call_detach(call);
        h2o_linklist_insert(&list, &call->clink);
    }
    conn_close(cn);
    while (!h2o_linklist_is_empty(&list)) {
        struct api_aclient_call *call = H2O_STRUCT_FROM_MEMBER(struct api_aclient_call, clink, list.next);
        h2o_linklist_unlink(&call->clink);
        call_lost(call, msg, not_sent);
    }
}

static void call_fail(struct api_aclient_call *call, int code, int not_sent, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* CALL failed on its own (a malformed or oversized answer, a timeout): its
 * connection is out of step and closes (the calls behind it go to
 * call_lost), then CALL's callback runs and CALL is freed. */
static void call_fail(struct api_aclient_call *call, int code, int not_sent, const char *fmt, ...)
{
    struct api_err err;
    struct conn *cn = call->conn;
    va_list ap;
    int n;

    err.code = code;
    n = snprintf(err.msg, sizeof(err.msg), "http://%s: ", call->up != NULL ? call->up->key : "?");
    va_start(ap, fmt);
    if (n > 0 && (size_t)n < sizeof(err.msg))
        vsnprintf(err.msg + n, sizeof(err.msg) - (size_t)n, fmt, ap);
    va_end(ap);
    if (cn != NULL) {
        call_detach(call);
        conn_abandon(cn, "connection closed after an earlier request on it failed", 0);
    }
    if (h2o_linklist_is_linked(&call->clink))
        h2o_linklist_unlink(&call->clink);
    call->c->stats.failures++;
    call->cb(call->ud, code, NULL, &err, not_sent);
    call_free(call);
}

/* Runs the callback of CALL, answered and on no connection, and frees it. */
static void call_deliver(struct api_aclient_call *call)
{
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

/* Parses what SOCK's input holds for CALL (the first call on its
 * connection), consuming what belongs to it. Returns 1 when its answer is
 * complete, 0 when more must come, -1 when CALL failed (it is gone). */
static int call_feed(struct api_aclient_call *call, h2o_socket_t *sock)
{
    for (;;) {
        h2o_buffer_t *in = sock->input;
        switch (call->state) {
        case ST_CONNECTING:
        case ST_HEAD: {
            ssize_t r = parse_head(call, in->bytes, in->size);
            if (r <= 0)
                return (int)r; /* -1: failed, call is gone; 0: incomplete */
            h2o_buffer_consume(&sock->input, (size_t)r);
            if ((call->state == ST_HEAD || call->state == ST_CONNECTING) && sock->input->size == 0)
                return 0; /* a 1xx; wait for the final response */
            continue;
        }
        case ST_BODY_LEN: {
            size_t n = in->size < call->remaining ? in->size : call->remaining;
            if (n > 0) {
                memcpy(call->resp.body + call->resp.body_len, in->bytes, n);
                call->resp.body_len += n;
                call->remaining -= n;
                h2o_buffer_consume(&sock->input, n);
            }
            return call->remaining == 0;
        }
        case ST_BODY_CHUNKED: {
            /* decoded in place after a copy of all there is: bytes after
             * the last chunk (a pipelined answer) end keep-alive below */
            size_t n = in->size;
            ssize_t r;
            if (n == 0)
                return 0;
            if (body_copy_in(call, in->bytes, n) != 0)
                return -1;
            h2o_buffer_consume(&sock->input, n);
            r = phr_decode_chunked(&call->dec, call->resp.body + call->resp.body_len, &n);
            if (r == -1) {
                call_fail(call, API_EUPSTREAM, 0, "malformed chunked response body");
                return -1;
            }
            call->resp.body_len += n;
            if (r >= 0) {
                if (r > 0)
                    call->keepalive = 0; /* bytes after the last chunk */
                return 1;
            }
            return 0;
        }
        case ST_BODY_EOF: {
            size_t n = in->size;
            if (n == 0)
                return 0;
            if (body_copy_in(call, in->bytes, n) != 0)
                return -1;
            call->resp.body_len += n;
            h2o_buffer_consume(&sock->input, n);
            return 0;
        }
        }
    }
}

/* The connection CN broke (ERR): a body read until close is complete,
 * everything else on it is lost. */
static void conn_broken(struct conn *cn, const char *err)
{
    struct api_aclient_call *call = conn_first(cn);
    if (call != NULL && call->state == ST_BODY_EOF) {
        call_detach(call);
        conn_abandon(cn, "connection closed before a response", 0);
        call_deliver(call);
        return;
    }
    conn_abandon(cn, err == h2o_socket_error_closed ? "connection closed before a response" : err, 0);
}

static void on_read(h2o_socket_t *sock, const char *err)
{
    struct conn *cn = sock->data;
    struct api_aclient_call *call;
    h2o_linklist_t done;

    if (err != NULL) {
        conn_broken(cn, err);
        return;
    }
    /* Answers complete in this input are taken off the connection first and
     * their callbacks run after it is settled (parked, closed or still
     * busy): a callback may then send, even on this connection. */
    h2o_linklist_init_anchor(&done);
    while (sock->input->size > 0 && (call = conn_first(cn)) != NULL) {
        int r;
        call->got_bytes = 1;
        if ((r = call_feed(call, sock)) < 0)
            break; /* CALL failed; CN is closed */
        if (r == 0)
            break;
        call_detach(call);
        h2o_linklist_insert(&done, &call->clink);
        if (cn->ncalls == 0) {
            if (call->keepalive && !cn->writing && sock->input->size == 0)
                conn_park(cn);
            else
                conn_close(cn);
            break;
        }
        if (!call->keepalive) {
            conn_abandon(cn, "the upstream closed the connection before answering this request", 0);
            break;
        }
    }
    while (!h2o_linklist_is_empty(&done)) {
        call = H2O_STRUCT_FROM_MEMBER(struct api_aclient_call, clink, done.next);
        h2o_linklist_unlink(&call->clink);
        call_deliver(call);
    }
}

static void on_write(h2o_socket_t *sock, const char *err)
{
    struct conn *cn = sock->data;
    cn->writing = 0;
    free(cn->wbuf);
    cn->wbuf = NULL;
    if (err != NULL)
        conn_broken(cn, err);
    else if (cn->ncalls == 0)
        conn_close(cn); /* answered before the write completed; not reused */
}

/* Writes the calls on CN (connected, not writing) with one write: a lone
 * call's head and its borrowed body, or a batch copied into CN->wbuf (so a
 * call answered early can be freed while the write is still in flight). */
static void conn_write(struct conn *cn)
{
    h2o_iovec_t bufs[2];
    size_t nbufs, total = 0;
    h2o_linklist_t *node;

    for (node = cn->calls.next; node != &cn->calls; node = node->next) {
        struct api_aclient_call *call = H2O_STRUCT_FROM_MEMBER(struct api_aclient_call, clink, node);
        call->state = ST_HEAD;
        total += call->head_len + call->body_len;
    }
    if (cn->ncalls == 1) {
        struct api_aclient_call *call = conn_first(cn);
        bufs[0] = h2o_iovec_init(call->head, call->head_len);
        bufs[1] = h2o_iovec_init(call->body, call->body_len);
        nbufs = call->body_len > 0 ? 2 : 1;
    } else {
        size_t off = 0;
        if ((cn->wbuf = malloc(total)) == NULL) {
            conn_abandon(cn, "out of memory", 0);
            return;
        }
        for (node = cn->calls.next; node != &cn->calls; node = node->next) {
            struct api_aclient_call *call = H2O_STRUCT_FROM_MEMBER(struct api_aclient_call, clink, node);
            memcpy(cn->wbuf + off, call->head, call->head_len);
            if (call->body_len > 0)
                memcpy(cn->wbuf + off + call->head_len, call->body, call->body_len);
            off += call->head_len + call->body_len;
        }
        bufs[0] = h2o_iovec_init(cn->wbuf, total);
        nbufs = 1;
    }
    cn->writing = 1;
    h2o_socket_read_start(cn->sock, on_read);
    h2o_socket_write(cn->sock, bufs, nbufs, on_write);
}

static void on_connect(h2o_socket_t *sock, const char *err)
{
    struct conn *cn = sock->data;
    int one = 1;
    char msg[200];

    if (h2o_timeout_is_linked(&cn->ctimer))
        h2o_timeout_unlink(&cn->ctimer);
    if (err != NULL) {
        snprintf(msg, sizeof(msg), "cannot connect: %s", err);
        conn_abandon(cn, msg, 1);
        return;
    }
    setsockopt(h2o_socket_get_fd(sock), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    cn->connected = 1;
    conn_write(cn);
}

static void on_connect_timeout(h2o_timeout_entry_t *entry)
{
    struct conn *cn = H2O_STRUCT_FROM_MEMBER(struct conn, ctimer, entry);
    char msg[100];
    snprintf(msg, sizeof(msg), "connect timed out after %ld ms", cn->c->cfg.connect_timeout_ms);
    conn_abandon(cn, msg, 1);
}

static void on_total_timeout(h2o_timeout_entry_t *entry)
{
    struct api_aclient_call *call = (struct api_aclient_call *)entry;
    call_fail(call, API_ETIMEOUT, call->state == ST_CONNECTING, "no complete response within %ld ms",
              call->c->cfg.timeout_ms);
}

/* An idle connection of UP (the newest), taken out of the pool, or NULL. */
static struct conn *conn_take_idle(struct upstream *up)
{
    struct conn *cn;
    if (h2o_linklist_is_empty(&up->idle))
        return NULL;
    cn = H2O_STRUCT_FROM_MEMBER(struct conn, link, up->idle.prev);
    h2o_linklist_unlink(&cn->link);
    up->nidle--;
    if (h2o_timeout_is_linked(&cn->idle_timer))
        h2o_timeout_unlink(&cn->idle_timer);
    cn->c->stats.reuses++;
    return cn;
}

/* A connection to UP being made (on_connect writes its calls), or NULL. */
static struct conn *conn_new(struct api_aclient *c, struct upstream *up)
{
    struct conn *cn = calloc(1, sizeof(*cn));
    if (cn == NULL)
        return NULL;
    cn->c = c;
    cn->up = up;
    cn->idle_timer.cb = on_idle_timeout;
    cn->ctimer.cb = on_connect_timeout;
    h2o_linklist_init_anchor(&cn->calls);
    cn->sock = h2o_socket_connect(c->loop, (struct sockaddr *)&up->addr, up->addrlen, on_connect);
    if (cn->sock == NULL) {
        free(cn);
        return NULL;
    }
    c->stats.connects++;
    cn->sock->data = cn;
    h2o_timeout_link(c->loop, c->t_connect, &cn->ctimer);
    return cn;
}

/* Puts the calls of LIST (by clink; N of them, at least one, all of UP) on
 * one connection of UP: an idle one (the newest), or a new one when none
 * is idle or FRESH; the list is left empty. */
static void calls_start(struct upstream *up, h2o_linklist_t *list, size_t n, int fresh)
{
    struct api_aclient_call *first = H2O_STRUCT_FROM_MEMBER(struct api_aclient_call, clink, list->next);
    struct api_aclient *c = first->c;
    struct conn *cn = fresh ? NULL : conn_take_idle(up);

    if (cn != NULL)
        cn->reused = 1;
    else if ((cn = conn_new(c, up)) == NULL) {
        while (!h2o_linklist_is_empty(list)) {
            struct api_aclient_call *call = H2O_STRUCT_FROM_MEMBER(struct api_aclient_call, clink, list->next);
            call->state = ST_CONNECTING;
            call_fail_soon(call, API_EUPSTREAM, 1, "cannot connect: connection refused");
        }
        return;
    }
    if (n > 1)
        c->stats.pipelined += n - 1;
    while (!h2o_linklist_is_empty(list)) {
        struct api_aclient_call *call = H2O_STRUCT_FROM_MEMBER(struct api_aclient_call, clink, list->next);
        h2o_linklist_unlink(&call->clink);
        conn_add(cn, call);
    }
    if (cn->connected)
        conn_write(cn);
}

/* Puts CALL (on no connection) on a connection of its own: an idle one of
 * its upstream or a new one (always a new one when FRESH). */
static void call_start(struct api_aclient_call *call, int fresh)
{
    h2o_linklist_t one;
    h2o_linklist_init_anchor(&one);
    if (h2o_linklist_is_linked(&call->clink))
        h2o_linklist_unlink(&call->clink);
    h2o_linklist_insert(&one, &call->clink);
    calls_start(call->up, &one, 1, fresh);
}

/* The end of a loop turn: the calls queued since leave, in batches of at
 * most max_pipeline per connection, spread evenly (5 with a depth of 4 go
 * as 3 and 2). */
static void on_flush(h2o_timeout_entry_t *entry)
{
    struct api_aclient *c = H2O_STRUCT_FROM_MEMBER(struct api_aclient, flush, entry);
    for (struct upstream *up = c->ups; up != NULL; up = up->next) {
        size_t n = 0;
        for (h2o_linklist_t *node = up->queued.next; node != &up->queued; node = node->next)
            n++;
        while (n > 0) {
            size_t batches = (n + c->cfg.max_pipeline - 1) / c->cfg.max_pipeline, k = (n + batches - 1) / batches;
            h2o_linklist_t list;
            h2o_linklist_init_anchor(&list);
            for (size_t i = 0; i < k; i++) {
                struct api_aclient_call *call =
                    H2O_STRUCT_FROM_MEMBER(struct api_aclient_call, clink, up->queued.next);
                h2o_linklist_unlink(&call->clink);
                h2o_linklist_insert(&list, &call->clink);
            }
            calls_start(up, &list, k, 0);
            n -= k;
        }
    }
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
    h2o_linklist_init_anchor(&u->queued);
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
    if (c->cfg.max_pipeline == 0)
        c->cfg.max_pipeline = API_ACLIENT_PIPELINE_DEPTH;
    c->server = s;
    c->loop = api_server_evloop(s);
    c->flush.cb = on_flush;
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
    /* a cancel may send the calls behind it again: they are cancelled in turn */
    while (!h2o_linklist_is_empty(&c->calls)) {
        struct api_aclient_call *call = H2O_STRUCT_FROM_MEMBER(struct api_aclient_call, link, c->calls.next);
        api_aclient_cancel(call);
    }
    if (h2o_timeout_is_linked(&c->flush))
        h2o_timeout_unlink(&c->flush);
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
    call->soon.cb = on_soon;
    call->body = rq->body;
    call->body_len = rq->body_len;
    call->head_only = strcmp(rq->method, "HEAD") == 0;
    call->pipeline = rq->pipeline && rq->body_len <= ACLIENT_PIPE_MAX_BODY && c->cfg.max_pipeline > 1;
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
    if (call->pipeline) {
        /* leaves at the end of this loop turn, with the others queued by then */
        call->state = ST_CONNECTING;
        h2o_linklist_insert(&call->up->queued, &call->clink);
        if (!h2o_timeout_is_linked(&c->flush))
            h2o_timeout_link(c->loop, c->t_soon, &c->flush);
        return call;
    }
    call_start(call, 0);
    return call;
}

void api_aclient_cancel(struct api_aclient_call *call)
{
    struct conn *cn = call->conn;
    if (cn != NULL) {
        /* its connection is out of step now: the calls behind it go again */
        call_detach(call);
        conn_abandon(cn, "connection closed after an earlier request on it was cancelled", 0);
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
