/*
 * api/err.h: Shoal's one error table.
 *
 * Every fallible function returns an int code from API_ERRORS (0 is success)
 * and takes `struct api_err *err` last. The table gives each code its JSON
 * error code (the "code" in {"error":{"code","message"}}) and its HTTP status,
 * so a handler turns any failure into the right reply with one call.
 * The message names the thing that failed ("tenant 'acme': lease held by n2")
 * and is wrapped with context as it travels up (api_err_wrap).
 *
 * Thread-safety: a struct api_err belongs to one thread at a time; the table
 * functions are pure.
 */
#ifndef SHOAL_API_ERR_H
#define SHOAL_API_ERR_H

#include <stddef.h>

/* X(ENUM, json_code, http_status) */
#define API_ERRORS(X)                                              \
    X(API_OK, "ok", 200)                                           \
    X(API_EINVAL, "invalid_request", 400)                          \
    X(API_EBADJSON, "invalid_json", 400)                           \
    X(API_EBADTENANT, "invalid_tenant_id", 400)                    \
    X(API_EUNAUTHORIZED, "unauthorized", 401)                      \
    X(API_EFORBIDDEN, "forbidden", 403)                            \
    X(API_ENOTFOUND, "not_found", 404)                             \
    X(API_ENOTENANT, "tenant_not_found", 404)                      \
    X(API_ENONODE, "node_not_found", 404)                          \
    X(API_ENOOP, "operation_not_found", 404)                       \
    X(API_EMETHOD, "method_not_allowed", 405)                      \
    X(API_ETENANTEXISTS, "tenant_exists", 409)                     \
    X(API_ECONFLICT, "conflict", 409)                              \
    X(API_EBATON, "invalid_baton", 400)                            \
    X(API_ESTREAMEXPIRED, "stream_expired", 400)                   \
    X(API_ETOOLARGE, "body_too_large", 413)                        \
    X(API_EMEDIATYPE, "unsupported_media_type", 415)               \
    X(API_ETOOMANY, "too_many_requests", 429)                      \
    X(API_EINTERNAL, "internal", 500)                              \
    X(API_EUPSTREAM, "bad_gateway", 502)                           \
    X(API_ENOCAPACITY, "no_capacity", 503)                         \
    X(API_EUNAVAILABLE, "unavailable", 503)                        \
    X(API_ENOTPRIMARY, "not_primary", 503)                         \
    X(API_EETCD, "etcd_unavailable", 503)                          \
    X(API_ETIMEOUT, "timeout", 504)                                \
    X(API_EQUORUM, "quorum_timeout", 503)                          \
    X(API_EREPLAYLOOP, "replay_loop", 508)                         \
    /* internal conditions, mapped to HTTP for completeness */     \
    X(API_ECOMPARE, "compare_failed", 409)                         \
    X(API_ECOMPACTED, "revision_compacted", 410)                   \
    X(API_EIO, "io_error", 500)                                    \
    X(API_ENOMEM, "out_of_memory", 500)

enum api_code {
#define API_ERR_ENUM(name, json, status) name,
    API_ERRORS(API_ERR_ENUM)
#undef API_ERR_ENUM
    API_ERR_COUNT
};

#define API_ERR_MSG_MAX 512

struct api_err {
    int code;
    char msg[API_ERR_MSG_MAX];
};

/* Resets ERR to success. ERR may be NULL. */
void api_err_clear(struct api_err *err);

/* Sets ERR (if not NULL) to CODE with a printf-style message and returns CODE,
 * so callers write `return api_err_set(err, API_EINVAL, "...", ...);`. */
int api_err_set(struct api_err *err, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Prefixes ERR's message with context ("creating tenant 'acme': <old>"),
 * keeps its code, and returns it. */
int api_err_wrap(struct api_err *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The JSON code string ("tenant_not_found"); "internal" for unknown codes. */
const char *api_err_json_code(int code);

/* The HTTP status for CODE; 500 for unknown codes. */
int api_err_http_status(int code);

/* The enum's name ("API_ENOTENANT"), for logs and tests. */
const char *api_err_name(int code);

#endif
