/*
 * tests/tools/sqlite_bench.c: the "raw SQLite" baseline of
 * ops/bench/dataplane. THREADS threads, one connection each, run point reads
 * or single-row inserts in process for SECONDS on one database, with the
 * pragmas a Shoal primary uses (WAL, 256 KiB page cache) and its durability:
 * one sync per commit (a primary syncs its replication log at each commit;
 * here synchronous=FULL syncs the WAL instead).
 *
 * With DATABASES > 1 the statements go round-robin over that many
 * databases (DB.0, DB.1, ...), as the agent's over as many tenants: one
 * connection per database, shared by the threads under a mutex. This is the
 * baseline for many tenants: a commit to one of a thousand databases costs
 * more than to one hot one, because each database's log is short and grows
 * at every commit, so its sync also commits the file system's journal.
 *
 *   sqlite_bench DB read|insert THREADS SECONDS [DATABASES]
 * Prints {"requests":N,"ok":N,"failed":N,"seconds":S,"rate":R,"p50_ms":X,"p99_ms":Y}.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include <sqlite3.h>

#define ROWS 1000

/* DATABASES > 1: shared connections */
struct shared_db {
    pthread_mutex_t mu;
    sqlite3 *db;
    sqlite3_stmt *st;
};
static struct shared_db *shared;
static int nshared;
static atomic_uint next_db;

struct worker {
    pthread_t th;
    const char *path;
    int insert;
    double deadline;
    double *lat;
    size_t n, cap;
    unsigned long failed;
    unsigned seed;
};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static sqlite3 *open_db(const char *path)
{
    sqlite3 *db;
    if (sqlite3_open(path, &db) != SQLITE_OK) {
        fprintf(stderr, "sqlite_bench: %s: %s\n", path, sqlite3_errmsg(db));
        exit(1);
    }
    sqlite3_busy_timeout(db, 10000);
    sqlite3_exec(db, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA cache_size=-256", NULL, NULL, NULL);
    return db;
}

static sqlite3_stmt *prepare(sqlite3 *db, int insert)
{
    sqlite3_stmt *st;
    const char *sql = insert ? "INSERT INTO kv(v) VALUES (?)" : "SELECT v FROM kv WHERE k = ?";
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) {
        fprintf(stderr, "sqlite_bench: %s\n", sqlite3_errmsg(db));
        exit(1);
    }
    return st;
}

/* One statement on statement ST; 0 if it failed. */
static int step_once(struct worker *w, sqlite3_stmt *st, const char *val)
{
    if (w->insert)
        sqlite3_bind_text(st, 1, val, 100, SQLITE_STATIC);
    else
        sqlite3_bind_int(st, 1, 1 + (int)(rand_r(&w->seed) % ROWS));
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW)
        (void)sqlite3_column_text(st, 0);
    sqlite3_reset(st);
    return rc == SQLITE_DONE;
}

static void *run(void *arg)
{
    struct worker *w = arg;
    sqlite3 *db = nshared > 1 ? NULL : open_db(w->path);
    sqlite3_stmt *st = db != NULL ? prepare(db, w->insert) : NULL;
    char val[101];
    memset(val, 'x', 100);
    val[100] = '\0';
    for (double t = now_s(); t < w->deadline;) {
        int ok;
        if (db != NULL) {
            ok = step_once(w, st, val);
        } else {
            struct shared_db *d = &shared[atomic_fetch_add(&next_db, 1) % (unsigned)nshared];
            pthread_mutex_lock(&d->mu);
            ok = step_once(w, d->st, val);
            pthread_mutex_unlock(&d->mu);
        }
        if (!ok)
            w->failed++;
        double e = now_s();
        if (w->n == w->cap && (w->lat = realloc(w->lat, (w->cap = w->cap ? w->cap * 2 : 4096) * sizeof(double))) == NULL)
            exit(1);
        w->lat[w->n++] = (e - t) * 1000.0;
        t = e;
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
    return NULL;
}

/* The table with ROWS rows, if PATH has fewer. */
static sqlite3 *open_seeded(const char *path)
{
    sqlite3 *db = open_db(path);
    sqlite3_stmt *cnt;
    sqlite3_exec(db, "CREATE TABLE IF NOT EXISTS kv(k INTEGER PRIMARY KEY, v TEXT)", NULL, NULL, NULL);
    sqlite3_prepare_v2(db, "SELECT count(*) FROM kv", -1, &cnt, NULL);
    sqlite3_step(cnt);
    int have = sqlite3_column_int(cnt, 0);
    sqlite3_finalize(cnt);
    if (have < ROWS) {
        sqlite3_exec(db, "BEGIN", NULL, NULL, NULL);
        for (int i = have; i < ROWS; i++)
            sqlite3_exec(db, "INSERT INTO kv(v) VALUES (hex(randomblob(8)))", NULL, NULL, NULL);
        sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
    }
    return db;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    if (argc != 5 && argc != 6) {
        fprintf(stderr, "usage: sqlite_bench DB read|insert THREADS SECONDS [DATABASES]\n");
        return 2;
    }
    int threads = atoi(argv[3]), insert = strcmp(argv[2], "insert") == 0;
    double secs = atof(argv[4]);
    nshared = argc == 6 ? atoi(argv[5]) : 1;
    if (threads < 1 || nshared < 1 || nshared > 100000)
        return 2;
    sqlite3 *db = NULL;
    if (nshared == 1) {
        db = open_seeded(argv[1]);
    } else {
        struct rlimit rl; /* three files per database: the database, its log and its shared memory */
        if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
            rl.rlim_cur = rl.rlim_max;
            setrlimit(RLIMIT_NOFILE, &rl);
        }
        if ((shared = calloc((size_t)nshared, sizeof(*shared))) == NULL)
            return 1;
        for (int i = 0; i < nshared; i++) {
            char path[4096];
            snprintf(path, sizeof(path), "%s.%d", argv[1], i);
            pthread_mutex_init(&shared[i].mu, NULL);
            shared[i].db = open_seeded(path);
            shared[i].st = prepare(shared[i].db, insert);
        }
    }
    struct worker *ws = calloc((size_t)threads, sizeof(*ws));
    double t0 = now_s();
    for (int i = 0; i < threads; i++) {
        ws[i].path = argv[1];
        ws[i].insert = insert;
        ws[i].deadline = t0 + secs;
        ws[i].seed = (unsigned)i + 1;
        pthread_create(&ws[i].th, NULL, run, &ws[i]);
    }
    size_t total = 0;
    unsigned long failed = 0;
    for (int i = 0; i < threads; i++) {
        pthread_join(ws[i].th, NULL);
        total += ws[i].n;
        failed += ws[i].failed;
    }
    double took = now_s() - t0;
    double *all = malloc((total ? total : 1) * sizeof(double));
    size_t k = 0;
    for (int i = 0; i < threads; i++) {
        memcpy(all + k, ws[i].lat, ws[i].n * sizeof(double));
        k += ws[i].n;
        free(ws[i].lat);
    }
    qsort(all, total, sizeof(double), cmp_double);
    printf("{\"requests\":%zu,\"ok\":%lu,\"failed\":%lu,\"seconds\":%.3f,\"rate\":%.1f,\"p50_ms\":%.3f,\"p99_ms\":%.3f}\n",
           total, (unsigned long)(total - failed), failed, took, (double)total / took, total ? all[total / 2] : 0.0,
           total ? all[(size_t)((double)total * 0.99)] : 0.0);
    free(all);
    free(ws);
    sqlite3_close(db);
    for (int i = 0; i < nshared && shared != NULL; i++) {
        sqlite3_finalize(shared[i].st);
        sqlite3_close(shared[i].db);
        pthread_mutex_destroy(&shared[i].mu);
    }
    free(shared);
    return 0;
}
