/*
 * orchestrator/router.c: shoal-router (see router.h).
 *
 * Choosing the upstream, in order: a baton names the agent that holds its
 * stream ("<node>.…"); `fly-force-instance-id` names a node;
 * `fly-prefer-region` picks an instance of the tenant in that region;
 * otherwise the tenant's primary. (Reads go to the primary too until
 * replication lets replicas serve them.)
 *
 * Every upstream request carries `shoal-accept-replay: 1`, so an agent that
 * must not serve it answers `fly-replay` instead of forwarding, and
 * `shoal-client-region`, so agents count traffic by the caller's region.
 * Replays are followed at most twice (then 508 replay_loop); a replayed
 * request carries `fly-replay-src`.
 */
#include "orchestrator/router.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>

#include <jansson.h>

#include "api/cluster.h"
#include "api/dataplane.h"
#include "api/etcd.h"
#include "api/http.h"
#include "api/jsonutil.h"
#include "api/log.h"
#include "api/names.h"
#include "api/server.h"
#include "api/token.h"
#include "api/workq.h"
#include "placement/place.h"

#define ROUTER_MAX_HOPS 2
#define ROUTER_MAX_FWD_HEADERS 24

struct orch_router {
    struct orch_router_config cfg;
    unsigned char pk[API_TOKEN_PUBLIC_BYTES];
    struct place_regions *regions;
    struct api_etcd *etcd;
    struct api_cluster *view;
    struct api_workq *workers;
    struct api_server *server;
    atomic_ullong seq, forwarded, replays, replay_loops, upstream_errors;
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
}

/* ------------------------------------------------------------------ */
/* fly-replay                                                          */

static void trim(const char **s, size_t *len)
{
    while (*len > 0 && isspace((unsigned char)**s)) {
        (*s)++;
        (*len)--;
    }
    while (*len > 0 && isspace((unsigned char)(*s)[*len - 1]))
        (*len)--;
}

int orch_replay_parse(const char *value, struct orch_replay *out)
{
    struct orch_replay r;
    const char *p = value;
    int any = 0;

    memset(&r, 0, sizeof(r));
    if (value == NULL)
        return -1;
    while (*p) {
        const char *semi = p;
        int quoted = 0;
        while (*semi && (quoted || *semi != ';')) {
            if (*semi == '"')
                quoted = !quoted;
            semi++;
        }
        if (quoted)
            return -1;
        const char *field = p, *eq;
        size_t flen = (size_t)(semi - p);
        trim(&field, &flen);
        p = *semi ? semi + 1 : semi;
        if (flen == 0)
            continue;
        eq = memchr(field, '=', flen);
        if (eq == NULL)
            return -1;
        const char *k = field, *v = eq + 1;
        size_t klen = (size_t)(eq - field), vlen = flen - klen - 1;
        trim(&k, &klen);
        trim(&v, &vlen);
        if (vlen >= 2 && v[0] == '"' && v[vlen - 1] == '"') {
            v++;
            vlen -= 2;
        }
        if (klen == 6 && strncmp(k, "region", 6) == 0) {
            const char *q = v, *end = v + vlen;
            while (q < end) {
                const char *comma = memchr(q, ',', (size_t)(end - q));
                const char *item = q;
                size_t ilen = (size_t)((comma ? comma : end) - q);
                trim(&item, &ilen);
                if (ilen == 3 && strncmp(item, "any", 3) == 0)
                    r.any_region = 1;
                else if (api_region_valid(item, ilen) && r.nregions < ORCH_REPLAY_MAX_REGIONS)
                    snprintf(r.regions[r.nregions++], 8, "%.*s", (int)ilen, item);
                else
                    return -1;
                q = comma ? comma + 1 : end;
            }
        } else if (klen == 8 && strncmp(k, "instance", 8) == 0) {
            if (vlen == 0 || vlen >= sizeof(r.instance))
                return -1;
            snprintf(r.instance, sizeof(r.instance), "%.*s", (int)vlen, v);
        } else if (klen == 15 && strncmp(k, "prefer_instance", 15) == 0) {
            if (vlen == 0 || vlen >= sizeof(r.prefer_instance))
                return -1;
            snprintf(r.prefer_instance, sizeof(r.prefer_instance), "%.*s", (int)vlen, v);
        } else if (klen == 9 && strncmp(k, "elsewhere", 9) == 0) {
            r.elsewhere = vlen == 4 && strncmp(v, "true", 4) == 0;
        } else if (klen == 5 && strncmp(k, "state", 5) == 0) {
            if (vlen >= sizeof(r.state))
                return -1;
            snprintf(r.state, sizeof(r.state), "%.*s", (int)vlen, v);
        } else if (klen == 7 && strncmp(k, "timeout", 7) == 0) {
            char num[32];
            char *end;
            snprintf(num, sizeof(num), "%.*s", (int)(vlen < 31 ? vlen : 31), v);
            double d = strtod(num, &end);
            if (end == num || d < 0)
                return -1;
            r.timeout_ms = (long)(strcmp(end, "ms") == 0 ? d : strcmp(end, "s") == 0 || *end == '\0' ? d * 1000 : -1);
            if (r.timeout_ms < 0)
                return -1;
        } else if (klen == 8 && strncmp(k, "fallback", 8) == 0) {
            if (vlen == 10 && strncmp(v, "force_self", 10) == 0)
                r.fallback = 1;
            else if (vlen == 11 && strncmp(v, "prefer_self", 11) == 0)
                r.fallback = 2;
            else
                return -1;
        }
        /* unknown fields are ignored, as Fly.io's proxy does */
        any = 1;
    }
    if (!any || (r.nregions == 0 && !r.any_region && !r.instance[0] && !r.prefer_instance[0] && !r.elsewhere))
        return -1;
    *out = r;
    return 0;
}

/* ------------------------------------------------------------------ */
/* forwarding                                                          */

static const char *const hop_by_hop[] = {"connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade",
                                         "host", "content-length", "expect", "proxy-connection",
                                         "shoal-accept-replay", "shoal-client-region", "fly-replay-src", NULL};

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
    char tenant[API_NAME_MAX];
    char method[8];
    char *path; /* with query */
    char *body;
    size_t body_len;
    char *headers[ROUTER_MAX_FWD_HEADERS];
    size_t nheaders;
    char node[API_NAME_MAX];
    char url[API_URL_MAX];
};

static void fwd_job_free(struct fwd_job *j)
{
    for (size_t i = 0; i < j->nheaders; i++)
        free(j->headers[i]);
    free(j->path);
    free(j->body);
    free(j);
}

static int instance_in_region(struct orch_router *r, const struct api_cluster_tenant *t, const char *region,
                              const char *not_node, char *node, char *url)
{
    struct api_cluster_node n;
    /* the primary first, then the others in record order */
    if (t->leased && (not_node == NULL || strcmp(t->holder, not_node) != 0) && api_cluster_node(r->view, t->holder, &n) &&
        (region == NULL || strcmp(n.region, region) == 0)) {
        strcpy(node, n.node);
        strcpy(url, n.url);
        return 1;
    }
    for (size_t i = 0; i < t->nnodes; i++) {
        if (not_node != NULL && strcmp(t->nodes[i], not_node) == 0)
            continue;
        if (api_cluster_node(r->view, t->nodes[i], &n) && (region == NULL || strcmp(n.region, region) == 0)) {
            strcpy(node, n.node);
            strcpy(url, n.url);
            return 1;
        }
    }
    return 0;
}

/* Resolves a replay to NODE/URL; returns 0 if no candidate exists. */
static int replay_target(struct orch_router *r, const char *tenant, const struct orch_replay *rp,
                         const char *from_node, char *node, char *url)
{
    struct api_cluster_tenant t;
    struct api_cluster_node n;
    int known = api_cluster_tenant(r->view, tenant, &t);

    if (rp->instance[0]) {
        if (!api_cluster_node(r->view, rp->instance, &n))
            return 0;
        strcpy(node, n.node);
        strcpy(url, n.url);
        return 1;
    }
    if (rp->prefer_instance[0] && api_cluster_node(r->view, rp->prefer_instance, &n)) {
        strcpy(node, n.node);
        strcpy(url, n.url);
        return 1;
    }
    if (!known)
        return 0;
    const char *exclude = rp->elsewhere ? from_node : NULL;
    for (size_t i = 0; i < rp->nregions; i++)
        if (instance_in_region(r, &t, rp->regions[i], exclude, node, url))
            return 1;
    if (rp->any_region || rp->elsewhere)
        return instance_in_region(r, &t, NULL, exclude, node, url);
    return 0;
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

static void fwd_job_run(void *arg)
{
    struct fwd_job *j = arg;
    struct orch_router *r = j->r;
    char region_hdr[64], src_hdr[512] = "";
    struct api_resp *resp = NULL;

    if (tl_http == NULL && (tl_http = api_http_client_new()) == NULL) {
        api_pending_finish(j->pending, api_dp_error_respf(API_ENOMEM, "out of memory"));
        fwd_job_free(j);
        return;
    }
    snprintf(region_hdr, sizeof(region_hdr), "shoal-client-region: %s", r->cfg.region);
    for (int hop = 0;; hop++) {
        const char *hdrs[ROUTER_MAX_FWD_HEADERS + 4];
        size_t n = 0;
        char url[API_URL_MAX + 2048];
        for (size_t i = 0; i < j->nheaders; i++)
            hdrs[n++] = j->headers[i];
        hdrs[n++] = "shoal-accept-replay: 1";
        hdrs[n++] = region_hdr;
        if (src_hdr[0])
            hdrs[n++] = src_hdr;
        hdrs[n] = NULL;
        snprintf(url, sizeof(url), "%s%s", j->url, j->path);
        struct api_http_req rq = {.method = j->method, .url = url, .headers = hdrs, .body = j->body,
                                  .body_len = j->body_len, .timeout_ms = 60000};
        struct api_http_resp up;
        struct api_err err;
        int rc = api_http_do(tl_http, &rq, &up, &err);
        if (rc != API_OK && strcmp(j->method, "GET") == 0)
            rc = api_http_do(tl_http, &rq, &up, &err); /* an idempotent read is retried once */
        if (rc != API_OK) {
            atomic_fetch_add(&r->upstream_errors, 1);
            resp = api_dp_error_respf(API_EUPSTREAM, "tenant '%s': node '%s' did not answer: %s", j->tenant, j->node,
                              err.msg);
            break;
        }
        const char *replay = api_http_resp_header(&up, "fly-replay");
        if (replay == NULL) {
            atomic_fetch_add(&r->forwarded, 1);
            resp = relay(&up);
            api_http_resp_fini(&up);
            break;
        }
        struct orch_replay rp;
        char node[API_NAME_MAX], nurl[API_URL_MAX];
        if (orch_replay_parse(replay, &rp) != 0) {
            resp = api_dp_error_respf(API_EUPSTREAM, "node '%s' answered a malformed fly-replay '%.100s'", j->node, replay);
            api_http_resp_fini(&up);
            break;
        }
        if (hop >= ROUTER_MAX_HOPS) {
            atomic_fetch_add(&r->replay_loops, 1);
            resp = api_dp_error_respf(API_EREPLAYLOOP, "tenant '%s': more than %d replays (last from node '%s')", j->tenant,
                              ROUTER_MAX_HOPS, j->node);
            api_http_resp_fini(&up);
            break;
        }
        if (j->body_len > r->cfg.replay_max_body) {
            resp = api_dp_error_respf(API_ETOOLARGE, "a replayed request body is limited to %zu bytes (this one has %zu)",
                              r->cfg.replay_max_body, j->body_len);
            api_http_resp_fini(&up);
            break;
        }
        if (!replay_target(r, j->tenant, &rp, j->node, node, nurl)) {
            if (rp.fallback != 0) {
                resp = relay(&up);
                if (resp != NULL)
                    api_resp_add_header(resp, "fly-replay-failed", "reason=no_candidate");
            } else {
                resp = api_dp_error_respf(API_EUPSTREAM, "tenant '%s': no instance matches fly-replay '%.100s'", j->tenant,
                                  replay);
            }
            api_http_resp_fini(&up);
            break;
        }
        {
            struct api_cluster_node from;
            struct timeval tv;
            gettimeofday(&tv, NULL);
            int known = api_cluster_node(r->view, j->node, &from);
            snprintf(src_hdr, sizeof(src_hdr), "fly-replay-src: instance=%s;region=%s;t=%lld%s%s", j->node,
                     known ? from.region : "", (long long)tv.tv_sec * 1000000LL + tv.tv_usec,
                     rp.state[0] ? ";state=" : "", rp.state);
        }
        atomic_fetch_add(&r->replays, 1);
        snprintf(j->node, sizeof(j->node), "%s", node);
        snprintf(j->url, sizeof(j->url), "%s", nurl);
        api_http_resp_fini(&up);
    }
    api_pending_finish(j->pending, resp);
    fwd_job_free(j);
}

/* The node named by a baton in a pipeline body ("<node>.<...>"), if any. */
static int baton_node(const char *body, size_t len, char *node)
{
    json_t *doc = json_loadb(body, len, 0, NULL);
    const char *baton = json_string_value(json_object_get(doc, "baton"));
    const char *dot = baton ? strchr(baton, '.') : NULL;
    int ok = dot != NULL && api_name_valid(baton, (size_t)(dot - baton));
    if (ok)
        snprintf(node, API_NAME_MAX, "%.*s", (int)(dot - baton), baton);
    json_decref(doc);
    return ok;
}

#define reply_dp(req, ...) api_reply_resp((req), api_dp_error_respf(__VA_ARGS__))

static void on_data(struct api_req *req, void *ud)
{
    struct orch_router *r = ud;
    struct api_dp_auth auth;
    struct api_cluster_tenant t;
    struct api_cluster_node n;
    struct api_err err;
    struct fwd_job *j;
    size_t blen, mlen, len;
    const char *body = api_req_body(req, &blen), *method = api_req_method(req, &mlen);
    const char *v;
    char node[API_NAME_MAX] = "";

    if (api_dp_authorize(req, r->pk, r->cfg.tenant_domain, &auth, &err) != API_OK) {
        api_reply_resp(req, api_dp_error_resp(&err));
        return;
    }
    if (!api_cluster_tenant(r->view, auth.tenant, &t)) {
        reply_dp(req, API_ENOTENANT, "tenant '%s' does not exist", auth.tenant);
        return;
    }
    if (blen > 0 && baton_node(body, blen, node)) {
        if (!api_cluster_node(r->view, node, &n)) {
            reply_dp(req, API_EBATON, "the baton names node '%s', which is not serving", node);
            return;
        }
    } else if ((v = api_req_header(req, "fly-force-instance-id", &len)) != NULL) {
        snprintf(node, sizeof(node), "%.*s", (int)(len < 63 ? len : 63), v);
        if (!api_cluster_node(r->view, node, &n)) {
            reply_dp(req, API_ENONODE, "fly-force-instance-id names node '%s', which is not serving", node);
            return;
        }
    } else {
        char region[8] = "", url[API_URL_MAX];
        if ((v = api_req_header(req, "fly-prefer-region", &len)) != NULL && api_region_valid(v, len))
            snprintf(region, sizeof(region), "%.*s", (int)len, v);
        if (region[0] && instance_in_region(r, &t, region, NULL, node, url)) {
            api_cluster_node(r->view, node, &n);
        } else if (t.leased && api_cluster_node(r->view, t.holder, &n)) {
            snprintf(node, sizeof(node), "%s", t.holder);
        } else {
            reply_dp(req, API_EUNAVAILABLE, "tenant '%s' has no primary right now; retry shortly", auth.tenant);
            return;
        }
    }
    if ((j = calloc(1, sizeof(*j))) == NULL || (j->body = malloc(blen + 1)) == NULL) {
        free(j);
        reply_dp(req, API_ENOMEM, "out of memory");
        return;
    }
    j->r = r;
    snprintf(j->tenant, sizeof(j->tenant), "%s", auth.tenant);
    snprintf(j->method, sizeof(j->method), "%.*s", (int)(mlen < 7 ? mlen : 7), method);
    memcpy(j->body, body, blen);
    j->body_len = blen;
    snprintf(j->node, sizeof(j->node), "%s", n.node);
    snprintf(j->url, sizeof(j->url), "%s", n.url);
    {
        size_t tlen;
        const char *target = api_req_target(req, &tlen); /* the path as received, with its query */
        j->path = strndup(target, tlen);
    }
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
                     "# TYPE shoal_router_tenants gauge\nshoal_router_tenants %zu\n",
                     (unsigned long long)atomic_load(&r->forwarded), (unsigned long long)atomic_load(&r->replays),
                     (unsigned long long)atomic_load(&r->replay_loops),
                     (unsigned long long)atomic_load(&r->upstream_errors), api_cluster_tenant_count(r->view));
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
    if ((rc = api_read_file(cfg->regions_path, 1 << 20, &text, &len, err)) != API_OK)
        goto fail;
    if (place_regions_parse(text, len, &r->regions, msg, sizeof(msg)) != PLACE_OK) {
        rc = api_err_set(err, API_EINVAL, "regions file '%s': %s", cfg->regions_path, msg);
        goto fail;
    }
    if (place_region_index(r->regions, cfg->region) < 0) {
        rc = api_err_set(err, API_EINVAL, "region '%s' is not in '%s'", cfg->region, cfg->regions_path);
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
    if (rc != 0) {
        rc = api_err_set(err, API_ENOMEM, "registering routes: out of memory");
        goto fail;
    }
    free(text);
    log_info("listening on %s region=%s", api_server_url(r->server), cfg->region);
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
    free(r);
}
