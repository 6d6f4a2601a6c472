/* nodeagent/hot.c: prefetch hints per tenant (see hot.h). */
#include "nodeagent/hot.h"

#include <stdatomic.h>
#include <stdlib.h>

/* 4,096 entries of two cache lines each: 512 KiB. With more tenants than
 * entries, an entry holds the last tenant read of those sharing it. */
#define HOT_SETS 4096
#define LINE 64

struct entry {
    _Atomic uint64_t key;
    _Atomic uintptr_t addr[AGENT_HOT_KINDS];
} __attribute__((aligned(LINE)));

_Static_assert(sizeof(struct entry) == 2 * LINE, "an entry is two cache lines");

struct agent_hot {
    struct entry e[HOT_SETS];
};

/* Lines fetched around each kind's address, [from, to) in lines: SQLite
 * 3.40's read path reads in the first kilobyte of its connection, in its
 * pager and its WAL (each allocated with its file handle, before it) and in
 * the first lines of the statement (callgrind's cache simulation placed
 * those misses); the agent's records are small and keep what a read needs
 * first. Wider spans (24 lines of the connection, 16 before the file handle,
 * 10 of the statement) measured the same, and so did the WAL's. A read's
 * first two pages (page 1, then the table's root: store.h's page watch)
 * start the b-tree's chain of misses; hinting them took agent CPU per read
 * over 1,000 tenants from 19.8 to 17.8 us (16 connections, medians of eight
 * alternating rounds; 18.8 -> 18.0 at 64), and the page cache's own record,
 * which every page fetch reads first, about 2 us more at 16 connections
 * (better in seven of eight rounds; at 64, five of eight). */
static const int span[AGENT_HOT_KINDS][2] = {
    [AGENT_HOT_DB] = {0, 16},    [AGENT_HOT_FILE] = {-10, 2},   [AGENT_HOT_WAL] = {-4, 1},
    [AGENT_HOT_STMT] = {0, 6},   [AGENT_HOT_RECORD] = {0, 2},   [AGENT_HOT_RECORD2] = {0, 2},
    [AGENT_HOT_RECORD3] = {0, 2}, [AGENT_HOT_PAGE] = {0, 2},    [AGENT_HOT_PAGE2] = {0, 2},
    [AGENT_HOT_PCACHE] = {0, 2},
};
/* A second range: a page's last line (a small b-tree page keeps its cells
 * there) and, after its 4 KiB, the page cache's header, the pager's and the
 * b-tree's records of it (SQLite's default page cache allocates them with
 * the buffer, after it). */
static const int span_after[AGENT_HOT_KINDS][2] = {
    [AGENT_HOT_PAGE] = {64, 68},
    [AGENT_HOT_PAGE2] = {63, 68},
};

struct agent_hot *agent_hot_new(void)
{
    struct agent_hot *h = aligned_alloc(LINE, sizeof(struct agent_hot));
    if (h == NULL)
        return NULL;
    for (size_t i = 0; i < HOT_SETS; i++) {
        atomic_init(&h->e[i].key, 0);
        for (int k = 0; k < AGENT_HOT_KINDS; k++)
            atomic_init(&h->e[i].addr[k], 0);
    }
    return h;
}

void agent_hot_free(struct agent_hot *h)
{
    free(h);
}

int agent_hot_current(const struct agent_hot *h, uint64_t key, const void *db, const void *stmt, const void *page)
{
    if (h == NULL)
        return 1;
    const struct entry *e = &h->e[key % HOT_SETS];
    return atomic_load_explicit(&e->key, memory_order_relaxed) == key &&
           atomic_load_explicit(&e->addr[AGENT_HOT_DB], memory_order_relaxed) == (uintptr_t)db &&
           atomic_load_explicit(&e->addr[AGENT_HOT_STMT], memory_order_relaxed) == (uintptr_t)stmt &&
           atomic_load_explicit(&e->addr[AGENT_HOT_PAGE], memory_order_relaxed) == (uintptr_t)page;
}

void agent_hot_note(struct agent_hot *h, uint64_t key, const void *const addrs[AGENT_HOT_KINDS])
{
    if (h == NULL)
        return;
    struct entry *e = &h->e[key % HOT_SETS];
    /* a reader between these stores may see a mix of two tenants' addresses: only useless fetches */
    for (int k = 0; k < AGENT_HOT_KINDS; k++)
        atomic_store_explicit(&e->addr[k], (uintptr_t)addrs[k], memory_order_relaxed);
    atomic_store_explicit(&e->key, key, memory_order_relaxed);
}

void agent_hot_prefetch(const struct agent_hot *h, uint64_t key)
{
    if (h == NULL)
        return;
    const struct entry *e = &h->e[key % HOT_SETS];
    if (atomic_load_explicit(&e->key, memory_order_relaxed) != key)
        return;
    for (int k = 0; k < AGENT_HOT_KINDS; k++) {
        uintptr_t p = atomic_load_explicit(&e->addr[k], memory_order_relaxed);
        if (p == 0)
            continue;
        /* an address, not a pointer: it is never read through */
        for (int l = span[k][0]; l < span[k][1]; l++)
            __builtin_prefetch((const void *)(p + (uintptr_t)(intptr_t)(l * LINE)), 0, 3);
        for (int l = span_after[k][0]; l < span_after[k][1]; l++)
            __builtin_prefetch((const void *)(p + (uintptr_t)(intptr_t)(l * LINE)), 0, 3);
    }
}
