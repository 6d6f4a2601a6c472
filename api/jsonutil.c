/* api/jsonutil.c: field validation and small helpers (see jsonutil.h). */
#include "api/jsonutil.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

int api_json_only_keys(const json_t *obj, const char *const *allowed, const char *what, struct api_err *err)
{
    const char *key;
    json_t *val;

    json_object_foreach((json_t *)obj, key, val) {
        int ok = 0;
        (void)val;
        for (const char *const *a = allowed; *a != NULL; a++)
            if (strcmp(*a, key) == 0)
                ok = 1;
        if (!ok)
            return api_err_set(err, API_EINVAL, "%s: unknown field '%.64s'", what, key);
    }
    return API_OK;
}

int api_json_opt_string(const json_t *obj, const char *key, const char **out, struct api_err *err)
{
    json_t *v = json_object_get(obj, key);

    *out = NULL;
    if (v == NULL || json_is_null(v))
        return API_OK;
    if (!json_is_string(v))
        return api_err_set(err, API_EINVAL, "field '%s' must be a string", key);
    *out = json_string_value(v);
    return API_OK;
}

int api_json_opt_int(const json_t *obj, const char *key, int64_t min, int64_t max, int64_t *out,
                     struct api_err *err)
{
    json_t *v = json_object_get(obj, key);

    if (v == NULL || json_is_null(v))
        return API_OK;
    if (!json_is_integer(v))
        return api_err_set(err, API_EINVAL, "field '%s' must be an integer", key);
    json_int_t n = json_integer_value(v);
    if (n < min || n > max)
        return api_err_set(err, API_EINVAL, "field '%s' must be between %lld and %lld", key, (long long)min,
                           (long long)max);
    *out = n;
    return API_OK;
}

void api_time_format(int64_t unix_s, char out[21])
{
    time_t t = (time_t)unix_s;
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, 21, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

int api_read_file(const char *path, size_t max, char **out, size_t *len, struct api_err *err)
{
    FILE *f = fopen(path, "rb");
    char *buf;
    size_t n;

    if (f == NULL)
        return api_err_set(err, API_EIO, "cannot open '%s': %s", path, strerror(errno));
    buf = malloc(max + 1);
    if (buf == NULL) {
        fclose(f);
        return api_err_set(err, API_ENOMEM, "reading '%s': out of memory", path);
    }
    n = fread(buf, 1, max + 1, f);
    fclose(f);
    if (n > max) {
        free(buf);
        return api_err_set(err, API_EINVAL, "'%s' is larger than %zu bytes", path, max);
    }
    buf[n] = '\0';
    *out = buf;
    if (len != NULL)
        *len = n;
    return API_OK;
}

int api_mkdir_p(const char *path, struct api_err *err)
{
    char buf[4096];
    size_t len = strlen(path);

    if (len == 0 || len >= sizeof(buf))
        return api_err_set(err, API_EINVAL, "bad directory path '%.100s'", path);
    memcpy(buf, path, len + 1);
    for (size_t i = 1; i <= len; i++) {
        if (buf[i] != '/' && buf[i] != '\0')
            continue;
        char saved = buf[i];
        buf[i] = '\0';
        if (mkdir(buf, 0755) != 0 && errno != EEXIST)
            return api_err_set(err, API_EIO, "cannot create directory '%s': %s", buf, strerror(errno));
        buf[i] = saved;
    }
    return API_OK;
}
