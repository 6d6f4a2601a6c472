/*
 * api/server.c: the h2o evloop server behind every Shoal daemon (server.h).
 *
 * Why our own router: h2o's path configuration matches prefixes only, and we
 * need method + `{param}` patterns with 404/405 in the contract's JSON shape.
 * So one h2o handler is registered at "/" and everything after that is ours.
 *
 * Deferred replies: a worker must never touch h2o memory, and the client may
 * disconnect while the worker runs (h2o then disposes the request's pool).
 * `struct api_pending` is a small heap object with two references, one held
 * by the request (dropped by a dispose hook in the request's pool) and one by
 * the worker (dropped when its response message is handled on the loop).
 * Both drops happen on the loop thread, so the count needs no atomics.
 *
 * Shutdown follows h2o 2.2.5's own main.c (see ../shared/STYLE.md): stop
 * accepting, request shutdown, drain until connections reach zero or a
 * deadline passes; h2o_context_dispose asserts if anything is still linked,
 * so past the deadline we skip disposing.
 */
#include "api/server.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <stdarg.h>
#include <sched.h>
#include <stddef.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <h2o.h>

#include "api/jsonout.h"
#include "api/log.h"
#include "api/names.h"
#include "api/server_loop.h"
#include "api/workq.h"

#define SERVER_DEFAULT_MAX_BODY ((size_t)8 << 20)
#define SERVER_DRAIN_MS 3000
#define SERVER_MAX_PARAMS 8
/* distinct calls one loop turn may ask to run at its end (api_server_end_of_turn) */
#define SERVER_TURN_END_MAX 4
#define SERVER_MAX_SEGMENTS 16

/* One h2o timeout list per distinct duration (h2o 2.2.5 timeouts have a
 * fixed duration each); heap nodes because h2o links them by address. */
struct timeout_list {
    uint32_t ms;
    h2o_timeout_t to;
    struct timeout_list *next;
};

struct api_timer {
    h2o_timeout_entry_t entry; /* must stay first */
    struct api_server *s;
    void (*fn)(void *ud);
    void *ud;
};

struct route {
    char *method; /* NULL = any */
    char *pattern;
    char *segs[SERVER_MAX_SEGMENTS];
    size_t nsegs;
    api_handler_fn fn;
    void *ud;
};

struct api_server {
    h2o_globalconf_t config;
    h2o_context_t ctx;
    h2o_accept_ctx_t accept_ctx;
    h2o_evloop_t *loop;
    h2o_socket_t *listener;
    h2o_multithread_queue_t *queue;
    h2o_multithread_receiver_t receiver;
    size_t num_conns;
    uint64_t turn;
    volatile sig_atomic_t stop;
    size_t max_body;
    int cors;
    void (*on_stop)(void *);
    void *on_stop_ud;
    uint16_t port;
    char url[64];
    struct route *routes;
    size_t nroutes;
    api_handler_fn fallback;
    void *fallback_ud;
    h2o_linklist_t streams; /* streamed replies in progress (struct api_stream); loop thread only */
    struct timeout_list *timeouts;
    /* counters for /metrics: written by the loop thread, read by any (relaxed atomics) */
    uint64_t requests;
    uint64_t responses_by_class[6]; /* 1xx..5xx at [1..5] */
    /* Extra event loops (api_server_set_loops): the first server accepts
     * every connection and hands each to one of its loops in turn; each
     * extra loop is a server of its own on its own thread, with the first
     * one's routes. */
    int listen_fd;              /* the first server's listening socket (-1 for extra loops) */
    size_t want_loops;          /* the first server: how many loops api_server_run starts */
    void (*loop_exit)(void);    /* runs on each extra loop's thread as it ends */
    struct api_server **extra;  /* the first server: the extra loops' servers */
    pthread_t *extra_threads;
    size_t nextra;
    size_t next_loop;           /* the first server: round-robin cursor (its loop thread) */
    int is_extra;               /* an extra loop: its routes are the first server's, and it
                                 * disposes of its loop on its own thread */
    sem_t ready;                /* an extra loop: posted once set up, and again once drained */
    sem_t dispose;              /* an extra loop: posted by api_server_free */
    /* Spinning for a deferred reply (api_server_set_spin); loop thread
     * except `posted`, which any thread bumps before it posts a message. */
    int64_t spin_ns;
    size_t awaiting;    /* api_pending_soon replies the loop has not taken */
    uint64_t deferrals; /* api_pending_soon calls so far */
    uint64_t posted;
    /* api_server_end_of_turn: loop thread only */
    h2o_timeout_entry_t turn_end;
    struct {
        api_post_fn fn;
        void *arg;
    } turn_end_calls[SERVER_TURN_END_MAX];
    size_t nturn_end;
};

/* The server whose loop runs on this thread, if any. */
static __thread struct api_server *tl_loop;

static void count_response(struct api_server *s, int status)
{
    __atomic_fetch_add(&s->responses_by_class[status / 100], 1, __ATOMIC_RELAXED);
}

struct api_req {
    h2o_req_t *req;
    struct api_server *server;
    const char *param_names[SERVER_MAX_PARAMS];
    h2o_iovec_t param_values[SERVER_MAX_PARAMS];
    size_t nparams;
    int deferred;
};

struct api_pending {
    struct api_server *server;
    h2o_req_t *req; /* NULL once the request is gone */
    struct api_resp *resp;
    struct api_stream *stream; /* set on the loop once a streamed reply took over */
    h2o_socket_t *parked;      /* the HTTP/1 socket kept polled while deferred (see park_socket), or NULL */
    int refs;
    int finished;
    int awaited; /* counted in server->awaiting */
};

struct posted {
    h2o_multithread_message_t super; /* must stay first */
    int is_pending;
    api_post_fn fn;
    void *arg;
};

struct pending_link {
    struct api_pending *p;
};

/* ------------------------------------------------------------------ */
/* responses                                                          */

struct api_resp *api_resp_new(int status)
{
    struct api_resp *resp = malloc(sizeof(*resp));
    if (resp != NULL) {
        memset(resp, 0, offsetof(struct api_resp, inline_text));
        resp->status = status;
    }
    return resp;
}

/* A copy of S kept with RESP: in its inline text if it fits, else malloc'd. */
static char *resp_keep(struct api_resp *resp, const char *s)
{
    size_t n = strlen(s) + 1;
    if (n <= sizeof(resp->inline_text) - resp->inline_used) {
        char *at = resp->inline_text + resp->inline_used;
        memcpy(at, s, n);
        resp->inline_used += n;
        return at;
    }
    return strdup(s);
}

static void resp_drop(struct api_resp *resp, char *s)
{
    if (s != NULL && (s < resp->inline_text || s >= resp->inline_text + sizeof(resp->inline_text)))
        free(s);
}

void api_resp_free(struct api_resp *resp)
{
    if (resp == NULL)
        return;
    for (size_t i = 0; i < resp->nheaders; i++) {
        resp_drop(resp, resp->header_names[i]);
        resp_drop(resp, resp->header_values[i]);
    }
    resp_drop(resp, resp->content_type);
    free(resp->body);
    free(resp);
}

int api_resp_set_body(struct api_resp *resp, const char *content_type, const void *body, size_t len)
{
    char *b = malloc(len + 1);

    if (b == NULL)
        return API_ENOMEM;
    if (len > 0)
        memcpy(b, body, len);
    b[len] = '\0';
    if (api_resp_take_body(resp, content_type, b, len) != API_OK) {
        free(b);
        return API_ENOMEM;
    }
    return API_OK;
}

int api_resp_take_body(struct api_resp *resp, const char *content_type, char *body, size_t len)
{
    char *ct = resp->content_type != NULL && strcmp(resp->content_type, content_type) == 0 ? resp->content_type
                                                                                         : resp_keep(resp, content_type);
    if (ct == NULL)
        return API_ENOMEM;
    if (ct != resp->content_type)
        resp_drop(resp, resp->content_type);
    free(resp->body);
    resp->content_type = ct;
    resp->body = body;
    resp->body_len = len;
    return API_OK;
}

int api_resp_set_json(struct api_resp *resp, int status, json_t *doc)
{
    size_t len = 0;
    char *text;

    if (doc == NULL)
        return API_ENOMEM;
    text = api_json_encode(doc, &len);
    json_decref(doc);
    /* the encoded text becomes the body as it is: no copy */
    if (text == NULL || api_resp_take_body(resp, "application/json", text, len) != API_OK) {
        free(text);
        return API_ENOMEM;
    }
    resp->status = status;
    return API_OK;
}

json_t *api_error_json(const struct api_err *err)
{
    return json_pack("{s:{s:s,s:s}}", "error", "code", api_err_json_code(err->code), "message",
                     err->msg[0] ? err->msg : api_err_json_code(err->code));
}

int api_resp_set_error(struct api_resp *resp, const struct api_err *err)
{
    return api_resp_set_json(resp, api_err_http_status(err->code), api_error_json(err));
}

struct api_resp *api_resp_error(const struct api_err *err)
{
    struct api_resp *resp = api_resp_new(500);
    if (resp != NULL && api_resp_set_error(resp, err) != API_OK) {
        api_resp_free(resp);
        return NULL;
    }
    return resp;
}

void api_resp_add_header(struct api_resp *resp, const char *name, const char *value)
{
    if (resp->nheaders >= API_RESP_MAX_HEADERS)
        return;
    char *n = resp_keep(resp, name), *v = resp_keep(resp, value);
    if (n == NULL || v == NULL) {
        resp_drop(resp, n);
        resp_drop(resp, v);
        return;
    }
    resp->header_names[resp->nheaders] = n;
    resp->header_values[resp->nheaders] = v;
    resp->nheaders++;
}

/* ------------------------------------------------------------------ */
/* sending                                                            */

static const char *reason_phrase(int status)
{
    switch (status) {
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 409: return "Conflict";
    case 410: return "Gone";
    case 413: return "Payload Too Large";
    case 415: return "Unsupported Media Type";
    case 429: return "Too Many Requests";
    case 500: return "Internal Server Error";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 508: return "Loop Detected";
    default: return "Status";
    }
}

static void add_cors(h2o_req_t *req)
{
    h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("access-control-allow-origin"), 0, NULL,
                          H2O_STRLIT("*"));
    h2o_add_header_by_str(&req->pool, &req->res.headers, H2O_STRLIT("access-control-expose-headers"), 0, NULL,
                          H2O_STRLIT("shoal-txid, fly-replay, fly-replay-src"));
}

/* Sends RESP on REQ (loop thread). Copies everything into the pool. */
static void send_resp(struct api_server *s, h2o_req_t *req, const struct api_resp *resp)
{
    static h2o_generator_t generator = {NULL, NULL};
    h2o_iovec_t body = h2o_iovec_init("", 0);
    int status = resp->status;

    if (status < 100 || status > 599)
        status = 500;
    count_response(s, status);
    req->res.status = status;
    req->res.reason = reason_phrase(status);
    if (resp->content_type != NULL) {
        h2o_iovec_t ct = h2o_strdup(&req->pool, resp->content_type, SIZE_MAX);
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, ct.base, ct.len);
    }
    for (size_t i = 0; i < resp->nheaders; i++) {
        h2o_iovec_t n = h2o_strdup(&req->pool, resp->header_names[i], SIZE_MAX);
        h2o_iovec_t v = h2o_strdup(&req->pool, resp->header_values[i], SIZE_MAX);
        h2o_add_header_by_str(&req->pool, &req->res.headers, n.base, n.len, 1, NULL, v.base, v.len);
    }
    if (s->cors)
        add_cors(req);
    if (resp->body_len > 0) {
        body.base = h2o_mem_alloc_pool(&req->pool, resp->body_len);
        memcpy(body.base, resp->body, resp->body_len);
        body.len = resp->body_len;
    }
    req->res.content_length = body.len;
    h2o_start_response(req, &generator);
    h2o_send(req, &body, body.len ? 1 : 0, H2O_SEND_STATE_FINAL);
}

void api_reply_resp(struct api_req *r, struct api_resp *resp)
{
    if (resp == NULL) {
        static const struct api_resp oom = {.status = 500};
        send_resp(r->server, r->req, &oom);
        return;
    }
    send_resp(r->server, r->req, resp);
    api_resp_free(resp);
}

void api_reply_text(struct api_req *r, int status, const char *content_type, const char *body, size_t len)
{
    struct api_resp *resp = api_resp_new(status);
    if (resp != NULL && api_resp_set_body(resp, content_type, body, len) != API_OK) {
        api_resp_free(resp);
        resp = NULL;
    }
    api_reply_resp(r, resp);
}

void api_reply_empty(struct api_req *r, int status)
{
    api_reply_resp(r, api_resp_new(status));
}

void api_reply_json(struct api_req *r, int status, json_t *doc)
{
    struct api_resp *resp = api_resp_new(status);
    if (resp == NULL) {
        json_decref(doc);
    } else if (api_resp_set_json(resp, status, doc) != API_OK) {
        api_resp_free(resp);
        resp = NULL;
    }
    api_reply_resp(r, resp);
}

void api_reply_error(struct api_req *r, const struct api_err *err)
{
    api_reply_resp(r, api_resp_error(err));
}

int api_reply_errorf(struct api_req *r, int code, const char *fmt, ...)
{
    struct api_err err;
    va_list ap;

    err.code = code;
    va_start(ap, fmt);
    vsnprintf(err.msg, sizeof(err.msg), fmt, ap);
    va_end(ap);
    api_reply_error(r, &err);
    return code;
}

/* ------------------------------------------------------------------ */
/* deferred replies                                                   */

/* Loop thread: P's reply (or its end) has reached the loop. */
static void pending_arrived(struct api_pending *p)
{
    if (p->awaited) {
        p->awaited = 0;
        p->server->awaiting--;
    }
}

static void pending_release(struct api_pending *p)
{
    if (--p->refs == 0) {
        api_resp_free(p->resp);
        free(p);
    }
}

static void stream_req_gone(struct api_stream *st);

static void on_req_pool_dispose(void *arg)
{
    struct pending_link *link = arg;
    pending_arrived(link->p);
    link->p->req = NULL;
    link->p->parked = NULL; /* the connection is closing: its socket goes with it */
    if (link->p->stream != NULL) {
        stream_req_gone(link->p->stream);
        link->p->stream = NULL;
    }
    pending_release(link->p);
}

/*
 * Parking the socket of a deferred HTTP/1 request (h2o 2.2.5).
 *
 * h2o's HTTP/1 server stops reading a connection before it calls the
 * handler and starts again once the response is written
 * (lib/http1.c: handle_incoming_request, on_send_complete). For a reply in
 * the same loop turn the two cancel out before the loop looks at them; for
 * a deferred one (a worker, or the router's upstream answer) the loop turn
 * in between sees "not reading" and the next one "reading": an epoll_ctl
 * DEL and an ADD per request, a third of the router's syscalls for a
 * proxied read.
 *
 * So while a request is deferred its socket stays polled for reading, with
 * h2o_socket_dont_read() set so that the event loop never reads into the
 * input buffer the request's headers and body point into, and with a read
 * callback that only stops reading: data (a pipelined request) or EOF
 * arriving meanwhile costs the epoll change h2o would have made anyway,
 * and everything else is left for h2o to find when it reads again, as
 * before. Before the reply the socket goes back as h2o left it (reading
 * stopped, reads allowed); h2o starts reading again after writing the
 * response, in the same loop turn, so the epoll registration never
 * changes. HTTP/2 reads its connection all along: not parked.
 *
 * Loop thread only.
 */
static void on_parked_read(h2o_socket_t *sock, const char *err)
{
    (void)err;
    h2o_socket_read_stop(sock);
}

static void park_socket(struct api_pending *p, h2o_req_t *req)
{
    h2o_socket_t *sock;
    if (req->version >= 0x200 || req->conn->callbacks->get_socket == NULL ||
        (sock = req->conn->callbacks->get_socket(req->conn)) == NULL || sock->ssl != NULL)
        return;
    h2o_socket_dont_read(sock, 1);
    h2o_socket_read_start(sock, on_parked_read);
    p->parked = sock;
}

/* Hands P's socket back to h2o as h2o left it; before anything is sent. */
static void unpark_socket(struct api_pending *p)
{
    if (p->parked == NULL)
        return;
    h2o_socket_read_stop(p->parked);
    h2o_socket_dont_read(p->parked, 0);
    p->parked = NULL;
}

struct api_pending *api_req_defer(struct api_req *r)
{
    struct api_pending *p = calloc(1, sizeof(*p));
    struct pending_link *link;

    if (p == NULL)
        h2o_fatal("out of memory");
    p->server = r->server;
    p->req = r->req;
    p->refs = 2;
    link = h2o_mem_alloc_shared(&r->req->pool, sizeof(*link), on_req_pool_dispose);
    link->p = p;
    r->deferred = 1;
    park_socket(p, r->req);
    return p;
}

void api_pending_soon(struct api_pending *p)
{
    if (p->awaited || p->finished || p->req == NULL)
        return;
    p->awaited = 1;
    p->server->awaiting++;
    p->server->deferrals++;
}

static __thread int tl_pending_direct;

void api_pending_direct(int on)
{
    tl_pending_direct = on;
}

uint64_t api_server_turn(const struct api_server *s)
{
    return tl_loop != NULL ? tl_loop->turn : s->turn;
}

void api_pending_finish(struct api_pending *p, struct api_resp *resp)
{
    if (tl_pending_direct) {
        api_pending_reply(p, resp);
        return;
    }
    struct posted *m = calloc(1, sizeof(*m));

    if (m == NULL)
        h2o_fatal("out of memory");
    p->resp = resp;
    m->is_pending = 1;
    m->arg = p;
    __atomic_fetch_add(&p->server->posted, 1, __ATOMIC_RELEASE);
    h2o_multithread_send_message(&p->server->receiver, &m->super);
}

void api_pending_reply(struct api_pending *p, struct api_resp *resp)
{
    pending_arrived(p);
    if (p->req != NULL && !p->finished) {
        p->finished = 1;
        unpark_socket(p);
        if (resp == NULL) {
            static const struct api_resp oom = {.status = 500};
            send_resp(p->server, p->req, &oom);
        } else {
            send_resp(p->server, p->req, resp);
        }
    }
    api_resp_free(resp);
    pending_release(p);
}

static void free_body_ref(void *arg)
{
    free(*(char **)arg);
}

void api_pending_reply_parts(struct api_pending *p, int status, const char *content_type, size_t ct_len,
                             const struct api_hdr_view *headers, size_t n, char *body, size_t len)
{
    static h2o_generator_t generator = {NULL, NULL};
    h2o_req_t *req = p->req;
    struct api_server *s = p->server;

    pending_arrived(p);
    if (req == NULL || p->finished) {
        free(body);
        pending_release(p);
        return;
    }
    p->finished = 1;
    unpark_socket(p);
    /* the body lives as long as the request's pool: freed with it */
    char **ref = h2o_mem_alloc_shared(&req->pool, sizeof(*ref), free_body_ref);
    *ref = body;
    if (status < 100 || status > 599)
        status = 500;
    count_response(s, status);
    req->res.status = status;
    req->res.reason = reason_phrase(status);
    if (content_type != NULL) {
        h2o_iovec_t ct = h2o_strdup(&req->pool, content_type, ct_len);
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, ct.base, ct.len);
    }
    for (size_t i = 0; i < n; i++) {
        h2o_iovec_t nm = h2o_strdup(&req->pool, headers[i].name, headers[i].name_len);
        h2o_iovec_t v = h2o_strdup(&req->pool, headers[i].value, headers[i].value_len);
        h2o_add_header_by_str(&req->pool, &req->res.headers, nm.base, nm.len, 1, NULL, v.base, v.len);
    }
    if (s->cors)
        add_cors(req);
    h2o_iovec_t b = h2o_iovec_init(body != NULL ? body : "", body != NULL ? len : 0);
    req->res.content_length = b.len;
    h2o_start_response(req, &generator);
    h2o_send(req, &b, b.len ? 1 : 0, H2O_SEND_STATE_FINAL);
    pending_release(p);
}

int api_pending_gone(const struct api_pending *p)
{
    return p->req == NULL;
}

/* ------------------------------------------------------------------ */
/* the end of a turn                                                  */

/* The zero-length timeout fires in the same h2o_evloop_run that handled
 * the turn's requests, after them (h2o runs timeouts after the sockets'
 * callbacks), or, linked later in that run, at the start of the next one,
 * which then does not wait (h2o waits no longer than its nearest timeout). */
static void on_turn_end(h2o_timeout_entry_t *entry)
{
    struct api_server *s = H2O_STRUCT_FROM_MEMBER(struct api_server, turn_end, entry);
    size_t n = s->nturn_end;
    api_post_fn fns[SERVER_TURN_END_MAX];
    void *args[SERVER_TURN_END_MAX];

    /* taken first: a call may ask again, for what reaches it meanwhile */
    for (size_t i = 0; i < n; i++) {
        fns[i] = s->turn_end_calls[i].fn;
        args[i] = s->turn_end_calls[i].arg;
    }
    s->nturn_end = 0;
    for (size_t i = 0; i < n; i++)
        fns[i](args[i]);
}

void api_server_end_of_turn(struct api_req *r, api_post_fn fn, void *arg)
{
    struct api_server *s = r->server;

    for (size_t i = 0; i < s->nturn_end; i++)
        if (s->turn_end_calls[i].fn == fn && s->turn_end_calls[i].arg == arg)
            return;
    if (s->nturn_end == SERVER_TURN_END_MAX)
        h2o_fatal("api_server_end_of_turn: more than SERVER_TURN_END_MAX calls in one turn");
    if (!h2o_timeout_is_linked(&s->turn_end)) {
        h2o_timeout_t *now = api_server_timeout(s, 0);
        if (now == NULL)
            h2o_fatal("out of memory");
        h2o_timeout_link(s->loop, now, &s->turn_end);
    }
    s->turn_end_calls[s->nturn_end].fn = fn;
    s->turn_end_calls[s->nturn_end].arg = arg;
    s->nturn_end++;
}

/* ------------------------------------------------------------------ */
/* timers                                                             */

h2o_evloop_t *api_server_evloop(struct api_server *s)
{
    return s->loop;
}

h2o_timeout_t *api_server_timeout(struct api_server *s, uint32_t ms)
{
    struct timeout_list *t;
    for (t = s->timeouts; t != NULL; t = t->next)
        if (t->ms == ms)
            return &t->to;
    if ((t = calloc(1, sizeof(*t))) == NULL)
        return NULL;
    t->ms = ms;
    h2o_timeout_init(s->loop, &t->to, ms);
    t->next = s->timeouts;
    s->timeouts = t;
    return &t->to;
}

static void on_timer(h2o_timeout_entry_t *entry)
{
    struct api_timer *t = (struct api_timer *)entry;
    t->fn(t->ud);
}

struct api_timer *api_timer_new(struct api_server *s, void (*fn)(void *ud), void *ud)
{
    struct api_timer *t = calloc(1, sizeof(*t));
    if (t == NULL)
        return NULL;
    t->entry.cb = on_timer;
    t->s = s;
    t->fn = fn;
    t->ud = ud;
    return t;
}

void api_timer_start(struct api_timer *t, uint32_t ms)
{
    h2o_timeout_t *to = api_server_timeout(t->s, ms);
    if (to == NULL)
        h2o_fatal("out of memory");
    if (h2o_timeout_is_linked(&t->entry))
        h2o_timeout_unlink(&t->entry);
    h2o_timeout_link(t->s->loop, to, &t->entry);
}

void api_timer_stop(struct api_timer *t)
{
    if (h2o_timeout_is_linked(&t->entry))
        h2o_timeout_unlink(&t->entry);
}

int api_timer_armed(const struct api_timer *t)
{
    return h2o_timeout_is_linked((h2o_timeout_entry_t *)&t->entry);
}

void api_timer_free(struct api_timer *t)
{
    if (t == NULL)
        return;
    api_timer_stop(t);
    free(t);
}

void api_server_post(struct api_server *s, api_post_fn fn, void *arg)
{
    struct posted *m = calloc(1, sizeof(*m));
    if (m == NULL)
        h2o_fatal("out of memory");
    m->is_pending = 0;
    m->fn = fn;
    m->arg = arg;
    __atomic_fetch_add(&s->posted, 1, __ATOMIC_RELEASE);
    h2o_multithread_send_message(&s->receiver, &m->super);
}

/* Both kinds of cross-thread message (posted functions and finished
 * deferred replies) arrive as `struct posted`, told apart by is_pending. */
static void on_messages(h2o_multithread_receiver_t *receiver, h2o_linklist_t *messages);

/* ------------------------------------------------------------------ */
/* routing                                                            */

static size_t split_segments(char *path, char **segs, size_t max)
{
    size_t n = 0;
    char *p = path;

    if (*p == '/')
        p++;
    while (n < max) {
        segs[n++] = p;
        char *slash = strchr(p, '/');
        if (slash == NULL)
            break;
        *slash = '\0';
        p = slash + 1;
    }
    return n;
}

int api_server_route(struct api_server *s, const char *method, const char *pattern, api_handler_fn fn, void *ud)
{
    struct route *nr = realloc(s->routes, (s->nroutes + 1) * sizeof(*nr));
    struct route *r;

    if (nr == NULL)
        return API_ENOMEM;
    s->routes = nr;
    r = &s->routes[s->nroutes];
    memset(r, 0, sizeof(*r));
    r->method = method ? strdup(method) : NULL;
    r->pattern = strdup(pattern);
    if (r->pattern == NULL || (method != NULL && r->method == NULL)) {
        free(r->method);
        free(r->pattern);
        return API_ENOMEM;
    }
    r->nsegs = split_segments(r->pattern, r->segs, SERVER_MAX_SEGMENTS);
    r->fn = fn;
    r->ud = ud;
    s->nroutes++;
    return API_OK;
}

void api_server_fallback(struct api_server *s, api_handler_fn fn, void *ud)
{
    s->fallback = fn;
    s->fallback_ud = ud;
}

/* Matches PATH (raw, no query) against R, capturing params into AR.
 * Returns 1 on match. */
static int route_match(const struct route *r, h2o_iovec_t path, struct api_req *ar)
{
    size_t seg = 0, pos = 0;

    if (path.len == 0 || path.base[0] != '/')
        return 0;
    pos = 1;
    ar->nparams = 0;
    for (;;) {
        size_t end = pos;
        while (end < path.len && path.base[end] != '/')
            end++;
        if (seg >= r->nsegs)
            return 0;
        const char *pat = r->segs[seg];
        size_t plen = strlen(pat);
        if (plen >= 2 && pat[0] == '{' && pat[plen - 1] == '}') {
            if (ar->nparams >= SERVER_MAX_PARAMS)
                return 0;
            ar->param_names[ar->nparams] = pat;
            ar->param_values[ar->nparams] = h2o_iovec_init(path.base + pos, end - pos);
            ar->nparams++;
        } else if (plen != end - pos || memcmp(pat, path.base + pos, plen) != 0) {
            return 0;
        }
        seg++;
        if (end >= path.len)
            break;
        pos = end + 1;
    }
    return seg == r->nsegs;
}

static h2o_iovec_t req_path_only(const h2o_req_t *req)
{
    h2o_iovec_t p = req->path;
    if (req->query_at != SIZE_MAX)
        p.len = req->query_at;
    return p;
}

static int on_req(h2o_handler_t *self, h2o_req_t *req)
{
    struct api_server *s = *(struct api_server **)(self + 1);
    struct api_req *ar = h2o_mem_alloc_pool(&req->pool, sizeof(*ar));
    h2o_iovec_t path = req_path_only(req);
    int method_mismatch = 0;

    memset(ar, 0, sizeof(*ar));
    ar->req = req;
    ar->server = s;
    __atomic_fetch_add(&s->requests, 1, __ATOMIC_RELAXED);

    if (s->cors && h2o_memis(req->method.base, req->method.len, H2O_STRLIT("OPTIONS"))) {
        struct api_resp *resp = api_resp_new(204);
        if (resp != NULL) {
            api_resp_add_header(resp, "access-control-allow-methods", "GET, POST, OPTIONS");
            api_resp_add_header(resp, "access-control-allow-headers",
                                "authorization, content-type, shoal-min-txid, shoal-consistency, shoal-tenant");
            api_resp_add_header(resp, "access-control-max-age", "86400");
        }
        api_reply_resp(ar, resp);
        return 0;
    }
    if (req->entity.base != NULL && req->entity.len > s->max_body) {
        api_reply_errorf(ar, API_ETOOLARGE, "request body of %zu bytes is over the limit of %zu bytes", req->entity.len,
                         s->max_body);
        return 0;
    }
    for (size_t i = 0; i < s->nroutes; i++) {
        struct route *r = &s->routes[i];
        if (!route_match(r, path, ar))
            continue;
        if (r->method != NULL && !h2o_memis(req->method.base, req->method.len, r->method, strlen(r->method)) &&
            !(strcmp(r->method, "GET") == 0 && h2o_memis(req->method.base, req->method.len, H2O_STRLIT("HEAD")))) {
            method_mismatch = 1;
            continue;
        }
        r->fn(ar, r->ud);
        return 0;
    }
    ar->nparams = 0;
    if (method_mismatch) {
        api_reply_errorf(ar, API_EMETHOD, "method %.*s is not allowed on %.*s", (int)req->method.len,
                         req->method.base, (int)(path.len > 200 ? 200 : path.len), path.base);
        return 0;
    }
    if (s->fallback != NULL) {
        s->fallback(ar, s->fallback_ud);
        return 0;
    }
    api_reply_errorf(ar, API_ENOTFOUND, "no such endpoint: %.*s", (int)(path.len > 200 ? 200 : path.len), path.base);
    return 0;
}

/* ------------------------------------------------------------------ */
/* accessors                                                          */

const char *api_req_method(const struct api_req *r, size_t *len)
{
    *len = r->req->method.len;
    return r->req->method.base;
}

const char *api_req_path(const struct api_req *r, size_t *len)
{
    h2o_iovec_t p = req_path_only(r->req);
    *len = p.len;
    return p.base;
}

const char *api_req_target(const struct api_req *r, size_t *len)
{
    *len = r->req->path.len;
    return r->req->path.base;
}

const char *api_req_param(const struct api_req *r, const char *name, size_t *len)
{
    size_t nlen = strlen(name);
    for (size_t i = 0; i < r->nparams; i++) {
        const char *pn = r->param_names[i];
        if (strlen(pn) == nlen + 2 && memcmp(pn + 1, name, nlen) == 0) {
            *len = r->param_values[i].len;
            return r->param_values[i].base;
        }
    }
    *len = 0;
    return NULL;
}

int api_req_query(const struct api_req *r, const char *name, char *out, size_t cap)
{
    const h2o_req_t *req = r->req;
    size_t nlen = strlen(name);

    if (req->query_at == SIZE_MAX)
        return 0;
    const char *q = req->path.base + req->query_at + 1, *end = req->path.base + req->path.len;
    while (q < end) {
        const char *amp = memchr(q, '&', (size_t)(end - q));
        const char *pe = amp ? amp : end;
        const char *eq = memchr(q, '=', (size_t)(pe - q));
        const char *ke = eq ? eq : pe;
        if ((size_t)(ke - q) == nlen && memcmp(q, name, nlen) == 0) {
            size_t o = 0;
            for (const char *v = eq ? eq + 1 : pe; v < pe; v++) {
                int c = (unsigned char)*v;
                if (c == '+') {
                    c = ' ';
                } else if (c == '%') {
                    int hi, lo;
                    if (pe - v < 3 || (hi = api_hex_digit(v[1])) < 0 || (lo = api_hex_digit(v[2])) < 0)
                        return -1;
                    c = hi * 16 + lo;
                    v += 2;
                }
                if (o + 1 >= cap)
                    return -1;
                out[o++] = (char)c;
            }
            out[o] = '\0';
            return 1;
        }
        q = pe + 1;
    }
    return 0;
}

const char *api_req_header(const struct api_req *r, const char *name, size_t *len)
{
    ssize_t i = h2o_find_header_by_str(&r->req->headers, name, strlen(name), -1);
    if (i == -1) {
        if (len != NULL)
            *len = 0;
        return NULL;
    }
    if (len != NULL)
        *len = r->req->headers.entries[i].value.len;
    return r->req->headers.entries[i].value.base;
}

int api_req_header_at(const struct api_req *r, size_t i, const char **name, size_t *nlen, const char **value,
                      size_t *vlen)
{
    if (i >= r->req->headers.size)
        return 0;
    const h2o_header_t *h = &r->req->headers.entries[i];
    *name = h->name->base;
    *nlen = h->name->len;
    *value = h->value.base;
    *vlen = h->value.len;
    return 1;
}

const void *api_req_body(const struct api_req *r, size_t *len)
{
    if (r->req->entity.base == NULL) {
        *len = 0;
        return "";
    }
    *len = r->req->entity.len;
    return r->req->entity.base;
}

int api_req_json_object(const struct api_req *r, json_t **out, struct api_err *err)
{
    size_t len;
    const char *body = api_req_body(r, &len);
    json_error_t jerr;
    json_t *doc;

    if (len == 0)
        return api_err_set(err, API_EBADJSON, "request body is empty; a JSON object is required");
    doc = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
    if (doc == NULL)
        return api_err_set(err, API_EBADJSON, "request body is not valid JSON: %s at line %d column %d", jerr.text,
                           jerr.line, jerr.column);
    if (!json_is_object(doc)) {
        json_decref(doc);
        return api_err_set(err, API_EBADJSON, "request body must be a JSON object");
    }
    *out = doc;
    return API_OK;
}

void api_req_peer(const struct api_req *r, char *out, size_t cap)
{
    struct sockaddr_storage ss;
    socklen_t len = r->req->conn->callbacks->get_peername(r->req->conn, (struct sockaddr *)&ss);

    snprintf(out, cap, "unknown");
    if (len == 0)
        return;
    if (ss.ss_family == AF_INET)
        inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, out, (socklen_t)cap);
    else if (ss.ss_family == AF_INET6)
        inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&ss)->sin6_addr, out, (socklen_t)cap);
}

struct api_server *api_req_server(const struct api_req *r)
{
    return r->server;
}

/* ------------------------------------------------------------------ */
/* messages from other threads                                        */

static void on_messages(h2o_multithread_receiver_t *receiver, h2o_linklist_t *messages)
{
    (void)receiver;
    while (!h2o_linklist_is_empty(messages)) {
        h2o_multithread_message_t *m = H2O_STRUCT_FROM_MEMBER(h2o_multithread_message_t, link, messages->next);
        h2o_linklist_unlink(&m->link);
        struct posted *posted = (struct posted *)m;
        if (posted->is_pending) {
            struct api_pending *p = posted->arg;
            struct api_resp *resp = p->resp;
            free(posted);
            p->resp = NULL;
            api_pending_reply(p, resp); /* sends it if the client is still there, frees it, drops our ref */
        } else {
            posted->fn(posted->arg);
            free(posted);
        }
    }
}

/* ------------------------------------------------------------------ */
/* lifecycle                                                          */

static void on_conn_close(void *data)
{
    struct api_server *s = data;
    --s->num_conns;
}

static void serve_conn(struct api_server *s, h2o_socket_t *sock)
{
    ++s->num_conns;
    sock->on_close.cb = on_conn_close;
    sock->on_close.data = s;
    h2o_accept(&s->accept_ctx, sock);
}

struct handoff {
    struct api_server *s;
    int fd;
};

/* On an extra loop's thread: serve a connection the first loop accepted. */
static void adopt_conn(void *arg)
{
    struct handoff *h = arg;
    if (h->s->stop) /* draining: it was never read from */
        close(h->fd);
    else
        serve_conn(h->s, h2o_evloop_socket_create(h->s->loop, h->fd, H2O_SOCKET_FLAG_IS_ACCEPTED_CONNECTION));
    free(h);
}

static void on_accept(h2o_socket_t *listener, const char *err)
{
    struct api_server *s = listener->data;
    h2o_socket_t *sock;

    if (err != NULL)
        return;
    if (s->nextra == 0) {
        if ((sock = h2o_evloop_socket_accept(listener)) != NULL)
            serve_conn(s, sock);
        return;
    }
    /* Connections go to the loops in turn: keep-alive clients stay on the
     * loop they landed on, so this spreads them evenly. */
    int fd = accept4(s->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC), on = 1;
    if (fd < 0)
        return;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof(on));
    size_t i = s->next_loop++ % (s->nextra + 1);
    struct handoff *h;
    if (i == 0 || (h = malloc(sizeof(*h))) == NULL) {
        serve_conn(s, h2o_evloop_socket_create(s->loop, fd, H2O_SOCKET_FLAG_IS_ACCEPTED_CONNECTION));
        return;
    }
    h->s = s->extra[i - 1];
    h->fd = fd;
    api_server_post(h->s, adopt_conn, h);
}

static int parse_listen(const char *listen, struct sockaddr_in *addr, struct api_err *err)
{
    char host[64];
    const char *colon = strrchr(listen, ':');
    char *end;
    long port;

    if (colon == NULL || (size_t)(colon - listen) >= sizeof(host))
        return api_err_set(err, API_EINVAL, "listen address '%s' is not HOST:PORT", listen);
    memcpy(host, listen, (size_t)(colon - listen));
    host[colon - listen] = '\0';
    port = strtol(colon + 1, &end, 10);
    if (*end != '\0' || port < 0 || port > 65535 || end == colon + 1)
        return api_err_set(err, API_EINVAL, "listen address '%s' has a bad port", listen);
    memset(addr, 0, sizeof(*addr));
    addr->sin_family = AF_INET;
    addr->sin_port = htons((uint16_t)port);
    if (strcmp(host, "localhost") == 0)
        strcpy(host, "127.0.0.1");
    if (inet_pton(AF_INET, host, &addr->sin_addr) != 1)
        return api_err_set(err, API_EINVAL, "listen address '%s': '%s' is not an IPv4 address", listen, host);
    return API_OK;
}

/* S's h2o configuration, context, event loop and message queue. */
static void loop_init(struct api_server *s)
{
    h2o_hostconf_t *host;
    h2o_pathconf_t *path;
    h2o_handler_t *handler;

    h2o_config_init(&s->config);
    /* h2o buffers the whole body before the handler and defaults to 1 GiB. */
    s->config.max_request_entity_size = s->max_body;
    host = h2o_config_register_host(&s->config, h2o_iovec_init(H2O_STRLIT("default")), 65535);
    path = h2o_config_register_path(host, "/", 0);
    handler = h2o_create_handler(path, sizeof(*handler) + sizeof(struct api_server *));
    *(struct api_server **)(handler + 1) = s;
    handler->on_req = on_req;

    s->loop = h2o_evloop_create();
    h2o_context_init(&s->ctx, s->loop, &s->config);
    s->accept_ctx.ctx = &s->ctx;
    s->accept_ctx.hosts = s->config.hosts;
    h2o_linklist_init_anchor(&s->streams);
    s->queue = h2o_multithread_create_queue(s->loop);
    h2o_multithread_register_receiver(s->queue, &s->receiver, on_messages);
    s->turn_end.cb = on_turn_end;
}

int api_server_new(const struct api_server_config *cfg, struct api_server **out, struct api_err *err)
{
    struct api_server *s;
    struct sockaddr_in addr;
    socklen_t alen = sizeof(addr);
    int fd, on = 1, rc;

    if ((rc = parse_listen(cfg->listen ? cfg->listen : "127.0.0.1:0", &addr, err)) != API_OK)
        return rc;
    if ((fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) == -1)
        return api_err_set(err, API_EIO, "socket: %s", strerror(errno));
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on)) != 0 ||
        bind(fd, (struct sockaddr *)&addr, sizeof(addr)) != 0 || listen(fd, SOMAXCONN) != 0 ||
        getsockname(fd, (struct sockaddr *)&addr, &alen) != 0) {
        rc = api_err_set(err, API_EIO, "listen on %s: %s", cfg->listen, strerror(errno));
        close(fd);
        return rc;
    }
    if ((s = calloc(1, sizeof(*s))) == NULL) {
        close(fd);
        return api_err_set(err, API_ENOMEM, "out of memory");
    }
    s->max_body = cfg->max_body ? cfg->max_body : SERVER_DEFAULT_MAX_BODY;
    s->cors = cfg->cors;
    s->port = ntohs(addr.sin_port);
    {
        char ip[INET_ADDRSTRLEN];
        inet_ntop(AF_INET, &addr.sin_addr, ip, sizeof(ip));
        snprintf(s->url, sizeof(s->url), "http://%s:%u", ip, s->port);
    }

    loop_init(s);
    s->listen_fd = fd;
    s->want_loops = 1;
    s->listener = h2o_evloop_socket_create(s->loop, fd, H2O_SOCKET_FLAG_DONT_READ);
    s->listener->data = s;
    h2o_socket_read_start(s->listener, on_accept);
    *out = s;
    return API_OK;
}

uint16_t api_server_port(const struct api_server *s)
{
    return s->port;
}

const char *api_server_url(const struct api_server *s)
{
    return s->url;
}

void api_server_stop(struct api_server *s)
{
    s->stop = 1;
}

void api_server_on_stop(struct api_server *s, void (*fn)(void *), void *ud)
{
    s->on_stop = fn;
    s->on_stop_ud = ud;
}

static void streams_stop_all(struct api_server *s);

void api_server_set_spin(struct api_server *s, int64_t spin_us)
{
    s->spin_ns = spin_us > 0 ? spin_us * 1000 : 0;
}

void api_server_set_loops(struct api_server *s, size_t n, void (*loop_exit)(void))
{
    s->want_loops = n == 0 ? 1 : n;
    s->loop_exit = loop_exit;
}

/* How long one spin waits on `posted` before the loop polls its sockets. */
#define SPIN_POLL_NS 10000

/*
 * Why a loop spins (api_server_set_spin): a request handed to a worker
 * comes back as a message whose pipe write wakes the loop from epoll_wait.
 * On a VM an idle vCPU halts, and waking it goes through the host's
 * scheduler. Measured on this project's 2-core VM with the databases on
 * tmpfs (no disk wait): one-connection inserts ran at 2.0-3.7k/s with
 * sleeping threads and 7.8-9.9k/s with a spinning loop and worker, so each
 * of the two wake-ups per write (to the worker and back) cost 100-200 us
 * against ~10 us of work. A loop with exactly one such reply
 * (api_pending_soon) outstanding and nothing else to do therefore watches
 * its message counter for a bounded time, polling its sockets every
 * SPIN_POLL_NS, before it sleeps. With more than one reply outstanding the
 * loop is busy enough that replies find it awake, and spinning would only
 * take CPU from the workers (16-connection inserts lost a third when
 * loops spun for any number of replies).
 */
/*
 * Why a loop also polls after serving (IDLE_POLL_NS, on whenever it may
 * spin): a client that waits for each reply sends its next request one
 * round trip after the reply, tens of µs, and a loop that sleeps in
 * epoll_wait meanwhile pays a VM wake-up for each. Measured over 1,000
 * tenants on this project's 2-core VM, point reads in place: one
 * connection 9.4-10.7k/s sleeping, 15-26k/s polling 15-60 µs (30: 20-26k);
 * 16 and 64 connections 55-75k/s either way (the noise of this VM). A loop
 * that has received no request and sent no reply for IDLE_POLL_NS sleeps
 * as before (a reply counts: a proxy's comes after its request, when an
 * instance answers; the router, one connection: 7.3k -> 16.0k reads/s,
 * p50 0.128 -> 0.043 ms). Between polls it yields its CPU: a thread that
 * is runnable there (the client on the same host, the other loop's
 * worker) runs, and a loop that polls takes nothing from it. Measured with the load generator on the same 2 cores:
 * 16 connections reading one tenant 59-66k/s without the yield, 81-98k/s
 * with it (64: 67-75k -> 95-101k; 1,000 tenants within the noise).
 */
#define IDLE_POLL_NS 30000

static void spin_for_reply(struct api_server *s, int64_t until)
{
    uint64_t seen = __atomic_load_n(&s->posted, __ATOMIC_ACQUIRE);
    int64_t now = api_now_ns(), stop = now + SPIN_POLL_NS < until ? now + SPIN_POLL_NS : until;
    for (unsigned n = 1; __atomic_load_n(&s->posted, __ATOMIC_ACQUIRE) == seen; n++) {
        api_cpu_relax();
        if (n % 32 == 0 && api_now_ns() >= stop)
            break;
    }
}

/* Requests received plus replies sent on S's loop: the idle poll starts
 * again when either moves (a proxy's reply comes after its request). */
static uint64_t requests_and_replies(const struct api_server *s)
{
    uint64_t n = __atomic_load_n(&s->requests, __ATOMIC_RELAXED);
    for (int c = 1; c <= 5; c++)
        n += __atomic_load_n(&s->responses_by_class[c], __ATOMIC_RELAXED);
    return n;
}

static void loop_until_stopped(struct api_server *s)
{
    uint64_t spun_for = 0; /* the value of deferrals when the current spin began */
    int64_t spin_until = 0;
    int64_t idle_poll_ns = s->spin_ns < IDLE_POLL_NS ? s->spin_ns : IDLE_POLL_NS;
    uint64_t polled_after = 0; /* requests_and_replies when the current poll began */
    int64_t poll_until = 0;
    while (!s->stop) {
        s->turn++;
        if (s->spin_ns > 0 && s->awaiting == 1) {
            if (spun_for != s->deferrals) {
                spun_for = s->deferrals;
                spin_until = api_now_ns() + s->spin_ns;
            }
            if (api_now_ns() < spin_until) {
                spin_for_reply(s, spin_until);
                h2o_evloop_run(s->loop, 0);
                continue;
            }
        }
        if (idle_poll_ns > 0) {
            uint64_t served = requests_and_replies(s);
            if (served != polled_after) {
                polled_after = served;
                poll_until = api_now_ns() + idle_poll_ns;
            }
            if (api_now_ns() < poll_until) {
                sched_yield();
                h2o_evloop_run(s->loop, 0);
                continue;
            }
        }
        if (h2o_evloop_run(s->loop, 100) != 0 && errno != EINTR) {
            log_error("event loop failed: %s", strerror(errno));
            break;
        }
    }
}

static void drain(struct api_server *s);
static void dispose_loop(struct api_server *s);

static void *extra_loop_main(void *arg)
{
    struct api_server *s = arg;
    tl_loop = s;
    /* On this thread: h2o 2.2.5's socket buffers (the message queue's pipe
     * is a socket too) come from per-thread recycle lists, chosen by the
     * thread that creates the socket and used by every later read. */
    loop_init(s);
    sem_post(&s->ready);
    loop_until_stopped(s);
    drain(s);
    sem_post(&s->ready); /* drained: api_server_run may return */
    while (sem_wait(&s->dispose) != 0) { /* EINTR; api_server_free */
    }
    dispose_loop(s);
    if (s->loop_exit != NULL)
        s->loop_exit();
    tl_loop = NULL;
    return NULL;
}

static void noop_post(void *arg)
{
    (void)arg;
}

/* Starts the extra loops S asked for; fewer if one cannot start (logged). */
static void start_extra_loops(struct api_server *s)
{
    size_t n = s->want_loops - 1;
    if (n == 0 || (s->extra = calloc(n, sizeof(*s->extra))) == NULL ||
        (s->extra_threads = calloc(n, sizeof(*s->extra_threads))) == NULL)
        return;
    for (size_t i = 0; i < n; i++) {
        struct api_server *x = calloc(1, sizeof(*x));
        if (x == NULL)
            break;
        x->max_body = s->max_body;
        x->cors = s->cors;
        x->port = s->port;
        memcpy(x->url, s->url, sizeof(x->url));
        x->routes = s->routes; /* final once the loop runs */
        x->nroutes = s->nroutes;
        x->fallback = s->fallback;
        x->fallback_ud = s->fallback_ud;
        x->is_extra = 1;
        x->spin_ns = s->spin_ns;
        x->listen_fd = -1;
        x->loop_exit = s->loop_exit;
        sem_init(&x->ready, 0, 0);
        sem_init(&x->dispose, 0, 0);
        if (pthread_create(&s->extra_threads[i], NULL, extra_loop_main, x) != 0) {
            log_warn("cannot start event loop %zu; serving with %zu", i + 2, i + 1);
            sem_destroy(&x->ready);
            sem_destroy(&x->dispose);
            free(x);
            break;
        }
        while (sem_wait(&x->ready) != 0) { /* EINTR */
        }
        s->extra[s->nextra++] = x;
    }
}

int api_server_run(struct api_server *s)
{
    tl_loop = s;
    start_extra_loops(s);
    loop_until_stopped(s);
    h2o_socket_read_stop(s->listener);
    h2o_socket_close(s->listener);
    s->listener = NULL;
    if (s->on_stop != NULL)
        s->on_stop(s->on_stop_ud);
    /* the extra loops drain beside this one: long-polls were answered above */
    for (size_t i = 0; i < s->nextra; i++) {
        s->extra[i]->stop = 1;
        api_server_post(s->extra[i], noop_post, NULL); /* wake it now */
    }
    drain(s);
    for (size_t i = 0; i < s->nextra; i++)
        while (sem_wait(&s->extra[i]->ready) != 0) { /* EINTR */
        }
    tl_loop = NULL;
    return 0;
}

/* Stops S's connections (bounded by a deadline) and its streamed replies. */
static void drain(struct api_server *s)
{
    if (s->num_conns != 0) {
        uint64_t deadline = h2o_now(s->loop) + SERVER_DRAIN_MS;
        h2o_context_request_shutdown(&s->ctx);
        /* h2o 2.2.5 keeps idle HTTP/1 keep-alive connections open until
         * their request timeout (10 s). Zeroing that timeout expires them on
         * the next loop turn; a request being handled is not on this timer. */
        s->ctx.http1.req_timeout.timeout = 0;
        while ((s->num_conns != 0 || h2o_timeout_is_linked(&s->ctx.http2._graceful_shutdown_timeout)) &&
               h2o_now(s->loop) < deadline)
            h2o_evloop_run(s->loop, 50);
    }
    /* streamed replies still open will not drain now: let their workers stop */
    streams_stop_all(s);
}

/* Ends S's loop: on the thread that runs it (h2o 2.2.5's sockets free their
 * buffers into the recycle lists of the thread that made them). */
static void dispose_loop(struct api_server *s)
{
    /* Deliver what workers already sent, so nothing is leaked. */
    h2o_evloop_run(s->loop, 0);
    if (s->num_conns == 0 && !h2o_timeout_is_linked(&s->ctx.http2._graceful_shutdown_timeout)) {
        h2o_multithread_unregister_receiver(s->queue, &s->receiver);
        h2o_multithread_destroy_queue(s->queue);
        h2o_context_dispose(&s->ctx);
        for (struct timeout_list *t = s->timeouts; t != NULL; t = t->next)
            h2o_timeout_dispose(s->loop, &t->to);
        h2o_evloop_destroy(s->loop);
        h2o_config_dispose(&s->config);
    } else {
        /* h2o 2.2.5 asserts when disposing a context with live connections:
         * leave the loop to process exit. */
        log_warn("%zu connection(s) still open at shutdown; exiting without disposing the HTTP context",
                 s->num_conns);
    }
}

void api_server_free(struct api_server *s)
{
    if (s == NULL)
        return;
    /* the extra loops dispose of themselves, once workers can no longer
     * send them anything (the caller stopped them before this) */
    for (size_t i = 0; i < s->nextra; i++) {
        sem_post(&s->extra[i]->dispose);
        pthread_join(s->extra_threads[i], NULL);
        sem_destroy(&s->extra[i]->ready);
        sem_destroy(&s->extra[i]->dispose);
        api_server_free(s->extra[i]);
    }
    free(s->extra);
    free(s->extra_threads);
    if (!s->is_extra)
        dispose_loop(s);
    while (s->timeouts != NULL) {
        struct timeout_list *next = s->timeouts->next;
        free(s->timeouts);
        s->timeouts = next;
    }
    if (!s->is_extra) {
        for (size_t i = 0; i < s->nroutes; i++) {
            free(s->routes[i].method);
            free(s->routes[i].pattern);
        }
        free(s->routes);
    }
    free(s);
}

/* The sum of counter FIELD over S and its extra loops. */
static uint64_t sum_counter(const struct api_server *s, size_t offset)
{
    uint64_t v = __atomic_load_n((const uint64_t *)((const char *)s + offset), __ATOMIC_RELAXED);
    for (size_t i = 0; i < s->nextra; i++)
        v += __atomic_load_n((const uint64_t *)((const char *)s->extra[i] + offset), __ATOMIC_RELAXED);
    return v;
}

void api_server_metrics(const struct api_server *s, const char *prefix, char *buf, size_t cap, size_t *len)
{
    int n = snprintf(buf + *len, *len < cap ? cap - *len : 0,
                     "# TYPE %s_http_requests_total counter\n%s_http_requests_total %llu\n"
                     "# TYPE %s_http_responses_total counter\n",
                     prefix, prefix, (unsigned long long)sum_counter(s, offsetof(struct api_server, requests)), prefix);
    if (n > 0)
        *len += (size_t)n;
    for (int c = 1; c <= 5; c++) {
        if (*len >= cap)
            break;
        n = snprintf(buf + *len, cap - *len, "%s_http_responses_total{class=\"%dxx\"} %llu\n", prefix, c,
                     (unsigned long long)sum_counter(
                         s, offsetof(struct api_server, responses_by_class) + (size_t)c * sizeof(uint64_t)));
        if (n > 0)
            *len += (size_t)n;
    }
    if (*len > cap)
        *len = cap;
}

/* ------------------------------------------------------------------ */
/* streamed replies                                                   */
/*
 * A worker writes body bytes into a queue of heap chunks under the stream's
 * mutex; the loop takes whole chunks from it and passes them to h2o_send,
 * one send at a time: h2o 2.2.5 keeps pointers to the data (and the chunked
 * encoder a buffer of its own) until it calls the generator's proceed, so a
 * second h2o_send before that would corrupt the response. Chunks written
 * meanwhile wait in the queue and go out together on the next proceed.
 *
 * The loop learns of new data through one wakeup message at a time
 * (notify_posted), so a worker writing row by row costs a mutex and a memcpy
 * per write, not a cross-thread message.
 *
 * The bound (API_STREAM_MAX_QUEUED) counts bytes queued and bytes h2o has
 * not finished sending. Blocking the writer is the only way to bound memory
 * without losing rows; the wait ends at the caller's deadline so a client
 * that stops reading cannot hold the worker forever. We chose blocking over
 * failing at once because a reader that is merely slower than SQLite (most
 * clients over a real network) should get its rows.
 *
 * Lifetime: `refs` counts the worker (until end/abort), the loop's request
 * (until h2o disposes the request, or at once if it was gone before the
 * stream started) and each wakeup message in flight; the last release frees
 * the stream on whichever thread drops it. When the client disconnects, h2o
 * calls the generator's stop and then disposes the request's pool, whose
 * hook (on_req_pool_dispose) marks the stream gone: queued data is dropped,
 * a blocked writer wakes, and later writes return API_EIO at once.
 */

#define STREAM_CHUNK ((size_t)64 << 10)
#define STREAM_MAX_VECS 64

enum { STREAM_OPEN = 0, STREAM_ENDED = 1, STREAM_ABORTED = 2 };

struct stream_chunk {
    struct stream_chunk *next;
    size_t len, cap;
    char data[];
};

struct api_stream {
    h2o_generator_t gen; /* first: h2o hands it back to the proceed and stop callbacks */
    struct api_server *server;
    pthread_mutex_t mu;
    pthread_cond_t cv; /* signalled when queued shrinks or the client goes */
    /* under mu */
    struct stream_chunk *head, *tail; /* written, not yet given to h2o */
    size_t queued;                    /* bytes in head..tail plus bytes h2o is sending */
    int gone;                         /* writes are dropped: the client (or the server) went away */
    int state;                        /* STREAM_OPEN until the worker ends or aborts */
    int notify_posted;                /* a wakeup message is on its way to the loop */
    int refs;
    /* loop thread only */
    struct api_pending *pending; /* until the first wakeup ties the stream to the request */
    struct api_resp *head_resp;  /* status and headers, until sent */
    h2o_req_t *req;              /* NULL when not (or no longer) tied to a request */
    struct stream_chunk *sending; /* given to h2o, freed on proceed or when the request goes */
    size_t sending_bytes;
    int linked, started, inflight, done, loop_ref;
    h2o_linklist_t link; /* in server->streams while tied to a request */
};

static void chunks_free(struct stream_chunk *c)
{
    while (c != NULL) {
        struct stream_chunk *next = c->next;
        free(c);
        c = next;
    }
}

/* Drops one reference; the last one frees ST. Any thread. */
static void stream_release(struct api_stream *st)
{
    pthread_mutex_lock(&st->mu);
    int left = --st->refs;
    pthread_mutex_unlock(&st->mu);
    if (left > 0)
        return;
    chunks_free(st->head);
    chunks_free(st->sending);
    api_resp_free(st->head_resp);
    pthread_cond_destroy(&st->cv);
    pthread_mutex_destroy(&st->mu);
    free(st);
}

/* Marks ST gone for its worker: drops what is queued and wakes a blocked
 * writer. Loop thread (the chunks h2o may still point at are not touched). */
static void stream_mark_gone(struct api_stream *st)
{
    struct stream_chunk *drop;
    pthread_mutex_lock(&st->mu);
    st->gone = 1;
    drop = st->head;
    st->head = st->tail = NULL;
    st->queued = 0;
    pthread_cond_broadcast(&st->cv);
    pthread_mutex_unlock(&st->mu);
    chunks_free(drop);
}

/* The request's pool is being disposed (loop thread): h2o is done with
 * everything we gave it. */
static void stream_req_gone(struct api_stream *st)
{
    if (st->req != NULL)
        h2o_linklist_unlink(&st->link);
    st->req = NULL;
    chunks_free(st->sending);
    st->sending = NULL;
    st->sending_bytes = 0;
    stream_mark_gone(st);
    if (st->loop_ref) {
        st->loop_ref = 0;
        stream_release(st);
    }
}

static void streams_stop_all(struct api_server *s)
{
    for (h2o_linklist_t *l = s->streams.next; l != &s->streams; l = l->next)
        stream_mark_gone(H2O_STRUCT_FROM_MEMBER(struct api_stream, link, l));
}

/* Sends the status and headers (loop thread), as send_resp does, without a
 * content-length: HTTP/1.1 replies go out chunked. */
static void stream_start(struct api_stream *st, h2o_req_t *req)
{
    const struct api_resp *resp = st->head_resp;
    int status = resp != NULL ? resp->status : 500;

    if (status < 100 || status > 599)
        status = 500;
    count_response(st->server, status);
    req->res.status = status;
    req->res.reason = reason_phrase(status);
    if (resp != NULL && resp->content_type != NULL) {
        h2o_iovec_t ct = h2o_strdup(&req->pool, resp->content_type, SIZE_MAX);
        h2o_add_header(&req->pool, &req->res.headers, H2O_TOKEN_CONTENT_TYPE, NULL, ct.base, ct.len);
    }
    for (size_t i = 0; resp != NULL && i < resp->nheaders; i++) {
        h2o_iovec_t n = h2o_strdup(&req->pool, resp->header_names[i], SIZE_MAX);
        h2o_iovec_t v = h2o_strdup(&req->pool, resp->header_values[i], SIZE_MAX);
        h2o_add_header_by_str(&req->pool, &req->res.headers, n.base, n.len, 1, NULL, v.base, v.len);
    }
    if (st->server->cors)
        add_cors(req);
    h2o_start_response(req, &st->gen);
    st->started = 1;
    api_resp_free(st->head_resp);
    st->head_resp = NULL;
}

/* Gives h2o what the worker has written, unless a send is in flight.
 * Loop thread. Touches nothing of ST after h2o_send. */
static void stream_pump(struct api_stream *st)
{
    h2o_req_t *req = st->req;
    h2o_iovec_t vecs[STREAM_MAX_VECS];
    struct stream_chunk *taken = NULL, **tailp = &taken;
    size_t n = 0, bytes = 0;
    int state, gone;

    if (req == NULL || st->done || st->inflight)
        return;
    pthread_mutex_lock(&st->mu);
    gone = st->gone;
    state = st->state;
    if (!gone && state != STREAM_ABORTED) {
        while (st->head != NULL && n < STREAM_MAX_VECS) {
            struct stream_chunk *c = st->head;
            if ((st->head = c->next) == NULL)
                st->tail = NULL;
            c->next = NULL;
            *tailp = c;
            tailp = &c->next;
            vecs[n++] = h2o_iovec_init(c->data, c->len);
            bytes += c->len;
        }
        if (st->head != NULL)
            state = STREAM_OPEN; /* the rest goes out before the end */
    }
    pthread_mutex_unlock(&st->mu);
    if (gone)
        return;
    if (!st->started)
        stream_start(st, req);
    if (state == STREAM_ABORTED) {
        st->done = 1;
        h2o_send(req, NULL, 0, H2O_SEND_STATE_ERROR);
        return;
    }
    if (n == 0 && state == STREAM_OPEN)
        return;
    st->sending = taken;
    st->sending_bytes = bytes;
    st->inflight = 1;
    if (state == STREAM_ENDED)
        st->done = 1;
    h2o_send(req, vecs, n, state == STREAM_ENDED ? H2O_SEND_STATE_FINAL : H2O_SEND_STATE_IN_PROGRESS);
}

/* h2o has sent the previous batch (loop thread). */
static void stream_on_proceed(h2o_generator_t *gen, h2o_req_t *req)
{
    struct api_stream *st = (struct api_stream *)gen;
    (void)req;
    chunks_free(st->sending);
    st->sending = NULL;
    pthread_mutex_lock(&st->mu);
    st->queued = st->queued > st->sending_bytes ? st->queued - st->sending_bytes : 0;
    pthread_cond_broadcast(&st->cv);
    pthread_mutex_unlock(&st->mu);
    st->sending_bytes = 0;
    st->inflight = 0;
    stream_pump(st);
}

/* The client went away mid-response (loop thread); the pool's dispose hook
 * follows at once and frees what h2o held. */
static void stream_on_stop(h2o_generator_t *gen, h2o_req_t *req)
{
    (void)req;
    stream_mark_gone((struct api_stream *)gen);
}

/* First wakeup (loop thread): take over the deferred request, or find it gone. */
static void stream_link(struct api_stream *st)
{
    struct api_pending *p = st->pending;
    st->pending = NULL;
    st->linked = 1;
    pending_arrived(p);
    if (p->req != NULL && !p->finished) {
        p->finished = 1;
        unpark_socket(p);
        p->stream = st;
        st->req = p->req;
        h2o_linklist_insert(&st->server->streams, &st->link);
        if (st->server->stop)
            stream_mark_gone(st); /* shutting down: no new streams */
    } else {
        stream_mark_gone(st);
        st->loop_ref = 0;
        stream_release(st); /* the wakeup still holds one */
    }
    pending_release(p);
}

static void stream_on_notify(void *arg)
{
    struct api_stream *st = arg;
    pthread_mutex_lock(&st->mu);
    st->notify_posted = 0;
    pthread_mutex_unlock(&st->mu);
    if (!st->linked)
        stream_link(st);
    stream_pump(st);
    stream_release(st);
}

/* With ST->mu held: 1 if the caller must post a wakeup (after unlocking). */
static int stream_want_notify_locked(struct api_stream *st)
{
    if (st->notify_posted || st->gone)
        return 0;
    st->notify_posted = 1;
    st->refs++;
    return 1;
}

struct api_stream *api_pending_stream(struct api_pending *p, struct api_resp *head)
{
    struct api_stream *st = calloc(1, sizeof(*st));
    pthread_condattr_t ca;

    if (st == NULL) {
        api_resp_free(head);
        api_pending_finish(p, NULL); /* a bare 500 */
        return NULL;
    }
    pthread_mutex_init(&st->mu, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&st->cv, &ca);
    pthread_condattr_destroy(&ca);
    st->gen.proceed = stream_on_proceed;
    st->gen.stop = stream_on_stop;
    st->server = p->server;
    st->pending = p;
    st->head_resp = head;
    st->refs = 3; /* the worker, the request, this first wakeup */
    st->loop_ref = 1;
    st->notify_posted = 1;
    api_server_post(st->server, stream_on_notify, st);
    return st;
}

int api_stream_write(struct api_stream *st, const void *data, size_t len, int64_t deadline_ms)
{
    struct stream_chunk *t;
    struct timespec ts;
    int post, rc = API_OK;

    pthread_mutex_lock(&st->mu);
    if (st->gone) {
        pthread_mutex_unlock(&st->mu);
        return API_EIO;
    }
    if (len == 0) {
        pthread_mutex_unlock(&st->mu);
        return API_OK;
    }
    t = st->tail;
    if (t == NULL || t->cap - t->len < len) {
        size_t cap = len > STREAM_CHUNK ? len : STREAM_CHUNK;
        struct stream_chunk *c = malloc(sizeof(*c) + cap);
        if (c == NULL) {
            pthread_mutex_unlock(&st->mu);
            return API_ENOMEM;
        }
        c->next = NULL;
        c->len = 0;
        c->cap = cap;
        if (t != NULL)
            t->next = c;
        else
            st->head = c;
        st->tail = t = c;
    }
    memcpy(t->data + t->len, data, len);
    t->len += len;
    st->queued += len;
    post = stream_want_notify_locked(st);
    pthread_mutex_unlock(&st->mu);
    if (post)
        api_server_post(st->server, stream_on_notify, st);

    api_workq_block_begin(); /* may wait for a slow reader */
    pthread_mutex_lock(&st->mu);
    ts.tv_sec = deadline_ms > 0 ? deadline_ms / 1000 : 0;
    ts.tv_nsec = deadline_ms > 0 ? (deadline_ms % 1000) * 1000000L : 0;
    while (!st->gone && st->queued > API_STREAM_MAX_QUEUED) {
        if (pthread_cond_timedwait(&st->cv, &st->mu, &ts) == ETIMEDOUT) {
            if (!st->gone && st->queued > API_STREAM_MAX_QUEUED)
                rc = API_ETIMEOUT;
            break;
        }
    }
    if (st->gone)
        rc = API_EIO;
    pthread_mutex_unlock(&st->mu);
    api_workq_block_end();
    return rc;
}

int api_stream_gone(struct api_stream *st)
{
    pthread_mutex_lock(&st->mu);
    int gone = st->gone;
    pthread_mutex_unlock(&st->mu);
    return gone;
}

static void stream_finish(struct api_stream *st, int state)
{
    struct stream_chunk *drop = NULL;
    int post;

    pthread_mutex_lock(&st->mu);
    st->state = state;
    if (state == STREAM_ABORTED) {
        drop = st->head;
        st->head = st->tail = NULL;
    }
    post = stream_want_notify_locked(st);
    pthread_mutex_unlock(&st->mu);
    chunks_free(drop);
    if (post)
        api_server_post(st->server, stream_on_notify, st);
    stream_release(st);
}

void api_stream_end(struct api_stream *st)
{
    stream_finish(st, STREAM_ENDED);
}

void api_stream_abort(struct api_stream *st)
{
    stream_finish(st, STREAM_ABORTED);
}
