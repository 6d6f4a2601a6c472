/*
 * nodeagent/repl.c: replication state per tenant, capture on the primary,
 * apply on replicas, snapshots (see repl.h for the design).
 *
 * Invariants:
 * - Only the tenant's worker changes its files, its log pointer and its
 *   capture state; other threads read positions under rt->mu and records
 *   through the log's own mutex.
 * - A primary's position (txid, ck) always equals the log's last record:
 *   a commit counts once its record is in the log and synced.
 * - On a primary, the pre-commit image of a page is the newest frame of the
 *   current WAL generation holding it (rt->idx), else the database file:
 *   the WAL only restarts after a full checkpoint.
 */
#include "nodeagent/repl.h"

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <lz4.h>

#include "api/cluster.h"
#include "api/failpoint.h"
#include "api/http.h"
#include "api/log.h"
#include "api/server.h"
#include "api/token.h"
#include "api/workq.h"
#include "nodeagent/repl_int.h"
#include "nodeagent/repl_sum.h"
#include "nodeagent/store.h"

#define WAL_HDR 32
#define FRAME_HDR 24
#define SNAP_HDR 48
#define SNAP_CHUNK_PAGES 64
static const unsigned char snap_magic[4] = {'S', 'H', 'S', '1'};
static const unsigned char pos_magic[4] = {'S', 'H', 'P', '1'};

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* Replication lag histogram: commit on the primary to apply here. */
const int64_t agent_repl_lag_bounds_us[AGENT_REPL_LAG_BUCKETS] = {
    100, 150, 200, 300, 400, 500, 700, 1000, 1500, 2000, 3000, 4000, 5000, 7000, 10000, 15000, 20000, 30000,
    50000, 100000, 200000, 500000, 1000000, 2000000, 5000000, INT64_MAX};

static void observe_lag(struct agent_repl *r, int64_t us)
{
    size_t i = 0;
    while (i + 1 < AGENT_REPL_LAG_BUCKETS && us > agent_repl_lag_bounds_us[i])
        i++;
    atomic_fetch_add(&r->lag_buckets[i], 1);
    atomic_fetch_add(&r->lag_sum_us, (unsigned long long)(us > 0 ? us : 0));
}

static int64_t mono_ms(void)
{
    return api_now_ms();
}

/* ------------------------------------------------------------------ */
/* page index                                                          */

static void idx_clear(struct pgidx *x)
{
    free(x->keys);
    free(x->vals);
    memset(x, 0, sizeof(*x));
}

static size_t idx_slot(const struct pgidx *x, uint32_t key)
{
    size_t i = (size_t)(key * 2654435761u) & (x->cap - 1);
    while (x->keys[i] != 0 && x->keys[i] != key)
        i = (i + 1) & (x->cap - 1);
    return i;
}

static int idx_put(struct pgidx *x, uint32_t key, uint32_t val)
{
    if ((x->n + 1) * 2 > x->cap) {
        struct pgidx nx = {0};
        nx.cap = x->cap ? x->cap * 2 : 64;
        nx.keys = calloc(nx.cap, sizeof(uint32_t));
        nx.vals = calloc(nx.cap, sizeof(uint32_t));
        if (nx.keys == NULL || nx.vals == NULL) {
            free(nx.keys);
            free(nx.vals);
            return -1;
        }
        for (size_t i = 0; i < x->cap; i++)
            if (x->keys[i] != 0) {
                size_t s = idx_slot(&nx, x->keys[i]);
                nx.keys[s] = x->keys[i];
                nx.vals[s] = x->vals[i];
                nx.n++;
            }
        free(x->keys);
        free(x->vals);
        *x = nx;
    }
    size_t s = idx_slot(x, key);
    if (x->keys[s] == 0)
        x->n++;
    x->keys[s] = key;
    x->vals[s] = val;
    return 0;
}

static int idx_get(const struct pgidx *x, uint32_t key, uint32_t *val)
{
    if (x->cap == 0)
        return 0;
    size_t s = idx_slot(x, key);
    if (x->keys[s] == 0)
        return 0;
    *val = x->vals[s];
    return 1;
}

/* Drops every page above NPAGES (after a commit shrank the database). */
static void idx_truncate(struct pgidx *x, uint32_t npages)
{
    struct pgidx nx = {0};
    int any = 0;
    for (size_t i = 0; i < x->cap; i++)
        if (x->keys[i] > npages)
            any = 1;
    if (!any)
        return;
    for (size_t i = 0; i < x->cap; i++)
        if (x->keys[i] != 0 && x->keys[i] <= npages && idx_put(&nx, x->keys[i], x->vals[i]) != 0)
            break;
    idx_clear(x);
    *x = nx;
}

/* ------------------------------------------------------------------ */
/* registry                                                            */

void agent_repl_config_init(struct agent_repl_config *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    cfg->log_keep_bytes = (size_t)8 << 20;
    cfg->checkpoint_frames = 256;
    cfg->quorum_timeout_ms = 5000;
    cfg->pull_wait_ms = 1000;
    cfg->max_lag_ms = 5000;
}

uint64_t agent_repl_key(const char *tenant)
{
    return api_hash_str(tenant, strlen(tenant));
}

int agent_repl_new(const struct agent_repl_config *cfg, struct agent_repl **out, struct api_err *err)
{
    struct agent_repl *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return api_err_set(err, API_ENOMEM, "out of memory");
    r->cfg = *cfg;
    snprintf(r->node, sizeof(r->node), "%s", cfg->node);
    r->internal_token = strdup(cfg->internal_token ? cfg->internal_token : "");
    pthread_mutex_init(&r->mu, NULL);
    pthread_mutex_init(&r->kick_mu, NULL);
    r->tenants = api_map_new();
    r->pullers = api_map_new();
    if (r->internal_token == NULL || r->tenants == NULL || r->pullers == NULL || hub_new(r, &r->hub) != 0) {
        agent_repl_free(r);
        return api_err_set(err, API_ENOMEM, "out of memory");
    }
    *out = r;
    return API_OK;
}

static int write_pos(struct agent_repl *r, struct rt *t, struct api_err *err);

/* After the workers stopped: a replica's applied position goes to its
 * <db>-pos now rather than after every apply (repl_receive). */
static void rt_free(void *p)
{
    struct rt *t = p;
    struct api_err err;
    if (t->pos_dirty && t->loaded == AGENT_ROLE_REPLICA && write_pos(t->r, t, &err) != API_OK)
        log_warn("%s", err.msg); /* the next start re-applies from an older position and checksums the file */
    agent_log_free(t->log);
    idx_clear(&t->idx);
    pthread_mutex_destroy(&t->mu);
    free(t);
}

void agent_repl_stop(struct agent_repl *r)
{
    if (r == NULL)
        return;
    pull_stop_all(r);
    hub_stop(r->hub);
}

void agent_repl_free(struct agent_repl *r)
{
    if (r == NULL)
        return;
    pull_stop_all(r);
    hub_free(r->hub);
    api_map_free(r->pullers, NULL);
    api_map_free(r->tenants, rt_free);
    pthread_mutex_destroy(&r->mu);
    api_http_client_free(r->kick_client);
    pthread_mutex_destroy(&r->kick_mu);
    free(r->internal_token);
    free(r);
}

struct rt *repl_rt_get(struct agent_repl *r, const char *id, int create)
{
    struct rt *t;
    int oom = 0;
    pthread_mutex_lock(&r->mu);
    t = api_map_get(r->tenants, id);
    if (t == NULL && create && (t = calloc(1, sizeof(*t))) != NULL) {
        snprintf(t->id, sizeof(t->id), "%s", id);
        t->r = r;
        pthread_mutex_init(&t->mu, NULL);
        api_map_put(r->tenants, t->id, t, &oom);
        if (oom) {
            pthread_mutex_destroy(&t->mu);
            free(t);
            t = NULL;
        }
    }
    pthread_mutex_unlock(&r->mu);
    return t;
}

int agent_repl_authorized(struct agent_repl *r, const char *authz, size_t len)
{
    return repl_auth_ok(r, authz, len);
}

int repl_auth_ok(struct agent_repl *r, const char *authz, size_t len)
{
    const char *tok;
    size_t tlen;
    if (r->internal_token[0] == '\0' || authz == NULL || api_bearer_token(authz, len, &tok, &tlen) != 0)
        return 0;
    char *copy = strndup(tok, tlen);
    int ok = copy != NULL && api_admin_token_equal(r->internal_token, copy, tlen);
    free(copy);
    return ok;
}

void agent_repl_set_role(struct agent_repl *r, const char *tenant, enum agent_role role, int64_t epoch,
                         const char *upstream, const char *upstream_url)
{
    struct rt *t = repl_rt_get(r, tenant, 1);
    char old[64] = "";
    if (t == NULL)
        return;
    pthread_mutex_lock(&t->mu);
    if (t->want == AGENT_ROLE_REPLICA)
        snprintf(old, sizeof(old), "%s", t->upstream);
    t->want = role;
    if (role == AGENT_ROLE_PRIMARY)
        t->epoch = epoch;
    snprintf(t->upstream, sizeof(t->upstream), "%s", role == AGENT_ROLE_REPLICA && upstream ? upstream : "");
    snprintf(t->upstream_url, sizeof(t->upstream_url), "%s", role == AGENT_ROLE_REPLICA && upstream_url ? upstream_url : "");
    pthread_mutex_unlock(&t->mu);
    pull_follow(r, tenant, old, role == AGENT_ROLE_REPLICA ? upstream : "", upstream_url);
    if (role == AGENT_ROLE_PRIMARY)
        hub_notify(r->hub, tenant); /* followers waiting on us may proceed */
}

void agent_repl_forget(struct agent_repl *r, const char *tenant)
{
    struct rt *t = repl_rt_get(r, tenant, 0);
    char old[64] = "";
    if (t == NULL)
        return;
    pthread_mutex_lock(&t->mu);
    if (t->want == AGENT_ROLE_REPLICA)
        snprintf(old, sizeof(old), "%s", t->upstream);
    agent_log_free(t->log);
    t->log = NULL;
    t->want = t->loaded = AGENT_ROLE_NONE;
    t->txid = t->ck = t->head_txid = t->remote_durable = t->max_epoch_seen = 0;
    t->need_snapshot = t->broken = t->load_requested = t->unborn = 0;
    t->upstream[0] = t->upstream_url[0] = '\0';
    idx_clear(&t->idx);
    t->salt1 = t->salt2 = t->frames_seen = t->npages = t->page_size = 0;
    pthread_mutex_unlock(&t->mu);
    if (old[0])
        pull_follow(r, tenant, old, "", "");
}

void agent_repl_set_quorum(struct agent_repl *r, const char *tenant, int quorum)
{
    struct rt *t = repl_rt_get(r, tenant, 0);
    if (t == NULL)
        return;
    pthread_mutex_lock(&t->mu);
    t->quorum = quorum != 0;
    pthread_mutex_unlock(&t->mu);
}

/* With t->mu held. */
static void position_locked(struct rt *t, struct agent_repl_pos *out)
{
    struct agent_log_pos lp;
    memset(out, 0, sizeof(*out));
    out->role = t->want;
    out->loaded = t->loaded != AGENT_ROLE_NONE || t->unborn;
    out->broken = t->broken;
    out->txid = t->txid;
    out->ck = t->ck;
    out->head_txid = t->head_txid > t->txid ? t->head_txid : t->txid;
    out->lag_ms = (t->want == AGENT_ROLE_REPLICA && t->behind_since_ms) ? mono_ms() - t->behind_since_ms : 0;
    out->remote_durable = t->remote_durable;
    out->mismatches = t->mismatches;
    out->snapshots = t->snapshots;
    if (t->log != NULL) {
        agent_log_position(t->log, &lp);
        out->log_base = lp.base_txid;
        out->log_bytes = lp.bytes;
    }
}

int agent_repl_position(struct agent_repl *r, const char *tenant, struct agent_repl_pos *out)
{
    struct rt *t = repl_rt_get(r, tenant, 0);
    if (t == NULL)
        return -1;
    pthread_mutex_lock(&t->mu);
    position_locked(t, out);
    pthread_mutex_unlock(&t->mu);
    return 0;
}

struct lag_ctx {
    json_t *arr;
    size_t n;
    int64_t max, now;
};

static void collect_lagging(void *ud, const char *key, void *value)
{
    struct lag_ctx *c = ud;
    struct rt *t = value;
    pthread_mutex_lock(&t->mu);
    int64_t lag = (t->want == AGENT_ROLE_REPLICA && t->behind_since_ms) ? c->now - t->behind_since_ms : 0;
    pthread_mutex_unlock(&t->mu);
    if (lag > c->max) {
        json_array_append_new(c->arr, json_pack("{s:s,s:I}", "tenant", key, "lag_ms", (json_int_t)lag));
        c->n++;
    }
}

size_t agent_repl_lagging(struct agent_repl *r, void *json_array)
{
    struct lag_ctx c = {.arr = json_array, .max = r->cfg.max_lag_ms, .now = mono_ms()};
    pthread_mutex_lock(&r->mu);
    api_map_foreach(r->tenants, collect_lagging, &c);
    pthread_mutex_unlock(&r->mu);
    return c.n;
}

void agent_repl_stats(struct agent_repl *r, struct agent_repl_stats *o)
{
    o->records_captured = atomic_load(&r->records_captured);
    o->records_applied = atomic_load(&r->records_applied);
    o->bytes_sent = atomic_load(&r->bytes_sent);
    o->bytes_raw = atomic_load(&r->bytes_raw);
    o->snapshots_sent = atomic_load(&r->snapshots_sent);
    o->snapshots_installed = atomic_load(&r->snapshots_installed);
    o->mismatches = atomic_load(&r->mismatches);
    o->pulls = atomic_load(&r->pulls);
    for (size_t i = 0; i < AGENT_REPL_LAG_BUCKETS; i++)
        o->lag_buckets[i] = atomic_load(&r->lag_buckets[i]);
    o->lag_sum_us = atomic_load(&r->lag_sum_us);
}

void agent_repl_quorum_wait(struct agent_repl *r, const char *tenant, uint64_t txid, struct api_pending *p,
                            struct api_resp *resp)
{
    hub_quorum_wait(r->hub, tenant, txid, p, resp);
}

void agent_repl_wait_txid(struct agent_repl *r, const char *tenant, uint64_t txid, int64_t timeout_ms,
                          void (*fn)(void *, int), void *arg)
{
    hub_txid_wait(r->hub, tenant, txid, timeout_ms, fn, arg);
}

int agent_repl_routes(struct agent_repl *r, struct api_server *s, struct api_err *err)
{
    if (hub_routes(r->hub, s) != 0)
        return api_err_set(err, API_ENOMEM, "registering replication routes: out of memory");
    return API_OK;
}

/* ------------------------------------------------------------------ */
/* files                                                               */

static void file_path(struct agent_repl *r, const char *tenant, const char *suffix, char *out, size_t cap)
{
    char db[4096];
    agent_store_path(r->cfg.store, tenant, db, sizeof(db));
    snprintf(out, cap, "%s%s", db, suffix);
}

static int read_full(int fd, void *buf, size_t len, off_t off)
{
    unsigned char *p = buf;
    while (len > 0) {
        ssize_t n = pread(fd, p, len, off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        p += n;
        len -= (size_t)n;
        off += n;
    }
    return 0;
}

/* The database header's page size and file format byte (18): 2 in WAL. */
static int db_header(const char *path, uint32_t *page_size, int *wal, off_t *size)
{
    unsigned char h[100];
    struct stat st;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    if (fstat(fd, &st) != 0 || st.st_size < 100 || read_full(fd, h, 100, 0) != 0) {
        close(fd);
        return -1;
    }
    close(fd);
    if (memcmp(h, "SQLite format 3", 16) != 0)
        return -1; /* e.g. a new file whose bytes never reached the disk */
    uint32_t ps = (uint32_t)h[16] << 8 | h[17];
    *page_size = ps == 1 ? 65536 : ps;
    *wal = h[18] == 2;
    *size = st.st_size;
    return 0;
}

/* Creates the shard folder holding PATH. */
static int ensure_parent(const char *path, struct api_err *err)
{
    char dir[4096];
    snprintf(dir, sizeof(dir), "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash == NULL)
        return API_OK;
    *slash = '\0';
    if (mkdir(dir, 0755) != 0 && errno != EEXIST)
        return api_err_set(err, API_EIO, "cannot create '%s': %s", dir, strerror(errno));
    return API_OK;
}

static int raw_exec(const char *path, const char *sql, struct api_err *err)
{
    sqlite3 *db = NULL;
    char *msg = NULL;
    int rc = sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc == SQLITE_OK) {
        sqlite3_busy_timeout(db, 5000);
        rc = sqlite3_exec(db, sql, NULL, NULL, &msg);
    }
    if (rc != SQLITE_OK) {
        api_err_set(err, API_EIO, "'%s': %s: %s", path, sql, msg ? msg : db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
        sqlite3_free(msg);
        sqlite3_close(db);
        return API_EIO;
    }
    sqlite3_close(db);
    return API_OK;
}

static int write_pos(struct agent_repl *r, struct rt *t, struct api_err *err)
{
    char path[4200];
    t->pos_dirty = 0;
    unsigned char buf[32];
    file_path(r, t->id, "-pos", path, sizeof(path));
    memcpy(buf, pos_magic, 4);
    agent_put32(buf + 4, 0);
    agent_put64(buf + 8, t->txid);
    agent_put64(buf + 16, t->ck);
    agent_put64(buf + 24, agent_crc64(0, buf, 24));
    int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0 || pwrite(fd, buf, sizeof(buf), 0) != (ssize_t)sizeof(buf)) {
        int rc = api_err_set(err, API_EIO, "tenant '%s': cannot write '%s': %s", t->id, path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return rc;
    }
    close(fd);
    return API_OK;
}

static int read_pos(struct agent_repl *r, const char *tenant, uint64_t *txid, uint64_t *ck)
{
    char path[4200];
    unsigned char buf[32];
    file_path(r, tenant, "-pos", path, sizeof(path));
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    int ok = read_full(fd, buf, sizeof(buf), 0) == 0 && memcmp(buf, pos_magic, 4) == 0 &&
             agent_get64(buf + 24) == agent_crc64(0, buf, 24);
    close(fd);
    if (!ok)
        return -1;
    *txid = agent_get64(buf + 8);
    *ck = agent_get64(buf + 16);
    return 0;
}

static void set_position(struct rt *t, uint64_t txid, uint64_t ck)
{
    pthread_mutex_lock(&t->mu);
    t->txid = txid;
    t->ck = ck;
    if (t->head_txid <= txid)
        t->behind_since_ms = 0;
    pthread_mutex_unlock(&t->mu);
}

static int open_log(struct agent_repl *r, struct rt *t, uint64_t base_txid, uint64_t base_ck, struct api_err *err)
{
    char path[4200];
    struct agent_log *log;
    int rc;
    if (t->log != NULL)
        return API_OK;
    file_path(r, t->id, "-log", path, sizeof(path));
    if ((rc = agent_log_open(path, base_txid, base_ck, &log, err)) != API_OK)
        return rc;
    pthread_mutex_lock(&t->mu);
    t->log = log;
    pthread_mutex_unlock(&t->mu);
    return API_OK;
}

/* ------------------------------------------------------------------ */
/* new tenants                                                         */

/* The checksum of the canonical empty database (store.h); both flavours
 * hash alike because page 1 is hashed normalised (repl_sum.h). */
static uint64_t empty_ck(void)
{
    static _Atomic uint64_t cached; /* 0 is never a checksum */
    uint64_t ck = atomic_load(&cached);
    if (ck == 0) {
        unsigned char img[AGENT_STORE_PAGE_SIZE];
        agent_store_empty_image(1, img);
        ck = AGENT_CK_EMPTY ^ agent_page_hash(1, img, sizeof(img));
        atomic_store(&cached, ck);
    }
    return ck;
}

uint64_t repl_empty_ck(void)
{
    return empty_ck();
}

/* 1 if neither TENANT's database nor its log exists here. */
static int files_absent(struct agent_repl *r, const char *tenant)
{
    char db[4096], lpath[4200];
    agent_store_path(r->cfg.store, tenant, db, sizeof(db));
    file_path(r, tenant, "-log", lpath, sizeof(lpath));
    return access(db, F_OK) != 0 && errno == ENOENT && access(lpath, F_OK) != 0 && errno == ENOENT;
}

int repl_unborn(struct agent_repl *r, struct rt *t)
{
    pthread_mutex_lock(&t->mu);
    int unborn = t->unborn, check = !unborn && t->loaded == AGENT_ROLE_NONE && t->log == NULL;
    pthread_mutex_unlock(&t->mu);
    if (!check)
        return unborn;
    if (!files_absent(r, t->id))
        return 0;
    pthread_mutex_lock(&t->mu);
    if (t->loaded == AGENT_ROLE_NONE && t->log == NULL) {
        t->unborn = 1;
        t->txid = 0;
        t->ck = empty_ck();
    }
    unborn = t->unborn;
    pthread_mutex_unlock(&t->mu);
    return unborn;
}

/* The tenant's file is missing or is not a database: a creation cut short
 * by a crash (a new file is not synced, store.h). If nothing written to it
 * can be lost (no log here, or a log whose history starts at the empty
 * database, so it replays every commit), the empty database is written
 * again in flavour WAL; loading then rolls it forward from the log.
 * Otherwise an error, and the file is left alone. On the tenant's worker. */
static int repair_unborn(struct agent_repl *r, struct rt *t, int wal, struct api_err *err)
{
    char lpath[4200];
    int rc;
    file_path(r, t->id, "-log", lpath, sizeof(lpath));
    if (t->log != NULL || access(lpath, F_OK) == 0) {
        struct agent_log_pos lp;
        if ((rc = open_log(r, t, 0, empty_ck(), err)) != API_OK)
            return rc;
        agent_log_position(t->log, &lp);
        if (lp.base_txid != 0 || lp.base_ck != empty_ck())
            return api_err_set(err, API_EIO,
                               "tenant '%s': the database file is missing or torn and its log does not start at the "
                               "empty database",
                               t->id);
    }
    if ((rc = agent_store_create(r->cfg.store, t->id, wal, 1, err)) != API_OK)
        return rc;
    log_warn("tenant=%s database file missing or torn; wrote the empty database it started from again", t->id);
    return API_OK;
}

/* Capture state of a primary whose WAL is empty and whose file holds the
 * log's last position (NPAGES of PAGE_SIZE). */
static void loaded_as_primary(struct rt *t, uint32_t npages, uint32_t page_size)
{
    struct agent_log_pos lp;
    agent_log_position(t->log, &lp);
    idx_clear(&t->idx);
    t->salt1 = t->salt2 = t->frames_seen = 0;
    t->npages = npages;
    t->page_size = page_size;
    t->ckpt_txid = lp.last_txid; /* the WAL is empty: the file holds it all */
    set_position(t, lp.last_txid, lp.last_ck);
    pthread_mutex_lock(&t->mu);
    t->loaded = AGENT_ROLE_PRIMARY;
    t->broken = 0;
    pthread_mutex_unlock(&t->mu);
}

int agent_repl_create(struct agent_repl *r, const char *tenant, struct api_err *err)
{
    struct rt *t = repl_rt_get(r, tenant, 1);

    if (t == NULL)
        return api_err_set(err, API_ENOMEM, "out of memory");
    if (t->loaded != AGENT_ROLE_NONE)
        return API_OK;
    /* not new here if it has files: loading checks and recovers them */
    if (repl_unborn(r, t))
        log_debug("tenant=%s new here: its files are born on first use", tenant);
    return API_OK;
}

static int load_primary(struct agent_repl *r, struct rt *t, struct api_err *err);

/* An unborn tenant's first use as primary: its files are born as the
 * canonical empty database (WAL) and a log starting there. Nothing is
 * synced (store.h; the log's first sync syncs the directory). */
static int birth_primary(struct agent_repl *r, struct rt *t, struct api_err *err)
{
    int rc;
    if ((rc = agent_store_create(r->cfg.store, t->id, 1, 0, err)) != API_OK)
        return rc == API_ECONFLICT ? load_primary(r, t, err) : rc;
    if ((rc = open_log(r, t, 0, empty_ck(), err)) != API_OK)
        return rc;
    loaded_as_primary(t, 1, AGENT_STORE_PAGE_SIZE);
    log_debug("tenant=%s born as primary", t->id);
    return API_OK;
}

/* ------------------------------------------------------------------ */
/* primary: load and recovery                                          */

/* Appends one record holding every page of the file (after a crash left
 * commits that never reached the log). */
static int log_full_image(struct rt *t, int fd, uint32_t page_size, uint32_t npages,
                          uint64_t ck, struct api_err *err)
{
    struct agent_log_pos lp;
    uint32_t lock = agent_lock_page(page_size), n = 0;
    uint32_t *pgnos = malloc(((size_t)npages + 1) * sizeof(uint32_t));
    unsigned char *pages = malloc(((size_t)npages + 1) * page_size), *enc = NULL;
    size_t enc_len;
    int rc;

    if (pgnos == NULL || pages == NULL) {
        free(pgnos);
        free(pages);
        return api_err_set(err, API_ENOMEM, "out of memory");
    }
    for (uint32_t pg = 1; pg <= npages; pg++) {
        if (pg == lock)
            continue;
        if (read_full(fd, pages + (size_t)n * page_size, page_size, (off_t)(pg - 1) * page_size) != 0) {
            free(pgnos);
            free(pages);
            return api_err_set(err, API_EIO, "tenant '%s': reading page %u: %s", t->id, pg, strerror(errno));
        }
        pgnos[n++] = pg;
    }
    agent_log_position(t->log, &lp);
    struct agent_rec rec = {.epoch = (uint64_t)t->epoch, .txid = lp.last_txid + 1, .pre_ck = lp.last_ck, .post_ck = ck,
                            .time_us = (uint64_t)now_us(), .page_size = page_size, .commit_pages = npages, .npages = n};
    rc = agent_rec_encode(&rec, pgnos, pages, &enc, &enc_len, err);
    free(pgnos);
    free(pages);
    if (rc == API_OK && (rc = agent_log_append(t->log, enc, enc_len, err)) == API_OK)
        rc = agent_log_sync(t->log, err);
    free(enc);
    if (rc == API_OK)
        log_warn("tenant=%s recovered commits missing from the log as txid %llu (%u pages)", t->id,
                 (unsigned long long)rec.txid, n);
    return rc;
}

/* The file (open read-write at FD) is at an older position of the log than
 * its end: commits reached the log durably but their WAL frames did not
 * reach the disk (the WAL is not synced at commit; the log is). Writes the
 * page images of records FROM..last into the file. */
static int roll_forward(struct rt *t, int fd, uint64_t from, struct api_err *err)
{
    struct agent_log_pos lp;
    agent_log_position(t->log, &lp);
    for (uint64_t txid = from; txid <= lp.last_txid; txid++) {
        unsigned char *buf;
        size_t len, rl;
        struct agent_rec rec;
        void *block;
        const uint32_t *pgnos;
        const unsigned char *pages;
        int rc;
        if ((rc = agent_log_read(t->log, txid, &buf, &len, err)) != API_OK)
            return rc;
        if ((rc = agent_rec_parse(buf, len, &rec, &rl, err)) != API_OK ||
            (rc = agent_rec_unpack(buf, &rec, &block, &pgnos, &pages, err)) != API_OK) {
            free(buf);
            return rc;
        }
        uint32_t lock = agent_lock_page(rec.page_size);
        for (uint32_t i = 0; i < rec.npages && rc == API_OK; i++) {
            if (pgnos[i] == 0 || pgnos[i] > rec.commit_pages || pgnos[i] == lock)
                continue;
            if (pwrite(fd, pages + (size_t)i * rec.page_size, rec.page_size,
                       (off_t)(pgnos[i] - 1) * rec.page_size) != (ssize_t)rec.page_size)
                rc = api_err_set(err, API_EIO, "tenant '%s': rolling forward txid %llu: %s", t->id,
                                 (unsigned long long)txid, strerror(errno));
        }
        if (rc == API_OK && ftruncate(fd, (off_t)rec.commit_pages * rec.page_size) != 0)
            rc = api_err_set(err, API_EIO, "tenant '%s': rolling forward: %s", t->id, strerror(errno));
        free(block);
        free(buf);
        if (rc != API_OK)
            return rc;
    }
    if (fdatasync(fd) != 0)
        return api_err_set(err, API_EIO, "tenant '%s': rolling forward: %s", t->id, strerror(errno));
    log_warn("tenant=%s rolled the database forward from the log: txid %llu..%llu", t->id,
             (unsigned long long)from, (unsigned long long)lp.last_txid);
    return API_OK;
}

/* The database size in pages: the header's when it is valid (its
 * version-valid-for equals the change counter), else the file's. */
static uint32_t logical_pages(int fd, uint32_t page_size, uint32_t file_pages)
{
    unsigned char h[100];
    if (pread(fd, h, sizeof(h), 0) != (ssize_t)sizeof(h))
        return file_pages;
    uint32_t n = agent_get32(h + 28);
    if (n > 0 && agent_get32(h + 92) == agent_get32(h + 24) && n <= file_pages)
        return n;
    (void)page_size;
    return file_pages;
}

/* The file matches no position of the log: it may be torn (a checkpoint
 * cut short, its WAL lost). Applies every record of the log to a copy
 * (page images are idempotent, and a range applied over a later state ends
 * in the range's final state); if the copy reaches the log's last
 * checksum it replaces the file and *FD is reopened on it. Otherwise the
 * file is left alone (it may hold commits the log never got). */
static int replay_whole_log(struct agent_repl *r, struct rt *t, const char *db, int *fd)
{
    char tmp[4200];
    struct agent_log_pos lp;
    struct api_err err;
    struct stat st;
    unsigned char buf[65536];
    uint64_t ck;
    int out, ok = 0;
    (void)r;

    agent_log_position(t->log, &lp);
    if (lp.last_txid == lp.base_txid || fstat(*fd, &st) != 0)
        return API_ENOTFOUND;
    snprintf(tmp, sizeof(tmp), "%s-recover", db);
    if ((out = open(tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644)) < 0)
        return API_EIO;
    for (off_t off = 0; off < st.st_size;) {
        ssize_t n = pread(*fd, buf, sizeof(buf), off);
        if (n <= 0 || pwrite(out, buf, (size_t)n, off) != n)
            goto done;
        off += n;
    }
    if (roll_forward(t, out, lp.base_txid + 1, &err) != API_OK ||
        agent_file_checksum(out, lp.page_size, lp.last_commit_pages, &ck) != 0 || ck != lp.last_ck)
        goto done;
    if (fsync(out) != 0 || rename(tmp, db) != 0)
        goto done;
    close(*fd);
    *fd = out;
    out = -1;
    ok = 1;
    log_warn("tenant=%s database matched no logged position; rebuilt it by applying its whole log", t->id);
done:
    if (out >= 0) {
        close(out);
        unlink(tmp);
    }
    return ok ? API_OK : API_ENOTFOUND;
}

/* The TXID at which the log's history passes through checksum CK, or -1. */
static int64_t log_txid_with(struct rt *t, uint64_t ck)
{
    struct agent_log_pos lp;
    uint64_t pre;
    agent_log_position(t->log, &lp);
    for (uint64_t txid = lp.last_txid; txid > lp.base_txid; txid--)
        if (agent_log_pre_ck(t->log, txid, &pre) == 0 && pre == ck)
            return (int64_t)txid - 1;
    return -1;
}

/* Brings a tenant file in WAL mode to a state where its log and file
 * agree, with an empty WAL. Sets the capture state. After a crash (a WAL
 * left behind, or the agent did not stop cleanly) the whole file is
 * checksummed once: a file behind the log is rolled forward from it, a file
 * ahead of it (commits that never reached the log) is logged as one
 * full-image record. */
static int load_primary(struct agent_repl *r, struct rt *t, struct api_err *err)
{
    char db[4096], wal[4200];
    struct stat st;
    uint32_t page_size;
    int is_wal, rc, crashed;
    off_t size;
    uint64_t ck;

    agent_store_path(r->cfg.store, t->id, db, sizeof(db));
    snprintf(wal, sizeof(wal), "%s-wal", db);
    crashed = (stat(wal, &st) == 0 && st.st_size > 0) || r->cfg.verify_on_load;
    if (db_header(db, &page_size, &is_wal, &size) != 0) {
        if ((rc = repair_unborn(r, t, 1, err)) != API_OK)
            return rc;
        crashed = 1; /* checksum it and roll it forward from the log */
    }
    if (db_header(db, &page_size, &is_wal, &size) != 0)
        return api_err_set(err, API_EIO, "tenant '%s': cannot read the database header of '%s'", t->id, db);
    if (!is_wal) {
        /* a replica being promoted: finish any apply, then switch */
        if ((rc = raw_exec(db, "PRAGMA journal_mode=WAL", err)) != API_OK)
            return rc;
    } else if (crashed && (rc = raw_exec(db, "PRAGMA wal_checkpoint(TRUNCATE)", err)) != API_OK) {
        return rc;
    }
    if (db_header(db, &page_size, &is_wal, &size) != 0)
        return api_err_set(err, API_EIO, "tenant '%s': cannot read '%s'", t->id, db);
    uint32_t npages = (uint32_t)(size / page_size);
    int fd = open(db, O_RDWR | O_CLOEXEC);
    if (fd < 0)
        return api_err_set(err, API_EIO, "tenant '%s': cannot open '%s': %s", t->id, db, strerror(errno));
    int have_log;
    {
        char lp[4200];
        file_path(r, t->id, "-log", lp, sizeof(lp));
        have_log = t->log != NULL || access(lp, F_OK) == 0;
    }
    if (!have_log || crashed) {
        /* the logical size: after a partial checkpoint the file can hold
         * stale pages beyond it */
        npages = logical_pages(fd, page_size, npages);
        if (ftruncate(fd, (off_t)npages * page_size) != 0 || agent_file_checksum(fd, page_size, npages, &ck) != 0) {
            rc = api_err_set(err, API_EIO, "tenant '%s': checksumming '%s': %s", t->id, db, strerror(errno));
            close(fd);
            return rc;
        }
        if ((rc = open_log(r, t, 0, ck, err)) != API_OK) {
            close(fd);
            return rc;
        }
        struct agent_log_pos lp;
        agent_log_position(t->log, &lp);
        int64_t at = lp.last_ck == ck ? (int64_t)lp.last_txid : log_txid_with(t, ck);
        if (lp.last_ck != ck && at < 0 && lp.base_ck == ck)
            at = (int64_t)lp.base_txid;
        if (at < 0 && replay_whole_log(r, t, db, &fd) == API_OK) {
            at = (int64_t)lp.last_txid; /* the file now is the log's last state */
            ck = lp.last_ck;
        }
        if (at >= 0 && (uint64_t)at < lp.last_txid) {
            if ((rc = roll_forward(t, fd, (uint64_t)at + 1, err)) != API_OK) {
                close(fd);
                return rc;
            }
            if (agent_file_checksum(fd, page_size, lp.last_commit_pages, &ck) != 0 || ck != lp.last_ck) {
                rc = api_err_set(err, API_EIO, "tenant '%s': rolled forward to txid %llu but the checksum is %016llx",
                                 t->id, (unsigned long long)lp.last_txid, (unsigned long long)ck);
                close(fd);
                return rc;
            }
        } else if (at < 0 && (rc = log_full_image(t, fd, page_size, npages, ck, err)) != API_OK) {
            close(fd);
            return rc;
        }
        struct stat fst;
        if (fstat(fd, &fst) == 0)
            npages = (uint32_t)(fst.st_size / page_size);
    } else if ((rc = open_log(r, t, 0, AGENT_CK_EMPTY, err)) != API_OK) {
        close(fd);
        return rc;
    }
    close(fd);
    /* a promoted replica's log may hold appends never synced (records
     * without AGENT_REC_F_SYNC): as a primary its log is the durable copy */
    if ((rc = agent_log_sync(t->log, err)) != API_OK)
        return rc;
    loaded_as_primary(t, npages, page_size);
    log_debug("tenant=%s loaded as primary txid=%llu", t->id, (unsigned long long)t->txid);
    return API_OK;
}

/* ------------------------------------------------------------------ */
/* primary: capture                                                    */

/* A file pages are read from: a descriptor of our own, or, inside the WAL
 * hook, SQLite's handle of the database or WAL file (FP set), which saves
 * an open and a close of each file per commit. */
struct pagesrc {
    int fd;
    sqlite3_file *fp;
};

/* LEN bytes at OFF of S into BUF: 0, or -1 when they are not all there
 * (through FP, the missing rest reads as zeros, as SQLite does). */
static int src_read(const struct pagesrc *s, void *buf, size_t len, off_t off)
{
    if (s->fp != NULL)
        return s->fp->pMethods->xRead(s->fp, buf, (int)len, (sqlite3_int64)off) == SQLITE_OK ? 0 : -1;
    return read_full(s->fd, buf, len, off);
}

/* The image of page PG before the commit being captured. */
static int old_image(struct rt *t, const struct pagesrc *db, const struct pagesrc *wal, uint32_t pg,
                     unsigned char *out)
{
    uint32_t frame;
    if (idx_get(&t->idx, pg, &frame))
        return src_read(wal, out, t->page_size, WAL_HDR + (off_t)frame * (FRAME_HDR + t->page_size) + FRAME_HDR);
    if (src_read(db, out, t->page_size, (off_t)(pg - 1) * t->page_size) != 0) {
        memset(out, 0, t->page_size); /* beyond the file: SQLite reads zeros */
    }
    return 0;
}

struct commit_pages {
    uint32_t *pgnos;
    uint32_t *frames;
    size_t n, cap;
};

static int cp_add(struct commit_pages *c, uint32_t pg, uint32_t frame)
{
    for (size_t i = 0; i < c->n; i++)
        if (c->pgnos[i] == pg) {
            c->frames[i] = frame; /* a later frame of the same page wins */
            return 0;
        }
    if (c->n == c->cap) {
        size_t ncap = c->cap ? c->cap * 2 : 16;
        uint32_t *np = realloc(c->pgnos, ncap * sizeof(uint32_t)), *nf;
        if (np == NULL)
            return -1;
        c->pgnos = np;
        if ((nf = realloc(c->frames, ncap * sizeof(uint32_t))) == NULL)
            return -1;
        c->frames = nf;
        c->cap = ncap;
    }
    c->pgnos[c->n] = pg;
    c->frames[c->n++] = frame;
    return 0;
}


/* Turns one commit (pages C, new size COMMIT_PAGES) into a durable record. */
static int capture_commit(struct agent_repl *r, struct rt *t, const struct pagesrc *dbs, const struct pagesrc *wals,
                          struct commit_pages *c,
                          uint32_t commit_pages, struct api_err *err)
{
    uint32_t ps = t->page_size, lock = agent_lock_page(ps);
    uint32_t *pgnos = malloc((c->n + 1) * sizeof(uint32_t) + 0);
    size_t cap = c->n + 1, n = 0;
    unsigned char *pages = malloc(cap * ps), *old = malloc(ps), *enc = NULL;
    uint64_t ck;
    size_t enc_len;
    int rc = API_OK;

    if (pgnos == NULL || pages == NULL || old == NULL) {
        rc = api_err_set(err, API_ENOMEM, "capture: out of memory");
        goto out;
    }
    pthread_mutex_lock(&t->mu);
    ck = t->ck;
    uint32_t flags = t->quorum ? AGENT_REC_F_SYNC : 0;
    pthread_mutex_unlock(&t->mu);
    /* pages written by the commit */
    for (size_t i = 0; i < c->n; i++) {
        uint32_t pg = c->pgnos[i];
        if (pg > commit_pages || pg == lock)
            continue;
        unsigned char *img = pages + n * ps;
        if (src_read(wals, img, ps, WAL_HDR + (off_t)c->frames[i] * (FRAME_HDR + ps) + FRAME_HDR) != 0) {
            rc = api_err_set(err, API_EIO, "tenant '%s': reading WAL frame %u: %s", t->id, c->frames[i],
                             strerror(errno));
            goto out;
        }
        if (pg <= t->npages) {
            old_image(t, dbs, wals, pg, old);
            ck ^= agent_page_hash(pg, old, ps);
        }
        ck ^= agent_page_hash(pg, img, ps);
        pgnos[n++] = pg;
    }
    /* pages the commit cut off */
    for (uint32_t pg = commit_pages + 1; pg <= t->npages; pg++) {
        if (pg == lock)
            continue;
        old_image(t, dbs, wals, pg, old);
        ck ^= agent_page_hash(pg, old, ps);
    }
    /* pages the database grew by without a frame read as zeros */
    for (uint32_t pg = t->npages + 1; pg <= commit_pages; pg++) {
        int seen = 0;
        if (pg == lock)
            continue;
        for (size_t i = 0; i < c->n && !seen; i++)
            seen = c->pgnos[i] == pg;
        if (seen)
            continue;
        if (n == cap) {
            void *np = realloc(pgnos, (cap * 2) * sizeof(uint32_t)), *nq;
            if (np == NULL) {
                rc = api_err_set(err, API_ENOMEM, "capture: out of memory");
                goto out;
            }
            pgnos = np;
            if ((nq = realloc(pages, cap * 2 * ps)) == NULL) {
                rc = api_err_set(err, API_ENOMEM, "capture: out of memory");
                goto out;
            }
            pages = nq;
            cap *= 2;
        }
        memset(pages + n * ps, 0, ps);
        ck ^= agent_page_hash(pg, pages + n * ps, ps);
        pgnos[n++] = pg;
    }
    {
        struct agent_rec rec = {.flags = flags, .epoch = (uint64_t)t->epoch, .txid = t->txid + 1, .pre_ck = t->ck, .post_ck = ck,
                                .time_us = (uint64_t)now_us(), .page_size = ps, .commit_pages = commit_pages,
                                .npages = (uint32_t)n};
        if ((rc = agent_rec_encode(&rec, pgnos, pages, &enc, &enc_len, err)) != API_OK ||
            (rc = agent_log_append(t->log, enc, enc_len, err)) != API_OK)
            goto out;
        atomic_fetch_add(&r->records_captured, 1);
        atomic_fetch_add(&r->bytes_raw, (unsigned long long)n * (4 + ps) + AGENT_REC_HDR);
        /* the WAL now holds these pages for later old-image lookups */
        for (size_t i = 0; i < c->n; i++)
            if (c->pgnos[i] <= commit_pages && idx_put(&t->idx, c->pgnos[i], c->frames[i]) != 0) {
                rc = api_err_set(err, API_ENOMEM, "capture: out of memory");
                goto out;
            }
        if (commit_pages < t->npages)
            idx_truncate(&t->idx, commit_pages);
        t->npages = commit_pages;
        set_position(t, rec.txid, ck);
        /* Followers get the record while this thread waits for the disk:
         * the commit is already visible on this node, and the write is
         * acknowledged only after the sync below. Should this node die
         * before the sync, a follower may hold a record the log lost: it
         * is then ahead of (or beside) the primary's history, which the
         * hub answers with a snapshot (build_tenant), and failover may
         * keep that never-acknowledged write, as it may under async. */
        hub_notify(r->hub, t->id);
        if ((rc = agent_log_sync(t->log, err)) != API_OK)
            goto out;
    }
out:
    free(pgnos);
    free(pages);
    free(old);
    free(enc);
    return rc;
}

/* Reads the frames [frames_seen, NFRAME) of the WAL and logs each commit.
 * DB is the committing connection: its own handles of the database and
 * WAL files are read. */
static int capture(struct agent_repl *r, struct rt *t, sqlite3 *db, int nframe, struct api_err *err)
{
    unsigned char hdr[WAL_HDR], fh[FRAME_HDR];
    struct commit_pages c = {0};
    struct pagesrc dbs = {.fd = -1}, wals = {.fd = -1};
    int rc = API_OK;

    if (sqlite3_file_control(db, "main", SQLITE_FCNTL_FILE_POINTER, &dbs.fp) != SQLITE_OK || dbs.fp == NULL ||
        dbs.fp->pMethods == NULL ||
        sqlite3_file_control(db, "main", SQLITE_FCNTL_JOURNAL_POINTER, &wals.fp) != SQLITE_OK || wals.fp == NULL ||
        wals.fp->pMethods == NULL || src_read(&wals, hdr, WAL_HDR, 0) != 0) {
        rc = api_err_set(err, API_EIO, "tenant '%s': cannot read its WAL", t->id);
        goto out;
    }
    uint32_t ps = agent_get32(hdr + 8), s1 = agent_get32(hdr + 16), s2 = agent_get32(hdr + 20);
    if (ps != t->page_size) {
        rc = api_err_set(err, API_EIO, "tenant '%s': WAL page size %u differs from %u", t->id, ps, t->page_size);
        goto out;
    }
    if (s1 != t->salt1 || s2 != t->salt2 || (uint32_t)nframe < t->frames_seen) {
        /* a new WAL generation: the previous one is fully in the database file */
        t->ckpt_txid = t->txid;
        idx_clear(&t->idx);
        t->frames_seen = 0;
        t->salt1 = s1;
        t->salt2 = s2;
    }
    for (uint32_t f = t->frames_seen; f < (uint32_t)nframe; f++) {
        if (src_read(&wals, fh, FRAME_HDR, WAL_HDR + (off_t)f * (FRAME_HDR + ps)) != 0) {
            rc = api_err_set(err, API_EIO, "tenant '%s': reading WAL frame %u", t->id, f);
            goto out;
        }
        if (cp_add(&c, agent_get32(fh), f) != 0) {
            rc = api_err_set(err, API_ENOMEM, "capture: out of memory");
            goto out;
        }
        uint32_t commit = agent_get32(fh + 4);
        if (commit != 0) {
            if ((rc = capture_commit(r, t, &dbs, &wals, &c, commit, err)) != API_OK)
                goto out;
            c.n = 0;
            t->frames_seen = f + 1;
        }
    }
out:
    free(c.pgnos);
    free(c.frames);
    return rc;
}

static int wal_hook(void *ud, sqlite3 *db, const char *zdb, int nframe)
{
    struct rt *t = ud;
    struct agent_repl *r = t->r;
    struct api_err err;
    (void)zdb;

    if (t->loaded != AGENT_ROLE_PRIMARY || t->log == NULL) {
        log_error("tenant=%s committed while not loaded as primary; marking it broken", t->id);
        pthread_mutex_lock(&t->mu);
        t->broken = 1;
        pthread_mutex_unlock(&t->mu);
        return SQLITE_OK;
    }
    char fp[96];
    snprintf(fp, sizeof(fp), "capture-error-%s", t->id); /* fault tests: an unhealthy tenant */
    int failed = api_failpoint_error(fp) ? api_err_set(&err, API_EIO, "failpoint %s", fp) : capture(r, t, db, nframe, &err);
    if (failed != API_OK) {
        log_error("tenant=%s replication capture failed, refusing further writes: %s", t->id, err.msg);
        pthread_mutex_lock(&t->mu);
        t->broken = 1;
        pthread_mutex_unlock(&t->mu);
        return SQLITE_OK;
    }
    struct agent_log_pos lp;
    agent_log_position(t->log, &lp);
    /* Checkpoints and compaction sync and rewrite files: they run after
     * the write is acknowledged (agent_repl_maintain), not inside it. */
    if ((uint32_t)nframe >= r->cfg.checkpoint_frames || lp.bytes > r->cfg.log_keep_bytes)
        t->maintenance_due = 1;
    return SQLITE_OK;
}

void agent_repl_maintain(struct agent_repl *r, const char *tenant, sqlite3 *db)
{
    struct rt *t = repl_rt_get(r, tenant, 0);
    struct api_err err;
    if (t == NULL || !t->maintenance_due || t->loaded != AGENT_ROLE_PRIMARY || t->log == NULL)
        return;
    t->maintenance_due = 0;
    int nlog = 0, nckpt = 0;
    /* PASSIVE: readers keep their snapshots; the WAL restarts once all of it is in the file */
    if (sqlite3_wal_checkpoint_v2(db, "main", SQLITE_CHECKPOINT_PASSIVE, &nlog, &nckpt) == SQLITE_OK && nlog == nckpt)
        t->ckpt_txid = t->txid; /* checkpoints sync the file */
    struct agent_log_pos lp;
    agent_log_position(t->log, &lp);
    /* only what the file holds may leave the log: after a lost WAL the
     * file is rolled forward from here */
    if (lp.bytes > r->cfg.log_keep_bytes &&
        agent_log_compact(t->log, r->cfg.log_keep_bytes / 2, t->ckpt_txid, &err) != API_OK)
        log_warn("tenant=%s log compaction failed: %s", t->id, err.msg);
}

void agent_repl_on_open(void *ud, const char *tenant, sqlite3 *db)
{
    struct agent_repl *r = ud;
    struct rt *t = repl_rt_get(r, tenant, 0);
    if (t != NULL && t->loaded == AGENT_ROLE_PRIMARY)
        sqlite3_wal_hook(db, wal_hook, t); /* also turns SQLite's auto-checkpoint off */
}

int agent_repl_owns_file(void *ud, const char *tenant)
{
    struct agent_repl *r = ud;
    struct rt *t = repl_rt_get(r, tenant, 0);
    if (t == NULL)
        return 0;
    pthread_mutex_lock(&t->mu);
    int primary = t->loaded == AGENT_ROLE_PRIMARY;
    pthread_mutex_unlock(&t->mu);
    return primary;
}

/* The WAL generation may have ended since the last capture (the last
 * connection closed, checkpointed and deleted it): then the file holds
 * every page and the index is stale. WALFD may be -1 (no WAL file). */
static void sync_generation(struct rt *t, int walfd)
{
    unsigned char hdr[WAL_HDR];
    if (walfd < 0 || read_full(walfd, hdr, WAL_HDR, 0) != 0 || agent_get32(hdr + 16) != t->salt1 ||
        agent_get32(hdr + 20) != t->salt2) {
        idx_clear(&t->idx);
        t->frames_seen = 0;
        t->salt1 = t->salt2 = 0;
    }
}

/* ------------------------------------------------------------------ */
/* replica: apply                                                      */

/* Rewrites the header fields a rollback-mode replica owns (see
 * repl_sum.h): file format 1/1, change counter COUNTER (also as
 * version-valid-for) and the database size. */
static void normalise_page1(unsigned char *p, uint32_t counter, uint32_t npages)
{
    p[18] = 1;
    p[19] = 1;
    agent_put32(p + 24, counter);
    agent_put32(p + 28, npages);
    agent_put32(p + 92, counter);
}

/* An EXCLUSIVE transaction on the replica's file in which records are
 * written through SQLite's own file handle: readers see the state before
 * it or after it, never a mix. One transaction may carry several records
 * (a batch of one tenant), saving the lock round trips of each. Page 1 and
 * the file's size are kept here for the whole transaction: page 1 is
 * written once, at the end, with the change counter bumped once (what
 * makes other connections drop their caches), and the file is resized
 * only when a record changes its size. */
struct apply_txn {
    sqlite3 *db;
    sqlite3_file *fp;
    int open;
    int have_state;     /* size and p1 read */
    int p1_dirty;       /* p1 differs from the file's page 1 */
    sqlite3_int64 size; /* the file's size in bytes as the records left it */
    uint32_t ps, counter;
    unsigned char *p1; /* page 1 as the records left it (normalised) */
    int64_t *times;    /* primary commit times (µs) of the verified records, observed as lag at COMMIT */
    size_t ntimes, cap_times;
};

static void mark_diverged(struct agent_repl *r, struct rt *t, const char *why);

static int apply_begin(struct agent_repl *r, struct rt *t, struct apply_txn *x, struct api_err *err)
{
    int rc;
    memset(x, 0, sizeof(*x));
    if ((rc = agent_store_conn(r->cfg.store, t->id, &x->db, err)) != API_OK)
        return rc;
    if (sqlite3_exec(x->db, "BEGIN EXCLUSIVE", NULL, NULL, NULL) != SQLITE_OK)
        return api_err_set(err, API_EUNAVAILABLE, "tenant '%s': cannot lock the replica: %s", t->id,
                           sqlite3_errmsg(x->db));
    x->open = 1;
    if (sqlite3_file_control(x->db, "main", SQLITE_FCNTL_FILE_POINTER, &x->fp) != SQLITE_OK || x->fp == NULL ||
        x->fp->pMethods == NULL)
        return api_err_set(err, API_EIO, "tenant '%s': no file handle for the replica", t->id);
    return API_OK;
}

/* Writes page 1 (when a record changed the file) and commits, also after
 * a failed apply: what was written is repaired from the log or replaced by
 * a snapshot, as after a crash. A failed page 1 write leaves the file
 * behind the position the records set: the replica asks for a snapshot.
 * The lag of each record is observed here, when readers can see it. */
static void apply_end(struct agent_repl *r, struct rt *t, struct apply_txn *x)
{
    int failed = 0;
    if (x->open && x->p1_dirty && x->size > 0) {
        normalise_page1(x->p1, x->counter + 1, (uint32_t)(x->size / x->ps));
        failed = x->fp->pMethods->xWrite(x->fp, x->p1, (int)x->ps, 0) != SQLITE_OK;
    }
    if (x->open)
        sqlite3_exec(x->db, "COMMIT", NULL, NULL, NULL);
    if (failed)
        mark_diverged(r, t, "writing page 1 failed");
    if (x->ntimes > 0) {
        int64_t now = now_us();
        for (size_t i = 0; i < x->ntimes; i++)
            observe_lag(r, now - x->times[i]);
    }
    x->open = 0;
    free(x->p1);
    free(x->times);
    x->p1 = NULL;
    x->times = NULL;
}

/* Applies the encoded record BUF to the replica's file inside X (see
 * apply_begin). With VERIFY, the running checksum must reach the record's
 * post checksum (API_ECONFLICT otherwise). CHECKED: the caller verified
 * the record's trailing checksum already. */
static int apply_record(struct agent_repl *r, struct rt *t, struct apply_txn *x, const unsigned char *buf,
                        size_t len, int verify, int checked, struct api_err *err)
{
    struct agent_rec rec;
    void *block = NULL;
    const uint32_t *pgnos;
    const unsigned char *pages;
    sqlite3_file *fp = x->fp;
    unsigned char *old = NULL;
    size_t rl;
    int rc;

    if ((rc = (checked ? agent_rec_peek : agent_rec_parse)(buf, len, &rec, &rl, err)) != API_OK ||
        (rc = agent_rec_unpack(buf, &rec, &block, &pgnos, &pages, err)) != API_OK)
        return rc;
    uint32_t ps = rec.page_size, lock = agent_lock_page(ps);
    if (!x->have_state) {
        if (fp->pMethods->xFileSize(fp, &x->size) != SQLITE_OK) {
            rc = api_err_set(err, API_EIO, "tenant '%s': cannot size the replica", t->id);
            goto out;
        }
        if ((x->p1 = malloc(ps)) == NULL) {
            rc = api_err_set(err, API_ENOMEM, "apply: out of memory");
            goto out;
        }
        x->ps = ps;
        if (x->size >= ps) {
            if (fp->pMethods->xRead(fp, x->p1, (int)ps, 0) != SQLITE_OK) {
                rc = api_err_set(err, API_EIO, "tenant '%s': reading page 1", t->id);
                goto out;
            }
            uint32_t fps = (uint32_t)x->p1[16] << 8 | x->p1[17];
            if ((fps == 1 ? 65536 : fps) != ps) {
                rc = api_err_set(err, API_ECONFLICT, "tenant '%s': record page size %u differs from the replica's",
                                 t->id, ps);
                goto out;
            }
            x->counter = agent_get32(x->p1 + 24);
        } else {
            memset(x->p1, 0, ps);
        }
        x->have_state = 1;
    } else if (ps != x->ps) {
        rc = api_err_set(err, API_ECONFLICT, "tenant '%s': record page size %u differs from the replica's", t->id, ps);
        goto out;
    }
    if ((old = malloc(ps)) == NULL) {
        rc = api_err_set(err, API_ENOMEM, "apply: out of memory");
        goto out;
    }
    uint32_t cur = (uint32_t)(x->size / ps);
    uint64_t ck = t->ck;
    for (uint32_t i = 0; i < rec.npages; i++) {
        uint32_t pg = pgnos[i];
        const unsigned char *img = pages + (size_t)i * ps;
        if (pg == 0 || pg > rec.commit_pages || pg == lock)
            continue;
        if (pg == 1) {
            /* the file's page 1 may be behind x->p1: hash and keep x->p1 */
            if (cur >= 1)
                ck ^= agent_page_hash(1, x->p1, ps);
            ck ^= agent_page_hash(1, img, ps);
            memcpy(x->p1, img, ps);
            if (x->size < ps)
                x->size = ps;
            continue;
        }
        if (pg <= cur) {
            if (fp->pMethods->xRead(fp, old, (int)ps, (sqlite3_int64)(pg - 1) * ps) != SQLITE_OK) {
                rc = api_err_set(err, API_EIO, "tenant '%s': reading page %u", t->id, pg);
                goto out;
            }
            ck ^= agent_page_hash(pg, old, ps);
        }
        ck ^= agent_page_hash(pg, img, ps);
        if (fp->pMethods->xWrite(fp, img, (int)ps, (sqlite3_int64)(pg - 1) * ps) != SQLITE_OK) {
            rc = api_err_set(err, API_EIO, "tenant '%s': writing page %u", t->id, pg);
            goto out;
        }
        if ((sqlite3_int64)pg * ps > x->size)
            x->size = (sqlite3_int64)pg * ps;
    }
    for (uint32_t pg = rec.commit_pages + 1; pg <= cur; pg++) {
        if (pg == lock)
            continue;
        if (pg == 1) {
            ck ^= agent_page_hash(1, x->p1, ps);
            continue;
        }
        if (fp->pMethods->xRead(fp, old, (int)ps, (sqlite3_int64)(pg - 1) * ps) != SQLITE_OK) {
            rc = api_err_set(err, API_EIO, "tenant '%s': reading page %u", t->id, pg);
            goto out;
        }
        ck ^= agent_page_hash(pg, old, ps);
    }
    if (x->size != (sqlite3_int64)rec.commit_pages * ps) {
        if (fp->pMethods->xTruncate(fp, (sqlite3_int64)rec.commit_pages * ps) != SQLITE_OK) {
            rc = api_err_set(err, API_EIO, "tenant '%s': resizing the replica", t->id);
            goto out;
        }
        x->size = (sqlite3_int64)rec.commit_pages * ps;
    }
    /* page 1 goes to the file in apply_end, with this size and a new change counter */
    x->p1_dirty = 1;
    /* No xSync: the record is durable in the replica's log, and after an
     * unclean stop load_replica applies the log again. */
    if (verify && ck != rec.post_ck) {
        rc = api_err_set(err, API_ECONFLICT,
                         "tenant '%s': checksum after txid %llu is %016llx, the primary's is %016llx", t->id,
                         (unsigned long long)rec.txid, (unsigned long long)ck, (unsigned long long)rec.post_ck);
        goto out;
    }
    set_position(t, rec.txid, verify ? ck : rec.post_ck);
    atomic_fetch_add(&r->records_applied, 1);
    if (verify) {
        if (x->ntimes == x->cap_times) {
            size_t ncap = x->cap_times ? x->cap_times * 2 : 8;
            int64_t *nt = realloc(x->times, ncap * sizeof(*nt));
            if (nt != NULL) {
                x->times = nt;
                x->cap_times = ncap;
            }
        }
        if (x->ntimes < x->cap_times)
            x->times[x->ntimes++] = (int64_t)rec.time_us;
    }
    rc = API_OK;
out:
    free(old);
    free(block);
    return rc;
}

/* Applies the log's records after the current position. */
static int apply_from_log(struct agent_repl *r, struct rt *t, int verify, struct api_err *err)
{
    struct agent_log_pos lp;
    struct apply_txn x = {0};
    int rc = API_OK;
    agent_log_position(t->log, &lp);
    if (t->txid < lp.last_txid)
        rc = apply_begin(r, t, &x, err);
    while (rc == API_OK && t->txid < lp.last_txid) {
        unsigned char *buf;
        size_t len;
        if ((rc = agent_log_read(t->log, t->txid + 1, &buf, &len, err)) == API_OK) {
            /* no file sync: the replica's log is the durable copy, and after an
             * unclean stop the log is applied again (load_replica) */
            rc = apply_record(r, t, &x, buf, len, verify, 0, err);
            free(buf);
        }
    }
    apply_end(r, t, &x);
    return rc;
}

static void mark_diverged(struct agent_repl *r, struct rt *t, const char *why)
{
    pthread_mutex_lock(&t->mu);
    t->need_snapshot = 1;
    t->mismatches++;
    pthread_mutex_unlock(&t->mu);
    atomic_fetch_add(&r->mismatches, 1);
    log_warn("tenant=%s replica diverged, asking for a snapshot: %s", t->id, why);
}

static int load_replica(struct agent_repl *r, struct rt *t, struct api_err *err)
{
    char db[4096];
    uint32_t page_size;
    int is_wal, rc;
    off_t size;
    uint64_t ptxid, pck;
    struct agent_log_pos lp;

    agent_store_path(r->cfg.store, t->id, db, sizeof(db));
    if (db_header(db, &page_size, &is_wal, &size) != 0) {
        /* Nothing usable here (a new tenant, or a file cut short by a
         * crash): the copy is born as the canonical empty database, the
         * position every tenant starts from on its primary too (store.h),
         * so a new tenant needs no snapshot. Should the primary not be
         * there (older, or created otherwise), the checksums differ and the
         * primary sends a snapshot as before. */
        uint64_t ck0 = empty_ck();
        if ((rc = agent_store_create(r->cfg.store, t->id, 0, 1, err)) != API_OK ||
            (rc = open_log(r, t, 0, ck0, err)) != API_OK)
            return rc;
        agent_log_position(t->log, &lp);
        set_position(t, 0, ck0);
        if (lp.base_txid != 0 || lp.base_ck != ck0) {
            if ((rc = agent_log_reset(t->log, 0, ck0, err)) != API_OK)
                return rc;
        } else if (lp.last_txid > 0) {
            /* the log holds the whole history: apply it all again */
            if ((rc = apply_from_log(r, t, 1, err)) == API_ECONFLICT)
                mark_diverged(r, t, err->msg);
            else if (rc != API_OK)
                return rc;
            if ((rc = write_pos(r, t, err)) != API_OK)
                return rc;
        }
        goto loaded;
    }
    if (is_wal) {
        /* a primary becoming a replica: settle its log and file, then leave WAL */
        if ((rc = load_primary(r, t, err)) != API_OK ||
            (rc = raw_exec(db, "PRAGMA journal_mode=DELETE", err)) != API_OK)
            return rc;
        idx_clear(&t->idx);
        if ((rc = write_pos(r, t, err)) != API_OK)
            return rc;
        goto loaded;
    }
    if ((rc = open_log(r, t, 0, AGENT_CK_EMPTY, err)) != API_OK)
        return rc;
    agent_log_position(t->log, &lp);
    if (r->cfg.verify_on_load) {
        /* After an unclean stop neither the file (never synced on a replica)
         * nor the position file can be trusted: apply the whole log again
         * (page images are idempotent, and applying a range over a later
         * state ends in the range's final state), then check the file. */
        set_position(t, lp.base_txid, lp.base_ck);
        if ((rc = apply_from_log(r, t, 0, err)) == API_ECONFLICT) {
            mark_diverged(r, t, err->msg);
            goto loaded;
        } else if (rc != API_OK) {
            return rc;
        }
        int fd = open(db, O_RDONLY | O_CLOEXEC);
        uint64_t ck = 0;
        if (fd >= 0 && db_header(db, &page_size, &is_wal, &size) == 0 &&
            agent_file_checksum(fd, page_size, (uint32_t)(size / page_size), &ck) != 0)
            ck = 0;
        if (fd >= 0) {
            if (fdatasync(fd) != 0)
                log_warn("tenant=%s fdatasync: %s", t->id, strerror(errno));
            close(fd);
        }
        set_position(t, lp.last_txid, ck);
        if (ck != lp.last_ck)
            mark_diverged(r, t, "after an unclean stop the log does not reproduce the primary's checksum");
        if ((rc = write_pos(r, t, err)) != API_OK)
            return rc;
        goto loaded;
    }
    if (read_pos(r, t->id, &ptxid, &pck) != 0 || ptxid > lp.last_txid || ptxid < lp.base_txid) {
        /* no usable position: trust only a full checksum */
        int fd = open(db, O_RDONLY | O_CLOEXEC);
        uint64_t ck = 0;
        if (fd >= 0) {
            if (agent_file_checksum(fd, page_size, (uint32_t)(size / page_size), &ck) != 0)
                ck = 0;
            close(fd);
        }
        if (ck == lp.last_ck) {
            set_position(t, lp.last_txid, ck);
        } else {
            set_position(t, lp.base_txid, ck);
            mark_diverged(r, t, "no position file matches the database");
        }
        goto loaded;
    }
    set_position(t, ptxid, pck);
    if (ptxid < lp.last_txid) {
        /* killed between log append and apply: apply again (page images
         * are idempotent), then check the whole file once */
        if ((rc = apply_from_log(r, t, 0, err)) != API_OK)
            return rc;
        int fd = open(db, O_RDONLY | O_CLOEXEC);
        uint64_t ck = 0;
        if (fd >= 0 && db_header(db, &page_size, &is_wal, &size) == 0 &&
            agent_file_checksum(fd, page_size, (uint32_t)(size / page_size), &ck) != 0)
            ck = 0;
        if (fd >= 0)
            close(fd);
        if (ck != lp.last_ck)
            mark_diverged(r, t, "re-applied log does not reproduce the primary's checksum");
        set_position(t, lp.last_txid, ck);
        if ((rc = write_pos(r, t, err)) != API_OK)
            return rc;
        log_info("tenant=%s re-applied records up to txid %llu after a crash", t->id,
                 (unsigned long long)lp.last_txid);
    }
loaded:
    pthread_mutex_lock(&t->mu);
    t->loaded = AGENT_ROLE_REPLICA;
    pthread_mutex_unlock(&t->mu);
    return API_OK;
}

int repl_receive(struct agent_repl *r, struct rt *t, const unsigned char *buf, size_t len, struct api_err *err)
{
    size_t off = 0, first = 0, end = 0;
    int appended = 0, sync = 0, rc = API_OK;

    if ((rc = agent_repl_ensure(r, t->id, AGENT_ROLE_REPLICA, err)) != API_OK)
        return rc;
    if (t->need_snapshot)
        return API_OK;
    while (off < len) {
        struct agent_rec rec;
        size_t rl;
        struct agent_log_pos lp;
        if ((rc = agent_rec_parse(buf + off, len - off, &rec, &rl, err)) != API_OK)
            return rc;
        agent_log_position(t->log, &lp);
        if (rec.epoch < t->max_epoch_seen) {
            log_warn("tenant=%s refusing txid %llu from epoch %llu: epoch %llu already seen", t->id,
                     (unsigned long long)rec.txid, (unsigned long long)rec.epoch,
                     (unsigned long long)t->max_epoch_seen);
            break;
        }
        if (rec.txid <= lp.last_txid) {
            off += rl; /* already held */
            continue;
        }
        if (rec.txid != lp.last_txid + 1 || rec.pre_ck != lp.last_ck) {
            mark_diverged(r, t, "record does not continue the local log");
            break;
        }
        if ((rc = agent_log_append(t->log, buf + off, rl, err)) != API_OK)
            return rc;
        t->max_epoch_seen = rec.epoch;
        if (appended++ == 0)
            first = off;
        sync |= (rec.flags & AGENT_REC_F_SYNC) != 0;
        off += rl;
        end = off;
    }
    /* Only quorum records wait for the disk (repl.h); the sync covers every
     * earlier append of this log too. */
    if (sync && (rc = agent_log_sync(t->log, err)) != API_OK)
        return rc;
    /* apply what was just appended from BUF (no read back from the log),
     * all of it in one transaction */
    struct apply_txn x = {0};
    if (appended)
        rc = apply_begin(r, t, &x, err);
    for (off = first; rc == API_OK && appended && off < end;) {
        struct agent_rec rec;
        size_t rl;
        if ((rc = agent_rec_peek(buf + off, end - off, &rec, &rl, err)) != API_OK)
            break;
        if (rec.txid == t->txid + 1) /* verified by the loop above */
            rc = apply_record(r, t, &x, buf + off, rl, 1, 1, err);
        off += rl;
    }
    apply_end(r, t, &x);
    if (rc == API_OK && !t->need_snapshot)
        rc = apply_from_log(r, t, 1, err); /* anything older still unapplied */
    struct agent_log_pos lp;
    agent_log_position(t->log, &lp);
    struct api_err ce;
    if (rc == API_OK && lp.bytes > r->cfg.log_keep_bytes &&
        agent_log_compact(t->log, r->cfg.log_keep_bytes / 2, t->txid, &ce) != API_OK)
        log_warn("tenant=%s log compaction failed: %s", t->id, ce.msg);
    if (rc == API_ECONFLICT) {
        mark_diverged(r, t, err->msg);
        rc = API_OK;
    }
    /* <db>-pos is read only after a clean stop (load_replica), and one
     * older than the file is safe there (the log is applied again over the
     * later state, then the file checksummed): the engine writes it once
     * at its end instead of three system calls per apply here. */
    t->pos_dirty = 1;
    hub_applied(r->hub);
    return rc;
}

/* ------------------------------------------------------------------ */
/* snapshots                                                           */

int repl_snapshot_make(struct agent_repl *r, struct rt *t, unsigned char **out, size_t *out_len, struct api_err *err)
{
    char db[4096], wal[4200];
    int rc, dbfd = -1, walfd = -1;
    unsigned char *buf = NULL, *raw = NULL;
    size_t cap, len = SNAP_HDR;
    uint64_t ck = AGENT_CK_EMPTY;

    if ((rc = agent_repl_ensure(r, t->id, AGENT_ROLE_PRIMARY, err)) != API_OK)
        return rc;
    agent_store_path(r->cfg.store, t->id, db, sizeof(db));
    snprintf(wal, sizeof(wal), "%s-wal", db);
    if ((dbfd = open(db, O_RDONLY | O_CLOEXEC)) < 0)
        return api_err_set(err, API_EIO, "tenant '%s': cannot open '%s': %s", t->id, db, strerror(errno));
    walfd = open(wal, O_RDONLY | O_CLOEXEC);
    sync_generation(t, walfd);
    uint32_t ps = t->page_size, lock = agent_lock_page(ps), npages = t->npages;
    cap = SNAP_HDR + (size_t)LZ4_compressBound((int)(SNAP_CHUNK_PAGES * ps)) + 64;
    buf = malloc(cap);
    raw = malloc((size_t)SNAP_CHUNK_PAGES * ps);
    if (buf == NULL || raw == NULL) {
        rc = api_err_set(err, API_ENOMEM, "snapshot: out of memory");
        goto fail;
    }
    for (uint32_t first = 1; first <= npages; first += SNAP_CHUNK_PAGES) {
        uint32_t n = npages - first + 1 < SNAP_CHUNK_PAGES ? npages - first + 1 : SNAP_CHUNK_PAGES;
        for (uint32_t i = 0; i < n; i++) {
            uint32_t pg = first + i;
            unsigned char *img = raw + (size_t)i * ps;
            if (pg == lock) {
                memset(img, 0, ps);
                continue;
            }
            if (old_image(t, &(struct pagesrc){.fd = dbfd}, &(struct pagesrc){.fd = walfd}, pg, img) != 0) {
                rc = api_err_set(err, API_EIO, "tenant '%s': reading page %u for a snapshot", t->id, pg);
                goto fail;
            }
            ck ^= agent_page_hash(pg, img, ps);
        }
        int bound = LZ4_compressBound((int)(n * ps));
        if (len + 8 + (size_t)bound > cap) {
            size_t ncap = (len + 8 + (size_t)bound) * 2;
            unsigned char *nb = realloc(buf, ncap);
            if (nb == NULL) {
                rc = api_err_set(err, API_ENOMEM, "snapshot: out of memory");
                goto fail;
            }
            buf = nb;
            cap = ncap;
        }
        int c = LZ4_compress_default((const char *)raw, (char *)buf + len + 8, (int)(n * ps), bound);
        if (c <= 0) {
            rc = api_err_set(err, API_EINTERNAL, "snapshot: lz4 failed");
            goto fail;
        }
        agent_put32(buf + len, n * ps);
        agent_put32(buf + len + 4, (uint32_t)c);
        len += 8 + (size_t)c;
    }
    if (ck != t->ck) {
        log_error("tenant=%s snapshot checksum %016llx differs from the tracked %016llx; serving the file's",
                  t->id, (unsigned long long)ck, (unsigned long long)t->ck);
        atomic_fetch_add(&r->mismatches, 1);
        rc = api_err_set(err, API_EINTERNAL, "tenant '%s': checksum drift on the primary", t->id);
        goto fail;
    }
    memcpy(buf, snap_magic, 4);
    agent_put32(buf + 4, ps);
    agent_put64(buf + 8, t->txid);
    agent_put64(buf + 16, ck);
    agent_put32(buf + 24, npages);
    agent_put32(buf + 28, 0);
    agent_put64(buf + 32, (uint64_t)t->epoch);
    agent_put64(buf + 40, agent_crc64(0, buf, 40));
    free(raw);
    close(dbfd);
    if (walfd >= 0)
        close(walfd);
    atomic_fetch_add(&r->snapshots_sent, 1);
    *out = buf;
    *out_len = len;
    return API_OK;
fail:
    free(buf);
    free(raw);
    if (dbfd >= 0)
        close(dbfd);
    if (walfd >= 0)
        close(walfd);
    return rc;
}

int repl_snapshot_install(struct agent_repl *r, struct rt *t, const unsigned char *buf, size_t len,
                          struct api_err *err)
{
    char db[4096], tmp[4200], p[4200];
    int rc, fd = -1;
    unsigned char *raw = NULL;

    if ((rc = agent_repl_ensure(r, t->id, AGENT_ROLE_REPLICA, err)) != API_OK)
        return rc;
    if (len < SNAP_HDR || memcmp(buf, snap_magic, 4) != 0 || agent_get64(buf + 40) != agent_crc64(0, buf, 40))
        return api_err_set(err, API_EINVAL, "tenant '%s': snapshot has a bad header", t->id);
    uint32_t ps = agent_get32(buf + 4), npages = agent_get32(buf + 24), lock;
    uint64_t txid = agent_get64(buf + 8), want_ck = agent_get64(buf + 16), ck = AGENT_CK_EMPTY;
    if (ps < 512 || ps > 65536 || (ps & (ps - 1)) != 0)
        return api_err_set(err, API_EINVAL, "tenant '%s': snapshot page size %u", t->id, ps);
    lock = agent_lock_page(ps);
    agent_store_path(r->cfg.store, t->id, db, sizeof(db));
    if ((rc = ensure_parent(db, err)) != API_OK)
        return rc;
    snprintf(tmp, sizeof(tmp), "%s-snap.tmp", db);
    if ((fd = open(tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644)) < 0)
        return api_err_set(err, API_EIO, "cannot create '%s': %s", tmp, strerror(errno));
    raw = malloc((size_t)SNAP_CHUNK_PAGES * ps);
    if (raw == NULL) {
        rc = api_err_set(err, API_ENOMEM, "snapshot: out of memory");
        goto fail;
    }
    size_t off = SNAP_HDR;
    uint32_t pg = 1;
    while (pg <= npages) {
        if (off + 8 > len) {
            rc = api_err_set(err, API_EINVAL, "tenant '%s': snapshot is truncated", t->id);
            goto fail;
        }
        uint32_t rawlen = agent_get32(buf + off), clen = agent_get32(buf + off + 4);
        uint32_t n = rawlen / ps;
        if (rawlen % ps != 0 || n == 0 || n > SNAP_CHUNK_PAGES || n > npages - pg + 1 || off + 8 + clen > len ||
            LZ4_decompress_safe((const char *)buf + off + 8, (char *)raw, (int)clen, (int)rawlen) != (int)rawlen) {
            rc = api_err_set(err, API_EINVAL, "tenant '%s': snapshot chunk at page %u is corrupt", t->id, pg);
            goto fail;
        }
        off += 8 + clen;
        for (uint32_t i = 0; i < n; i++, pg++) {
            unsigned char *img = raw + (size_t)i * ps;
            if (pg != lock)
                ck ^= agent_page_hash(pg, img, ps);
            if (pg == 1)
                normalise_page1(img, 1, npages);
        }
        ssize_t w = pwrite(fd, raw, rawlen, (off_t)(pg - n - 1) * ps);
        if (w != (ssize_t)rawlen) {
            rc = api_err_set(err, API_EIO, "writing '%s': %s", tmp, strerror(errno));
            goto fail;
        }
    }
    if (ck != want_ck) {
        rc = api_err_set(err, API_ECONFLICT, "tenant '%s': snapshot checksum %016llx, expected %016llx", t->id,
                         (unsigned long long)ck, (unsigned long long)want_ck);
        goto fail;
    }
    if (ftruncate(fd, (off_t)npages * ps) != 0 || fsync(fd) != 0) {
        rc = api_err_set(err, API_EIO, "syncing '%s': %s", tmp, strerror(errno));
        goto fail;
    }
    close(fd);
    fd = -1;
    free(raw);
    raw = NULL;
    agent_store_evict(t->id);
    if (rename(tmp, db) != 0) {
        rc = api_err_set(err, API_EIO, "installing '%s': %s", db, strerror(errno));
        goto fail;
    }
    static const char *const stale[] = {"-journal", "-wal", "-shm"};
    for (size_t i = 0; i < 3; i++) {
        snprintf(p, sizeof(p), "%s%s", db, stale[i]);
        unlink(p);
    }
    if ((rc = agent_log_reset(t->log, txid, ck, err)) != API_OK)
        return rc;
    pthread_mutex_lock(&t->mu);
    t->need_snapshot = 0;
    t->snapshots++;
    if (agent_get64(buf + 32) > t->max_epoch_seen)
        t->max_epoch_seen = agent_get64(buf + 32);
    pthread_mutex_unlock(&t->mu);
    set_position(t, txid, ck);
    atomic_fetch_add(&r->snapshots_installed, 1);
    log_info("tenant=%s snapshot installed txid=%llu pages=%u", t->id, (unsigned long long)txid, npages);
    hub_applied(r->hub);
    return write_pos(r, t, err);
fail:
    free(raw);
    if (fd >= 0)
        close(fd);
    unlink(tmp);
    return rc;
}

/* ------------------------------------------------------------------ */
/* roles                                                               */

struct agent_repl_tenant *agent_repl_tenant(struct agent_repl *r, const char *tenant)
{
    return (struct agent_repl_tenant *)repl_rt_get(r, tenant, 0);
}

int agent_repl_ready_txid(struct agent_repl_tenant *rec, enum agent_role want, uint64_t *txid)
{
    struct rt *t = (struct rt *)rec;
    pthread_mutex_lock(&t->mu);
    int ready = t->loaded == want && (want != AGENT_ROLE_PRIMARY || (t->want == AGENT_ROLE_PRIMARY && !t->broken));
    *txid = t->txid;
    pthread_mutex_unlock(&t->mu);
    return ready;
}

int agent_repl_ensure(struct agent_repl *r, const char *tenant, enum agent_role want, struct api_err *err)
{
    struct rt *t = repl_rt_get(r, tenant, 1);
    enum agent_role declared, loaded;
    int broken, rc;

    if (t == NULL)
        return api_err_set(err, API_ENOMEM, "out of memory");
    pthread_mutex_lock(&t->mu);
    declared = t->want;
    loaded = t->loaded;
    broken = t->broken;
    pthread_mutex_unlock(&t->mu);
    if (want == AGENT_ROLE_PRIMARY && declared != AGENT_ROLE_PRIMARY)
        return api_err_set(err, API_ENOTPRIMARY, "tenant '%s': this node is not its primary", tenant);
    if (loaded == want) {
        if (broken && want == AGENT_ROLE_PRIMARY)
            return api_err_set(err, API_EUNAVAILABLE, "tenant '%s': replication capture failed; writes are refused",
                               tenant);
        return API_OK;
    }
    /* switching modes: no connection may keep the old mode's state */
    agent_store_evict(tenant);
    int unborn = repl_unborn(r, t);
    if (want == AGENT_ROLE_PRIMARY)
        rc = unborn ? birth_primary(r, t, err) : load_primary(r, t, err);
    else
        rc = load_replica(r, t, err); /* born there when it has no file */
    if (unborn && rc == API_OK) {
        pthread_mutex_lock(&t->mu);
        t->unborn = 0;
        pthread_mutex_unlock(&t->mu);
    }
    if (rc != API_OK) {
        log_error("tenant=%s cannot load as %s: %s", tenant, want == AGENT_ROLE_PRIMARY ? "primary" : "replica",
                  err->msg);
        return rc;
    }
    if (want == AGENT_ROLE_PRIMARY)
        hub_notify(r->hub, tenant);
    return API_OK;
}

struct latch_job {
    void (*fn)(void *);
    void *arg;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int done;
};

static void latch_run(void *p)
{
    struct latch_job *j = p;
    j->fn(j->arg);
    pthread_mutex_lock(&j->mu);
    j->done = 1;
    pthread_cond_signal(&j->cv);
    pthread_mutex_unlock(&j->mu);
}

void repl_run_on_worker(struct agent_repl *r, const char *tenant, void (*fn)(void *), void *arg)
{
    struct latch_job j = {.fn = fn, .arg = arg};
    pthread_mutex_init(&j.mu, NULL);
    pthread_cond_init(&j.cv, NULL);
    api_workq_submit(r->cfg.workers, agent_repl_key(tenant), latch_run, &j);
    pthread_mutex_lock(&j.mu);
    while (!j.done)
        pthread_cond_wait(&j.cv, &j.mu);
    pthread_mutex_unlock(&j.mu);
    pthread_mutex_destroy(&j.mu);
    pthread_cond_destroy(&j.cv);
}
