/*
 * orchestrator/replay.h: the `fly-replay` response header as Fly.io's proxy
 * reads it (CONTRACT.md), and the request headers a router adds when it
 * follows one (`fly-replay-src`, `fly-replay-failed`).
 *
 * Why a file of its own: the grammar is the part of the router that talks to
 * code Shoal does not own (any app written for Fly.io), so it is pure (no
 * I/O, no clock, no globals) and tested exhaustively in
 * tests/unit/router/. Thread-safe.
 *
 * Grammar: fields joined by `;`, each `key=value`, whitespace around either
 * ignored, a value may be double-quoted (then `;` inside it is literal).
 *   region=<code> | region="<code>,<code>,any"   candidates, in order
 *   instance=<id>          exactly that instance
 *   prefer_instance=<id>   that instance if it can be reached, else any
 *   elsewhere=true         any instance but the one that answered
 *   state=<opaque>         handed to the target in fly-replay-src
 *   timeout=<duration>     how long to keep trying the target (500ms, 2s, 1m)
 *   fallback=force_self|prefer_self   what to do when the target fails
 * Unknown keys are ignored (Fly.io's proxy grows fields; an old router must
 * not refuse a newer app). A header that names no target is malformed.
 */
#ifndef SHOAL_ORCHESTRATOR_REPLAY_H
#define SHOAL_ORCHESTRATOR_REPLAY_H

#include <stddef.h>
#include <stdint.h>

#include "api/err.h"

#define ORCH_REPLAY_MAX_REGIONS 8
#define ORCH_REPLAY_ID_MAX 64
#define ORCH_REPLAY_STATE_MAX 256
/* the longest timeout honoured; longer ones are clamped (a worker waits) */
#define ORCH_REPLAY_MAX_TIMEOUT_MS 60000

enum orch_replay_fallback { ORCH_FALLBACK_NONE, ORCH_FALLBACK_FORCE_SELF, ORCH_FALLBACK_PREFER_SELF };

struct orch_replay {
    char regions[ORCH_REPLAY_MAX_REGIONS][8]; /* in the order given; "any" is not stored here */
    size_t nregions;
    int any_region;                 /* "any" was in the region list */
    char instance[ORCH_REPLAY_ID_MAX];
    char prefer_instance[ORCH_REPLAY_ID_MAX];
    int elsewhere;
    char state[ORCH_REPLAY_STATE_MAX];
    long timeout_ms;                /* 0: not given (the router's default applies) */
    enum orch_replay_fallback fallback;
};

/* Parses the header value VALUE (NUL-terminated) into *OUT (set only on
 * success). Returns API_OK, or API_EINVAL with a message saying which field
 * is wrong. Instance ids are 1-63 of [A-Za-z0-9_-] (Shoal node names and
 * Fly.io machine ids both fit); states may not hold control characters, so
 * they can be echoed in a header. */
int orch_replay_parse(const char *value, struct orch_replay *out, struct api_err *err);

/* Parses a duration as in timeout= ("500ms", "2s", "1m"; a bare number is
 * seconds) into *OUT, clamped to ORCH_REPLAY_MAX_TIMEOUT_MS. 0 or -1. */
int orch_duration_ms(const char *s, long *out);

/* Writes the value of `fly-replay-src` into OUT (CAP bytes):
 * `instance=<id>;region=<code>;t=<T_US>;state=<state>` (state only when
 * non-empty; region only when known). Returns the length, or -1 if it did
 * not fit. */
int orch_replay_src_format(char *out, size_t cap, const char *instance, const char *region, int64_t t_us,
                           const char *state);

/* Writes the value of `fly-replay-failed` for a replay that could not be
 * delivered: `instance=<id>;region=<code>;reason=<reason>` with the fields of
 * RP that named the target, REASON "no_candidate" (nothing matched) or
 * "timeout" (a match did not answer in time). Returns the length or -1. */
int orch_replay_failed_format(char *out, size_t cap, const struct orch_replay *rp, const char *reason);

#endif
