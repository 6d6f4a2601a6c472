/*
 * orchestrator/router.c: shoal-router (see router.h): its HTTP handlers,
 * /metrics and its lifecycle. The choice of an upstream is in
 * router_pick.c, the forwarding of one request in router_fwd.c, the health
 * probes in router_health.c, --app parsing in router_app.c.
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
 * session lease), not marked down by this router, which avoids for
 * --down-ms an instance that refused a connection, and, for a read, not
 * reporting the tenant as lagging: the router probes every agent's
 * `GET /healthz` once a second (--health-ms) and skips, for that tenant's
 * reads, a replica whose last answer (503) listed the tenant in "lagging".
 * When every instance is excluded, a read still goes to the nearest one.
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
 * Threads: one. Everything, the upstream requests included, runs on the
 * HTTP loop: api/aclient.h sends them asynchronously over per-upstream
 * pools of keep-alive connections, and waits (for a primary, for a replay
 * target) are loop timers, never sleeps. Only the cluster view's watch
 * thread runs beside it (the view copies under its own lock). An earlier
 * version handed every request to a worker thread that proxied with
 * blocking libcurl; on two cores the thread hops cost half the read rate.
 */
#include "orchestrator/router.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <jansson.h>

#include "api/aclient.h"
#include "api/cluster.h"
#include "api/dataplane.h"
#include "api/etcd.h"
#include "api/jsonutil.h"
#include "api/log.h"
#include "api/names.h"
#include "api/server.h"
#include "api/token.h"
#include "orchestrator/router_int.h"
#include "placement/place.h"

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
    cfg->health_ms = 1000;
}

#define reply_dp(req, ...) api_reply_resp((req), api_dp_error_respf(__VA_ARGS__))

/* how long the loop polls after a request or a reply before it sleeps */
#define ROUTER_POLL_US 30

static void on_data(struct api_req *req, void *ud)
{
    struct orch_router *r = ud;
    struct api_dp_auth auth;
    struct api_err err;
    struct fwd *j;
    size_t len, plen;
    const char *v, *path = api_req_path(req, &plen);

    if (api_dp_authorize(req, r->pk, r->cfg.tenant_domain, &auth, &err) != API_OK) {
        api_reply_resp(req, api_dp_error_resp(&err));
        return;
    }
    if ((j = router_fwd_new(r, req, NULL)) == NULL) {
        reply_dp(req, API_ENOMEM, "out of memory");
        return;
    }
    v = api_req_header(req, "shoal-consistency", &len);
    router_fwd_set_tenant(j, auth.tenant, plen >= 9 && memcmp(path + plen - 9, "/pipeline", 9) == 0,
                          plen >= 10 && memcmp(path + plen - 10, "/v3/cursor", 10) == 0,
                          v != NULL && len == 7 && strncasecmp(v, "primary", 7) == 0);
    static const char *const pass[] = {"authorization", "content-type", "accept", "cookie", "shoal-min-txid",
                                       "shoal-consistency", "shoal-tenant", "x-turso-encryption-key", NULL};
    for (const char *const *h = pass; *h; h++)
        if ((v = api_req_header(req, *h, &len)) != NULL)
            router_fwd_add_header(j, *h, strlen(*h), v, len);
    router_fwd_start(j, req);
}

/* Paths no Shoal route matches go to an app (--app): the one whose name is
 * the Host's first label, else the only one configured. */
static void on_app(struct api_req *req, void *ud)
{
    struct orch_router *r = ud;
    const struct orch_app *app = NULL;
    struct fwd *j;
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
    if ((j = router_fwd_new(r, req, app)) == NULL) {
        reply_dp(req, API_ENOMEM, "out of memory");
        return;
    }
    /* `?region=` chooses the region, as in Fly.io's LiteFS example app */
    if (api_req_query(req, "region", region, sizeof(region)) == 1 && api_region_valid(region, strlen(region)))
        router_fwd_set_region(j, region);
    for (size_t i = 0; api_req_header_at(req, i, &name, &nlen, &value, &vlen); i++) {
        if (nlen == 0 || nlen >= 64 || name[0] == ':' || router_is_hop_by_hop(name, nlen) ||
            (nlen == 21 && memcmp(name, "fly-force-instance-id", 21) == 0) ||
            (nlen == 17 && memcmp(name, "fly-prefer-region", 17) == 0))
            continue;
        router_fwd_add_header(j, name, nlen, value, vlen);
    }
    router_fwd_add_header(j, "fly-region", 10, r->cfg.region, strlen(r->cfg.region));
    router_fwd_start(j, req);
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
    struct api_aclient_stats st;
    char buf[6144];
    size_t len = 0;
    int n;

    api_server_metrics(r->server, "shoal_router", buf, sizeof(buf), &len);
    api_aclient_stats(r->client, &st);
    n = snprintf(buf + len, sizeof(buf) - len,
                 "# TYPE shoal_router_forwarded_total counter\nshoal_router_forwarded_total %llu\n"
                 "# TYPE shoal_router_replays_total counter\nshoal_router_replays_total %llu\n"
                 "# TYPE shoal_router_replay_loops_total counter\nshoal_router_replay_loops_total %llu\n"
                 "# TYPE shoal_router_upstream_errors_total counter\nshoal_router_upstream_errors_total %llu\n"
                 "# TYPE shoal_router_reads_to_replicas_total counter\nshoal_router_reads_to_replicas_total %llu\n"
                 "# TYPE shoal_router_retries_total counter\nshoal_router_retries_total %llu\n"
                 "# TYPE shoal_router_replay_fallbacks_total counter\nshoal_router_replay_fallbacks_total %llu\n"
                 "# TYPE shoal_router_replay_too_large_total counter\nshoal_router_replay_too_large_total %llu\n"
                 "# TYPE shoal_router_lagging_skipped_total counter\nshoal_router_lagging_skipped_total %llu\n"
                 "# TYPE shoal_router_upstream_requests_total counter\nshoal_router_upstream_requests_total %llu\n"
                 "# TYPE shoal_router_upstream_connects_total counter\nshoal_router_upstream_connects_total %llu\n"
                 "# TYPE shoal_router_upstream_reuses_total counter\nshoal_router_upstream_reuses_total %llu\n"
                 "# TYPE shoal_router_upstream_stale_retries_total counter\n"
                 "shoal_router_upstream_stale_retries_total %llu\n"
                 "# TYPE shoal_router_upstream_pipelined_total counter\nshoal_router_upstream_pipelined_total %llu\n"
                 "# TYPE shoal_router_upstream_idle_connections gauge\nshoal_router_upstream_idle_connections %zu\n"
                 "# TYPE shoal_router_requests_in_flight gauge\nshoal_router_requests_in_flight %zu\n"
                 "# TYPE shoal_router_tenants gauge\nshoal_router_tenants %zu\n",
                 (unsigned long long)r->n.forwarded, (unsigned long long)r->n.replays,
                 (unsigned long long)r->n.replay_loops, (unsigned long long)r->n.upstream_errors,
                 (unsigned long long)r->n.reads_to_replicas, (unsigned long long)r->n.retries,
                 (unsigned long long)r->n.fallbacks, (unsigned long long)r->n.too_large,
                 (unsigned long long)r->n.lagging_skipped, (unsigned long long)st.requests,
                 (unsigned long long)st.connects, (unsigned long long)st.reuses,
                 (unsigned long long)st.stale_retries, (unsigned long long)st.pipelined, st.idle, router_fwd_count(r),
                 api_cluster_tenant_count(r->view));
    if (n > 0 && (size_t)n < sizeof(buf) - len)
        len += (size_t)n;
    if (r->health != NULL)
        router_health_metrics(r->health, buf, sizeof(buf), &len);
    api_reply_text(req, 200, "text/plain; version=0.0.4", buf, len);
}

/* ------------------------------------------------------------------ */
/* lifecycle                                                           */

int orch_router_new(const struct orch_router_config *cfg, struct orch_router **out, struct api_err *err)
{
    struct orch_router *r = calloc(1, sizeof(*r));
    struct api_server_config scfg = {.listen = cfg->listen, .max_body = cfg->max_body, .cors = 1};
    struct api_aclient_config ccfg = {.max_pipeline = cfg->pipeline};
    char *text = NULL, msg[256], p[128];
    size_t len;
    int rc;

    if (r == NULL)
        return api_err_set(err, API_ENOMEM, "out of memory");
    r->cfg = *cfg;
    snprintf(r->region_hdr, sizeof(r->region_hdr), "shoal-client-region: %s", cfg->region);
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
    if (cfg->app_config != NULL && (rc = router_apps_load(r, cfg->app_config, err)) != API_OK)
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
        (rc = api_server_new(&scfg, &r->server, err)) != API_OK ||
        (rc = api_aclient_new(r->server, &ccfg, &r->client, err)) != API_OK)
        goto fail;
    /* app instances may be named by host name: resolve them now, not on the loop */
    for (size_t i = 0; i < r->napps; i++)
        for (size_t k = 0; k < r->apps[i].n; k++)
            if ((rc = api_aclient_resolve(r->client, r->apps[i].inst[k].url, err)) != API_OK)
                goto fail;
    if (cfg->health_ms > 0 && (rc = router_health_new(r, cfg->health_ms, &r->health, err)) != API_OK)
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
    /* After a request the loop polls briefly (api_server_set_spin) instead
     * of sleeping: the instance's reply, then the client's next request,
     * come tens of µs later, and each wake-up of an idle vCPU costs more.
     * Nothing the router defers is marked api_pending_soon, so the poll is
     * all this turns on. */
    if (sysconf(_SC_NPROCESSORS_ONLN) > 1)
        api_server_set_spin(r->server, ROUTER_POLL_US);
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
    /* in this order: requests in flight own aclient calls and timers, which
     * must be gone before the server disposes the loop */
    if (r->client != NULL)
        router_fwd_drop_all(r);
    router_fwd_spare_free(r);
    router_health_free(r->health);
    api_aclient_free(r->client);
    api_server_free(r->server);
    api_cluster_close(r->view);
    api_etcd_free(r->etcd);
    place_regions_free(r->regions);
    free(r);
}
