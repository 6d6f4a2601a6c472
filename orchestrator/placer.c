/*
 * orchestrator/placer.c: the placement control loops, run by the leader.
 *
 * Traffic. Agents publish, once per interval, one etcd key each
 * (/shoal-stats/traffic/<node>) with the writes every tenant they lead took,
 * by the client's region. A watch adds every report into the tenant's
 * current slice: the window (--placement-window) is SLICES slices, and at
 * the end of every slice the leader asks placement/ (place_move_decide), for
 * each `auto` tenant that wrote in the whole window, whether to move its
 * primary nearer its writers. A sliding window means traffic that alternates
 * between regions faster than the window averages out instead of pulling
 * the primary to and fro. The write-weighted RTT must
 * gain more than the threshold, with enough writes to mean something, and no
 * sooner than --placement-dwell after the tenant's last move. A move is an
 * ordinary planned handover, to the tenant's instance in the chosen region;
 * only regions where the tenant already has a live replica are candidates
 * (a region without one would first need a replica copied there). `pinned`
 * tenants never move. The time of a tenant's last move lives in memory: a
 * new leader counts its own start as everyone's last move, which delays
 * moves by one dwell time and never hastens one.
 *
 * Repair. A node that stays gone longer than --repair-grace loses its
 * replicas: each tenant listing it as a replica gets a replacement node from
 * placement/ (place_replacement) in one etcd txn on the tenant record; the
 * new node's agent sees the record and bootstraps from a snapshot. A dead
 * primary is failover's business (failover.c); once a replica is promoted
 * the dead node is an ordinary lost replica and is replaced here.
 *
 * Both loops are idempotent: they read the current view, compare-and-swap
 * on the record, and a step that fails is simply tried at the next tick.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "api/log.h"
#include "api/map.h"
#include "orchestrator/orch_int.h"

#define TICK_MS 250
#define SLICES 4 /* a window is judged every quarter of it, on the last whole window */

struct orch_placer {
    struct orch *o;
    pthread_t thread;
    int started, stopping;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct api_etcd_watch *watch;
    size_t nregions;
    struct api_map *tally;   /* tenant -> uint64_t[SLICES][nregions]: writes per slice */
    size_t slice;            /* the slice reports go to now */
    struct api_map *moved;   /* tenant -> int64_t*: unix ms of its last move */
    struct api_map *seen;    /* node -> (void*)1: nodes known to have existed */
    struct api_map *missing; /* node -> int64_t[2]: unix ms first seen gone, next repair try */
    int64_t started_ms;
};

static int64_t unix_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ------------------------------------------------------------------ */
/* traffic reports (watch thread)                                      */

static void add_report(struct orch_placer *p, const char *value, size_t len)
{
    json_error_t jerr;
    json_t *doc = json_loadb(value, len, 0, &jerr), *tenants, *regions, *count;
    const char *tenant, *region;
    if (doc == NULL || !json_is_object(tenants = json_object_get(doc, "tenants"))) {
        log_warn("ignoring a bad traffic report");
        json_decref(doc);
        return;
    }
    pthread_mutex_lock(&p->mu);
    json_object_foreach(tenants, tenant, regions)
    {
        if (!json_is_object(regions))
            continue;
        uint64_t *w = api_map_get(p->tally, tenant);
        if (w == NULL) {
            int oom;
            if ((w = calloc(SLICES * p->nregions, sizeof(*w))) == NULL)
                break;
            api_map_put(p->tally, tenant, w, &oom);
            if (oom) {
                free(w);
                break;
            }
        }
        json_object_foreach(regions, region, count)
        {
            int r = place_region_index(p->o->regions, region);
            if (r >= 0 && json_is_integer(count) && json_integer_value(count) > 0)
                w[p->slice * p->nregions + (size_t)r] += (uint64_t)json_integer_value(count);
        }
    }
    pthread_mutex_unlock(&p->mu);
    json_decref(doc);
}

static void on_traffic(void *ud, const struct api_etcd_event *evs, size_t n, int64_t revision)
{
    (void)revision;
    for (size_t i = 0; i < n; i++)
        if (evs[i].type == API_ETCD_PUT)
            add_report(ud, evs[i].kv.value, evs[i].kv.value_len);
}

static void on_traffic_resync(void *ud, const struct api_etcd_kvs *kvs)
{
    (void)ud;
    (void)kvs; /* reports missed while compacted away are lost: placement is a heuristic */
}

/* ------------------------------------------------------------------ */
/* moving primaries                                                    */

static int64_t *ms_slot(struct api_map *m, const char *key)
{
    int64_t *v = api_map_get(m, key);
    int oom;
    if (v == NULL && (v = calloc(1, sizeof(*v))) != NULL) {
        api_map_put(m, key, v, &oom);
        if (oom) {
            free(v);
            v = NULL;
        }
    }
    return v;
}

/* Decides for one tenant that wrote W[] this window; starts a handover when
 * placement says move. */
static void consider(struct orch_placer *p, const char *id, const uint64_t *w)
{
    struct orch *o = p->o;
    struct api_cluster_tenant t;
    struct api_cluster_node n;
    unsigned char room[PLACE_MAX_REGIONS] = {0};
    const char *in_region[PLACE_MAX_REGIONS] = {0};
    struct place_move mv;

    if (!api_cluster_tenant(o->view, id, &t) || strcmp(t.placement, "auto") != 0 || !t.leased ||
        strcmp(t.holder, t.primary) != 0 || orch_op_running(o, id))
        return;
    int current = api_cluster_node(o->view, t.holder, &n) ? place_region_index(o->regions, n.region) : -1;
    if (current < 0)
        return;
    for (size_t i = 0; i < t.nnodes; i++) {
        int r;
        if (strcmp(t.nodes[i], t.holder) == 0 || !api_cluster_node(o->view, t.nodes[i], &n) ||
            (r = place_region_index(o->regions, n.region)) < 0)
            continue;
        room[r] = 1;
        if (in_region[r] == NULL)
            in_region[r] = t.nodes[i];
    }
    pthread_mutex_lock(&p->mu);
    int64_t *last = ms_slot(p->moved, id);
    int64_t last_ms = last ? *last : 0;
    pthread_mutex_unlock(&p->mu);
    if (last_ms < p->started_ms)
        last_ms = p->started_ms;
    if (last_ms < t.created_at * 1000)
        last_ms = t.created_at * 1000;
    struct place_move_facts facts = {.current = current, .writes = w, .room = room, .nregions = p->nregions,
                                     .last_move_ms = (uint64_t)last_ms, .now_ms = (uint64_t)unix_ms()};
    struct place_move_policy policy = {.min_gain_permille = o->cfg.placement_threshold_permille,
                                       .min_writes = o->cfg.placement_min_writes,
                                       .min_dwell_ms = (uint64_t)o->cfg.placement_dwell_ms};
    int rc = place_move_decide(o->regions, &facts, &policy, &mv);
    if (rc != PLACE_OK) {
        log_warn("placement tenant=%s: %s", id, place_status_str(rc));
        return;
    }
    if (!mv.move) {
        log_debug("placement tenant=%s stays in %s (%s): %.1f ms per write, best %s %.1f ms", id,
                  place_region_code(o->regions, (size_t)current), place_move_reason_str(mv.reason), mv.current_ms,
                  place_region_code(o->regions, (size_t)mv.best), mv.best_ms);
        return;
    }
    const char *to = in_region[mv.region];
    char why[256], op_id[40];
    snprintf(why, sizeof(why), "%llu writes in the window: %.1f ms per write from %s, %.1f ms from %s",
             (unsigned long long)mv.writes, mv.current_ms, place_region_code(o->regions, (size_t)current), mv.best_ms,
             place_region_code(o->regions, (size_t)mv.region));
    if (to == NULL || orch_handover_begin(o, id, t.holder, to, "placement", why, op_id) != 0)
        return;
    pthread_mutex_lock(&p->mu);
    if ((last = ms_slot(p->moved, id)) != NULL)
        *last = unix_ms(); /* also when the handover fails: no retry storm */
    pthread_mutex_unlock(&p->mu);
    atomic_fetch_add(&o->placement_moves, 1);
    log_info("placement moves tenant=%s from=%s to=%s op=%s: %s", id, t.holder, to, op_id, why);
}

struct window_sums {
    struct orch_placer *p;
    size_t next;             /* the slice about to start (cleared) */
    struct api_names ids;    /* tenants that wrote in the window */
    uint64_t *sums;          /* ids.n rows of nregions */
    size_t cap;
    struct api_names idle;   /* tenants without a write in the window: dropped */
};

/* Under p->mu: sums the window of one tenant, then clears the slice that
 * starts next. */
static void sum_tenant(void *ud, const char *key, void *value)
{
    struct window_sums *ws = ud;
    size_t nr = ws->p->nregions;
    uint64_t *w = value, total = 0;
    if (ws->ids.n == ws->cap) {
        size_t cap = ws->cap ? ws->cap * 2 : 64;
        uint64_t *s = realloc(ws->sums, cap * nr * sizeof(*s));
        if (s == NULL)
            return;
        ws->sums = s;
        ws->cap = cap;
    }
    uint64_t *row = ws->sums + ws->ids.n * nr;
    for (size_t r = 0; r < nr; r++) {
        row[r] = 0;
        for (size_t k = 0; k < SLICES; k++)
            row[r] += w[k * nr + r];
        total += row[r];
    }
    memset(w + ws->next * nr, 0, nr * sizeof(*w));
    if (total > 0)
        api_names_add(&ws->ids, key);
    else
        api_names_add(&ws->idle, key);
}

/* A slice ended: decide for every tenant that wrote in the last window. */
static void end_slice(struct orch_placer *p)
{
    struct window_sums ws = {.p = p};
    pthread_mutex_lock(&p->mu);
    ws.next = (p->slice + 1) % SLICES;
    api_map_foreach(p->tally, sum_tenant, &ws);
    for (size_t i = 0; i < ws.idle.n; i++)
        free(api_map_del(p->tally, ws.idle.v[i]));
    p->slice = ws.next;
    pthread_mutex_unlock(&p->mu);
    if (orch_is_leader(p->o))
        for (size_t i = 0; i < ws.ids.n; i++)
            consider(p, ws.ids.v[i], ws.sums + i * p->nregions);
    api_names_free(&ws.ids);
    api_names_free(&ws.idle);
    free(ws.sums);
}

/* ------------------------------------------------------------------ */
/* repairing lost replicas                                             */

/* Replaces LOST among TENANT's replicas with a node placement picks, in one
 * txn on the record. Returns 1 if LOST no longer needs replacing for this
 * tenant (done, or not applicable), 0 to try again later. */
static int repair_tenant(struct orch_placer *p, const char *id, const char *lost)
{
    struct orch *o = p->o;
    char key[256];
    struct api_etcd_kv kv;
    struct api_cluster_tenant rec;
    struct api_cluster_node *live = NULL;
    struct place_node *pn = NULL;
    struct api_err err;
    int found = 0, done = 0;

    snprintf(key, sizeof(key), "%s%s", API_CLUSTER_TENANTS, id);
    if (api_etcd_get(o->etcd, key, &kv, &found, NULL, &err) != API_OK)
        return 0;
    if (!found)
        return 1;
    int64_t mod = kv.mod_revision;
    int rc = api_cluster_tenant_record_parse(kv.value, kv.value_len, &rec, &err);
    api_etcd_kv_fini(&kv);
    if (rc != API_OK)
        return 1;
    if (strcmp(rec.primary, lost) == 0)
        return 0; /* failover first */
    size_t nl = api_cluster_nodes(o->view, &live);
    /* nodes: the live ones, then the tenant's instances that are gone */
    if ((pn = calloc(nl + rec.nnodes, sizeof(*pn))) == NULL)
        goto out;
    size_t nn = 0, inst[API_CLUSTER_MAX_INSTANCES], lost_i = SIZE_MAX;
    for (size_t i = 0; i < nl; i++, nn++) {
        pn[nn].name = live[i].node;
        pn[nn].region = place_region_index(o->regions, live[i].region);
        pn[nn].healthy = pn[nn].region >= 0;
        api_cluster_node_load(o->view, live[i].node, &pn[nn].tenants, &pn[nn].primaries);
    }
    for (size_t k = 0; k < rec.nnodes; k++) {
        size_t i = 0;
        while (i < nn && strcmp(pn[i].name, rec.nodes[k]) != 0)
            i++;
        if (i == nn) {
            pn[nn].name = rec.nodes[k];
            pn[nn].region = -1;
            pn[nn].healthy = 0;
            nn++;
        }
        inst[k] = i;
        if (strcmp(rec.nodes[k], lost) == 0)
            lost_i = i;
    }
    if (lost_i == SIZE_MAX || lost_i < nl) { /* not listed any more, or back alive */
        done = 1;
        goto out;
    }
    struct place_decision cur = {0};
    for (size_t k = 0; k < rec.nnodes; k++) {
        if (strcmp(rec.nodes[k], rec.primary) == 0)
            cur.primary = inst[k];
        else if (cur.nreplicas < sizeof(cur.replicas) / sizeof(cur.replicas[0]))
            cur.replicas[cur.nreplicas++] = inst[k];
    }
    size_t pick;
    rc = place_replacement(o->regions, pn, nn, &cur, lost_i, &pick);
    if (rc != PLACE_OK) {
        log_warn("repair tenant=%s: no replacement for lost node %s: %s", id, lost, place_status_str(rc));
        goto out;
    }
    char chosen[API_NAME_MAX];
    snprintf(chosen, sizeof(chosen), "%s", pn[pick].name);
    for (size_t k = 0; k < rec.nnodes; k++)
        if (strcmp(rec.nodes[k], lost) == 0)
            snprintf(rec.nodes[k], API_NAME_MAX, "%s", chosen);
    rec.generation++;
    json_t *doc = api_cluster_tenant_record_json(&rec);
    char *text = doc ? json_dumps(doc, JSON_COMPACT) : NULL;
    json_decref(doc);
    if (text == NULL)
        goto out;
    struct api_etcd_cmp cmp = {.key = key, .target = API_ETCD_MOD, .result = API_ETCD_EQUAL, .number = mod};
    struct api_etcd_op put = {.kind = API_ETCD_OP_PUT, .key = key, .value = text, .value_len = strlen(text)};
    struct api_etcd_txn_result res;
    if (api_etcd_txn(o->etcd, &cmp, 1, &put, 1, NULL, 0, &res, &err) == API_OK) {
        done = res.succeeded;
        api_etcd_txn_result_fini(&res);
        if (done) {
            atomic_fetch_add(&o->repairs, 1);
            log_info("repair tenant=%s: replica on lost node %s replaced by %s", id, lost, chosen);
        }
    }
    free(text);
out:
    free(pn);
    free(live);
    return done;
}

struct name_ctx {
    struct api_names names;
};

static void collect_name(void *ud, const char *key, void *value)
{
    (void)value;
    api_names_add(&((struct name_ctx *)ud)->names, key);
}

/* Notes which nodes are gone since when; replaces the replicas of those gone
 * longer than the grace period. */
static void repair_tick(struct orch_placer *p)
{
    struct orch *o = p->o;
    struct api_cluster_node *live = NULL;
    struct name_ctx seen = {0};
    size_t nl = api_cluster_nodes(o->view, &live);
    int64_t now = unix_ms();
    int oom;

    pthread_mutex_lock(&p->mu);
    for (size_t i = 0; i < nl; i++) {
        if (api_map_get(p->seen, live[i].node) == NULL)
            api_map_put(p->seen, live[i].node, (void *)1, &oom);
        free(api_map_del(p->missing, live[i].node));
    }
    api_map_foreach(p->seen, collect_name, &seen);
    pthread_mutex_unlock(&p->mu);
    free(live);

    for (size_t i = 0; i < seen.names.n; i++) {
        const char *node = seen.names.v[i];
        struct api_cluster_node n;
        if (api_cluster_node(o->view, node, &n))
            continue;
        pthread_mutex_lock(&p->mu);
        int64_t *since = api_map_get(p->missing, node);
        if (since == NULL && (since = calloc(2, sizeof(*since))) != NULL) {
            api_map_put(p->missing, node, since, &oom);
            if (oom) {
                free(since);
                since = NULL;
                pthread_mutex_unlock(&p->mu);
                continue;
            }
            since[0] = now;
            since[1] = now + o->cfg.repair_grace_ms;
            log_info("node %s is gone; its replicas are replaced if it stays gone %lld ms", node,
                     (long long)o->cfg.repair_grace_ms);
        }
        int due = since != NULL && now >= since[1];
        if (due)
            since[1] = now + 5000; /* what cannot be repaired now is tried again in 5 s, not every tick */
        pthread_mutex_unlock(&p->mu);
        if (!due || !orch_is_leader(o))
            continue;
        /* every tenant that lists the node */
        struct api_cluster_tenant *page;
        int more, left = 0;
        size_t nt = api_cluster_tenant_page(o->view, NULL, 1u << 30, NULL, &page, &more);
        for (size_t k = 0; k < nt; k++)
            for (size_t m = 0; m < page[k].nnodes; m++)
                if (strcmp(page[k].nodes[m], node) == 0 && !repair_tenant(p, page[k].id, node))
                    left++;
        free(page);
        if (left == 0) { /* nothing refers to it any more: forget it */
            pthread_mutex_lock(&p->mu);
            free(api_map_del(p->missing, node));
            api_map_del(p->seen, node);
            pthread_mutex_unlock(&p->mu);
        }
    }
    api_names_free(&seen.names);
}

/* Nodes that tenant records name count as having existed, so a node that was
 * gone before this orchestrator started is repaired too. */
static void seed_seen(struct orch_placer *p)
{
    struct api_cluster_tenant *page;
    int more, oom;
    size_t nt = api_cluster_tenant_page(p->o->view, NULL, 1u << 30, NULL, &page, &more);
    pthread_mutex_lock(&p->mu);
    for (size_t k = 0; k < nt; k++)
        for (size_t m = 0; m < page[k].nnodes; m++)
            if (api_map_get(p->seen, page[k].nodes[m]) == NULL)
                api_map_put(p->seen, page[k].nodes[m], (void *)1, &oom);
    pthread_mutex_unlock(&p->mu);
    free(page);
}

/* ------------------------------------------------------------------ */
/* the loop                                                            */

static void *placer_main(void *arg)
{
    struct orch_placer *p = arg;
    int64_t slice_ms = p->o->cfg.placement_window_ms / SLICES;
    int64_t next_slice = api_now_ms() + slice_ms;
    seed_seen(p);
    pthread_mutex_lock(&p->mu);
    while (!p->stopping) {
        struct timespec ts;
        api_deadline_after_ms(&ts, TICK_MS);
        pthread_cond_timedwait(&p->cv, &p->mu, &ts);
        if (p->stopping)
            break;
        pthread_mutex_unlock(&p->mu);
        if (api_now_ms() >= next_slice) {
            next_slice = api_now_ms() + slice_ms;
            end_slice(p);
        }
        repair_tick(p);
        pthread_mutex_lock(&p->mu);
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

int orch_placer_start(struct orch *o, struct orch_placer **out, struct api_err *err)
{
    struct orch_placer *p = calloc(1, sizeof(*p));
    int rc;
    if (p == NULL || (p->tally = api_map_new()) == NULL || (p->moved = api_map_new()) == NULL ||
        (p->seen = api_map_new()) == NULL || (p->missing = api_map_new()) == NULL) {
        if (p) {
            api_map_free(p->tally, free);
            api_map_free(p->moved, free);
            api_map_free(p->seen, NULL);
        }
        free(p);
        return api_err_set(err, API_ENOMEM, "out of memory");
    }
    p->o = o;
    p->nregions = place_regions_count(o->regions);
    p->started_ms = unix_ms();
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    if ((rc = api_etcd_watch_start(o->etcd, API_CLUSTER_TRAFFIC, api_cluster_revision(o->view) + 1, on_traffic,
                                   on_traffic_resync, p, &p->watch, err)) != API_OK) {
        orch_placer_stop(p);
        return rc;
    }
    if (pthread_create(&p->thread, NULL, placer_main, p) != 0) {
        orch_placer_stop(p);
        return api_err_set(err, API_EINTERNAL, "cannot start the placement thread");
    }
    p->started = 1;
    *out = p;
    return API_OK;
}

void orch_placer_stop(struct orch_placer *p)
{
    if (p == NULL)
        return;
    api_etcd_watch_stop(p->watch);
    if (p->started) {
        pthread_mutex_lock(&p->mu);
        p->stopping = 1;
        pthread_cond_signal(&p->cv);
        pthread_mutex_unlock(&p->mu);
        pthread_join(p->thread, NULL);
    }
    api_map_free(p->tally, free);
    api_map_free(p->moved, free);
    api_map_free(p->seen, NULL);
    api_map_free(p->missing, free);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    free(p);
}
