/*
 * nodeagent/repl_hub.c: the primary's side of replication transport.
 *
 * A follower node holds one long-poll at a time (POST /internal/repl/pull)
 * for all the tenants it follows here, inside a session that remembers each
 * tenant's follower position, so a poll carries only what changed: new
 * positions (which are also the follower's durable acknowledgements, what
 * quorum writes wait for) and tenants dropped. A commit marks the tenant
 * dirty in every session following it and wakes the hub thread, which
 * answers the session's poll with the missing records read from the log.
 *
 * Lock order: hub->mu, then a tenant's rt->mu, then its log's mutex.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>
#include <sodium.h>

#include "api/cluster.h"
#include "api/dataplane.h"
#include "api/log.h"
#include "api/names.h"
#include "api/server.h"
#include "api/workq.h"
#include "nodeagent/repl_int.h"
#include "nodeagent/repl_sum.h"

#define SESSION_IDLE_MS 60000
#define AWAITING_SNAPSHOT UINT64_MAX

struct cursor {
    uint64_t txid, ck;
};

struct session {
    struct session *next;
    char id[33];
    char node[64];
    struct api_map *cursors; /* tenant -> struct cursor* */
    struct api_map *dirty;   /* tenant -> (void *)1 */
    struct api_pending *pending;
    int64_t deadline;
    size_t max_bytes;
    int64_t last_seen;
};

struct follower_list {
    struct session **v;
    size_t n, cap;
};

struct qwait {
    struct qwait *next;
    char tenant[64];
    uint64_t txid;
    struct api_pending *p;
    struct api_resp *resp;
    int64_t deadline;
};

struct twait {
    struct twait *next;
    char tenant[64];
    uint64_t txid;
    int64_t deadline;
    void (*fn)(void *, int);
    void *arg;
};

struct hub {
    struct agent_repl *r;
    struct twait *twaits;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct session *sessions;
    struct api_map *followers; /* tenant -> struct follower_list* */
    struct qwait *waits;
    int stopping, started;
    pthread_t thread;
};

static int64_t mono_ms(void)
{
    return api_now_ms();
}

static void follower_add(struct hub *h, const char *tenant, struct session *s)
{
    struct follower_list *l = api_map_get(h->followers, tenant);
    int oom;
    if (l == NULL) {
        if ((l = calloc(1, sizeof(*l))) == NULL)
            return;
        api_map_put(h->followers, tenant, l, &oom);
        if (oom) {
            free(l);
            return;
        }
    }
    for (size_t i = 0; i < l->n; i++)
        if (l->v[i] == s)
            return;
    if (l->n == l->cap) {
        size_t ncap = l->cap ? l->cap * 2 : 4;
        void *nv = realloc(l->v, ncap * sizeof(*l->v));
        if (nv == NULL)
            return;
        l->v = nv;
        l->cap = ncap;
    }
    l->v[l->n++] = s;
}

static void follower_del(struct hub *h, const char *tenant, struct session *s)
{
    struct follower_list *l = api_map_get(h->followers, tenant);
    if (l == NULL)
        return;
    for (size_t i = 0; i < l->n; i++)
        if (l->v[i] == s) {
            l->v[i] = l->v[--l->n];
            break;
        }
    if (l->n == 0) {
        api_map_del(h->followers, tenant);
        free(l->v);
        free(l);
    }
}

static void free_follower_list(void *p)
{
    struct follower_list *l = p;
    free(l->v);
    free(l);
}

struct sess_del_ctx {
    struct hub *h;
    struct session *s;
};

static void unfollow_each(void *ud, const char *key, void *value)
{
    struct sess_del_ctx *c = ud;
    (void)value;
    follower_del(c->h, key, c->s);
}

static void session_free(struct hub *h, struct session *s)
{
    struct sess_del_ctx c = {h, s};
    api_map_foreach(s->cursors, unfollow_each, &c);
    if (s->pending != NULL)
        api_pending_finish(s->pending, api_resp_new(200));
    api_map_free(s->cursors, free);
    api_map_free(s->dirty, NULL);
    free(s);
}

static void put_dirty(struct session *s, const char *tenant)
{
    int oom;
    if (api_map_get(s->dirty, tenant) == NULL)
        api_map_put(s->dirty, tenant, (void *)1, &oom);
}

void hub_notify(struct hub *h, const char *tenant)
{
    if (h == NULL)
        return;
    pthread_mutex_lock(&h->mu);
    struct follower_list *l = api_map_get(h->followers, tenant);
    int wake = 0;
    for (size_t i = 0; l != NULL && i < l->n; i++) {
        put_dirty(l->v[i], tenant);
        wake |= l->v[i]->pending != NULL;
    }
    if (wake)
        pthread_cond_signal(&h->cv);
    pthread_mutex_unlock(&h->mu);
}

/* ------------------------------------------------------------------ */
/* building a reply                                                    */

struct out {
    unsigned char *buf;
    size_t len, cap;
    int oom;
};

static void out_frame(struct out *o, int kind, const char *tenant, const void *payload, size_t plen)
{
    size_t idl = strlen(tenant), need = 2 + idl + 4 + plen;
    if (o->oom)
        return;
    if (o->len + need > o->cap) {
        size_t ncap = (o->len + need) * 2;
        unsigned char *nb = realloc(o->buf, ncap);
        if (nb == NULL) {
            o->oom = 1;
            return;
        }
        o->buf = nb;
        o->cap = ncap;
    }
    unsigned char *p = o->buf + o->len;
    p[0] = (unsigned char)kind;
    p[1] = (unsigned char)idl;
    memcpy(p + 2, tenant, idl);
    agent_put32(p + 2 + idl, (uint32_t)plen);
    if (plen)
        memcpy(p + 6 + idl, payload, plen);
    o->len += need;
}

struct load_job {
    struct agent_repl *r;
    char tenant[64];
};

static void load_primary_job(void *arg)
{
    struct load_job *j = arg;
    struct api_err err;
    struct rt *t = repl_rt_get(j->r, j->tenant, 0);
    if (agent_repl_ensure(j->r, j->tenant, AGENT_ROLE_PRIMARY, &err) != API_OK)
        log_debug("tenant=%s not loaded for a follower: %s", j->tenant, err.msg);
    if (t != NULL) {
        pthread_mutex_lock(&t->mu);
        t->load_requested = 0;
        pthread_mutex_unlock(&t->mu);
    }
    free(j);
}

/* Appends what session cursor C of TENANT needs; updates C. hub->mu held. */
static void build_tenant(struct hub *h, const char *tenant, struct cursor *c, struct out *o, size_t max_bytes)
{
    struct agent_repl *r = h->r;
    struct rt *t = repl_rt_get(r, tenant, 0);
    unsigned char head[16];

    if (t == NULL) {
        out_frame(o, PULL_NOT_PRIMARY, tenant, NULL, 0);
        return;
    }
    pthread_mutex_lock(&t->mu);
    if (t->want != AGENT_ROLE_PRIMARY) {
        pthread_mutex_unlock(&t->mu);
        out_frame(o, PULL_NOT_PRIMARY, tenant, NULL, 0);
        return;
    }
    if (t->loaded != AGENT_ROLE_PRIMARY || t->log == NULL) {
        if (t->unborn && c->txid == 0 && c->ck == repl_empty_ck()) {
            /* both at the empty database: nothing to send, and no reason
             * to give the tenant files before its first use (the load on
             * that use notifies us). t->unborn was settled on the tenant's
             * worker when this node became its primary (agent_repl_create):
             * no disk check here, on the loop. */
            pthread_mutex_unlock(&t->mu);
            return;
        }
        int submit = !t->load_requested;
        t->load_requested = 1;
        pthread_mutex_unlock(&t->mu);
        struct load_job *j = submit ? malloc(sizeof(*j)) : NULL;
        if (j != NULL) {
            j->r = r;
            snprintf(j->tenant, sizeof(j->tenant), "%s", tenant);
            api_workq_submit(r->cfg.workers, agent_repl_key(tenant), load_primary_job, j);
        }
        return; /* the load notifies us */
    }
    uint64_t txid = t->txid, ck = t->ck;
    struct agent_log_pos lp;
    agent_log_position(t->log, &lp);
    agent_put64(head, txid);
    agent_put64(head + 8, ck);
    if (c->txid == AWAITING_SNAPSHOT) {
        pthread_mutex_unlock(&t->mu);
        return;
    }
    int snapshot = 0;
    if (c->txid == txid) {
        snapshot = c->ck != ck;
    } else if (c->txid > txid || c->txid < lp.base_txid) {
        snapshot = 1;
    } else if (c->txid == lp.base_txid) {
        snapshot = c->ck != lp.base_ck;
    } else {
        uint64_t pre;
        snapshot = agent_log_pre_ck(t->log, c->txid + 1, &pre) != 0 || pre != c->ck;
    }
    if (snapshot) {
        pthread_mutex_unlock(&t->mu);
        out_frame(o, PULL_SNAPSHOT, tenant, head, sizeof(head));
        c->txid = AWAITING_SNAPSHOT;
        return;
    }
    while (c->txid < txid && (o->len < max_bytes || o->len == 0)) {
        unsigned char *rec;
        size_t len;
        struct api_err err;
        if (agent_log_read(t->log, c->txid + 1, &rec, &len, &err) != API_OK) {
            log_warn("tenant=%s %s", tenant, err.msg);
            break;
        }
        out_frame(o, PULL_RECORD, tenant, rec, len);
        c->txid++;
        c->ck = agent_get64(rec + 32);
        atomic_fetch_add(&r->bytes_sent, len);
        free(rec);
    }
    pthread_mutex_unlock(&t->mu);
    out_frame(o, PULL_HEAD, tenant, head, sizeof(head));
}

static void collect_id(void *ud, const char *key, void *value)
{
    (void)value;
    api_names_add(ud, key);
}

/* Answers session S's poll with everything dirty. hub->mu held. */
static void answer(struct hub *h, struct session *s)
{
    struct out o = {0};
    struct api_names ids = {0};
    int more = 0;

    api_map_foreach(s->dirty, collect_id, &ids);
    for (size_t i = 0; i < ids.n; i++) {
        struct cursor *c = api_map_get(s->cursors, ids.v[i]);
        if (o.len >= s->max_bytes) {
            more = 1; /* stays dirty for the next poll */
            continue;
        }
        api_map_del(s->dirty, ids.v[i]);
        if (c != NULL) {
            build_tenant(h, ids.v[i], c, &o, s->max_bytes);
            struct rt *t = repl_rt_get(h->r, ids.v[i], 0);
            if (t != NULL && c->txid != AWAITING_SNAPSHOT) {
                pthread_mutex_lock(&t->mu);
                int behind = c->txid < t->txid;
                pthread_mutex_unlock(&t->mu);
                if (behind)
                    put_dirty(s, ids.v[i]);
            }
        }
    }
    (void)more;
    api_names_free(&ids);
    struct api_resp *resp = api_resp_new(200);
    if (resp != NULL && !o.oom) {
        api_resp_set_body(resp, "application/octet-stream", o.buf ? (const char *)o.buf : "", o.len);
        api_resp_add_header(resp, "shoal-repl-session", s->id);
    }
    free(o.buf);
    api_pending_finish(s->pending, resp);
    s->pending = NULL;
    s->last_seen = mono_ms();
}

/* ------------------------------------------------------------------ */
/* quorum                                                              */

static int durable(struct hub *h, const char *tenant, uint64_t txid)
{
    struct rt *t = repl_rt_get(h->r, tenant, 0);
    int ok = 0;
    if (t != NULL) {
        pthread_mutex_lock(&t->mu);
        ok = t->remote_durable >= txid;
        pthread_mutex_unlock(&t->mu);
    }
    return ok;
}

void hub_quorum_wait(struct hub *h, const char *tenant, uint64_t txid, struct api_pending *p, struct api_resp *resp)
{
    struct qwait *w;
    if (durable(h, tenant, txid) || (w = calloc(1, sizeof(*w))) == NULL) {
        api_pending_finish(p, resp);
        return;
    }
    snprintf(w->tenant, sizeof(w->tenant), "%s", tenant);
    w->txid = txid;
    w->p = p;
    w->resp = resp;
    w->deadline = mono_ms() + h->r->cfg.quorum_timeout_ms;
    pthread_mutex_lock(&h->mu);
    if (h->stopping) {
        pthread_mutex_unlock(&h->mu);
        api_pending_finish(p, resp);
        free(w);
        return;
    }
    w->next = h->waits;
    h->waits = w;
    pthread_cond_signal(&h->cv);
    pthread_mutex_unlock(&h->mu);
}

/* hub->mu held */
static void resolve_waits(struct hub *h, int64_t now, int64_t *next_deadline)
{
    struct qwait **pp = &h->waits;
    while (*pp != NULL) {
        struct qwait *w = *pp;
        if (durable(h, w->tenant, w->txid)) {
            api_pending_finish(w->p, w->resp);
        } else if (now >= w->deadline || h->stopping) {
            char hex[17];
            agent_hex16(w->txid, hex);
            api_resp_free(w->resp);
            api_pending_finish(w->p, api_dp_error_respf(API_EQUORUM,
                                                        "tenant '%s': the write committed on the primary as txid %s "
                                                        "but no replica confirmed it within %lld ms",
                                                        w->tenant, hex, (long long)h->r->cfg.quorum_timeout_ms));
        } else {
            if (w->deadline < *next_deadline)
                *next_deadline = w->deadline;
            pp = &w->next;
            continue;
        }
        *pp = w->next;
        free(w);
    }
}

/* ------------------------------------------------------------------ */
/* read-your-writes waits                                              */

static int applied(struct hub *h, const char *tenant, uint64_t txid)
{
    struct rt *t = repl_rt_get(h->r, tenant, 0);
    int ok = 0;
    if (t != NULL) {
        pthread_mutex_lock(&t->mu);
        ok = t->txid >= txid;
        pthread_mutex_unlock(&t->mu);
    }
    return ok;
}

void hub_txid_wait(struct hub *h, const char *tenant, uint64_t txid, int64_t timeout_ms, void (*fn)(void *, int),
                   void *arg)
{
    struct twait *w;
    if (applied(h, tenant, txid)) {
        fn(arg, 1);
        return;
    }
    if ((w = calloc(1, sizeof(*w))) == NULL) {
        fn(arg, 0);
        return;
    }
    snprintf(w->tenant, sizeof(w->tenant), "%s", tenant);
    w->txid = txid;
    w->deadline = mono_ms() + timeout_ms;
    w->fn = fn;
    w->arg = arg;
    pthread_mutex_lock(&h->mu);
    if (h->stopping) {
        pthread_mutex_unlock(&h->mu);
        free(w);
        fn(arg, 0);
        return;
    }
    w->next = h->twaits;
    h->twaits = w;
    pthread_cond_signal(&h->cv);
    pthread_mutex_unlock(&h->mu);
}

void hub_applied(struct hub *h)
{
    pthread_mutex_lock(&h->mu);
    if (h->twaits != NULL)
        pthread_cond_signal(&h->cv);
    pthread_mutex_unlock(&h->mu);
}

/* Takes the waits that are due off the list (hub->mu held); the caller
 * runs them without the lock. */
static struct twait *due_twaits(struct hub *h, int64_t now, int64_t *next_deadline)
{
    struct twait *due = NULL, **pp = &h->twaits;
    while (*pp != NULL) {
        struct twait *w = *pp;
        if (applied(h, w->tenant, w->txid) || now >= w->deadline || h->stopping) {
            *pp = w->next;
            w->next = due;
            due = w;
            continue;
        }
        if (w->deadline < *next_deadline)
            *next_deadline = w->deadline;
        pp = &w->next;
    }
    return due;
}

static void run_twaits(struct hub *h, struct twait *due)
{
    while (due != NULL) {
        struct twait *n = due->next;
        due->fn(due->arg, applied(h, due->tenant, due->txid));
        free(due);
        due = n;
    }
}

/* ------------------------------------------------------------------ */
/* thread                                                              */

static void *hub_main(void *arg)
{
    struct hub *h = arg;
    pthread_mutex_lock(&h->mu);
    for (;;) {
        int64_t now = mono_ms(), next = now + 1000;
        resolve_waits(h, now, &next);
        struct twait *due = due_twaits(h, now, &next);
        if (due != NULL) {
            pthread_mutex_unlock(&h->mu);
            run_twaits(h, due);
            pthread_mutex_lock(&h->mu);
        }
        struct session **pp = &h->sessions;
        while (*pp != NULL) {
            struct session *s = *pp;
            if (s->pending != NULL && (api_map_len(s->dirty) > 0 || now >= s->deadline || h->stopping))
                answer(h, s);
            else if (s->pending != NULL && s->deadline < next)
                next = s->deadline;
            if (s->pending == NULL && now - s->last_seen > SESSION_IDLE_MS) {
                *pp = s->next;
                log_info("replication session expired node=%s session=%s", s->node, s->id);
                session_free(h, s);
                continue;
            }
            pp = &s->next;
        }
        if (h->stopping)
            break;
        struct timespec ts;
        int64_t left = next - mono_ms();
        api_deadline_after_ms(&ts, left < 1 ? 1 : left);
        pthread_cond_timedwait(&h->cv, &h->mu, &ts);
    }
    pthread_mutex_unlock(&h->mu);
    return NULL;
}

int hub_new(struct agent_repl *r, struct hub **out)
{
    struct hub *h = calloc(1, sizeof(*h));
    if (h == NULL)
        return -1;
    h->r = r;
    pthread_mutex_init(&h->mu, NULL);
    pthread_cond_init(&h->cv, NULL);
    h->followers = api_map_new();
    if (h->followers == NULL || pthread_create(&h->thread, NULL, hub_main, h) != 0) {
        api_map_free(h->followers, NULL);
        free(h);
        return -1;
    }
    h->started = 1;
    *out = h;
    return 0;
}

/* Answers every held poll and quorum wait now (server shutdown). */
void hub_stop(struct hub *h)
{
    if (h == NULL)
        return;
    pthread_mutex_lock(&h->mu);
    h->stopping = 1;
    pthread_cond_signal(&h->cv);
    pthread_mutex_unlock(&h->mu);
    if (h->started) {
        pthread_join(h->thread, NULL);
        h->started = 0;
    }
}

static void hub_stop_hook(void *ud)
{
    hub_stop(ud);
}

void hub_free(struct hub *h)
{
    if (h == NULL)
        return;
    hub_stop(h);
    while (h->sessions != NULL) {
        struct session *s = h->sessions;
        h->sessions = s->next;
        session_free(h, s);
    }
    int64_t next = 0;
    resolve_waits(h, INT64_MAX, &next);
    run_twaits(h, due_twaits(h, INT64_MAX, &next));
    api_map_free(h->followers, free_follower_list);
    pthread_mutex_destroy(&h->mu);
    pthread_cond_destroy(&h->cv);
    free(h);
}

/* ------------------------------------------------------------------ */
/* HTTP                                                                */

static int authorized(struct hub *h, struct api_req *req)
{
    size_t len;
    const char *v = api_req_header(req, "authorization", &len);
    if (repl_auth_ok(h->r, v, len))
        return 1;
    api_reply_errorf(req, API_EUNAUTHORIZED, "replication endpoints need the cluster's internal token");
    return 0;
}

/* The follower's acknowledgement: TXID/CK is durable there. Counts only if
 * it lies on this primary's history. */
static void note_ack(struct hub *h, const char *tenant, uint64_t txid, uint64_t ck)
{
    struct rt *t = repl_rt_get(h->r, tenant, 0);
    if (t == NULL)
        return;
    pthread_mutex_lock(&t->mu);
    if (t->want == AGENT_ROLE_PRIMARY && t->log != NULL && txid > t->remote_durable && txid <= t->txid) {
        uint64_t pre;
        int on_chain = txid == t->txid ? ck == t->ck : agent_log_pre_ck(t->log, txid + 1, &pre) == 0 && pre == ck;
        if (on_chain)
            t->remote_durable = txid;
    }
    pthread_mutex_unlock(&t->mu);
}

/* 1 if cursor C of TENANT is at the position of this node, loaded as its
 * primary: nothing to send. hub->mu held. */
static int caught_up(struct hub *h, const char *tenant, const struct cursor *c)
{
    struct rt *t = repl_rt_get(h->r, tenant, 0);
    int yes = 0;
    if (t != NULL) {
        pthread_mutex_lock(&t->mu);
        yes = t->want == AGENT_ROLE_PRIMARY &&
              ((t->loaded == AGENT_ROLE_PRIMARY && t->log != NULL && c->txid == t->txid && c->ck == t->ck) ||
               (t->unborn && c->txid == 0 && c->ck == repl_empty_ck()));
        pthread_mutex_unlock(&t->mu);
    }
    return yes;
}

static void on_pull(struct api_req *req, void *ud)
{
    struct hub *h = ud;
    json_t *body = NULL, *positions, *drop, *v;
    struct api_err err;
    const char *key;
    size_t i;

    if (!authorized(h, req))
        return;
    if (api_req_json_object(req, &body, &err) != API_OK) {
        api_reply_error(req, &err);
        return;
    }
    const char *node = json_string_value(json_object_get(body, "node"));
    const char *sid = json_string_value(json_object_get(body, "session"));
    json_int_t wait_ms = json_integer_value(json_object_get(body, "wait_ms"));
    json_int_t max_bytes = json_integer_value(json_object_get(body, "max_bytes"));
    positions = json_object_get(body, "positions");
    drop = json_object_get(body, "drop");
    if (node == NULL || !api_name_valid(node, strlen(node)) || (positions && !json_is_object(positions)) ||
        (drop && !json_is_array(drop))) {
        json_decref(body);
        api_reply_errorf(req, API_EINVAL, "pull needs {\"node\", \"session\"?, \"positions\"?: {tenant: [txid, "
                                          "checksum]}, \"drop\"?: [tenant]}");
        return;
    }
    /* validate every position before touching the session */
    json_object_foreach(positions, key, v)
    {
        uint64_t x;
        const char *a = json_string_value(json_array_get(v, 0)), *b = json_string_value(json_array_get(v, 1));
        if (!api_name_valid(key, strlen(key)) || a == NULL || b == NULL || agent_parse_hex16(a, strlen(a), &x) != 0 ||
            agent_parse_hex16(b, strlen(b), &x) != 0) {
            json_decref(body);
            api_reply_errorf(req, API_EINVAL, "pull: bad position for '%.64s'", key);
            return;
        }
    }
    pthread_mutex_lock(&h->mu);
    if (h->stopping) {
        pthread_mutex_unlock(&h->mu);
        json_decref(body);
        api_reply_errorf(req, API_EUNAVAILABLE, "node is shutting down");
        return;
    }
    struct session *s = NULL;
    if (sid != NULL) {
        for (s = h->sessions; s != NULL && strcmp(s->id, sid) != 0; s = s->next)
            ;
        if (s == NULL) {
            pthread_mutex_unlock(&h->mu);
            json_decref(body);
            api_reply_errorf(req, API_ECONFLICT, "replication session '%.40s' is unknown here; start a new one", sid);
            return;
        }
    } else {
        unsigned char rnd[16];
        if ((s = calloc(1, sizeof(*s))) == NULL || (s->cursors = api_map_new()) == NULL ||
            (s->dirty = api_map_new()) == NULL) {
            pthread_mutex_unlock(&h->mu);
            if (s)
                api_map_free(s->cursors, NULL);
            free(s);
            json_decref(body);
            api_reply_errorf(req, API_ENOMEM, "out of memory");
            return;
        }
        randombytes_buf(rnd, sizeof(rnd));
        sodium_bin2hex(s->id, sizeof(s->id), rnd, sizeof(rnd));
        snprintf(s->node, sizeof(s->node), "%s", node);
        s->next = h->sessions;
        h->sessions = s;
        log_info("replication session started node=%s session=%s", node, s->id);
    }
    if (s->pending != NULL) { /* superseded by this poll */
        api_pending_finish(s->pending, api_resp_new(200));
        s->pending = NULL;
    }
    json_object_foreach(positions, key, v)
    {
        uint64_t txid, ck;
        const char *a = json_string_value(json_array_get(v, 0)), *b = json_string_value(json_array_get(v, 1));
        agent_parse_hex16(a, 16, &txid);
        agent_parse_hex16(b, 16, &ck);
        struct cursor *c = api_map_get(s->cursors, key);
        int oom = 0, fresh = 0;
        if (c == NULL && (c = calloc(1, sizeof(*c))) != NULL) {
            api_map_put(s->cursors, key, c, &oom);
            if (oom) {
                free(c);
                continue;
            }
            follower_add(h, key, s);
            fresh = 1;
        }
        if (c == NULL)
            continue;
        c->txid = txid;
        c->ck = ck;
        /* An acknowledgement of everything this primary holds needs no
         * answer: the poll waits for the next commit (hub_notify). */
        if (fresh || !caught_up(h, key, c))
            put_dirty(s, key);
        note_ack(h, key, txid, ck);
    }
    for (i = 0; i < json_array_size(drop); i++) {
        const char *t = json_string_value(json_array_get(drop, i));
        if (t == NULL)
            continue;
        free(api_map_del(s->cursors, t));
        api_map_del(s->dirty, t);
        follower_del(h, t, s);
    }
    json_decref(body);
    if (wait_ms < 0)
        wait_ms = 0;
    if (wait_ms > 60000)
        wait_ms = 60000;
    if (max_bytes <= 0 || max_bytes > (64 << 20))
        max_bytes = 4 << 20;
    s->max_bytes = (size_t)max_bytes;
    s->deadline = mono_ms() + wait_ms;
    s->last_seen = mono_ms();
    s->pending = api_req_defer(req);
    pthread_cond_signal(&h->cv);
    pthread_mutex_unlock(&h->mu);
}

struct snap_job {
    struct agent_repl *r;
    struct api_pending *p;
    char tenant[64];
};

static void snapshot_job(void *arg)
{
    struct snap_job *j = arg;
    struct api_err err;
    unsigned char *buf;
    size_t len;
    struct rt *t = repl_rt_get(j->r, j->tenant, 0);
    if (t == NULL) {
        api_pending_finish(j->p, api_resp_error(&(struct api_err){.code = API_ENOTPRIMARY,
                                                                  .msg = "this node is not the tenant's primary"}));
    } else if (repl_snapshot_make(j->r, t, &buf, &len, &err) != API_OK) {
        api_pending_finish(j->p, api_resp_error(&err));
    } else {
        struct api_resp *resp = api_resp_new(200);
        if (resp != NULL)
            api_resp_set_body(resp, "application/octet-stream", (const char *)buf, len);
        free(buf);
        api_pending_finish(j->p, resp);
    }
    free(j);
}

static void on_snapshot(struct api_req *req, void *ud)
{
    struct hub *h = ud;
    struct api_err err;
    size_t len;
    const char *tenant = api_req_param(req, "tenant", &len);

    if (!authorized(h, req))
        return;
    if (api_tenant_id_check(tenant, len, &err) != API_OK) {
        api_reply_error(req, &err);
        return;
    }
    struct snap_job *j = calloc(1, sizeof(*j));
    if (j == NULL) {
        api_reply_errorf(req, API_ENOMEM, "out of memory");
        return;
    }
    j->r = h->r;
    snprintf(j->tenant, sizeof(j->tenant), "%.*s", (int)len, tenant);
    j->p = api_req_defer(req);
    api_workq_submit(h->r->cfg.workers, agent_repl_key(j->tenant), snapshot_job, j);
}

/* POST /internal/repl/kick {"session"}: the follower has new tenants for
 * this primary; its held poll returns now so the next one can name them. */
static void on_kick(struct api_req *req, void *ud)
{
    struct hub *h = ud;
    json_t *body = NULL;
    struct api_err err;
    if (!authorized(h, req))
        return;
    if (api_req_json_object(req, &body, &err) != API_OK) {
        api_reply_error(req, &err);
        return;
    }
    const char *sid = json_string_value(json_object_get(body, "session"));
    pthread_mutex_lock(&h->mu);
    struct session *s = h->sessions;
    while (s != NULL && (sid == NULL || strcmp(s->id, sid) != 0))
        s = s->next;
    if (s != NULL && s->pending != NULL)
        answer(h, s);
    pthread_mutex_unlock(&h->mu);
    json_decref(body);
    api_reply_empty(req, 204);
}

int hub_routes(struct hub *h, struct api_server *s)
{
    api_server_on_stop(s, hub_stop_hook, h);
    return api_server_route(s, "POST", "/internal/repl/pull", on_pull, h) |
           api_server_route(s, "POST", "/internal/repl/kick", on_kick, h) |
           api_server_route(s, "GET", "/internal/repl/snapshot/{tenant}", on_snapshot, h);
}
