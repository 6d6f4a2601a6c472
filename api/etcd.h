/*
 * api/etcd.h: Shoal's one etcd v3 client, over etcd's JSON gateway (etcd 3.4).
 *
 * Nobody outside this module builds etcd JSON. The gateway's traps are handled
 * here (../shared/ETCD.md): keys and values are standard base64 with padding,
 * int64s travel as JSON strings, zero fields are omitted (an absent
 * "succeeded" means false), unknown fields are silently ignored, POST only,
 * and one message per HTTP request body (etcd #8237).
 *
 * Threading: a `struct api_etcd` is shared by all threads of a process; each
 * call borrows one of its HTTP clients for the duration. Every call blocks:
 * never call from an event-loop thread. Endpoints are tried in order; a
 * transport failure moves to the next one.
 *
 * Ownership: results (kvs, events) are owned by the caller and freed with the
 * matching _fini/_free. Keys are NUL-terminated strings; values are byte
 * strings with a length and an extra NUL after them for convenience.
 */
#ifndef SHOAL_API_ETCD_H
#define SHOAL_API_ETCD_H

#include <stddef.h>
#include <stdint.h>

#include "api/err.h"

struct api_etcd;
struct api_etcd_watch;

struct api_etcd_kv {
    char *key;
    char *value; /* NUL-terminated after value_len bytes; "" when absent */
    size_t value_len;
    int64_t create_revision;
    int64_t mod_revision;
    int64_t version;
    int64_t lease; /* 0 when the key has none */
};

struct api_etcd_kvs {
    struct api_etcd_kv *kvs;
    size_t n;
    int64_t revision; /* header.revision of the read */
    int more;         /* the range had more keys than the limit */
};

/* Creates a client for ENDPOINTS ("http://127.0.0.1:2379,http://..."). No
 * network I/O happens here. *OUT is set on success only. */
int api_etcd_new(const char *endpoints, struct api_etcd **out, struct api_err *err);
void api_etcd_free(struct api_etcd *e);

/* Per-request timeout for unary calls (default 5000 ms). */
void api_etcd_set_timeout(struct api_etcd *e, long timeout_ms);

/* Reads one key. *FOUND is 0 (and OUT untouched) when absent. REVISION, if
 * not NULL, gets the store revision of the read. */
int api_etcd_get(struct api_etcd *e, const char *key, struct api_etcd_kv *out, int *found, int64_t *revision,
                 struct api_err *err);

/* Reads every key starting with PREFIX, in key order, at most LIMIT (0 = all).
 * START_AFTER (may be NULL) skips keys <= it, for paging. */
int api_etcd_range_prefix(struct api_etcd *e, const char *prefix, const char *start_after, int64_t limit,
                          struct api_etcd_kvs *out, struct api_err *err);

/* Puts KEY=VALUE, attached to LEASE (0 = none). REVISION gets the new revision. */
int api_etcd_put(struct api_etcd *e, const char *key, const void *value, size_t value_len, int64_t lease,
                 int64_t *revision, struct api_err *err);

/* Deletes KEY, or every key under it when PREFIX is non-zero. DELETED gets the
 * count (may be NULL). */
int api_etcd_delete(struct api_etcd *e, const char *key, int prefix, int64_t *deleted, struct api_err *err);

/* --- transactions --- */
enum api_etcd_target { API_ETCD_VERSION, API_ETCD_CREATE, API_ETCD_MOD, API_ETCD_VALUE, API_ETCD_LEASE };
enum api_etcd_result { API_ETCD_EQUAL, API_ETCD_GREATER, API_ETCD_LESS, API_ETCD_NOT_EQUAL };

struct api_etcd_cmp {
    const char *key;
    enum api_etcd_target target;
    enum api_etcd_result result;
    int64_t number;    /* for VERSION, CREATE, MOD, LEASE */
    const void *value; /* for VALUE */
    size_t value_len;
};

enum api_etcd_op_kind { API_ETCD_OP_PUT, API_ETCD_OP_DELETE, API_ETCD_OP_GET };

struct api_etcd_op {
    enum api_etcd_op_kind kind;
    const char *key;
    const void *value; /* PUT */
    size_t value_len;  /* PUT */
    int64_t lease;     /* PUT; 0 = none */
    int prefix;        /* DELETE/GET: the whole prefix under key */
};

struct api_etcd_txn_result {
    int succeeded;
    int64_t revision;          /* header.revision: for a successful txn with a put, the new mod_revision */
    struct api_etcd_kvs *gets; /* one per GET op of the branch that ran, in order; may be NULL */
    size_t ngets;
};

/* Runs one txn: if every compare holds, the SUCCESS ops, else the FAILURE ops.
 * A failed compare is not an error: RES->succeeded says which branch ran. */
int api_etcd_txn(struct api_etcd *e, const struct api_etcd_cmp *cmps, size_t ncmps, const struct api_etcd_op *success,
                 size_t nsuccess, const struct api_etcd_op *failure, size_t nfailure, struct api_etcd_txn_result *res,
                 struct api_err *err);
void api_etcd_txn_result_fini(struct api_etcd_txn_result *res);

/* --- leases --- */
int api_etcd_lease_grant(struct api_etcd *e, int64_t ttl_s, int64_t *id, struct api_err *err);
/* Renews lease ID once. *TTL_LEFT gets the TTL etcd granted; 0 means the lease
 * is gone (expired or revoked) - not an error at this level. */
int api_etcd_lease_keepalive(struct api_etcd *e, int64_t id, int64_t *ttl_left, struct api_err *err);
int api_etcd_lease_revoke(struct api_etcd *e, int64_t id, struct api_err *err);

/* --- watch --- */
enum api_etcd_event_type { API_ETCD_PUT, API_ETCD_DELETE };

struct api_etcd_event {
    enum api_etcd_event_type type;
    struct api_etcd_kv kv; /* for DELETE only key and mod_revision are set */
};

/* Called on the watch's own thread with the events of one watch response, in
 * order; REVISION is that response's header revision. Borrowed: copy what you keep. */
typedef void (*api_etcd_watch_fn)(void *ud, const struct api_etcd_event *events, size_t n, int64_t revision);

/* Called on the watch's own thread when the watch could not resume from where
 * it was (the revision was compacted): KVS is a fresh read of the whole prefix
 * at KVS->revision, and events follow from KVS->revision + 1. The consumer
 * replaces its state with KVS. Borrowed. */
typedef void (*api_etcd_resync_fn)(void *ud, const struct api_etcd_kvs *kvs);

/* Starts a thread that watches every key under PREFIX from START_REVISION
 * (normally the revision of the read that built the caller's state, plus 1),
 * reconnecting after errors (and resuming after the last revision it
 * delivered) until api_etcd_watch_stop. *OUT is set on success. */
int api_etcd_watch_start(struct api_etcd *e, const char *prefix, int64_t start_revision, api_etcd_watch_fn on_events,
                         api_etcd_resync_fn on_resync, void *ud, struct api_etcd_watch **out, struct api_err *err);

/* Stops the watch and joins its thread; no callback runs after it returns.
 * Accepts NULL. Must not be called from the watch's own callbacks. */
void api_etcd_watch_stop(struct api_etcd_watch *w);

void api_etcd_kv_fini(struct api_etcd_kv *kv);
void api_etcd_kvs_fini(struct api_etcd_kvs *kvs);

#endif
