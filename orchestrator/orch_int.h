/*
 * orchestrator/orch_int.h: the orchestrator's state, shared by the admin
 * API (orch.c) and long operations (handover.c). Not for other components.
 */
#ifndef SHOAL_ORCHESTRATOR_ORCH_INT_H
#define SHOAL_ORCHESTRATOR_ORCH_INT_H

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
};

/* orch.c helpers */
int orch_check_admin(struct orch *o, struct api_req *r);
int orch_tenant_param(struct api_req *r, char *out);
void orch_node_region(struct orch *o, const char *node, char *region, char *url);
/* An agent's GET /internal/tenants/{id} report (NULL if unreachable). */
json_t *orch_agent_status(struct orch *o, const char *url, const char *tenant);

/* handover.c */
int orch_ops_new(struct orch_ops **out);
void orch_ops_free(struct orch_ops *ops);
int orch_handover_routes(struct orch *o);
/* Frees the calling worker's HTTP client (workq on_exit). */
void orch_handover_thread_exit(void);

#endif
