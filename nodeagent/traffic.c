/* nodeagent/traffic.c: see traffic.h. One mutex; the critical sections are a
 * map lookup and an add, so request workers never wait on each other long. */
#include "nodeagent/traffic.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "api/map.h"

#define REGIONS_PER_TENANT 8 /* beyond that, writes go to the last slot's region "other" */

struct tally {
    size_t n;
    char region[REGIONS_PER_TENANT][8];
    uint64_t writes[REGIONS_PER_TENANT];
};

struct agent_traffic {
    pthread_mutex_t mu;
    struct api_map *by_tenant; /* tenant -> struct tally* */
};

struct agent_traffic *agent_traffic_new(void)
{
    struct agent_traffic *t = calloc(1, sizeof(*t));
    if (t == NULL || (t->by_tenant = api_map_new()) == NULL) {
        free(t);
        return NULL;
    }
    pthread_mutex_init(&t->mu, NULL);
    return t;
}

void agent_traffic_free(struct agent_traffic *t)
{
    if (t == NULL)
        return;
    api_map_free(t->by_tenant, free);
    pthread_mutex_destroy(&t->mu);
    free(t);
}

void agent_traffic_add(struct agent_traffic *t, const char *tenant, const char *region, uint64_t n)
{
    struct tally *y;
    int oom = 0;
    if (t == NULL || n == 0)
        return;
    pthread_mutex_lock(&t->mu);
    if ((y = api_map_get(t->by_tenant, tenant)) == NULL && (y = calloc(1, sizeof(*y))) != NULL) {
        api_map_put(t->by_tenant, tenant, y, &oom);
        if (oom) {
            free(y);
            y = NULL;
        }
    }
    if (y != NULL) {
        size_t i = 0;
        while (i < y->n && strcmp(y->region[i], region) != 0)
            i++;
        if (i == y->n) {
            if (y->n == REGIONS_PER_TENANT)
                i = REGIONS_PER_TENANT - 1; /* a tenant written from 8+ regions: the tail shares a slot */
            else
                snprintf(y->region[y->n++], sizeof(y->region[0]), "%s", region);
        }
        y->writes[i] += n;
    }
    pthread_mutex_unlock(&t->mu);
}

struct take_ctx {
    json_t *tenants;
};

static void add_tenant(void *ud, const char *key, void *value)
{
    struct take_ctx *c = ud;
    const struct tally *y = value;
    json_t *o = json_object();
    if (o == NULL)
        return;
    for (size_t i = 0; i < y->n; i++)
        json_object_set_new(o, y->region[i], json_integer((json_int_t)y->writes[i]));
    json_object_set_new(c->tenants, key, o);
}

json_t *agent_traffic_take(struct agent_traffic *t)
{
    struct api_map *taken, *fresh = api_map_new();
    struct take_ctx c = {json_object()};
    if (fresh == NULL || c.tenants == NULL) {
        api_map_free(fresh, NULL);
        json_decref(c.tenants);
        return NULL;
    }
    pthread_mutex_lock(&t->mu);
    taken = t->by_tenant;
    t->by_tenant = fresh;
    pthread_mutex_unlock(&t->mu);
    api_map_foreach(taken, add_tenant, &c);
    api_map_free(taken, free);
    if (json_object_size(c.tenants) == 0) {
        json_decref(c.tenants);
        return NULL;
    }
    return json_pack("{s:o}", "tenants", c.tenants);
}
