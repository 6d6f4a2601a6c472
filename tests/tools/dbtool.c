/*
 * tests/tools/dbtool.c: looks at tenant database files from the outside,
 * for replication tests.
 *   dbtool checksum FILE          the replication checksum of the whole file
 *   dbtool query FILE SQL         rows as tab-separated text (read-only; a
 *                                 file in WAL mode, a primary's, is read
 *                                 from a copy: the agent holds it alone)
 *   dbtool exec FILE SQL          runs SQL read-write (to make a replica diverge)
 *   dbtool readers FILE MS SQL    reads in a loop for MS milliseconds, each
 *                                 in its own transaction; SQL must return one
 *                                 integer that is 1 when the invariant holds.
 *                                 Prints "reads N violations M".
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <sqlite3.h>

#include "nodeagent/repl_sum.h"

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int cmd_checksum(const char *path)
{
    unsigned char h[100];
    struct stat st;
    uint64_t ck;
    int fd = open(path, O_RDONLY);
    if (fd < 0 || fstat(fd, &st) != 0) {
        fprintf(stderr, "dbtool: %s: %s\n", path, strerror(errno));
        return 1;
    }
    if (st.st_size == 0) {
        printf("%016llx 0\n", (unsigned long long)AGENT_CK_EMPTY);
        return 0;
    }
    if (pread(fd, h, 100, 0) != 100) {
        fprintf(stderr, "dbtool: %s: short file\n", path);
        return 1;
    }
    uint32_t ps = (uint32_t)h[16] << 8 | h[17];
    if (ps == 1)
        ps = 65536;
    uint32_t npages = (uint32_t)(st.st_size / ps);
    if (agent_file_checksum(fd, ps, npages, &ck) != 0) {
        fprintf(stderr, "dbtool: %s: %s\n", path, strerror(errno));
        return 1;
    }
    printf("%016llx %u\n", (unsigned long long)ck, npages);
    close(fd);
    return 0;
}

static sqlite3 *open_ro(const char *path)
{
    sqlite3 *db = NULL;
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK) {
        fprintf(stderr, "dbtool: %s: %s\n", path, db ? sqlite3_errmsg(db) : "cannot open");
        exit(1);
    }
    sqlite3_busy_timeout(db, 10000);
    return db;
}

/* 1 if PATH is in WAL mode (header byte 18, the write version, is 2), else 0. */
static int is_wal_file(const char *path)
{
    unsigned char h[20];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    int wal = fd >= 0 && pread(fd, h, sizeof(h), 0) == (ssize_t)sizeof(h) && h[18] == 2;
    if (fd >= 0)
        close(fd);
    return wal;
}

static int copy_file(const char *from, const char *to)
{
    char buf[65536];
    ssize_t n;
    int in = open(from, O_RDONLY | O_CLOEXEC), out;
    if (in < 0)
        return errno == ENOENT ? 0 : -1;
    if ((out = open(to, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600)) < 0) {
        close(in);
        return -1;
    }
    while ((n = read(in, buf, sizeof(buf))) > 0)
        if (write(out, buf, (size_t)n) != n) {
            n = -1;
            break;
        }
    close(in);
    close(out);
    return n < 0 ? -1 : 0;
}

static void remove_copy(const char *tmpdir)
{
    static const char *const names[] = {"copy.db", "copy.db-wal", "copy.db-shm"};
    char p[4300];
    if (tmpdir[0] == 0)
        return;
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        snprintf(p, sizeof(p), "%s/%s", tmpdir, names[i]);
        unlink(p);
    }
    rmdir(tmpdir);
}

/* A primary's file is the agent's alone while open (SQLite's "unix-excl"
 * VFS: one process lock, the WAL index on the agent's heap), so an outside
 * reader cannot lock it. Queries read a copy of the file and its WAL
 * instead, the file first: SQLite's recovery of the copied WAL keeps
 * every commit whole. Meant for a tenant at rest, as tests read it. */
static sqlite3 *open_query(const char *path, char *tmpdir, size_t cap)
{
    tmpdir[0] = 0;
    if (!is_wal_file(path))
        return open_ro(path);
    char db[4200], wal[4300], copy_wal[4300];
    snprintf(tmpdir, cap, "%s", "/tmp/dbtool.XXXXXX");
    if (mkdtemp(tmpdir) == NULL) {
        fprintf(stderr, "dbtool: mkdtemp: %s\n", strerror(errno));
        exit(1);
    }
    snprintf(wal, sizeof(wal), "%s-wal", path);
    snprintf(db, sizeof(db), "%s/copy.db", tmpdir);
    snprintf(copy_wal, sizeof(copy_wal), "%s-wal", db);
    if (copy_file(path, db) != 0 || copy_file(wal, copy_wal) != 0) {
        fprintf(stderr, "dbtool: copying %s: %s\n", path, strerror(errno));
        remove_copy(tmpdir);
        exit(1);
    }
    sqlite3 *h = NULL;
    if (sqlite3_open_v2(db, &h, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK) {
        fprintf(stderr, "dbtool: %s: %s\n", db, h ? sqlite3_errmsg(h) : "cannot open");
        exit(1);
    }
    return h;
}

static int cmd_query(const char *path, const char *sql)
{
    char tmpdir[64];
    sqlite3 *db = open_query(path, tmpdir, sizeof(tmpdir));
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) {
        fprintf(stderr, "dbtool: %s\n", sqlite3_errmsg(db));
        sqlite3_close(db);
        remove_copy(tmpdir);
        return 1;
    }
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        for (int i = 0; i < sqlite3_column_count(st); i++) {
            const unsigned char *v = sqlite3_column_text(st, i);
            printf("%s%s", i ? "\t" : "", v ? (const char *)v : "NULL");
        }
        printf("\n");
    }
    if (rc != SQLITE_DONE) {
        fprintf(stderr, "dbtool: %s\n", sqlite3_errmsg(db));
        sqlite3_finalize(st);
        sqlite3_close(db);
        remove_copy(tmpdir);
        return 1;
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
    remove_copy(tmpdir);
    return 0;
}

static int cmd_exec(const char *path, const char *sql)
{
    sqlite3 *db = NULL;
    char *msg = NULL;
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK ||
        sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        fprintf(stderr, "dbtool exec: %s\n", msg ? msg : db ? sqlite3_errmsg(db) : "cannot open");
        return 1;
    }
    sqlite3_close(db);
    return 0;
}

static int cmd_readers(const char *path, long ms, const char *sql)
{
    long reads = 0, violations = 0, errors = 0;
    int64_t end = now_ms() + ms;
    sqlite3 *db = open_ro(path);
    while (now_ms() < end) {
        sqlite3_stmt *st = NULL;
        if (sqlite3_prepare_v2(db, sql, -1, &st, NULL) != SQLITE_OK) {
            /* the table may not exist yet */
            errors++;
            usleep(2000);
            continue;
        }
        int rc = sqlite3_step(st);
        if (rc == SQLITE_ROW) {
            reads++;
            if (sqlite3_column_int64(st, 0) != 1)
                violations++;
        } else if (rc != SQLITE_DONE && rc != SQLITE_BUSY) {
            fprintf(stderr, "dbtool readers: %s\n", sqlite3_errmsg(db));
            violations++;
        }
        sqlite3_finalize(st);
    }
    sqlite3_close(db);
    printf("reads %ld violations %ld errors %ld\n", reads, violations, errors);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "checksum") == 0)
        return cmd_checksum(argv[2]);
    if (argc == 4 && strcmp(argv[1], "query") == 0)
        return cmd_query(argv[2], argv[3]);
    if (argc == 4 && strcmp(argv[1], "exec") == 0)
        return cmd_exec(argv[2], argv[3]);
    if (argc == 5 && strcmp(argv[1], "readers") == 0)
        return cmd_readers(argv[2], atol(argv[3]), argv[4]);
    fprintf(stderr, "usage: dbtool checksum FILE | query FILE SQL | readers FILE MS SQL\n");
    return 2;
}
