/*
 * orchestrator/ctl.h: shoalctl, the CLI over the admin API (CONTRACT.md
 * "shoalctl"). ctl_main is the whole program; the formatting helpers are
 * exposed for unit tests. Single-threaded; blocking HTTP.
 */
#ifndef SHOAL_ORCHESTRATOR_CTL_H
#define SHOAL_ORCHESTRATOR_CTL_H

#include <stdio.h>

#include <jansson.h>

/* Runs shoalctl; returns the exit status (0 ok, 1 failure, 2 bad usage). */
int ctl_main(int argc, char **argv);

/* The Hrana value for a command-line SQL argument: integers and floats by
 * their look, NULL as null, anything else as text. New reference. */
json_t *ctl_sql_arg(const char *arg);

/* SQL split into its statements, each trimmed, as a JSON array of strings
 * (new reference; NULL on OOM or text that is not UTF-8). SQLite's own
 * sqlite3_complete decides where a statement ends, so a ';' inside a
 * string, a comment or a trigger's body does not; pieces of nothing but
 * spaces and comments are dropped; text after the last ';' counts as a
 * statement. */
json_t *ctl_split_sql(const char *sql);

/* Prints a Hrana StmtResult as an aligned table (header, rows), then
 * "(N rows)" or "(N rows affected)". */
void ctl_print_result(FILE *out, const json_t *result);

/* Prints rows of strings as an aligned table: HEADERS has NCOLS entries,
 * CELLS NROWS*NCOLS. */
void ctl_print_table(FILE *out, const char *const *headers, size_t ncols, const char *const *cells, size_t nrows);

/* One line for an API error body ({"error":{"code","message"}}) and status. */
void ctl_format_api_error(char *buf, size_t cap, long status, const char *body);

#endif
