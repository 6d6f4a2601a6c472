/*
 * nodeagent/session.h: the agent's etcd session lease and the per-tenant
 * lease keys attached to it (DESIGN.md "Leases").
 *
 * One etcd lease per agent keeps every tenant key it holds alive; each
 * tenant's key (/shoal/leases/<id>) is still acquired, released and handed
 * over on its own. The epoch of a tenant is the key's mod_revision at
 * acquisition, the fencing token.
 *
 * Fencing: agent_session_writable() is true only while
 *   monotonic_now < last successful keep-alive SENT + TTL - margin,
 * so an agent that cannot reach etcd stops writing before its keys could
 * have expired. (The keep-alive's send time, not its reply time, because
 * etcd starts the new TTL when it receives the request.)
 *
 * Threading: writable() and lease_id() are lock-free (atomics) and callable
 * from any thread; the etcd calls block and belong to the controller thread.
 */
#ifndef SHOAL_NODEAGENT_SESSION_H
#define SHOAL_NODEAGENT_SESSION_H

#include <stdint.h>

#include "api/err.h"
#include "api/etcd.h"

struct agent_session;

/* Grants the session lease and registers NODE_JSON at /shoal/nodes/<node>. */
int agent_session_new(struct api_etcd *etcd, const char *node, const char *url, const char *node_json,
                      int64_t ttl_s, struct agent_session **out, struct api_err *err);
/* Revokes the session lease (every key on it vanishes at once) and frees. */
void agent_session_free(struct agent_session *s, int revoke);

/* Renews the session. API_EUNAVAILABLE if the lease is gone (expired):
 * call agent_session_regrant. Other errors: etcd unreachable. */
int agent_session_keepalive(struct agent_session *s, struct api_err *err);
/* Grants a new session lease and re-registers the node key. Every tenant
 * key held before is gone with the old lease. */
int agent_session_regrant(struct agent_session *s, struct api_err *err);

int64_t agent_session_lease_id(const struct agent_session *s);
int64_t agent_session_ttl_s(const struct agent_session *s);
/* 1 while writes are safe (see the fencing rule above). */
int agent_session_writable(const struct agent_session *s);

/* Acquires tenant ID's key for this node. On success *EPOCH is the new epoch.
 * Held by another node: API_ECONFLICT with HOLDER (>= 64 bytes) set. */
int agent_session_acquire(struct agent_session *s, const char *id, int64_t *epoch, char *holder,
                          struct api_err *err);
/* Deletes tenant ID's key if this node's session holds it. */
int agent_session_release(struct agent_session *s, const char *id, struct api_err *err);

#endif
