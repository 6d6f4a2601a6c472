/*
 * orchestrator/router.c: shoal-router (see router.h).
 *
 * Choosing the first upstream of a Shoal request, in order:
 *  1. a baton names the agent that holds its stream ("<node>.…"): the rest
 *     of an interactive transaction must reach that agent, nothing else can
 *     serve it;
 *  2. `fly-force-instance-id` names a node;
 *  3. `fly-prefer-region` picks the nearest healthy instance of the tenant in
 *     that region;
 *  4. a read, i.e. a pipeline whose statements are all read-only by their
 *     text (api/sqlclass.h), that opens no stream (ends in "close", no
 *     baton), or a GET: the nearest healthy instance by the latency matrix
 *     (the primary wins ties). `shoal-consistency: primary` and /v3/cursor
 *     go to the primary, as agents serve neither on a replica;
 *  5. everything else: the tenant's primary (the lease holder), waiting up to
 *     --replay-timeout for one while a failover or handover names it.
 * "Healthy" is: registered in etcd (the node key lives on the agent's
 * session lease) and not marked down by this router, which avoids for
 * --down-ms an instance that refused a connection.
 *
 * Every upstream request carries `shoal-accept-replay: 1`, so an agent that
 * must not serve it answers `fly-replay` instead of forwarding, and
 * `shoal-client-region`, so agents count traffic by the caller's region.
 * Replays are followed at most twice (then 508 replay_loop); a replayed
 * request carries `fly-replay-src`; a replay of a body over
 * --replay-max-body is refused with 413. A replay target that cannot be
 * reached is retried until the replay's timeout (default --replay-timeout),
 * then the fallback applies (back to the origin with `fly-replay-failed`)
 * or the client gets 502. For a Shoal tenant a replay to an instance that
 * is gone goes to the tenant's current primary instead when that has
 * changed: agents only ever replay to the primary they knew.
 *
 * The same machinery fronts ordinary web apps (--app): their instances are
 * the candidates, `?region=` picks the region, and their own fly-replay
 * answers are followed. The router never reads an app's body.
 *
 * Each worker thread keeps one libcurl handle, whose connection cache keeps
 * upstream connections alive between requests.
 */
#include "orchestrator/router.h"

#include <ctype.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>

#include <jansson.h>

#include "api/cluster.h"
#include "api/dataplane.h"
#include "api/etcd.h"
#include "api/http.h"
#include "api/jsonutil.h"
#include "api/log.h"
#include "api/names.h"
#include "api/server.h"
#include "api/sqlclass.h"
#include "api/token.h"
#include "api/workq.h"
#include "placement/place.h"

#define ROUTER_MAX_HOPS 2
#define ROUTER_MAX_FWD_HEADERS 48
#define ROUTER_MAX_APPS 8
#define ROUTER_DOWN_SLOTS 64
#define ROUTER_RETRY_PAUSE_MS 25
#define ROUTER_UNKNOWN_RTT 1000000u

struct down_mark {
    char url[API_URL_MAX];
    int64_t until_ms;
};

struct orch_router {
    struct orch_router_config cfg;
    unsigned char pk[API_TOKEN_PUBLIC_BYTES];
    struct place_regions *regions;
    int self_region; /* index in regions */
    struct api_etcd *etcd;
    struct api_cluster *view;
    struct api_workq *workers;
    struct api_server *server;
    struct orch_app apps[ROUTER_MAX_APPS];
    size_t napps;
    pthread_mutex_t down_mu;
    struct down_mark down[ROUTER_DOWN_SLOTS];
    atomic_ullong seq, forwarded, replays, replay_loops, upstream_errors, reads_to_replicas, retries, fallbacks,
        too_large;
};

static __thread struct api_http_client *tl_http;

static void worker_exit(void)
{
    api_http_client_free(tl_http);
    tl_http = NULL;
}

void orch_router_config_init(struct orch_router_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->listen = "127.0.0.1:7000";
    cfg->etcd = "http://127.0.0.1:2379";
    cfg->verify_key = "run/secrets/cluster.pub";
    cfg->regions_path = "ops/regions.json";
    cfg->replay_max_body = 1 << 20;
    cfg->max_body = (size_t)8 << 20;
    cfg->workers = 16;
    cfg->replay_timeout_ms = 1000;
    cfg->down_ms = 2000;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* ------------------------------------------------------------------ */
/* --app                                                               */

static int app_instance_set(struct orch_app *a, const char *region, size_t rlen, const char *id, size_t ilen,
                            const char *url, size_t ulen, struct api_err *err)
{
    struct orch_app_instance *in;
    if (a->n >= ORCH_APP_MAX_INSTANCES)
        return api_err_set(err, API_EINVAL, "app '%s': more than %d instances", a->name, ORCH_APP_MAX_INSTANCES);
    if (!api_region_valid(region, rlen))
        return api_err_set(err, API_EINVAL, "app '%s': '%.*s' is not a region code", a->name, (int)(rlen < 16 ? rlen : 16),
                           region);
    if (ilen == 0 || ilen >= sizeof(in->id))
        return api_err_set(err, API_EINVAL, "app '%s': empty or long instance id", a->name);
    for (size_t i = 0; i < ilen; i++)
        if (!isalnum((unsigned char)id[i]) && id[i] != '-' && id[i] != '_')
            return api_err_set(err, API_EINVAL, "app '%s': instance id '%.*s' may hold only letters, digits, - and _",
                               a->name, (int)ilen, id);
    while (ulen > 0 && url[ulen - 1] == '/')
        ulen--;
    if (ulen < 8 || ulen >= sizeof(in->url) || (strncmp(url, "http://", 7) != 0 && strncmp(url, "https://", 8) != 0))
        return api_err_set(err, API_EINVAL, "app '%s': instance '%.*s' needs an http:// URL", a->name, (int)ilen, id);
    for (size_t i = 0; i < a->n; i++)
        if (strlen(a->inst[i].id) == ilen && strncmp(a->inst[i].id, id, ilen) == 0)
            return api_err_set(err, API_EINVAL, "app '%s': instance '%.*s' given twice", a->name, (int)ilen, id);
    in = &a->inst[a->n++];
    snprintf(in->region, sizeof(in->region), "%.*s", (int)rlen, region);
    snprintf(in->id, sizeof(in->id), "%.*s", (int)ilen, id);
    snprintf(in->url, sizeof(in->url), "%.*s", (int)ulen, url);
    return API_OK;
}

int orch_app_parse(const char *spec, struct orch_app *out, struct api_err *err)
{
    struct orch_app a;
    const char *eq = spec ? strchr(spec, '=') : NULL;
    int rc;

    memset(&a, 0, sizeof(a));
    if (eq == NULL || !api_name_valid(spec, (size_t)(eq - spec)))
        return api_err_set(err, API_EINVAL, "--app wants NAME=region:instance:URL,... with NAME a DNS label");
    snprintf(a.name, sizeof(a.name), "%.*s", (int)(eq - spec), spec);
    for (const char *p = eq + 1; *p;) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        const char *c1 = memchr(p, ':', len);
        const char *c2 = c1 ? memchr(c1 + 1, ':', len - (size_t)(c1 + 1 - p)) : NULL;
        if (c2 == NULL)
            return api_err_set(err, API_EINVAL, "app '%s': '%.*s' is not region:instance:URL", a.name,
                               (int)(len < 80 ? len : 80), p);
        if ((rc = app_instance_set(&a, p, (size_t)(c1 - p), c1 + 1, (size_t)(c2 - c1 - 1), c2 + 1,
                                   len - (size_t)(c2 + 1 - p), err)) != API_OK)
            return rc;
        p = end ? end + 1 : p + len;
    }
    if (a.n == 0)
        return api_err_set(err, API_EINVAL, "app '%s' has no instances", a.name);
    *out = a;
    return API_OK;
}

/* --app-config FILE: {"apps":{"NAME":[{"region","instance","url"}...]}},
 * unknown keys rejected. */
static int apps_load(struct orch_router *r, const char *path, struct api_err *err)
{
    char *text = NULL;
    size_t len;
    json_error_t jerr;
    const char *name;
    json_t *doc, *list, *apps;
    int rc = API_OK;

    if ((rc = api_read_file(path, 1 << 20, &text, &len, err)) != API_OK)
        return rc;
    doc = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    free(text);
    if (!json_is_object(doc) || !json_is_object(apps = json_object_get(doc, "apps")) || json_object_size(doc) != 1) {
        json_decref(doc);
        return api_err_set(err, API_EINVAL, "%s: want {\"apps\":{\"NAME\":[{\"region\",\"instance\",\"url\"}]}}", path);
    }
    json_object_foreach(apps, name, list)
    {
        struct orch_app *a;
        size_t i;
        json_t *it;
        if (r->napps >= ROUTER_MAX_APPS || !api_name_valid(name, strlen(name)) || !json_is_array(list)) {
            rc = api_err_set(err, API_EINVAL, "%s: app '%.40s': bad name, not a list, or more than %d apps", path, name,
                             ROUTER_MAX_APPS);
            break;
        }
        a = &r->apps[r->napps];
        memset(a, 0, sizeof(*a));
        snprintf(a->name, sizeof(a->name), "%s", name);
        json_array_foreach(list, i, it)
        {
            const char *rg = json_string_value(json_object_get(it, "region"));
            const char *id = json_string_value(json_object_get(it, "instance"));
            const char *url = json_string_value(json_object_get(it, "url"));
            if (rg == NULL || id == NULL || url == NULL || json_object_size(it) != 3) {
                rc = api_err_set(err, API_EINVAL, "%s: app '%s': each instance is {\"region\",\"instance\",\"url\"}",
                                 path, name);
                break;
            }
            if ((rc = app_instance_set(a, rg, strlen(rg), id, strlen(id), url, strlen(url), err)) != API_OK)
                break;
        }
        if (rc != API_OK)
            break;
        if (a->n == 0) {
            rc = api_err_set(err, API_EINVAL, "%s: app '%s' has no instances", path, name);
            break;
        }
        r->napps++;
    }
    json_decref(doc);
    return rc;
}

/* ------------------------------------------------------------------ */
/* candidates and health                                               */

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

static int is_down(struct orch_router *r, const char *url)
{
    int64_t now = api_now_ms();
    int down = 0;
    pthread_mutex_lock(&r->down_mu);
    for (size_t i = 0; i < ROUTER_DOWN_SLOTS; i++)
        if (r->down[i].until_ms > now && strcmp(r->down[i].url, url) == 0) {
            down = 1;
            break;
        }
    pthread_mutex_unlock(&r->down_mu);
    return down;
}

/* Marks URL down for --down-ms (passive health: the etcd session of a
 * killed agent lingers for its TTL, a refused connection does not). */
static void mark_down(struct orch_router *r, const char *url)
{
    int64_t now = api_now_ms();
    size_t slot = 0;
    pthread_mutex_lock(&r->down_mu);
    for (size_t i = 0; i < ROUTER_DOWN_SLOTS; i++) {
        if (strcmp(r->down[i].url, url) == 0) {
            slot = i;
            break;
        }
        if (r->down[i].until_ms < r->down[slot].until_ms)
            slot = i; /* the slot that expires first */
    }
    snprintf(r->down[slot].url, sizeof(r->down[slot].url), "%s", url);
    r->down[slot].until_ms = now + r->cfg.down_ms;
    pthread_mutex_unlock(&r->down_mu);
    log_warn("upstream down url=%s for_ms=%ld", url, r->cfg.down_ms);
}

static void mark_up(struct orch_router *r, const char *url)
{
    pthread_mutex_lock(&r->down_mu);
    for (size_t i = 0; i < ROUTER_DOWN_SLOTS; i++)
        if (strcmp(r->down[i].url, url) == 0)
            r->down[i].until_ms = 0;
    pthread_mutex_unlock(&r->down_mu);
}

static uint32_t rtt_to(struct orch_router *r, const char *region)
{
    int i = place_region_index(r->regions, region);
    return i < 0 ? ROUTER_UNKNOWN_RTT : place_rtt_ms(r->regions, (size_t)r->self_region, (size_t)i);
}

/* The candidates of tenant ID now: the lease holder first (primary), then
 * the other assigned nodes that are registered. 0 if the tenant is gone. */
static int tenant_cands(struct orch_router *r, const char *id, struct cands *out)
{
    struct api_cluster_tenant t;
    struct api_cluster_node n;
    out->n = 0;
    if (!api_cluster_tenant(r->view, id, &t))
        return 0;
    if (t.leased && api_cluster_node(r->view, t.holder, &n)) {
        struct cand *c = &out->v[out->n++];
        snprintf(c->id, sizeof(c->id), "%s", n.node);
        snprintf(c->region, sizeof(c->region), "%s", n.region);
        snprintf(c->url, sizeof(c->url), "%s", n.url);
        c->primary = 1;
    }
    for (size_t i = 0; i < t.nnodes && out->n < API_CLUSTER_MAX_INSTANCES + 1; i++) {
        if (t.leased && strcmp(t.nodes[i], t.holder) == 0)
            continue;
        if (!api_cluster_node(r->view, t.nodes[i], &n))
            continue;
        struct cand *c = &out->v[out->n++];
        snprintf(c->id, sizeof(c->id), "%s", n.node);
        snprintf(c->region, sizeof(c->region), "%s", n.region);
        snprintf(c->url, sizeof(c->url), "%s", n.url);
        c->primary = 0;
    }
    return 1;
}

static void app_cands(const struct orch_app *a, struct cands *out)
{
    out->n = 0;
    for (size_t i = 0; i < a->n && i < API_CLUSTER_MAX_INSTANCES + 1; i++) {
        struct cand *c = &out->v[out->n++];
        snprintf(c->id, sizeof(c->id), "%s", a->inst[i].id);
        snprintf(c->region, sizeof(c->region), "%s", a->inst[i].region);
        snprintf(c->url, sizeof(c->url), "%s", a->inst[i].url);
        c->primary = 0;
    }
}

/* The nearest candidate by the latency matrix, optionally only in REGION
 * and never EXCLUDE; healthy ones only unless ANY_HEALTH. The primary wins
 * ties, then list order. Returns 1 and sets *OUT, or 0. */
static int pick_nearest(struct orch_router *r, const struct cands *cs, const char *region, const char *exclude,
                        int any_health, struct cand *out)
{
    const struct cand *best = NULL;
    uint32_t best_rtt = 0;
    for (size_t i = 0; i < cs->n; i++) {
        const struct cand *c = &cs->v[i];
        if ((region != NULL && strcmp(c->region, region) != 0) || (exclude != NULL && strcmp(c->id, exclude) == 0))
            continue;
        if (!any_health && is_down(r, c->url))
            continue;
        uint32_t rtt = rtt_to(r, c->region);
        if (best == NULL || rtt < best_rtt || (rtt == best_rtt && c->primary && !best->primary)) {
            best = c;
            best_rtt = rtt;
        }
    }
    if (best == NULL)
        return 0;
    *out = *best;
    return 1;
}

static const struct cand *find_cand(const struct cands *cs, const char *id)
{
    for (size_t i = 0; i < cs->n; i++)
        if (strcmp(cs->v[i].id, id) == 0)
            return &cs->v[i];
    return NULL;
}

/* ------------------------------------------------------------------ */
/* forwarding                                                          */

static const char *const hop_by_hop[] = {"connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade",
                                         "host", "content-length", "expect", "proxy-connection",
                                         "shoal-accept-replay", "shoal-client-region", "fly-replay-src",
                                         "fly-replay-failed", "fly-replay", NULL};

static int is_hop_by_hop(const char *name)
{
    for (const char *const *h = hop_by_hop; *h; h++)
        if (strcasecmp(name, *h) == 0)
            return 1;
    return 0;
}

struct fwd_job {
    struct orch_router *r;
    struct api_pending *pending;
    const struct orch_app *app; /* NULL for a Shoal tenant */
    char tenant[API_NAME_MAX];
    char method[8];
    char *path; /* with query */
    char *body;
    size_t body_len;
    char *headers[ROUTER_MAX_FWD_HEADERS];
    size_t nheaders;
    int pipeline, cursor, to_primary;
    char prefer_region[8];     /* fly-prefer-region, or ?region= for apps */
    char force_instance[API_NAME_MAX];
    /* decided on the worker */
    struct api_pipeline_info info;
    int idempotent;
    int read;
};

static void fwd_job_free(struct fwd_job *j)
{
    for (size_t i = 0; i < j->nheaders; i++)
        free(j->headers[i]);
    free(j->path);
    free(j->body);
    free(j);
}

static int load_cands(struct fwd_job *j, struct cands *cs)
{
    if (j->app != NULL) {
        app_cands(j->app, cs);
        return 1;
    }
    return tenant_cands(j->r, j->tenant, cs);
}

static struct api_resp *relay(const struct api_http_resp *up)
{
    struct api_resp *resp = api_resp_new((int)up->status);
    const char *ct = api_http_resp_header(up, "content-type");
    if (resp == NULL)
        return NULL;
    api_resp_set_body(resp, ct ? ct : "application/octet-stream", up->body, up->body_len);
    for (size_t i = 0; i < up->nheaders; i++) {
        const char *name = up->headers[i].name;
        if (is_hop_by_hop(name) || strcmp(name, "content-type") == 0 || strcmp(name, "date") == 0 ||
            strcmp(name, "server") == 0 || strncmp(name, "access-control-", 15) == 0)
            continue;
        api_resp_add_header(resp, name, up->headers[i].value);
    }
    return resp;
}

/* Waits (on this worker) up to --replay-timeout for tenant J to have a
 * primary that is not marked down: a failover or handover names one within
 * about a second. Returns 1 with *OUT set, or 0 if no node holds the lease. */
static int wait_for_primary(struct fwd_job *j, struct cand *out)
{
    int64_t deadline = api_now_ms() + j->r->cfg.replay_timeout_ms;
    for (;;) {
        struct cands cs;
        if (!tenant_cands(j->r, j->tenant, &cs))
            return 0;
        int have = cs.n > 0 && cs.v[0].primary;
        /* a down mark is a hint: at the deadline the holder is tried anyway
         * (an agent restarted on its port serves again at once) */
        if (have && (!is_down(j->r, cs.v[0].url) || api_now_ms() >= deadline)) {
            *out = cs.v[0];
            return 1;
        }
        if (api_now_ms() >= deadline)
            return 0;
        sleep_ms(ROUTER_RETRY_PAUSE_MS);
    }
}

/* The first upstream of J (see the file comment). EXCLUDE (may be NULL) is
 * an instance that just failed. Returns NULL with *OUT set, or the error
 * response to send. */
static struct api_resp *first_target(struct fwd_job *j, const char *exclude, struct cand *out)
{
    struct orch_router *r = j->r;
    struct api_cluster_node n;
    struct cands cs;

    if (!load_cands(j, &cs))
        return api_dp_error_respf(API_ENOTENANT, "tenant '%s' does not exist", j->tenant);
    if (j->app == NULL && j->info.has_baton) {
        /* a stream lives on one agent: nowhere else can continue it */
        if (!j->info.baton_node[0] || !api_cluster_node(r->view, j->info.baton_node, &n))
            return api_dp_error_respf(API_EBATON, "the baton names node '%s', which is not serving",
                                      j->info.baton_node[0] ? j->info.baton_node : "(none)");
        snprintf(out->id, sizeof(out->id), "%s", n.node);
        snprintf(out->region, sizeof(out->region), "%s", n.region);
        snprintf(out->url, sizeof(out->url), "%s", n.url);
        out->primary = 0;
        return NULL;
    }
    if (j->force_instance[0]) {
        const struct cand *c = find_cand(&cs, j->force_instance);
        if (c != NULL) {
            *out = *c;
            return NULL;
        }
        if (j->app == NULL && api_cluster_node(r->view, j->force_instance, &n)) {
            /* any agent answers any tenant: it forwards or replays */
            snprintf(out->id, sizeof(out->id), "%s", n.node);
            snprintf(out->region, sizeof(out->region), "%s", n.region);
            snprintf(out->url, sizeof(out->url), "%s", n.url);
            out->primary = 0;
            return NULL;
        }
        return api_dp_error_respf(API_ENONODE, "fly-force-instance-id names instance '%s', which is not serving",
                                  j->force_instance);
    }
    if (j->prefer_region[0] && pick_nearest(r, &cs, j->prefer_region, exclude, 0, out))
        return NULL;
    if (j->app != NULL || j->read) {
        if (pick_nearest(r, &cs, NULL, exclude, 0, out) || pick_nearest(r, &cs, NULL, NULL, 1, out)) {
            if (!out->primary && j->app == NULL)
                atomic_fetch_add(&r->reads_to_replicas, 1);
            return NULL;
        }
        if (j->app != NULL)
            return api_dp_error_respf(API_EUPSTREAM, "app '%s' has no instance", j->app->name);
    }
    if (wait_for_primary(j, out))
        return NULL;
    return api_dp_error_respf(API_EUNAVAILABLE, "tenant '%s' has no primary right now; retry shortly", j->tenant);
}

/* Where a replay RP issued by ORIGIN goes now. Returns 1 with *OUT, or 0. */
static int replay_target(struct fwd_job *j, const struct orch_replay *rp, const struct cand *origin, struct cand *out)
{
    struct orch_router *r = j->r;
    struct cands cs;
    const struct cand *c;
    const char *exclude = rp->elsewhere ? origin->id : NULL;

    if (!load_cands(j, &cs))
        return 0;
    if (rp->instance[0]) {
        struct api_cluster_node n;
        if ((c = find_cand(&cs, rp->instance)) != NULL && !is_down(r, c->url)) {
            *out = *c;
            return 1;
        }
        if (j->app == NULL) {
            /* an agent replays to the primary it knew; if that one is gone
             * and another holds the lease now, the new one is meant */
            if (cs.n > 0 && cs.v[0].primary && strcmp(cs.v[0].id, rp->instance) != 0 && !is_down(r, cs.v[0].url)) {
                *out = cs.v[0];
                return 1;
            }
        }
        if (c != NULL) {
            *out = *c; /* down, but named exactly: try it again until the deadline */
            return 1;
        }
        if (j->app == NULL) {
            if (api_cluster_node(r->view, rp->instance, &n)) {
                snprintf(out->id, sizeof(out->id), "%s", n.node);
                snprintf(out->region, sizeof(out->region), "%s", n.region);
                snprintf(out->url, sizeof(out->url), "%s", n.url);
                out->primary = 0;
                return 1;
            }
        }
        return 0;
    }
    if (rp->prefer_instance[0] && (c = find_cand(&cs, rp->prefer_instance)) != NULL && !is_down(r, c->url)) {
        *out = *c;
        return 1;
    }
    for (size_t i = 0; i < rp->nregions; i++)
        if (pick_nearest(r, &cs, rp->regions[i], exclude, 0, out))
            return 1;
    if (rp->any_region || rp->elsewhere || rp->prefer_instance[0])
        return pick_nearest(r, &cs, NULL, exclude, 0, out);
    return 0;
}

/* One request to C. SRC and FAILED are extra header lines ("" for none). */
static int send_once(struct fwd_job *j, const struct cand *c, const char *src, const char *failed,
                     struct api_http_resp *up, int *not_sent, struct api_err *err)
{
    const char *hdrs[ROUTER_MAX_FWD_HEADERS + 5];
    char region_hdr[64], url[API_URL_MAX + 4096];
    size_t n = 0;
    for (size_t i = 0; i < j->nheaders; i++)
        hdrs[n++] = j->headers[i];
    if (j->app == NULL) {
        snprintf(region_hdr, sizeof(region_hdr), "shoal-client-region: %s", j->r->cfg.region);
        hdrs[n++] = "shoal-accept-replay: 1";
        hdrs[n++] = region_hdr;
    }
    if (src[0])
        hdrs[n++] = src;
    if (failed[0])
        hdrs[n++] = failed;
    hdrs[n] = NULL;
    snprintf(url, sizeof(url), "%s%s", c->url, j->path);
    struct api_http_req rq = {.method = j->method, .url = url, .headers = hdrs, .body = j->body,
                              .body_len = j->body_len, .timeout_ms = 60000, .not_sent = not_sent};
    *not_sent = 0;
    return api_http_do(tl_http, &rq, up, err);
}

static void set_src(struct fwd_job *j, const struct cand *origin, const struct orch_replay *rp, char *src, size_t cap)
{
    struct timeval tv;
    int n;
    (void)j;
    gettimeofday(&tv, NULL);
    memcpy(src, "fly-replay-src: ", 16);
    n = orch_replay_src_format(src + 16, cap - 16, origin->id, origin->region,
                               (int64_t)tv.tv_sec * 1000000 + tv.tv_usec, rp->state);
    if (n < 0)
        src[0] = '\0';
}

/* 1 if UP is an agent's refusal that guarantees nothing ran: 503 with
 * `Retry-After` and the error code "unavailable" (no primary right now, or
 * the tenant moving). Agents send Retry-After only on those; a quorum
 * timeout or a failed capture is also 503 but may follow a commit, so it is
 * never sent again. */
static int not_served(const struct api_http_resp *up)
{
    json_t *doc;
    const char *code;
    int yes;
    if (up->status != 503 || up->body_len == 0 || api_http_resp_header(up, "retry-after") == NULL)
        return 0;
    doc = json_loadb(up->body, up->body_len, 0, NULL);
    code = json_string_value(json_object_get(json_object_get(doc, "error"), "code"));
    yes = code != NULL && strcmp(code, "unavailable") == 0;
    json_decref(doc);
    return yes;
}

/* Chooses the upstream, sends, follows replays; returns the response for
 * the client (never NULL except on OOM). Worker thread; blocks. */
static struct api_resp *route_and_send(struct fwd_job *j)
{
    struct orch_router *r = j->r;
    struct api_resp *resp;
    struct cand cur, origin;
    struct orch_replay rp;
    char src[ORCH_REPLAY_STATE_MAX + 256] = "", failed[512] = "";
    int hops = 0, retried = 0, replaying = 0, tried = 0;
    int64_t deadline = 0, unserved_deadline = 0;
    const char *what = j->app ? "app" : "tenant";
    const char *name = j->app ? j->app->name : j->tenant;

    if ((resp = first_target(j, NULL, &cur)) != NULL)
        return resp;
    memset(&origin, 0, sizeof(origin));
    for (;;) {
        if (replaying) {
            struct cand t;
            int64_t now = api_now_ms();
            /* a target that refused is retried until the deadline, at least once */
            int found = !(tried && now >= deadline) && replay_target(j, &rp, &origin, &t);
            if (!found && now < deadline) {
                sleep_ms(ROUTER_RETRY_PAUSE_MS);
                continue;
            }
            if (!found) {
                /* the fallback, as Fly.io's proxy: back to the instance
                 * that replayed, which learns why from fly-replay-failed */
                char v[400];
                if (rp.fallback == ORCH_FALLBACK_NONE || orch_replay_failed_format(v, sizeof(v), &rp,
                                                                                    tried ? "timeout" : "no_candidate") < 0)
                    return api_dp_error_respf(API_EUPSTREAM, "%s '%s': fly-replay target (%s) %s", what, name,
                                              rp.instance[0] ? rp.instance : rp.nregions ? rp.regions[0] : "any",
                                              tried ? "did not answer in time" : "does not exist");
                snprintf(failed, sizeof(failed), "fly-replay-failed: %s", v);
                atomic_fetch_add(&r->fallbacks, 1);
                struct cands cs;
                t = origin;
                if (rp.fallback == ORCH_FALLBACK_PREFER_SELF && is_down(r, origin.url) && load_cands(j, &cs))
                    pick_nearest(r, &cs, NULL, NULL, 0, &t);
                src[0] = '\0';
                replaying = 0;
            }
            if (replaying)
                set_src(j, &origin, &rp, src, sizeof(src));
            cur = t;
        }
        struct api_http_resp up;
        struct api_err err;
        int not_sent = 0;
        int rc = send_once(j, &cur, src, failed, &up, &not_sent, &err);
        if (rc != API_OK) {
            if (not_sent)
                mark_down(r, cur.url);
            if (replaying && not_sent) {
                tried = 1;
                if (api_now_ms() < deadline)
                    sleep_ms(ROUTER_RETRY_PAUSE_MS);
                continue;
            }
            /* nothing was sent, or a read: safe to try once more elsewhere */
            if (hops == 0 && !retried && (not_sent || j->idempotent) && !j->info.has_baton &&
                !j->force_instance[0]) {
                struct cand next;
                struct api_resp *no = first_target(j, cur.id, &next);
                retried = 1;
                atomic_fetch_add(&r->retries, 1);
                if (no == NULL) {
                    log_info("retrying %s=%s after %s failed: %s", what, name, cur.id, err.msg);
                    cur = next;
                    continue;
                }
                api_resp_free(no);
            }
            atomic_fetch_add(&r->upstream_errors, 1);
            return api_dp_error_respf(API_EUPSTREAM, "%s '%s': instance '%s' did not answer: %s", what, name, cur.id,
                                      err.msg);
        }
        if (tried || is_down(r, cur.url))
            mark_up(r, cur.url);
        replaying = 0;
        if (j->app == NULL && !j->info.has_baton && !j->force_instance[0] && not_served(&up)) {
            /* the agent ran nothing: its tenant is between primaries (a
             * handover's lease moves in one txn, the target acquires it a
             * few ms later). Ask again until --replay-timeout. */
            struct cand next;
            struct api_resp *no;
            if (unserved_deadline == 0)
                unserved_deadline = api_now_ms() + r->cfg.replay_timeout_ms;
            if (api_now_ms() < unserved_deadline) {
                api_http_resp_fini(&up);
                atomic_fetch_add(&r->retries, 1);
                sleep_ms(ROUTER_RETRY_PAUSE_MS);
                if ((no = first_target(j, NULL, &next)) != NULL)
                    return no;
                cur = next;
                continue;
            }
        }
        const char *replay = api_http_resp_header(&up, "fly-replay");
        if (replay == NULL) {
            atomic_fetch_add(&r->forwarded, 1);
            resp = relay(&up);
            api_http_resp_fini(&up);
            return resp;
        }
        if (orch_replay_parse(replay, &rp, &err) != API_OK) {
            resp = api_dp_error_respf(API_EUPSTREAM, "%s '%s': instance '%s' answered a malformed fly-replay: %s",
                                      what, name, cur.id, err.msg);
            api_http_resp_fini(&up);
            return resp;
        }
        api_http_resp_fini(&up);
        if (hops >= ROUTER_MAX_HOPS) {
            atomic_fetch_add(&r->replay_loops, 1);
            return api_dp_error_respf(API_EREPLAYLOOP, "%s '%s': more than %d replays (last from instance '%s')", what,
                                      name, ROUTER_MAX_HOPS, cur.id);
        }
        if (j->body_len > r->cfg.replay_max_body) {
            atomic_fetch_add(&r->too_large, 1);
            return api_dp_error_respf(API_ETOOLARGE,
                                      "%s '%s': instance '%s' asked for a replay, and a replayed request body is "
                                      "limited to %zu bytes (this one has %zu; --replay-max-body)",
                                      what, name, cur.id, r->cfg.replay_max_body, j->body_len);
        }
        atomic_fetch_add(&r->replays, 1);
        hops++;
        origin = cur;
        failed[0] = '\0';
        replaying = 1;
        tried = 0;
        deadline = api_now_ms() + (rp.timeout_ms > 0 ? rp.timeout_ms : r->cfg.replay_timeout_ms);
    }
}

static void fwd_job_run(void *arg)
{
    struct fwd_job *j = arg;
    struct api_resp *resp;

    if (tl_http == NULL && (tl_http = api_http_client_new()) == NULL) {
        api_pending_finish(j->pending, api_dp_error_respf(API_ENOMEM, "out of memory"));
        fwd_job_free(j);
        return;
    }
    /* classify here, not on the loop: parsing a large body takes time */
    if (j->app == NULL && (j->pipeline || j->cursor) && j->body_len > 0)
        api_pipeline_inspect(j->body, j->body_len, &j->info);
    if (j->app == NULL)
        j->read = !j->to_primary && !j->cursor &&
                  (strcmp(j->method, "GET") == 0 ||
                   (j->pipeline && j->info.reads_only && j->info.ends_with_close && !j->info.has_baton));
    else
        j->read = strcmp(j->method, "GET") == 0 || strcmp(j->method, "HEAD") == 0;
    j->idempotent = j->read;
    resp = route_and_send(j);
    api_pending_finish(j->pending, resp);
    fwd_job_free(j);
}

#define reply_dp(req, ...) api_reply_resp((req), api_dp_error_respf(__VA_ARGS__))

static struct fwd_job *job_from_req(struct orch_router *r, struct api_req *req)
{
    struct fwd_job *j;
    size_t blen, mlen, tlen, len;
    const char *body = api_req_body(req, &blen), *method = api_req_method(req, &mlen);
    const char *target = api_req_target(req, &tlen), *v;

    if ((j = calloc(1, sizeof(*j))) == NULL || (j->body = malloc(blen + 1)) == NULL ||
        (j->path = strndup(target, tlen)) == NULL) {
        if (j != NULL)
            free(j->body);
        free(j);
        return NULL;
    }
    j->r = r;
    snprintf(j->method, sizeof(j->method), "%.*s", (int)(mlen < 7 ? mlen : 7), method);
    memcpy(j->body, body, blen);
    j->body_len = blen;
    if ((v = api_req_header(req, "fly-force-instance-id", &len)) != NULL)
        snprintf(j->force_instance, sizeof(j->force_instance), "%.*s", (int)(len < 63 ? len : 63), v);
    if ((v = api_req_header(req, "fly-prefer-region", &len)) != NULL && api_region_valid(v, len))
        snprintf(j->prefer_region, sizeof(j->prefer_region), "%.*s", (int)len, v);
    return j;
}

static void on_data(struct api_req *req, void *ud)
{
    struct orch_router *r = ud;
    struct api_dp_auth auth;
    struct api_err err;
    struct fwd_job *j;
    size_t len, plen;
    const char *v, *path = api_req_path(req, &plen);

    if (api_dp_authorize(req, r->pk, r->cfg.tenant_domain, &auth, &err) != API_OK) {
        api_reply_resp(req, api_dp_error_resp(&err));
        return;
    }
    if ((j = job_from_req(r, req)) == NULL) {
        reply_dp(req, API_ENOMEM, "out of memory");
        return;
    }
    snprintf(j->tenant, sizeof(j->tenant), "%s", auth.tenant);
    j->cursor = plen >= 10 && memcmp(path + plen - 10, "/v3/cursor", 10) == 0;
    j->pipeline = plen >= 9 && memcmp(path + plen - 9, "/pipeline", 9) == 0;
    v = api_req_header(req, "shoal-consistency", &len);
    j->to_primary = v != NULL && len == 7 && strncasecmp(v, "primary", 7) == 0;
    static const char *const pass[] = {"authorization", "content-type", "accept", "cookie", "shoal-min-txid",
                                       "shoal-consistency", "shoal-tenant", "x-turso-encryption-key", NULL};
    for (const char *const *h = pass; *h && j->nheaders < ROUTER_MAX_FWD_HEADERS; h++) {
        if ((v = api_req_header(req, *h, &len)) != NULL) {
            char *line;
            if (asprintf(&line, "%s: %.*s", *h, (int)len, v) >= 0)
                j->headers[j->nheaders++] = line;
        }
    }
    j->pending = api_req_defer(req);
    api_workq_submit(r->workers, atomic_fetch_add(&r->seq, 1), fwd_job_run, j);
}

/* Paths no Shoal route matches go to an app (--app): the one whose name is
 * the Host's first label, else the only one configured. */
static void on_app(struct api_req *req, void *ud)
{
    struct orch_router *r = ud;
    const struct orch_app *app = NULL;
    struct fwd_job *j;
    size_t len, nlen, vlen;
    const char *host = api_req_header(req, ":authority", &len), *name, *value;
    char region[16];

    if (host == NULL)
        host = api_req_header(req, "host", &len);
    for (size_t i = 0; host != NULL && i < r->napps; i++) {
        size_t an = strlen(r->apps[i].name);
        if (len >= an && strncasecmp(host, r->apps[i].name, an) == 0 &&
            (len == an || host[an] == '.' || host[an] == ':'))
            app = &r->apps[i];
    }
    if (app == NULL && r->napps == 1)
        app = &r->apps[0];
    if (app == NULL) {
        size_t plen;
        const char *path = api_req_path(req, &plen);
        reply_dp(req, API_ENOTFOUND, "no such endpoint: %.*s", (int)(plen > 200 ? 200 : plen), path);
        return;
    }
    if ((j = job_from_req(r, req)) == NULL) {
        reply_dp(req, API_ENOMEM, "out of memory");
        return;
    }
    j->app = app;
    /* `?region=` chooses the region, as in Fly.io's LiteFS example app */
    if (api_req_query(req, "region", region, sizeof(region)) == 1 && api_region_valid(region, strlen(region)))
        snprintf(j->prefer_region, sizeof(j->prefer_region), "%.7s", region); /* valid: at most 4 bytes */
    for (size_t i = 0; api_req_header_at(req, i, &name, &nlen, &value, &vlen); i++) {
        char hname[64], *line;
        if (nlen == 0 || nlen >= sizeof(hname) || name[0] == ':')
            continue;
        snprintf(hname, sizeof(hname), "%.*s", (int)nlen, name);
        if (is_hop_by_hop(hname) || strcmp(hname, "fly-force-instance-id") == 0 ||
            strcmp(hname, "fly-prefer-region") == 0)
            continue;
        if (j->nheaders >= ROUTER_MAX_FWD_HEADERS)
            break;
        if (asprintf(&line, "%s: %.*s", hname, (int)vlen, value) >= 0)
            j->headers[j->nheaders++] = line;
    }
    {
        char *line;
        if (j->nheaders < ROUTER_MAX_FWD_HEADERS && asprintf(&line, "fly-region: %s", r->cfg.region) >= 0)
            j->headers[j->nheaders++] = line;
    }
    j->pending = api_req_defer(req);
    api_workq_submit(r->workers, atomic_fetch_add(&r->seq, 1), fwd_job_run, j);
}

static void on_probe(struct api_req *req, void *ud)
{
    size_t len;
    const char *v = api_req_param(req, "tenant", &len);
    struct api_err err;
    (void)ud;
    if (v != NULL && api_tenant_id_check(v, len, &err) != API_OK) {
        api_reply_resp(req, api_dp_error_resp(&err));
        return;
    }
    static const char msg[] = "Hello, this is HTTP API v2 (Hrana over HTTP)";
    api_reply_text(req, 200, "text/plain", msg, sizeof(msg) - 1);
}

static void on_protobuf(struct api_req *req, void *ud)
{
    (void)ud;
    reply_dp(req, API_ENOTFOUND, "the protobuf encoding is not served; use JSON");
}

static void on_healthz(struct api_req *req, void *ud)
{
    struct orch_router *r = ud;
    api_reply_json(req, 200, json_pack("{s:s,s:s,s:I,s:I}", "status", "ok", "region", r->cfg.region, "etcd_revision",
                                       (json_int_t)api_cluster_revision(r->view), "tenants",
                                       (json_int_t)api_cluster_tenant_count(r->view)));
}

static void on_metrics(struct api_req *req, void *ud)
{
    struct orch_router *r = ud;
    char buf[4096];
    size_t len = 0;
    api_server_metrics(r->server, "shoal_router", buf, sizeof(buf), &len);
    int n = snprintf(buf + len, sizeof(buf) - len,
                     "# TYPE shoal_router_forwarded_total counter\nshoal_router_forwarded_total %llu\n"
                     "# TYPE shoal_router_replays_total counter\nshoal_router_replays_total %llu\n"
                     "# TYPE shoal_router_replay_loops_total counter\nshoal_router_replay_loops_total %llu\n"
                     "# TYPE shoal_router_upstream_errors_total counter\nshoal_router_upstream_errors_total %llu\n"
                     "# TYPE shoal_router_reads_to_replicas_total counter\nshoal_router_reads_to_replicas_total %llu\n"
                     "# TYPE shoal_router_retries_total counter\nshoal_router_retries_total %llu\n"
                     "# TYPE shoal_router_replay_fallbacks_total counter\nshoal_router_replay_fallbacks_total %llu\n"
                     "# TYPE shoal_router_replay_too_large_total counter\nshoal_router_replay_too_large_total %llu\n"
                     "# TYPE shoal_router_tenants gauge\nshoal_router_tenants %zu\n",
                     (unsigned long long)atomic_load(&r->forwarded), (unsigned long long)atomic_load(&r->replays),
                     (unsigned long long)atomic_load(&r->replay_loops),
                     (unsigned long long)atomic_load(&r->upstream_errors),
                     (unsigned long long)atomic_load(&r->reads_to_replicas), (unsigned long long)atomic_load(&r->retries),
                     (unsigned long long)atomic_load(&r->fallbacks), (unsigned long long)atomic_load(&r->too_large),
                     api_cluster_tenant_count(r->view));
    if (n > 0 && (size_t)n < sizeof(buf) - len)
        len += (size_t)n;
    api_reply_text(req, 200, "text/plain; version=0.0.4", buf, len);
}

/* ------------------------------------------------------------------ */
/* lifecycle                                                           */

int orch_router_new(const struct orch_router_config *cfg, struct orch_router **out, struct api_err *err)
{
    struct orch_router *r = calloc(1, sizeof(*r));
    struct api_server_config scfg = {.listen = cfg->listen, .max_body = cfg->max_body, .cors = 1};
    char *text = NULL, msg[256], p[128];
    size_t len;
    int rc;

    if (r == NULL)
        return api_err_set(err, API_ENOMEM, "out of memory");
    r->cfg = *cfg;
    pthread_mutex_init(&r->down_mu, NULL);
    if ((rc = api_read_file(cfg->regions_path, 1 << 20, &text, &len, err)) != API_OK)
        goto fail;
    if (place_regions_parse(text, len, &r->regions, msg, sizeof(msg)) != PLACE_OK) {
        rc = api_err_set(err, API_EINVAL, "regions file '%s': %s", cfg->regions_path, msg);
        goto fail;
    }
    if ((r->self_region = place_region_index(r->regions, cfg->region)) < 0) {
        rc = api_err_set(err, API_EINVAL, "region '%s' is not in '%s'", cfg->region, cfg->regions_path);
        goto fail;
    }
    if (cfg->app != NULL && cfg->app[0]) {
        if ((rc = orch_app_parse(cfg->app, &r->apps[0], err)) != API_OK)
            goto fail;
        r->napps = 1;
    }
    if (cfg->app_config != NULL && (rc = apps_load(r, cfg->app_config, err)) != API_OK)
        goto fail;
    for (size_t i = 0; i < r->napps; i++)
        for (size_t k = i + 1; k < r->napps; k++)
            if (strcmp(r->apps[i].name, r->apps[k].name) == 0) {
                rc = api_err_set(err, API_EINVAL, "app '%s' is configured twice", r->apps[i].name);
                goto fail;
            }
    if ((rc = api_token_load_public(cfg->verify_key, r->pk, err)) != API_OK ||
        (rc = api_etcd_new(cfg->etcd, &r->etcd, err)) != API_OK ||
        (rc = api_cluster_open(r->etcd, NULL, NULL, &r->view, err)) != API_OK ||
        (rc = api_workq_new(cfg->workers, worker_exit, &r->workers, err)) != API_OK ||
        (rc = api_server_new(&scfg, &r->server, err)) != API_OK)
        goto fail;
    static const char *const prefixes[] = {"/t/{tenant}", ""};
    rc = 0;
    for (size_t i = 0; i < 2; i++) {
        snprintf(p, sizeof(p), "%s/v2/pipeline", prefixes[i]);
        rc |= api_server_route(r->server, "POST", p, on_data, r);
        snprintf(p, sizeof(p), "%s/v3/pipeline", prefixes[i]);
        rc |= api_server_route(r->server, "POST", p, on_data, r);
        snprintf(p, sizeof(p), "%s/v3/cursor", prefixes[i]);
        rc |= api_server_route(r->server, "POST", p, on_data, r);
        snprintf(p, sizeof(p), "%s/v2", prefixes[i]);
        rc |= api_server_route(r->server, "GET", p, on_probe, r);
        snprintf(p, sizeof(p), "%s/v3", prefixes[i]);
        rc |= api_server_route(r->server, "GET", p, on_probe, r);
        snprintf(p, sizeof(p), "%s/v3-protobuf", prefixes[i]);
        rc |= api_server_route(r->server, NULL, p, on_protobuf, r);
    }
    rc |= api_server_route(r->server, "GET", "/healthz", on_healthz, r);
    rc |= api_server_route(r->server, "GET", "/metrics", on_metrics, r);
    if (r->napps > 0)
        api_server_fallback(r->server, on_app, r);
    if (rc != 0) {
        rc = api_err_set(err, API_ENOMEM, "registering routes: out of memory");
        goto fail;
    }
    free(text);
    log_info("listening on %s region=%s apps=%zu", api_server_url(r->server), cfg->region, r->napps);
    *out = r;
    return API_OK;
fail:
    free(text);
    orch_router_free(r);
    return rc;
}

int orch_router_run(struct orch_router *r)
{
    return api_server_run(r->server);
}

void orch_router_stop(struct orch_router *r)
{
    api_server_stop(r->server);
}

void orch_router_free(struct orch_router *r)
{
    if (r == NULL)
        return;
    api_workq_free(r->workers);
    api_server_free(r->server);
    api_cluster_close(r->view);
    api_etcd_free(r->etcd);
    place_regions_free(r->regions);
    pthread_mutex_destroy(&r->down_mu);
    free(r);
}
