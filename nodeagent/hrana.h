/*
 * nodeagent/hrana.h: executes Hrana stream requests (Hrana over HTTP, JSON,
 * versions 2 and 3, as sqld serves them; ../shared/HRANA.md) on one SQLite
 * connection.
 *
 * A `struct agent_hrana_stream` is one Hrana stream: it borrows a sqlite3
 * connection (the caller opens and closes it) and owns the per-stream SQL
 * text cache (store_sql/close_sql). It knows nothing of HTTP, batons or
 * tenants: the agent's server code parses the pipeline body, finds or creates
 * the stream, calls agent_hrana_execute with the "requests" array, and wraps
 * the results.
 *
 * Threading: a stream and its connection are used by one thread at a time
 * (the tenant's worker); no locking inside.
 */
#ifndef SHOAL_NODEAGENT_HRANA_H
#define SHOAL_NODEAGENT_HRANA_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>
#include <sqlite3.h>

#include "api/err.h"

struct agent_hrana_stream;

struct agent_hrana_limits {
    int64_t stmt_timeout_ms;    /* per statement (progress handler); 0 = none */
    size_t max_response_bytes;  /* approximate cap on returned row data; 0 = none */
    int read_only;              /* refuse every write (the authorizer; the caller also sets query_only) */
};

/* What one pipeline did, for the caller's bookkeeping (positions, metrics). */
struct agent_hrana_outcome {
    int closed;        /* a "close" request ran: the stream is finished */
    int wrote;         /* some statement changed the database (total_changes moved, or DDL ran) */
    int in_txn;        /* the connection is inside a transaction afterwards */
    uint64_t rows_read;
    uint64_t rows_written;
};

/* A stream over DB (borrowed; must outlive the stream). Returns NULL on OOM. */
struct agent_hrana_stream *agent_hrana_stream_new(sqlite3 *db, const struct agent_hrana_limits *limits);
void agent_hrana_stream_free(struct agent_hrana_stream *s);

struct agent_stmt_cache;
/* The same, reusing prepared queries from STMTS (nodeagent/stmtcache.h;
 * borrowed: it must belong to DB and outlive the stream). */
struct agent_hrana_stream *agent_hrana_stream_new_cached(sqlite3 *db, const struct agent_hrana_limits *limits,
                                                         struct agent_stmt_cache *stmts);

/* Switches a stream between read-only and read-write (per request: the
 * token that sent it decides). */
void agent_hrana_stream_set_read_only(struct agent_hrana_stream *s, int read_only);

/* Runs REQUESTS (the JSON array of a pipeline body) in order and sets
 * *RESULTS to a new JSON array of StreamResult objects, one per request
 * ({"type":"ok","response":{...}} or {"type":"error","error":{"message","code"}}).
 * VERSION is 2 or 3 (v3 adds get_autocommit and the is_autocommit condition).
 * SQL errors are in-band (HTTP 200). A protocol error (not an array, unknown
 * request type, both sql and sql_id, unknown sql_id, bad condition, v3-only
 * feature on v2, ...) returns API_EINVAL with the message for a 400 and leaves
 * *RESULTS unset; the caller then discards the stream. */
int agent_hrana_execute(struct agent_hrana_stream *s, const json_t *requests, int version, json_t **results,
                        struct agent_hrana_outcome *out, struct api_err *err);

/* Runs BATCH (a Hrana Batch object) for /v3/cursor and sets *ENTRIES to a
 * new JSON array of cursor entries in order: for each executed step
 * step_begin {step, cols}, one row entry {row} per row, and step_end
 * {affected_row_count, last_insert_rowid}; or step_error {step, error}.
 * Skipped steps produce nothing. Protocol errors as agent_hrana_execute. */
int agent_hrana_cursor(struct agent_hrana_stream *s, const json_t *batch, int version, json_t **entries,
                       struct agent_hrana_outcome *out, struct api_err *err);

/* 1 if every statement of REQUESTS (a pipeline's array) only reads, so a
 * replica may answer it; 0 if one writes or needs a stream's stored SQL.
 * Prepares (and finalizes) each statement on DB. */
int agent_hrana_reads_only(sqlite3 *db, const json_t *requests);

/* JSON for one SQLite value as Hrana encodes it (new reference). Exposed for tests. */
json_t *agent_hrana_value_to_json(sqlite3_value *v);

#endif
