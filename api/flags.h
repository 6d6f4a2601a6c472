/*
 * api/flags.h: table-driven command-line flags for the daemons
 * (`--name value` or `--name=value`), with --help and --version built in.
 * Exit codes follow CONTRACT.md: 0 for --help/--version, 2 for bad usage.
 */
#ifndef SHOAL_API_FLAGS_H
#define SHOAL_API_FLAGS_H

#include <stddef.h>
#include <stdint.h>

enum api_flag_type { API_FLAG_STRING, API_FLAG_INT, API_FLAG_SIZE, API_FLAG_BOOL };

struct api_flag {
    const char *name;   /* without the dashes */
    enum api_flag_type type;
    void *target;       /* const char **, int64_t *, size_t *, int * */
    int required;
    const char *help;
    int seen;           /* set by the parser */
};

/* Parses ARGV into FLAGS (terminated by a {NULL} entry). Returns -1 to go
 * on, else the exit status the program should return (0 after --help or
 * --version, 2 on bad usage, with a message on stderr). */
int api_flags_parse(int argc, char **argv, const char *program, const char *summary, struct api_flag *flags);

#endif
