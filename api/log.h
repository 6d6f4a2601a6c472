/*
 * api/log.h: one line per event on stderr, `key=value` fields.
 *
 *   2026-11-22T10:00:00.123Z info agent: lease acquired tenant=acme epoch=17
 *
 * The level check happens before the arguments are evaluated (macros), so a
 * disabled debug line costs one comparison. Thread-safe (one write(2) per
 * line); never call from a signal handler.
 */
#ifndef SHOAL_API_LOG_H
#define SHOAL_API_LOG_H

enum log_level { LOG_LEVEL_DEBUG, LOG_LEVEL_INFO, LOG_LEVEL_WARN, LOG_LEVEL_ERROR };

extern enum log_level log_threshold;

/* Sets the component name printed on every line ("agent n1"); copied. */
void log_set_component(const char *name);

/* Parses "debug"/"info"/"warn"/"error"; returns 0, or -1 if unknown. */
int log_parse_level(const char *s, enum log_level *out);

void log_write(enum log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_debug(...) do { if (log_threshold <= LOG_LEVEL_DEBUG) log_write(LOG_LEVEL_DEBUG, __VA_ARGS__); } while (0)
#define log_info(...) do { if (log_threshold <= LOG_LEVEL_INFO) log_write(LOG_LEVEL_INFO, __VA_ARGS__); } while (0)
#define log_warn(...) do { if (log_threshold <= LOG_LEVEL_WARN) log_write(LOG_LEVEL_WARN, __VA_ARGS__); } while (0)
#define log_error(...) do { if (log_threshold <= LOG_LEVEL_ERROR) log_write(LOG_LEVEL_ERROR, __VA_ARGS__); } while (0)

#endif
