/*
 * orchestrator/router_fwd.c: forwarding one request, on the router's loop.
 *
 * A `struct fwd` is a small state machine driven by three events: the
 * upstream's answer (api/aclient.h callback), a pause timer, and the start.
 * Its steps are the ones router.c's file comment describes:
 *   FIRST   choose the first upstream (or, after a failure, another one);
 *           a write may have to wait for a primary: it pauses and looks
 *           again until --replay-timeout, never sleeping;
 *   REPLAY  choose the target of a fly-replay, pausing while it is
 *           unreachable until the replay's timeout, then the fallback;
 *   SEND    one request upstream; the answer decides the next step.
 * Pauses are ROUTER_RETRY_PAUSE_MS on a loop timer. A client that goes away
 * ends its request at the next step (an upstream call already sent runs to
 * its end, so a write is never cut in half by the router).
 *
 * Must never block or sleep: everything here runs on the HTTP loop thread.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>

#include <jansson.h>

#include "api/dataplane.h"
#include "api/log.h"
#include "api/names.h"
#include "orchestrator/replay.h"
#include "orchestrator/router_int.h"

enum fwd_step { FWD_FIRST, FWD_REPLAY, FWD_SEND };

struct fwd {
    struct orch_router *r;
    struct fwd *prev, *next; /* r->live */
    struct api_pending *pending;
    struct api_aclient_call *call; /* the upstream request in flight, or NULL */
    struct api_timer *timer;       /* pauses; created on first use */
    const struct orch_app *app;    /* NULL for a Shoal tenant */
    char tenant[API_NAME_MAX];
    char method[8];
    char *path; /* with query */
    char *body;
    size_t body_len;
    char *headers[ROUTER_MAX_FWD_HEADERS];
    size_t nheaders;
    int pipeline, cursor, to_primary;
    char prefer_region[8]; /* fly-prefer-region, or ?region= for apps */
    char force_instance[API_NAME_MAX];
    struct api_pipeline_info info;
    int idempotent, read;
    /* routing state */
    enum fwd_step step;
    struct cand cur, origin;
    struct orch_replay rp;
    char src[ORCH_REPLAY_STATE_MAX + 256], failed[512];
    char exclude[API_NAME_MAX]; /* FIRST: the instance that just failed, "" for none */
    int hops, retried, replaying, tried;
    int retrying;               /* FIRST after a failure: if nothing else, report RETRY_ERR */
    struct api_err retry_err;
    int64_t deadline, unserved_deadline, primary_deadline;
    int64_t unknown_deadline; /* a tenant not in the view is waited for until then */
};

#define HOP(s) {s, sizeof(s) - 1}
static const struct {
    const char *name;
    size_t len;
} hop_by_hop[] = {HOP("connection"),          HOP("keep-alive"),          HOP("te"),
                  HOP("trailer"),             HOP("transfer-encoding"),   HOP("upgrade"),
                  HOP("host"),                HOP("content-length"),      HOP("expect"),
                  HOP("proxy-connection"),    HOP("shoal-accept-replay"), HOP("shoal-client-region"),
                  HOP("fly-replay-src"),      HOP("fly-replay-failed"),   HOP("fly-replay")};
#undef HOP

int router_is_hop_by_hop(const char *name, size_t len)
{
    for (size_t i = 0; i < sizeof(hop_by_hop) / sizeof(hop_by_hop[0]); i++)
        if (hop_by_hop[i].len == len && strncasecmp(name, hop_by_hop[i].name, len) == 0)
            return 1;
    return 0;
}

static void fwd_run(struct fwd *j);

/* ------------------------------------------------------------------ */
/* life of a request                                                   */

/* A struct fwd is some 3 KiB, past what malloc keeps in its per-thread
 * cache: each request paid a trip through the main heap (and its
 * consolidation) for it. So up to ROUTER_FWD_SPARE freed ones are kept for
 * reuse. Not under AddressSanitizer, which should see every use after free. */
#if defined(__SANITIZE_ADDRESS__)
#define FWD_SPARE 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define FWD_SPARE 0
#endif
#endif
#ifndef FWD_SPARE
#define FWD_SPARE ROUTER_FWD_SPARE
#endif

/* A zeroed struct fwd, or NULL. */
static struct fwd *fwd_alloc(struct orch_router *r)
{
    struct fwd *j = r->spare;
    if (j == NULL)
        return calloc(1, sizeof(*j));
    r->spare = j->next;
    r->nspare--;
    memset(j, 0, sizeof(*j));
    return j;
}

/* Frees J's own block (NULL is a no-op); its contents are gone already. */
static void fwd_release(struct orch_router *r, struct fwd *j)
{
    if (j == NULL)
        return;
#if FWD_SPARE == 0
    (void)r;
    free(j);
#else
    if (r->nspare >= FWD_SPARE) {
        free(j);
        return;
    }
    j->next = r->spare;
    r->spare = j;
    r->nspare++;
#endif
}

void router_fwd_spare_free(struct orch_router *r)
{
    while (r->spare != NULL) {
        struct fwd *j = r->spare;
        r->spare = j->next;
        free(j);
    }
    r->nspare = 0;
}

struct fwd *router_fwd_new(struct orch_router *r, struct api_req *req, const struct orch_app *app)
{
    struct fwd *j;
    size_t blen, mlen, tlen, len;
    const char *body = api_req_body(req, &blen), *method = api_req_method(req, &mlen);
    const char *target = api_req_target(req, &tlen), *v;

    if ((j = fwd_alloc(r)) == NULL || (j->body = malloc(blen + 1)) == NULL ||
        (j->path = strndup(target, tlen)) == NULL) {
        if (j != NULL)
            free(j->body);
        fwd_release(r, j);
        return NULL;
    }
    j->r = r;
    j->app = app;
    mlen = mlen < sizeof(j->method) - 1 ? mlen : sizeof(j->method) - 1;
    memcpy(j->method, method, mlen);
    j->method[mlen] = '\0';
    memcpy(j->body, body, blen);
    j->body_len = blen;
    if ((v = api_req_header(req, "fly-force-instance-id", &len)) != NULL)
        snprintf(j->force_instance, sizeof(j->force_instance), "%.*s", (int)(len < 63 ? len : 63), v);
    if ((v = api_req_header(req, "fly-prefer-region", &len)) != NULL && api_region_valid(v, len))
        snprintf(j->prefer_region, sizeof(j->prefer_region), "%.*s", (int)len, v);
    return j;
}

void router_fwd_set_tenant(struct fwd *j, const char *tenant, int pipeline, int cursor, int to_primary)
{
    router_copy(j->tenant, sizeof(j->tenant), tenant);
    j->pipeline = pipeline;
    j->cursor = cursor;
    j->to_primary = to_primary;
}

void router_fwd_set_region(struct fwd *j, const char *region)
{
    snprintf(j->prefer_region, sizeof(j->prefer_region), "%.7s", region);
}

void router_fwd_add_header(struct fwd *j, const char *name, size_t nlen, const char *value, size_t vlen)
{
    char *line;
    if (j->nheaders >= ROUTER_MAX_FWD_HEADERS || (line = malloc(nlen + vlen + 3)) == NULL)
        return;
    memcpy(line, name, nlen);
    memcpy(line + nlen, ": ", 2);
    memcpy(line + nlen + 2, value, vlen);
    line[nlen + 2 + vlen] = '\0';
    j->headers[j->nheaders++] = line;
}

static void fwd_free(struct fwd *j)
{
    struct orch_router *r = j->r;
    if (j->prev != NULL)
        j->prev->next = j->next;
    else if (r->live == j)
        r->live = j->next;
    if (j->next != NULL)
        j->next->prev = j->prev;
    api_timer_free(j->timer);
    for (size_t i = 0; i < j->nheaders; i++)
        free(j->headers[i]);
    free(j->path);
    free(j->body);
    fwd_release(r, j);
}

/* Replies RESP (taken; NULL only when the client is gone) and frees J. */
static void fwd_finish(struct fwd *j, struct api_resp *resp)
{
    api_pending_reply(j->pending, resp);
    fwd_free(j);
}

void router_fwd_drop_all(struct orch_router *r)
{
    while (r->live != NULL) {
        struct fwd *j = r->live;
        if (j->call != NULL)
            api_aclient_cancel(j->call);
        fwd_finish(j, api_dp_error_respf(API_EUNAVAILABLE, "the router is shutting down"));
    }
}

size_t router_fwd_count(const struct orch_router *r)
{
    size_t n = 0;
    for (const struct fwd *j = r->live; j != NULL; j = j->next)
        n++;
    return n;
}

static void on_pause_over(void *ud)
{
    fwd_run(ud);
}

/* Runs the current step again after ROUTER_RETRY_PAUSE_MS. */
static void fwd_pause(struct fwd *j)
{
    if (j->timer == NULL && (j->timer = api_timer_new(j->r->server, on_pause_over, j)) == NULL) {
        fwd_finish(j, api_dp_error_respf(API_ENOMEM, "out of memory"));
        return;
    }
    api_timer_start(j->timer, ROUTER_RETRY_PAUSE_MS);
}

/* The next step is choosing a first upstream again, never EXCLUDE (may be NULL). */
static void goto_first(struct fwd *j, const char *exclude)
{
    j->step = FWD_FIRST;
    router_copy(j->exclude, sizeof(j->exclude), exclude ? exclude : "");
    j->primary_deadline = 0;
}

void router_fwd_start(struct fwd *j, struct api_req *req)
{
    struct orch_router *r = j->r;

    if (j->app == NULL && (j->pipeline || j->cursor) && j->body_len > 0)
        api_pipeline_inspect(j->body, j->body_len, &j->info);
    if (j->app == NULL)
        j->read = !j->to_primary && !j->cursor &&
                  (strcmp(j->method, "GET") == 0 ||
                   (j->pipeline && j->info.reads_only && j->info.ends_with_close && !j->info.has_baton));
    else
        j->read = strcmp(j->method, "GET") == 0 || strcmp(j->method, "HEAD") == 0;
    j->idempotent = j->read;
    j->next = r->live;
    if (r->live != NULL)
        r->live->prev = j;
    r->live = j;
    j->pending = api_req_defer(req);
    goto_first(j, NULL);
    fwd_run(j);
}

/* ------------------------------------------------------------------ */
/* choosing                                                            */

static int load_cands(struct fwd *j, struct cands *cs)
{
    if (j->app != NULL) {
        router_app_cands(j->app, cs);
        return 1;
    }
    return router_tenant_cands(j->r, j->tenant, cs);
}

enum { PICK_OK, PICK_ERR, PICK_WAIT };

/* The tenant's primary, if it has one that is not marked down; at the
 * deadline (--replay-timeout after the first look) a down one is taken
 * anyway (an agent restarted on its port serves again at once). */
static int pick_primary(struct fwd *j, struct cand *out)
{
    struct cands cs;
    int64_t now = api_now_ms();
    if (j->primary_deadline == 0)
        j->primary_deadline = now + j->r->cfg.replay_timeout_ms;
    if (!router_tenant_cands(j->r, j->tenant, &cs))
        return PICK_ERR;
    int have = cs.n > 0 && cs.v[0].primary;
    if (have && (!router_is_down(j->r, cs.v[0].url) || now >= j->primary_deadline)) {
        *out = cs.v[0];
        return PICK_OK;
    }
    return now >= j->primary_deadline ? PICK_ERR : PICK_WAIT;
}

/* The first upstream of J (see router.c's file comment), never EXCLUDE
 * (may be NULL). PICK_OK with *OUT set, PICK_WAIT (look again after a
 * pause), or PICK_ERR with *ERR the response to send. */
static int first_target(struct fwd *j, const char *exclude, struct cand *out, struct api_resp **err)
{
    struct orch_router *r = j->r;
    struct cands cs;
    int rc;

    if (!load_cands(j, &cs)) {
        /* The token is valid, so the tenant existed or was about to: one
         * created a moment ago may not have reached this router's view
         * (an etcd watch) yet. Give it --replay-timeout before saying 404. */
        int64_t now = api_now_ms();
        if (j->unknown_deadline == 0)
            j->unknown_deadline = now + r->cfg.replay_timeout_ms;
        if (now < j->unknown_deadline)
            return PICK_WAIT;
        *err = api_dp_error_respf(API_ENOTENANT, "tenant '%s' does not exist", j->tenant);
        return PICK_ERR;
    }
    if (j->app == NULL && j->info.has_baton) {
        /* a stream lives on one agent: nowhere else can continue it */
        if (!j->info.baton_node[0] || !router_node_cand(r, j->info.baton_node, out)) {
            *err = api_dp_error_respf(API_EBATON, "the baton names node '%s', which is not serving",
                                      j->info.baton_node[0] ? j->info.baton_node : "(none)");
            return PICK_ERR;
        }
        return PICK_OK;
    }
    if (j->force_instance[0]) {
        const struct cand *c = router_find_cand(&cs, j->force_instance);
        if (c != NULL) {
            *out = *c;
            return PICK_OK;
        }
        /* any agent answers any tenant: it forwards or replays */
        if (j->app == NULL && router_node_cand(r, j->force_instance, out))
            return PICK_OK;
        *err = api_dp_error_respf(API_ENONODE, "fly-force-instance-id names instance '%s', which is not serving",
                                  j->force_instance);
        return PICK_ERR;
    }
    const char *reads_of = j->app == NULL && j->read ? j->tenant : NULL;
    if (j->prefer_region[0] && router_pick_nearest(r, &cs, j->prefer_region, exclude, 0, reads_of, out))
        return PICK_OK;
    if (j->app != NULL || j->read) {
        if (router_pick_nearest(r, &cs, NULL, exclude, 0, reads_of, out) ||
            router_pick_nearest(r, &cs, NULL, NULL, 1, NULL, out)) {
            if (!out->primary && j->app == NULL)
                r->n.reads_to_replicas++;
            return PICK_OK;
        }
        if (j->app != NULL) {
            *err = api_dp_error_respf(API_EUPSTREAM, "app '%s' has no instance", j->app->name);
            return PICK_ERR;
        }
    }
    if ((rc = pick_primary(j, out)) == PICK_ERR)
        *err = api_dp_error_respf(API_EUNAVAILABLE, "tenant '%s' has no primary right now; retry shortly", j->tenant);
    return rc;
}

/* Where a replay RP issued by ORIGIN goes now. Returns 1 with *OUT, or 0. */
static int replay_target(struct fwd *j, const struct orch_replay *rp, const struct cand *origin, struct cand *out)
{
    struct orch_router *r = j->r;
    struct cands cs;
    const struct cand *c;
    const char *exclude = rp->elsewhere ? origin->id : NULL;

    if (!load_cands(j, &cs))
        return 0;
    if (rp->instance[0]) {
        if ((c = router_find_cand(&cs, rp->instance)) != NULL && !router_is_down(r, c->url)) {
            *out = *c;
            return 1;
        }
        /* an agent replays to the primary it knew; if that one is gone and
         * another holds the lease now, the new one is meant */
        if (j->app == NULL && cs.n > 0 && cs.v[0].primary && strcmp(cs.v[0].id, rp->instance) != 0 &&
            !router_is_down(r, cs.v[0].url)) {
            *out = cs.v[0];
            return 1;
        }
        if (c != NULL) {
            *out = *c; /* down, but named exactly: try it again until the deadline */
            return 1;
        }
        return j->app == NULL && router_node_cand(r, rp->instance, out);
    }
    if (rp->prefer_instance[0] && (c = router_find_cand(&cs, rp->prefer_instance)) != NULL &&
        !router_is_down(r, c->url)) {
        *out = *c;
        return 1;
    }
    for (size_t i = 0; i < rp->nregions; i++)
        if (router_pick_nearest(r, &cs, rp->regions[i], exclude, 0, NULL, out))
            return 1;
    if (rp->any_region || rp->elsewhere || rp->prefer_instance[0])
        return router_pick_nearest(r, &cs, NULL, exclude, 0, NULL, out);
    return 0;
}

static void set_src(struct fwd *j)
{
    struct timeval tv;
    int n;
    gettimeofday(&tv, NULL);
    memcpy(j->src, "fly-replay-src: ", 16);
    n = orch_replay_src_format(j->src + 16, sizeof(j->src) - 16, j->origin.id, j->origin.region,
                               (int64_t)tv.tv_sec * 1000000 + tv.tv_usec, j->rp.state);
    if (n < 0)
        j->src[0] = '\0';
}

/* ------------------------------------------------------------------ */
/* answers                                                             */

/* Sends UP to the client as it came, less hop-by-hop and per-server
 * headers; takes its body (it can be megabytes: never copied). */
static void relay(struct fwd *j, struct api_aclient_resp *up)
{
    struct api_hdr_view hv[API_RESP_MAX_HEADERS * 2];
    size_t n = 0, ctlen = 0;
    const char *ct = api_aclient_resp_header(up, "content-type", &ctlen);

    for (size_t i = 0; i < up->nheaders && n < sizeof(hv) / sizeof(hv[0]); i++) {
        const struct api_aclient_header *h = &up->headers[i];
        if (router_is_hop_by_hop(h->name, h->name_len) || strcmp(h->name, "content-type") == 0 ||
            strcmp(h->name, "date") == 0 || strcmp(h->name, "server") == 0 ||
            strncmp(h->name, "access-control-", 15) == 0)
            continue;
        hv[n++] = (struct api_hdr_view){h->name, h->name_len, h->value, h->value_len};
    }
    if (ct == NULL) {
        ct = "application/octet-stream";
        ctlen = strlen(ct);
    }
    api_pending_reply_parts(j->pending, up->status, ct, ctlen, hv, n, up->body, up->body_len);
    up->body = NULL;
    fwd_free(j);
}

/* 1 if UP is an agent's refusal that guarantees nothing ran: 503 with
 * `Retry-After` and the error code "unavailable" (no primary right now, or
 * the tenant moving). Agents send Retry-After only on those; a quorum
 * timeout or a failed capture is also 503 but may follow a commit, so it is
 * never sent again. */
static int not_served(const struct api_aclient_resp *up)
{
    json_t *doc;
    const char *code;
    int yes;
    if (up->status != 503 || up->body_len == 0 || api_aclient_resp_header(up, "retry-after", NULL) == NULL)
        return 0;
    doc = json_loadb(up->body, up->body_len, 0, NULL);
    code = json_string_value(json_object_get(json_object_get(doc, "error"), "code"));
    yes = code != NULL && strcmp(code, "unavailable") == 0;
    json_decref(doc);
    return yes;
}

static const char *what_of(const struct fwd *j)
{
    return j->app ? "app" : "tenant";
}

static const char *name_of(const struct fwd *j)
{
    return j->app ? j->app->name : j->tenant;
}

static void on_upstream(void *ud, int rc, struct api_aclient_resp *up, const struct api_err *err, int not_sent)
{
    struct fwd *j = ud;
    struct orch_router *r = j->r;
    struct api_err perr;
    size_t vlen;
    const char *replay;

    j->call = NULL;
    if (rc != API_OK) {
        if (not_sent)
            router_mark_down(r, j->cur.url);
        if (j->replaying && not_sent) {
            j->tried = 1;
            j->step = FWD_REPLAY;
            if (api_now_ms() < j->deadline)
                fwd_pause(j);
            else
                fwd_run(j);
            return;
        }
        /* nothing was sent, or a read: safe to try once more elsewhere */
        if (j->hops == 0 && !j->retried && (not_sent || j->idempotent) && !j->info.has_baton &&
            !j->force_instance[0]) {
            j->retried = 1;
            j->retrying = 1;
            j->retry_err = *err;
            r->n.retries++;
            goto_first(j, j->cur.id);
            fwd_run(j);
            return;
        }
        r->n.upstream_errors++;
        fwd_finish(j, api_dp_error_respf(API_EUPSTREAM, "%s '%s': instance '%s' did not answer: %s", what_of(j),
                                         name_of(j), j->cur.id, err->msg));
        return;
    }
    if (j->tried || router_is_down(r, j->cur.url))
        router_mark_up(r, j->cur.url);
    j->replaying = 0;
    if (j->app == NULL && !j->info.has_baton && !j->force_instance[0] && not_served(up)) {
        /* the agent ran nothing: its tenant is between primaries (a
         * handover's lease moves in one txn, the target acquires it a few
         * ms later). Ask again until --replay-timeout. */
        int64_t now = api_now_ms();
        if (j->unserved_deadline == 0)
            j->unserved_deadline = now + r->cfg.replay_timeout_ms;
        if (now < j->unserved_deadline) {
            r->n.retries++;
            goto_first(j, NULL);
            fwd_pause(j);
            return;
        }
    }
    if ((replay = api_aclient_resp_header(up, "fly-replay", &vlen)) == NULL) {
        r->n.forwarded++;
        relay(j, up);
        return;
    }
    if (orch_replay_parse(replay, &j->rp, &perr) != API_OK) {
        fwd_finish(j, api_dp_error_respf(API_EUPSTREAM, "%s '%s': instance '%s' answered a malformed fly-replay: %s",
                                         what_of(j), name_of(j), j->cur.id, perr.msg));
        return;
    }
    if (j->hops >= ROUTER_MAX_HOPS) {
        r->n.replay_loops++;
        fwd_finish(j, api_dp_error_respf(API_EREPLAYLOOP, "%s '%s': more than %d replays (last from instance '%s')",
                                         what_of(j), name_of(j), ROUTER_MAX_HOPS, j->cur.id));
        return;
    }
    if (j->body_len > r->cfg.replay_max_body) {
        r->n.too_large++;
        fwd_finish(j, api_dp_error_respf(API_ETOOLARGE,
                                         "%s '%s': instance '%s' asked for a replay, and a replayed request body is "
                                         "limited to %zu bytes (this one has %zu; --replay-max-body)",
                                         what_of(j), name_of(j), j->cur.id, r->cfg.replay_max_body, j->body_len));
        return;
    }
    r->n.replays++;
    j->hops++;
    j->origin = j->cur;
    j->failed[0] = '\0';
    j->replaying = 1;
    j->tried = 0;
    j->deadline = api_now_ms() + (j->rp.timeout_ms > 0 ? j->rp.timeout_ms : r->cfg.replay_timeout_ms);
    j->step = FWD_REPLAY;
    fwd_run(j);
}

/* One request to J->cur, with the router's own headers. */
static void fwd_send(struct fwd *j)
{
    const char *hdrs[ROUTER_MAX_FWD_HEADERS + 4];
    size_t n = 0;

    for (size_t i = 0; i < j->nheaders; i++)
        hdrs[n++] = j->headers[i];
    if (j->app == NULL) {
        hdrs[n++] = "shoal-accept-replay: 1";
        hdrs[n++] = j->r->region_hdr;
    }
    if (j->src[0])
        hdrs[n++] = j->src;
    if (j->failed[0])
        hdrs[n++] = j->failed;
    /* agents are h2o servers, which answer pipelined requests in order; an
     * --app server may not be, so its requests always go alone */
    struct api_aclient_req rq = {.method = j->method, .url = j->cur.url, .path = j->path, .headers = hdrs,
                                 .nheaders = n, .body = j->body, .body_len = j->body_len,
                                 .pipeline = j->app == NULL && j->idempotent};
    j->call = api_aclient_send(j->r->client, &rq, on_upstream, j);
}

/* The REPLAY step. Returns 1 when J->cur is set (send next), 0 when J
 * paused or finished. */
static int replay_step(struct fwd *j)
{
    struct orch_router *r = j->r;
    struct cand t;
    int64_t now = api_now_ms();
    /* a target that refused is retried until the deadline, at least once */
    int found = !(j->tried && now >= j->deadline) && replay_target(j, &j->rp, &j->origin, &t);

    if (!found && now < j->deadline) {
        fwd_pause(j);
        return 0;
    }
    if (!found) {
        /* the fallback, as Fly.io's proxy: back to the instance that
         * replayed, which learns why from fly-replay-failed */
        char v[400];
        struct cands cs;
        if (j->rp.fallback == ORCH_FALLBACK_NONE ||
            orch_replay_failed_format(v, sizeof(v), &j->rp, j->tried ? "timeout" : "no_candidate") < 0) {
            fwd_finish(j, api_dp_error_respf(API_EUPSTREAM, "%s '%s': fly-replay target (%s) %s", what_of(j),
                                             name_of(j),
                                             j->rp.instance[0] ? j->rp.instance
                                             : j->rp.nregions  ? j->rp.regions[0]
                                                               : "any",
                                             j->tried ? "did not answer in time" : "does not exist"));
            return 0;
        }
        snprintf(j->failed, sizeof(j->failed), "fly-replay-failed: %s", v);
        r->n.fallbacks++;
        t = j->origin;
        if (j->rp.fallback == ORCH_FALLBACK_PREFER_SELF && router_is_down(r, j->origin.url) && load_cands(j, &cs))
            router_pick_nearest(r, &cs, NULL, NULL, 0, NULL, &t);
        j->src[0] = '\0';
        j->replaying = 0;
    }
    if (j->replaying)
        set_src(j);
    j->cur = t;
    return 1;
}

/* Runs J from its current step until it sends, pauses or finishes. */
static void fwd_run(struct fwd *j)
{
    struct api_resp *err = NULL;
    int rc;

    if (api_pending_gone(j->pending)) {
        fwd_finish(j, NULL); /* the client left: nothing more to do */
        return;
    }
    switch (j->step) {
    case FWD_FIRST:
        rc = first_target(j, j->exclude[0] ? j->exclude : NULL, &j->cur, &err);
        if (rc == PICK_WAIT) {
            fwd_pause(j);
            return;
        }
        if (rc == PICK_ERR) {
            if (j->retrying) {
                /* nowhere else to go: report the failure that sent us here */
                api_resp_free(err);
                j->r->n.upstream_errors++;
                fwd_finish(j, api_dp_error_respf(API_EUPSTREAM, "%s '%s': instance '%s' did not answer: %s",
                                                 what_of(j), name_of(j), j->exclude, j->retry_err.msg));
                return;
            }
            fwd_finish(j, err);
            return;
        }
        if (j->retrying) {
            log_info("retrying %s=%s after %s failed: %s", what_of(j), name_of(j), j->exclude, j->retry_err.msg);
            j->retrying = 0;
        }
        break;
    case FWD_REPLAY:
        if (!replay_step(j))
            return;
        break;
    case FWD_SEND:
        break;
    }
    j->step = FWD_SEND;
    fwd_send(j);
}
