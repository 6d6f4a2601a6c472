/*
 * nodeagent/repl.h: page-level replication of tenant databases.
 *
 * Primary: every tenant connection opened through the store carries a WAL
 * hook (auto-checkpoint off). After each commit the hook reads the frames
 * the commit appended to the -wal file, turns them into a record (page
 * images, pre/post checksum, TXID + 1) and appends it durably to the
 * tenant's log before the write is acknowledged; it checkpoints itself. A
 * crash between commit and append is repaired when the tenant is next
 * loaded: the WAL is checkpointed, the file's checksum compared with the
 * log's, and a difference logged as one full-image record.
 *
 * Replica: the file stays in rollback-journal mode. Records are appended to
 * the replica's own log, then applied
 * under an EXCLUSIVE lock through SQLite's own file handle, the change
 * counter bumped so other connections drop their caches, then the applied
 * position written to <db>-pos. After each record the checksum must equal
 * the primary's post-commit checksum; otherwise the replica asks for a
 * snapshot. Killed at any byte, the replica re-applies from its log.
 * Records of `quorum` tenants carry a flag: the replica fdatasyncs its log
 * before it applies and acknowledges them (what quorum waits for). Other
 * records are appended without a sync, as SQLite's synchronous=NORMAL does
 * with its WAL: the log is synced with the next flagged record, when it is
 * compacted, reset, closed or promoted, and otherwise by the kernel's
 * writeback; after an unclean stop load_replica checks the file against
 * the log and asks for a snapshot if they differ.
 *
 * Transport: replicas pull. One long-poll per pair of nodes carries all the
 * tenants the replica follows on that primary (POST /internal/repl/pull);
 * a tenant whose TXID is gone from the primary's log, or whose position
 * diverged, gets a snapshot (GET /internal/repl/snapshot/{tenant}).
 * Both need the cluster's internal token.
 *
 * Threads: everything that touches a tenant's files runs on that tenant's
 * worker (api/workq.h keyed by tenant); the hub thread answers pulls and
 * quorum waits; one puller thread per upstream node.
 */
#ifndef SHOAL_NODEAGENT_REPL_H
#define SHOAL_NODEAGENT_REPL_H

#include <stddef.h>
#include <stdint.h>

#include <sqlite3.h>

#include "api/err.h"

struct agent_store;
struct api_workq;
struct api_server;
struct api_resp;
struct api_pending;

enum agent_role { AGENT_ROLE_NONE, AGENT_ROLE_PRIMARY, AGENT_ROLE_REPLICA };

struct agent_repl_config {
    const char *node;
    struct agent_store *store;
    struct api_workq *workers; /* keyed by agent_repl_key(tenant) */
    const char *internal_token;
    size_t log_keep_bytes;      /* compaction threshold per tenant log (default 8 MiB) */
    uint32_t checkpoint_frames; /* checkpoint once the WAL holds this many frames (default 256) */
    int64_t quorum_timeout_ms;  /* default 5000 */
    int64_t pull_wait_ms;       /* long-poll length (default 1000): also how soon a new tenant's first poll goes out */
    int64_t max_lag_ms;         /* /healthz turns 503 beyond this (default 5000) */
    int verify_on_load;         /* the agent did not stop cleanly: checksum each primary once */
};
void agent_repl_config_init(struct agent_repl_config *cfg);

struct agent_repl;

int agent_repl_new(const struct agent_repl_config *cfg, struct agent_repl **out, struct api_err *err);
/* Stops the pullers and the hub: call before the workers stop. */
void agent_repl_stop(struct agent_repl *r);
/* Frees everything (stops first if needed); call after the workers stopped. */
void agent_repl_free(struct agent_repl *r);

uint64_t agent_repl_key(const char *tenant);

/* 1 if the Authorization header value AUTHZ carries the internal token. */
int agent_repl_authorized(struct agent_repl *r, const char *authz, size_t len);

/* Registers /internal/repl/... on S. */
int agent_repl_routes(struct agent_repl *r, struct api_server *s, struct api_err *err);

/* Declares what this node is for TENANT: the primary at EPOCH, or a
 * replica following UPSTREAM (node, url; "" while unknown). Any thread;
 * cheap; files are switched lazily by agent_repl_ensure. */
void agent_repl_set_role(struct agent_repl *r, const char *tenant, enum agent_role role, int64_t epoch,
                         const char *upstream, const char *upstream_url);
/* The tenant is no longer here: closes its log. On the tenant's worker,
 * before its files are removed. */
void agent_repl_forget(struct agent_repl *r, const char *tenant);

/* On the tenant's worker: loads the tenant (recovering after a crash) and
 * brings its files into the declared role's journal mode. Cheap once done.
 * API_ENOTPRIMARY if asked for a primary that is not (or not yet) one. */
int agent_repl_ensure(struct agent_repl *r, const char *tenant, enum agent_role want, struct api_err *err);
/* TENANT's record for agent_repl_ready_txid, NULL if this node has never
 * seen it. Records live until agent_repl_free, so a caller may keep the
 * pointer (a read in place keeps it beside the tenant's connection and
 * skips the lookup and the table's lock). Any thread. */
struct agent_repl_tenant;
struct agent_repl_tenant *agent_repl_tenant(struct agent_repl *r, const char *tenant);
/* 1 if agent_repl_ensure(WANT) would succeed at once, without loading or
 * switching anything; *TXID is then the committed (primary) or applied
 * (replica) position. Any thread; one lock, the tenant's own; never blocks
 * on files. */
int agent_repl_ready_txid(struct agent_repl_tenant *t, enum agent_role want, uint64_t *txid);

/* Declares TENANT's durability on its primary: with QUORUM set, the
 * records of its next commits ask replicas to sync before acknowledging.
 * The tenant's worker, before a write runs. Cheap. */
void agent_repl_set_quorum(struct agent_repl *r, const char *tenant, int quorum);
/* On the tenant's worker, for a tenant this node is to lead: if it has no
 * file and no log here, it is unborn (repl_int.h): it stands at (0, the
 * canonical empty database's checksum, store.h), as its unborn replicas do,
 * so none needs a snapshot, and its files are born on first use
 * (agent_repl_ensure). A tenant with a file or log here already is left to
 * agent_repl_ensure. */
int agent_repl_create(struct agent_repl *r, const char *tenant, struct api_err *err);

/* The store's on_open callback: installs the capture hook on primaries. */
void agent_repl_on_open(void *ud, const char *tenant, sqlite3 *db);
/* The store's owned callback (store.h): 1 for a tenant loaded as primary
 * (its file is in WAL mode and no other process may touch it), else 0. */
int agent_repl_owns_file(void *ud, const char *tenant);

struct agent_repl_pos {
    enum agent_role role; /* declared */
    int loaded;
    int broken;            /* capture failed: writes refused */
    uint64_t txid, ck;     /* the database's position */
    uint64_t head_txid;    /* replica: the primary's last known TXID */
    int64_t lag_ms;        /* replica: how long it has been behind (0: caught up) */
    uint64_t remote_durable; /* primary: highest TXID durable on a replica */
    uint64_t log_base, log_bytes;
    unsigned long long mismatches, snapshots;
};
/* On the tenant's worker, after a write was acknowledged: runs the WAL
 * checkpoint and log compaction its commit found due, on DB (a connection
 * of the tenant). Skipped while a handover fences the tenant: the next
 * commit asks again. */
void agent_repl_maintain(struct agent_repl *r, const char *tenant, sqlite3 *db);

/* 0 and *OUT filled, or -1 if the tenant is unknown here. Any thread. */
int agent_repl_position(struct agent_repl *r, const char *tenant, struct agent_repl_pos *out);

/* Finishes P with RESP once a replica holds TXID durably; after the quorum
 * timeout with a quorum error instead (RESP freed). Any thread. */
void agent_repl_quorum_wait(struct agent_repl *r, const char *tenant, uint64_t txid, struct api_pending *p,
                            struct api_resp *resp);

/* Calls FN(ARG, 1) once TENANT's position here reaches TXID, or FN(ARG, 0)
 * after TIMEOUT_MS (read-your-writes on a replica). FN runs on the hub
 * thread and must not block (submit work elsewhere). */
void agent_repl_wait_txid(struct agent_repl *r, const char *tenant, uint64_t txid, int64_t timeout_ms,
                          void (*fn)(void *, int), void *arg);

/* Lagging replicas (lag beyond max_lag_ms): appends their IDs to OUT (a
 * jansson array). Returns the count. */
size_t agent_repl_lagging(struct agent_repl *r, void *json_array);

#define AGENT_REPL_LAG_BUCKETS 26
/* upper bounds (µs) of the lag histogram's buckets; the last is +Inf */
extern const int64_t agent_repl_lag_bounds_us[AGENT_REPL_LAG_BUCKETS];

struct agent_repl_stats {
    unsigned long long records_captured, records_applied, bytes_sent, bytes_raw, snapshots_sent,
        snapshots_installed, mismatches, pulls;
    unsigned long long lag_buckets[AGENT_REPL_LAG_BUCKETS], lag_sum_us;
};
void agent_repl_stats(struct agent_repl *r, struct agent_repl_stats *out);

#endif
