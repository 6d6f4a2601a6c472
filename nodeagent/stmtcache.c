/* nodeagent/stmtcache.c: prepared statements by SQL text (see stmtcache.h). */
#include "nodeagent/stmtcache.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "api/workq.h"

#define STMT_CACHE_MAX 64

/* An entry stays while its statement is taken (ST NULL): giving it back
 * then costs no copy of the text and no allocation (the comparison finds
 * the text still in the CPU's cache). */
struct entry {
    uint64_t hash;
    size_t len;
    char *sql;
    sqlite3_stmt *st; /* NULL while taken */
    uint64_t used;    /* last take or give, for LRU */
    sqlite3_stmt *lent; /* while taken: the statement that went out */
    char *note;         /* agent_stmt_cache_set_note's text, or NULL */
    size_t note_len;
    int note_prepared;  /* the statement's re-prepare count when noted */
};

/* The counts and the user before the entries: a lookup reads them and the
 * first entries, all in the first lines (what a prefetch hint fetches). */
struct agent_stmt_cache {
    size_t n, cap;
    uint64_t clock;
    void *user;
    int hooked;
    sqlite3_stmt *last; /* the statement last given back */
    size_t taken;       /* 1 + the index of the entry last taken, 0: none */
    struct entry e[STMT_CACHE_MAX];
};

struct agent_stmt_cache *agent_stmt_cache_new(size_t cap)
{
    struct agent_stmt_cache *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    c->cap = cap == 0 ? 1 : cap > STMT_CACHE_MAX ? STMT_CACHE_MAX : cap;
    return c;
}

static void drop(struct agent_stmt_cache *c, size_t i)
{
    if (c->e[i].st == c->last)
        c->last = NULL;
    sqlite3_finalize(c->e[i].st);
    free(c->e[i].sql);
    free(c->e[i].note);
    c->e[i] = c->e[--c->n];
}

void agent_stmt_cache_free(struct agent_stmt_cache *c)
{
    if (c == NULL)
        return;
    while (c->n > 0)
        drop(c, c->n - 1);
    free(c);
}

sqlite3_stmt *agent_stmt_cache_take(struct agent_stmt_cache *c, const char *sql, size_t len)
{
    uint64_t h = api_hash_str(sql, len);
    for (size_t i = 0; i < c->n; i++) {
        struct entry *e = &c->e[i];
        if (e->st != NULL && e->hash == h && e->len == len && memcmp(e->sql, sql, len) == 0) {
            sqlite3_stmt *st = e->st;
            e->st = NULL;
            e->lent = st;
            e->used = ++c->clock;
            c->taken = i + 1;
            return st;
        }
    }
    return NULL;
}

void agent_stmt_cache_give(struct agent_stmt_cache *c, const char *sql, size_t len, sqlite3_stmt *st)
{
    char *copy;

    if (st == NULL)
        return;
    if (!sqlite3_stmt_readonly(st) || sqlite3_reset(st) != SQLITE_OK) {
        sqlite3_finalize(st);
        return;
    }
    sqlite3_clear_bindings(st);
    /* taken from here: the entry whose text it was prepared from waits for
     * it, most often the one taken last (found without hashing the text) */
    struct entry *t = c->taken > 0 && c->taken <= c->n ? &c->e[c->taken - 1] : NULL;
    c->taken = 0;
    if (t != NULL && t->st == NULL && t->lent == st && t->len == len && memcmp(t->sql, sql, len) == 0) {
        t->st = st;
        c->last = st;
        return;
    }
    uint64_t h = api_hash_str(sql, len);
    for (size_t i = 0; i < c->n; i++) {
        struct entry *e = &c->e[i];
        if (e->st == NULL && e->hash == h && e->len == len && memcmp(e->sql, sql, len) == 0) {
            if (e->lent != st) { /* another statement of the same text: the note was its */
                free(e->note);
                e->note = NULL;
            }
            e->st = st;
            c->last = st;
            return;
        }
    }
    if ((copy = malloc(len + 1)) == NULL) {
        sqlite3_finalize(st);
        return;
    }
    memcpy(copy, sql, len);
    copy[len] = '\0';
    if (c->n == c->cap) {
        size_t lru = 0;
        for (size_t i = 1; i < c->n; i++)
            if (c->e[i].used < c->e[lru].used)
                lru = i;
        drop(c, lru);
    }
    c->e[c->n++] = (struct entry){.hash = h, .len = len, .sql = copy, .st = st, .used = ++c->clock};
    c->last = st;
}

/* The entry ST was last taken from, while it is out. */
static struct entry *lent_entry(struct agent_stmt_cache *c, sqlite3_stmt *st)
{
    struct entry *e = c->taken > 0 && c->taken <= c->n ? &c->e[c->taken - 1] : NULL;
    return e != NULL && e->st == NULL && e->lent == st ? e : NULL;
}

const char *agent_stmt_cache_note(struct agent_stmt_cache *c, sqlite3_stmt *st, size_t *len)
{
    struct entry *e = lent_entry(c, st);
    if (e == NULL || e->note == NULL || e->note_prepared != sqlite3_stmt_status(st, SQLITE_STMTSTATUS_REPREPARE, 0))
        return NULL;
    *len = e->note_len;
    return e->note;
}

void agent_stmt_cache_set_note(struct agent_stmt_cache *c, sqlite3_stmt *st, const char *text, size_t len)
{
    struct entry *e = lent_entry(c, st);
    char *copy;
    if (e == NULL || (copy = malloc(len + 1)) == NULL)
        return;
    memcpy(copy, text, len);
    copy[len] = '\0';
    free(e->note);
    e->note = copy;
    e->note_len = len;
    e->note_prepared = sqlite3_stmt_status(st, SQLITE_STMTSTATUS_REPREPARE, 0);
}

sqlite3_stmt *agent_stmt_cache_last(const struct agent_stmt_cache *c)
{
    return c == NULL ? NULL : c->last;
}

void *agent_stmt_cache_user(const struct agent_stmt_cache *c)
{
    return c->user;
}

int agent_stmt_cache_set_user(struct agent_stmt_cache *c, void *user)
{
    int first = !c->hooked;
    c->hooked = 1;
    c->user = user;
    return first;
}

size_t agent_stmt_cache_size(const struct agent_stmt_cache *c)
{
    size_t held = 0;
    for (size_t i = 0; i < c->n; i++)
        held += c->e[i].st != NULL;
    return held;
}
