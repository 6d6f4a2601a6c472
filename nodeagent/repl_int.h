/*
 * nodeagent/repl_int.h: state shared by the replication modules (repl.c:
 * tenants, capture and apply; repl_hub.c: the primary's side of the
 * transport; repl_pull.c: the replica's side). Not for other components.
 */
#ifndef SHOAL_NODEAGENT_REPL_INT_H
#define SHOAL_NODEAGENT_REPL_INT_H

#include <pthread.h>
#include <stdatomic.h>

#include "api/map.h"
#include "nodeagent/repl.h"
#include "nodeagent/repl_log.h"

/* page number -> WAL frame index, for pages the current WAL generation holds */
struct pgidx {
    uint32_t *keys, *vals;
    size_t cap, n;
};

struct rt {
    /* First what every read checks (agent_repl_ready_txid): its first two
     * cache lines, which a read's prefetch hint fetches (hot.h). */
    pthread_mutex_t mu; /* guards the [mu] fields and the log pointer */
    enum agent_role want;   /* [mu] declared by the controller */
    enum agent_role loaded; /* [mu] mode the files are in; NONE = not loaded */
    uint64_t txid, ck;      /* [mu] position */
    int broken;             /* [mu] */
    struct agent_repl *r;
    char id[64];
    /* [mu] declared by the controller */
    int64_t epoch;
    char upstream[64];
    char upstream_url[160];
    /* [mu] position */
    struct agent_log *log;
    uint64_t head_txid;
    int64_t behind_since_ms;
    uint64_t remote_durable;
    uint64_t max_epoch_seen;
    int quorum; /* [mu] the tenant's writes wait for a replica: its records carry AGENT_REC_F_SYNC */
    int need_snapshot, load_requested;
    /* [mu] new here and never used: no file, no log, position (0, the
     * empty database's checksum). The files are born on first use (a
     * request, or a record to apply), so creating a tenant creates none. */
    int unborn;
    int pos_dirty; /* worker only: <db>-pos is behind the applied position (written at the engine's end) */
    unsigned long long mismatches, snapshots;
    /* worker only: capture state of a primary */
    struct pgidx idx;
    uint32_t salt1, salt2, frames_seen, npages, page_size;
    uint64_t ckpt_txid; /* the database file holds (synced) every commit up to here */
    int maintenance_due; /* a checkpoint or a log compaction waits for agent_repl_maintain */
};

struct hub;
struct puller;

struct agent_repl {
    struct agent_repl_config cfg;
    char *internal_token;
    char node[64];
    pthread_mutex_t mu; /* guards tenants, pullers */
    struct api_map *tenants; /* id -> struct rt* (never freed before the engine) */
    struct api_map *pullers; /* upstream node -> struct puller* */
    struct hub *hub;
    int stopped; /* [mu] no new pullers */
    /* kicks (repl_pull.c) share one client, so its connections stay alive */
    pthread_mutex_t kick_mu;
    struct api_http_client *kick_client;
    atomic_ullong records_captured, records_applied, bytes_sent, bytes_raw, snapshots_sent, snapshots_installed,
        mismatches, pulls;
    atomic_ullong lag_buckets[AGENT_REPL_LAG_BUCKETS], lag_sum_us;
};

struct rt *repl_rt_get(struct agent_repl *r, const char *id, int create);
/* The checksum of the canonical empty database (store.h). */
uint64_t repl_empty_ck(void);
/* 1 if T is unborn here (see struct rt), checking the disk the first time
 * for a tenant not loaded (two access() calls: not on an event loop).
 * Takes t->mu; any other thread. */
int repl_unborn(struct agent_repl *r, struct rt *t);

/* worker-side operations used by the transport */
int repl_snapshot_make(struct agent_repl *r, struct rt *t, unsigned char **out, size_t *len, struct api_err *err);
int repl_snapshot_install(struct agent_repl *r, struct rt *t, const unsigned char *buf, size_t len,
                          struct api_err *err);
/* Appends records (concatenated in BUF) to the replica's log, syncs, applies. */
int repl_receive(struct agent_repl *r, struct rt *t, const unsigned char *buf, size_t len, struct api_err *err);
/* Runs FN(ARG) on the tenant's worker and waits for it. */
void repl_run_on_worker(struct agent_repl *r, const char *tenant, void (*fn)(void *), void *arg);

/* hub (repl_hub.c) */
int hub_new(struct agent_repl *r, struct hub **out);
void hub_free(struct hub *h);
void hub_stop(struct hub *h);
void hub_notify(struct hub *h, const char *tenant);
void hub_quorum_wait(struct hub *h, const char *tenant, uint64_t txid, struct api_pending *p, struct api_resp *resp);
int hub_routes(struct hub *h, struct api_server *s);
void hub_txid_wait(struct hub *h, const char *tenant, uint64_t txid, int64_t timeout_ms, void (*fn)(void *, int),
                   void *arg);
/* A replica applied something: wakes read-your-writes waiters. */
void hub_applied(struct hub *h);

/* pullers (repl_pull.c) */
void pull_follow(struct agent_repl *r, const char *tenant, const char *old_upstream, const char *upstream,
                 const char *url);
void pull_stop_all(struct agent_repl *r);

/* frame kinds of a pull reply: u8 kind, u8 id length, id, u32 length, payload */
enum { PULL_RECORD = 1, PULL_SNAPSHOT = 2, PULL_NOT_PRIMARY = 3, PULL_HEAD = 4 };

int repl_auth_ok(struct agent_repl *r, const char *authz, size_t len);

#endif
