/*
 * nodeagent/repl_pull.c: the replica's side of replication transport.
 *
 * One puller thread per upstream node carries every tenant this node
 * follows there: it holds one long-poll at a time, hands the records of
 * each tenant to that tenant's worker (tenants apply in parallel, each in
 * order), fetches snapshots when told, and sends the new positions with the
 * next poll: those are the acknowledgements quorum writes wait for.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "api/cluster.h"
#include "api/http.h"
#include "api/log.h"
#include "api/workq.h"
#include "nodeagent/repl_int.h"
#include "nodeagent/repl_sum.h"

struct puller {
    struct agent_repl *r;
    char node[64];
    char url[160];
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct api_map *tenants; /* id -> (void *)1: the tenants followed */
    /* id -> (void *)1: tenants whose position the next poll must send (new,
     * or changed by an apply); a new session sends every position. A poll
     * then costs its changes, not the number of tenants followed. */
    struct api_map *pending;
    struct api_map *drops; /* id -> (void *)1 */
    int stopping, started, reset;
    int polling;      /* a long-poll is in flight ... */
    char session[64]; /* ... in this session */
    int kicked;       /* ... and its hub was asked to answer it now */
    atomic_int cancel;
    pthread_t thread;
};

struct countdown {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    size_t n;
};

static void countdown_done(struct countdown *c)
{
    pthread_mutex_lock(&c->mu);
    if (--c->n == 0) /* the waiter wakes once, not once per job */
        pthread_cond_signal(&c->cv);
    pthread_mutex_unlock(&c->mu);
}

struct apply_job {
    struct agent_repl *r;
    char tenant[64];
    unsigned char *recs; /* concatenated records */
    size_t len, cap;
    unsigned char *snapshot; /* or a snapshot to install */
    size_t snap_len;
    int load_only;
    uint64_t head;
    int have_head;
    struct apply_job *next;
};

/* One tenant's share of a poll, on the tenant's worker. */
static void apply_one(struct apply_job *j)
{
    struct api_err err;
    struct rt *t = repl_rt_get(j->r, j->tenant, 1);
    int rc = API_OK;

    if (t == NULL)
        return;
    pthread_mutex_lock(&t->mu);
    int follow = t->want == AGENT_ROLE_REPLICA, loaded = t->loaded == AGENT_ROLE_REPLICA;
    pthread_mutex_unlock(&t->mu);
    if (!follow)
        return;
    if (j->load_only || (!loaded && (j->snapshot != NULL || j->len > 0)))
        rc = agent_repl_ensure(j->r, j->tenant, AGENT_ROLE_REPLICA, &err); /* an unborn copy is born now */
    if (rc == API_OK && !j->load_only) {
        if (j->snapshot != NULL)
            rc = repl_snapshot_install(j->r, t, j->snapshot, j->snap_len, &err);
        else if (j->len > 0)
            rc = repl_receive(j->r, t, j->recs, j->len, &err);
    }
    if (rc != API_OK)
        log_warn("tenant=%s replication: %s", j->tenant, err.msg);
    if (j->have_head) {
        pthread_mutex_lock(&t->mu);
        if (j->head > t->head_txid)
            t->head_txid = j->head;
        if (t->head_txid > t->txid && t->behind_since_ms == 0) {
            t->behind_since_ms = api_now_ms();
        } else if (t->head_txid <= t->txid) {
            t->behind_since_ms = 0;
        }
        pthread_mutex_unlock(&t->mu);
    }
}

/* The jobs of one worker thread (tenants whose keys share a slot). */
struct apply_batch {
    struct apply_batch *next;
    size_t slot;
    struct countdown *cd;
    struct apply_job **v;
    size_t n, cap;
};

static void apply_batch_job(void *arg)
{
    struct apply_batch *b = arg;
    for (size_t i = 0; i < b->n; i++)
        apply_one(b->v[i]);
    countdown_done(b->cd);
}

static struct apply_job *job_for(struct apply_job **list, struct agent_repl *r, const char *id)
{
    for (struct apply_job *j = *list; j != NULL; j = j->next)
        if (strcmp(j->tenant, id) == 0)
            return j;
    struct apply_job *j = calloc(1, sizeof(*j));
    if (j == NULL)
        return NULL;
    j->r = r;
    snprintf(j->tenant, sizeof(j->tenant), "%s", id);
    j->next = *list;
    *list = j;
    return j;
}

/* Records the primary's head for each job that carries nothing else, here
 * rather than on the tenant's worker, and frees those jobs. Returns the
 * jobs left. */
static struct apply_job *note_heads(struct agent_repl *r, struct apply_job *list)
{
    struct apply_job **pp = &list;
    while (*pp != NULL) {
        struct apply_job *j = *pp;
        if (j->len > 0 || j->snapshot != NULL || j->load_only) {
            pp = &j->next;
            continue;
        }
        struct rt *t = j->have_head ? repl_rt_get(r, j->tenant, 0) : NULL;
        if (t != NULL) {
            pthread_mutex_lock(&t->mu);
            if (t->want == AGENT_ROLE_REPLICA && j->head > t->head_txid)
                t->head_txid = j->head;
            if (t->want == AGENT_ROLE_REPLICA && t->head_txid > t->txid && t->behind_since_ms == 0)
                t->behind_since_ms = api_now_ms();
            else if (t->head_txid <= t->txid)
                t->behind_since_ms = 0;
            pthread_mutex_unlock(&t->mu);
        }
        *pp = j->next;
        free(j->recs);
        free(j);
    }
    return list;
}

/* Runs every job on its tenant's slot and waits for all of them. The jobs
 * of tenants that share a slot go as one job, run on this thread when the
 * slot is idle, else queued on the pool: a poll that brought a hundred
 * tenants wakes each busy slot's thread once, and this thread once. */
static void run_jobs(struct agent_repl *r, struct apply_job *list)
{
    struct countdown cd = {.n = 0};
    struct apply_batch *batches = NULL, *b;
    pthread_mutex_init(&cd.mu, NULL);
    pthread_cond_init(&cd.cv, NULL);
    for (struct apply_job *j = list; j != NULL; j = j->next) {
        uint64_t key = agent_repl_key(j->tenant);
        size_t slot = api_workq_slot(r->cfg.workers, key);
        for (b = batches; b != NULL && b->slot != slot; b = b->next)
            ;
        if (b == NULL) {
            if ((b = calloc(1, sizeof(*b))) == NULL) {
                apply_one(j); /* out of memory: on this thread, as a last resort */
                continue;
            }
            b->slot = slot;
            b->cd = &cd;
            b->next = batches;
            batches = b;
        }
        if (b->n == b->cap) {
            size_t ncap = b->cap ? b->cap * 2 : 8;
            void *nv = realloc(b->v, ncap * sizeof(*b->v));
            if (nv == NULL) {
                apply_one(j);
                continue;
            }
            b->v = nv;
            b->cap = ncap;
        }
        b->v[b->n++] = j;
    }
    for (b = batches; b != NULL; b = b->next)
        cd.n++;
    /* A batch whose slot is idle runs here, on this thread, as that slot's
     * job: no worker to wake and none to wake us, the two switches that
     * were most of a record's time on a replica under load on two cores.
     * A busy slot (a read on it, a batch of ours still queued) gets the
     * batch queued behind its jobs as before. */
    for (b = batches; b != NULL; b = b->next) {
        uint64_t key = agent_repl_key(b->v[0]->tenant);
        if (!api_workq_try_run(r->cfg.workers, key, apply_batch_job, b))
            api_workq_submit(r->cfg.workers, key, apply_batch_job, b);
    }
    pthread_mutex_lock(&cd.mu);
    while (cd.n > 0)
        pthread_cond_wait(&cd.cv, &cd.mu);
    pthread_mutex_unlock(&cd.mu);
    pthread_mutex_destroy(&cd.mu);
    pthread_cond_destroy(&cd.cv);
    while (batches != NULL) {
        b = batches->next;
        free(batches->v);
        free(batches);
        batches = b;
    }
}

static void free_jobs(struct apply_job *list)
{
    while (list != NULL) {
        struct apply_job *n = list->next;
        free(list->recs);
        free(list->snapshot);
        free(list);
        list = n;
    }
}

struct gather {
    struct puller *p;
    struct api_names ids;
    int all;
    int oom;
};

static void gather_one(void *ud, const char *key, void *value)
{
    struct gather *g = ud;
    (void)value;
    if (!g->all && api_map_get(g->p->tenants, key) == NULL)
        return; /* dropped since it changed */
    if (api_names_add(&g->ids, key) != 0)
        g->oom = 1;
}

static void gather_drop(void *ud, const char *key, void *value)
{
    (void)value;
    json_array_append_new(ud, json_string(key));
}

static void mark_pending(struct puller *p, const char *tenant)
{
    int oom;
    api_map_put(p->pending, tenant, (void *)1, &oom);
    if (oom)
        p->reset = 1; /* a new session sends every position */
}

static int sleep_or_stop(struct puller *p, int64_t ms)
{
    struct timespec ts;
    api_deadline_after_ms(&ts, ms);
    pthread_mutex_lock(&p->mu);
    if (!p->stopping)
        pthread_cond_timedwait(&p->cv, &p->mu, &ts);
    int stop = p->stopping;
    pthread_mutex_unlock(&p->mu);
    return stop;
}

static void *puller_main(void *arg)
{
    struct puller *p = arg;
    struct agent_repl *r = p->r;
    struct api_http_client *http = api_http_client_new();
    char session[64] = "", url[200], auth[600];
    int failures = 0;

    snprintf(auth, sizeof(auth), "authorization: Bearer %s", r->internal_token);
    for (;;) {
        struct gather g = {.p = p};
        json_t *drops = json_array();
        pthread_mutex_lock(&p->mu);
        while (!p->stopping && api_map_len(p->tenants) == 0 && api_map_len(p->drops) == 0)
            pthread_cond_wait(&p->cv, &p->mu);
        if (p->stopping) {
            pthread_mutex_unlock(&p->mu);
            json_decref(drops);
            break;
        }
        if (p->reset) {
            session[0] = '\0';
            p->reset = 0;
        }
        g.all = session[0] == '\0';
        api_map_foreach(g.all ? p->tenants : p->pending, gather_one, &g);
        if (!g.oom) {
            api_map_free(p->pending, NULL);
            p->pending = api_map_new();
        }
        api_map_foreach(p->drops, gather_drop, drops);
        api_map_free(p->drops, NULL);
        p->drops = api_map_new();
        snprintf(url, sizeof(url), "%s/internal/repl/pull", p->url);
        int idle = api_map_len(p->tenants) == 0;
        pthread_mutex_unlock(&p->mu);

        /* positions: load tenants not loaded yet on their workers */
        struct apply_job *loads = NULL;
        for (size_t i = 0; i < g.ids.n; i++) {
            struct rt *t = repl_rt_get(r, g.ids.v[i], 1);
            /* an unborn copy stands at the empty database's position with
             * no files: it is born when a record or a read needs it */
            if (t != NULL && t->loaded != AGENT_ROLE_REPLICA && !repl_unborn(r, t)) {
                struct apply_job *j = job_for(&loads, r, g.ids.v[i]);
                if (j != NULL)
                    j->load_only = 1;
            }
        }
        if (loads != NULL)
            run_jobs(r, loads);
        free_jobs(loads);
        json_t *positions = json_object();
        for (size_t i = 0; i < g.ids.n; i++) {
            struct rt *t = repl_rt_get(r, g.ids.v[i], 0);
            char a[17], b[17];
            if (t == NULL)
                continue;
            pthread_mutex_lock(&t->mu);
            int ok = t->want == AGENT_ROLE_REPLICA && (t->loaded == AGENT_ROLE_REPLICA || t->unborn);
            agent_hex16(t->txid, a);
            agent_hex16(t->need_snapshot ? 0 : t->ck, b); /* 0 is never a checksum: asks for a snapshot */
            pthread_mutex_unlock(&t->mu);
            if (ok)
                json_object_set_new(positions, g.ids.v[i], json_pack("[s,s]", a, b));
        }
        api_names_free(&g.ids);
        json_t *req = json_pack("{s:s,s:o,s:I,s:I,s:o,s:o}", "node", r->node, "session",
                                session[0] ? json_string(session) : json_null(), "wait_ms",
                                /* nothing followed here any more: deliver the drops, do not wait */
                                (json_int_t)(idle ? 0 : r->cfg.pull_wait_ms), "max_bytes", (json_int_t)(4 << 20), "positions",
                                positions, "drop", drops);
        char *body = json_dumps(req, JSON_COMPACT);
        json_decref(req);
        const char *hdrs[] = {auth, "content-type: application/json", NULL};
        struct api_http_req rq = {.method = "POST", .url = url, .headers = hdrs, .body = body,
                                  .body_len = body ? strlen(body) : 0, .timeout_ms = r->cfg.pull_wait_ms + 15000,
                                  .max_body = (size_t)256 << 20, .cancel = &p->cancel};
        struct api_http_resp resp;
        struct api_err err;
        pthread_mutex_lock(&p->mu);
        p->polling = 1;
        p->kicked = 0;
        snprintf(p->session, sizeof(p->session), "%s", session);
        pthread_mutex_unlock(&p->mu);
        int rc = http && body ? api_http_do(http, &rq, &resp, &err) : API_ENOMEM;
        pthread_mutex_lock(&p->mu);
        p->polling = 0;
        pthread_mutex_unlock(&p->mu);
        free(body);
        atomic_fetch_add(&r->pulls, 1);
        if (rc != API_OK || resp.status != 200) {
            if (rc == API_OK) {
                if (resp.status != 409)
                    log_warn("replication pull from %s: HTTP %ld %.200s", p->node, resp.status, resp.body);
                api_http_resp_fini(&resp);
            } else if (failures++ % 20 == 0) {
                log_warn("replication pull from %s failed: %s", p->node, err.msg);
            }
            pthread_mutex_lock(&p->mu);
            session[0] = '\0';
            pthread_mutex_unlock(&p->mu);
            if (sleep_or_stop(p, rc == API_OK && resp.status == 409 ? 0 : 200))
                break;
            continue;
        }
        failures = 0;
        const char *sid = api_http_resp_header(&resp, "shoal-repl-session");
        if (sid != NULL)
            snprintf(session, sizeof(session), "%s", sid);

        /* split the reply into one job per tenant */
        struct apply_job *jobs = NULL;
        const unsigned char *b = (const unsigned char *)resp.body;
        size_t off = 0, n = resp.body_len;
        while (off + 2 <= n) {
            int kind = b[off];
            size_t idl = b[off + 1];
            if (off + 2 + idl + 4 > n || idl == 0 || idl >= 64)
                break;
            char id[64];
            memcpy(id, b + off + 2, idl);
            id[idl] = '\0';
            uint32_t plen = agent_get32(b + off + 2 + idl);
            const unsigned char *payload = b + off + 6 + idl;
            if (off + 6 + idl + plen > n)
                break;
            off += 6 + idl + plen;
            struct apply_job *j = job_for(&jobs, r, id);
            if (j == NULL)
                continue;
            if (kind == PULL_RECORD) {
                if (j->len + plen > j->cap) {
                    size_t ncap = (j->len + plen) * 2;
                    unsigned char *nb = realloc(j->recs, ncap);
                    if (nb == NULL)
                        continue;
                    j->recs = nb;
                    j->cap = ncap;
                }
                memcpy(j->recs + j->len, payload, plen);
                j->len += plen;
            } else if (kind == PULL_HEAD && plen >= 16) {
                j->head = agent_get64(payload);
                j->have_head = 1;
            } else if (kind == PULL_SNAPSHOT) {
                char surl[300];
                struct api_http_resp sr;
                snprintf(surl, sizeof(surl), "%s/internal/repl/snapshot/%s", p->url, id);
                struct api_http_req sq = {.method = "GET", .url = surl, .headers = hdrs, .timeout_ms = 120000,
                                          .max_body = (size_t)1 << 31, .cancel = &p->cancel};
                if (plen >= 16) {
                    j->head = agent_get64(payload);
                    j->have_head = 1;
                }
                if (api_http_do(http, &sq, &sr, &err) != API_OK) {
                    log_warn("tenant=%s snapshot from %s failed: %s", id, p->node, err.msg);
                } else if (sr.status != 200) {
                    log_warn("tenant=%s snapshot from %s: HTTP %ld %.200s", id, p->node, sr.status, sr.body);
                    api_http_resp_fini(&sr);
                } else {
                    j->snapshot = (unsigned char *)sr.body;
                    j->snap_len = sr.body_len;
                    sr.body = NULL;
                    api_http_resp_fini(&sr);
                }
                /* the next poll reports the new position (or asks again) */
            } else if (kind == PULL_NOT_PRIMARY) {
                log_debug("tenant=%s %s is not its primary (yet)", id, p->node);
            }
        }
        api_http_resp_fini(&resp);
        jobs = note_heads(r, jobs);
        if (jobs != NULL) {
            run_jobs(r, jobs);
            pthread_mutex_lock(&p->mu);
            for (struct apply_job *j = jobs; j != NULL; j = j->next) {
                if (api_map_get(p->tenants, j->tenant) != NULL && (j->len > 0 || j->snapshot != NULL))
                    mark_pending(p, j->tenant);
            }
            pthread_mutex_unlock(&p->mu);
        }
        free_jobs(jobs);
    }
    api_http_client_free(http);
    return NULL;
}

static struct puller *puller_get(struct agent_repl *r, const char *node, const char *url)
{
    struct puller *p = api_map_get(r->pullers, node);
    int oom;
    if (p != NULL)
        return p;
    if ((p = calloc(1, sizeof(*p))) == NULL)
        return NULL;
    p->r = r;
    snprintf(p->node, sizeof(p->node), "%s", node);
    snprintf(p->url, sizeof(p->url), "%s", url ? url : "");
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    p->tenants = api_map_new();
    p->pending = api_map_new();
    p->drops = api_map_new();
    api_map_put(r->pullers, p->node, p, &oom);
    if (oom || pthread_create(&p->thread, NULL, puller_main, p) != 0) {
        if (!oom)
            api_map_del(r->pullers, p->node);
        api_map_free(p->tenants, NULL);
        api_map_free(p->pending, NULL);
        api_map_free(p->drops, NULL);
        free(p);
        return NULL;
    }
    p->started = 1;
    log_info("replication puller started upstream=%s url=%s", node, p->url);
    return p;
}

/* Asks URL's hub to answer SESSION's held poll now (new tenants to name). */
static void kick(struct agent_repl *r, const char *url, const char *session)
{
    char full[300], auth[600], body[128];
    const char *hdrs[] = {auth, "content-type: application/json", NULL};
    struct api_http_resp resp;
    struct api_err err;
    snprintf(full, sizeof(full), "%s/internal/repl/kick", url);
    snprintf(auth, sizeof(auth), "authorization: Bearer %s", r->internal_token);
    snprintf(body, sizeof(body), "{\"session\":\"%s\"}", session);
    struct api_http_req rq = {.method = "POST", .url = full, .headers = hdrs, .body = body, .body_len = strlen(body),
                              .timeout_ms = 1000};
    pthread_mutex_lock(&r->kick_mu);
    if (r->kick_client == NULL)
        r->kick_client = api_http_client_new();
    if (r->kick_client != NULL && api_http_do(r->kick_client, &rq, &resp, &err) == API_OK)
        api_http_resp_fini(&resp);
    pthread_mutex_unlock(&r->kick_mu);
}

void pull_follow(struct agent_repl *r, const char *tenant, const char *old, const char *upstream, const char *url)
{
    int oom;
    char kick_url[160] = "", kick_session[64] = "";
    pthread_mutex_lock(&r->mu);
    if (r->stopped) {
        pthread_mutex_unlock(&r->mu);
        return;
    }
    if (old != NULL && old[0] && (upstream == NULL || strcmp(old, upstream) != 0)) {
        struct puller *p = api_map_get(r->pullers, old);
        if (p != NULL) {
            pthread_mutex_lock(&p->mu);
            api_map_del(p->tenants, tenant);
            api_map_del(p->pending, tenant);
            api_map_put(p->drops, tenant, (void *)1, &oom);
            pthread_cond_signal(&p->cv);
            pthread_mutex_unlock(&p->mu);
        }
    }
    if (upstream != NULL && upstream[0]) {
        struct puller *p = puller_get(r, upstream, url);
        if (p != NULL) {
            pthread_mutex_lock(&p->mu);
            if (url != NULL && url[0] && strcmp(p->url, url) != 0) {
                snprintf(p->url, sizeof(p->url), "%s", url);
                p->reset = 1;
            }
            api_map_del(p->drops, tenant);
            if (api_map_get(p->tenants, tenant) == NULL) {
                api_map_put(p->tenants, tenant, (void *)1, &oom);
                if (!oom)
                    mark_pending(p, tenant);
                if (!oom && p->polling && p->session[0] && !p->kicked) {
                    /* one kick per poll: the next poll names every tenant added meanwhile */
                    p->kicked = 1;
                    snprintf(kick_url, sizeof(kick_url), "%s", p->url);
                    snprintf(kick_session, sizeof(kick_session), "%s", p->session);
                }
            }
            /* an idle puller wakes now; a polling one includes the tenant in
             * its next poll (polls last at most pull_wait_ms) */
            pthread_cond_signal(&p->cv);
            pthread_mutex_unlock(&p->mu);
        }
    }
    pthread_mutex_unlock(&r->mu);
    if (kick_url[0])
        kick(r, kick_url, kick_session);
}

static void stop_one(void *ud, const char *key, void *value)
{
    struct puller *p = value;
    (void)ud;
    (void)key;
    pthread_mutex_lock(&p->mu);
    p->stopping = 1;
    atomic_store(&p->cancel, 1);
    pthread_cond_signal(&p->cv);
    pthread_mutex_unlock(&p->mu);
}

static void join_one(void *ud, const char *key, void *value)
{
    struct puller *p = value;
    (void)ud;
    (void)key;
    if (p->started)
        pthread_join(p->thread, NULL);
    api_map_free(p->tenants, NULL);
    api_map_free(p->pending, NULL);
    api_map_free(p->drops, NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    free(p);
}

void pull_stop_all(struct agent_repl *r)
{
    pthread_mutex_lock(&r->mu);
    r->stopped = 1;
    api_map_foreach(r->pullers, stop_one, NULL);
    pthread_mutex_unlock(&r->mu);
    api_map_foreach(r->pullers, join_one, NULL);
    api_map_free(r->pullers, NULL);
    r->pullers = api_map_new();
}
