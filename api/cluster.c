/*
 * api/cluster.c: the watched view of /shoal/ (see cluster.h).
 *
 * The view is rebuilt from one range read and then kept current by one
 * watch; a compaction resync replaces it wholesale. Per-node instance and
 * primary counts are kept incrementally so placement never scans tenants.
 * Leases may arrive for tenants whose record is gone (deleted tenant, lease
 * not yet expired): they are kept apart in `leases` so the record and lease
 * can come and go in either order.
 */
#include "api/cluster.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "api/log.h"
#include "api/map.h"
#include "api/names.h"
#include "api/workq.h"

struct lease {
    char holder[API_NAME_MAX];
    char url[API_URL_MAX];
    int64_t epoch;
    int64_t lease_id;
    int64_t create_revision;
};

struct load {
    uint32_t tenants;
    uint32_t primaries;
};

/* A thread in api_cluster_wait: woken only by changes to its tenant (or a
 * resync), so a burst of creates does not wake every waiting create for
 * every event. */
struct waiter {
    const char *id;
    pthread_cond_t cv;
    int woken;
    struct waiter *next;
};

struct api_cluster {
    struct api_etcd *etcd;
    struct api_etcd_watch *watch;
    api_cluster_fn on_change;
    void *ud;
    pthread_mutex_t mu;
    struct waiter *waiters;
    struct api_map *nodes;   /* name -> struct api_cluster_node* */
    struct api_map *tenants; /* id -> struct api_cluster_tenant* (lease fields unused) */
    struct api_map *leases;  /* id -> struct lease* */
    struct api_map *loads;   /* node -> struct load* */
    int64_t revision;
};

int64_t api_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void api_deadline_after_ms(struct timespec *ts, int64_t ms)
{
    clock_gettime(CLOCK_REALTIME, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

int64_t api_unix_now(void)
{
    return (int64_t)time(NULL);
}

/* ------------------------------------------------------------------ */
/* encoding                                                           */

json_t *api_cluster_tenant_record_json(const struct api_cluster_tenant *t)
{
    json_t *nodes = json_array();
    for (size_t i = 0; i < t->nnodes; i++)
        json_array_append_new(nodes, json_string(t->nodes[i]));
    json_t *doc = json_pack("{s:s,s:s,s:s,s:s,s:i,s:s,s:o,s:I,s:I}", "id", t->id, "region", t->region, "placement",
                            t->placement, "durability", t->durability, "replicas", t->replicas, "primary", t->primary,
                            "nodes", nodes, "generation", (json_int_t)t->generation, "created_at",
                            (json_int_t)t->created_at);
    if (doc != NULL && t->failover_at > 0)
        json_object_set_new(doc, "failover", json_pack("{s:I,s:s,s:I}", "at", (json_int_t)t->failover_at, "from",
                                                       t->failover_from, "lost_txids",
                                                       (json_int_t)t->failover_lost_txids));
    return doc;
}

static int copy_str(char *dst, size_t cap, json_t *v)
{
    const char *s = json_string_value(v);
    if (s == NULL || strlen(s) >= cap)
        return -1;
    strcpy(dst, s);
    return 0;
}

int api_cluster_tenant_record_parse(const char *json, size_t len, struct api_cluster_tenant *out, struct api_err *err)
{
    json_error_t jerr;
    json_t *doc = json_loadb(json, len, 0, &jerr), *nodes;
    struct api_cluster_tenant t;

    memset(&t, 0, sizeof(t));
    if (doc == NULL)
        return api_err_set(err, API_EBADJSON, "tenant record is not JSON: %s", jerr.text);
    if (copy_str(t.id, sizeof(t.id), json_object_get(doc, "id")) != 0 ||
        copy_str(t.region, sizeof(t.region), json_object_get(doc, "region")) != 0 ||
        copy_str(t.placement, sizeof(t.placement), json_object_get(doc, "placement")) != 0 ||
        copy_str(t.durability, sizeof(t.durability), json_object_get(doc, "durability")) != 0 ||
        copy_str(t.primary, sizeof(t.primary), json_object_get(doc, "primary")) != 0 ||
        !json_is_array(nodes = json_object_get(doc, "nodes")) ||
        json_array_size(nodes) > API_CLUSTER_MAX_INSTANCES) {
        json_decref(doc);
        return api_err_set(err, API_EBADJSON, "tenant record has missing or bad fields");
    }
    for (size_t i = 0; i < json_array_size(nodes); i++) {
        if (copy_str(t.nodes[i], sizeof(t.nodes[i]), json_array_get(nodes, i)) != 0) {
            json_decref(doc);
            return api_err_set(err, API_EBADJSON, "tenant record has a bad node name");
        }
    }
    t.nnodes = json_array_size(nodes);
    t.replicas = (int)json_integer_value(json_object_get(doc, "replicas"));
    t.generation = json_integer_value(json_object_get(doc, "generation"));
    t.created_at = json_integer_value(json_object_get(doc, "created_at"));
    json_t *fo = json_object_get(doc, "failover");
    if (json_is_object(fo)) {
        t.failover_at = json_integer_value(json_object_get(fo, "at"));
        t.failover_lost_txids = json_integer_value(json_object_get(fo, "lost_txids"));
        copy_str(t.failover_from, sizeof(t.failover_from), json_object_get(fo, "from"));
    }
    json_decref(doc);
    *out = t;
    return API_OK;
}

json_t *api_cluster_node_json(const struct api_cluster_node *n)
{
    return json_pack("{s:s,s:s,s:s,s:I}", "node", n->node, "region", n->region, "url", n->url, "started_at",
                     (json_int_t)n->started_at);
}

char *api_cluster_lease_value(const char *node, const char *url)
{
    json_t *v = json_pack("{s:s,s:s}", "holder", node, "url", url);
    char *text = v ? json_dumps(v, JSON_COMPACT) : NULL;
    json_decref(v);
    return text;
}

static int node_parse(const char *json, size_t len, struct api_cluster_node *out)
{
    json_t *doc = json_loadb(json, len, 0, NULL);
    int rc = -1;

    memset(out, 0, sizeof(*out));
    if (doc != NULL && copy_str(out->node, sizeof(out->node), json_object_get(doc, "node")) == 0 &&
        copy_str(out->region, sizeof(out->region), json_object_get(doc, "region")) == 0 &&
        copy_str(out->url, sizeof(out->url), json_object_get(doc, "url")) == 0) {
        out->started_at = json_integer_value(json_object_get(doc, "started_at"));
        rc = 0;
    }
    json_decref(doc);
    return rc;
}

static int lease_parse(const char *json, size_t len, struct lease *out)
{
    json_t *doc = json_loadb(json, len, 0, NULL);
    int rc = -1;

    memset(out, 0, sizeof(*out));
    if (doc != NULL && copy_str(out->holder, sizeof(out->holder), json_object_get(doc, "holder")) == 0 &&
        copy_str(out->url, sizeof(out->url), json_object_get(doc, "url")) == 0)
        rc = 0;
    json_decref(doc);
    return rc;
}

/* ------------------------------------------------------------------ */
/* applying changes (mutex held)                                      */

static struct load *load_of(struct api_cluster *c, const char *node)
{
    struct load *l = api_map_get(c->loads, node);
    if (l == NULL && (l = calloc(1, sizeof(*l))) != NULL) {
        int oom;
        api_map_put(c->loads, node, l, &oom);
        if (oom) {
            free(l);
            return NULL;
        }
    }
    return l;
}

static void count_tenant(struct api_cluster *c, const struct api_cluster_tenant *t, int delta)
{
    for (size_t i = 0; i < t->nnodes; i++) {
        struct load *l = load_of(c, t->nodes[i]);
        if (l == NULL)
            continue;
        l->tenants += (uint32_t)delta;
        if (strcmp(t->nodes[i], t->primary) == 0)
            l->primaries += (uint32_t)delta;
    }
}

/* Applies one key (put or delete) to the view; sets *KIND and ID for the
 * change callback. Returns 0 if the key is not one of ours. */
static int apply_kv(struct api_cluster *c, int deleted, const struct api_etcd_kv *kv, enum api_cluster_change *kind,
                    char *id, size_t idcap)
{
    const char *k = kv->key;
    int oom;

    if (strncmp(k, API_CLUSTER_NODES, strlen(API_CLUSTER_NODES)) == 0) {
        const char *name = k + strlen(API_CLUSTER_NODES);
        *kind = API_CLUSTER_NODE;
        snprintf(id, idcap, "%s", name);
        free(api_map_del(c->nodes, name));
        if (!deleted) {
            struct api_cluster_node *n = malloc(sizeof(*n));
            if (n == NULL || node_parse(kv->value, kv->value_len, n) != 0) {
                free(n);
                log_warn("ignoring bad node record key=%s", k);
                return 1;
            }
            n->lease = kv->lease;
            api_map_put(c->nodes, name, n, &oom);
            if (oom)
                free(n);
        }
        return 1;
    }
    if (strncmp(k, API_CLUSTER_TENANTS, strlen(API_CLUSTER_TENANTS)) == 0) {
        const char *tid = k + strlen(API_CLUSTER_TENANTS);
        struct api_cluster_tenant *old = api_map_del(c->tenants, tid);
        *kind = API_CLUSTER_TENANT;
        snprintf(id, idcap, "%s", tid);
        if (old != NULL) {
            count_tenant(c, old, -1);
            free(old);
        }
        if (!deleted) {
            struct api_cluster_tenant *t = malloc(sizeof(*t));
            struct api_err err;
            if (t == NULL || api_cluster_tenant_record_parse(kv->value, kv->value_len, t, &err) != API_OK) {
                free(t);
                log_warn("ignoring bad tenant record key=%s", k);
                return 1;
            }
            t->create_revision = kv->create_revision;
            api_map_put(c->tenants, tid, t, &oom);
            if (oom)
                free(t);
            else
                count_tenant(c, t, +1);
        }
        return 1;
    }
    if (strncmp(k, API_CLUSTER_LEASES, strlen(API_CLUSTER_LEASES)) == 0) {
        const char *tid = k + strlen(API_CLUSTER_LEASES);
        *kind = API_CLUSTER_LEASE;
        snprintf(id, idcap, "%s", tid);
        free(api_map_del(c->leases, tid));
        if (!deleted) {
            struct lease *l = malloc(sizeof(*l));
            if (l == NULL || lease_parse(kv->value, kv->value_len, l) != 0) {
                free(l);
                log_warn("ignoring bad lease record key=%s", k);
                return 1;
            }
            l->epoch = kv->mod_revision;
            l->lease_id = kv->lease;
            l->create_revision = kv->create_revision;
            api_map_put(c->leases, tid, l, &oom);
            if (oom)
                free(l);
        }
        return 1;
    }
    return 0;
}

static void clear_view(struct api_cluster *c)
{
    api_map_free(c->nodes, free);
    api_map_free(c->tenants, free);
    api_map_free(c->leases, free);
    api_map_free(c->loads, free);
    c->nodes = api_map_new();
    c->tenants = api_map_new();
    c->leases = api_map_new();
    c->loads = api_map_new();
}

static void load_kvs(struct api_cluster *c, const struct api_etcd_kvs *kvs)
{
    enum api_cluster_change kind;
    char id[API_NAME_MAX + 64];

    clear_view(c);
    for (size_t i = 0; i < kvs->n; i++)
        apply_kv(c, 0, &kvs->kvs[i], &kind, id, sizeof(id));
    c->revision = kvs->revision;
}

/* Wakes the waiters for ID, or all of them when ID is NULL. Mutex held. */
static void wake(struct api_cluster *c, const char *id)
{
    for (struct waiter *w = c->waiters; w != NULL; w = w->next)
        if (id == NULL || strcmp(w->id, id) == 0) {
            w->woken = 1;
            pthread_cond_signal(&w->cv);
        }
}

static void on_events(void *ud, const struct api_etcd_event *evs, size_t n, int64_t revision)
{
    struct api_cluster *c = ud;
    struct change {
        enum api_cluster_change kind;
        char id[API_NAME_MAX + 64];
        int deleted;
    } *changes = calloc(n ? n : 1, sizeof(*changes));
    size_t nchanges = 0;

    pthread_mutex_lock(&c->mu);
    for (size_t i = 0; i < n; i++) {
        struct change *ch = changes ? &changes[nchanges] : NULL;
        enum api_cluster_change kind;
        char id[API_NAME_MAX + 64];
        int deleted = evs[i].type == API_ETCD_DELETE;
        if (apply_kv(c, deleted, &evs[i].kv, &kind, id, sizeof(id)) && ch != NULL) {
            ch->kind = kind;
            snprintf(ch->id, sizeof(ch->id), "%s", id);
            ch->deleted = deleted;
            nchanges++;
            if (kind != API_CLUSTER_NODE)
                wake(c, id);
        } else if (ch == NULL) {
            wake(c, NULL); /* no memory to say what changed: let every waiter look */
        }
    }
    if (revision > c->revision)
        c->revision = revision;
    pthread_mutex_unlock(&c->mu);
    if (c->on_change != NULL)
        for (size_t i = 0; i < nchanges; i++)
            c->on_change(c->ud, changes[i].kind, changes[i].id, changes[i].deleted);
    free(changes);
}

static void on_resync(void *ud, const struct api_etcd_kvs *kvs)
{
    struct api_cluster *c = ud;

    pthread_mutex_lock(&c->mu);
    load_kvs(c, kvs);
    wake(c, NULL);
    pthread_mutex_unlock(&c->mu);
    log_info("cluster view resynced revision=%lld", (long long)kvs->revision);
    if (c->on_change != NULL)
        c->on_change(c->ud, API_CLUSTER_ALL, "", 0);
}

int api_cluster_open(struct api_etcd *etcd, api_cluster_fn on_change, void *ud, struct api_cluster **out,
                     struct api_err *err)
{
    struct api_cluster *c = calloc(1, sizeof(*c));
    struct api_etcd_kvs kvs;
    int rc;

    if (c == NULL)
        return api_err_set(err, API_ENOMEM, "cluster view: out of memory");
    c->etcd = etcd;
    c->on_change = on_change;
    c->ud = ud;
    pthread_mutex_init(&c->mu, NULL);
    if ((rc = api_etcd_range_prefix(etcd, API_CLUSTER_PREFIX, NULL, 0, &kvs, err)) != API_OK) {
        api_cluster_close(c);
        return api_err_wrap(err, "reading the cluster state");
    }
    load_kvs(c, &kvs);
    api_etcd_kvs_fini(&kvs);
    if ((rc = api_etcd_watch_start(etcd, API_CLUSTER_PREFIX, c->revision + 1, on_events, on_resync, c, &c->watch,
                                   err)) != API_OK) {
        api_cluster_close(c);
        return api_err_wrap(err, "watching the cluster state");
    }
    *out = c;
    return API_OK;
}

void api_cluster_close(struct api_cluster *c)
{
    if (c == NULL)
        return;
    api_etcd_watch_stop(c->watch);
    api_map_free(c->nodes, free);
    api_map_free(c->tenants, free);
    api_map_free(c->leases, free);
    api_map_free(c->loads, free);
    pthread_mutex_destroy(&c->mu);
    free(c);
}

/* ------------------------------------------------------------------ */
/* readers                                                            */

int api_cluster_tenant_locked(struct api_cluster *c, const char *id, struct api_cluster_tenant *out)
{
    struct api_cluster_tenant *t = api_map_get(c->tenants, id);
    struct lease *l;

    if (t == NULL)
        return 0;
    *out = *t;
    out->leased = 0;
    out->holder[0] = out->holder_url[0] = '\0';
    out->epoch = out->lease_id = out->lease_create_revision = 0;
    if ((l = api_map_get(c->leases, id)) != NULL) {
        out->leased = 1;
        strcpy(out->holder, l->holder);
        strcpy(out->holder_url, l->url);
        out->epoch = l->epoch;
        out->lease_id = l->lease_id;
        out->lease_create_revision = l->create_revision;
    }
    return 1;
}

int api_cluster_tenant(struct api_cluster *c, const char *id, struct api_cluster_tenant *out)
{
    int found;
    pthread_mutex_lock(&c->mu);
    found = api_cluster_tenant_locked(c, id, out);
    pthread_mutex_unlock(&c->mu);
    return found;
}

int api_cluster_node(struct api_cluster *c, const char *node, struct api_cluster_node *out)
{
    struct api_cluster_node *n;
    pthread_mutex_lock(&c->mu);
    n = api_map_get(c->nodes, node);
    if (n != NULL)
        *out = *n;
    pthread_mutex_unlock(&c->mu);
    return n != NULL;
}

struct collect {
    void **items;
    size_t n, cap;
};

static void collect_fn(void *ud, const char *key, void *value)
{
    struct collect *col = ud;
    (void)key;
    if (col->n == col->cap) {
        size_t ncap = col->cap ? col->cap * 2 : 64;
        void **ni = realloc(col->items, ncap * sizeof(*ni));
        if (ni == NULL)
            return;
        col->items = ni;
        col->cap = ncap;
    }
    col->items[col->n++] = value;
}

static int cmp_node(const void *a, const void *b)
{
    return strcmp((*(struct api_cluster_node *const *)a)->node, (*(struct api_cluster_node *const *)b)->node);
}

static int cmp_tenant(const void *a, const void *b)
{
    return strcmp((*(struct api_cluster_tenant *const *)a)->id, (*(struct api_cluster_tenant *const *)b)->id);
}

size_t api_cluster_nodes(struct api_cluster *c, struct api_cluster_node **out)
{
    struct collect col = {0};
    struct api_cluster_node *arr = NULL;

    pthread_mutex_lock(&c->mu);
    api_map_foreach(c->nodes, collect_fn, &col);
    if (col.n > 0)
        qsort(col.items, col.n, sizeof(void *), cmp_node);
    if (col.n > 0 && (arr = malloc(col.n * sizeof(*arr))) != NULL)
        for (size_t i = 0; i < col.n; i++)
            arr[i] = *(struct api_cluster_node *)col.items[i];
    pthread_mutex_unlock(&c->mu);
    free(col.items);
    *out = arr;
    return arr ? col.n : 0;
}

size_t api_cluster_tenant_page(struct api_cluster *c, const char *after, size_t limit, const char *region,
                               struct api_cluster_tenant **out, int *more)
{
    struct collect col = {0};
    struct api_cluster_tenant *arr;
    size_t n = 0;

    *more = 0;
    *out = NULL;
    pthread_mutex_lock(&c->mu);
    /* A sorted scan per page: O(n log n) in the tenant count. Fine for
     * thousands; an ordered index comes when listing millions matters. */
    api_map_foreach(c->tenants, collect_fn, &col);
    if (col.n > 0)
        qsort(col.items, col.n, sizeof(void *), cmp_tenant);
    /* never more entries than there are tenants, whatever LIMIT says */
    if ((arr = malloc(((limit < col.n ? limit : col.n) + 1) * sizeof(*arr))) == NULL) {
        pthread_mutex_unlock(&c->mu);
        free(col.items);
        return 0;
    }
    for (size_t i = 0; i < col.n; i++) {
        struct api_cluster_tenant *t = col.items[i];
        if (after != NULL && strcmp(t->id, after) <= 0)
            continue;
        if (region != NULL && strcmp(t->region, region) != 0)
            continue;
        if (n == limit) {
            *more = 1;
            break;
        }
        api_cluster_tenant_locked(c, t->id, &arr[n++]);
    }
    pthread_mutex_unlock(&c->mu);
    free(col.items);
    *out = arr;
    return n;
}

void api_cluster_node_load(struct api_cluster *c, const char *node, uint32_t *tenants, uint32_t *primaries)
{
    struct load *l;
    pthread_mutex_lock(&c->mu);
    l = api_map_get(c->loads, node);
    *tenants = l ? l->tenants : 0;
    *primaries = l ? l->primaries : 0;
    pthread_mutex_unlock(&c->mu);
}

size_t api_cluster_tenant_count(struct api_cluster *c)
{
    size_t n;
    pthread_mutex_lock(&c->mu);
    n = api_map_len(c->tenants);
    pthread_mutex_unlock(&c->mu);
    return n;
}

int64_t api_cluster_revision(struct api_cluster *c)
{
    int64_t r;
    pthread_mutex_lock(&c->mu);
    r = c->revision;
    pthread_mutex_unlock(&c->mu);
    return r;
}

int api_cluster_wait(struct api_cluster *c, const char *id, int (*pred)(void *ud, struct api_cluster *c), void *ud,
                     int64_t deadline_ms)
{
    struct waiter w = {.id = id};
    pthread_condattr_t attr;
    int ok;

    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&w.cv, &attr);
    pthread_condattr_destroy(&attr);
    api_workq_block_begin(); /* a worker waiting for the view lets another run */
    pthread_mutex_lock(&c->mu);
    w.next = c->waiters;
    c->waiters = &w;
    while (!(ok = pred(ud, c))) {
        if (api_now_ms() >= deadline_ms)
            break;
        struct timespec ts = {.tv_sec = deadline_ms / 1000, .tv_nsec = (long)(deadline_ms % 1000) * 1000000L};
        w.woken = 0;
        while (!w.woken && pthread_cond_timedwait(&w.cv, &c->mu, &ts) == 0)
            ;
    }
    for (struct waiter **pp = &c->waiters; *pp != NULL; pp = &(*pp)->next)
        if (*pp == &w) {
            *pp = w.next;
            break;
        }
    pthread_mutex_unlock(&c->mu);
    api_workq_block_end();
    pthread_cond_destroy(&w.cv);
    return ok;
}
