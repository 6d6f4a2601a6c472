/*
 * nodeagent/stmtcache.h: a small cache of prepared statements for one
 * SQLite connection, keyed by their exact SQL text.
 *
 * Why: a point read spends about as long in sqlite3_prepare as in running
 * the statement, and clients send the same few statements again and again.
 * Only statements that cannot write are cached (sqlite3_stmt_readonly), so a
 * read-only token can never run a write that was authorized for another
 * token: the authorizer runs when a statement is prepared, not when it runs.
 * SQLite re-prepares a cached statement by itself after a schema change.
 *
 * A statement is taken out while it runs and given back afterwards, so it is
 * never used twice at once. The owner of the connection frees the cache
 * (which finalizes its statements) before closing the connection.
 *
 * Threading: one thread at a time, like the connection.
 */
#ifndef SHOAL_NODEAGENT_STMTCACHE_H
#define SHOAL_NODEAGENT_STMTCACHE_H

#include <stddef.h>

#include <sqlite3.h>

struct agent_stmt_cache;

/* A cache of up to CAP statements (1..64). NULL on OOM. */
struct agent_stmt_cache *agent_stmt_cache_new(size_t cap);
/* Finalizes every cached statement and frees the cache. Accepts NULL. */
void agent_stmt_cache_free(struct agent_stmt_cache *c);
/* Takes out and returns the statement prepared from exactly SQL (LEN
 * bytes), reset and with no bindings, or NULL. */
sqlite3_stmt *agent_stmt_cache_take(struct agent_stmt_cache *c, const char *sql, size_t len);
/* Gives ST, prepared from SQL, back to the cache, or finalizes it when it can
 * write or cannot be kept. The least recently used entry makes room. */
void agent_stmt_cache_give(struct agent_stmt_cache *c, const char *sql, size_t len, sqlite3_stmt *st);
/* Text the caller derived from ST while it is taken out (a result's
 * columns as JSON), kept with its entry while SQLite has not re-prepared it
 * (a schema change can rename columns): NULL if none is kept or it is out
 * of date. Setting it on a statement not taken from C does nothing. */
const char *agent_stmt_cache_note(struct agent_stmt_cache *c, sqlite3_stmt *st, size_t *len);
void agent_stmt_cache_set_note(struct agent_stmt_cache *c, sqlite3_stmt *st, const char *text, size_t len);
/* The statement last given back, or NULL: only an address, for prefetch
 * hints (hot.h), never to be used as a statement (taken out again, it may
 * have been finalized since). Accepts NULL. */
sqlite3_stmt *agent_stmt_cache_last(const struct agent_stmt_cache *c);
/* The connection's current user (the Hrana stream running on it), for hooks
 * installed once per connection with C as their argument: installing an
 * authorizer expires every prepared statement, so a stream that reuses
 * statements must not install its own each time. */
void *agent_stmt_cache_user(const struct agent_stmt_cache *c);
/* Sets the current user (NULL: none). Returns 1 the first time it is called
 * on C, when the caller must install its hooks. */
int agent_stmt_cache_set_user(struct agent_stmt_cache *c, void *user);
/* Statements held (for tests). */
size_t agent_stmt_cache_size(const struct agent_stmt_cache *c);

#endif
