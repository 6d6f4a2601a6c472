/*
 * api/failpoint.c: see failpoint.h. Parsed at every hit: failpoints sit on
 * rare paths (a handover step), never in a request's hot path.
 */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "api/failpoint.h"
#include "api/log.h"

/* The action SHOAL_FAILPOINTS gives NAME, or NULL. */
static const char *action_of(const char *name)
{
    const char *spec = getenv("SHOAL_FAILPOINTS");
    size_t nlen = strlen(name);
    if (spec == NULL)
        return NULL;
    for (const char *p = spec; *p;) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (len > nlen && strncmp(p, name, nlen) == 0 && p[nlen] == '=')
            return p + nlen + 1;
        p += len + (end != NULL);
    }
    return NULL;
}

int api_failpoint_error(const char *name)
{
    const char *action = action_of(name);
    if (action == NULL || strncmp(action, "error", 5) != 0)
        return 0;
    log_warn("failpoint hit name=%s action=error", name);
    return 1;
}

void api_failpoint(const char *name)
{
    const char *action = action_of(name);
    if (action == NULL)
        return;
    if (strncmp(action, "pause", 5) == 0) {
        log_warn("failpoint hit name=%s action=pause", name);
        for (;;)
            pause();
    }
    if (strncmp(action, "sleep:", 6) == 0) {
        long ms = strtol(action + 6, NULL, 10);
        log_warn("failpoint hit name=%s action=sleep ms=%ld", name, ms);
        if (ms > 0)
            usleep((useconds_t)ms * 1000);
    }
}
