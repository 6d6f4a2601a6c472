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
 * the results. Results are written as JSON text (api/jsonout.h) as they are
 * produced, not built as a tree first.
 *
 * Threading: a stream and its connection are used by one thread at a time
 * (the tenant's worker); no locking inside.
 */
#ifndef SHOAL_NODEAGENT_HRANA_H
#define SHOAL_NODEAGENT_HRANA_H

#include <stddef.h>
#include <stdint.h>

#include <sqlite3.h>

#include "api/err.h"
#include "api/jsonin.h"
#include "api/jsonout.h"

struct agent_hrana_stream;

struct agent_hrana_limits {
    int64_t stmt_timeout_ms;    /* per statement (progress handler); 0 = none */
    size_t max_response_bytes;  /* approximate cap on returned row data; 0 = none */
    int read_only;              /* refuse every write (the authorizer; the caller also sets query_only) */
    int64_t budget_us;          /* run in place: stop once the stream ran this long (agent_hrana_stream_gave_up); 0 = none */
};

/* What one pipeline did, for the caller's bookkeeping (positions, metrics). */
struct agent_hrana_outcome {
    int closed;        /* a "close" request ran: the stream is finished */
    int wrote;         /* some statement changed the database (total_changes moved, or DDL ran) */
    int in_txn;        /* the connection is inside a transaction afterwards */
    int failed;        /* some request's result is {"type":"error"} */
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

/* 1 if the stream stopped a statement because its budget_us ran out: its
 * results are not an answer (the caller runs the request again elsewhere). */
int agent_hrana_stream_gave_up(const struct agent_hrana_stream *s);

/* Switches a stream between read-only and read-write (per request: the
 * token that sent it decides). */
void agent_hrana_stream_set_read_only(struct agent_hrana_stream *s, int read_only);

/* Runs REQUESTS (the JSON array of a pipeline body) in order and writes to
 * RESULTS one JSON array of StreamResult objects, one per request
 * ({"type":"ok","response":{...}} or {"type":"error","error":{"message","code"}}).
 * VERSION is 2 or 3 (v3 adds get_autocommit and the is_autocommit condition).
 * SQL errors are in-band (HTTP 200). A protocol error (not an array, unknown
 * request type, both sql and sql_id, unknown sql_id, bad condition, v3-only
 * feature on v2, ...) returns API_EINVAL with the message for a 400; what
 * RESULTS holds then is no answer, and the caller discards the stream. */
int agent_hrana_execute(struct agent_hrana_stream *s, const struct api_jv *requests, int version, struct api_jw *results,
                        struct agent_hrana_outcome *out, struct api_err *err);

/* Runs BATCH (a Hrana Batch object) for /v3/cursor and appends its cursor
 * entries to LINES, each a JSON object followed by a newline: for each
 * executed step step_begin {step, cols}, one row entry {row} per row, and
 * step_end {affected_row_count, last_insert_rowid}; or step_error {step,
 * error}. Skipped steps produce nothing. Protocol errors as
 * agent_hrana_execute. */
int agent_hrana_cursor(struct agent_hrana_stream *s, const struct api_jv *batch, int version, struct api_jw *lines,
                       struct agent_hrana_outcome *out, struct api_err *err);

/* Where a streamed cursor sends its entries, one at a time, as SQLite
 * produces them: LINE is one entry's JSON text (LEN bytes, no newline),
 * borrowed for the call. The sink may block for
 * room until DEADLINE_MS (monotonic ms, as api_now_ms): the running
 * statement's own deadline, or one statement time limit from now between
 * statements (AGENT_HRANA_CURSOR_STALL_MS when there is no limit). It returns
 * API_OK to go on; any other code (with ERR set) stops the batch, and
 * agent_hrana_cursor_stream returns that code. */
struct agent_hrana_sink {
    int (*entry)(void *ud, const char *line, size_t len, int64_t deadline_ms, struct api_err *err);
    void *ud;
};

#define AGENT_HRANA_CURSOR_STALL_MS 30000

/* 1 if BATCH can run on S without a protocol error: its shape, conditions,
 * SQL texts (sql_id included), arguments and every value are well formed,
 * checked for all steps and arguments, used or not (stricter than
 * execution). A streamed cursor needs this: a protocol error answers the
 * whole request with 400, which cannot be sent once entries have gone out. */
int agent_hrana_cursor_check(struct agent_hrana_stream *s, const struct api_jv *batch, int version);

/* Runs BATCH as agent_hrana_cursor does, but hands each entry to SINK as it
 * is produced instead of collecting them: step_begin (once the statement
 * has produced its first row or finished), each row, then step_end or
 * step_error. The entries are the ones agent_hrana_cursor returns for the
 * same batch, with two differences that only a streamed reply can have:
 * there is no response size cap (max_response_bytes; memory is bounded by
 * the sink), and a statement that fails after producing rows has sent its
 * step_begin and those rows before its step_error (the Hrana 3 spec allows
 * this; buffered, only the step_error appears). Check the batch with
 * agent_hrana_cursor_check first: a protocol error found midway is returned
 * like a sink error, after entries were sent. */
int agent_hrana_cursor_stream(struct agent_hrana_stream *s, const struct api_jv *batch, int version,
                              const struct agent_hrana_sink *sink, struct agent_hrana_outcome *out,
                              struct api_err *err);

/* 1 if every statement of BATCH (a Hrana Batch object) only reads, as
 * agent_hrana_reads_only decides for a pipeline holding that one batch. */
int agent_hrana_batch_reads_only(sqlite3 *db, const struct api_jv *batch);

/* 1 if every statement of REQUESTS (a pipeline's array) only reads, so a
 * replica may answer it; 0 if one writes or needs a stream's stored SQL.
 * Prepares (and finalizes) each statement on DB. */
int agent_hrana_reads_only(sqlite3 *db, const struct api_jv *requests);

/* One SQLite value as Hrana encodes it, written to W. Exposed for tests. */
void agent_hrana_value_write(struct api_jw *w, sqlite3_value *v);

/* Frees this thread's scratch text (a thread that ran streams ends). */
void agent_hrana_thread_exit(void);

#endif
