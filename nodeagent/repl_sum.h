/*
 * nodeagent/repl_sum.h: the database checksum replication compares.
 *
 * checksum(db) = XOR over every page P (the lock page excluded) of
 * hash(P) | 1<<63, where hash(P) is CRC-64/ISO of P's big-endian page number
 * followed by the page bytes. An empty database is exactly 1<<63. The XOR
 * makes it incremental: a commit removes the old images' hashes and adds the
 * new ones, so nothing reads the whole file on the write path.
 *
 * Page 1 is hashed normalised: bytes 18-19 (file format, 2 in WAL mode, 1 in
 * rollback mode), 24-31 (change counter, header database size) and 92-95
 * (version-valid-for) are what a primary in WAL mode and a replica in
 * rollback-journal mode legitimately write differently; they are hashed as
 * 1,1 and zeros. Every other byte of every page must be identical.
 *
 * Pure functions; any thread.
 */
#ifndef SHOAL_NODEAGENT_REPL_SUM_H
#define SHOAL_NODEAGENT_REPL_SUM_H

#include <stddef.h>
#include <stdint.h>

#define AGENT_CK_EMPTY (UINT64_C(1) << 63)

/* The CRC-64/ISO of BUF continuing from CRC (start with 0). */
uint64_t agent_crc64(uint64_t crc, const void *buf, size_t len);

/* hash(P) | 1<<63 for page PGNO with contents PAGE of SIZE bytes. */
uint64_t agent_page_hash(uint32_t pgno, const unsigned char *page, size_t size);

/* The page number of the lock page (the page holding byte 2^30) for pages of
 * PAGE_SIZE bytes. It never holds data and is never hashed. */
uint32_t agent_lock_page(size_t page_size);

/* The checksum of the first NPAGES pages of the file open at FD. 0, or -1
 * with errno set on a read error or a short file. */
int agent_file_checksum(int fd, size_t page_size, uint32_t npages, uint64_t *out);

/* Prints X as 16 lower-case hex digits into OUT (17 bytes). */
void agent_hex16(uint64_t x, char out[17]);
/* Parses exactly 16 hex digits. 0 on success, -1 otherwise. */
int agent_parse_hex16(const char *s, size_t len, uint64_t *out);

/* Big-endian helpers for the on-disk and wire formats. */
static inline uint32_t agent_get32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline uint64_t agent_get64(const unsigned char *p)
{
    return (uint64_t)agent_get32(p) << 32 | agent_get32(p + 4);
}
static inline void agent_put32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}
static inline void agent_put64(unsigned char *p, uint64_t v)
{
    agent_put32(p, (uint32_t)(v >> 32));
    agent_put32(p + 4, (uint32_t)v);
}

#endif
