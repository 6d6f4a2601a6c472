/*
 * Unit tests for the canonical empty database new tenants are born from
 * and the connection cache's eviction (nodeagent/store.c), and for the replication log's unsynced birth
 * (nodeagent/repl_log.c), on files in a temporary directory.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sqlite3.h>
#include <unistd.h>

#include "api/err.h"
#include "api/workq.h"
#include "nodeagent/repl_log.h"
#include "nodeagent/repl_sum.h"
#include "nodeagent/store.h"

struct fx {
    char dir[64];
    struct agent_store *st;
};

static int setup(void **state)
{
    struct fx *f = calloc(1, sizeof(*f));
    struct api_err err;
    snprintf(f->dir, sizeof(f->dir), "/tmp/shoal-store-test.XXXXXX");
    assert_non_null(mkdtemp(f->dir));
    struct agent_store_config cfg = {.data_dir = f->dir, .max_open = 8, .cache_kib = 64};
    assert_int_equal(agent_store_new(&cfg, &f->st, &err), API_OK);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fx *f = *state;
    char cmd[128];
    agent_store_thread_exit();
    agent_store_free(f->st);
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", f->dir);
    assert_int_equal(system(cmd), 0);
    free(f);
    return 0;
}

static void read_page1(const char *path, unsigned char *out)
{
    int fd = open(path, O_RDONLY);
    assert_true(fd >= 0);
    assert_int_equal(pread(fd, out, AGENT_STORE_PAGE_SIZE, 0), AGENT_STORE_PAGE_SIZE);
    close(fd);
}

static char *query1(sqlite3 *db, const char *sql)
{
    sqlite3_stmt *stmt;
    char *out = NULL;
    assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &stmt, NULL), SQLITE_OK);
    if (sqlite3_step(stmt) == SQLITE_ROW)
        out = strdup((const char *)sqlite3_column_text(stmt, 0));
    sqlite3_finalize(stmt);
    assert_non_null(out);
    return out;
}

/* SQLite itself writes the same page for a new file switched to WAL; only
 * the writer's library version (bytes 96-99) may differ. */
static void empty_image_is_what_sqlite_writes_for_a_new_wal_database(void **state)
{
    struct fx *f = *state;
    char path[128];
    unsigned char mine[AGENT_STORE_PAGE_SIZE], theirs[AGENT_STORE_PAGE_SIZE];
    sqlite3 *db;

    snprintf(path, sizeof(path), "%s/sqlite.db", f->dir);
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, "PRAGMA journal_mode=WAL", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
    read_page1(path, theirs);
    agent_store_empty_image(1, mine);
    memcpy(theirs + 96, mine + 96, 4);
    assert_memory_equal(mine, theirs, sizeof(mine));
    assert_true(agent_store_is_empty_image(mine, sizeof(mine)));
}

/* Both flavours open in SQLite in their journal mode, pass the integrity
 * check, take a schema and rows, and hash to one checksum. */
static void both_flavours_open_in_their_mode_and_share_one_checksum(void **state)
{
    struct fx *f = *state;
    struct api_err err;
    const char *names[2] = {"prim", "repl"};
    uint64_t ck[2];

    for (int i = 0; i < 2; i++) {
        char path[4096];
        sqlite3 *db;
        assert_int_equal(agent_store_create(f->st, names[i], i == 0, 0, &err), API_OK);
        agent_store_path(f->st, names[i], path, sizeof(path));
        int fd = open(path, O_RDONLY);
        assert_true(fd >= 0);
        assert_int_equal(agent_file_checksum(fd, AGENT_STORE_PAGE_SIZE, 1, &ck[i]), 0);
        close(fd);
        assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
        char *mode = query1(db, "PRAGMA journal_mode");
        assert_string_equal(mode, i == 0 ? "wal" : "delete");
        free(mode);
        char *ok = query1(db, "PRAGMA integrity_check");
        assert_string_equal(ok, "ok");
        free(ok);
        assert_int_equal(sqlite3_exec(db, "CREATE TABLE t(a); INSERT INTO t VALUES (42)", NULL, NULL, NULL),
                         SQLITE_OK);
        char *v = query1(db, "SELECT a FROM t");
        assert_string_equal(v, "42");
        free(v);
        sqlite3_close(db);
    }
    assert_true(ck[0] == ck[1]);
    assert_true(ck[0] != AGENT_CK_EMPTY);
}

static void create_leaves_an_existing_file_alone_unless_told(void **state)
{
    struct fx *f = *state;
    struct api_err err;
    char path[4096];
    unsigned char page[AGENT_STORE_PAGE_SIZE];

    assert_int_equal(agent_store_create(f->st, "t1", 1, 0, &err), API_OK);
    assert_int_equal(agent_store_create(f->st, "t1", 0, 0, &err), API_ECONFLICT);
    agent_store_path(f->st, "t1", path, sizeof(path));
    read_page1(path, page);
    assert_int_equal(page[18], 2);
    assert_int_equal(agent_store_create(f->st, "t1", 0, 1, &err), API_OK);
    read_page1(path, page);
    assert_int_equal(page[18], 1);
    assert_int_equal(agent_store_create(f->st, "../x", 1, 0, &err), API_EBADTENANT);
}

/* A log whose unsynced creation a crash cut short (empty, shorter than its
 * header, or a header of zeros) is created again; a damaged header of a
 * real log is still an error. */
static void a_torn_new_log_is_created_again(void **state)
{
    struct fx *f = *state;
    struct api_err err;
    struct agent_log *log;
    struct agent_log_pos lp;
    char path[128];
    static const unsigned char zeros[32];

    snprintf(path, sizeof(path), "%s/t.log", f->dir);
    const size_t sizes[] = {0, 7, 32};
    for (size_t i = 0; i < 3; i++) {
        int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
        assert_true(fd >= 0);
        assert_int_equal(write(fd, zeros, sizes[i]), (ssize_t)sizes[i]);
        close(fd);
        assert_int_equal(agent_log_open(path, 0, 77, &log, &err), API_OK);
        agent_log_position(log, &lp);
        assert_int_equal(lp.base_txid, 0);
        assert_int_equal(lp.base_ck, 77);
        assert_int_equal(agent_log_sync(log, &err), API_OK);
        agent_log_free(log);
    }
    /* a real header survives reopening with another base */
    assert_int_equal(agent_log_open(path, 5, 99, &log, &err), API_OK);
    agent_log_position(log, &lp);
    assert_int_equal(lp.base_ck, 77);
    agent_log_free(log);
    /* damage beyond a torn birth stays an error */
    int fd = open(path, O_RDWR);
    assert_int_equal(pwrite(fd, "XXXX", 4, 0), 4);
    close(fd);
    assert_int_not_equal(agent_log_open(path, 0, 77, &log, &err), API_OK);
}

/* Past the cap, the least recently used logs close their files; a closed
 * log reopens on use and keeps every record. */
static void logs_past_the_cap_close_and_reopen_on_use(void **state)
{
    struct fx *f = *state;
    struct api_err err;
    struct agent_log *logs[5];
    unsigned char page[512];
    uint32_t pgno = 1;

    agent_log_set_max_open(2);
    for (int i = 0; i < 5; i++) {
        char path[128];
        snprintf(path, sizeof(path), "%s/l%d.log", f->dir, i);
        assert_int_equal(agent_log_open(path, 0, AGENT_CK_EMPTY, &logs[i], &err), API_OK);
        assert_true(agent_log_open_files() <= 2);
    }
    assert_int_equal(agent_log_open_files(), 2);
    for (int round = 0; round < 2; round++) {
        for (int i = 0; i < 5; i++) {
            struct agent_log_pos lp;
            unsigned char *enc, *back;
            size_t len, blen;
            agent_log_position(logs[i], &lp);
            memset(page, 'a' + i + round, sizeof(page));
            struct agent_rec rec = {.epoch = 1, .txid = lp.last_txid + 1, .pre_ck = lp.last_ck,
                                    .post_ck = lp.last_ck ^ (uint64_t)(i + 1), .page_size = sizeof(page),
                                    .commit_pages = 1, .npages = 1};
            assert_int_equal(agent_rec_encode(&rec, &pgno, page, &enc, &len, &err), API_OK);
            assert_int_equal(agent_log_append(logs[i], enc, len, &err), API_OK);
            assert_int_equal(agent_log_sync(logs[i], &err), API_OK);
            assert_int_equal(agent_log_read(logs[i], rec.txid, &back, &blen, &err), API_OK);
            assert_int_equal(blen, len);
            assert_memory_equal(back, enc, len);
            free(back);
            free(enc);
            assert_true(agent_log_open_files() <= 2);
        }
    }
    /* the first record of the first log, read after its file was closed */
    unsigned char *back;
    size_t blen;
    assert_int_equal(agent_log_read(logs[0], 1, &back, &blen, &err), API_OK);
    free(back);
    for (int i = 0; i < 5; i++)
        agent_log_free(logs[i]);
    assert_int_equal(agent_log_open_files(), 0);
    agent_log_set_max_open(1000);
}

/* Appends land on zeros written ahead of them (so fdatasync has no file
 * size to commit); the file is longer than its records, reopening finds
 * every record and cuts the zeros, and a torn record in that tail is cut
 * with them. */
static void appends_land_on_zeros_written_ahead(void **state)
{
    struct fx *f = *state;
    struct api_err err;
    struct agent_log *log;
    struct agent_log_pos lp;
    unsigned char page[1024];
    uint32_t pgno = 1;
    char path[128];
    struct stat st;
    off_t last_size = 0;
    int size_changes = 0;

    snprintf(path, sizeof(path), "%s/z.log", f->dir);
    assert_int_equal(agent_log_open(path, 0, AGENT_CK_EMPTY, &log, &err), API_OK);
    for (int i = 0; i < 40; i++) {
        unsigned char *enc;
        size_t len;
        agent_log_position(log, &lp);
        memset(page, i, sizeof(page));
        page[0] = (unsigned char)(i * 7); /* not all alike: lz4 must keep some bytes */
        struct agent_rec rec = {.epoch = 1, .txid = lp.last_txid + 1, .pre_ck = lp.last_ck,
                                .post_ck = lp.last_ck + 1, .page_size = sizeof(page), .commit_pages = 1, .npages = 1};
        assert_int_equal(agent_rec_encode(&rec, &pgno, page, &enc, &len, &err), API_OK);
        assert_int_equal(agent_log_append(log, enc, len, &err), API_OK);
        free(enc);
        assert_int_equal(agent_log_sync(log, &err), API_OK);
        agent_log_position(log, &lp);
        assert_int_equal(stat(path, &st), 0);
        assert_true((size_t)st.st_size >= lp.bytes);
        if (i == 0)
            assert_true((size_t)st.st_size >= lp.bytes + 4096); /* a tail ahead of the records */
        if (st.st_size != last_size)
            size_changes++;
        last_size = st.st_size;
    }
    assert_true(size_changes <= 3); /* not one per append */
    agent_log_position(log, &lp);
    size_t bytes = lp.bytes;
    agent_log_free(log);
    /* a torn record in the tail: a valid header's first bytes, then zeros */
    int fd = open(path, O_RDWR);
    assert_int_equal(pwrite(fd, "SHR1\0\0\0\0", 8, (off_t)bytes), 8);
    close(fd);
    assert_int_equal(agent_log_open(path, 0, AGENT_CK_EMPTY, &log, &err), API_OK);
    agent_log_position(log, &lp);
    assert_int_equal(lp.last_txid, 40);
    assert_int_equal(lp.bytes, bytes);
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal((size_t)st.st_size, bytes);
    unsigned char *back;
    size_t blen;
    assert_int_equal(agent_log_read(log, 17, &back, &blen, &err), API_OK);
    struct agent_rec got;
    size_t rl;
    assert_int_equal(agent_rec_parse(back, blen, &got, &rl, &err), API_OK);
    assert_int_equal(got.txid, 17);
    free(back);
    agent_log_free(log);
}

/* Past max_open, a thread's connection cache closes one not used since
 * eviction last passed (CLOCK): a connection read since then gets a second
 * chance, the one opened just now always stays, and the cache never holds
 * more than max_open. */
static void connections_past_the_cap_close_those_not_used_lately(void **state)
{
    struct fx *f = *state;
    struct api_err err;
    char id[16];
    sqlite3 *db, *first;
    struct agent_stmt_cache *stmts;
    void **tag;

    for (int i = 0; i < 10; i++) {
        snprintf(id, sizeof(id), "c%d", i);
        assert_int_equal(agent_store_create(f->st, id, 1, 0, &err), API_OK);
    }
    assert_int_equal(agent_store_conn(f->st, "c0", &first, &err), API_OK);
    for (int i = 1; i < 8; i++) {
        snprintf(id, sizeof(id), "c%d", i);
        assert_int_equal(agent_store_conn(f->st, id, &db, &err), API_OK);
    }
    assert_int_equal(agent_store_thread_open(), 8);
    /* all eight were used once: each loses its mark, then the oldest closes */
    assert_int_equal(agent_store_conn(f->st, "c8", &db, &err), API_OK);
    assert_int_equal(agent_store_thread_open(), 8);
    assert_int_equal(agent_store_conn_if_open(f->st, "c0", &db, &stmts, &tag), 0);
    assert_int_equal(agent_store_conn_if_open(f->st, "c8", &db, &stmts, &tag), 1);
    /* c1 is read again (marked); c2, unmarked, is the next to go */
    assert_int_equal(agent_store_conn_if_open(f->st, "c1", &db, &stmts, &tag), 1);
    assert_non_null(tag);
    assert_int_equal(agent_store_conn(f->st, "c9", &db, &err), API_OK);
    assert_int_equal(agent_store_thread_open(), 8);
    assert_int_equal(agent_store_conn_if_open(f->st, "c1", &db, &stmts, &tag), 1);
    assert_int_equal(agent_store_conn_if_open(f->st, "c2", &db, &stmts, &tag), 0);
    assert_int_equal(agent_store_conn_if_open(f->st, "c9", &db, &stmts, &tag), 1);
    /* a closed one opens again on use, with a new connection that works */
    assert_int_equal(agent_store_conn(f->st, "c0", &db, &err), API_OK);
    assert_int_equal(agent_store_thread_open(), 8);
    char *one = query1(db, "SELECT 1");
    assert_string_equal(one, "1");
    free(one);
}

/* Primaries ("p..." here) are owned; one job of a worker slot. */
static int owns_p(void *ud, const char *tenant)
{
    (void)ud;
    return tenant[0] == 'p';
}

struct slot_step {
    struct fx *f;
    const char *tenant;
    const char *exec;    /* run first on the cached connection (no rows), NULL: none */
    const char *sql;     /* then this, on it, NULL: none */
    char mode[16];       /* its PRAGMA locking_mode afterwards */
    char *answer;        /* first column of SQL's first row */
    int open_before;     /* agent_store_conn_if_open before the step */
    sqlite3 *stream;     /* set: agent_store_open into it first */
    int evict;           /* agent_store_evict first */
    int exit;            /* agent_store_thread_exit, nothing else */
};

static void slot_step_job(void *arg)
{
    struct slot_step *s = arg;
    struct api_err err;
    struct agent_stmt_cache *stmts;
    void **tag;
    sqlite3 *db;

    if (s->exit) {
        agent_store_thread_exit();
        return;
    }
    if (s->evict)
        agent_store_evict(s->tenant);
    if (s->stream != NULL || s->sql == NULL) {
        s->open_before = agent_store_conn_if_open(s->f->st, s->tenant, &db, &stmts, &tag);
        if (s->sql == NULL && s->stream == NULL)
            return;
    }
    if (s->stream != NULL) {
        assert_int_equal(agent_store_open(s->f->st, s->tenant, &s->stream, &err), API_OK);
        return;
    }
    assert_int_equal(agent_store_conn(s->f->st, s->tenant, &db, &err), API_OK);
    if (s->exec != NULL)
        assert_int_equal(sqlite3_exec(db, s->exec, NULL, NULL, NULL), SQLITE_OK);
    s->answer = query1(db, s->sql);
    char *mode = query1(db, "PRAGMA locking_mode");
    snprintf(s->mode, sizeof(s->mode), "%s", mode);
    free(mode);
}

static void run_in_slot(struct api_workq *q, struct slot_step *s)
{
    assert_int_equal(api_workq_try_run(q, 7, slot_step_job, s), 1);
}

/* A primary's connection cached by its slot locks the file exclusively
 * (its WAL index private, no WAL locks per read) while it is the only one;
 * a stream's connection closes it first and, while the stream is open, the
 * cached one reopens in normal mode; both read and write the same data. A
 * replica's, and one cached outside a slot, lock normally. */
static void a_primary_locks_exclusively_until_a_stream_opens(void **state)
{
    struct fx *f = *state;
    struct api_err err;
    struct api_workq *q;
    sqlite3 *db;

    agent_store_set_owned(f->st, owns_p, NULL);
    assert_int_equal(agent_store_create(f->st, "p1", 1, 0, &err), API_OK);
    assert_int_equal(agent_store_create(f->st, "p2", 1, 0, &err), API_OK);
    assert_int_equal(agent_store_create(f->st, "r1", 0, 0, &err), API_OK);
    assert_int_equal(api_workq_new(1, 1, NULL, &q, &err), API_OK);

    struct slot_step s = {.f = f, .tenant = "p1", .sql = "SELECT 1"};
    run_in_slot(q, &s);
    assert_string_equal(s.mode, "exclusive");
    free(s.answer);
    s = (struct slot_step){.f = f, .tenant = "p1", .exec = "CREATE TABLE t(a); INSERT INTO t VALUES (1)",
                           .sql = "SELECT count(*) FROM t"};
    run_in_slot(q, &s);
    assert_string_equal(s.mode, "exclusive");
    assert_string_equal(s.answer, "1");
    free(s.answer);

    /* a stream opens: the exclusive cached connection goes first */
    s = (struct slot_step){.f = f, .tenant = "p1", .stream = (sqlite3 *)1};
    run_in_slot(q, &s);
    assert_int_equal(s.open_before, 1);
    sqlite3 *stream = s.stream;
    s = (struct slot_step){.f = f, .tenant = "p1"};
    run_in_slot(q, &s);
    assert_int_equal(s.open_before, 0);
    char *n = query1(stream, "SELECT count(*) FROM t");
    assert_string_equal(n, "1");
    free(n);
    /* the cached one reopens in normal mode and sees the stream's commit */
    s = (struct slot_step){.f = f, .tenant = "p1", .sql = "SELECT count(*) FROM t"};
    run_in_slot(q, &s);
    assert_string_equal(s.mode, "normal");
    assert_string_equal(s.answer, "1");
    free(s.answer);
    assert_int_equal(sqlite3_exec(stream, "BEGIN; INSERT INTO t VALUES (2); COMMIT", NULL, NULL, NULL), SQLITE_OK);
    s.sql = "SELECT sum(a) FROM t";
    run_in_slot(q, &s);
    assert_string_equal(s.answer, "3");
    free(s.answer);
    /* the stream closes: the normal one stays; once evicted, exclusive again */
    agent_store_close(stream);
    s = (struct slot_step){.f = f, .tenant = "p1", .sql = "SELECT sum(a) FROM t"};
    run_in_slot(q, &s);
    assert_string_equal(s.mode, "normal");
    free(s.answer);
    s.evict = 1;
    run_in_slot(q, &s);
    assert_string_equal(s.mode, "exclusive");
    assert_string_equal(s.answer, "3");
    free(s.answer);

    /* a replica locks normally */
    s = (struct slot_step){.f = f, .tenant = "r1", .sql = "SELECT 1"};
    run_in_slot(q, &s);
    assert_string_equal(s.mode, "normal");
    free(s.answer);
    /* and so does a primary's connection cached outside any slot */
    assert_int_equal(agent_store_conn(f->st, "p2", &db, &err), API_OK);
    char *mode = query1(db, "PRAGMA locking_mode");
    assert_string_equal(mode, "normal");
    free(mode);

    s = (struct slot_step){.f = f, .exit = 1};
    run_in_slot(q, &s);
    api_workq_free(q);
}

/* The page cache notes, for prefetch hints, which page buffers a read on
 * the calling thread fetched first: page 1 (the database header), then the
 * table's root; nothing while not watching. */
static void a_watched_read_names_page_one_and_the_root(void **state)
{
    struct fx *f = *state;
    struct api_err err;
    sqlite3 *db;
    const void *pages[3];

    assert_int_equal(agent_store_create(f->st, "w1", 1, 0, &err), API_OK);
    assert_int_equal(agent_store_conn(f->st, "w1", &db, &err), API_OK);
    assert_int_equal(sqlite3_exec(db, "CREATE TABLE t(a); INSERT INTO t VALUES (42)", NULL, NULL, NULL), SQLITE_OK);
    agent_store_pages_watch();
    char *v = query1(db, "SELECT a FROM t");
    agent_store_pages_seen(pages);
    assert_string_equal(v, "42");
    free(v);
    assert_non_null(pages[0]);
    assert_non_null(pages[1]);
    assert_ptr_not_equal(pages[0], pages[1]);
    assert_non_null(pages[2]);
    assert_memory_equal(pages[0], "SQLite format 3", 16); /* still cached: the test may look */
    assert_int_equal(((const unsigned char *)pages[1])[0], 0x0d); /* a table b-tree leaf: t's root */
    /* not watching: nothing noted */
    v = query1(db, "SELECT a FROM t");
    free(v);
    agent_store_pages_watch();
    agent_store_pages_seen(pages);
    assert_null(pages[0]);
    assert_null(pages[1]);
    assert_null(pages[2]);
}

int main(void)
{
    agent_store_process_init(); /* before SQLite starts: installs the page cache that notes pages */
#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(empty_image_is_what_sqlite_writes_for_a_new_wal_database),
        T(both_flavours_open_in_their_mode_and_share_one_checksum),
        T(create_leaves_an_existing_file_alone_unless_told),
        T(a_torn_new_log_is_created_again),
        T(logs_past_the_cap_close_and_reopen_on_use),
        T(appends_land_on_zeros_written_ahead),
        T(connections_past_the_cap_close_those_not_used_lately),
        T(a_primary_locks_exclusively_until_a_stream_opens),
        T(a_watched_read_names_page_one_and_the_root),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
