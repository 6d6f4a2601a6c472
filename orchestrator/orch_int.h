/*
 * orchestrator/orch_int.h: the orchestrator's state, shared by the admin
 * API (orch.c) and long operations (handover.c). Not for other components.
 */
#ifndef SHOAL_ORCHESTRATOR_ORCH_INT_H
#define SHOAL_ORCHESTRATOR_ORCH_INT_H

#include <pthread.h>
#include <stdatomic.h>

#include <jansson.h>

#include "api/cluster.h"
#include "api/etcd.h"
#include "api/server.h"
#include "api/token.h"
#include "api/workq.h"
#include "orchestrator/orch.h"
#include "placement/place.h"

struct orch_ops;

struct orch {
    struct orch_config cfg;
    unsigned char sk[API_TOKEN_SECRET_BYTES];
    char *admin_token;
    struct place_regions *regions;
    struct api_etcd *etcd;
    struct api_cluster *view;
    struct api_workq *workers;
    struct api_server *server;
    atomic_ullong job_seq;
    atomic_ullong tenants_created, tenants_deleted, tokens_issued, handovers_done, handovers_failed;
    char *internal_token;   /* what agents' /internal endpoints want */
    struct orch_ops *ops;   /* operations (handover.c) */
    atomic_int failover_ready; /* workers exist: the view may hand work over */
    pthread_mutex_t failover_mu; /* orders that hand-over against shutdown */
    atomic_int leader;           /* this orchestrator runs the control loops */
    struct orch_leader *election;
    struct orch_placer *placer;
    atomic_ullong placement_moves, repairs;
};

/* orch.c helpers */
/* api_cluster_wait predicate: TENANT's lease is held by NODE. */
struct orch_holder_is {
    const char *tenant, *node;
};
int orch_holder_is(void *ud, struct api_cluster *c);
int orch_check_admin(struct orch *o, struct api_req *r);
int orch_tenant_param(struct api_req *r, char *out);
void orch_node_region(struct orch *o, const char *node, char *region, char *url);
/* An agent's GET /internal/tenants/{id} report (NULL if unreachable). */
json_t *orch_agent_status(struct orch *o, const char *url, const char *tenant);

/* handover.c */
int orch_ops_new(struct orch_ops **out);
void orch_ops_free(struct orch_ops *ops);
int orch_handover_routes(struct orch *o);
/* Operations: start one for TENANT (NULL if one runs: its id in BUSY_ID, or
 * *OOM), record steps and results, finish it (state "done" or "failed"). */
struct op;
struct op *orch_op_start(struct orch *o, const char *kind, const char *tenant, const char *from, const char *to,
                         char busy_id[40], int *oom);
void orch_op_step(struct orch *o, struct op *op, const char *step, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void orch_op_result(struct orch *o, struct op *op, int64_t stall_ms, const char *final_txid, json_t *extra);
void orch_op_finish(struct orch *o, struct op *op, const char *state, const char *error);
int orch_op_running(struct orch *o, const char *tenant);

/* leader.c: one orchestrator runs the control loops */
struct orch_leader;
int orch_leader_start(struct orch *o, struct orch_leader **out);
void orch_leader_stop(struct orch_leader *l);
int orch_is_leader(struct orch *o);

/* failover.c: the view's change callback (watch thread) */
/* Queues a failover check of TENANT (a handover left it without a holder). */
void orch_failover_check(struct orch *o, const char *tenant);
void orch_failover_on_change(void *ud, enum api_cluster_change kind, const char *id, int deleted);

/* handover.c: starts a handover of TENANT from FROM to TO as an operation
 * of KIND, whose first step says WHY; its id in OP_ID. -1 if one runs
 * already for the tenant or out of memory. */
int orch_handover_begin(struct orch *o, const char *tenant, const char *from, const char *to, const char *kind,
                        const char *why, char op_id[40]);

/* placer.c: traffic-driven moves and repair of lost replicas (leader only) */
struct orch_placer;
int orch_placer_start(struct orch *o, struct orch_placer **out, struct api_err *err);
void orch_placer_stop(struct orch_placer *p);

/* Frees the calling worker's HTTP client (workq on_exit). */
void orch_handover_thread_exit(void);

#endif
