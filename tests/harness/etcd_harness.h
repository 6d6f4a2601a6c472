/*
 * tests/harness/etcd_harness.h: starts a real etcd (Debian's etcd-server)
 * on free loopback ports for a test, and always stops it by PID (also from
 * atexit, so a failed assertion leaves nothing running).
 */
#ifndef SHOAL_TESTS_ETCD_HARNESS_H
#define SHOAL_TESTS_ETCD_HARNESS_H

/* Starts etcd and waits (with a deadline) until it answers /health.
 * Returns the client URL (static storage), or NULL on failure. */
const char *test_etcd_start(void);
/* Stops it (SIGTERM, then SIGKILL) and removes its data. Idempotent. */
void test_etcd_stop(void);

#endif
