/*
 * orchestrator/router_int.h: what the files of shoal-router share (not for
 * other components). router.c holds the handlers and the lifecycle,
 * router_pick.c the choice of an upstream (candidates, health), router_fwd.c
 * the forwarding of one request on the loop (sending, replays, retries),
 * router_health.c the active /healthz probes, router_app.c the --app
 * configuration.
 *
 * Threads: everything here runs on the router's HTTP loop thread, except
 * the cluster view, which its watch thread fills (readers copy under its
 * own lock). So nothing here takes a lock and the counters are plain.
 */
#ifndef SHOAL_ORCHESTRATOR_ROUTER_INT_H
#define SHOAL_ORCHESTRATOR_ROUTER_INT_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "api/aclient.h"
#include "api/cluster.h"
#include "api/server.h"
#include "api/sqlclass.h"
#include "api/token.h"
#include "orchestrator/router.h"

#define ROUTER_MAX_HOPS 2
#define ROUTER_MAX_FWD_HEADERS 48
#define ROUTER_MAX_APPS 8
#define ROUTER_DOWN_SLOTS 64
#define ROUTER_RETRY_PAUSE_MS 25
#define ROUTER_FWD_SPARE 64 /* freed request states kept for reuse (router_fwd.c) */
#define ROUTER_UNKNOWN_RTT 1000000u

struct place_regions;
struct router_health;

struct down_mark {
    char url[API_URL_MAX];
    int64_t until_ms;
};

struct router_counters {
    uint64_t forwarded, replays, replay_loops, upstream_errors, reads_to_replicas, retries, fallbacks, too_large,
        lagging_skipped;
};

struct orch_router {
    struct orch_router_config cfg;
    unsigned char pk[API_TOKEN_PUBLIC_BYTES];
    struct place_regions *regions;
    int self_region; /* index in regions */
    struct api_etcd *etcd;
    struct api_cluster *view;
    struct api_server *server;
    struct api_aclient *client;
    struct router_health *health;
    struct orch_app apps[ROUTER_MAX_APPS];
    size_t napps;
    struct down_mark down[ROUTER_DOWN_SLOTS];
    int64_t down_until_max; /* no mark is active from then on: a quick "none down" */
    struct router_counters n;
    char region_hdr[64]; /* "shoal-client-region: <region>" */
    struct fwd *live; /* requests in flight (a doubly linked list) */
    struct fwd *spare; /* freed ones kept for reuse, linked by next */
    size_t nspare;
};

/* One place a request can go: an agent of a tenant, or an app instance. */
struct cand {
    char id[API_NAME_MAX];
    char region[8];
    char url[API_URL_MAX];
    int primary;
};

struct cands {
    struct cand v[API_CLUSTER_MAX_INSTANCES + 1];
    size_t n;
};

/* Copies the string SRC into DST of CAP bytes (CAP > 0), cut short to fit.
 * What snprintf(DST, CAP, "%s", SRC) does, at a tenth of the cost: these
 * copies run several times per forwarded request. */
static inline void router_copy(char *dst, size_t cap, const char *src)
{
    size_t n = strnlen(src, cap - 1);
    memcpy(dst, src, n);
    dst[n] = '\0';
}

/* --- router_app.c --- */
/* Loads --app-config PATH into R->apps. */
int router_apps_load(struct orch_router *r, const char *path, struct api_err *err);

/* --- router_pick.c --- */
int router_is_down(struct orch_router *r, const char *url);
/* Marks URL down for --down-ms (passive health). */
void router_mark_down(struct orch_router *r, const char *url);
void router_mark_up(struct orch_router *r, const char *url);
/* The candidates of tenant ID now: the lease holder first (primary), then
 * the other assigned nodes that are registered. 0 if the tenant is gone. */
int router_tenant_cands(struct orch_router *r, const char *id, struct cands *out);
void router_app_cands(const struct orch_app *a, struct cands *out);
/* The nearest candidate by the latency matrix, optionally only in REGION
 * and never EXCLUDE; healthy ones only unless ANY_HEALTH; for READS_OF (a
 * tenant id, or NULL) also skips replicas the health probes report lagging
 * for that tenant. The primary wins ties, then list order. 1 with *OUT, or 0. */
int router_pick_nearest(struct orch_router *r, const struct cands *cs, const char *region, const char *exclude,
                        int any_health, const char *reads_of, struct cand *out);
const struct cand *router_find_cand(const struct cands *cs, const char *id);
/* The registered node NAME as a (non-primary) candidate: 1 with *OUT, or 0. */
int router_node_cand(struct orch_router *r, const char *name, struct cand *out);

/* --- router_fwd.c --- */
struct fwd;
/* A request copied out of REQ for forwarding (APP NULL for a Shoal tenant);
 * NULL on allocation failure. Loop thread. */
struct fwd *router_fwd_new(struct orch_router *r, struct api_req *req, const struct orch_app *app);
void router_fwd_set_tenant(struct fwd *f, const char *tenant, int pipeline, int cursor, int to_primary);
void router_fwd_set_region(struct fwd *f, const char *region);
/* Adds a "name: value" header line to send upstream (copied). */
void router_fwd_add_header(struct fwd *f, const char *name, size_t nlen, const char *value, size_t vlen);
/* Defers REQ and starts forwarding; the reply comes later on the loop. */
void router_fwd_start(struct fwd *f, struct api_req *req);
/* Frees every request still in flight, without replying (shutdown, after
 * the client's calls were dropped by api_aclient_free). */
void router_fwd_drop_all(struct orch_router *r);
/* Frees the request states kept for reuse (after router_fwd_drop_all). */
void router_fwd_spare_free(struct orch_router *r);
/* Requests in flight now. */
size_t router_fwd_count(const struct orch_router *r);
int router_is_hop_by_hop(const char *name, size_t len);

/* --- router_health.c --- */
/* Starts probing GET /healthz of every registered agent every PERIOD_MS. */
int router_health_new(struct orch_router *r, long period_ms, struct router_health **out, struct api_err *err);
void router_health_free(struct router_health *h);
/* 1 if the last probe of the agent at URL listed TENANT as lagging. */
int router_health_lagging(const struct router_health *h, const char *url, const char *tenant);
/* Prometheus lines for the probes. */
void router_health_metrics(const struct router_health *h, char *buf, size_t cap, size_t *len);

#endif
