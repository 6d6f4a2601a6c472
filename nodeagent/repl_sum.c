/* nodeagent/repl_sum.c: page hashes and database checksums (repl_sum.h). */
#include "nodeagent/repl_sum.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "api/names.h"

/* CRC-64/ISO, reflected polynomial, slicing by 8. */
#define POLY_ISO UINT64_C(0xD800000000000000)

static uint64_t table[8][256];
static pthread_once_t table_once = PTHREAD_ONCE_INIT;

static void make_table(void)
{
    for (int i = 0; i < 256; i++) {
        uint64_t c = (uint64_t)i;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? (c >> 1) ^ POLY_ISO : c >> 1;
        table[0][i] = c;
    }
    for (int i = 0; i < 256; i++)
        for (int t = 1; t < 8; t++)
            table[t][i] = (table[t - 1][i] >> 8) ^ table[0][table[t - 1][i] & 0xff];
}

uint64_t agent_crc64(uint64_t crc, const void *buf, size_t len)
{
    const unsigned char *p = buf;
    pthread_once(&table_once, make_table);
    crc = ~crc;
    while (len >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        v ^= crc; /* little-endian host (x86-64, arm64 Linux) */
        crc = table[7][v & 0xff] ^ table[6][(v >> 8) & 0xff] ^ table[5][(v >> 16) & 0xff] ^
              table[4][(v >> 24) & 0xff] ^ table[3][(v >> 32) & 0xff] ^ table[2][(v >> 40) & 0xff] ^
              table[1][(v >> 48) & 0xff] ^ table[0][v >> 56];
        p += 8;
        len -= 8;
    }
    while (len--)
        crc = table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return ~crc;
}

uint64_t agent_page_hash(uint32_t pgno, const unsigned char *page, size_t size)
{
    unsigned char be[4];
    uint64_t crc;

    agent_put32(be, pgno);
    crc = agent_crc64(0, be, 4);
    if (pgno == 1 && size >= 100) {
        static const unsigned char one_one[2] = {1, 1}, zeros[8] = {0};
        crc = agent_crc64(crc, page, 18);
        crc = agent_crc64(crc, one_one, 2);
        crc = agent_crc64(crc, page + 20, 4);
        crc = agent_crc64(crc, zeros, 8);
        crc = agent_crc64(crc, page + 32, 60);
        crc = agent_crc64(crc, zeros, 4);
        crc = agent_crc64(crc, page + 96, size - 96);
    } else {
        crc = agent_crc64(crc, page, size);
    }
    return crc | AGENT_CK_EMPTY;
}

uint32_t agent_lock_page(size_t page_size)
{
    return (uint32_t)(UINT64_C(0x40000000) / page_size) + 1;
}

int agent_file_checksum(int fd, size_t page_size, uint32_t npages, uint64_t *out)
{
    unsigned char *page = malloc(page_size);
    uint64_t ck = AGENT_CK_EMPTY;
    uint32_t lock = agent_lock_page(page_size);

    if (page == NULL)
        return -1;
    for (uint32_t pg = 1; pg <= npages; pg++) {
        if (pg == lock)
            continue;
        ssize_t n = pread(fd, page, page_size, (off_t)(pg - 1) * (off_t)page_size);
        if (n != (ssize_t)page_size) {
            free(page);
            if (n >= 0)
                errno = EIO;
            return -1;
        }
        ck ^= agent_page_hash(pg, page, page_size);
    }
    free(page);
    *out = ck;
    return 0;
}

void agent_hex16(uint64_t x, char out[17])
{
    api_hex64_format(x, out);
}

int agent_parse_hex16(const char *s, size_t len, uint64_t *out)
{
    uint64_t v = 0;
    if (s == NULL || len != 16)
        return -1;
    for (size_t i = 0; i < 16; i++) {
        char c = s[i];
        int d = (c >= '0' && c <= '9') ? c - '0' : (c >= 'a' && c <= 'f') ? c - 'a' + 10
                                                 : (c >= 'A' && c <= 'F') ? c - 'A' + 10 : -1;
        if (d < 0)
            return -1;
        v = v << 4 | (uint64_t)d;
    }
    *out = v;
    return 0;
}
