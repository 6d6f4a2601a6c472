/* nodeagent/store.c: tenant files and per-slot connection caches (store.h). */
#include "nodeagent/store.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "api/log.h"
#include "api/map.h"
#include "api/names.h"
#include "api/workq.h"
#include "nodeagent/stmtcache.h"

/* prepared statements kept per cached connection (stmtcache.h) */
#define STORE_STMTS_PER_CONN 16

struct agent_store {
    char *data_dir;
    /* One budget for all slots: tenants hash to slots unevenly, and a
     * fixed per-slot share made a slot with a few more tenants than its
     * share miss on every request of a round-robin load (LRU's worst case). */
    size_t max_open;
    atomic_size_t open_total;
    int cache_kib;
    void (*on_open)(void *, const char *, sqlite3 *);
    void *on_open_ud;
    int (*owned)(void *, const char *);
    void *owned_ud;
};

/* The tag first: its address, the one agent_store_conn_if_open gives out,
 * is the entry's (a prefetch hint fetches the entry from there: hot.h). */
struct cached {
    void *tag; /* agent_store_conn_if_open's caller's */
    sqlite3 *db;
    struct agent_stmt_cache *stmts; /* created on first use; freed before db closes */
    int used;                       /* read since eviction last passed (CLOCK's reference bit) */
    int exclusive;                  /* opened in exclusive locking mode (open_db) */
    struct cached *prev, *next;     /* head = most recently opened or given a second chance */
    char tenant[64];
};

struct conn_cache {
    struct agent_store *st;
    struct api_map *by_tenant;
    struct cached *head, *tail;
    size_t n;
};

/* A worker pool's slot carries its cache (api_workq_slot_local), because a
 * tenant's jobs always run on its slot but not always on the same thread;
 * code outside a pool job (startup, tests) uses one per thread. */
static __thread struct conn_cache *tl_cache;

/* Connections of agent_store_open (a Hrana stream's, a cursor's) open per
 * file, by SQLite's own name for it: while a file has one, its cached
 * connection opens in normal locking mode (open_db). Process-wide: the
 * files of different stores have different names. */
static pthread_mutex_t streams_mu = PTHREAD_MUTEX_INITIALIZER;
static struct api_map *streams_open; /* filename -> count, as a pointer */

static size_t streams_on(const char *file)
{
    pthread_mutex_lock(&streams_mu);
    size_t n = streams_open != NULL ? (size_t)(uintptr_t)api_map_get(streams_open, file) : 0;
    pthread_mutex_unlock(&streams_mu);
    return n;
}

/* Counts a stream connection to FILE in (DELTA 1) or out (-1). */
static int streams_add(const char *file, int delta)
{
    int oom = 0;
    pthread_mutex_lock(&streams_mu);
    if (streams_open == NULL && delta > 0 && (streams_open = api_map_new()) == NULL)
        oom = 1;
    if (!oom && streams_open != NULL) { /* none counted: nothing to count down */
        size_t n = (size_t)(uintptr_t)api_map_get(streams_open, file);
        n = delta > 0 ? n + 1 : n > 0 ? n - 1 : 0;
        if (n > 0)
            api_map_put(streams_open, file, (void *)(uintptr_t)n, &oom);
        else
            api_map_del(streams_open, file);
        if (api_map_len(streams_open) == 0) {
            api_map_free(streams_open, NULL);
            streams_open = NULL;
        }
    }
    pthread_mutex_unlock(&streams_mu);
    return oom ? -1 : 0;
}

static struct conn_cache **cache_ref(void)
{
    void **local = api_workq_slot_local();
    return local != NULL ? (struct conn_cache **)local : &tl_cache;
}

/* SQLite's own page cache, and ours: the same but for xFetch, which also
 * notes the pages it hands out while the thread watches. */
static sqlite3_pcache_methods2 pcache_inner, pcache_watched;
static __thread int tl_watching;
static __thread const void *tl_pages[3]; /* the first page, the next, the first's page cache */

static sqlite3_pcache_page *watched_fetch(sqlite3_pcache *cache, unsigned key, int create)
{
    sqlite3_pcache_page *pg = pcache_inner.xFetch(cache, key, create);
    if (tl_watching && pg != NULL) {
        if (tl_pages[0] == NULL) {
            tl_pages[0] = pg->pBuf;
            tl_pages[2] = cache;
        } else if (tl_pages[1] == NULL && tl_pages[0] != pg->pBuf) {
            tl_pages[1] = pg->pBuf;
        }
    }
    return pg;
}

void agent_store_process_init(void)
{
    (void)sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0); /* SQLITE_MISUSE once SQLite runs: then as it was */
    if (pcache_inner.xFetch == NULL && sqlite3_config(SQLITE_CONFIG_GETPCACHE2, &pcache_inner) == SQLITE_OK &&
        pcache_inner.xFetch != NULL) {
        pcache_watched = pcache_inner;
        pcache_watched.xFetch = watched_fetch;
        if (sqlite3_config(SQLITE_CONFIG_PCACHE2, &pcache_watched) != SQLITE_OK)
            memset(&pcache_inner, 0, sizeof(pcache_inner)); /* SQLite runs already: as it was */
    }
}

void agent_store_pages_watch(void)
{
    tl_pages[0] = tl_pages[1] = tl_pages[2] = NULL;
    tl_watching = 1;
}

void agent_store_pages_seen(const void *pages[3])
{
    tl_watching = 0;
    pages[0] = tl_pages[0];
    pages[1] = tl_pages[1];
    pages[2] = tl_pages[2];
}

int agent_store_new(const struct agent_store_config *cfg, struct agent_store **out, struct api_err *err)
{
    struct agent_store *st = calloc(1, sizeof(*st));
    char path[4096];

    if (st == NULL || (st->data_dir = strdup(cfg->data_dir)) == NULL) {
        free(st);
        return api_err_set(err, API_ENOMEM, "store: out of memory");
    }
    st->max_open = cfg->max_open ? cfg->max_open : 64;
    st->cache_kib = cfg->cache_kib > 0 ? cfg->cache_kib : 256;
    snprintf(path, sizeof(path), "%s/tenants", st->data_dir);
    if ((mkdir(st->data_dir, 0755) != 0 && errno != EEXIST) || (mkdir(path, 0755) != 0 && errno != EEXIST)) {
        int rc = api_err_set(err, API_EIO, "cannot create data directory '%s': %s", path, strerror(errno));
        agent_store_free(st);
        return rc;
    }
    *out = st;
    return API_OK;
}

void agent_store_set_on_open(struct agent_store *st, void (*fn)(void *, const char *, sqlite3 *), void *ud)
{
    st->on_open = fn;
    st->on_open_ud = ud;
}

void agent_store_set_owned(struct agent_store *st, int (*fn)(void *, const char *), void *ud)
{
    st->owned = fn;
    st->owned_ud = ud;
}

void agent_store_free(struct agent_store *st)
{
    if (st == NULL)
        return;
    free(st->data_dir);
    free(st);
}

static unsigned shard_of(const char *tenant)
{
    return (unsigned)(api_hash_str(tenant, strlen(tenant)) & 0xff);
}

void agent_store_path(const struct agent_store *st, const char *tenant, char *out, size_t cap)
{
    snprintf(out, cap, "%s/tenants/%02x/%s.db", st->data_dir, shard_of(tenant), tenant);
}

int agent_store_exists(const struct agent_store *st, const char *tenant)
{
    char path[4096];
    agent_store_path(st, tenant, path, sizeof(path));
    return access(path, F_OK) == 0;
}

/* Opens TENANT's file at PATH into *OUT. EXCLUSIVE (may be NULL: a stream's
 * connection) asks for exclusive locking and says whether it was given: see
 * below. */
static int open_db(const struct agent_store *st, const char *tenant, const char *path, sqlite3 **out,
                   int *exclusive, struct api_err *err)
{
    sqlite3 *db = NULL;
    char pragmas[320];
    int owned = st->owned != NULL && tenant != NULL && st->owned(st->owned_ud, tenant);
    int rc = sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, owned ? "unix-excl" : NULL);

    if (rc != SQLITE_OK) {
        int code = rc == SQLITE_CANTOPEN ? API_ENOTENANT : API_EIO;
        api_err_set(err, code, "open '%s': %s", path, db ? sqlite3_errmsg(db) : sqlite3_errstr(rc));
        sqlite3_close(db);
        return code;
    }
    /* synchronous=NORMAL: a commit does not sync the WAL, because the
     * replication log is synced before the write is acknowledged and a
     * primary rolls its file forward from the log after a crash (repl.c).
     * The journal mode is the file's own: WAL on a primary, rollback on a
     * replica (replication switches it); a new file is born in WAL
     * (agent_store_create). */
    /* A primary's connection cached by its worker slot is the only one to
     * its file while no stream has one (streams_on): it locks in exclusive
     * mode, set before it first reads, so SQLite keeps the WAL index in the
     * connection's own memory and a read takes none of the WAL's locks,
     * memory barriers and mutexes (the barrier takes one process-wide
     * mutex, so two loops reading bounced its line between their cores).
     * Measured over 1,000 tenants: agent CPU per read 24.7 -> 21.9 us (16
     * connections), 23.0 -> 20.9 (64). A stream's connection needs the
     * shared index: agent_store_open closes an exclusive cached one first,
     * and until the stream closes the cached one reopens in normal mode. */
    int excl = exclusive != NULL && owned && api_workq_slot_local() != NULL &&
               streams_on(sqlite3_db_filename(db, "main")) == 0;
    if (exclusive != NULL)
        *exclusive = excl;
    snprintf(pragmas, sizeof(pragmas),
             "%sPRAGMA synchronous=NORMAL; PRAGMA cache_size=-%d; PRAGMA busy_timeout=%d; PRAGMA foreign_keys=ON;",
             excl ? "PRAGMA locking_mode=EXCLUSIVE; " : "", st->cache_kib, AGENT_STORE_BUSY_MS);
    char *msg = NULL;
    if (sqlite3_exec(db, pragmas, NULL, NULL, &msg) != SQLITE_OK) {
        api_err_set(err, API_EIO, "configure '%s': %s", path, msg ? msg : "?");
        sqlite3_free(msg);
        sqlite3_close(db);
        return API_EIO;
    }
    if (st->on_open != NULL && tenant != NULL)
        st->on_open(st->on_open_ud, tenant, db);
    *out = db;
    return API_OK;
}

void agent_store_empty_image(int wal, unsigned char page[AGENT_STORE_PAGE_SIZE])
{
    /* https://www.sqlite.org/fileformat2.html, section 1.3 (header) and 1.6 (b-tree page header) */
    static const unsigned char magic[16] = "SQLite format 3";
    memset(page, 0, AGENT_STORE_PAGE_SIZE);
    memcpy(page, magic, 16);
    page[16] = AGENT_STORE_PAGE_SIZE >> 8; /* page size, big-endian */
    page[17] = AGENT_STORE_PAGE_SIZE & 0xff;
    page[18] = page[19] = wal ? 2 : 1; /* file format write/read version: 2 = WAL */
    page[21] = 64;                     /* max embedded payload fraction (fixed) */
    page[22] = 32;                     /* min embedded payload fraction (fixed) */
    page[23] = 32;                     /* leaf payload fraction (fixed) */
    page[27] = 1;                      /* file change counter */
    page[31] = 1;                      /* database size in pages */
    /* 32-91 stay zero: no freelist, schema cookie 0 and schema format 0 (no
     * schema yet), default encoding chosen at the first schema write */
    page[95] = 1; /* version-valid-for = the change counter: the size above is valid */
    /* SQLITE_VERSION_NUMBER of the writer, fixed at 3.40.1 (Debian 12) so
     * the image, and its checksum, are the same whatever library a node has */
    page[96] = 0x00;
    page[97] = 0x2e;
    page[98] = 0x63;
    page[99] = 0x01;
    page[100] = 0x0d; /* table b-tree leaf (sqlite_schema), no cells */
    page[105] = AGENT_STORE_PAGE_SIZE >> 8; /* cell content area starts at the page end */
    page[106] = AGENT_STORE_PAGE_SIZE & 0xff;
}

int agent_store_is_empty_image(const unsigned char *page, size_t len)
{
    unsigned char img[AGENT_STORE_PAGE_SIZE];
    if (len != AGENT_STORE_PAGE_SIZE)
        return 0;
    agent_store_empty_image(page[18] == 2, img);
    return memcmp(img, page, len) == 0;
}

int agent_store_create(struct agent_store *st, const char *tenant, int wal, int overwrite, struct api_err *err)
{
    char path[4096], dir[4096];
    unsigned char img[AGENT_STORE_PAGE_SIZE];
    int rc, fd;

    if ((rc = api_tenant_id_check(tenant, strlen(tenant), err)) != API_OK)
        return rc;
    snprintf(dir, sizeof(dir), "%s/tenants/%02x", st->data_dir, shard_of(tenant));
    if (mkdir(dir, 0755) != 0 && errno != EEXIST)
        return api_err_set(err, API_EIO, "tenant '%s': cannot create '%s': %s", tenant, dir, strerror(errno));
    agent_store_path(st, tenant, path, sizeof(path));
    fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC | (overwrite ? O_TRUNC : O_EXCL), 0644);
    if (fd < 0 && errno == EEXIST)
        return api_err_set(err, API_ECONFLICT, "tenant '%s': '%s' exists", tenant, path);
    if (fd < 0)
        return api_err_set(err, API_EIO, "tenant '%s': cannot create '%s': %s", tenant, path, strerror(errno));
    agent_store_empty_image(wal, img);
    ssize_t w = pwrite(fd, img, sizeof(img), 0);
    if (w != (ssize_t)sizeof(img)) {
        rc = api_err_set(err, API_EIO, "tenant '%s': writing '%s': %s", tenant, path,
                         w < 0 ? strerror(errno) : "short write");
        close(fd);
        unlink(path); /* a torn new file holds nothing */
        return rc;
    }
    close(fd);
    return API_OK;
}

static void cache_unlink(struct conn_cache *c, struct cached *e)
{
    if (e->prev)
        e->prev->next = e->next;
    else
        c->head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        c->tail = e->prev;
    e->prev = e->next = NULL;
}

static void cache_push_front(struct conn_cache *c, struct cached *e)
{
    e->next = c->head;
    e->prev = NULL;
    if (c->head)
        c->head->prev = e;
    c->head = e;
    if (c->tail == NULL)
        c->tail = e;
}

static void cache_drop(struct conn_cache *c, struct cached *e)
{
    cache_unlink(c, e);
    api_map_del(c->by_tenant, e->tenant);
    agent_stmt_cache_free(e->stmts);
    sqlite3_close_v2(e->db);
    free(e);
    c->n--;
    atomic_fetch_sub(&c->st->open_total, 1);
}

void agent_store_evict(const char *tenant)
{
    struct conn_cache *c = *cache_ref();
    struct cached *e;
    if (c == NULL || (e = api_map_get(c->by_tenant, tenant)) == NULL)
        return;
    cache_drop(c, e);
}

int agent_store_remove(struct agent_store *st, const char *tenant, struct api_err *err)
{
    static const char *const suffixes[] = {"", "-wal", "-shm", "-journal", "-log", "-log.tmp", "-pos", "-snap.tmp"};
    char path[4096], p[4200];
    int rc;

    if ((rc = api_tenant_id_check(tenant, strlen(tenant), err)) != API_OK)
        return rc;
    agent_store_evict(tenant);
    agent_store_path(st, tenant, path, sizeof(path));
    for (size_t i = 0; i < sizeof(suffixes) / sizeof(suffixes[0]); i++) {
        snprintf(p, sizeof(p), "%s%s", path, suffixes[i]);
        if (unlink(p) != 0 && errno != ENOENT)
            return api_err_set(err, API_EIO, "tenant '%s': cannot remove '%s': %s", tenant, p, strerror(errno));
    }
    return API_OK;
}

int agent_store_conn(struct agent_store *st, const char *tenant, sqlite3 **out, struct api_err *err)
{
    return agent_store_conn_stmts(st, tenant, out, NULL, err);
}

/* E, a cached entry: marked as used; its connection and statements out. Only
 * a mark, no move to the list's front: a move writes to the entries on
 * either side, two more cache misses per read over a thousand tenants. */
static void use_cached(struct cached *e, sqlite3 **out, struct agent_stmt_cache **stmts)
{
    if (!e->used)
        e->used = 1;
    if (stmts != NULL) {
        if (e->stmts == NULL)
            e->stmts = agent_stmt_cache_new(STORE_STMTS_PER_CONN); /* NULL (OOM) only means no reuse */
        *stmts = e->stmts;
    }
    *out = e->db;
}

int agent_store_conn_if_open(struct agent_store *st, const char *tenant, sqlite3 **out,
                             struct agent_stmt_cache **stmts, void ***tag)
{
    struct conn_cache *c = *cache_ref();
    struct cached *e;
    (void)st;
    if (c == NULL || (e = api_map_get(c->by_tenant, tenant)) == NULL)
        return 0;
    use_cached(e, out, stmts);
    *tag = &e->tag;
    return 1;
}

/* Over budget, slot C closes its own connections not used lately (CLOCK,
 * an approximation of least recently used): from the list's end, one used
 * since the last pass loses its mark and goes to the front (a second
 * chance), the first one unmarked closes. KEEP, just opened, stays: a slot
 * holding only KEEP may overshoot by one, at most one per slot. */
static void evict_over_budget(struct conn_cache *c, struct cached *keep)
{
    /* every entry loses its mark in one pass: two find an unmarked one */
    size_t moves = 0, limit = 2 * c->n;
    while (atomic_load(&c->st->open_total) > c->st->max_open && c->n > 1 && moves < limit) {
        struct cached *e = c->tail;
        if (e == keep || e->used) {
            e->used = 0;
            cache_unlink(c, e);
            cache_push_front(c, e);
            moves++;
        } else {
            cache_drop(c, e);
        }
    }
}

int agent_store_conn_stmts(struct agent_store *st, const char *tenant, sqlite3 **out, struct agent_stmt_cache **stmts,
                           struct api_err *err)
{
    struct conn_cache **ref = cache_ref(), *c;
    struct cached *e;
    char path[4096];
    int rc, oom;

    if ((c = *ref) == NULL) {
        if ((c = calloc(1, sizeof(*c))) == NULL || (c->by_tenant = api_map_new()) == NULL) {
            free(c);
            return api_err_set(err, API_ENOMEM, "connection cache: out of memory");
        }
        c->st = st;
        *ref = c;
    }
    if ((e = api_map_get(c->by_tenant, tenant)) != NULL) {
        use_cached(e, out, stmts);
        return API_OK;
    }
    agent_store_path(st, tenant, path, sizeof(path));
    if (access(path, F_OK) != 0)
        return api_err_set(err, API_ENOTENANT, "tenant '%s' has no database on this node", tenant);
    if ((e = calloc(1, sizeof(*e))) == NULL)
        return api_err_set(err, API_ENOMEM, "connection cache: out of memory");
    if ((rc = open_db(st, tenant, path, &e->db, &e->exclusive, err)) != API_OK) {
        free(e);
        return api_err_wrap(err, "tenant '%s'", tenant);
    }
    snprintf(e->tenant, sizeof(e->tenant), "%s", tenant);
    api_map_put(c->by_tenant, e->tenant, e, &oom);
    if (oom) {
        sqlite3_close_v2(e->db);
        free(e);
        return api_err_set(err, API_ENOMEM, "connection cache: out of memory");
    }
    cache_push_front(c, e);
    c->n++;
    atomic_fetch_add(&st->open_total, 1);
    evict_over_budget(c, e);
    use_cached(e, out, stmts);
    return API_OK;
}

int agent_store_open(struct agent_store *st, const char *tenant, sqlite3 **out, struct api_err *err)
{
    char path[4096];
    int rc;

    agent_store_path(st, tenant, path, sizeof(path));
    if (access(path, F_OK) != 0)
        return api_err_set(err, API_ENOTENANT, "tenant '%s' has no database on this node", tenant);
    /* An exclusive cached connection holds the file's lock and the WAL
     * index: ours could not even read the schema past it. It goes first;
     * on this slot nothing reopens it before ours is counted. */
    struct conn_cache *c = *cache_ref();
    struct cached *e;
    if (c != NULL && (e = api_map_get(c->by_tenant, tenant)) != NULL && e->exclusive)
        cache_drop(c, e);
    if ((rc = open_db(st, tenant, path, out, NULL, err)) != API_OK)
        return api_err_wrap(err, "tenant '%s'", tenant);
    if (streams_add(sqlite3_db_filename(*out, "main"), 1) != 0) {
        sqlite3_close_v2(*out);
        *out = NULL;
        return api_err_set(err, API_ENOMEM, "tenant '%s': out of memory", tenant);
    }
    return API_OK;
}

void agent_store_close(sqlite3 *db)
{
    char file[4200];
    if (db == NULL)
        return;
    const char *name = sqlite3_db_filename(db, "main");
    snprintf(file, sizeof(file), "%s", name != NULL ? name : "");
    sqlite3_close_v2(db); /* the caller finalized its statements: the file is closed here */
    (void)streams_add(file, -1);
}

void agent_store_thread_exit(void)
{
    struct conn_cache **ref = cache_ref(), *c = *ref;
    if (c == NULL)
        return;
    while (c->head != NULL)
        cache_drop(c, c->head);
    api_map_free(c->by_tenant, NULL);
    free(c);
    *ref = NULL;
}

size_t agent_store_thread_open(void)
{
    struct conn_cache *c = *cache_ref();
    return c ? c->n : 0;
}
