/*
 * nodeagent/hot.h: where a tenant's data was at its last read, so that the
 * next request for it can ask the CPU for that memory early.
 *
 * Why: over many tenants a point read's time goes mostly to cache misses on
 * that tenant's SQLite connection, statement and the agent's own records
 * (1,000 tenants read in turn: about 110 L2 misses per read in callgrind's
 * simulation where one hot tenant has two, and 9 µs more CPU per read).
 * Many of them come in chains, each pointer read before the next, which the
 * CPU cannot overlap.
 * A loop knows the tenant once a request's headers are parsed and reaches
 * SQLite only after parsing and checking its body: prefetching then the
 * addresses the tenant's last read used lets those misses overlap with that
 * work instead of following one another.
 *
 * A direct-mapped table keyed by the tenant's hash. An entry is a hint only:
 * nothing is ever read through it, and a prefetch of memory that has since
 * been freed, reused or unmapped does nothing but waste a fetch (prefetches
 * do not fault). So a stale entry or two tenants sharing one cost a few
 * useless fetches, never a wrong answer, and the table needs no lock.
 *
 * Threading: any thread may note and prefetch at any time (relaxed atomics).
 */
#ifndef SHOAL_NODEAGENT_HOT_H
#define SHOAL_NODEAGENT_HOT_H

#include <stdint.h>

/* What an address is, which says how much memory around it to fetch. */
enum agent_hot_kind {
    AGENT_HOT_DB,     /* a sqlite3 connection */
    AGENT_HOT_FILE,   /* its main file handle: the pager's state lies just before it */
    AGENT_HOT_WAL,    /* its WAL's file handle: the WAL's state lies just before it */
    AGENT_HOT_STMT,   /* the prepared statement the read ran */
    AGENT_HOT_RECORD, /* a small record of the agent's (statement cache, slot entry, replication record) */
    AGENT_HOT_RECORD2,
    AGENT_HOT_RECORD3,
    AGENT_HOT_PAGE,  /* the buffer of the read's first page (page 1): SQLite's page cache keeps its
                      * header just after it */
    AGENT_HOT_PAGE2, /* the buffer of its second (the table's root) */
    AGENT_HOT_PCACHE, /* the connection's page cache (SQLite's own, as the page watch saw it) */
    AGENT_HOT_KINDS
};

struct agent_hot;

/* An empty table. NULL on OOM (then callers pass NULL: every call accepts it). */
struct agent_hot *agent_hot_new(void);
void agent_hot_free(struct agent_hot *h);
/* 1 when the entry for KEY already holds DB, STMT and PAGE, or there is no
 * table: then noting would change nothing worth its cost. */
int agent_hot_current(const struct agent_hot *h, uint64_t key, const void *db, const void *stmt, const void *page);
/* Records ADDRS (one per kind, NULL: none) as KEY's. */
void agent_hot_note(struct agent_hot *h, uint64_t key, const void *const addrs[AGENT_HOT_KINDS]);
/* Prefetches what was noted for KEY, if its entry is KEY's. */
void agent_hot_prefetch(const struct agent_hot *h, uint64_t key);

#endif
