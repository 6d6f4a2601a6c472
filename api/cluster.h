/*
 * api/cluster.h: the cluster's shared state as stored in etcd, and a live,
 * watched, in-memory view of it that agents, routers and the orchestrator
 * all read without calling etcd per request.
 *
 * Key layout (values are JSON):
 *   /shoal/nodes/<node>     {"node","region","url","started_at"}       on the agent's session lease
 *   /shoal/tenants/<id>     {"id","region","placement","durability","replicas",
 *                            "primary","nodes":[...],"generation","created_at"}   desired state, orchestrator
 *   /shoal/leases/<id>      {"holder","url"}  on the HOLDER's session lease; the key's
 *                            mod_revision is the tenant's epoch (fencing token)
 *
 * Why one watch on /shoal/: one stream delivers every change in revision
 * order, so a view never sees a lease for a tenant it does not know yet.
 *
 * Threading: the view is filled by its watch thread and read by any thread
 * under an internal mutex; readers get copies. The change callback runs on
 * the watch thread after the view is updated and must not block long.
 */
#ifndef SHOAL_API_CLUSTER_H
#define SHOAL_API_CLUSTER_H

#include <stddef.h>
#include <time.h>
#include <stdint.h>

#include <jansson.h>

#include "api/err.h"
#include "api/etcd.h"

#define API_CLUSTER_PREFIX "/shoal/"
#define API_CLUSTER_NODES "/shoal/nodes/"
#define API_CLUSTER_TENANTS "/shoal/tenants/"
#define API_CLUSTER_LEASES "/shoal/leases/"
#define API_CLUSTER_MAX_INSTANCES 16
/* Agents' write counts by client region, one key per node (outside
 * /shoal/ so that the views every daemon keeps do not carry them). */
#define API_CLUSTER_TRAFFIC "/shoal-stats/traffic/"
#define API_NAME_MAX 64
#define API_URL_MAX 160

struct api_cluster_node {
    char node[API_NAME_MAX];
    char region[8];
    char url[API_URL_MAX];
    int64_t started_at;
    int64_t lease; /* the agent's session lease (the node key's), 0 if none */
};

struct api_cluster_tenant {
    char id[API_NAME_MAX];
    char region[8];
    char placement[8];   /* "auto" | "pinned" */
    char durability[8];  /* "async" | "quorum" */
    int replicas;
    char primary[API_NAME_MAX];                            /* desired primary node */
    char nodes[API_CLUSTER_MAX_INSTANCES][API_NAME_MAX];   /* primary first, then replicas */
    size_t nnodes;
    int64_t generation;
    int64_t created_at;
    /* the last unplanned failover, if any: when, from which node, and how
     * many TXIDs of the dead primary no replica had (async durability) */
    int64_t failover_at;
    char failover_from[API_NAME_MAX];
    int64_t failover_lost_txids;
    int64_t create_revision; /* of the tenant key */
    /* the lease, if some agent holds it */
    int leased;
    char holder[API_NAME_MAX];
    char holder_url[API_URL_MAX];
    int64_t epoch;
    int64_t lease_id;              /* the etcd lease the key is on */
    int64_t lease_create_revision; /* == create_revision: written with the record (born leased) */
};

enum api_cluster_change { API_CLUSTER_NODE, API_CLUSTER_TENANT, API_CLUSTER_LEASE, API_CLUSTER_ALL };

/* KIND and ID say what changed (ID is "" for ALL); DELETED for removals. */
typedef void (*api_cluster_fn)(void *ud, enum api_cluster_change kind, const char *id, int deleted);

struct api_cluster;

/* Reads all of /shoal/ and starts watching it. ETCD is borrowed (must outlive
 * the view). ON_CHANGE may be NULL. */
int api_cluster_open(struct api_etcd *etcd, api_cluster_fn on_change, void *ud, struct api_cluster **out,
                     struct api_err *err);
void api_cluster_close(struct api_cluster *c);

/* Copies tenant ID into OUT; returns 1 if known, 0 if not. */
int api_cluster_tenant(struct api_cluster *c, const char *id, struct api_cluster_tenant *out);
int api_cluster_node(struct api_cluster *c, const char *node, struct api_cluster_node *out);
/* A malloc'd copy of all nodes (sorted by name); caller frees *OUT. */
size_t api_cluster_nodes(struct api_cluster *c, struct api_cluster_node **out);
/* A malloc'd copy of tenant IDs > AFTER (may be NULL) in ID order, at most
 * LIMIT, optionally only those whose primary region is REGION. *MORE is set
 * when more follow. Caller frees *OUT. */
size_t api_cluster_tenant_page(struct api_cluster *c, const char *after, size_t limit, const char *region,
                               struct api_cluster_tenant **out, int *more);
/* Instances and primaries (desired) per node, for placement. */
void api_cluster_node_load(struct api_cluster *c, const char *node, uint32_t *tenants, uint32_t *primaries);
size_t api_cluster_tenant_count(struct api_cluster *c);
/* The store revision the view reflects. */
int64_t api_cluster_revision(struct api_cluster *c);

/* Blocks until PRED(ud, c-locked view) returns non-zero, or DEADLINE_MS
 * (CLOCK_MONOTONIC ms) passes. PRED is checked first and then after each
 * change to tenant ID (not NULL: its record or its lease) and after a resync; other
 * tenants' changes do not wake the caller. PRED runs with the view locked
 * and may call only the *_locked accessors. Returns 1 if PRED held. */
int api_cluster_wait(struct api_cluster *c, const char *id, int (*pred)(void *ud, struct api_cluster *c), void *ud,
                     int64_t deadline_ms);
int api_cluster_tenant_locked(struct api_cluster *c, const char *id, struct api_cluster_tenant *out);

/* Encoding of the values (shared by writers and the view). */
json_t *api_cluster_tenant_record_json(const struct api_cluster_tenant *t);
int api_cluster_tenant_record_parse(const char *json, size_t len, struct api_cluster_tenant *out, struct api_err *err);
json_t *api_cluster_node_json(const struct api_cluster_node *n);
/* The value of a lease key held by NODE at URL, byte for byte what the
 * holder compares on when it releases the key (malloc'd; NULL on OOM). */
char *api_cluster_lease_value(const char *node, const char *url);

/* CLOCK_MONOTONIC in ms, and wall-clock unix seconds. */
int64_t api_now_ms(void);
int64_t api_unix_now(void);
/* The CLOCK_REALTIME instant MS from now, for pthread_cond_timedwait. */
void api_deadline_after_ms(struct timespec *ts, int64_t ms);

#endif
