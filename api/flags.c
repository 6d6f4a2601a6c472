/* api/flags.c: flag parsing for the daemons (see flags.h). */
#include "api/flags.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f, const char *program, const char *summary, const struct api_flag *flags)
{
    fprintf(f, "usage: %s [flags]\n%s\n\nflags:\n", program, summary);
    for (const struct api_flag *fl = flags; fl->name != NULL; fl++)
        fprintf(f, "  --%-22s %s%s\n", fl->name, fl->help, fl->required ? " (required)" : "");
    fprintf(f, "  --%-22s %s\n  --%-22s %s\n", "help", "print this help", "version", "print the version");
}

static int set_value(struct api_flag *fl, const char *program, const char *v)
{
    char *end;
    errno = 0;
    switch (fl->type) {
    case API_FLAG_STRING:
        *(const char **)fl->target = v;
        return 0;
    case API_FLAG_INT: {
        long long n = strtoll(v, &end, 10);
        if (errno || *end || end == v) {
            fprintf(stderr, "%s: --%s needs a whole number, not '%s'\n", program, fl->name, v);
            return 2;
        }
        *(int64_t *)fl->target = n;
        return 0;
    }
    case API_FLAG_SIZE: {
        unsigned long long n = strtoull(v, &end, 10);
        if (errno || *end || end == v || v[0] == '-') {
            fprintf(stderr, "%s: --%s needs a non-negative number, not '%s'\n", program, fl->name, v);
            return 2;
        }
        *(size_t *)fl->target = (size_t)n;
        return 0;
    }
    case API_FLAG_BOOL:
        *(int *)fl->target = 1;
        return 0;
    }
    return 2;
}

int api_flags_parse(int argc, char **argv, const char *program, const char *summary, struct api_flag *flags)
{
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
            usage(stdout, program, summary, flags);
            return 0;
        }
        if (strcmp(arg, "--version") == 0) {
            printf("%s %s\n", program, SHOAL_VERSION);
            return 0;
        }
        if (strncmp(arg, "--", 2) != 0) {
            fprintf(stderr, "%s: unexpected argument '%s' (see --help)\n", program, arg);
            return 2;
        }
        const char *name = arg + 2, *eq = strchr(name, '=');
        size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
        struct api_flag *fl = flags;
        while (fl->name != NULL && !(strlen(fl->name) == nlen && strncmp(fl->name, name, nlen) == 0))
            fl++;
        if (fl->name == NULL) {
            fprintf(stderr, "%s: unknown flag '--%.*s' (see --help)\n", program, (int)nlen, name);
            return 2;
        }
        const char *v = eq ? eq + 1 : NULL;
        if (fl->type != API_FLAG_BOOL && v == NULL) {
            if (i + 1 >= argc) {
                fprintf(stderr, "%s: --%s needs a value\n", program, fl->name);
                return 2;
            }
            v = argv[++i];
        }
        int rc = set_value(fl, program, v ? v : "1");
        if (rc != 0)
            return rc;
        fl->seen = 1;
    }
    for (struct api_flag *fl = flags; fl->name != NULL; fl++) {
        if (fl->required && !fl->seen) {
            fprintf(stderr, "%s: --%s is required (see --help)\n", program, fl->name);
            return 2;
        }
    }
    return -1;
}
