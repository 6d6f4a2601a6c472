/*
 * nodeagent/agent.c: shoal-agent's core (see agent.h).
 *
 * Desired state flows down: the orchestrator writes tenant records to etcd;
 * the cluster view's watch marks the changed tenants dirty and wakes the
 * controller, which converges each one (create the file, acquire or release
 * the tenant's lease key). Nothing runs per tenant on a timer; the only
 * periodic work is the one session keep-alive.
 *
 * Requests: a tenant whose lease this agent holds is served here, on the
 * tenant's worker thread. Any other tenant is forwarded to its primary, or
 * answered with `fly-replay: instance=<node>` when the caller (the router)
 * sent `shoal-accept-replay: 1`.
 */
#include "nodeagent/agent.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "api/cluster.h"
#include "api/dataplane.h"
#include "api/etcd.h"
#include "api/http.h"
#include "api/jsonout.h"
#include "api/jsonutil.h"
#include "api/log.h"
#include "api/map.h"
#include "api/names.h"
#include "api/server.h"
#include "api/sqlclass.h"
#include "api/token.h"
#include "api/workq.h"
#include "nodeagent/hot.h"
#include "nodeagent/hrana.h"
#include "nodeagent/repl.h"
#include "nodeagent/repl_log.h"
#include "nodeagent/repl_sum.h"
#include "nodeagent/session.h"
#include "nodeagent/stmtcache.h"
#include "nodeagent/traffic.h"
#include "nodeagent/store.h"
#include "nodeagent/streams.h"

struct parked;

struct local_tenant {
    int repl_created; /* agent_repl_create ran for it here (as its primary) */
    int holding;   /* this agent holds the tenant's lease key */
    int ever_held; /* it did at some point in this process (then never adopt: see born_leased_here) */
    int64_t epoch; /* mod_revision of our key when we acquired it */
    /* handover: while fenced, requests wait here instead of running */
    int64_t fenced_until; /* monotonic ms; 0 = not fenced */
    struct parked *parked;
    int quorum; /* its durability is "quorum" (fixed at creation); set with holding */
    /* its database cannot take writes here (replication capture failed):
     * the lease key is released and not taken again while this is set */
    int unhealthy;
};

struct route_ctx {
    struct agent *a;
    int version;
    int cursor; /* /v3/cursor: a batch in, newline-delimited entries out */
};

/* Per-request counters, one cache line per thread: the event loops count
 * every request, and one shared counter moved its cache line from core to
 * core on nearly each (threads beyond COUNT_SLOTS share entries). */
#define COUNT_SLOTS 16
struct request_counts {
    atomic_ullong pipelines, reads_in_place;
} __attribute__((aligned(64)));

struct agent {
    struct agent_config cfg;
    char url[API_URL_MAX];
    unsigned char pk[API_TOKEN_PUBLIC_BYTES];
    int lock_fd;
    int started_clean; /* the previous run stopped cleanly (no crash recovery needed) */
    struct api_etcd *etcd;
    struct agent_store *store;
    struct agent_session *session;
    struct api_cluster *view;
    struct api_workq *workers;
    struct agent_hot *hot; /* where each tenant's last read in place found its data (hot.h) */
    struct api_workq *forwarders; /* requests relayed to other nodes: blocking HTTP off the tenant workers */
    atomic_ullong forward_seq;
    struct api_server *server;
    struct agent_streams *streams;
    struct agent_traffic *traffic; /* writes per tenant and client region, published each interval */
    struct agent_repl *repl;
    struct route_ctx v2, v3, cursor;

    pthread_t controller;
    int controller_started;
    pthread_mutex_t mu; /* guards local, dirty, dirty_all, stopping */
    pthread_cond_t cv;
    struct api_map *local; /* tenant -> struct local_tenant* */
    struct api_map *dirty; /* tenant -> (void *)1 */
    int dirty_all;
    int stopping;

    atomic_ullong forwarded, replays_sent, lease_acquisitions, lease_adoptions;
    atomic_ullong reads_in_place_declined;
    /* counted on every request: per thread (count_pipeline), summed for /metrics */
    struct request_counts counts[COUNT_SLOTS];
};

static __thread struct api_http_client *tl_http;
/* reads run in place in the calling event loop's current turn (--inline-reads) */
static __thread uint64_t tl_in_place_turn;
static __thread size_t tl_in_place_count;
/* this thread's entry in struct agent's counts (count_pipeline), -1 until its first count */
static __thread int tl_count_slot = -1;

void agent_config_init(struct agent_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->listen = "127.0.0.1:7401";
    cfg->etcd = "http://127.0.0.1:2379";
    cfg->verify_key = "run/secrets/cluster.pub";
    cfg->lease_ttl_s = 10;
    cfg->inline_reads = 64;
    cfg->loop_spin_us = -1;
    cfg->worker_spin_us = -1;
    cfg->workers = 16;
    cfg->max_open = 1000;
    cfg->cache_kib = 256;
    cfg->max_body = (size_t)8 << 20;
    cfg->stmt_timeout_ms = 5000;
    cfg->log_keep_bytes = (size_t)8 << 20;
    cfg->max_lag_ms = 5000;
    cfg->quorum_timeout_ms = 5000;
    cfg->pull_wait_ms = 1000;
    cfg->traffic_interval_ms = 10000;
    cfg->catchup_timeout_ms = 2000;
    cfg->tenant_wait_ms = 1000;
}

/* An extra event loop's thread ends (api_server_set_loops). */
static void loop_exit(void)
{
    api_dp_thread_exit();
    agent_store_thread_exit();
    agent_hrana_thread_exit();
}

/* --loops 0: one per core, at most 8. */
static size_t loops_wanted(const struct agent_config *cfg)
{
    if (cfg->loops > 0)
        return cfg->loops;
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : n > 8 ? 8 : (size_t)n;
}

static void worker_exit(void)
{
    agent_store_thread_exit();
    agent_hrana_thread_exit();
    api_http_client_free(tl_http);
    tl_http = NULL;
}

/* Worker slots (api/workq.h): at least 64, and four per worker thread. A
 * tenant's jobs queue behind only its slot's, and two event loops reading
 * different tenants rarely find the same slot busy (with one slot per
 * thread, one read in eight waited for another loop's). Each slot keeps
 * its own connections, so --max-open may be overshot by at most one per
 * slot. */
#define AGENT_SLOTS_MIN 64
#define AGENT_SLOTS_PER_WORKER 4

/* The default spins with two or more cores (--loop-spin-us,
 * --worker-spin-us; api_server_set_spin, api_workq_set_spin). A loop waits
 * for a write's reply, so through its commit's fdatasync: 100-300 us on
 * this project's VM. A worker waits for a client's next request after its
 * reply: a round trip through the loop and the client, ~100 us; 60 us
 * caught too few (1-connection inserts: 3.3-4.2k/s against 4.7-5.7k/s
 * with 125 or 500 us). */
#define AGENT_LOOP_SPIN_US 500
#define AGENT_WORKER_SPIN_US 150

/* A spin flag's value: FLAG if given (not -1), else DEFAULT_US with two or
 * more cores; with one a spin only delays what it waits for. */
static int64_t spin_us(int64_t flag, int64_t default_us)
{
    return flag >= 0 ? flag : sysconf(_SC_NPROCESSORS_ONLN) > 1 ? default_us : 0;
}

static uint64_t tenant_key(const char *id)
{
    return api_hash_str(id, strlen(id));
}

/* ------------------------------------------------------------------ */
/* controller: converge on the desired state                           */

static void mark_dirty_locked(struct agent *a, const char *id)
{
    int oom;
    if (api_map_get(a->dirty, id) == NULL)
        api_map_put(a->dirty, id, (void *)1, &oom);
}

static void on_view_change(void *ud, enum api_cluster_change kind, const char *id, int deleted)
{
    struct agent *a = ud;
    (void)deleted;
    if (kind == API_CLUSTER_NODE)
        return;
    pthread_mutex_lock(&a->mu);
    if (kind == API_CLUSTER_ALL)
        a->dirty_all = 1;
    else
        mark_dirty_locked(a, id);
    pthread_cond_signal(&a->cv);
    pthread_mutex_unlock(&a->mu);
}

struct remove_job {
    struct agent *a;
    char id[API_NAME_MAX];
};

static void remove_files_job(void *arg)
{
    struct remove_job *j = arg;
    struct api_err err;
    if (agent_store_remove(j->a->store, j->id, &err) != API_OK)
        log_warn("removing tenant files failed tenant=%s: %s", j->id, err.msg);
    else
        log_info("tenant files removed tenant=%s", j->id);
    free(j);
}

static int assigned_here(const struct api_cluster_tenant *t, const char *node)
{
    for (size_t i = 0; i < t->nnodes; i++)
        if (strcmp(t->nodes[i], node) == 0)
            return 1;
    return 0;
}

static void flush_parked(struct agent *a, const char *id, int resume_here, const char *holder_url);
static void expire_fences(struct agent *a);

/* This node keeps a copy of ID and follows whoever holds its lease. */
static void declare_replica(struct agent *a, const char *id, const struct api_cluster_tenant *t)
{
    int other = t->leased && strcmp(t->holder, a->cfg.node) != 0;
    agent_repl_set_role(a->repl, id, AGENT_ROLE_REPLICA, 0, other ? t->holder : "", other ? t->holder_url : "");
}

/* Deletes our lease key of ID (compare on value) and stops leading it.
 * On the tenant's worker. */
static void release_lease(struct agent *a, const char *id, struct local_tenant *lt, const char *why)
{
    struct api_err err;
    if (agent_session_release(a->session, id, &err) != API_OK)
        log_warn("%s", err.msg);
    pthread_mutex_lock(&a->mu);
    lt->holding = 0;
    pthread_mutex_unlock(&a->mu);
    log_info("lease released tenant=%s: %s", id, why);
}

/* 1 if T's lease key was written for this agent by the orchestrator's
 * create txn (orch.c create_record): same create revision as the record,
 * our holder value and our current session lease. Such a key is ours
 * without a txn: its epoch is its mod_revision, as if we had acquired it.
 * Only for a tenant this process never held: a key we held and released
 * may still show in a view that is behind our delete, and a view behind a
 * session loss shows keys of a lease that is gone (checked by the lease ID
 * and by the session being writable). */
static int born_leased_here(struct agent *a, const struct api_cluster_tenant *t, int ever_held)
{
    return !ever_held && t->leased && strcmp(t->holder, a->cfg.node) == 0 &&
           strcmp(t->holder_url, a->url) == 0 && t->lease_create_revision == t->create_revision &&
           t->lease_id != 0 && t->lease_id == agent_session_lease_id(a->session) &&
           agent_session_writable(a->session);
}

/* Brings tenant ID on this node in line with its record. Runs on the
 * tenant's worker (one converge of a tenant at a time). */
static void converge(struct agent *a, const char *id)
{
    struct api_cluster_tenant t;
    struct local_tenant *lt;
    struct api_err err;
    int known = api_cluster_tenant(a->view, id, &t);
    int assigned = known && assigned_here(&t, a->cfg.node);

    pthread_mutex_lock(&a->mu);
    lt = api_map_get(a->local, id);
    pthread_mutex_unlock(&a->mu);

    if (!assigned) {
        if (lt == NULL)
            return;
        if (lt->holding && agent_session_release(a->session, id, &err) != API_OK)
            log_warn("%s", err.msg);
        agent_repl_forget(a->repl, id);
        flush_parked(a, id, 0, NULL);
        pthread_mutex_lock(&a->mu);
        free(api_map_del(a->local, id));
        pthread_mutex_unlock(&a->mu);
        struct remove_job *j = calloc(1, sizeof(*j));
        if (j != NULL) {
            j->a = a;
            snprintf(j->id, sizeof(j->id), "%s", id);
            /* On the tenant's worker, after any request already queued. */
            api_workq_submit(a->workers, tenant_key(id), remove_files_job, j);
        }
        log_info("tenant unassigned tenant=%s", id);
        return;
    }
    if (lt == NULL) {
        int oom;
        if ((lt = calloc(1, sizeof(*lt))) == NULL)
            return;
        pthread_mutex_lock(&a->mu);
        api_map_put(a->local, id, lt, &oom);
        pthread_mutex_unlock(&a->mu);
        if (oom) {
            free(lt);
            return;
        }
    }
    /* A tenant new here stands at the canonical empty database's position
     * with no files, on the primary and on replicas alike, until its first
     * use (repl.c, "unborn"), so a new tenant needs no snapshot. */
    if (!lt->repl_created && strcmp(t.primary, a->cfg.node) == 0) {
        if (agent_repl_create(a->repl, id, &err) != API_OK) {
            log_error("cannot create tenant database tenant=%s: %s", id, err.msg);
            return;
        }
        pthread_mutex_lock(&a->mu);
        lt->repl_created = 1;
        pthread_mutex_unlock(&a->mu);
        log_info("tenant ready tenant=%s role=primary", id);
    }
    if (strcmp(t.primary, a->cfg.node) != 0) {
        if (lt->unhealthy) { /* another node leads now; this copy follows it (a snapshot repairs it) */
            pthread_mutex_lock(&a->mu);
            lt->unhealthy = 0;
            pthread_mutex_unlock(&a->mu);
        }
        if (lt->holding)
            release_lease(a, id, lt, "no longer the desired primary");
        declare_replica(a, id, &t);
        /* requests held by a handover's fence go to the new primary once it holds the lease */
        if (t.leased && strcmp(t.holder, a->cfg.node) != 0)
            flush_parked(a, id, 0, t.holder_url);
        return;
    }
    /* An unhealthy database gives up its own lease and only that: failover
     * names another primary, and the neighbours on this node carry on. */
    if (lt->unhealthy) {
        if (lt->holding)
            release_lease(a, id, lt, "its database is unhealthy here");
        return;
    }
    /* We are the desired primary. Did we lose a key we held? The view is
     * behind our own txn until it reaches our epoch: only trust it past that. */
    if (lt->holding && api_cluster_revision(a->view) >= lt->epoch &&
        (!t.leased || strcmp(t.holder, a->cfg.node) != 0 || t.epoch != lt->epoch)) {
        pthread_mutex_lock(&a->mu);
        lt->holding = 0;
        pthread_mutex_unlock(&a->mu);
        log_warn("lease lost tenant=%s epoch=%lld", id, (long long)lt->epoch);
    }
    if (lt->holding) {
        agent_repl_set_role(a->repl, id, AGENT_ROLE_PRIMARY, lt->epoch, NULL, NULL);
        return;
    }
    if (t.leased && strcmp(t.holder, a->cfg.node) != 0) {
        log_debug("lease held elsewhere tenant=%s holder=%s", id, t.holder);
        declare_replica(a, id, &t); /* follow the holder until it lets go */
        return; /* its deletion will mark the tenant dirty again */
    }
    char holder[API_NAME_MAX];
    int64_t epoch;
    int adopted = born_leased_here(a, &t, lt->ever_held);
    if (adopted) {
        epoch = t.epoch;
    } else if (agent_session_acquire(a->session, id, &epoch, holder, &err) != API_OK) {
        log_warn("%s", err.msg);
        declare_replica(a, id, &t);
        return;
    }
    pthread_mutex_lock(&a->mu);
    lt->holding = 1;
    lt->ever_held = 1;
    lt->epoch = epoch;
    lt->quorum = strcmp(t.durability, "quorum") == 0;
    pthread_mutex_unlock(&a->mu);
    atomic_fetch_add(&a->lease_acquisitions, 1);
    if (adopted)
        atomic_fetch_add(&a->lease_adoptions, 1);
    agent_repl_set_role(a->repl, id, AGENT_ROLE_PRIMARY, epoch, NULL, NULL);
    /* a fence left from a handover away from us that never completed (the
     * target died; failover chose us again) ends: we hold a new epoch */
    flush_parked(a, id, 1, NULL);
    log_info("lease %s tenant=%s epoch=%lld", adopted ? "adopted" : "acquired", id, (long long)epoch);
}

struct converge_job {
    struct agent *a;
    char id[API_NAME_MAX];
};

static void converge_job(void *arg)
{
    struct converge_job *j = arg;
    converge(j->a, j->id);
    free(j);
}

/* Queues a converge of ID on its tenant's worker; -1 on OOM. */
static int submit_converge(struct agent *a, const char *id)
{
    struct converge_job *j = malloc(sizeof(*j));
    if (j == NULL)
        return -1;
    j->a = a;
    snprintf(j->id, sizeof(j->id), "%s", id);
    api_workq_submit(a->workers, tenant_key(j->id), converge_job, j);
    return 0;
}

static void collect_key(void *ud, const char *key, void *value)
{
    (void)value;
    api_names_add(ud, key);
}

static void mark_all_local_lost(struct agent *a)
{
    pthread_mutex_lock(&a->mu);
    a->dirty_all = 1;
    pthread_mutex_unlock(&a->mu);
}

static void collect_holding(void *ud, const char *key, void *value)
{
    (void)key;
    ((struct local_tenant *)value)->holding = 0;
    (void)ud;
}

struct close_stream_job {
    sqlite3 *db;
    struct agent_hrana_stream *hs;
};

static void close_stream_job(void *arg)
{
    struct close_stream_job *j = arg;
    agent_hrana_stream_free(j->hs);
    agent_store_close(j->db); /* rolls back what the idle stream left open */
    free(j);
}

/* An idle stream expired: close it on its tenant's worker. */
static void close_stream(void *ud, const char *tenant, sqlite3 *db, struct agent_hrana_stream *hs)
{
    struct agent *a = ud;
    struct close_stream_job *j = malloc(sizeof(*j));
    if (j == NULL)
        abort();
    j->db = db;
    j->hs = hs;
    log_debug("stream expired tenant=%s", tenant);
    api_workq_submit(a->workers, tenant_key(tenant), close_stream_job, j);
}

/* Controller: one etcd put per interval with every tenant's write counts
 * by client region (traffic.h); skipped when nothing was written. */
static void publish_traffic(struct agent *a)
{
    json_t *doc = agent_traffic_take(a->traffic);
    char key[256], *text;
    struct api_err err;
    if (doc == NULL)
        return;
    json_object_set_new(doc, "node", json_string(a->cfg.node));
    json_object_set_new(doc, "at", json_integer(api_unix_now()));
    text = json_dumps(doc, JSON_COMPACT);
    json_decref(doc);
    snprintf(key, sizeof(key), "%s%s", API_CLUSTER_TRAFFIC, a->cfg.node);
    if (text != NULL && api_etcd_put(a->etcd, key, text, strlen(text), agent_session_lease_id(a->session), NULL,
                                     &err) != API_OK)
        log_warn("publishing traffic counts: %s", err.msg); /* these counts are lost: placement is a heuristic */
    free(text);
}

/* Idle streams and orphaned handover fences are looked for this often. */
#define SWEEP_MS 500

static void *controller_main(void *arg)
{
    struct agent *a = arg;
    int64_t interval = a->cfg.lease_ttl_s * 1000 / 3;
    int64_t next_keepalive = api_now_ms() + interval;
    int64_t next_sweep = api_now_ms() + SWEEP_MS;
    int64_t next_traffic = api_now_ms() + a->cfg.traffic_interval_ms;
    struct api_err err;

    pthread_mutex_lock(&a->mu);
    while (!a->stopping) {
        while (!a->stopping && api_map_len(a->dirty) == 0 && !a->dirty_all && api_now_ms() < next_keepalive &&
               api_now_ms() < next_sweep) {
            struct timespec ts;
            int64_t wake = next_keepalive < next_sweep ? next_keepalive : next_sweep;
            api_deadline_after_ms(&ts, wake - api_now_ms());
            pthread_cond_timedwait(&a->cv, &a->mu, &ts);
        }
        if (a->stopping)
            break;
        /* on its own clock, so a busy stream of changes cannot starve it */
        if (api_now_ms() >= next_sweep) {
            next_sweep = api_now_ms() + SWEEP_MS;
            pthread_mutex_unlock(&a->mu);
            agent_streams_sweep(a->streams, api_now_ms(), close_stream, a);
            expire_fences(a);
            if (api_now_ms() >= next_traffic) {
                next_traffic = api_now_ms() + a->cfg.traffic_interval_ms;
                publish_traffic(a);
            }
            pthread_mutex_lock(&a->mu);
            continue;
        }
        struct api_names todo = {0};
        int all = a->dirty_all;
        a->dirty_all = 0;
        api_map_foreach(a->dirty, collect_key, &todo);
        api_map_free(a->dirty, NULL);
        a->dirty = api_map_new();
        if (all)
            api_map_foreach(a->local, collect_key, &todo);
        pthread_mutex_unlock(&a->mu);

        if (api_now_ms() >= next_keepalive) {
            int rc = agent_session_keepalive(a->session, &err);
            next_keepalive = api_now_ms() + interval;
            if (rc == API_EUNAVAILABLE) {
                log_warn("%s; granting a new session", err.msg);
                pthread_mutex_lock(&a->mu);
                api_map_foreach(a->local, collect_holding, NULL);
                pthread_mutex_unlock(&a->mu);
                if (agent_session_regrant(a->session, &err) != API_OK) {
                    log_error("%s", err.msg);
                    next_keepalive = api_now_ms() + 500;
                } else {
                    mark_all_local_lost(a);
                    all = 1;
                }
            } else if (rc != API_OK) {
                log_warn("%s", err.msg);
                next_keepalive = api_now_ms() + 500; /* retry sooner while etcd is away */
            }
        }
        if (all) {
            struct api_cluster_tenant *page;
            int more;
            size_t n = api_cluster_tenant_page(a->view, NULL, 1u << 30, NULL, &page, &more);
            for (size_t i = 0; i < n; i++)
                if (assigned_here(&page[i], a->cfg.node))
                    api_names_add(&todo, page[i].id);
            free(page);
        }
        /* Each tenant converges on its own worker: tenants proceed in
         * parallel, one tenant's steps stay in order, and only that worker
         * ever frees the tenant's local state. */
        for (size_t i = 0; i < todo.n; i++) {
            submit_converge(a, todo.v[i]); /* on OOM the tenant waits for its next change */
        }
        api_names_free(&todo);
        pthread_mutex_lock(&a->mu);
    }
    pthread_mutex_unlock(&a->mu);
    return NULL;
}

/* ------------------------------------------------------------------ */
/* data plane                                                          */

struct forward_job {
    struct agent *a;
    struct api_pending *pending;
    char *url;
    char *headers[12];
    size_t nheaders;
    char *body;
    size_t body_len;
    char method[8];
};
static void forward_job(void *arg);
static void forward_job_free(struct forward_job *j);

struct pipeline_job {
    struct agent *a;
    /* on a replica: try to answer here, else hand the request to the primary */
    int replica, waited, accept_replay;
    uint64_t min_txid;
    char holder[API_NAME_MAX];
    struct forward_job *fwd; /* NULL when forwarding is not allowed (loop guard, no primary) */
    struct api_pending *pending;
    char tenant[API_NAME_MAX];
    uint64_t key; /* tenant_key(tenant) */
    int version;
    int cursor;
    int read_only;
    char *body;
    size_t body_len;
    char *token; /* binds a new stream to the token that opened it */
    int quorum;  /* durability quorum: acknowledge once a replica holds the write */
    int recheck; /* served here only if the lease is ours once the job runs (adopting) */
    char client_region[8]; /* whose writes these are, for placement */
    struct api_jdoc *doc;  /* the body parsed (job_doc), once: on the loop for a read in place */
    /* a read in place, gathered for the end of its loop's turn (queue_read_in_place) */
    struct pipeline_job *batch_next;
    struct api_req *req; /* its request, valid until the turn's end */
    int serve_here;      /* led here (else a replica's read) */
    struct {
        int tried;    /* a plain read ending in "close": runs in place if its slot is idle */
        int answered; /* ran: RESP is its reply, POS the position it saw */
        struct api_resp *resp;
        struct agent_repl_pos pos;
    } in_place;
};

static void finish_error(struct api_pending *p, const struct api_err *err)
{
    api_pending_finish(p, api_dp_error_resp(err));
}

/* A request another agent forwarded here is never forwarded again. */
static int forwarded_twice_error(struct api_err *err, const char *tenant, const char *node)
{
    return api_err_set(err, API_EREPLAYLOOP,
                       "tenant '%s': request was already forwarded once and node '%s' is not its primary either",
                       tenant, node);
}

/* A refusal that guarantees nothing ran (no primary right now, tenant
 * moving): `Retry-After: 1` tells a caller, the router among them, that
 * sending it again is safe. Other 503s (a quorum timeout, a failed capture)
 * may follow a commit and carry no such promise. */
static struct api_resp *unserved_resp(const struct api_err *err)
{
    struct api_resp *resp = api_dp_error_resp(err);
    if (resp != NULL)
        api_resp_add_header(resp, "retry-after", "1");
    return resp;
}

static void pipeline_job_free(struct pipeline_job *j)
{
    api_jdoc_free(j->doc);
    forward_job_free(j->fwd);
    free(j); /* its body and token with it */
}

/* J's body as a document, parsed on first use and kept with the job; NULL
 * (with the parser's message in MSG) if it is not JSON. */
static const struct api_jv *job_doc(struct pipeline_job *j, char *msg, size_t msg_cap)
{
    if (j->doc == NULL && api_jdoc_parse(j->body, j->body_len, &j->doc, msg, msg_cap) != 0)
        return NULL;
    return api_jdoc_root(j->doc);
}

static void exec_pragma(sqlite3 *db, const char *sql)
{
    char *msg = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        log_warn("%s failed: %s", sql, msg ? msg : "?");
        sqlite3_free(msg);
    }
}

static int ends_with_close(const struct api_jv *requests)
{
    size_t n = api_jv_size(requests);
    const char *type = n ? api_jv_string(api_jv_get(api_jv_at(requests, n - 1), "type")) : NULL;
    return type != NULL && strcmp(type, "close") == 0;
}

/* One pipeline answered (IN_PLACE: on its event loop), in this thread's counters. */
static void count_pipeline(struct agent *a, int in_place)
{
    static atomic_int next_slot;
    if (tl_count_slot < 0)
        tl_count_slot = atomic_fetch_add(&next_slot, 1) % COUNT_SLOTS;
    struct request_counts *c = &a->counts[tl_count_slot];
    atomic_fetch_add_explicit(&c->pipelines, 1, memory_order_relaxed);
    if (in_place)
        atomic_fetch_add_explicit(&c->reads_in_place, 1, memory_order_relaxed);
}

/* Sends RESP with the tenant's position: `shoal-txid` always, the cookie
 * after a write; under quorum durability a write waits for a replica. */
static void finish_with_position(struct agent *a, struct pipeline_job *j, struct api_resp *resp,
                                 const struct agent_repl_pos *before, const struct agent_repl_pos *after)
{
    char hex[17], cookie[160];
    agent_hex16(after->txid, hex);
    if (resp != NULL) {
        api_resp_add_header(resp, "shoal-txid", hex);
        if (after->txid != before->txid) {
            snprintf(cookie, sizeof(cookie), "__shoal_txid=%s; Path=/t/%s/", hex, j->tenant);
            api_resp_add_header(resp, "set-cookie", cookie);
        }
    }
    if (j->quorum && after->txid > before->txid)
        agent_repl_quorum_wait(a->repl, j->tenant, after->txid, j->pending, resp);
    else
        api_pending_finish(j->pending, resp);
}

static void pipeline_job(void *arg);

/* A replica cannot answer J: the primary must. With shoal-accept-replay the
 * caller replays it there; otherwise this worker forwards it. Frees J. */
static void send_to_primary(struct pipeline_job *j)
{
    struct api_err err;
    if (j->accept_replay && j->holder[0]) {
        struct api_resp *resp = api_resp_new(200);
        char v[128];
        snprintf(v, sizeof(v), "instance=%s", j->holder);
        if (resp != NULL) {
            api_resp_add_header(resp, "fly-replay", v);
            api_resp_set_body(resp, "application/json", "{}", 2);
        }
        atomic_fetch_add(&j->a->replays_sent, 1);
        api_pending_finish(j->pending, resp);
    } else if (j->fwd != NULL) {
        struct forward_job *f = j->fwd;
        j->fwd = NULL;
        f->pending = j->pending;
        /* never wait on another node on the tenant's worker: replication
         * applies for this tenant run there */
        api_workq_submit(j->a->forwarders, atomic_fetch_add(&j->a->forward_seq, 1), forward_job, f);
    } else if (!j->holder[0]) {
        api_err_set(&err, API_EUNAVAILABLE, "tenant '%s' has no primary right now; retry shortly", j->tenant);
        api_pending_finish(j->pending, unserved_resp(&err));
    } else {
        forwarded_twice_error(&err, j->tenant, j->a->cfg.node);
        finish_error(j->pending, &err);
    }
    pipeline_job_free(j);
}

static void rerun_after_wait(void *arg, int reached)
{
    struct pipeline_job *j = arg;
    (void)reached; /* the job looks at the position again */
    api_workq_submit(j->a->workers, j->key, pipeline_job, j);
}

/* On a replica: 1 if J was handed on (to the primary, or to wait for
 * shoal-min-txid), 0 if this replica answers it (read-only). */
static int replica_handoff(struct pipeline_job *j)
{
    struct agent *a = j->a;
    struct agent_repl_pos pos;
    struct api_err err;
    sqlite3 *db;
    const struct api_jv *root = job_doc(j, NULL, 0), *requests = api_jv_get(root, "requests"),
                        *baton = api_jv_get(root, "baton");
    int local = 0;

    if (!api_jv_is(requests, API_JV_ARRAY))
        return 0; /* the executor reports the protocol error */
    /* interactive transactions (batons) always live on the primary */
    if (!api_jv_is(baton, API_JV_STRING) && ends_with_close(requests) &&
        agent_repl_ensure(a->repl, j->tenant, AGENT_ROLE_REPLICA, &err) == API_OK &&
        agent_repl_position(a->repl, j->tenant, &pos) == 0 && pos.loaded && agent_store_exists(a->store, j->tenant)) {
        if (j->min_txid > pos.txid && !j->waited) {
            j->waited = 1;
            agent_repl_wait_txid(a->repl, j->tenant, j->min_txid, a->cfg.catchup_timeout_ms, rerun_after_wait, j);
            return 1;
        }
        local = j->min_txid <= pos.txid && agent_store_conn(a->store, j->tenant, &db, &err) == API_OK &&
                agent_hrana_reads_only(db, requests);
    }
    if (!local) {
        send_to_primary(j);
        return 1;
    }
    j->read_only = 1;
    return 0;
}

/* After a write was acknowledged, on the tenant's worker: the checkpoint or
 * log compaction its commit found due (agent_repl_maintain). Not while a
 * handover's fence waits for this worker: the fence's stall would include
 * it, and the next commit, here or on the new primary, asks again. */
static void maintain_after_write(struct agent *a, const struct pipeline_job *j, const struct agent_repl_pos *before,
                                 const struct agent_repl_pos *after)
{
    struct local_tenant *lt;
    struct api_err err;
    sqlite3 *db;
    if (j->replica || after->txid <= before->txid)
        return;
    pthread_mutex_lock(&a->mu);
    int fenced = (lt = api_map_get(a->local, j->tenant)) != NULL && lt->fenced_until != 0;
    pthread_mutex_unlock(&a->mu);
    if (!fenced && agent_store_conn(a->store, j->tenant, &db, &err) == API_OK)
        agent_repl_maintain(a->repl, j->tenant, db);
}

/* ------------------------------------------------------------------ */
/* streamed cursors                                                    */
/*
 * /v3/cursor streams its entries (api_pending_stream) when its batch only
 * reads and the connection has no transaction open: each line leaves as
 * SQLite produces it, with memory bounded per reply (API_STREAM_MAX_QUEUED)
 * instead of the whole batch. Every other cursor keeps the buffered reply,
 * because a write's headers are only known at the end: `shoal-txid` is the
 * position after its commit, and under `durability: quorum` the reply waits
 * until a replica holds the write (finish_with_position). Reads leave the
 * position where it was, so a streamed cursor's headers (shoal-txid of the
 * position it read, no cookie, text/plain) are what the buffered reply would
 * carry. With a transaction already open on the stream, a read-only batch
 * could still COMMIT earlier writes, hence the autocommit condition.
 *
 * A slow reader blocks the tenant's worker while the reply is over its
 * bound, but only until the statement's time limit (agent_hrana_sink):
 * the worker also serves other tenants, and the read snapshot pins the WAL.
 * A reader that stalls that long gets a terminal {"type":"error"} entry
 * (CURSOR_STALLED); a client that disconnects stops the batch at its next
 * entry and its stream is closed.
 */

/* One entry (LINE, LEN bytes of JSON) and its newline, in one write. */
static int cursor_write_line(struct api_stream *out, const char *line, size_t len, int64_t deadline_ms,
                             struct api_err *err)
{
    char *text = malloc(len + 1);
    int rc;

    if (text == NULL)
        return api_err_set(err, API_ENOMEM, "out of memory");
    memcpy(text, line, len);
    text[len] = '\n';
    rc = api_stream_write(out, text, len + 1, deadline_ms);
    free(text);
    if (rc == API_EIO)
        return api_err_set(err, API_EIO, "the client went away");
    if (rc == API_ETIMEOUT)
        return api_err_set(err, API_ETIMEOUT, "the client did not read the cursor's entries in time (more than %zu "
                                              "bytes waited until the statement's time limit)",
                           (size_t)API_STREAM_MAX_QUEUED);
    if (rc != API_OK)
        return api_err_set(err, rc, "out of memory");
    return API_OK;
}

static int cursor_sink_entry(void *ud, const char *line, size_t len, int64_t deadline_ms, struct api_err *err)
{
    return cursor_write_line(ud, line, len, deadline_ms, err);
}

/* The first line of a cursor reply, and the head of a pipeline's:
 * {"baton":BATON or null,"base_url":null ... (the caller closes it). */
static void put_baton_head(struct api_jw *w, const char *baton)
{
    api_jw_object(w);
    api_jw_key(w, "baton");
    if (baton[0])
        api_jw_cstring(w, baton);
    else
        api_jw_null(w);
    api_jw_key(w, "base_url");
    api_jw_null(w);
}

/* W's text as a 200 reply of CONTENT_TYPE; W is emptied. NULL on OOM. */
static struct api_resp *reply_of(struct api_jw *w, const char *content_type)
{
    size_t len;
    char *text = api_jw_finish(w, &len);
    struct api_resp *resp = api_resp_new(200);
    if (text == NULL || resp == NULL || api_resp_take_body(resp, content_type, text, len) != API_OK) {
        free(text);
        api_resp_free(resp);
        return NULL;
    }
    return resp;
}

/* The reply to a pipeline whose RESULTS (agent_hrana_execute's array)
 * are written, freed here: {"baton":..,"base_url":null,"results":[..]};
 * for a cursor (RESULTS: its entry lines) text/plain, the baton line first.
 * NULL on OOM. */
static struct api_resp *pipeline_reply(const char *baton, int cursor, struct api_jw *results)
{
    struct api_jw body = API_JW_INIT;

    put_baton_head(&body, baton);
    if (cursor) {
        api_jw_object_end(&body);
        api_jw_append(&body, "\n", 1);
        api_jw_append(&body, results->p ? results->p : "", results->len);
    } else {
        api_jw_key(&body, "results");
        api_jw_raw(&body, results->p ? results->p : "", results->len);
        api_jw_object_end(&body);
    }
    api_jw_free(results);
    return reply_of(&body, cursor ? "text/plain" : "application/json");
}

/* The reply to a pipeline written whole into W: the head (put_baton_head
 * and the "results" key) before agent_hrana_execute wrote its array after
 * it, so the results are not copied into a second text; W is emptied. NULL
 * on OOM. */
static struct api_resp *pipeline_reply_whole(struct api_jw *w)
{
    api_jw_object_end(w);
    return reply_of(w, "application/json");
}

/* 1 if J's cursor BATCH may stream on DB (see above). */
static int cursor_streamable(const struct pipeline_job *j, sqlite3 *db, struct agent_hrana_stream *hs,
                             const struct api_jv *batch)
{
    return j->cursor && sqlite3_get_autocommit(db) && agent_hrana_cursor_check(hs, batch, j->version) &&
           agent_hrana_batch_reads_only(db, batch);
}

/* Starts J's streamed reply: the headers a buffered read gets and the baton
 * line. ST is the cursor's Hrana stream (taken). NULL on OOM (J's request is
 * then answered with 500 and must not be finished again). */
static struct api_stream *cursor_stream_start(struct agent *a, struct pipeline_job *j, struct agent_stream *st,
                                              const struct agent_repl_pos *pos)
{
    struct api_resp *head = api_resp_new(200);
    struct api_stream *out;
    struct api_err err;
    char baton[AGENT_BATON_MAX] = "", hex[17];

    if (head == NULL || api_resp_set_body(head, "text/plain", "", 0) != API_OK) {
        api_resp_free(head);
        api_err_set(&err, API_ENOMEM, "out of memory");
        finish_error(j->pending, &err);
        return NULL;
    }
    agent_hex16(pos->txid, hex);
    api_resp_add_header(head, "shoal-txid", hex);
    if (st != NULL)
        agent_streams_next_baton(a->streams, st, baton, sizeof(baton));
    if ((out = api_pending_stream(j->pending, head)) == NULL)
        return NULL;
    /* the baton line; if it cannot be written the batch stops at its first entry */
    struct api_jw line = API_JW_INIT;
    put_baton_head(&line, baton);
    api_jw_object_end(&line);
    if (!line.failed)
        cursor_write_line(out, line.p, line.len, api_now_ms() + a->cfg.stmt_timeout_ms, &err);
    api_jw_free(&line);
    return out;
}

/* Ends a streamed reply after the batch returned RC (ERR). */
static void cursor_stream_end(struct api_stream *out, int rc, const struct api_err *err)
{
    struct api_err ignored;
    if (rc == API_OK) {
        api_stream_end(out);
        return;
    }
    if (rc == API_EIO || api_stream_gone(out)) {
        api_stream_abort(out);
        return;
    }
    /* Hrana's terminal entry: the batch stopped here. Written without waiting
     * for room: a stalled reader may never take it. */
    struct api_jw e = API_JW_INIT;
    api_jw_object(&e);
    api_jw_key(&e, "type");
    api_jw_cstring(&e, "error");
    api_jw_key(&e, "error");
    api_jw_object(&e);
    api_jw_key(&e, "message");
    api_jw_cstring(&e, err->msg);
    api_jw_key(&e, "code");
    api_jw_cstring(&e, rc == API_ETIMEOUT ? "CURSOR_STALLED" : rc == API_EINVAL ? "PROTOCOL_ERROR" : "INTERNAL_ERROR");
    api_jw_object_end(&e);
    api_jw_object_end(&e);
    if (e.failed || cursor_write_line(out, e.p, e.len, 0, &ignored) == API_ENOMEM) {
        api_jw_free(&e);
        api_stream_abort(out);
        return;
    }
    api_jw_free(&e);
    api_stream_end(out);
}

/* Runs one pipeline on the tenant's worker. Without a baton and ending in
 * "close", it uses the thread's cached connection; otherwise it runs on a
 * stream with its own connection that outlives the request (batons). */
static void pipeline_job(void *arg)
{
    struct pipeline_job *j = arg;
    struct agent *a = j->a;
    struct agent_hrana_limits limits = {.stmt_timeout_ms = a->cfg.stmt_timeout_ms, .max_response_bytes = 16u << 20};
    struct agent_hrana_outcome outcome;
    struct agent_hrana_stream *hs = NULL;
    struct agent_stream *st = NULL;
    const struct api_jv *root, *requests, *baton;
    struct api_jw results = API_JW_INIT;
    char jerr[160];
    struct api_err err;
    char next_baton[AGENT_BATON_MAX] = "";
    sqlite3 *db = NULL;
    int rc;

    api_err_clear(&err);
    if (j->recheck) { /* the adopting converge ran just before this job */
        struct local_tenant *lt;
        pthread_mutex_lock(&a->mu);
        int holding = (lt = api_map_get(a->local, j->tenant)) != NULL && lt->holding;
        pthread_mutex_unlock(&a->mu);
        j->recheck = 0;
        j->replica = !holding;
    }
    if (j->replica) {
        if (replica_handoff(j))
            return;
    } else if (agent_repl_ensure(a->repl, j->tenant, AGENT_ROLE_PRIMARY, &err) != API_OK) {
        goto fail;
    } else {
        agent_repl_set_quorum(a->repl, j->tenant, j->quorum); /* before any commit of this request */
    }
    struct agent_repl_pos before, after;
    agent_repl_position(a->repl, j->tenant, &before);
    if ((root = job_doc(j, jerr, sizeof(jerr))) == NULL || !api_jv_is(root, API_JV_OBJECT)) {
        api_err_set(&err, API_EBADJSON, "pipeline body is not a JSON object: %s", root == NULL ? jerr : "wrong type");
        goto fail;
    }
    requests = api_jv_get(root, j->cursor ? "batch" : "requests");
    baton = api_jv_get(root, "baton");
    if (j->cursor && !api_jv_is(requests, API_JV_OBJECT)) {
        api_err_set(&err, API_EINVAL, "cursor body needs a \"batch\" object");
        goto fail;
    }
    if (!j->cursor && !api_jv_is(requests, API_JV_ARRAY)) {
        api_err_set(&err, API_EINVAL, "pipeline body needs a \"requests\" array");
        goto fail;
    }
    if (baton != NULL && !api_jv_is(baton, API_JV_NULL) && !api_jv_is(baton, API_JV_STRING)) {
        api_err_set(&err, API_EBATON, "Received an invalid baton (not a string)");
        goto fail;
    }
    if (api_jv_is(baton, API_JV_STRING)) {
        if (agent_streams_take(a->streams, api_jv_string(baton), j->tenant, j->token, strlen(j->token), &st,
                               &err) != API_OK)
            goto fail;
        db = agent_stream_db(st);
        hs = agent_stream_hrana(st);
    } else if (!j->cursor && ends_with_close(requests)) {
        struct agent_stmt_cache *stmts = NULL;
        if (agent_store_conn_stmts(a->store, j->tenant, &db, &stmts, &err) != API_OK)
            goto fail;
        if ((hs = agent_hrana_stream_new_cached(db, &limits, stmts)) == NULL) {
            api_err_set(&err, API_ENOMEM, "out of memory");
            goto fail;
        }
    } else {
        if (agent_store_open(a->store, j->tenant, &db, &err) != API_OK)
            goto fail;
        if ((hs = agent_hrana_stream_new(db, &limits)) == NULL) {
            agent_store_close(db);
            api_err_set(&err, API_ENOMEM, "out of memory");
            goto fail;
        }
        if (agent_streams_add(a->streams, j->tenant, j->token, strlen(j->token), db, hs, &st, &err) != API_OK) {
            agent_hrana_stream_free(hs);
            agent_store_close(db);
            goto fail;
        }
    }
    agent_hrana_stream_set_read_only(hs, j->read_only);
    if (j->read_only)
        exec_pragma(db, "PRAGMA query_only=1");
    memset(&outcome, 0, sizeof(outcome));
    struct api_stream *out = NULL;
    int streamed = cursor_streamable(j, db, hs, requests);
    if (streamed && (out = cursor_stream_start(a, j, st, &before)) != NULL) {
        struct agent_hrana_sink sink = {.entry = cursor_sink_entry, .ud = out};
        if (api_stream_gone(out)) /* left before the baton line: run nothing */
            rc = api_err_set(&err, API_EIO, "the client went away");
        else
            rc = agent_hrana_cursor_stream(hs, requests, j->version, &sink, &outcome, &err);
    } else if (streamed) {
        rc = api_err_set(&err, API_ENOMEM, "out of memory"); /* already answered */
    } else if (j->cursor) {
        rc = agent_hrana_cursor(hs, requests, j->version, &results, &outcome, &err);
    } else {
        rc = agent_hrana_execute(hs, requests, j->version, &results, &outcome, &err);
    }
    if (j->read_only)
        exec_pragma(db, "PRAGMA query_only=0");
    if (st != NULL) {
        /* A protocol error ends the stream, as in sqld. */
        agent_streams_release(a->streams, st, rc != API_OK || outcome.closed, next_baton, sizeof(next_baton));
    } else {
        /* Without a stream the request is the whole stream: never leave a
         * transaction open on the shared connection. */
        if (!sqlite3_get_autocommit(db))
            exec_pragma(db, "ROLLBACK");
        agent_hrana_stream_free(hs);
    }
    if (streamed) {
        /* the reply has gone out as it ran; a read moves no position */
        if (out != NULL)
            cursor_stream_end(out, rc, &err);
        if (rc == API_OK)
            count_pipeline(a, 0);
        api_jw_free(&results);
        pipeline_job_free(j);
        return;
    }
    if (rc != API_OK)
        goto fail;
    count_pipeline(a, 0);
    agent_repl_position(a->repl, j->tenant, &after);
    if (!j->replica && after.txid > before.txid)
        agent_traffic_add(a->traffic, j->tenant, j->client_region, after.txid - before.txid);
    if (after.broken) {
        pthread_mutex_lock(&a->mu);
        struct local_tenant *ul = api_map_get(a->local, j->tenant);
        if (ul != NULL && !ul->unhealthy) {
            ul->unhealthy = 1;
            mark_dirty_locked(a, j->tenant);
            pthread_cond_signal(&a->cv);
        }
        pthread_mutex_unlock(&a->mu);
        api_err_set(&err, API_EUNAVAILABLE, "tenant '%s': replication capture failed; the write may not be "
                                            "replicated", j->tenant);
        goto fail;
    }
    {
        struct api_resp *resp = pipeline_reply(next_baton, j->cursor, &results);
        if (resp != NULL) {
            finish_with_position(a, j, resp, &before, &after);
        } else {
            api_err_set(&err, API_ENOMEM, "out of memory");
            finish_error(j->pending, &err);
        }
    }
    maintain_after_write(a, j, &before, &after);
    pipeline_job_free(j);
    return;
fail:
    finish_error(j->pending, &err);
    api_jw_free(&results);
    pipeline_job_free(j);
}


/* ------------------------------------------------------------------ */
/* reads in place                                                      */
/*
 * A read that needs nothing but SQLite runs on the event loop itself, as a
 * job of its tenant's worker slot (api_workq_try_run), when that slot is
 * idle: no hop to a worker thread and back, which on a small VM costs more
 * than a point read (a wake-up each way; measured over 1,000 tenants: agent
 * CPU per read 89 -> 48 µs at one connection). Only what cannot block runs
 * there: a body (parsed on the loop, kept with the job) of statements that
 * read by their text (api_pipeline_inspect_doc), ending in "close" (no
 * baton, no cursor), the tenant loaded in its role, its
 * connection already open in the slot, writes refused by the authorizer,
 * no busy waiting, and at most IN_PLACE_BUDGET_US of SQLite: a read that runs
 * longer is stopped and goes to a worker like any other request, as does
 * one that fails in any way (it changed nothing, so running it again is
 * safe, and the worker gives the error its usual form). The reads of a
 * loop turn run together at its end (run_read_batch). Per loop turn at
 * most --inline-reads (64) requests run in place; the others of the same
 * turn go to workers, so that a turn stays bounded and the loop keeps
 * accepting. With one loop per core the loops already keep every core
 * serving: a cap of 16 sent the excess of 64 connections over two loops to
 * workers, at 39.5k and 46.5k reads/s over 1,000 tenants against 49.0k and
 * 52.1k with 64 (16 connections: the same).
 */
#define IN_PLACE_BUDGET_US 200
/* a larger body (a long statement, many arguments) is parsed by its worker, not on the loop */
#define IN_PLACE_MAX_BODY (64u << 10)

/* Where this read found the tenant's data, for the next request's prefetch
 * (hot.h): its connection, its pager and WAL (their file handles'
 * neighbours), the statement it ran, the agent's records it went through,
 * and the first two pages it fetched (PAGES: page 1 and the table's root)
 * with their page cache. */
static void note_hot(struct agent *a, uint64_t key, sqlite3 *db, struct agent_stmt_cache *stmts, void **rec,
                     const void *const pages[3])
{
    sqlite3_stmt *st = agent_stmt_cache_last(stmts);
    if (agent_hot_current(a->hot, key, db, st, pages[0]))
        return;
    sqlite3_file *file = NULL, *wal = NULL;
    if (sqlite3_file_control(db, "main", SQLITE_FCNTL_FILE_POINTER, &file) != SQLITE_OK)
        file = NULL;
    if (sqlite3_file_control(db, "main", SQLITE_FCNTL_JOURNAL_POINTER, &wal) != SQLITE_OK)
        wal = NULL;
    const void *addrs[AGENT_HOT_KINDS] = {
        [AGENT_HOT_DB] = db,          [AGENT_HOT_FILE] = file,     [AGENT_HOT_WAL] = wal,
        [AGENT_HOT_STMT] = st,        [AGENT_HOT_RECORD] = stmts,  [AGENT_HOT_RECORD2] = rec,
        [AGENT_HOT_RECORD3] = *rec,   [AGENT_HOT_PAGE] = pages[0], [AGENT_HOT_PAGE2] = pages[1],
        [AGENT_HOT_PCACHE] = pages[2],
    };
    agent_hot_note(a->hot, key, addrs);
}

/* J's read, on its loop with its tenant's slot held; what it leaves for the
 * loop to send once the slot is released is in J->in_place: the reply and
 * the position the read saw. */
static void in_place_read(void *arg)
{
    struct pipeline_job *j = arg;
    struct agent *a = j->a;
    struct agent_hrana_limits limits = {.stmt_timeout_ms = a->cfg.stmt_timeout_ms,
                                        .max_response_bytes = 16u << 20,
                                        .budget_us = IN_PLACE_BUDGET_US};
    struct agent_hrana_outcome outcome;
    struct agent_hrana_stream *hs;
    struct agent_stmt_cache *stmts = NULL;
    struct agent_repl_pos pos = {0};
    struct api_err err;
    /* parsed by read_in_place_fits, which found plain reads ending in "close" */
    const struct api_jv *requests = api_jv_get(api_jdoc_root(j->doc), "requests");
    struct api_jw results = API_JW_INIT;
    sqlite3 *db;
    void **rec;

    if (!agent_store_conn_if_open(a->store, j->tenant, &db, &stmts, &rec))
        return;
    /* the tenant's replication record, kept beside its connection */
    if (*rec == NULL && (*rec = agent_repl_tenant(a->repl, j->tenant)) == NULL)
        return;
    if (!agent_repl_ready_txid(*rec, j->replica ? AGENT_ROLE_REPLICA : AGENT_ROLE_PRIMARY, &pos.txid) ||
        (j->replica && j->min_txid > pos.txid))
        return;
    if ((hs = agent_hrana_stream_new_cached(db, &limits, stmts)) == NULL)
        return;
    /* The SQL text looked read-only; the authorizer refuses
     * any write all the same (a write here would commit on the loop and
     * need the log's sync): such a statement fails, and a worker runs the
     * request again. */
    agent_hrana_stream_set_read_only(hs, 1);
    sqlite3_busy_timeout(db, 0); /* a lock held elsewhere: a worker waits for it, not the loop */
    memset(&outcome, 0, sizeof(outcome));
    api_err_clear(&err);
    const void *pages[3];
    agent_store_pages_watch();
    put_baton_head(&results, ""); /* no baton: the pipeline ends in "close" */
    api_jw_key(&results, "results");
    int rc = agent_hrana_execute(hs, requests, j->version, &results, &outcome, &err);
    agent_store_pages_seen(pages);
    sqlite3_busy_timeout(db, AGENT_STORE_BUSY_MS);
    if (!sqlite3_get_autocommit(db))
        exec_pragma(db, "ROLLBACK");
    int gave_up = agent_hrana_stream_gave_up(hs);
    agent_hrana_stream_free(hs);
    if (outcome.wrote)
        log_error("tenant=%s: a read run in place wrote", j->tenant); /* cannot happen: the authorizer */
    if (rc != API_OK || gave_up || outcome.wrote || outcome.failed) {
        api_jw_free(&results);
        atomic_fetch_add(&a->reads_in_place_declined, 1);
        return;
    }
    struct api_resp *resp = pipeline_reply_whole(&results);
    if (resp == NULL)
        return; /* out of memory: a worker tries */
    /* POS is what the read saw: commits, applies and snapshots of the
     * tenant run on its slot, held here. The reply is sent after the slot
     * is released (run_read_batch): its write to the socket is most of
     * a read's time, and another loop reading the same tenant waits for
     * the slot, not for our client's socket. */
    j->in_place.resp = resp;
    j->in_place.pos = pos;
    j->in_place.answered = 1;
    note_hot(a, j->key, db, stmts, rec, pages);
}

static void submit_write(struct agent *a, struct api_req *r, struct pipeline_job *j);

/* J (deferred, not answered in place) to its tenant's worker; one led here
 * (SERVE_HERE) through submit_write, which parks it behind a fence. */
static void submit_pipeline(struct agent *a, struct api_req *r, struct pipeline_job *j, int serve_here)
{
    if (serve_here) {
        submit_write(a, r, j);
    } else {
        api_pending_soon(j->pending);
        api_workq_submit(a->workers, j->key, pipeline_job, j);
    }
}

/* A body (parsed here, kept with J for a worker too) of plain reads that
 * ends in "close": one a loop may run in place. */
static int read_in_place_fits(struct pipeline_job *j)
{
    struct api_pipeline_info info;
    const struct api_jv *root = job_doc(j, NULL, 0);
    if (root == NULL)
        return 0; /* the worker reports the error */
    api_pipeline_inspect_doc(root, &info);
    return info.parsed && !info.has_baton && info.ends_with_close && info.reads_only;
}

/* 1 (and counted) if one more read may run in place in the calling loop's
 * turn: --inline-reads counts the reads, not the other requests of the turn. */
static int in_place_allowed(struct agent *a)
{
    uint64_t turn = api_server_turn(a->server);
    if (turn != tl_in_place_turn) {
        tl_in_place_turn = turn;
        tl_in_place_count = 0;
    }
    if (tl_in_place_count >= a->cfg.inline_reads)
        return 0;
    tl_in_place_count++;
    return 1;
}

/* The reads in place a loop gathered over its turn (queue_read_in_place),
 * in arrival order. */
static __thread struct pipeline_job *tl_batch_first, *tl_batch_last;

/*
 * At the end of a loop's turn, its gathered requests a stage at a time:
 * parse and check every body, then run every read, then send every reply
 * (or hand the request to its worker). A point read's path through h2o,
 * the agent and SQLite is much larger than the CPU's 32 KiB instruction
 * cache (callgrind: ~1,370 simulated instruction-cache misses per read over
 * 1,000 tenants), so one request after another each fetched all of it
 * again; a stage's code stays in the cache from one request of the turn to
 * the next. A loop turn brings several requests under load (16 connections
 * over two loops: 5.6 per turn with any, 40% of turns 8 or more).
 */
static void run_read_batch(void *arg)
{
    struct agent *a = arg;
    struct pipeline_job *first = tl_batch_first, *j, *next;

    tl_batch_first = tl_batch_last = NULL; /* what reaches us meanwhile is another batch */
    for (j = first; j != NULL; j = j->batch_next)
        j->in_place.tried = !api_pending_gone(j->pending) && read_in_place_fits(j) && in_place_allowed(a);
    for (j = first; j != NULL; j = j->batch_next)
        if (j->in_place.tried)
            (void)api_workq_try_run(a->workers, j->key, in_place_read, j); /* a busy slot: not answered */
    for (j = first; j != NULL; j = next) {
        next = j->batch_next;
        j->batch_next = NULL;
        if (j->in_place.answered) {
            count_pipeline(a, 1);
            api_pending_direct(1);
            finish_with_position(a, j, j->in_place.resp, &j->in_place.pos, &j->in_place.pos);
            api_pending_direct(0);
            pipeline_job_free(j);
        } else if (api_pending_gone(j->pending)) {
            api_pending_reply(j->pending, NULL); /* nothing to send: the client is gone (and so is J->req) */
            pipeline_job_free(j);
        } else {
            submit_pipeline(a, j->req, j, j->serve_here);
        }
    }
}

/* On the loop, for a request R deferred as J (SERVE_HERE: its tenant led
 * here): 1 if J may be a read in place and waits for the end of this turn
 * (run_read_batch), 0 if it goes to its worker now. */
static int queue_read_in_place(struct agent *a, struct api_req *r, struct pipeline_job *j, int serve_here)
{
    if (a->cfg.inline_reads == 0 || j->cursor || j->recheck || j->body_len > IN_PLACE_MAX_BODY)
        return 0;
    j->req = r;
    j->serve_here = serve_here;
    if (tl_batch_last != NULL)
        tl_batch_last->batch_next = j;
    else
        tl_batch_first = j;
    tl_batch_last = j;
    api_server_end_of_turn(r, run_read_batch, a);
    return 1;
}

static const char *const forwarded_headers[] = {"authorization", "content-type", "shoal-min-txid",
                                                "shoal-consistency", "shoal-client-region", "shoal-tenant",
                                                "cookie", NULL};
static const char *const relayed_headers[] = {"shoal-txid", "set-cookie", "fly-replay", "retry-after", NULL};

static void forward_job(void *arg)
{
    struct forward_job *j = arg;
    struct api_http_resp up;
    struct api_err err;
    const char *hdrs[16];
    size_t n = 0;

    for (size_t i = 0; i < j->nheaders; i++)
        hdrs[n++] = j->headers[i];
    hdrs[n] = NULL;
    if (tl_http == NULL)
        tl_http = api_http_client_new();
    struct api_http_req rq = {.method = j->method, .url = j->url, .headers = hdrs, .body = j->body,
                              .body_len = j->body_len, .timeout_ms = 30000};
    if (tl_http == NULL || api_http_do(tl_http, &rq, &up, &err) != API_OK) {
        if (tl_http == NULL)
            api_err_set(&err, API_ENOMEM, "out of memory");
        api_err_set(&err, API_EUPSTREAM, "forwarding to the primary failed: %s", err.msg);
        finish_error(j->pending, &err);
    } else {
        struct api_resp *resp = api_resp_new((int)up.status);
        const char *ct = api_http_resp_header(&up, "content-type");
        if (resp != NULL) {
            api_resp_set_body(resp, ct ? ct : "application/octet-stream", up.body, up.body_len);
            for (size_t i = 0; i < up.nheaders; i++)
                for (const char *const *h = relayed_headers; *h; h++)
                    if (strcmp(up.headers[i].name, *h) == 0)
                        api_resp_add_header(resp, up.headers[i].name, up.headers[i].value);
        }
        api_pending_finish(j->pending, resp);
        api_http_resp_fini(&up);
        atomic_fetch_add(&j->a->forwarded, 1);
    }
    forward_job_free(j);
}

static void forward_job_free(struct forward_job *j)
{
    if (j == NULL)
        return;
    for (size_t i = 0; i < j->nheaders; i++)
        free(j->headers[i]);
    free(j->url);
    free(j->body);
    free(j);
}

/* A forward of R to PRIMARY_URL, ready to run on a worker (NULL on OOM). */
static struct forward_job *make_forward_job(struct agent *a, struct api_req *r, const char *primary_url)
{
    struct forward_job *j = calloc(1, sizeof(*j));
    size_t plen, mlen, blen, len;
    const char *path = api_req_target(r, &plen), *method = api_req_method(r, &mlen), *body = api_req_body(r, &blen);
    char hdr[2048];

    if (j == NULL)
        return NULL;
    j->a = a;
    snprintf(j->method, sizeof(j->method), "%.*s", (int)(mlen < 7 ? mlen : 7), method);
    if (asprintf(&j->url, "%s%.*s", primary_url, (int)plen, path) < 0)
        j->url = NULL;
    j->body = malloc(blen + 1);
    if (j->url == NULL || j->body == NULL) {
        forward_job_free(j);
        return NULL;
    }
    memcpy(j->body, body, blen);
    j->body_len = blen;
    for (const char *const *h = forwarded_headers; *h; h++) {
        const char *v = api_req_header(r, *h, &len);
        if (v != NULL) {
            snprintf(hdr, sizeof(hdr), "%s: %.*s", *h, (int)len, v);
            j->headers[j->nheaders++] = strdup(hdr);
        }
    }
    snprintf(hdr, sizeof(hdr), "shoal-forwarded-by: %s", a->cfg.node);
    j->headers[j->nheaders++] = strdup(hdr);
    if (api_req_header(r, "shoal-client-region", NULL) == NULL) {
        /* the client came to us: its writes count for our region */
        snprintf(hdr, sizeof(hdr), "shoal-client-region: %s", a->cfg.region);
        j->headers[j->nheaders++] = strdup(hdr);
    }
    return j;
}

static void forward(struct agent *a, struct api_req *r, const char *tenant, const char *primary_url)
{
    struct forward_job *j = make_forward_job(a, r, primary_url);
    if (j == NULL) {
        api_reply_errorf(r, API_ENOMEM, "out of memory");
        return;
    }
    j->pending = api_req_defer(r);
    (void)tenant;
    api_workq_submit(a->forwarders, atomic_fetch_add(&a->forward_seq, 1), forward_job, j);
}

static void reply_dp_error(struct api_req *r, const struct api_err *err)
{
    api_reply_resp(r, api_dp_error_resp(err));
}

struct await_job {
    struct forward_job *fwd; /* its url is the request's path until the primary is known */
    char tenant[API_NAME_MAX];
    int forwarded; /* another agent sent it here: only this node may serve it */
};

static int tenant_leased(void *ud, struct api_cluster *c)
{
    struct api_cluster_tenant t;
    return api_cluster_tenant_locked(c, ud, &t) && t.leased;
}

/* On a forwarder: wait for the tenant to appear with a primary, then hand
 * the request to it (this node included, over HTTP: the race is rare). */
static void await_tenant_job(void *arg)
{
    struct await_job *w = arg;
    struct forward_job *f = w->fwd;
    struct api_cluster_tenant t;
    struct api_err err;
    char *url = NULL;

    /* one created a moment ago may not have reached our etcd watch yet (--tenant-wait) */
    api_cluster_wait(f->a->view, w->tenant, tenant_leased, w->tenant, api_now_ms() + f->a->cfg.tenant_wait_ms);
    if (!api_cluster_tenant(f->a->view, w->tenant, &t)) {
        api_err_set(&err, API_ENOTENANT, "tenant '%s' does not exist", w->tenant);
        finish_error(f->pending, &err);
    } else if (!t.leased) {
        api_err_set(&err, API_EUNAVAILABLE, "tenant '%s' has no primary right now; retry shortly", w->tenant);
        api_pending_finish(f->pending, unserved_resp(&err));
    } else if (w->forwarded && strcmp(t.holder, f->a->cfg.node) != 0) {
        forwarded_twice_error(&err, w->tenant, f->a->cfg.node);
        finish_error(f->pending, &err);
    } else if (asprintf(&url, "%s%s", t.holder_url, f->url) < 0) {
        api_err_set(&err, API_ENOMEM, "out of memory");
        finish_error(f->pending, &err);
    } else {
        free(f->url);
        f->url = url;
        forward_job(f); /* frees it */
        f = NULL;
    }
    forward_job_free(f);
    free(w);
}

/* R names a tenant this agent's view does not have. The token is valid,
 * so it exists or is about to: wait a little for it (off the loop). A
 * request another agent forwarded here waits too: that agent saw the
 * tenant's lease held by this node before this node's own watch delivered
 * it (a tenant created a moment ago); it is served only if this node turns
 * out to hold it, so it is never forwarded twice. */
static void await_tenant(struct agent *a, struct api_req *r, const char *tenant)
{
    struct await_job *w;

    if ((w = calloc(1, sizeof(*w))) == NULL || (w->fwd = make_forward_job(a, r, "")) == NULL) {
        free(w);
        api_reply_errorf(r, API_ENOMEM, "out of memory");
        return;
    }
    snprintf(w->tenant, sizeof(w->tenant), "%s", tenant);
    w->forwarded = api_req_header(r, "shoal-forwarded-by", NULL) != NULL;
    w->fwd->pending = api_req_defer(r);
    api_workq_submit(a->forwarders, atomic_fetch_add(&a->forward_seq, 1), await_tenant_job, w);
}

static int header_is(struct api_req *r, const char *name, const char *want)
{
    size_t len;
    const char *v = api_req_header(r, name, &len);
    return v != NULL && len == strlen(want) && strncasecmp(v, want, len) == 0;
}

/* shoal-min-txid, else the __shoal_txid cookie: 0 when absent, -1 when the
 * header is malformed. */
static int requested_min_txid(struct api_req *r, uint64_t *out)
{
    size_t len;
    const char *v = api_req_header(r, "shoal-min-txid", &len);
    *out = 0;
    if (v != NULL)
        return agent_parse_hex16(v, len, out) == 0 ? 0 : -1;
    if ((v = api_req_header(r, "cookie", &len)) != NULL) {
        static const char name[] = "__shoal_txid=";
        const char *end = v + len;
        for (const char *p = v; p + sizeof(name) - 1 + 16 <= end; p++)
            if ((p == v || p[-1] == ' ' || p[-1] == ';') && memcmp(p, name, sizeof(name) - 1) == 0) {
                if (agent_parse_hex16(p + sizeof(name) - 1, 16, out) != 0)
                    *out = 0; /* a stale or foreign cookie is ignored */
                break;
            }
    }
    return 0;
}

static struct pipeline_job *new_pipeline_job(struct agent *a, struct api_req *r, const struct route_ctx *rc,
                                             const struct api_dp_auth *auth, int quorum)
{
    size_t blen, hlen, tlen;
    const char *body = api_req_body(r, &blen);
    const char *h = api_req_header(r, "authorization", &hlen), *tok = NULL;

    if (h == NULL || api_bearer_token(h, hlen, &tok, &tlen) != 0)
        tlen = 0;
    /* the job, then its body and token, in one allocation (one free) */
    struct pipeline_job *j = malloc(sizeof(*j) + blen + 1 + tlen + 1);
    if (j == NULL)
        return NULL;
    memset(j, 0, sizeof(*j));
    j->body = (char *)(j + 1);
    memcpy(j->body, body, blen);
    j->body[blen] = '\0';
    j->body_len = blen;
    j->token = j->body + blen + 1;
    memcpy(j->token, tok ? tok : "", tlen);
    j->token[tlen] = '\0';
    j->a = a;
    j->version = rc->version;
    j->cursor = rc->cursor;
    j->quorum = quorum;
    api_copy_text(j->tenant, sizeof(j->tenant), auth->tenant, strlen(auth->tenant));
    j->key = tenant_key(j->tenant);
    const char *cr = api_req_header(r, "shoal-client-region", &hlen);
    if (cr != NULL && hlen < sizeof(j->client_region) && api_region_valid(cr, hlen))
        api_copy_text(j->client_region, sizeof(j->client_region), cr, hlen);
    else
        api_copy_text(j->client_region, sizeof(j->client_region), a->cfg.region, strlen(a->cfg.region));
    return j;
}

/* ------------------------------------------------------------------ */
/* handover fence                                                      */

/* A request that arrived while its tenant was fenced: it runs here if the
 * handover aborts, or goes to the new primary if the lease moved. */
struct parked {
    struct parked *next;
    struct pipeline_job *pj;
    struct forward_job *fj; /* url holds only the path until the target is known */
    int64_t since;
};

#define PARKED_MAX_MS 10000

/* Loop thread, J deferred (its tenant led here): queues J on its tenant's
 * slot, or parks it if the tenant is fenced: it runs here if the handover
 * aborts, or goes to the new primary. The look and the queueing happen
 * under a->mu, as on_fence sets the fence and queues its job, so a request
 * is either ahead of the fence's job or parked, whichever event loop took
 * it. */
static void submit_write(struct agent *a, struct api_req *r, struct pipeline_job *j)
{
    struct parked *p = NULL;
    for (;;) {
        pthread_mutex_lock(&a->mu);
        struct local_tenant *lt = api_map_get(a->local, j->tenant);
        if (lt == NULL || lt->fenced_until == 0) {
            api_pending_soon(j->pending); /* a parked one may wait for seconds: no spin for it */
            api_workq_submit(a->workers, j->key, pipeline_job, j);
            pthread_mutex_unlock(&a->mu);
            if (p != NULL) {
                forward_job_free(p->fj);
                free(p);
            }
            return;
        }
        if (p != NULL) {
            p->next = lt->parked;
            lt->parked = p;
            pthread_mutex_unlock(&a->mu);
            return;
        }
        pthread_mutex_unlock(&a->mu);
        /* allocated outside the lock; then look again */
        if ((p = calloc(1, sizeof(*p))) == NULL || (p->fj = make_forward_job(a, r, "")) == NULL) {
            struct api_err err;
            free(p);
            api_err_set(&err, API_ENOMEM, "out of memory");
            finish_error(j->pending, &err);
            pipeline_job_free(j);
            return;
        }
        p->pj = j;
        p->since = api_now_ms();
        p->fj->pending = j->pending;
    }
}

/* Ends ID's fence and releases what it held: run here (RESUME_HERE), sent
 * to the primary at HOLDER_URL, or, with neither, failed with 503. Any
 * thread that does not hold a->mu. */
static void flush_parked(struct agent *a, const char *id, int resume_here, const char *holder_url)
{
    struct parked *list = NULL, *rev = NULL;
    struct local_tenant *lt;
    pthread_mutex_lock(&a->mu);
    if ((lt = api_map_get(a->local, id)) != NULL) {
        lt->fenced_until = 0;
        list = lt->parked;
        lt->parked = NULL;
    }
    pthread_mutex_unlock(&a->mu);
    while (list != NULL) { /* oldest first */
        struct parked *n = list->next;
        list->next = rev;
        rev = list;
        list = n;
    }
    for (struct parked *p = rev, *n; p != NULL; p = n) {
        n = p->next;
        if (resume_here) {
            forward_job_free(p->fj);
            api_workq_submit(a->workers, tenant_key(id), pipeline_job, p->pj);
        } else if (holder_url != NULL && holder_url[0]) {
            char *url = NULL;
            if (asprintf(&url, "%s%s", holder_url, p->fj->url) < 0)
                url = NULL;
            if (url != NULL) {
                free(p->fj->url);
                p->fj->url = url;
                api_workq_submit(a->forwarders, atomic_fetch_add(&a->forward_seq, 1), forward_job, p->fj);
            } else {
                struct api_err err;
                api_err_set(&err, API_ENOMEM, "out of memory");
                finish_error(p->fj->pending, &err);
                forward_job_free(p->fj);
            }
            pipeline_job_free(p->pj);
        } else {
            struct api_err err;
            api_err_set(&err, API_EUNAVAILABLE, "tenant '%s' is moving to another node; retry shortly", id);
            api_pending_finish(p->fj->pending, unserved_resp(&err));
            forward_job_free(p->fj);
            pipeline_job_free(p->pj);
        }
        free(p);
    }
}

static int internal_auth(struct agent *a, struct api_req *r)
{
    size_t len;
    const char *v = api_req_header(r, "authorization", &len);
    if (agent_repl_authorized(a->repl, v, len))
        return 1;
    api_reply_errorf(r, API_EUNAUTHORIZED, "internal endpoints need the cluster's internal token");
    return 0;
}

struct fence_job {
    struct agent *a;
    struct api_pending *pending;
    char tenant[API_NAME_MAX];
    int64_t asked_ms;
};

/* Runs after every request queued before the fence: the position now is final. */
static void fence_job(void *arg)
{
    struct fence_job *j = arg;
    struct agent_repl_pos pos;
    struct api_err err;
    struct api_resp *resp;
    char txid[17], ck[17];
    if (agent_repl_ensure(j->a->repl, j->tenant, AGENT_ROLE_PRIMARY, &err) != API_OK ||
        agent_repl_position(j->a->repl, j->tenant, &pos) != 0) {
        if (err.code == API_OK)
            api_err_set(&err, API_ENOTPRIMARY, "tenant '%s' is not loaded here", j->tenant);
        resp = api_resp_error(&err);
    } else {
        agent_hex16(pos.txid, txid);
        agent_hex16(pos.ck, ck);
        resp = api_resp_new(200);
        if (resp != NULL)
            api_resp_set_json(resp, 200, json_pack("{s:s,s:s,s:s}", "tenant", j->tenant, "txid", txid, "checksum", ck));
    }
    /* the wait is the writes queued ahead of the fence: part of a handover's stall */
    log_info("tenant fence took effect tenant=%s after_ms=%lld", j->tenant, (long long)(api_now_ms() - j->asked_ms));
    api_pending_finish(j->pending, resp);
    free(j);
}

/* POST /internal/tenants/{tenant}/fence {"ttl_ms"}: stop starting requests
 * for the tenant (they wait), answer with the final position. */
static void on_fence(struct api_req *r, void *ud)
{
    struct agent *a = ud;
    struct api_err err;
    size_t len;
    const char *tenant = api_req_param(r, "tenant", &len);
    json_t *body = NULL;
    if (!internal_auth(a, r))
        return;
    if (api_tenant_id_check(tenant, len, &err) != API_OK ||
        (api_req_body(r, &len), len > 0 && api_req_json_object(r, &body, &err) != API_OK)) {
        api_reply_error(r, &err);
        return;
    }
    json_int_t ttl = body ? json_integer_value(json_object_get(body, "ttl_ms")) : 0;
    json_decref(body);
    if (ttl <= 0 || ttl > 30000)
        ttl = 5000;
    struct fence_job *j = calloc(1, sizeof(*j));
    if (j == NULL) {
        api_reply_errorf(r, API_ENOMEM, "out of memory");
        return;
    }
    snprintf(j->tenant, sizeof(j->tenant), "%.*s", (int)strcspn(tenant, "/"), tenant);
    j->a = a;
    j->asked_ms = api_now_ms();
    char id[sizeof(j->tenant)];
    memcpy(id, j->tenant, sizeof(id));
    /* The fence and its job's place in the tenant's queue are set together
     * under a->mu, as submit_write checks for a fence and queues a request:
     * with several event loops, a write that found no fence is queued ahead
     * of this job (inside the position it reports) and any later one is
     * parked. */
    pthread_mutex_lock(&a->mu);
    struct local_tenant *lt = api_map_get(a->local, j->tenant);
    int holding = lt != NULL && lt->holding;
    if (holding) {
        lt->fenced_until = api_now_ms() + ttl;
        j->pending = api_req_defer(r);
        api_workq_submit(a->workers, tenant_key(j->tenant), fence_job, j);
    }
    pthread_mutex_unlock(&a->mu);
    if (!holding) {
        free(j);
        api_reply_errorf(r, API_ENOTPRIMARY, "node '%s' is not the primary of tenant '%s'", a->cfg.node, tenant);
        return;
    }
    log_info("tenant fenced for a handover tenant=%s ttl_ms=%lld", id, (long long)ttl);
}

/* DELETE /internal/tenants/{tenant}/fence: the handover aborted; resume. */
static void on_unfence(struct api_req *r, void *ud)
{
    struct agent *a = ud;
    struct api_err err;
    size_t len;
    char id[API_NAME_MAX];
    const char *tenant = api_req_param(r, "tenant", &len);
    if (!internal_auth(a, r))
        return;
    if (api_tenant_id_check(tenant, len, &err) != API_OK) {
        api_reply_error(r, &err);
        return;
    }
    snprintf(id, sizeof(id), "%.*s", (int)len, tenant);
    pthread_mutex_lock(&a->mu);
    struct local_tenant *lt = api_map_get(a->local, id);
    int holding = lt != NULL && lt->holding;
    pthread_mutex_unlock(&a->mu);
    flush_parked(a, id, holding, NULL);
    log_info("tenant fence lifted tenant=%s", id);
    api_reply_empty(r, 204);
}

struct fence_check {
    struct api_names expired;
};

static void collect_expired(void *ud, const char *key, void *value)
{
    struct local_tenant *lt = value;
    int64_t now = api_now_ms();
    if ((lt->fenced_until && now > lt->fenced_until) || (lt->parked && now - lt->parked->since > PARKED_MAX_MS))
        api_names_add(&((struct fence_check *)ud)->expired, key);
}

/* Controller, about once a second: a fence whose handover never finished
 * expires. Writes resume only if the lease is still ours in etcd (the
 * orchestrator may have moved it and died before we saw the change). */
static void expire_fences(struct agent *a)
{
    struct fence_check c = {0};
    pthread_mutex_lock(&a->mu);
    api_map_foreach(a->local, collect_expired, &c);
    pthread_mutex_unlock(&a->mu);
    for (size_t i = 0; i < c.expired.n; i++) {
        const char *id = c.expired.v[i];
        char key[256];
        struct api_etcd_kv kv;
        struct api_err err;
        int64_t epoch = 0;
        int found = 0;
        int holding = 0;
        pthread_mutex_lock(&a->mu);
        struct local_tenant *lt = api_map_get(a->local, id);
        if (lt != NULL) {
            holding = lt->holding;
            epoch = lt->epoch;
        }
        pthread_mutex_unlock(&a->mu);
        snprintf(key, sizeof(key), "%s%s", API_CLUSTER_LEASES, id);
        int asked = holding && api_etcd_get(a->etcd, key, &kv, &found, NULL, &err) == API_OK;
        int ours = asked && found && kv.mod_revision == epoch;
        if (asked && found)
            api_etcd_kv_fini(&kv);
        if (holding && !asked) {
            /* etcd cannot say: the fence stays, asked again next sweep;
             * only requests parked too long are answered (503) */
            pthread_mutex_lock(&a->mu);
            lt = api_map_get(a->local, id);
            int old = lt != NULL && lt->parked != NULL && api_now_ms() - lt->parked->since > PARKED_MAX_MS;
            pthread_mutex_unlock(&a->mu);
            if (old) {
                flush_parked(a, id, 0, NULL);
                pthread_mutex_lock(&a->mu);
                if ((lt = api_map_get(a->local, id)) != NULL)
                    lt->fenced_until = api_now_ms();
                pthread_mutex_unlock(&a->mu);
            }
            log_warn("handover fence expired tenant=%s; etcd unreachable (%s), still fenced", id, err.msg);
            continue;
        }
        log_warn("handover fence expired tenant=%s; %s", id, ours ? "resuming" : "the lease is not ours");
        flush_parked(a, id, ours, NULL);
        if (!ours) { /* whoever holds it now (or nobody): converge decides */
            pthread_mutex_lock(&a->mu);
            if ((lt = api_map_get(a->local, id)) != NULL)
                lt->holding = 0;
            mark_dirty_locked(a, id);
            pthread_mutex_unlock(&a->mu);
        }
    }
    api_names_free(&c.expired);
}

/* The tenant named in R's path, prefetched (hot.h): from here to SQLite
 * is checking the token and parsing the body, time for the tenant's
 * connection and statement to come into the CPU's cache. As yet unchecked:
 * a bad name only finds no entry. Returns the name (NULL: none). */
static const char *prefetch_named_tenant(struct agent *a, const struct api_req *r)
{
    size_t named_len;
    const char *named = api_req_param(r, "tenant", &named_len);
    if (named != NULL)
        agent_hot_prefetch(a->hot, api_hash_str(named, named_len));
    return named;
}

/* A pipeline request, its tenant's data prefetched (PREFETCHED: already,
 * by run_arrivals). */
static void handle_pipeline(struct api_req *r, struct route_ctx *rc, int prefetched)
{
    struct agent *a = rc->a;
    struct api_dp_auth auth;
    struct api_cluster_tenant t;
    struct api_err err;
    struct local_tenant *lt;
    struct pipeline_job *j;
    int serve_here = 0, replica_here = 0;
    uint64_t min_txid;
    size_t named_len;
    const char *named = prefetched ? api_req_param(r, "tenant", &named_len) : prefetch_named_tenant(a, r);

    if (api_dp_authorize(r, a->pk, a->cfg.tenant_domain, &auth, &err) != API_OK) {
        reply_dp_error(r, &err);
        return;
    }
    if (named == NULL) /* named by its host name, a header or its token */
        agent_hot_prefetch(a->hot, tenant_key(auth.tenant));
    /* Our own record first: a tenant this agent leads needs nothing from
     * the cluster view (a 1.5 KB copy and two lookups under its lock). Past
     * its TTL a fence still holds until expire_fences has checked etcd: only
     * a lease that is still ours may take writes again. */
    pthread_mutex_lock(&a->mu);
    lt = api_map_get(a->local, auth.tenant);
    serve_here = lt != NULL && lt->holding;
    int fenced = lt != NULL && lt->fenced_until != 0, quorum = lt != NULL && lt->quorum;
    int have_local = lt != NULL, ever_held = lt != NULL && lt->ever_held;
    pthread_mutex_unlock(&a->mu);
    if (!serve_here && !api_cluster_tenant(a->view, auth.tenant, &t)) {
        await_tenant(a, r, auth.tenant);
        return;
    }
    if (requested_min_txid(r, &min_txid) != 0) {
        api_err_set(&err, API_EINVAL, "shoal-min-txid must be 16 hex digits");
        reply_dp_error(r, &err);
        return;
    }
    int to_primary = header_is(r, "shoal-consistency", "primary");
    int leased_elsewhere = 0, adopting = 0;
    if (!serve_here) {
        replica_here = have_local && assigned_here(&t, a->cfg.node);
        leased_elsewhere = t.leased && strcmp(t.holder, a->cfg.node) != 0;
        quorum = strcmp(t.durability, "quorum") == 0;
        /* A tenant born leased to us whose record this request beat to our
         * controller: the converge that adopts the key runs first on the
         * tenant's worker, then the request, which looks again (recheck). */
        adopting = born_leased_here(a, &t, ever_held);
    }
    if (adopting) {
        if (submit_converge(a, auth.tenant) != 0) {
            api_reply_errorf(r, API_ENOMEM, "out of memory");
            return;
        }
        serve_here = 1;
    }

    if (serve_here || (replica_here && !to_primary && !rc->cursor)) {
        if ((j = new_pipeline_job(a, r, rc, &auth, quorum)) == NULL) {
            api_reply_errorf(r, API_ENOMEM, "out of memory");
            return;
        }
        /* ro tokens read only; and a primary that could have lost its
         * session stops writing but keeps serving reads. */
        j->read_only = auth.claims.access == API_ACCESS_RO || !agent_session_writable(a->session);
        if (!serve_here) {
            j->replica = 1;
            j->min_txid = min_txid;
            j->accept_replay = header_is(r, "shoal-accept-replay", "1");
            if (leased_elsewhere) {
                snprintf(j->holder, sizeof(j->holder), "%s", t.holder);
                if (api_req_header(r, "shoal-forwarded-by", NULL) == NULL &&
                    (j->fwd = make_forward_job(a, r, t.holder_url)) == NULL) {
                    pipeline_job_free(j);
                    api_reply_errorf(r, API_ENOMEM, "out of memory");
                    return;
                }
            }
        }
        j->recheck = adopting;
        j->pending = api_req_defer(r);
        /* a fenced tenant runs nothing, not even a read in place */
        if (!(serve_here && fenced) && queue_read_in_place(a, r, j, serve_here))
            return;
        submit_pipeline(a, r, j, serve_here);
        return;
    }
    if (!leased_elsewhere) {
        api_err_set(&err, API_EUNAVAILABLE, "tenant '%s' has no primary right now; retry shortly", auth.tenant);
        api_reply_resp(r, unserved_resp(&err));
        return;
    }
    if (header_is(r, "shoal-accept-replay", "1")) {
        struct api_resp *resp = api_resp_new(200);
        char v[128];
        snprintf(v, sizeof(v), "instance=%s", t.holder);
        if (resp != NULL) {
            api_resp_add_header(resp, "fly-replay", v);
            api_resp_set_body(resp, "application/json", "{}", 2);
        }
        atomic_fetch_add(&a->replays_sent, 1);
        api_reply_resp(r, resp);
        return;
    }
    if (api_req_header(r, "shoal-forwarded-by", NULL) != NULL) {
        forwarded_twice_error(&err, auth.tenant, a->cfg.node);
        reply_dp_error(r, &err);
        return;
    }
    forward(a, r, auth.tenant, t.holder_url);
}

/* Pipeline requests a loop read in its current turn, handled together at
 * the turn's end (run_arrivals). */
#define ARRIVALS_MAX 256
struct arrival {
    struct api_req *r;
    struct route_ctx *rc;
    struct api_dp_hint token;
};
static __thread struct arrival tl_arrivals[ARRIVALS_MAX];
static __thread size_t tl_narrivals;

/*
 * At the end of a loop's turn, the pipeline requests it read: first their
 * tenants' data (hot.h) and their token cache sets are asked for, then the
 * token cache slots those sets name, then each request is handled (and its
 * reads in place gathered for run_read_batch). Handled one at a time as
 * they arrived, each request's token check waited on a chain of cache
 * misses (set, slot, token: 3.6 us of a read's time over 1,000 tenants);
 * asked for together, the turn's requests' misses overlap.
 */
static void run_arrivals(void *arg)
{
    struct agent *a = arg;
    struct arrival batch[ARRIVALS_MAX];
    size_t n = tl_narrivals;

    memcpy(batch, tl_arrivals, n * sizeof(batch[0]));
    tl_narrivals = 0; /* what reaches us meanwhile is another turn's */
    for (size_t i = 0; i < n; i++) {
        prefetch_named_tenant(a, batch[i].r);
        api_dp_prefetch_set(batch[i].r, &batch[i].token);
    }
    for (size_t i = 0; i < n; i++)
        api_dp_prefetch_slot(&batch[i].token);
    for (size_t i = 0; i < n; i++)
        handle_pipeline(batch[i].r, batch[i].rc, 1);
}

static void on_pipeline(struct api_req *r, void *ud)
{
    struct route_ctx *rc = ud;
    struct agent *a = rc->a;

    /* with reads in place off there is nothing to gather for */
    if (a->cfg.inline_reads == 0 || tl_narrivals == ARRIVALS_MAX) {
        handle_pipeline(r, rc, 0);
        return;
    }
    tl_arrivals[tl_narrivals].r = r;
    tl_arrivals[tl_narrivals].rc = rc;
    tl_narrivals++;
    api_server_end_of_turn(r, run_arrivals, a);
}

static void on_version_probe(struct api_req *r, void *ud)
{
    size_t len;
    const char *v = api_req_param(r, "tenant", &len);
    struct api_err err;
    (void)ud;
    if (v != NULL && api_tenant_id_check(v, len, &err) != API_OK) {
        reply_dp_error(r, &err);
        return;
    }
    static const char msg[] = "Hello, this is HTTP API v2 (Hrana over HTTP)";
    api_reply_text(r, 200, "text/plain", msg, sizeof(msg) - 1);
}

static void on_protobuf_probe(struct api_req *r, void *ud)
{
    (void)ud;
    api_reply_errorf(r, API_ENOTFOUND, "the protobuf encoding is not served; use JSON");
}

static void on_tenant_status(struct api_req *r, void *ud)
{
    struct agent *a = ud;
    struct api_dp_auth auth;
    struct api_cluster_tenant t;
    struct api_err err;
    struct local_tenant *lt;
    struct agent_repl_pos pos;
    int holding = 0, assigned, have_pos, unhealthy = 0;
    int64_t epoch = 0;
    char path[4096], txid[17], ck[17];
    struct stat st;

    if (api_dp_authorize(r, a->pk, NULL, &auth, &err) != API_OK) {
        api_reply_error(r, &err);
        return;
    }
    assigned = api_cluster_tenant(a->view, auth.tenant, &t) && assigned_here(&t, a->cfg.node);
    pthread_mutex_lock(&a->mu);
    if ((lt = api_map_get(a->local, auth.tenant)) != NULL) {
        holding = lt->holding;
        epoch = lt->epoch;
        unhealthy = lt->unhealthy;
    }
    pthread_mutex_unlock(&a->mu);
    agent_store_path(a->store, auth.tenant, path, sizeof(path));
    int exists = stat(path, &st) == 0;
    json_int_t bytes = exists ? (json_int_t)st.st_size : 0;
    have_pos = agent_repl_position(a->repl, auth.tenant, &pos) == 0 && pos.loaded;
    const char *role = holding ? "primary" : assigned ? "replica" : "none";
    const char *state;
    if (unhealthy)
        state = "unhealthy";
    else if (holding)
        state = have_pos && pos.broken ? "broken" : "serving";
    else if (!assigned)
        state = "missing";
    else if (!exists && !have_pos)
        state = "bootstrapping"; /* no copy here yet, and not known to be new (unborn copies have a position) */
    else
        state = have_pos && pos.lag_ms > 0 ? "catching_up" : "following";
    json_t *doc = json_pack("{s:s,s:s,s:s,s:s,s:s,s:I,s:I}", "tenant", auth.tenant, "node", a->cfg.node, "region",
                            a->cfg.region, "role", role, "state", state, "epoch", (json_int_t)epoch, "bytes", bytes);
    if (have_pos) {
        agent_hex16(pos.txid, txid);
        agent_hex16(pos.ck, ck);
        json_object_set_new(doc, "txid", json_string(txid));
        json_object_set_new(doc, "checksum", json_string(ck));
        json_object_set_new(doc, "lag_ms", json_integer(holding ? 0 : pos.lag_ms));
        agent_hex16(pos.head_txid, txid);
        json_object_set_new(doc, "head_txid", json_string(txid));
        json_object_set_new(doc, "log_bytes", json_integer((json_int_t)pos.log_bytes));
        json_object_set_new(doc, "mismatches", json_integer((json_int_t)pos.mismatches));
        json_object_set_new(doc, "snapshots", json_integer((json_int_t)pos.snapshots));
        if (holding) {
            agent_hex16(pos.remote_durable, txid);
            json_object_set_new(doc, "replica_durable_txid", json_string(txid));
        }
    } else {
        json_object_set_new(doc, "txid", json_null());
        json_object_set_new(doc, "checksum", json_null());
        json_object_set_new(doc, "lag_ms", json_null());
    }
    api_reply_json(r, 200, doc);
}

static void count_holding(void *ud, const char *key, void *value)
{
    (void)key;
    if (((struct local_tenant *)value)->holding)
        (*(size_t *)ud)++;
}

static void on_healthz(struct api_req *r, void *ud)
{
    struct agent *a = ud;
    size_t tenants, primaries = 0;
    int ok = agent_session_writable(a->session);

    pthread_mutex_lock(&a->mu);
    tenants = api_map_len(a->local);
    api_map_foreach(a->local, count_holding, &primaries);
    pthread_mutex_unlock(&a->mu);
    json_t *lagging = json_array();
    size_t nlag = agent_repl_lagging(a->repl, lagging);
    api_reply_json(r, ok && nlag == 0 ? 200 : 503,
                   json_pack("{s:s,s:s,s:s,s:s,s:I,s:I,s:o,s:I}", "status", ok && nlag == 0 ? "ok" : "degraded",
                             "node", a->cfg.node, "region", a->cfg.region, "session", ok ? "ok" : "lost", "tenants",
                             (json_int_t)tenants, "primaries", (json_int_t)primaries, "lagging", lagging,
                             "max_lag_ms", (json_int_t)a->cfg.max_lag_ms));
}

static void on_metrics(struct api_req *r, void *ud)
{
    struct agent *a = ud;
    char buf[16384];
    size_t len = 0, tenants, primaries = 0;

    pthread_mutex_lock(&a->mu);
    tenants = api_map_len(a->local);
    api_map_foreach(a->local, count_holding, &primaries);
    pthread_mutex_unlock(&a->mu);
    api_server_metrics(a->server, "shoal_agent", buf, sizeof(buf), &len);
    unsigned long long pipelines = 0, in_place = 0;
    for (size_t i = 0; i < COUNT_SLOTS; i++) {
        pipelines += atomic_load_explicit(&a->counts[i].pipelines, memory_order_relaxed);
        in_place += atomic_load_explicit(&a->counts[i].reads_in_place, memory_order_relaxed);
    }
    int n = snprintf(buf + len, sizeof(buf) - len,
                     "# TYPE shoal_agent_tenants gauge\nshoal_agent_tenants %zu\n"
                     "# TYPE shoal_agent_primaries gauge\nshoal_agent_primaries %zu\n"
                     "# TYPE shoal_agent_pipelines_total counter\nshoal_agent_pipelines_total %llu\n"
                     "# TYPE shoal_agent_forwarded_total counter\nshoal_agent_forwarded_total %llu\n"
                     "# TYPE shoal_agent_replays_sent_total counter\nshoal_agent_replays_sent_total %llu\n"
                     "# TYPE shoal_agent_reads_in_place_total counter\nshoal_agent_reads_in_place_total %llu\n"
                     "# TYPE shoal_agent_reads_in_place_declined_total counter\n"
                     "shoal_agent_reads_in_place_declined_total %llu\n"
                     "# TYPE shoal_agent_lease_acquisitions_total counter\n"
                     "shoal_agent_lease_acquisitions_total %llu\n"
                     "# TYPE shoal_agent_lease_adoptions_total counter\n"
                     "shoal_agent_lease_adoptions_total %llu\n"
                     "# TYPE shoal_agent_session_writable gauge\nshoal_agent_session_writable %d\n",
                     tenants, primaries, (unsigned long long)pipelines,
                     (unsigned long long)atomic_load(&a->forwarded), (unsigned long long)atomic_load(&a->replays_sent),
                     (unsigned long long)in_place,
                     (unsigned long long)atomic_load(&a->reads_in_place_declined),
                     (unsigned long long)atomic_load(&a->lease_acquisitions),
                     (unsigned long long)atomic_load(&a->lease_adoptions), agent_session_writable(a->session));
    if (n > 0 && (size_t)n < sizeof(buf) - len)
        len += (size_t)n;
    struct agent_repl_stats rs;
    agent_repl_stats(a->repl, &rs);
    n = snprintf(buf + len, sizeof(buf) - len,
                 "# TYPE shoal_agent_repl_records_captured_total counter\n"
                 "shoal_agent_repl_records_captured_total %llu\n"
                 "# TYPE shoal_agent_repl_records_applied_total counter\nshoal_agent_repl_records_applied_total %llu\n"
                 "# TYPE shoal_agent_repl_bytes_sent_total counter\nshoal_agent_repl_bytes_sent_total %llu\n"
                 "# TYPE shoal_agent_repl_bytes_uncompressed_total counter\n"
                 "shoal_agent_repl_bytes_uncompressed_total %llu\n"
                 "# TYPE shoal_agent_repl_snapshots_sent_total counter\nshoal_agent_repl_snapshots_sent_total %llu\n"
                 "# TYPE shoal_agent_repl_snapshots_installed_total counter\n"
                 "shoal_agent_repl_snapshots_installed_total %llu\n"
                 "# TYPE shoal_agent_repl_checksum_mismatches_total counter\n"
                 "shoal_agent_repl_checksum_mismatches_total %llu\n"
                 "# TYPE shoal_agent_repl_pulls_total counter\nshoal_agent_repl_pulls_total %llu\n",
                 rs.records_captured, rs.records_applied, rs.bytes_sent, rs.bytes_raw, rs.snapshots_sent,
                 rs.snapshots_installed, rs.mismatches, rs.pulls);
    if (n > 0 && (size_t)n < sizeof(buf) - len)
        len += (size_t)n;
    /* commit on the primary to apply here, as a Prometheus histogram */
    n = snprintf(buf + len, sizeof(buf) - len, "# TYPE shoal_agent_repl_lag_seconds histogram\n");
    if (n > 0 && (size_t)n < sizeof(buf) - len)
        len += (size_t)n;
    unsigned long long cum = 0;
    for (size_t i = 0; i < AGENT_REPL_LAG_BUCKETS; i++) {
        cum += rs.lag_buckets[i];
        if (i + 1 < AGENT_REPL_LAG_BUCKETS)
            n = snprintf(buf + len, sizeof(buf) - len, "shoal_agent_repl_lag_seconds_bucket{le=\"%g\"} %llu\n",
                         (double)agent_repl_lag_bounds_us[i] / 1e6, cum);
        else
            n = snprintf(buf + len, sizeof(buf) - len,
                         "shoal_agent_repl_lag_seconds_bucket{le=\"+Inf\"} %llu\nshoal_agent_repl_lag_seconds_sum %g\n"
                         "shoal_agent_repl_lag_seconds_count %llu\n",
                         cum, (double)rs.lag_sum_us / 1e6, cum);
        if (n > 0 && (size_t)n < sizeof(buf) - len)
            len += (size_t)n;
    }
    /* per loaded tenant: its position and, on a replica, its lag (one
     * series per tenant the agent holds: a scrape of 10,000 tenants is
     * about a megabyte) */
    struct api_names ids = {0};
    pthread_mutex_lock(&a->mu);
    api_map_foreach(a->local, collect_key, &ids);
    pthread_mutex_unlock(&a->mu);
    size_t cap = len + 256 + ids.n * 256;
    char *out = malloc(cap);
    if (out == NULL) {
        api_names_free(&ids);
        api_reply_text(r, 200, "text/plain; version=0.0.4", buf, len);
        return;
    }
    memcpy(out, buf, len);
    n = snprintf(out + len, cap - len,
                 "# TYPE shoal_agent_tenant_txid gauge\n# TYPE shoal_agent_tenant_head_txid gauge\n"
                 "# TYPE shoal_agent_tenant_lag_seconds gauge\n");
    if (n > 0 && (size_t)n < cap - len)
        len += (size_t)n;
    for (size_t i = 0; i < ids.n; i++) {
        struct agent_repl_pos pos;
        if (agent_repl_position(a->repl, ids.v[i], &pos) != 0 || !pos.loaded)
            continue;
        const char *role = pos.role == AGENT_ROLE_PRIMARY ? "primary" : "replica";
        n = snprintf(out + len, cap - len,
                     "shoal_agent_tenant_txid{tenant=\"%s\",role=\"%s\"} %llu\n"
                     "shoal_agent_tenant_head_txid{tenant=\"%s\",role=\"%s\"} %llu\n"
                     "shoal_agent_tenant_lag_seconds{tenant=\"%s\",role=\"%s\"} %.3f\n",
                     ids.v[i], role, (unsigned long long)pos.txid, ids.v[i], role,
                     (unsigned long long)(pos.role == AGENT_ROLE_PRIMARY ? pos.txid : pos.head_txid), ids.v[i], role,
                     pos.role == AGENT_ROLE_PRIMARY ? 0.0 : (double)pos.lag_ms / 1000.0);
        if (n > 0 && (size_t)n < cap - len)
            len += (size_t)n;
    }
    api_names_free(&ids);
    api_reply_text(r, 200, "text/plain; version=0.0.4", out, len);
    free(out);
}

/* ------------------------------------------------------------------ */
/* lifecycle                                                           */

static int lock_data_dir(struct agent *a, struct api_err *err)
{
    char path[4096];
    int rc = api_mkdir_p(a->cfg.data_dir, err);
    if (rc != API_OK)
        return rc;
    snprintf(path, sizeof(path), "%s/LOCK", a->cfg.data_dir);
    a->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (a->lock_fd < 0)
        return api_err_set(err, API_EIO, "cannot open '%s': %s", path, strerror(errno));
    if (flock(a->lock_fd, LOCK_EX | LOCK_NB) != 0)
        return api_err_set(err, API_ECONFLICT, "data directory '%s' is in use by another shoal-agent",
                           a->cfg.data_dir);
    /* CLEAN exists only between a clean stop and the next start */
    snprintf(path, sizeof(path), "%s/CLEAN", a->cfg.data_dir);
    a->started_clean = unlink(path) == 0;
    return API_OK;
}

/* The token agents present to each other's /internal/repl endpoints: the
 * file given, else internal.token beside the cluster's public key. */
static int load_internal_token(struct agent *a, char **out, struct api_err *err)
{
    if (api_token_load_beside(a->cfg.internal_token, a->cfg.verify_key, "internal.token", out, err) != API_OK)
        return api_err_wrap(err, "internal token (--internal-token)");
    return API_OK;
}

static int add_routes(struct agent *a, struct api_err *err)
{
    static const char *const prefixes[] = {"/t/{tenant}", ""};
    char p[128];
    int rc = 0;

    for (size_t i = 0; i < 2; i++) {
        snprintf(p, sizeof(p), "%s/v2/pipeline", prefixes[i]);
        rc |= api_server_route(a->server, "POST", p, on_pipeline, &a->v2);
        snprintf(p, sizeof(p), "%s/v3/pipeline", prefixes[i]);
        rc |= api_server_route(a->server, "POST", p, on_pipeline, &a->v3);
        snprintf(p, sizeof(p), "%s/v3/cursor", prefixes[i]);
        rc |= api_server_route(a->server, "POST", p, on_pipeline, &a->cursor);
        snprintf(p, sizeof(p), "%s/v2", prefixes[i]);
        rc |= api_server_route(a->server, "GET", p, on_version_probe, a);
        snprintf(p, sizeof(p), "%s/v3", prefixes[i]);
        rc |= api_server_route(a->server, "GET", p, on_version_probe, a);
        snprintf(p, sizeof(p), "%s/v3-protobuf", prefixes[i]);
        rc |= api_server_route(a->server, NULL, p, on_protobuf_probe, a);
    }
    rc |= api_server_route(a->server, "GET", "/internal/tenants/{tenant}", on_tenant_status, a);
    rc |= api_server_route(a->server, "POST", "/internal/tenants/{tenant}/fence", on_fence, a);
    rc |= api_server_route(a->server, "DELETE", "/internal/tenants/{tenant}/fence", on_unfence, a);
    if (agent_repl_routes(a->repl, a->server, err) != API_OK)
        return API_ENOMEM;
    rc |= api_server_route(a->server, "GET", "/healthz", on_healthz, a);
    rc |= api_server_route(a->server, "GET", "/metrics", on_metrics, a);
    return rc ? api_err_set(err, API_ENOMEM, "registering routes: out of memory") : API_OK;
}

int agent_new(const struct agent_config *cfg, struct agent **out, struct api_err *err)
{
    /* aligned for its per-thread counters (struct request_counts) */
    struct agent *a = aligned_alloc(_Alignof(struct agent), (sizeof(struct agent) + 63) / 64 * 64);
    struct api_server_config scfg = {.listen = cfg->listen, .max_body = cfg->max_body, .cors = 1};
    struct agent_store_config stcfg = {.data_dir = cfg->data_dir, .cache_kib = cfg->cache_kib};
    char *itok = NULL;
    int rc;

    if (a == NULL)
        return api_err_set(err, API_ENOMEM, "out of memory");
    memset(a, 0, sizeof(*a));
    a->cfg = *cfg;
    a->lock_fd = -1;
    a->v2.a = a->v3.a = a->cursor.a = a;
    a->v2.version = 2;
    a->v3.version = 3;
    a->cursor.version = 3;
    a->cursor.cursor = 1;
    pthread_mutex_init(&a->mu, NULL);
    pthread_cond_init(&a->cv, NULL);
    a->local = api_map_new();
    a->dirty = api_map_new();
    stcfg.max_open = cfg->max_open;

    if ((rc = lock_data_dir(a, err)) != API_OK ||
        (rc = api_token_load_public(cfg->verify_key, a->pk, err)) != API_OK ||
        (rc = load_internal_token(a, &itok, err)) != API_OK ||
        (rc = agent_store_new(&stcfg, &a->store, err)) != API_OK ||
        (rc = api_workq_new(cfg->workers,
                            cfg->workers * AGENT_SLOTS_PER_WORKER > AGENT_SLOTS_MIN ? cfg->workers * AGENT_SLOTS_PER_WORKER
                                                                                     : AGENT_SLOTS_MIN,
                            worker_exit, &a->workers,
                            err)) != API_OK ||
        (rc = api_workq_new(cfg->workers, 0, worker_exit, &a->forwarders, err)) != API_OK)
        goto fail;
    /* A tenant's cached connection lives in its slot (store.c), so a few
     * threads can serve every tenant; capping the running ones near the
     * core count keeps a stream of short reads over many tenants from
     * waking a thread per request (workq.h). Forwarders wait on the network
     * and stay uncapped. */
    {
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        /* a millisecond: long enough that a burst of short jobs waits for
         * the running threads, short enough that a job blocking where no
         * api_workq_block_begin says so stalls other tenants only briefly */
        api_workq_set_active_cap(a->workers,
                                 cfg->active_workers > 0 ? cfg->active_workers : cores > 0 ? (size_t)cores : 1, 1000);
        api_workq_set_slot_exit(a->workers, agent_store_thread_exit);
        api_workq_set_spin(a->workers, spin_us(cfg->worker_spin_us, AGENT_WORKER_SPIN_US));
        api_workq_set_slot_exit(a->forwarders, agent_store_thread_exit);
    }
    {
        struct agent_repl_config rcfg;
        agent_repl_config_init(&rcfg);
        rcfg.node = cfg->node;
        rcfg.store = a->store;
        rcfg.workers = a->workers;
        rcfg.internal_token = itok;
        rcfg.verify_on_load = !a->started_clean;
        /* replication logs of idle tenants close too: as many open as databases */
        agent_log_set_max_open(cfg->max_open);
        if (cfg->log_keep_bytes)
            rcfg.log_keep_bytes = cfg->log_keep_bytes;
        if (cfg->max_lag_ms > 0)
            rcfg.max_lag_ms = cfg->max_lag_ms;
        if (cfg->quorum_timeout_ms > 0)
            rcfg.quorum_timeout_ms = cfg->quorum_timeout_ms;
        if (cfg->pull_wait_ms > 0)
            rcfg.pull_wait_ms = cfg->pull_wait_ms;
        rc = agent_repl_new(&rcfg, &a->repl, err);
        free(itok);
        itok = NULL;
        if (rc != API_OK)
            goto fail;
        agent_store_set_on_open(a->store, agent_repl_on_open, a->repl);
        agent_store_set_owned(a->store, agent_repl_owns_file, a->repl);
    }
    if ((rc = api_server_new(&scfg, &a->server, err)) != API_OK || (rc = add_routes(a, err)) != API_OK ||
        (rc = api_etcd_new(cfg->etcd, &a->etcd, err)) != API_OK)
        goto fail;
    api_server_set_loops(a->server, loops_wanted(cfg), loop_exit);
    api_server_set_spin(a->server, spin_us(cfg->loop_spin_us, AGENT_LOOP_SPIN_US));
    snprintf(a->url, sizeof(a->url), "%s", cfg->advertise_url ? cfg->advertise_url : api_server_url(a->server));
    {
        struct api_cluster_node n;
        memset(&n, 0, sizeof(n));
        snprintf(n.node, sizeof(n.node), "%s", cfg->node);
        snprintf(n.region, sizeof(n.region), "%s", cfg->region);
        snprintf(n.url, sizeof(n.url), "%s", a->url);
        n.started_at = api_unix_now();
        json_t *nj = api_cluster_node_json(&n);
        char *text = nj ? json_dumps(nj, JSON_COMPACT) : NULL;
        json_decref(nj);
        if (text == NULL) {
            rc = api_err_set(err, API_ENOMEM, "out of memory");
            goto fail;
        }
        rc = agent_session_new(a->etcd, cfg->node, a->url, text, cfg->lease_ttl_s, &a->session, err);
        free(text);
        if (rc != API_OK)
            goto fail;
    }
    a->hot = agent_hot_new(); /* NULL (OOM) only means no prefetching */
    if ((a->traffic = agent_traffic_new()) == NULL) {
        rc = api_err_set(err, API_ENOMEM, "out of memory");
        goto fail;
    }
    if ((rc = agent_streams_new(cfg->node, 1000, 10000, &a->streams, err)) != API_OK ||
        (rc = api_cluster_open(a->etcd, on_view_change, a, &a->view, err)) != API_OK)
        goto fail;
    a->dirty_all = 1; /* converge everything assigned here once at start */
    if (pthread_create(&a->controller, NULL, controller_main, a) != 0) {
        rc = api_err_set(err, API_EINTERNAL, "cannot start the controller thread");
        goto fail;
    }
    a->controller_started = 1;
    log_info("listening on %s node=%s region=%s data=%s loops=%zu", api_server_url(a->server), cfg->node,
             cfg->region, cfg->data_dir, loops_wanted(cfg));
    *out = a;
    return API_OK;
fail:
    free(itok);
    agent_free(a);
    return rc;
}

int agent_run(struct agent *a)
{
    return api_server_run(a->server);
}

void agent_stop(struct agent *a)
{
    api_server_stop(a->server);
}

void agent_free(struct agent *a)
{
    if (a == NULL)
        return;
    if (a->controller_started) {
        pthread_mutex_lock(&a->mu);
        a->stopping = 1;
        pthread_cond_signal(&a->cv);
        pthread_mutex_unlock(&a->mu);
        pthread_join(a->controller, NULL);
    }
    /* Pullers and the hub hand work to the workers: stop them first. */
    agent_repl_stop(a->repl);
    /* Workers next: queued converge jobs still read the cluster view. */
    api_workq_free(a->workers); /* finishes queued work; its replies reach the loop below */
    a->workers = NULL;
    api_workq_free(a->forwarders);
    agent_repl_free(a->repl); /* answers what is still held before the server goes */
    api_cluster_close(a->view);
    agent_streams_free(a->streams);
    agent_traffic_free(a->traffic);
    /* Revoking the session drops every tenant key this node holds in one
     * etcd revision, so successors can take over at once. */
    agent_session_free(a->session, 1);
    api_server_free(a->server);
    agent_store_free(a->store);
    agent_hot_free(a->hot);
    api_etcd_free(a->etcd);
    api_map_free(a->local, free);
    api_map_free(a->dirty, NULL);
    pthread_mutex_destroy(&a->mu);
    pthread_cond_destroy(&a->cv);
    if (a->lock_fd >= 0) {
        /* every connection is closed (WALs checkpointed): the next start
         * may trust the files without checksumming them */
        char path[4096];
        snprintf(path, sizeof(path), "%s/CLEAN", a->cfg.data_dir);
        int fd = a->workers == NULL && a->controller_started ? open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644) : -1;
        if (fd >= 0)
            close(fd);
        close(a->lock_fd);
    }
    free(a);
}
