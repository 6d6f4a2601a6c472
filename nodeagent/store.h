/*
 * nodeagent/store.h: tenant database files on disk and the SQLite
 * connections to them.
 *
 * Layout: <data>/tenants/<xx>/<id>.db, where <xx> is two hex digits of a hash
 * of the ID, so no directory holds more than 1/256 of the tenants. IDs are
 * validated before they reach a path.
 *
 * Connections: each worker slot keeps its own cache of open connections
 * (capped; the least recently used close first, by CLOCK's approximation),
 * because a tenant's work always runs on the same slot (api/workq.h keys
 * by tenant). No locks, and nothing per tenant on a timer: a connection
 * closes when its slot needs room and it was not used since last asked.
 */
#ifndef SHOAL_NODEAGENT_STORE_H
#define SHOAL_NODEAGENT_STORE_H

#include <stddef.h>

#include <sqlite3.h>

#include "api/err.h"

struct agent_store;

struct agent_store_config {
    const char *data_dir;
    size_t max_open;            /* cached connections in all slots together (each evicts its own) */
    int cache_kib;              /* SQLite page cache per open tenant */
};

/* Once per process, before any other SQLite call: turns SQLite's memory
 * statistics off. They take one global mutex on every allocation of every
 * connection (nine per point read, from all threads alike), and Shoal
 * never reads them. Later calls, or calls after SQLite started, change
 * nothing. */
void agent_store_process_init(void);

/* Which page buffers SQLite fetches on the calling thread, for prefetch
 * hints (hot.h): after agent_store_pages_watch, the first two distinct
 * pages fetched and, third, the page cache they came from, until
 * agent_store_pages_seen returns them (NULL for none; also when
 * agent_store_process_init was not called). Never read through. */
void agent_store_pages_watch(void);
void agent_store_pages_seen(const void *pages[3]);

int agent_store_new(const struct agent_store_config *cfg, struct agent_store **out, struct api_err *err);
/* FN(UD, tenant, db) runs on every connection the store opens, after its
 * pragmas (replication installs its capture hook there). Set before use. */
void agent_store_set_on_open(struct agent_store *st, void (*fn)(void *, const char *, sqlite3 *), void *ud);
/* FN(UD, tenant), asked before each open, says whether TENANT's file is
 * this process's alone while open: a primary's, in WAL mode. Its
 * connections then use SQLite's "unix-excl" VFS: the process takes one
 * exclusive lock on the file and its connections lock among themselves in
 * memory, with the WAL index on the heap. A point read then makes no
 * fcntl calls (the "unix" VFS makes two, the WAL read lock and its
 * release: a tenth of the agent's time per read). The connection its
 * worker slot caches also locks in exclusive mode while no stream has one
 * (agent_store_open): then a read takes no WAL lock at all. Other
 * processes cannot read such a file while the agent has it open; replicas
 * stay on "unix", so outside readers still see their applies whole. Set
 * before use. */
void agent_store_set_owned(struct agent_store *st, int (*fn)(void *, const char *), void *ud);
void agent_store_free(struct agent_store *st);

/* The database path of TENANT into OUT. */
void agent_store_path(const struct agent_store *st, const char *tenant, char *out, size_t cap);
/* 1 if the tenant's file exists. Any thread. */
int agent_store_exists(const struct agent_store *st, const char *tenant);

/* The canonical empty database every new tenant starts from, on every node:
 * one page of AGENT_STORE_PAGE_SIZE bytes, exactly what SQLite 3.40 writes
 * for a new file switched to WAL (page 1: the 100-byte header, then an
 * empty sqlite_schema leaf), built here from the documented file format so
 * it does not depend on the SQLite library in use. WAL non-zero gives the
 * primary's flavour (file format bytes 18-19 = 2), zero the replica's
 * rollback-journal flavour (1); the replication checksum normalises those
 * bytes (repl_sum.h), so both flavours have one checksum and a replica
 * born from it stands at the primary's start position without a snapshot. */
#define AGENT_STORE_PAGE_SIZE 4096
void agent_store_empty_image(int wal, unsigned char page[AGENT_STORE_PAGE_SIZE]);
/* 1 if PAGE (a first page of LEN bytes) is one of the two flavours above. */
int agent_store_is_empty_image(const unsigned char *page, size_t len);

/* Writes the canonical empty database (flavour WAL) as TENANT's file.
 * Without OVERWRITE an existing file is left alone (API_ECONFLICT); with
 * it, the file is replaced in place (the caller has established that it
 * holds nothing: see repl.c). Nothing is synced: an empty database is a
 * constant that recovery can write again, and the first write that must
 * survive a crash syncs the tenant's directory (repl_log.c). Any thread;
 * replication calls it on the tenant's worker. */
int agent_store_create(struct agent_store *st, const char *tenant, int wal, int overwrite, struct api_err *err);
/* Removes the tenant's files (database, WAL, replication log and
 * position). Call on the tenant's worker (it evicts the
 * cached connection of the calling job's slot first). */
int agent_store_remove(struct agent_store *st, const char *tenant, struct api_err *err);

/* The connection to TENANT cached by the calling job's worker slot (by the
 * calling thread outside a pool job; api_workq_slot_local), borrowed: valid
 * until the next store call of that slot. API_ENOTENANT if the file does
 * not exist. */
int agent_store_conn(struct agent_store *st, const char *tenant, sqlite3 **out, struct api_err *err);
/* Every connection's busy timeout (ms): how long it waits for another's lock. */
#define AGENT_STORE_BUSY_MS 5000
struct agent_stmt_cache;
/* agent_store_conn_stmts without opening: 1 if this slot has TENANT's
 * connection open (then *OUT and *STMTS as there, and *TAG a pointer the
 * caller may keep with the connection: NULL when it opened, dropped with
 * it), 0 if not. */
int agent_store_conn_if_open(struct agent_store *st, const char *tenant, sqlite3 **out,
                             struct agent_stmt_cache **stmts, void ***tag);
/* agent_store_conn, and in *STMTS (may be NULL) the connection's cache of prepared
 * statements (nodeagent/stmtcache.h), with the same lifetime. */
int agent_store_conn_stmts(struct agent_store *st, const char *tenant, sqlite3 **out, struct agent_stmt_cache **stmts,
                           struct api_err *err);
/* A new connection to TENANT owned by the caller, for a Hrana stream that
 * holds a transaction across requests (or a cursor). Use it only on the
 * tenant's worker slot: it closes that slot's cached connection if it locks
 * exclusively (a primary's, see store.c), and until agent_store_close the
 * cached one reopens in normal locking mode, so both can read. */
int agent_store_open(struct agent_store *st, const char *tenant, sqlite3 **out, struct api_err *err);
/* Closes a connection of agent_store_open (its statements finalized
 * first), on any thread. NULL is ignored. */
void agent_store_close(sqlite3 *db);
/* Closes the calling slot's (or thread's) cached connection to TENANT, if any. */
void agent_store_evict(const char *tenant);
/* Closes every connection cached by the calling slot, or by the calling
 * thread outside a pool job (workq slot-exit and on_exit hooks). */
void agent_store_thread_exit(void);
/* Connections open in the calling slot's (or thread's) cache (for tests/metrics). */
size_t agent_store_thread_open(void);

#endif
