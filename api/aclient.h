/*
 * api/aclient.h: an asynchronous HTTP/1.1 client bound to a server's event
 * loop, for proxies (shoal-router) that must not block and must not pay a
 * thread hop per request.
 *
 * One `struct api_aclient` per `struct api_server`; everything runs on that
 * server's loop thread, so no call here is thread-safe and none blocks
 * (except api_aclient_resolve, which is for start-up). Upstreams are
 * "http://HOST:PORT" with a numeric host (IPv4, [IPv6], or `localhost`), or
 * a name resolved once beforehand with api_aclient_resolve. No TLS.
 *
 * Connections: one request at a time per connection, except requests sent
 * with `pipeline` set (idempotent ones, to an upstream known to handle
 * HTTP/1.1 pipelining): those queued in one loop turn leave together at its
 * end, up to `max_pipeline` on one connection in one write, answered in
 * order (aclient.c says why). After a complete response that allows it, a
 * connection with nothing more on it goes back to a per-upstream pool of
 * idle keep-alive connections, newest reused first.
 * An idle connection the upstream closes (or that receives anything) is
 * dropped at once; one idle past `idle_ms` is closed by us, before the
 * upstream's own keep-alive timeout (h2o's is 10 s). A request whose
 * reused connection fails before any byte of the response arrived is sent
 * again, once, on a fresh connection: that is how a close that raced the
 * request shows itself, and the upstream did not read the request. So is a
 * pipelined request whose connection fails or closes before any byte of its
 * own response.
 *
 * Responses: content-length, chunked (trailers skipped) and read-until-close
 * bodies, 1xx interim responses skipped, HEAD/204/304 without body. The
 * whole body is buffered (capped by `max_body`).
 */
#ifndef SHOAL_API_ACLIENT_H
#define SHOAL_API_ACLIENT_H

#include <stddef.h>
#include <stdint.h>

#include "api/err.h"
#include "api/server.h"

struct api_aclient;
struct api_aclient_call;

struct api_aclient_config {
    long connect_timeout_ms; /* 0 means 2000 */
    long timeout_ms;         /* whole request, from send to the last body byte; 0 means 60000 */
    long idle_ms;            /* an idle pooled connection is closed after this; 0 means 4000 */
    size_t max_idle;         /* idle connections kept per upstream; 0 means 64 */
    size_t max_body;         /* response body cap; 0 means 64 MiB */
    size_t max_pipeline;     /* pipelined requests per connection; 0 means API_ACLIENT_PIPELINE_DEPTH, 1 never */
};

#define API_ACLIENT_PIPELINE_DEPTH 4

struct api_aclient_header {
    const char *name; /* lower-cased; not NUL-terminated */
    size_t name_len;
    const char *value;
    size_t value_len;
};

struct api_aclient_resp {
    int status;
    struct api_aclient_header *headers;
    size_t nheaders;
    char *body; /* malloc'd, NUL-terminated (not counted); the callback may take it (set it to NULL) */
    size_t body_len;
    char *store_; /* header storage (internal) */
};

struct api_aclient_req {
    const char *method;         /* "GET", "POST", ... */
    const char *url;            /* "http://HOST:PORT", no path */
    const char *path;           /* request target: path and query */
    const char *const *headers; /* "name: value" lines (no host, content-length or connection) */
    size_t nheaders;
    const void *body;           /* borrowed until the callback (or cancel) */
    size_t body_len;
    int pipeline; /* idempotent: may share a connection with others, and be sent twice */
};

struct api_aclient_stats {
    uint64_t requests, connects, reuses, stale_retries, failures;
    uint64_t pipelined; /* requests written behind another on one connection */
    size_t idle; /* idle pooled connections now */
};

/* The outcome of a call. RC is API_OK with RESP set (valid during the call
 * only), or an error (API_EUPSTREAM, API_ETIMEOUT, API_EINVAL, API_ENOMEM)
 * with ERR naming the URL; NOT_SENT is then 1 when no byte of the request
 * can have reached the upstream (no connection could be made), so even a
 * write may be sent elsewhere. */
typedef void (*api_aclient_cb)(void *ud, int rc, struct api_aclient_resp *resp, const struct api_err *err,
                               int not_sent);

/* A client on S's loop. CFG may be NULL (defaults). Free it before S. */
int api_aclient_new(struct api_server *s, const struct api_aclient_config *cfg, struct api_aclient **out,
                    struct api_err *err);
/* Closes every connection and drops calls in flight without calling their
 * callbacks (their owners free their own state). Accepts NULL. */
void api_aclient_free(struct api_aclient *c);

/* Resolves the host of URL ("http://name:port") now (blocking getaddrinfo)
 * and remembers it, so later calls to that URL need no lookup. For start-up
 * only, never on the loop. */
int api_aclient_resolve(struct api_aclient *c, const char *url, struct api_err *err);

/* Sends RQ (method, url, path and headers are copied; the body is borrowed
 * until CB runs). CB(UD, ...) runs exactly once, later, on the loop (never
 * inside this call), unless the call is cancelled first. Never fails: an
 * error is reported through CB. A callback may send; it must not cancel a
 * call other than its own (which is gone by then anyway). */
struct api_aclient_call *api_aclient_send(struct api_aclient *c, const struct api_aclient_req *rq, api_aclient_cb cb,
                                          void *ud);
/* Abandons CALL: CB will not run; its connection is closed (pipelined
 * calls behind it on that connection are sent again). */
void api_aclient_cancel(struct api_aclient_call *call);

/* The first value of header NAME (lower-case) of RESP, or NULL; *LEN set. */
const char *api_aclient_resp_header(const struct api_aclient_resp *resp, const char *name, size_t *len);

void api_aclient_stats(const struct api_aclient *c, struct api_aclient_stats *out);

#endif
