/* nodeagent/repl_log.c: records and per-tenant logs (repl_log.h). */
#include "nodeagent/repl_log.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <lz4.h>

#include "api/workq.h"
#include "nodeagent/repl_sum.h"

#define LOG_HDR 32
static const unsigned char rec_magic[4] = {'S', 'H', 'R', '1'};
static const unsigned char log_magic[4] = {'S', 'H', 'L', '1'};

/* Sanity bounds for hostile or corrupt input. */
#define MAX_PAGE_SIZE 65536
#define MAX_RAW_BYTES ((size_t)1 << 31)

int agent_rec_encode(struct agent_rec *rec, const uint32_t *pgnos, const unsigned char *pages, unsigned char **out,
                     size_t *out_len, struct api_err *err)
{
    size_t raw_len = (size_t)rec->npages * (4 + (size_t)rec->page_size);
    unsigned char *raw, *buf;
    int bound, clen;

    if (raw_len > MAX_RAW_BYTES || raw_len > (size_t)LZ4_MAX_INPUT_SIZE)
        return api_err_set(err, API_ETOOLARGE, "transaction of %u pages is too large to replicate", rec->npages);
    if ((raw = malloc(raw_len ? raw_len : 1)) == NULL)
        return api_err_set(err, API_ENOMEM, "record: out of memory");
    for (uint32_t i = 0; i < rec->npages; i++)
        agent_put32(raw + 4 * (size_t)i, pgnos[i]);
    if (raw_len)
        memcpy(raw + 4 * (size_t)rec->npages, pages, (size_t)rec->npages * rec->page_size);
    bound = LZ4_compressBound((int)raw_len);
    if ((buf = malloc(AGENT_REC_HDR + (size_t)bound + AGENT_REC_TRAILER)) == NULL) {
        free(raw);
        return api_err_set(err, API_ENOMEM, "record: out of memory");
    }
    clen = raw_len ? LZ4_compress_default((const char *)raw, (char *)buf + AGENT_REC_HDR, (int)raw_len, bound) : 0;
    free(raw);
    if (raw_len && clen <= 0) {
        free(buf);
        return api_err_set(err, API_EINTERNAL, "record: lz4 compression failed");
    }
    rec->payload_len = (uint32_t)clen;
    memcpy(buf, rec_magic, 4);
    agent_put32(buf + 4, rec->flags);
    agent_put64(buf + 8, rec->epoch);
    agent_put64(buf + 16, rec->txid);
    agent_put64(buf + 24, rec->pre_ck);
    agent_put64(buf + 32, rec->post_ck);
    agent_put32(buf + 40, rec->page_size);
    agent_put32(buf + 44, rec->commit_pages);
    agent_put32(buf + 48, rec->npages);
    agent_put32(buf + 52, rec->payload_len);
    agent_put64(buf + 56, rec->time_us);
    agent_put64(buf + AGENT_REC_HDR + (size_t)clen, agent_crc64(0, buf, AGENT_REC_HDR + (size_t)clen));
    *out = buf;
    *out_len = AGENT_REC_HDR + (size_t)clen + AGENT_REC_TRAILER;
    return API_OK;
}

static int parse_header(const unsigned char *buf, struct agent_rec *rec)
{
    if (memcmp(buf, rec_magic, 4) != 0)
        return -1;
    rec->flags = agent_get32(buf + 4);
    rec->epoch = agent_get64(buf + 8);
    rec->txid = agent_get64(buf + 16);
    rec->pre_ck = agent_get64(buf + 24);
    rec->post_ck = agent_get64(buf + 32);
    rec->page_size = agent_get32(buf + 40);
    rec->commit_pages = agent_get32(buf + 44);
    rec->npages = agent_get32(buf + 48);
    rec->payload_len = agent_get32(buf + 52);
    rec->time_us = agent_get64(buf + 56);
    if (rec->page_size < 512 || rec->page_size > MAX_PAGE_SIZE || (rec->page_size & (rec->page_size - 1)) != 0)
        return -1;
    if ((size_t)rec->npages * (4 + (size_t)rec->page_size) > MAX_RAW_BYTES)
        return -1;
    return 0;
}

int agent_rec_parse(const unsigned char *buf, size_t len, struct agent_rec *rec, size_t *rec_len, struct api_err *err)
{
    struct agent_rec r;
    size_t total;
    int rc = agent_rec_peek(buf, len, &r, &total, err);
    if (rc != API_OK)
        return rc;
    if (agent_crc64(0, buf, AGENT_REC_HDR + r.payload_len) != agent_get64(buf + AGENT_REC_HDR + r.payload_len))
        return api_err_set(err, API_EINVAL, "replication record txid %llu: trailing checksum mismatch",
                           (unsigned long long)r.txid);
    *rec = r;
    *rec_len = total;
    return API_OK;
}

int agent_rec_peek(const unsigned char *buf, size_t len, struct agent_rec *rec, size_t *rec_len, struct api_err *err)
{
    struct agent_rec r;
    if (len < AGENT_REC_HDR + AGENT_REC_TRAILER || parse_header(buf, &r) != 0)
        return api_err_set(err, API_EINVAL, "replication record: bad header");
    size_t total = AGENT_REC_HDR + (size_t)r.payload_len + AGENT_REC_TRAILER;
    if (total > len)
        return api_err_set(err, API_EINVAL, "replication record txid %llu: truncated", (unsigned long long)r.txid);
    *rec = r;
    *rec_len = total;
    return API_OK;
}

int agent_rec_unpack(const unsigned char *buf, const struct agent_rec *rec, void **block, const uint32_t **pgnos,
                     const unsigned char **pages, struct api_err *err)
{
    size_t raw_len = (size_t)rec->npages * (4 + (size_t)rec->page_size);
    unsigned char *raw = malloc(raw_len ? raw_len : 1);
    uint32_t *nums = malloc(rec->npages ? (size_t)rec->npages * sizeof(uint32_t) : 1);
    if (raw == NULL || nums == NULL) {
        free(raw);
        free(nums);
        return api_err_set(err, API_ENOMEM, "record: out of memory");
    }
    if (raw_len && LZ4_decompress_safe((const char *)buf + AGENT_REC_HDR, (char *)raw, (int)rec->payload_len,
                                       (int)raw_len) != (int)raw_len) {
        free(raw);
        free(nums);
        return api_err_set(err, API_EINVAL, "replication record txid %llu: payload does not decompress",
                           (unsigned long long)rec->txid);
    }
    for (uint32_t i = 0; i < rec->npages; i++)
        nums[i] = agent_get32(raw + 4 * (size_t)i);
    /* one block for the caller: page numbers, then the images */
    unsigned char *blk = malloc((size_t)rec->npages * sizeof(uint32_t) + (size_t)rec->npages * rec->page_size + 1);
    if (blk == NULL) {
        free(raw);
        free(nums);
        return api_err_set(err, API_ENOMEM, "record: out of memory");
    }
    memcpy(blk, nums, (size_t)rec->npages * sizeof(uint32_t));
    memcpy(blk + (size_t)rec->npages * sizeof(uint32_t), raw + 4 * (size_t)rec->npages,
           (size_t)rec->npages * rec->page_size);
    free(raw);
    free(nums);
    *block = blk;
    *pgnos = (const uint32_t *)blk;
    *pages = blk + (size_t)rec->npages * sizeof(uint32_t);
    return API_OK;
}

/* ------------------------------------------------------------------ */

struct agent_log {
    pthread_mutex_t mu;
    char *path;
    int fd;
    uint64_t base_txid, base_ck;
    uint64_t *offsets; /* offsets[i] = file offset of record base_txid + 1 + i */
    uint64_t *pre_cks; /* pre_cks[i] = its pre checksum: the hub checks every follower's
                        * acknowledgement against it, without reading the file */
    size_t n, cap;
    size_t end;   /* file length covered by valid records */
    size_t alloc; /* file length: end plus a tail of zeros written ahead (see grow_tail) */
    int unsynced; /* appends since the last fdatasync */
    struct agent_rec last;
    int birth_unsynced; /* created by this open; neither it nor its name synced yet */
    /* the file stays open only while the log is among the most recently
     * used (lru_*); fd is -1 when closed, and reopened on demand */
    struct agent_log *lru_prev, *lru_next;
    int in_lru;
    int pinned; /* an fd lent out (agent_log_sync): not to be closed */
};

/* Open log files, most recently used first, capped: an idle tenant holds
 * no descriptor. Nothing closes a file on a timer: a file is closed when
 * another is opened past the cap. Lock order: a log's mu, then lru_mu; a
 * victim's mu is only tried, never waited for. */
static pthread_mutex_t lru_mu = PTHREAD_MUTEX_INITIALIZER;
static struct agent_log *lru_head, *lru_tail;
static size_t lru_open, lru_cap = 1000;

void agent_log_set_max_open(size_t n)
{
    pthread_mutex_lock(&lru_mu);
    lru_cap = n > 0 ? n : 1;
    pthread_mutex_unlock(&lru_mu);
}

size_t agent_log_open_files(void)
{
    pthread_mutex_lock(&lru_mu);
    size_t n = lru_open;
    pthread_mutex_unlock(&lru_mu);
    return n;
}

/* lru_mu held */
static void lru_unlink(struct agent_log *log)
{
    if (log->lru_prev)
        log->lru_prev->lru_next = log->lru_next;
    else
        lru_head = log->lru_next;
    if (log->lru_next)
        log->lru_next->lru_prev = log->lru_prev;
    else
        lru_tail = log->lru_prev;
    log->lru_prev = log->lru_next = NULL;
    log->in_lru = 0;
    lru_open--;
}

/* LOG (its mu held, its fd open) becomes the most recently used; files
 * of the least recently used logs close while more than the cap are open. */
static void lru_touch(struct agent_log *log)
{
    pthread_mutex_lock(&lru_mu);
    if (log->in_lru)
        lru_unlink(log);
    log->lru_prev = NULL;
    log->lru_next = lru_head;
    if (lru_head)
        lru_head->lru_prev = log;
    lru_head = log;
    if (lru_tail == NULL)
        lru_tail = log;
    log->in_lru = 1;
    lru_open++;
    for (struct agent_log *v = lru_tail; v != NULL && lru_open > lru_cap;) {
        struct agent_log *prev = v->lru_prev;
        if (v != log && pthread_mutex_trylock(&v->mu) == 0) {
            if (!v->pinned) {
                close(v->fd);
                v->fd = -1;
                lru_unlink(v);
            }
            pthread_mutex_unlock(&v->mu);
        }
        v = prev;
    }
    pthread_mutex_unlock(&lru_mu);
}

/* LOG's file descriptor, reopened if the LRU closed it; -1 with errno set
 * on failure. LOG's mu held. */
static int log_fd(struct agent_log *log)
{
    if (log->fd < 0 && (log->fd = open(log->path, O_RDWR | O_CLOEXEC)) < 0)
        return -1;
    lru_touch(log);
    return log->fd;
}

static int write_all(int fd, const void *buf, size_t len, off_t off)
{
    const unsigned char *p = buf;
    while (len > 0) {
        ssize_t w = pwrite(fd, p, len, off);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        p += w;
        len -= (size_t)w;
        off += w;
    }
    return 0;
}

static int read_all(int fd, void *buf, size_t len, off_t off)
{
    unsigned char *p = buf;
    while (len > 0) {
        ssize_t r = pread(fd, p, len, off);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        if (r == 0) {
            errno = EIO;
            return -1;
        }
        p += r;
        len -= (size_t)r;
        off += r;
    }
    return 0;
}

static void encode_log_header(unsigned char hdr[LOG_HDR], uint64_t base_txid, uint64_t base_ck)
{
    memset(hdr, 0, LOG_HDR);
    memcpy(hdr, log_magic, 4);
    agent_put32(hdr + 4, 1);
    agent_put64(hdr + 8, base_txid);
    agent_put64(hdr + 16, base_ck);
    agent_put64(hdr + 24, agent_crc64(0, hdr, 24));
}

static int push_offset(struct agent_log *log, uint64_t off, uint64_t pre_ck)
{
    if (log->n == log->cap) {
        size_t ncap = log->cap ? log->cap * 2 : 64;
        uint64_t *no = realloc(log->offsets, ncap * sizeof(*no));
        if (no == NULL)
            return -1;
        log->offsets = no;
        uint64_t *np = realloc(log->pre_cks, ncap * sizeof(*np));
        if (np == NULL)
            return -1;
        log->pre_cks = np;
        log->cap = ncap;
    }
    log->pre_cks[log->n] = pre_ck;
    log->offsets[log->n++] = off;
    return 0;
}

/* Reads the records after the header, stopping at the first one that is
 * torn or does not continue the chain; truncates the file there. */
static int scan(struct agent_log *log, struct api_err *err)
{
    struct stat stt;
    uint64_t txid = log->base_txid, ck = log->base_ck;
    off_t off = LOG_HDR;
    unsigned char hdr[AGENT_REC_HDR];

    if (fstat(log->fd, &stt) != 0)
        return api_err_set(err, API_EIO, "log '%s': %s", log->path, strerror(errno));
    memset(&log->last, 0, sizeof(log->last));
    log->last.txid = txid;
    log->last.post_ck = ck;
    while (off + AGENT_REC_HDR + AGENT_REC_TRAILER <= stt.st_size) {
        struct agent_rec r;
        if (read_all(log->fd, hdr, sizeof(hdr), off) != 0 || parse_header(hdr, &r) != 0)
            break;
        size_t total = AGENT_REC_HDR + (size_t)r.payload_len + AGENT_REC_TRAILER;
        if (off + (off_t)total > stt.st_size || r.txid != txid + 1 || r.pre_ck != ck)
            break;
        /* verify the trailer: a crash can leave a full-length but torn record */
        unsigned char *buf = malloc(total);
        size_t rl;
        struct api_err e2;
        if (buf == NULL)
            return api_err_set(err, API_ENOMEM, "log: out of memory");
        int bad = read_all(log->fd, buf, total, off) != 0 || agent_rec_parse(buf, total, &r, &rl, &e2) != API_OK;
        free(buf);
        if (bad)
            break;
        if (push_offset(log, (uint64_t)off, r.pre_ck) != 0)
            return api_err_set(err, API_ENOMEM, "log: out of memory");
        log->last = r;
        txid = r.txid;
        ck = r.post_ck;
        off += (off_t)total;
    }
    /* What follows the last record is a torn append or the zeros written
     * ahead of appends (grow_tail); either way it goes. */
    if (off < stt.st_size && ftruncate(log->fd, off) != 0)
        return api_err_set(err, API_EIO, "log '%s': truncating a torn tail: %s", log->path, strerror(errno));
    log->end = log->alloc = (size_t)off;
    return API_OK;
}

/* A log whose creation a crash cut short (it is created unsynced, see
 * agent_log_open): shorter than its header, or a header of zeros and
 * nothing else. It can hold no record, so it is created again. */
static int unborn(int fd)
{
    struct stat st;
    unsigned char hdr[LOG_HDR];
    static const unsigned char zeros[LOG_HDR];
    if (fstat(fd, &st) != 0)
        return 0;
    if (st.st_size < LOG_HDR)
        return 1;
    return st.st_size == LOG_HDR && read_all(fd, hdr, LOG_HDR, 0) == 0 && memcmp(hdr, zeros, LOG_HDR) == 0;
}

int agent_log_open(const char *path, uint64_t base_txid, uint64_t base_ck, struct agent_log **out,
                   struct api_err *err)
{
    struct agent_log *log = calloc(1, sizeof(*log));
    unsigned char hdr[LOG_HDR];
    int rc;

    if (log == NULL || (log->path = strdup(path)) == NULL) {
        free(log);
        return api_err_set(err, API_ENOMEM, "log: out of memory");
    }
    pthread_mutex_init(&log->mu, NULL);
    log->fd = open(path, O_RDWR | O_CLOEXEC);
    if (log->fd >= 0 && unborn(log->fd)) {
        close(log->fd);
        log->fd = -1;
        errno = ENOENT;
    }
    if (log->fd < 0 && errno == ENOENT) {
        /* Created under a temporary name, so the log never lacks its
         * header, but not synced: until its first sync it holds nothing
         * anyone was promised, and that sync makes its birth durable. */
        char tmp[4200];
        snprintf(tmp, sizeof(tmp), "%s.tmp", path);
        int fd = open(tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        encode_log_header(hdr, base_txid, base_ck);
        log->birth_unsynced = 1;
        if (fd < 0 || write_all(fd, hdr, LOG_HDR, 0) != 0 || rename(tmp, path) != 0) {
            rc = api_err_set(err, API_EIO, "cannot create log '%s': %s", path, strerror(errno));
            if (fd >= 0)
                close(fd);
            agent_log_free(log);
            return rc;
        }
        log->fd = fd;
    }
    if (log->fd < 0) {
        rc = api_err_set(err, API_EIO, "cannot open log '%s': %s", path, strerror(errno));
        agent_log_free(log);
        return rc;
    }
    if (read_all(log->fd, hdr, LOG_HDR, 0) != 0 || memcmp(hdr, log_magic, 4) != 0 ||
        agent_get64(hdr + 24) != agent_crc64(0, hdr, 24)) {
        rc = api_err_set(err, API_EIO, "log '%s' has a bad header", path);
        agent_log_free(log);
        return rc;
    }
    log->base_txid = agent_get64(hdr + 8);
    log->base_ck = agent_get64(hdr + 16);
    if ((rc = scan(log, err)) != API_OK) {
        agent_log_free(log);
        return rc;
    }
    lru_touch(log); /* no other thread knows LOG yet */
    *out = log;
    return API_OK;
}

void agent_log_free(struct agent_log *log)
{
    if (log == NULL)
        return;
    pthread_mutex_lock(&lru_mu);
    if (log->in_lru)
        lru_unlink(log);
    pthread_mutex_unlock(&lru_mu);
    if (log->fd >= 0 && log->unsynced && fdatasync(log->fd) != 0) {
        /* nothing to report to: the next open scans what reached the disk */
    }
    if (log->fd >= 0)
        close(log->fd);
    pthread_mutex_destroy(&log->mu);
    free(log->offsets);
    free(log->pre_cks);
    free(log->path);
    free(log);
}

/* Appends inside the file's length, over blocks already written, leave
 * fdatasync nothing but the data to flush; an append that grows the file
 * changes its size (and, at writeback, its block map), so fdatasync must
 * also write the inode: on this machine's ext4 (no journal) a second
 * synchronous write before the cache flush. Measured here, a 200-byte
 * append plus fdatasync took 370-460 µs growing the file and 275-305 µs
 * inside it. So the log writes zeros ahead of its records in chunks (a
 * quarter of the log, 4 KiB to 1 MiB), and only an append that does not
 * fit in what is left pays for the size change and the new blocks.
 * (A new modification time still makes fdatasync write the inode, once
 * per clock tick per file.) Opening the log cuts the zeros off again
 * (scan), and no reader looks past `end`. */
#define TAIL_MIN 4096
#define TAIL_MAX (1u << 20)

/* Zeros from alloc to past NEED; -1 with errno set if a write failed. */
static int grow_tail(struct agent_log *log, size_t need)
{
    static const unsigned char zeros[65536];
    size_t chunk = log->end / 4;
    chunk = chunk < TAIL_MIN ? TAIL_MIN : chunk > TAIL_MAX ? TAIL_MAX : chunk;
    size_t target = (need + chunk + TAIL_MIN - 1) / TAIL_MIN * TAIL_MIN;
    for (size_t off = log->alloc; off < target;) {
        size_t n = target - off < sizeof(zeros) ? target - off : sizeof(zeros);
        if (write_all(log->fd, zeros, n, (off_t)off) != 0)
            return -1;
        off += n;
        log->alloc = off;
    }
    return 0;
}

int agent_log_append(struct agent_log *log, const unsigned char *buf, size_t len, struct api_err *err)
{
    struct agent_rec r;
    size_t rl;
    int rc;

    if ((rc = agent_rec_peek(buf, len, &r, &rl, err)) != API_OK)
        return rc;
    pthread_mutex_lock(&log->mu);
    if (r.txid != log->last.txid + 1 || r.pre_ck != log->last.post_ck) {
        rc = api_err_set(err, API_ECONFLICT, "record txid %llu pre %016llx does not follow the log at %llu/%016llx",
                         (unsigned long long)r.txid, (unsigned long long)r.pre_ck,
                         (unsigned long long)log->last.txid, (unsigned long long)log->last.post_ck);
    } else if (log_fd(log) < 0) {
        rc = api_err_set(err, API_EIO, "log '%s': reopening: %s", log->path, strerror(errno));
    } else if (log->end + rl > log->alloc && grow_tail(log, log->end + rl) != 0 && errno != ENOSPC) {
        /* ENOSPC refuses the zeros only: the record itself may still fit */
        rc = api_err_set(err, API_EIO, "log '%s': append failed: %s", log->path, strerror(errno));
    } else if (write_all(log->fd, buf, rl, (off_t)log->end) != 0) {
        rc = api_err_set(err, API_EIO, "log '%s': append failed: %s", log->path, strerror(errno));
        /* what was written is cut at the next open, and overwritten by the next append */
    } else if (push_offset(log, log->end, r.pre_ck) != 0) {
        rc = api_err_set(err, API_ENOMEM, "log: out of memory");
    } else {
        log->end += rl;
        if (log->end > log->alloc)
            log->alloc = log->end;
        log->last = r;
        log->unsynced = 1;
        rc = API_OK;
    }
    pthread_mutex_unlock(&log->mu);
    return rc;
}

/* fsyncs the directory holding PATH: the names created in it last. */
static int sync_dir_of(const char *path)
{
    char dir[4200];
    snprintf(dir, sizeof(dir), "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash == NULL)
        snprintf(dir, sizeof(dir), ".");
    else
        *slash = '\0';
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    api_workq_block_begin();
    int rc = fsync(fd);
    api_workq_block_end();
    close(fd);
    return rc;
}

int agent_log_sync(struct agent_log *log, struct api_err *err)
{
    /* Only the tenant's worker appends, rewrites and syncs, so it reads
     * unsynced without the mutex. The fd is pinned rather than the mutex
     * held: readers of the log (the hub) do not wait for the disk. */
    if (!log->unsynced && !log->birth_unsynced)
        return API_OK;
    pthread_mutex_lock(&log->mu);
    int fd = log_fd(log);
    if (fd >= 0)
        log->pinned++;
    pthread_mutex_unlock(&log->mu);
    if (fd < 0)
        return api_err_set(err, API_EIO, "log '%s': reopening: %s", log->path, strerror(errno));
    api_workq_block_begin(); /* another worker may run while this one waits for the disk */
    int rc = fdatasync(fd), e = errno;
    api_workq_block_end();
    pthread_mutex_lock(&log->mu);
    log->pinned--;
    pthread_mutex_unlock(&log->mu);
    if (rc != 0)
        return api_err_set(err, API_EIO, "log '%s': fdatasync: %s", log->path, strerror(e));
    log->unsynced = 0;
    /* The first sync of a new log also makes its name durable, and with it
     * every name created beside it so far: the tenant's database file,
     * whose contents the log rebuilds if they were lost (repl.c). This is
     * where creating a tenant pays for durability: at its first write. */
    if (log->birth_unsynced) {
        if (sync_dir_of(log->path) != 0)
            return api_err_set(err, API_EIO, "log '%s': syncing its directory: %s", log->path, strerror(errno));
        log->birth_unsynced = 0;
    }
    return API_OK;
}

/* Writes a new log holding HDR and the bytes [FROM, end) of the current
 * one, then renames it over the current. Holds log->mu. */
static int rewrite_locked(struct agent_log *log, uint64_t base_txid, uint64_t base_ck, size_t from,
                          struct api_err *err)
{
    char tmp[4200];
    unsigned char hdr[LOG_HDR];
    size_t len = log->end - from;
    unsigned char *buf = malloc(len ? len : 1);
    int fd;

    if (buf == NULL)
        return api_err_set(err, API_ENOMEM, "log: out of memory");
    if (len && (log_fd(log) < 0 || read_all(log->fd, buf, len, (off_t)from) != 0)) {
        free(buf);
        return api_err_set(err, API_EIO, "log '%s': %s", log->path, strerror(errno));
    }
    snprintf(tmp, sizeof(tmp), "%s.tmp", log->path);
    encode_log_header(hdr, base_txid, base_ck);
    fd = open(tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0 || write_all(fd, hdr, LOG_HDR, 0) != 0 || write_all(fd, buf, len, LOG_HDR) != 0 || fdatasync(fd) != 0 ||
        rename(tmp, log->path) != 0) {
        int rc = api_err_set(err, API_EIO, "log '%s': rewrite failed: %s", log->path, strerror(errno));
        if (fd >= 0)
            close(fd);
        unlink(tmp);
        free(buf);
        return rc;
    }
    free(buf);
    if (log->fd >= 0)
        close(log->fd);
    log->fd = fd;
    log->unsynced = 0; /* the new file was synced whole */
    lru_touch(log);
    /* offsets shift by (from - LOG_HDR) */
    size_t drop = 0;
    while (drop < log->n && log->offsets[drop] < from)
        drop++;
    if (drop > 0 && log->n > drop) {
        memmove(log->offsets, log->offsets + drop, (log->n - drop) * sizeof(*log->offsets));
        memmove(log->pre_cks, log->pre_cks + drop, (log->n - drop) * sizeof(*log->pre_cks));
    }
    log->n -= drop;
    for (size_t i = 0; i < log->n; i++)
        log->offsets[i] -= from - LOG_HDR;
    log->end = log->alloc = LOG_HDR + len;
    log->base_txid = base_txid;
    log->base_ck = base_ck;
    if (log->n == 0) {
        memset(&log->last, 0, sizeof(log->last));
        log->last.txid = base_txid;
        log->last.post_ck = base_ck;
    }
    return API_OK;
}

int agent_log_reset(struct agent_log *log, uint64_t base_txid, uint64_t base_ck, struct api_err *err)
{
    pthread_mutex_lock(&log->mu);
    int rc = rewrite_locked(log, base_txid, base_ck, log->end, err);
    pthread_mutex_unlock(&log->mu);
    return rc;
}

int agent_log_compact(struct agent_log *log, size_t keep_bytes, uint64_t max_drop_txid, struct api_err *err)
{
    int rc = API_OK;
    pthread_mutex_lock(&log->mu);
    if (log->end > keep_bytes && log->n > 1) {
        /* first record to keep: the oldest whose suffix fits, never the last */
        size_t k = 0;
        while (k + 1 < log->n && log->end - log->offsets[k] > keep_bytes && log->base_txid + k + 1 <= max_drop_txid)
            k++;
        if (k > 0) {
            unsigned char hdr[AGENT_REC_HDR];
            struct agent_rec prev;
            /* the new base is the position after record k-1 */
            if (log_fd(log) < 0 || read_all(log->fd, hdr, sizeof(hdr), (off_t)log->offsets[k - 1]) != 0 ||
                parse_header(hdr, &prev) != 0)
                rc = api_err_set(err, API_EIO, "log '%s': cannot read record for compaction", log->path);
            else
                rc = rewrite_locked(log, prev.txid, prev.post_ck, log->offsets[k], err);
        }
    }
    pthread_mutex_unlock(&log->mu);
    return rc;
}

int agent_log_read(struct agent_log *log, uint64_t txid, unsigned char **out, size_t *out_len, struct api_err *err)
{
    int rc = API_OK;
    pthread_mutex_lock(&log->mu);
    if (txid <= log->base_txid || txid > log->last.txid) {
        rc = api_err_set(err, API_ENOTFOUND, "txid %llu is not in the log (%llu..%llu)", (unsigned long long)txid,
                         (unsigned long long)log->base_txid + 1, (unsigned long long)log->last.txid);
    } else {
        size_t i = (size_t)(txid - log->base_txid - 1);
        size_t end = i + 1 < log->n ? log->offsets[i + 1] : log->end;
        size_t len = end - log->offsets[i];
        unsigned char *buf = malloc(len);
        if (buf == NULL)
            rc = api_err_set(err, API_ENOMEM, "log: out of memory");
        else if (log_fd(log) < 0 || read_all(log->fd, buf, len, (off_t)log->offsets[i]) != 0) {
            free(buf);
            rc = api_err_set(err, API_EIO, "log '%s': read: %s", log->path, strerror(errno));
        } else {
            *out = buf;
            *out_len = len;
        }
    }
    pthread_mutex_unlock(&log->mu);
    return rc;
}

int agent_log_pre_ck(struct agent_log *log, uint64_t txid, uint64_t *out)
{
    int rc = -1;
    pthread_mutex_lock(&log->mu);
    if (txid > log->base_txid && txid <= log->last.txid) {
        *out = log->pre_cks[txid - log->base_txid - 1];
        rc = 0;
    }
    pthread_mutex_unlock(&log->mu);
    return rc;
}

void agent_log_position(struct agent_log *log, struct agent_log_pos *out)
{
    pthread_mutex_lock(&log->mu);
    out->base_txid = log->base_txid;
    out->base_ck = log->base_ck;
    out->last_txid = log->last.txid;
    out->last_ck = log->last.post_ck;
    out->last_epoch = log->last.epoch;
    out->last_time_us = log->last.time_us;
    out->last_commit_pages = log->last.commit_pages;
    out->page_size = log->last.page_size;
    out->bytes = log->end;
    pthread_mutex_unlock(&log->mu);
}
