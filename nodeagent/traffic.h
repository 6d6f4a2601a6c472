/*
 * nodeagent/traffic.h: write counts per tenant and client region, for
 * placement near users (DESIGN.md "Placement near users").
 *
 * The primary counts each committed transaction under the region of the
 * client that sent it (`shoal-client-region`, set by the router or by the
 * agent that forwarded the request; else this agent's own region). The
 * controller takes the counts once per interval and publishes them in one
 * etcd key per node, /shoal-stats/traffic/<node>, on the session lease: one
 * message per agent per interval, however many tenants wrote. Nothing per
 * tenant runs on a timer, and a tenant that did not write costs nothing.
 */
#ifndef SHOAL_NODEAGENT_TRAFFIC_H
#define SHOAL_NODEAGENT_TRAFFIC_H

#include <stdint.h>

#include <jansson.h>


struct agent_traffic;

struct agent_traffic *agent_traffic_new(void);
void agent_traffic_free(struct agent_traffic *t);

/* Adds N writes of TENANT from clients in REGION. Thread-safe, O(1). */
void agent_traffic_add(struct agent_traffic *t, const char *tenant, const char *region, uint64_t n);

/* Takes what was counted since the last take and starts over:
 *   {"tenants":{"acme":{"sin":12,"ams":3},...}}
 * NULL when nothing was counted (or out of memory). Thread-safe. */
json_t *agent_traffic_take(struct agent_traffic *t);

#endif
