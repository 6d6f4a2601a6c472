/* api/err.c: the error table and message helpers (see err.h). */
#include "api/err.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

struct err_row {
    const char *name;
    const char *json;
    int status;
};

static const struct err_row err_rows[API_ERR_COUNT] = {
#define API_ERR_ROW(name, json, status) {#name, json, status},
    API_ERRORS(API_ERR_ROW)
#undef API_ERR_ROW
};

void api_err_clear(struct api_err *err)
{
    if (err == NULL)
        return;
    err->code = API_OK;
    err->msg[0] = '\0';
}

int api_err_set(struct api_err *err, int code, const char *fmt, ...)
{
    va_list ap;

    if (err == NULL)
        return code;
    err->code = code;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
    va_end(ap);
    return code;
}

int api_err_wrap(struct api_err *err, const char *fmt, ...)
{
    char prefix[API_ERR_MSG_MAX], joined[2 * API_ERR_MSG_MAX + 2];
    va_list ap;

    if (err == NULL)
        return API_EINTERNAL;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof(prefix), fmt, ap);
    va_end(ap);
    snprintf(joined, sizeof(joined), "%s: %s", prefix, err->msg);
    memcpy(err->msg, joined, sizeof(err->msg) - 1);
    err->msg[sizeof(err->msg) - 1] = '\0';
    return err->code;
}

const char *api_err_json_code(int code)
{
    if (code < 0 || code >= API_ERR_COUNT)
        return "internal";
    return err_rows[code].json;
}

int api_err_http_status(int code)
{
    if (code < 0 || code >= API_ERR_COUNT)
        return 500;
    return err_rows[code].status;
}

const char *api_err_name(int code)
{
    if (code < 0 || code >= API_ERR_COUNT)
        return "API_E?";
    return err_rows[code].name;
}
