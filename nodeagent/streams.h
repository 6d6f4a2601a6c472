/*
 * nodeagent/streams.h: Hrana streams that outlive one HTTP request
 * (interactive transactions), and their batons.
 *
 * A baton is "<node>.<base64url(id, seq, mac)>": the node prefix lets a
 * router send the rest of the stream to the agent that holds it; seq changes
 * on every request so an old baton cannot be replayed; the mac (keyed
 * BLAKE2b, key random per process, so batons die with the process as in
 * sqld) covers id, seq and the tenant. A stream is also bound to a hash of
 * the token that opened it.
 *
 * Threading: the table is locked inside; a taken stream is used by exactly
 * one thread (its tenant's worker) until released.
 */
#ifndef SHOAL_NODEAGENT_STREAMS_H
#define SHOAL_NODEAGENT_STREAMS_H

#include <stddef.h>
#include <stdint.h>

#include <sqlite3.h>

#include "api/err.h"
#include "nodeagent/hrana.h"

#define AGENT_BATON_MAX 160

struct agent_streams;
struct agent_stream;

int agent_streams_new(const char *node, size_t max_streams, int64_t idle_ms, struct agent_streams **out,
                      struct api_err *err);
/* Closes every stream left (their transactions roll back). No stream may be taken. */
void agent_streams_free(struct agent_streams *ss);

/* Checks BATON for TENANT and TOKEN and takes its stream. Errors:
 * API_EBATON (forged, reused, other tenant or token, closed),
 * API_ESTREAMEXPIRED (expired for inactivity), API_ECONFLICT (in use). */
int agent_streams_take(struct agent_streams *ss, const char *baton, const char *tenant, const char *token,
                       size_t token_len, struct agent_stream **out, struct api_err *err);
/* Adds a stream owning DB and HS (both freed with the stream), taken.
 * API_ETOOMANY when the table is full (DB and HS are then not taken). */
int agent_streams_add(struct agent_streams *ss, const char *tenant, const char *token, size_t token_len, sqlite3 *db,
                      struct agent_hrana_stream *hs, struct agent_stream **out, struct api_err *err);
/* Ends a request on a taken stream: CLOSED frees it; otherwise the stream
 * idles and BATON_OUT gets its next baton. */
void agent_streams_release(struct agent_streams *ss, struct agent_stream *st, int closed, char *baton_out,
                           size_t cap);

/* The baton agent_streams_release will give ST (taken) if it stays open, for
 * a reply that must name it before the request has run (a streamed cursor). */
void agent_streams_next_baton(struct agent_streams *ss, const struct agent_stream *st, char *baton_out, size_t cap);

sqlite3 *agent_stream_db(const struct agent_stream *st);
struct agent_hrana_stream *agent_stream_hrana(const struct agent_stream *st);

/* Removes idle streams past their expiry and hands each to CLOSE_FN, which
 * must close them on the tenant's worker (free HS, then sqlite3_close_v2 DB). */
size_t agent_streams_sweep(struct agent_streams *ss, int64_t now_ms,
                           void (*close_fn)(void *ud, const char *tenant, sqlite3 *db, struct agent_hrana_stream *hs),
                           void *ud);
size_t agent_streams_count(struct agent_streams *ss);

#endif
