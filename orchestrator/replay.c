/*
 * orchestrator/replay.c: the fly-replay grammar (see replay.h).
 *
 * The parser works on pointer+length slices of the caller's string and
 * copies only accepted values into the result, so a malformed header never
 * leaves a half-filled struct behind. It must never read past the value's
 * NUL, whatever an upstream sends: values come from apps Shoal does not own.
 */
#include "orchestrator/replay.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "api/names.h"

static void trim(const char **s, size_t *len)
{
    while (*len > 0 && isspace((unsigned char)**s)) {
        (*s)++;
        (*len)--;
    }
    while (*len > 0 && isspace((unsigned char)(*s)[*len - 1]))
        (*len)--;
}

static int key_is(const char *k, size_t klen, const char *want)
{
    return klen == strlen(want) && strncasecmp(k, want, klen) == 0;
}

/* Instance ids: Shoal node names, Fly.io machine ids (hex), app instance
 * names from --app; nothing that could break a header or a URL. */
static int id_valid(const char *s, size_t len)
{
    if (len == 0 || len >= ORCH_REPLAY_ID_MAX)
        return 0;
    for (size_t i = 0; i < len; i++)
        if (!isalnum((unsigned char)s[i]) && s[i] != '-' && s[i] != '_')
            return 0;
    return 1;
}

/* Go-style durations as Fly.io writes them: a decimal number and a unit
 * (ms, s, m); a bare number counts as seconds. */
static int parse_duration_ms(const char *v, size_t vlen, long *out)
{
    char num[32], *end;
    double d, mult;
    if (vlen == 0 || vlen >= sizeof(num))
        return -1;
    memcpy(num, v, vlen);
    num[vlen] = '\0';
    if (!isdigit((unsigned char)num[0]) && num[0] != '.')
        return -1;
    d = strtod(num, &end);
    if (end == num)
        return -1;
    if (strcmp(end, "ms") == 0)
        mult = 1;
    else if (strcmp(end, "s") == 0 || *end == '\0')
        mult = 1000;
    else if (strcmp(end, "m") == 0)
        mult = 60000;
    else
        return -1;
    d *= mult;
    if (!(d >= 0))
        return -1;
    *out = d > ORCH_REPLAY_MAX_TIMEOUT_MS ? ORCH_REPLAY_MAX_TIMEOUT_MS : (long)d;
    if (*out == 0 && d > 0)
        *out = 1;
    return 0;
}

static int parse_regions(const char *v, size_t vlen, struct orch_replay *r, struct api_err *err)
{
    const char *q = v, *end = v + vlen;
    if (vlen == 0)
        return api_err_set(err, API_EINVAL, "fly-replay: empty region");
    while (q <= end) {
        const char *comma = memchr(q, ',', (size_t)(end - q));
        const char *item = q;
        size_t ilen = (size_t)((comma ? comma : end) - q);
        trim(&item, &ilen);
        if (ilen == 3 && strncmp(item, "any", 3) == 0) {
            r->any_region = 1;
        } else if (api_region_valid(item, ilen)) {
            if (r->nregions >= ORCH_REPLAY_MAX_REGIONS)
                return api_err_set(err, API_EINVAL, "fly-replay: more than %d regions", ORCH_REPLAY_MAX_REGIONS);
            snprintf(r->regions[r->nregions++], sizeof(r->regions[0]), "%.*s", (int)ilen, item);
        } else {
            return api_err_set(err, API_EINVAL, "fly-replay: '%.*s' is not a region code", (int)(ilen < 16 ? ilen : 16),
                               item);
        }
        if (comma == NULL)
            break;
        q = comma + 1;
    }
    return API_OK;
}

int orch_replay_parse(const char *value, struct orch_replay *out, struct api_err *err)
{
    struct orch_replay r;
    const char *p = value;
    int rc;

    memset(&r, 0, sizeof(r));
    if (value == NULL)
        return api_err_set(err, API_EINVAL, "fly-replay: no value");
    while (*p) {
        const char *semi = p;
        int quoted = 0;
        while (*semi && (quoted || *semi != ';')) {
            if (*semi == '"')
                quoted = !quoted;
            semi++;
        }
        if (quoted)
            return api_err_set(err, API_EINVAL, "fly-replay: unterminated quote");
        const char *field = p, *eq;
        size_t flen = (size_t)(semi - p);
        trim(&field, &flen);
        p = *semi ? semi + 1 : semi;
        if (flen == 0)
            continue;
        if ((eq = memchr(field, '=', flen)) == NULL)
            return api_err_set(err, API_EINVAL, "fly-replay: field '%.*s' has no value", (int)(flen < 32 ? flen : 32),
                               field);
        const char *k = field, *v = eq + 1;
        size_t klen = (size_t)(eq - field), vlen = flen - klen - 1;
        trim(&k, &klen);
        trim(&v, &vlen);
        if (vlen >= 2 && v[0] == '"' && v[vlen - 1] == '"') {
            v++;
            vlen -= 2;
        }
        if (key_is(k, klen, "region")) {
            if ((rc = parse_regions(v, vlen, &r, err)) != API_OK)
                return rc;
        } else if (key_is(k, klen, "instance") || key_is(k, klen, "prefer_instance")) {
            int prefer = klen > 8;
            if (!id_valid(v, vlen))
                return api_err_set(err, API_EINVAL, "fly-replay: '%.*s' is not an instance id",
                                   (int)(vlen < 32 ? vlen : 32), v);
            snprintf(prefer ? r.prefer_instance : r.instance, ORCH_REPLAY_ID_MAX, "%.*s", (int)vlen, v);
        } else if (key_is(k, klen, "elsewhere")) {
            if (vlen == 4 && strncasecmp(v, "true", 4) == 0)
                r.elsewhere = 1;
            else if (vlen == 5 && strncasecmp(v, "false", 5) == 0)
                r.elsewhere = 0;
            else
                return api_err_set(err, API_EINVAL, "fly-replay: elsewhere must be true or false");
        } else if (key_is(k, klen, "state")) {
            if (vlen >= ORCH_REPLAY_STATE_MAX)
                return api_err_set(err, API_EINVAL, "fly-replay: state longer than %d bytes",
                                   ORCH_REPLAY_STATE_MAX - 1);
            for (size_t i = 0; i < vlen; i++)
                if (iscntrl((unsigned char)v[i]))
                    return api_err_set(err, API_EINVAL, "fly-replay: state holds a control character");
            snprintf(r.state, sizeof(r.state), "%.*s", (int)vlen, v);
        } else if (key_is(k, klen, "timeout")) {
            if (parse_duration_ms(v, vlen, &r.timeout_ms) != 0)
                return api_err_set(err, API_EINVAL, "fly-replay: timeout '%.*s' is not a duration (500ms, 2s)",
                                   (int)(vlen < 32 ? vlen : 32), v);
        } else if (key_is(k, klen, "fallback")) {
            if (vlen == 10 && strncmp(v, "force_self", 10) == 0)
                r.fallback = ORCH_FALLBACK_FORCE_SELF;
            else if (vlen == 11 && strncmp(v, "prefer_self", 11) == 0)
                r.fallback = ORCH_FALLBACK_PREFER_SELF;
            else
                return api_err_set(err, API_EINVAL, "fly-replay: fallback must be force_self or prefer_self");
        }
        /* any other key is ignored, as Fly.io's proxy does */
    }
    if (r.nregions == 0 && !r.any_region && !r.instance[0] && !r.prefer_instance[0] && !r.elsewhere)
        return api_err_set(err, API_EINVAL, "fly-replay names no target (region, instance, prefer_instance or "
                                            "elsewhere)");
    *out = r;
    return API_OK;
}

int orch_duration_ms(const char *s, long *out)
{
    return s == NULL ? -1 : parse_duration_ms(s, strlen(s), out);
}

int orch_replay_src_format(char *out, size_t cap, const char *instance, const char *region, int64_t t_us,
                           const char *state)
{
    int n = snprintf(out, cap, "instance=%s%s%s;t=%lld%s%s", instance, region && region[0] ? ";region=" : "",
                     region && region[0] ? region : "", (long long)t_us, state && state[0] ? ";state=" : "",
                     state && state[0] ? state : "");
    return n < 0 || (size_t)n >= cap ? -1 : n;
}

int orch_replay_failed_format(char *out, size_t cap, const struct orch_replay *rp, const char *reason)
{
    size_t len = 0;
    int n;
#define APPEND(...)                                                      \
    do {                                                                 \
        n = snprintf(out + len, cap - len, __VA_ARGS__);                 \
        if (n < 0 || (size_t)n >= cap - len)                             \
            return -1;                                                   \
        len += (size_t)n;                                                \
    } while (0)
    if (cap == 0)
        return -1;
    out[0] = '\0';
    if (rp->instance[0])
        APPEND("instance=%s;", rp->instance);
    else if (rp->prefer_instance[0])
        APPEND("prefer_instance=%s;", rp->prefer_instance);
    if (rp->nregions > 0 || rp->any_region) {
        APPEND("region=\"");
        for (size_t i = 0; i < rp->nregions; i++)
            APPEND("%s%s", i ? "," : "", rp->regions[i]);
        if (rp->any_region)
            APPEND("%sany", rp->nregions ? "," : "");
        APPEND("\";");
    }
    if (rp->elsewhere)
        APPEND("elsewhere=true;");
    APPEND("reason=%s", reason);
#undef APPEND
    return (int)len;
}
