/*
 * api/names.c: name syntax (see names.h), byte by byte: no regex library,
 * and nothing about the input is trusted (NULs, UTF-8, length).
 */
#include "api/names.h"

#include <stdio.h>
#include <string.h>

static int is_lower_alnum(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

int api_name_valid(const char *s, size_t len)
{
    if (s == NULL || len == 0 || len > 63)
        return 0;
    if (!is_lower_alnum((unsigned char)s[0]) || !is_lower_alnum((unsigned char)s[len - 1]))
        return 0;
    for (size_t i = 1; i + 1 < len; i++)
        if (!is_lower_alnum((unsigned char)s[i]) && s[i] != '-')
            return 0;
    return 1;
}

int api_region_valid(const char *s, size_t len)
{
    if (s == NULL || (len != 3 && len != 4))
        return 0;
    for (size_t i = 0; i < 3; i++)
        if (s[i] < 'a' || s[i] > 'z')
            return 0;
    return len == 3 || (s[3] >= '0' && s[3] <= '9');
}

/* Writes S shown safely (printable ASCII as is, the rest as \xNN), cut to
 * about 40 characters with "..." after. */
static void show(const char *s, size_t len, char *out, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; i < len && o + 8 < cap; i++) {
        unsigned char c = (unsigned char)s[i];
        if (o >= 40) {
            memcpy(out + o, "...", 3);
            o += 3;
            break;
        }
        if (c >= 0x20 && c < 0x7f && c != '\'' && c != '\\')
            out[o++] = (char)c;
        else
            o += (size_t)snprintf(out + o, cap - o, "\\x%02x", c);
    }
    out[o] = '\0';
}

int api_tenant_id_check(const char *s, size_t len, struct api_err *err)
{
    char shown[64];
    if (api_name_valid(s, len))
        return API_OK;
    show(s ? s : "", s ? len : 0, shown, sizeof(shown));
    if (len == 0)
        return api_err_set(err, API_EBADTENANT, "tenant id is empty; it must be a DNS label: 1-63 of a-z, 0-9 "
                                                "and '-', starting and ending with a letter or digit");
    if (len > 63)
        return api_err_set(err, API_EBADTENANT, "tenant id '%s' is %zu bytes long; at most 63 are allowed", shown,
                           len);
    return api_err_set(err, API_EBADTENANT, "tenant id '%s' is not a DNS label: use 1-63 of a-z, 0-9 and '-', "
                                            "starting and ending with a letter or digit", shown);
}

int api_node_name_check(const char *s, size_t len, struct api_err *err)
{
    char shown[64];
    if (api_name_valid(s, len))
        return API_OK;
    show(s ? s : "", s ? len : 0, shown, sizeof(shown));
    return api_err_set(err, API_EINVAL, "node name '%s' is not a DNS label (1-63 of a-z, 0-9 and '-')", shown);
}

int api_region_check(const char *s, size_t len, struct api_err *err)
{
    char shown[64];
    if (api_region_valid(s, len))
        return API_OK;
    show(s ? s : "", s ? len : 0, shown, sizeof(shown));
    return api_err_set(err, API_EINVAL, "region '%s' is not a region code (three letters a-z and an optional digit, "
                                        "e.g. 'ams')", shown);
}

void api_hex64_format(uint64_t v, char out[17])
{
    static const char hex[] = "0123456789abcdef";
    for (int i = 15; i >= 0; i--, v >>= 4)
        out[i] = hex[v & 15];
    out[16] = '\0';
}

void api_copy_text(char *dst, size_t cap, const char *src, size_t len)
{
    if (cap == 0)
        return;
    if (len > cap - 1)
        len = cap - 1;
    memcpy(dst, src, len);
    dst[len] = '\0';
}

int api_hex_digit(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int api_hex64_parse(const char *s, size_t len, uint64_t *out)
{
    uint64_t v = 0;
    if (s == NULL || len != 16)
        return -1;
    for (size_t i = 0; i < 16; i++) {
        int d = api_hex_digit((unsigned char)s[i]);
        if (d < 0)
            return -1;
        v = v << 4 | (uint64_t)d;
    }
    *out = v;
    return 0;
}
