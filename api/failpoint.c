/*
 * api/failpoint.c: see failpoint.h. Parsed at every hit: failpoints sit on
 * rare paths (a handover step), never in a request's hot path.
 */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "api/failpoint.h"
#include "api/log.h"

void api_failpoint(const char *name)
{
    const char *spec = getenv("SHOAL_FAILPOINTS");
    size_t nlen = strlen(name);
    if (spec == NULL)
        return;
    for (const char *p = spec; *p;) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (len > nlen && strncmp(p, name, nlen) == 0 && p[nlen] == '=') {
            const char *action = p + nlen + 1;
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
            return;
        }
        p += len + (end != NULL);
    }
}
