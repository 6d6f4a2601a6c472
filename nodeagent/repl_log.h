/*
 * nodeagent/repl_log.h: replication records and the per-tenant log file.
 *
 * A record is one committed write transaction as page images:
 *   header (64 bytes, big-endian): "SHR1", flags (AGENT_REC_F_*), epoch, txid, pre checksum,
 *     post checksum, page size, database size in pages after the commit,
 *     number of page images, payload length, commit time (µs since the epoch)
 *   payload: lz4 block of [page numbers (u32 each)][page images]
 *   trailer: CRC-64 of header and payload (8 bytes)
 * A record applies only on top of (txid - 1, pre checksum).
 *
 * The log (<tenant>.log) is a 32-byte file header ("SHL1", version, base
 * txid, base checksum: the position the first record builds on) followed by
 * records with consecutive TXIDs. Appends are durable after
 * agent_log_sync. Opening truncates a torn tail (a crash mid-append).
 * Compaction drops the oldest records and moves the base forward.
 *
 * Thread-safety: a log has its own mutex; the tenant's worker appends,
 * syncs and compacts, the replication hub reads concurrently.
 *
 * Open files: a log keeps its file open only while it is among the most
 * recently used logs of the process (a capped LRU, agent_log_set_max_open),
 * and reopens it when used again, so thousands of idle tenants hold no
 * descriptors. Its index (record offsets and pre checksums, last position)
 * stays in memory.
 */
#ifndef SHOAL_NODEAGENT_REPL_LOG_H
#define SHOAL_NODEAGENT_REPL_LOG_H

#include <stddef.h>
#include <stdint.h>

#include "api/err.h"

#define AGENT_REC_HDR 64
#define AGENT_REC_TRAILER 8

/* The tenant is `quorum`: a replica makes the record durable in its log
 * before it acknowledges it. Without the flag a replica appends without
 * fdatasync (the kernel writes the log back; agent_log_sync and closing
 * the log make it durable). */
#define AGENT_REC_F_SYNC 1u

struct agent_rec {
    uint64_t epoch, txid, pre_ck, post_ck, time_us;
    uint32_t flags, page_size, commit_pages, npages, payload_len;
};

/* Encodes a record from NPAGES page numbers PGNOS and their images PAGES
 * (NPAGES * page_size bytes, in the same order). REC's npages and
 * payload_len are filled in. *OUT is malloc'd (caller frees). */
int agent_rec_encode(struct agent_rec *rec, const uint32_t *pgnos, const unsigned char *pages, unsigned char **out,
                     size_t *out_len, struct api_err *err);
/* Parses and verifies the record at BUF (LEN bytes available). On success
 * *REC_LEN is the record's full length. API_EINVAL if it is torn/corrupt. */
int agent_rec_parse(const unsigned char *buf, size_t len, struct agent_rec *rec, size_t *rec_len,
                    struct api_err *err);
/* Decompresses a parsed record's payload: *PGNOS and *PAGES point into one
 * malloc'd block returned in *BLOCK (caller frees). */
int agent_rec_unpack(const unsigned char *buf, const struct agent_rec *rec, void **block, const uint32_t **pgnos,
                     const unsigned char **pages, struct api_err *err);

struct agent_log;

/* Opens the log at PATH, creating it with base (BASE_TXID, BASE_CK) if it
 * does not exist. A torn tail is truncated away. */
int agent_log_open(const char *path, uint64_t base_txid, uint64_t base_ck, struct agent_log **out,
                   struct api_err *err);
/* Closes the log, first making its appends durable. Accepts NULL. */
void agent_log_free(struct agent_log *log);

/* The cap on log files open at once in this process (default 1000; at
 * least 1). A log whose sync is in progress stays open past the cap. */
void agent_log_set_max_open(size_t n);
/* Log files open now in this process. */
size_t agent_log_open_files(void);

/* The header of the record at BUF whose trailing checksum the caller has
 * verified already (agent_rec_parse) or just computed (agent_rec_encode):
 * agent_rec_parse without the CRC over the whole record. */
int agent_rec_peek(const unsigned char *buf, size_t len, struct agent_rec *rec, size_t *rec_len,
                   struct api_err *err);

/* Appends an encoded record, verified or made by the caller (its trailer
 * is not checked again); it must continue the log (txid = last + 1, pre
 * checksum = last checksum), else API_ECONFLICT. Not yet durable. */
int agent_log_append(struct agent_log *log, const unsigned char *rec, size_t len, struct api_err *err);
/* Makes every append durable (fdatasync; nothing when every append is
 * already durable). */
int agent_log_sync(struct agent_log *log, struct api_err *err);
/* Empties the log and sets a new base (after a snapshot). Durable. */
int agent_log_reset(struct agent_log *log, uint64_t base_txid, uint64_t base_ck, struct api_err *err);
/* Drops the oldest records until the file is at most KEEP_BYTES (the newest
 * record always stays), but none above MAX_DROP_TXID (a primary keeps what
 * its database file may not hold durably yet). Durable (rewrite, fsync,
 * rename). */
int agent_log_compact(struct agent_log *log, size_t keep_bytes, uint64_t max_drop_txid, struct api_err *err);

/* The encoded record TXID into *OUT (malloc'd). API_ENOTFOUND when TXID is
 * not in the log (at or below the base, or beyond the last). */
int agent_log_read(struct agent_log *log, uint64_t txid, unsigned char **out, size_t *out_len, struct api_err *err);
struct agent_log_pos {
    uint64_t base_txid, base_ck, last_txid, last_ck, last_epoch, last_time_us;
    uint32_t last_commit_pages, page_size;
    size_t bytes;
};
void agent_log_position(struct agent_log *log, struct agent_log_pos *out);
/* The pre checksum of record TXID (to check a follower's position), from
 * the index in memory: no I/O. */
int agent_log_pre_ck(struct agent_log *log, uint64_t txid, uint64_t *out);

#endif
