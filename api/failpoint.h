/*
 * api/failpoint.h: named points where a fault test can stop a daemon.
 *
 * The environment variable SHOAL_FAILPOINTS lists points and what happens
 * when a thread reaches one:
 *
 *   SHOAL_FAILPOINTS="handover-after-fence=pause,handover-after-move=sleep:1500"
 *
 * `pause` blocks the thread for good (the test then kills the process),
 * `sleep:MS` blocks it for MS milliseconds, `error` makes
 * api_failpoint_error() say yes (the caller fails the step). Every hit is logged at warn level
 * ("failpoint hit name=..."), which is what a test waits for before it
 * strikes. Without the variable a failpoint costs one getenv. Used by the
 * fault tests to kill a process at an exact step of a protocol, where timing
 * alone would hit the step only sometimes.
 */
#ifndef SHOAL_API_FAILPOINT_H
#define SHOAL_API_FAILPOINT_H

/* Blocks as SHOAL_FAILPOINTS says for NAME; returns at once if not listed. */
void api_failpoint(const char *name);

/* 1 if SHOAL_FAILPOINTS lists NAME=error (logged), else 0. */
int api_failpoint_error(const char *name);

#endif
