/*
 * api/daemon.h: what every Shoal daemon does around its own work: log level
 * and component, SIGPIPE ignored, libsodium and libcurl initialised, and
 * SIGINT/SIGTERM turned into a graceful stop. Call from main only.
 */
#ifndef SHOAL_API_DAEMON_H
#define SHOAL_API_DAEMON_H

/* Returns -1 to go on, else the exit status main should return (2 for an
 * unknown LOG_LEVEL, 1 if a library fails to initialise). */
int api_daemon_init(const char *program, const char *component, const char *log_level);

/* From now on SIGINT and SIGTERM call STOP(ARG), which must be
 * async-signal-safe (the servers' stop functions only set a flag). STOP NULL
 * detaches: call it before freeing ARG, so a second signal during shutdown
 * does not reach a freed server (it is then ignored). */
void api_daemon_on_stop(void (*stop)(void *arg), void *arg);

void api_daemon_fini(void);

#endif
