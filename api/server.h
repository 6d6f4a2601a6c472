/*
 * api/server.h: Shoal's HTTP server framework on libh2o's evloop (2.2.5).
 *
 * One `struct api_server` runs one event loop on the thread that calls
 * api_server_run. It routes by method and path pattern (`/v1/tenants/{id}`:
 * `{name}` captures one raw, undecoded path segment, so "%2e%2e" stays
 * visible to validation), replies with JSON in the contract's error shape
 * ({"error":{"code","message"}}), enforces a body limit (413), answers CORS
 * preflights when asked to, and counts requests for /metrics.
 *
 * Handlers run on the loop thread and must not block. Work that blocks
 * (SQLite, outgoing HTTP, etcd) is deferred: the handler copies what it needs
 * out of the request, calls api_req_defer, and hands the returned
 * `struct api_pending` to a worker, which later calls api_pending_finish from
 * any thread with a heap-built `struct api_resp`. If the client went away in
 * the meantime the response is dropped safely.
 *
 * <h2o.h> stays inside api/: nothing here exposes h2o types.
 */
#ifndef SHOAL_API_SERVER_H
#define SHOAL_API_SERVER_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "api/err.h"

struct api_server;
struct api_req;
struct api_pending;

#define API_RESP_MAX_HEADERS 16

/* A response built off the loop thread (or on it). Heap-owned; every string
 * is malloc'd and freed by api_resp_free. */
struct api_resp {
    int status;
    char *content_type;
    char *header_names[API_RESP_MAX_HEADERS];
    char *header_values[API_RESP_MAX_HEADERS];
    size_t nheaders;
    char *body;
    size_t body_len;
    /* short strings above (content type, header names and values) live
     * here instead of an allocation each: a reply is built and freed per
     * request */
    size_t inline_used;
    char inline_text[192];
};

struct api_server_config {
    const char *listen;   /* "127.0.0.1:7401"; port 0 picks a free one */
    size_t max_body;      /* request bodies above this get 413; 0 means 8 MiB */
    int cors;             /* answer OPTIONS preflights and add allow-origin: * */
};

typedef void (*api_handler_fn)(struct api_req *r, void *ud);
typedef void (*api_post_fn)(void *arg);

/* Binds the listener now (so the port is known before the loop runs).
 * The server belongs to the thread that will call api_server_run. */
int api_server_new(const struct api_server_config *cfg, struct api_server **out, struct api_err *err);
/* Frees a server whose loop is not running (after api_server_run returned). */
void api_server_free(struct api_server *s);

/* Routes METHOD ("GET", ...; NULL = any method) and PATTERN to FN. Routes are
 * matched in registration order; a path that matches a pattern with another
 * method gets 405, no match 404 (or the fallback). PATTERN is copied. */
int api_server_route(struct api_server *s, const char *method, const char *pattern, api_handler_fn fn, void *ud);
/* Handler for paths no route matches (default: 404 JSON). */
void api_server_fallback(struct api_server *s, api_handler_fn fn, void *ud);

/* The bound port, and "http://127.0.0.1:PORT" (borrowed). */
uint16_t api_server_port(const struct api_server *s);
const char *api_server_url(const struct api_server *s);

/* Serve with N event loops (default 1), each on its own thread: the first
 * is api_server_run's, which accepts every connection and hands each to a
 * loop in turn, where it stays. Every loop serves every route, so with N > 1
 * handlers run on several threads at once and must be thread-safe; a
 * request's accessors, replies and api_pending stay on its own loop, and
 * api_server_turn counts the calling loop's turns. LOOP_EXIT (may be NULL)
 * runs on each extra loop's thread as it ends, to free thread-local state.
 * Timers, api_server_post and api_server_on_stop stay on the first loop.
 * Call before api_server_run. */
void api_server_set_loops(struct api_server *s, size_t n, void (*loop_exit)(void));

/* A loop waiting for exactly one deferred reply marked api_pending_soon,
 * and nothing else, busy-waits for it up to SPIN_US microseconds before it
 * sleeps in epoll_wait; and a loop that has just received a request or
 * sent a reply keeps polling its sockets up to min(SPIN_US, 30) µs,
 * yielding its CPU between polls (server.c, IDLE_POLL_NS). 0 (the default)
 * never spins. Saves the wake-up of an idle CPU per request or reply at
 * light load; under load they find the loop awake. Call before
 * api_server_run. */
void api_server_set_spin(struct api_server *s, int64_t spin_us);

/* Runs the loop until api_server_stop, then stops accepting and drains open
 * connections (bounded by a deadline). Returns 0. */
int api_server_run(struct api_server *s);
/* Asks the loop to stop. Async-signal-safe and thread-safe. */
void api_server_stop(struct api_server *s);
/* FN(UD) runs on the loop thread when api_server_run begins shutting down,
 * before connections drain: the place to answer long-polls at once. */
void api_server_on_stop(struct api_server *s, void (*fn)(void *), void *ud);
/* Runs FN(ARG) on the loop thread soon. Thread-safe. */
void api_server_post(struct api_server *s, api_post_fn fn, void *arg);

/* Prometheus lines for the server's own counters, appended to BUF of CAP
 * bytes at *LEN (truncates safely). PREFIX names the daemon ("shoal_agent"). */
void api_server_metrics(const struct api_server *s, const char *prefix, char *buf, size_t cap, size_t *len);

/* --- request accessors: loop thread only, valid until the reply --- */
const char *api_req_method(const struct api_req *r, size_t *len);
/* The raw path without the query string. */
const char *api_req_path(const struct api_req *r, size_t *len);
/* The raw request target: path and query, as received. */
const char *api_req_target(const struct api_req *r, size_t *len);
/* A captured `{name}` segment, or NULL. */
const char *api_req_param(const struct api_req *r, const char *name, size_t *len);
/* A query parameter, percent-decoded into OUT (NUL-terminated). Returns 1 if
 * present, 0 if absent, -1 if too long or badly encoded. */
int api_req_query(const struct api_req *r, const char *name, char *out, size_t cap);
/* The first header NAME (lower-case), or NULL. */
const char *api_req_header(const struct api_req *r, const char *name, size_t *len);
/* The I-th request header (names lower-case, as h2o stores them): 1 and
 * NAME/VALUE set (borrowed), or 0 past the last one. For proxies that pass
 * on headers they do not know. */
int api_req_header_at(const struct api_req *r, size_t i, const char **name, size_t *nlen, const char **value,
                      size_t *vlen);
const void *api_req_body(const struct api_req *r, size_t *len);
/* Parses the body as a JSON object. API_EBADJSON (with jansson's position) otherwise. */
int api_req_json_object(const struct api_req *r, json_t **out, struct api_err *err);
/* The peer's IPv4/IPv6 address as text into OUT. */
void api_req_peer(const struct api_req *r, char *out, size_t cap);
struct api_server *api_req_server(const struct api_req *r);

/* --- replies (loop thread) --- */
/* Sends RESP (taken: freed here). */
void api_reply_resp(struct api_req *r, struct api_resp *resp);
/* Sends DOC (reference stolen) as application/json with STATUS. */
void api_reply_json(struct api_req *r, int status, json_t *doc);
/* Sends the contract error shape for ERR (status from the error table). */
void api_reply_error(struct api_req *r, const struct api_err *err);
int api_reply_errorf(struct api_req *r, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
void api_reply_text(struct api_req *r, int status, const char *content_type, const char *body, size_t len);
/* 204 with no body. */
void api_reply_empty(struct api_req *r, int status);

/* --- deferred replies --- */
/* Marks R as answered later; the returned handle must be finished exactly
 * once with api_pending_finish (from any thread), api_pending_reply,
 * api_pending_reply_parts or api_pending_stream, never with api_reply_*:
 * until then an HTTP/1 connection is kept polled but not read (server.c,
 * "Parking"), and only those hand it back to h2o. */
struct api_pending *api_req_defer(struct api_req *r);
/* Loop thread, right after api_req_defer: P's reply is due soon (a
 * worker's job of microseconds to a commit's sync), so the loop may spin
 * for it (api_server_set_spin). Not for long polls or network round trips. */
void api_pending_soon(struct api_pending *p);
/* Sends RESP (taken) for the deferred request, or drops it if the client is gone. Thread-safe. */
void api_pending_finish(struct api_pending *p, struct api_resp *resp);
/* The same from the loop thread, without a trip through the message queue:
 * RESP (taken) is sent now, or dropped if the client is gone, and P is
 * released. For handlers that finish their work on the loop (the router). */
void api_pending_reply(struct api_pending *p, struct api_resp *resp);
/* While on (a per-thread switch, for the loop thread only), api_pending_finish
 * replies at once as api_pending_reply does: for code shared by workers and
 * a loop that runs a job in place (the agent's in-place reads). */
void api_pending_direct(int on);
/* Counts the calling loop's turns (one epoll wait and what it delivered): handlers
 * see the same number for every request that arrived together. */
uint64_t api_server_turn(const struct api_server *s);
/* FN(ARG) runs once on R's loop when the requests it read with R have all
 * been handed to their handlers, in the same loop turn (or, for a request
 * a reply of that turn set going, right at the start of the next): for
 * handlers that do some of their requests' work together, one stage for all
 * of them at a time (the agent's reads in place). Asking again in the same
 * turn for the same FN and ARG changes nothing; a turn takes at most four
 * distinct calls. Loop thread. */
void api_server_end_of_turn(struct api_req *r, api_post_fn fn, void *arg);
/* One header of api_pending_reply_parts: borrowed, not NUL-terminated. */
struct api_hdr_view {
    const char *name; /* lower-case */
    size_t name_len;
    const char *value;
    size_t value_len;
};
/* Like api_pending_reply, for a proxy relaying another server's answer
 * without building a `struct api_resp`: STATUS, CONTENT_TYPE (NULL for
 * none), HEADERS (N, copied into the request's pool) and BODY (malloc'd,
 * LEN bytes, taken: freed when the request is done, never copied). */
void api_pending_reply_parts(struct api_pending *p, int status, const char *content_type, size_t ct_len,
                             const struct api_hdr_view *headers, size_t n, char *body, size_t len);
/* 1 if the client of P went away (its request is disposed). Loop thread. */
int api_pending_gone(const struct api_pending *p);

/* --- timers (loop thread only) ---
 * A timer calls FN(UD) once, on the loop, some MS after api_timer_start.
 * Every timer must be stopped or freed before api_server_free (h2o 2.2.5
 * asserts when a timeout list it disposes is not empty). */
struct api_timer;
/* A new, stopped timer. NULL on allocation failure. */
struct api_timer *api_timer_new(struct api_server *s, void (*fn)(void *ud), void *ud);
/* Arms T to fire MS from now (re-arms if armed). MS values are grouped per
 * distinct value (h2o 2.2.5 timeouts have one duration each): use few. */
void api_timer_start(struct api_timer *t, uint32_t ms);
void api_timer_stop(struct api_timer *t);
int api_timer_armed(const struct api_timer *t);
/* Stops and frees T; accepts NULL. */
void api_timer_free(struct api_timer *t);

/* --- streamed replies (a deferred request answered piece by piece) ---
 *
 * A worker that produces a body over time (rows of a query) starts a
 * streamed reply on its deferred request instead of finishing it: the status
 * and headers go out at once, the body follows as the worker writes it
 * (HTTP/1.1 chunked: no content-length), and api_stream_end completes it.
 *
 * Memory is bounded per stream: bytes written but not yet taken by the
 * socket count against API_STREAM_MAX_QUEUED. A write always queues its data
 * (unless the client is gone), then blocks the writing thread while the
 * queue is over the bound, at most until the caller's deadline. The caller
 * chooses the deadline because it knows what the wait holds up (a tenant's
 * worker thread, a read snapshot); on API_ETIMEOUT it should stop producing
 * and end the reply with an error of its own.
 *
 * If the client goes away, writes are dropped at once and return API_EIO,
 * api_stream_gone turns 1, and the worker should stop; it must still call
 * api_stream_end or api_stream_abort exactly once to release its handle.
 * All functions below are for the worker (any thread but the loop's, since
 * a write may block); the handle belongs to one thread at a time. */
struct api_stream;

#define API_STREAM_MAX_QUEUED ((size_t)1 << 20)

/* Starts a streamed reply on P with HEAD's status, content type and headers
 * (HEAD is taken; its body, if any, is ignored). P is consumed as by
 * api_pending_finish. Returns NULL only on OOM, after answering P with 500. */
struct api_stream *api_pending_stream(struct api_pending *p, struct api_resp *head);
/* Appends LEN bytes of DATA (copied) to the body. Returns API_OK; API_EIO if
 * the client is gone (DATA dropped); API_ETIMEOUT if the queue was still over
 * API_STREAM_MAX_QUEUED at DEADLINE_MS (CLOCK_MONOTONIC milliseconds, as
 * api_now_ms; DATA is queued all the same); API_ENOMEM. */
int api_stream_write(struct api_stream *st, const void *data, size_t len, int64_t deadline_ms);
/* 1 once the client has gone away (or the server stopped): later writes are dropped. */
int api_stream_gone(struct api_stream *st);
/* Completes the body after what is queued and releases ST. */
void api_stream_end(struct api_stream *st);
/* Ends the reply as failed (the client sees a truncated body: HTTP/1.1
 * closes the connection without the last chunk), drops what is queued and
 * releases ST. */
void api_stream_abort(struct api_stream *st);

/* --- responses --- */
struct api_resp *api_resp_new(int status);
void api_resp_free(struct api_resp *resp);
/* Sets content type and body (copied). Returns API_ENOMEM on failure. */
int api_resp_set_body(struct api_resp *resp, const char *content_type, const void *body, size_t len);
/* Serialises DOC (reference stolen) as the JSON body. */
int api_resp_set_json(struct api_resp *resp, int status, json_t *doc);
/* Sets BODY (malloc'd, NUL-terminated after LEN bytes) as RESP's body
 * without a copy: RESP owns it once this returns API_OK; on API_ENOMEM the
 * caller still does. */
int api_resp_take_body(struct api_resp *resp, const char *content_type, char *body, size_t len);
/* The contract error shape for ERR. */
int api_resp_set_error(struct api_resp *resp, const struct api_err *err);
/* Adds a header (both copied); silently ignores more than API_RESP_MAX_HEADERS. */
void api_resp_add_header(struct api_resp *resp, const char *name, const char *value);
/* A new response carrying ERR; never NULL except on OOM. */
struct api_resp *api_resp_error(const struct api_err *err);

/* {"error":{"code","message"}} as a new JSON object. */
json_t *api_error_json(const struct api_err *err);

#endif
