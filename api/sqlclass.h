/*
 * api/sqlclass.h: can a replica answer this Hrana request? The one walk over
 * a pipeline's requests that agents and routers share, and a lexical
 * classifier of SQL for a router, which has no database to prepare on.
 *
 * The agent decides with sqlite3_stmt_readonly on the tenant's own schema
 * (exact); the router decides lexically (conservative: "read-only" only for
 * statements that certainly are). Both walk the pipeline the same way
 * (api_pipeline_reads_only), so they agree on which request types a replica
 * may serve. When the router guesses "read" and the replica finds a write,
 * the replica answers fly-replay and the router follows it: the guess only
 * costs a hop, never correctness.
 *
 * Pure functions; thread-safe.
 */
#ifndef SHOAL_API_SQLCLASS_H
#define SHOAL_API_SQLCLASS_H

#include <stddef.h>

#include "api/err.h"
#include "api/jsonin.h"

/* 1 if every statement of SQL (NUL-terminated, possibly several separated
 * by `;`) is certainly read-only by its text: SELECT, VALUES, WITH ...
 * SELECT, EXPLAIN, reading PRAGMAs, and the transaction statements that
 * sqlite3_stmt_readonly also counts as read-only (BEGIN [DEFERRED], COMMIT,
 * END, ROLLBACK, SAVEPOINT, RELEASE). 0 for anything else, including text
 * it cannot tokenize (an unterminated quote). */
int api_sql_reads_only(const char *sql);

/* Decides whether one statement's SQL only reads. UD is the caller's. */
typedef int (*api_stmt_reads_fn)(void *ud, const char *sql);

/* 1 if every statement of REQUESTS (a Hrana pipeline's "requests" array)
 * only reads according to STMT_READS, so a replica may answer it; 0 if one
 * writes, needs a stream's stored SQL (sql_id, store_sql) or is of an
 * unknown type. A request without a type counts as read-only: the executor
 * reports the protocol error wherever it runs. */
int api_pipeline_reads_only(const struct api_jv *requests, api_stmt_reads_fn stmt_reads, void *ud);
/* The same for one Hrana Batch object (its steps' statements). */
int api_batch_reads_only(const struct api_jv *batch, api_stmt_reads_fn stmt_reads, void *ud);

/* What a router needs to know about a pipeline body to route it. */
struct api_pipeline_info {
    int parsed;          /* the body was a JSON object */
    int has_baton;       /* a baton string was given */
    char baton_node[64]; /* the node named by the baton ("<node>.<...>"), "" if it names none */
    int ends_with_close; /* the last request is "close": no stream outlives the request */
    int reads_only;      /* every statement is lexically read-only (api_sql_reads_only) */
};

/* Inspects a /v2|/v3 pipeline body (BODY, LEN bytes). Never fails: an
 * unparsable body gives parsed=0 and reads_only=0 (the primary reports the
 * error). Cheap: plain bodies (ASCII, no escapes, execute and close
 * requests) are scanned without building a JSON tree; anything else is
 * parsed in full (api/jsonin.h), so the answer is the same either way. */
void api_pipeline_inspect(const char *body, size_t len, struct api_pipeline_info *out);
/* The same, always through the full parser (the reference; exposed for tests). */
void api_pipeline_inspect_full(const char *body, size_t len, struct api_pipeline_info *out);
/* The same for a body already parsed (ROOT: its top value). */
void api_pipeline_inspect_doc(const struct api_jv *root, struct api_pipeline_info *out);

#endif
