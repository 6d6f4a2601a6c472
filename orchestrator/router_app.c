/*
 * orchestrator/router_app.c: the ordinary web apps a router fronts (--app,
 * --app-config): parsing and validating their instance lists. No I/O but
 * reading the config file at start-up.
 */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "api/jsonutil.h"
#include "api/names.h"
#include "orchestrator/router_int.h"

/* ------------------------------------------------------------------ */
/* --app                                                               */

static int app_instance_set(struct orch_app *a, const char *region, size_t rlen, const char *id, size_t ilen,
                            const char *url, size_t ulen, struct api_err *err)
{
    struct orch_app_instance *in;
    if (a->n >= ORCH_APP_MAX_INSTANCES)
        return api_err_set(err, API_EINVAL, "app '%s': more than %d instances", a->name, ORCH_APP_MAX_INSTANCES);
    if (!api_region_valid(region, rlen))
        return api_err_set(err, API_EINVAL, "app '%s': '%.*s' is not a region code", a->name, (int)(rlen < 16 ? rlen : 16),
                           region);
    if (ilen == 0 || ilen >= sizeof(in->id))
        return api_err_set(err, API_EINVAL, "app '%s': empty or long instance id", a->name);
    for (size_t i = 0; i < ilen; i++)
        if (!isalnum((unsigned char)id[i]) && id[i] != '-' && id[i] != '_')
            return api_err_set(err, API_EINVAL, "app '%s': instance id '%.*s' may hold only letters, digits, - and _",
                               a->name, (int)ilen, id);
    while (ulen > 0 && url[ulen - 1] == '/')
        ulen--;
    /* http:// only: the router's upstream client (api/aclient.h) speaks no TLS */
    if (ulen < 8 || ulen >= sizeof(in->url) || strncmp(url, "http://", 7) != 0)
        return api_err_set(err, API_EINVAL, "app '%s': instance '%.*s' needs an http:// URL (no TLS to instances)",
                           a->name, (int)ilen, id);
    for (size_t i = 0; i < a->n; i++)
        if (strlen(a->inst[i].id) == ilen && strncmp(a->inst[i].id, id, ilen) == 0)
            return api_err_set(err, API_EINVAL, "app '%s': instance '%.*s' given twice", a->name, (int)ilen, id);
    in = &a->inst[a->n++];
    snprintf(in->region, sizeof(in->region), "%.*s", (int)rlen, region);
    snprintf(in->id, sizeof(in->id), "%.*s", (int)ilen, id);
    snprintf(in->url, sizeof(in->url), "%.*s", (int)ulen, url);
    return API_OK;
}

int orch_app_parse(const char *spec, struct orch_app *out, struct api_err *err)
{
    struct orch_app a;
    const char *eq = spec ? strchr(spec, '=') : NULL;
    int rc;

    memset(&a, 0, sizeof(a));
    if (eq == NULL || !api_name_valid(spec, (size_t)(eq - spec)))
        return api_err_set(err, API_EINVAL, "--app wants NAME=region:instance:URL,... with NAME a DNS label");
    snprintf(a.name, sizeof(a.name), "%.*s", (int)(eq - spec), spec);
    for (const char *p = eq + 1; *p;) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        const char *c1 = memchr(p, ':', len);
        const char *c2 = c1 ? memchr(c1 + 1, ':', len - (size_t)(c1 + 1 - p)) : NULL;
        if (c2 == NULL)
            return api_err_set(err, API_EINVAL, "app '%s': '%.*s' is not region:instance:URL", a.name,
                               (int)(len < 80 ? len : 80), p);
        if ((rc = app_instance_set(&a, p, (size_t)(c1 - p), c1 + 1, (size_t)(c2 - c1 - 1), c2 + 1,
                                   len - (size_t)(c2 + 1 - p), err)) != API_OK)
            return rc;
        p = end ? end + 1 : p + len;
    }
    if (a.n == 0)
        return api_err_set(err, API_EINVAL, "app '%s' has no instances", a.name);
    *out = a;
    return API_OK;
}

/* --app-config FILE: {"apps":{"NAME":[{"region","instance","url"}...]}},
 * unknown keys rejected. */
int router_apps_load(struct orch_router *r, const char *path, struct api_err *err)
{
    char *text = NULL;
    size_t len;
    json_error_t jerr;
    const char *name;
    json_t *doc, *list, *apps;
    int rc = API_OK;

    if ((rc = api_read_file(path, 1 << 20, &text, &len, err)) != API_OK)
        return rc;
    doc = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
    free(text);
    if (!json_is_object(doc) || !json_is_object(apps = json_object_get(doc, "apps")) || json_object_size(doc) != 1) {
        json_decref(doc);
        return api_err_set(err, API_EINVAL, "%s: want {\"apps\":{\"NAME\":[{\"region\",\"instance\",\"url\"}]}}", path);
    }
    json_object_foreach(apps, name, list)
    {
        struct orch_app *a;
        size_t i;
        json_t *it;
        if (r->napps >= ROUTER_MAX_APPS || !api_name_valid(name, strlen(name)) || !json_is_array(list)) {
            rc = api_err_set(err, API_EINVAL, "%s: app '%.40s': bad name, not a list, or more than %d apps", path, name,
                             ROUTER_MAX_APPS);
            break;
        }
        a = &r->apps[r->napps];
        memset(a, 0, sizeof(*a));
        snprintf(a->name, sizeof(a->name), "%s", name);
        json_array_foreach(list, i, it)
        {
            const char *rg = json_string_value(json_object_get(it, "region"));
            const char *id = json_string_value(json_object_get(it, "instance"));
            const char *url = json_string_value(json_object_get(it, "url"));
            if (rg == NULL || id == NULL || url == NULL || json_object_size(it) != 3) {
                rc = api_err_set(err, API_EINVAL, "%s: app '%s': each instance is {\"region\",\"instance\",\"url\"}",
                                 path, name);
                break;
            }
            if ((rc = app_instance_set(a, rg, strlen(rg), id, strlen(id), url, strlen(url), err)) != API_OK)
                break;
        }
        if (rc != API_OK)
            break;
        if (a->n == 0) {
            rc = api_err_set(err, API_EINVAL, "%s: app '%s' has no instances", path, name);
            break;
        }
        r->napps++;
    }
    json_decref(doc);
    return rc;
}
