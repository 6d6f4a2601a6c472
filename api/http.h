/*
 * api/http.h: a small blocking HTTP/1.1 client on libcurl.
 *
 * One `struct api_http_client` per thread: it owns a curl easy handle whose
 * connection cache keeps upstream connections alive between requests. Calls
 * block, so they never run on an event-loop thread: use them from worker and
 * control threads. Nothing outside api/ builds HTTP by hand.
 */
#ifndef SHOAL_API_HTTP_H
#define SHOAL_API_HTTP_H

#include <stdatomic.h>
#include <stddef.h>

#include "api/err.h"

struct api_http_client;

struct api_http_header {
    char *name;  /* lower-cased */
    char *value; /* trimmed */
};

struct api_http_resp {
    long status;
    char *body;      /* NUL-terminated (the NUL is not counted in body_len) */
    size_t body_len;
    struct api_http_header *headers;
    size_t nheaders;
};

struct api_http_req {
    const char *method;          /* "GET", "POST", ...; NULL means GET */
    const char *url;
    const char *const *headers;  /* "name: value" strings, NULL-terminated; may be NULL */
    const void *body;            /* may be NULL */
    size_t body_len;
    long timeout_ms;             /* whole request; 0 means no limit (streams) */
    long connect_timeout_ms;     /* 0 means 2000 */
    size_t max_body;             /* response body cap; 0 means 64 MiB */
    atomic_int *cancel;          /* if set and non-zero, the transfer aborts (API_ETIMEOUT not used: API_EUNAVAILABLE) */
    int *not_sent;               /* if set: 1 after a failure that sent nothing (no connection could
                                  * be made), so even a write may be retried elsewhere; else 0 */
};

/* Called with each piece of a streamed body; return 0 to go on, non-zero to stop. */
typedef int (*api_http_chunk_fn)(void *ud, const char *data, size_t len);

/* Calls curl_global_init once; call from main before threads start. */
int api_http_global_init(struct api_err *err);
void api_http_global_cleanup(void);

/* A client for the calling thread. Returns NULL on allocation failure. */
struct api_http_client *api_http_client_new(void);
void api_http_client_free(struct api_http_client *c);

/* Performs RQ and fills RESP (caller frees with api_http_resp_fini). Any HTTP
 * status is success at this level; transport failures return API_EUPSTREAM
 * (or API_ETIMEOUT) with a message naming the URL. */
int api_http_do(struct api_http_client *c, const struct api_http_req *rq, struct api_http_resp *resp,
                struct api_err *err);

/* Like api_http_do but hands the body to ON_CHUNK as it arrives instead of
 * buffering it (RESP gets status and headers only). Returns API_OK when the
 * server ends the stream or ON_CHUNK stops it. */
int api_http_stream(struct api_http_client *c, const struct api_http_req *rq, api_http_chunk_fn on_chunk, void *ud,
                    struct api_http_resp *resp, struct api_err *err);

/* The first value of header NAME (case-insensitive), or NULL. Borrowed. */
const char *api_http_resp_header(const struct api_http_resp *resp, const char *name);

void api_http_resp_fini(struct api_http_resp *resp);

#endif
