/*
 * snapcell in-guest file system (snapcell_fs.h): a read-only image at / and a bounded /tmp in
 * the guest's own memory, served from the SDK's system call handler without leaving the VM.
 *
 * The image (built by snapcell/guest/fsimage.py; all integers little-endian):
 *   header   "SCFSIMG1", u32 version (1), u32 count, u64 table_off, u64 children_off,
 *            u64 strings_off, u64 data_off, u64 total_size
 *   table    count entries of 32 bytes, sorted by full path (bytewise), entry 0 = "/":
 *            u32 path_off, u32 path_len (into strings), u32 parent, u32 mode,
 *            u64 a (file: data offset; dir: index into children), u64 b (file: size;
 *            dir: number of children)
 *   children u32 entry indices, each directory's children contiguous and sorted by name
 *   strings  the full paths
 *   data     file contents
 * Every offset and index is checked at mount time, so lookups need no further checks.
 *
 * Like the rest of the system call handler this code runs without TLS, errno or malloc: /tmp
 * file data lives in arena pages taken with the SDK's own mmap (a direct call, no syscall).
 * Paths are resolved lexically (the image has no symlinks; /tmp neither).
 */
#define _GNU_SOURCE 1
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>

#include "snapcell_fs.h"

#if defined(__has_attribute)
#if __has_attribute(no_stack_protector)
#define FS_NOSSP __attribute__((no_stack_protector))
#endif
#endif
#ifndef FS_NOSSP
#define FS_NOSSP
#endif

#ifdef SC_FS_NATIVE_TEST
#include <sys/syscall.h>
#include <unistd.h>
static long raw_mmap(size_t len) { return (long)syscall(SYS_mmap, 0, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0); }
static long raw_munmap(void *p, size_t len) { return (long)syscall(SYS_munmap, p, len); }
static int64_t now_ns(void) { return 1700000000LL * 1000000000LL; }
#else
long __sc_syscall(long nr, long a0, long a1, long a2, long a3, long a4, long a5);
static long raw_mmap(size_t len)
{
    return __sc_syscall(SYS_mmap, 0, (long)len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
}
static long raw_munmap(void *p, size_t len) { return __sc_syscall(SYS_munmap, (long)p, (long)len, 0, 0, 0, 0); }
/* one host exit: only when a /tmp file is created or written */
static int64_t now_ns(void)
{
    struct timespec ts = {0, 0};
    if (__sc_syscall(SYS_clock_gettime, CLOCK_REALTIME, (long)&ts, 0, 0, 0, 0) != 0)
        return 0;
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}
#endif

#define PAGE 4096u
#define IMG_MAGIC "SCFSIMG1"
#define IMG_HDR 56
#define IMG_ENT 32
#define TMP "/tmp"
#define IMAGE_MTIME 1672531200LL      /* 2023-01-01: every image entry */
#define AT_FDCWD_ (-100)
#define DEV_IMAGE 0x5c01
#define DEV_TMP 0x5c02

struct img_ent {
    uint32_t path_off, path_len, parent, mode;
    uint64_t a, b;
};

struct tmp_node {
    char path[SC_FS_PATH_MAX];      /* "" = free */
    uint32_t mode;                  /* S_IFREG | 0644 or S_IFDIR | 0755 */
    int opens;                      /* descriptors referring to it */
    int linked;                     /* still reachable by its path */
    int dirty;
    char *data;                     /* arena pages */
    size_t size, cap;
    int64_t mtime;
};

enum { FD_FREE, FD_STD, FD_IMG_FILE, FD_IMG_DIR, FD_TMP_FILE, FD_TMP_DIR, FD_NULL };

/* /dev/null: reads see end of file, writes are discarded (code opens it to silence output) */
#define DEV_NULL "/dev/null"

struct fdesc {
    int kind;
    uint32_t idx;                   /* image entry or tmp node */
    uint64_t off;                   /* file offset, or directory position */
    int flags;                      /* open flags (O_ACCMODE, O_APPEND) */
    int cloexec;
};

static const unsigned char *img;
static size_t img_size;
static uint32_t img_count;
static const unsigned char *img_table, *img_children, *img_strings;
static int mounted;
static uint32_t tmp_entry;          /* the image's /tmp directory entry */

static struct tmp_node nodes[SC_FS_MAX_NODES];
/* Every node at or above this index is free: the scans below stop there, so a run that uses
 * few files reads (and dirties) few pages of the table — each dirtied page costs a copy on
 * every restore. */
static uint32_t nodes_high;
static struct fdesc fds[SC_FS_MAX_FDS];
static size_t tmp_used, tmp_cap_total;
static char cwd[SC_FS_PATH_MAX] = "/";

/* ---- little helpers ------------------------------------------------------------------------ */

static FS_NOSSP uint32_t rd32(const unsigned char *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static FS_NOSSP uint64_t rd64(const unsigned char *p) { uint64_t v; memcpy(&v, p, 8); return v; }

static FS_NOSSP struct img_ent ent(uint32_t i)
{
    const unsigned char *p = img_table + (size_t)i * IMG_ENT;
    struct img_ent e = {rd32(p), rd32(p + 4), rd32(p + 8), rd32(p + 12), rd64(p + 16), rd64(p + 24)};
    return e;
}

static FS_NOSSP int is_dir_mode(uint32_t m) { return (m & S_IFMT) == S_IFDIR; }

/* strcmp of a (NUL-terminated) with b[0..blen) */
static FS_NOSSP int cmp_path(const char *a, const unsigned char *b, uint32_t blen)
{
    size_t alen = strlen(a);
    size_t n = alen < blen ? alen : blen;
    int c = memcmp(a, b, n);
    if (c)
        return c;
    return alen < blen ? -1 : alen > blen ? 1 : 0;
}

/* The image entry of an absolute normalised path, or -1. */
static FS_NOSSP long img_lookup(const char *path)
{
    uint32_t lo = 0, hi = img_count;
    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;
        struct img_ent e = ent(mid);
        int c = cmp_path(path, img_strings + e.path_off, e.path_len);
        if (c == 0)
            return mid;
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return -1;
}

/* Is path /tmp or below it? */
static FS_NOSSP int in_tmp(const char *p)
{
    return strncmp(p, TMP, 4) == 0 && (p[4] == '\0' || p[4] == '/');
}

/*
 * Normalise `in` (absolute, or relative to `base`) into out[SC_FS_PATH_MAX]: no "//", ".",
 * "..", trailing "/". -ENAMETOOLONG, -ENOENT for "", -EFAULT for a NULL pointer.
 */
static FS_NOSSP int normalise(const char *base, const char *in, char *out)
{
    if (!in)
        return -EFAULT;
    if (!in[0])
        return -ENOENT;
    size_t n = 0;
    const char *srcs[2] = {in[0] == '/' ? "" : base, in};
    out[n++] = '/';
    for (int s = 0; s < 2; s++) {
        const char *p = srcs[s];
        while (*p) {
            while (*p == '/')
                p++;
            if (!*p)
                break;
            const char *q = p;
            while (*q && *q != '/')
                q++;
            size_t len = (size_t)(q - p);
            if (len == 1 && p[0] == '.') {
                /* nothing */
            } else if (len == 2 && p[0] == '.' && p[1] == '.') {
                while (n > 1 && out[n - 1] != '/')
                    n--;
                if (n > 1)
                    n--;            /* the '/' before the component */
            } else {
                if (n > 1) {
                    if (n + 1 >= SC_FS_PATH_MAX)
                        return -ENAMETOOLONG;
                    out[n++] = '/';
                }
                if (len >= SC_FS_PATH_MAX || n + len >= SC_FS_PATH_MAX)
                    return -ENAMETOOLONG;
                memcpy(out + n, p, len);
                n += len;
            }
            p = q;
        }
    }
    out[n] = '\0';
    return 0;
}

/* Length of the parent part of a normalised path ("/a/b" -> "/a", "/a" -> "/"). */
static FS_NOSSP void parent_of(const char *path, char *out)
{
    size_t n = strlen(path);
    while (n > 1 && path[n - 1] != '/')
        n--;
    if (n > 1)
        n--;
    memcpy(out, path, n);
    out[n] = '\0';
}

static FS_NOSSP const char *base_name(const char *path)
{
    const char *s = strrchr(path, '/');
    return s ? s + 1 : path;
}

/* ---- /tmp nodes ---------------------------------------------------------------------------- */

static FS_NOSSP long tmp_lookup(const char *path)
{
    if (strcmp(path, TMP) == 0)
        return -2;                      /* /tmp itself: the image's directory, always empty-ish */
    for (uint32_t i = 0; i < nodes_high; i++)
        if (nodes[i].linked && strcmp(nodes[i].path, path) == 0)
            return i;
    return -1;
}

static FS_NOSSP void node_release(uint32_t i)
{
    struct tmp_node *nd = &nodes[i];
    if (nd->linked || nd->opens)
        return;
    if (nd->data) {
        raw_munmap(nd->data, nd->cap);
        tmp_used -= nd->size;
    }
    memset(nd, 0, sizeof *nd);
}

static FS_NOSSP long node_new(const char *path, uint32_t mode)
{
    for (uint32_t i = 0; i < SC_FS_MAX_NODES; i++) {
        if (!nodes[i].linked && !nodes[i].opens) {
            struct tmp_node *nd = &nodes[i];
            memset(nd, 0, sizeof *nd);
            strcpy(nd->path, path);
            nd->mode = mode;
            nd->linked = 1;
            nd->dirty = 1;
            nd->mtime = now_ns();
            if (i >= nodes_high)
                nodes_high = i + 1;
            return i;
        }
    }
    return -ENOSPC;
}

/* Make room for `size` bytes of node data. */
static FS_NOSSP int node_reserve(struct tmp_node *nd, size_t size)
{
    if (size <= nd->cap)
        return 0;
    size_t cap = nd->cap ? nd->cap : PAGE;
    while (cap < size) {
        if (cap > ((size_t)1 << 40))
            return -EFBIG;
        cap *= 2;
    }
    long p = raw_mmap(cap);
    if (p < 0 && p > -4096)
        return -ENOSPC;
    if (nd->data) {
        memcpy((void *)p, nd->data, nd->size);
        raw_munmap(nd->data, nd->cap);
    }
    nd->data = (char *)p;
    nd->cap = cap;
    return 0;
}

/* Set the node's size (growing zero-fills), charging /tmp's byte limit. */
static FS_NOSSP int node_resize(struct tmp_node *nd, size_t size)
{
    if (size > nd->size && size - nd->size > tmp_cap_total - tmp_used)
        return -ENOSPC;
    int r = node_reserve(nd, size);
    if (r)
        return r;
    if (size > nd->size)
        memset(nd->data + nd->size, 0, size - nd->size);
    tmp_used = tmp_used - nd->size + size;
    nd->size = size;
    return 0;
}

static FS_NOSSP int tmp_is_dir(const char *path)
{
    if (strcmp(path, TMP) == 0)
        return 1;
    long i = tmp_lookup(path);
    return i >= 0 && is_dir_mode(nodes[i].mode);
}

static FS_NOSSP int tmp_has_children(const char *path)
{
    size_t n = strlen(path);
    for (uint32_t i = 0; i < nodes_high; i++)
        if (nodes[i].linked && strncmp(nodes[i].path, path, n) == 0 && nodes[i].path[n] == '/')
            return 1;
    return 0;
}

/* ---- stat ---------------------------------------------------------------------------------- */

struct sc_statx_ts { int64_t tv_sec; uint32_t tv_nsec; int32_t pad; };
struct sc_statx {
    uint32_t stx_mask, stx_blksize;
    uint64_t stx_attributes;
    uint32_t stx_nlink, stx_uid, stx_gid;
    uint16_t stx_mode, pad1;
    uint64_t stx_ino, stx_size, stx_blocks, stx_attributes_mask;
    struct sc_statx_ts stx_atime, stx_btime, stx_ctime, stx_mtime;
    uint32_t stx_rdev_major, stx_rdev_minor, stx_dev_major, stx_dev_minor;
    uint64_t spare[14];
};

struct meta {
    uint32_t mode;
    uint64_t ino, size, dev;
    int64_t mtime_ns;
};

static FS_NOSSP void fill_stat(struct stat *st, const struct meta *m)
{
    memset(st, 0, sizeof *st);
    st->st_dev = m->dev;
    st->st_ino = m->ino;
    st->st_nlink = is_dir_mode(m->mode) ? 2 : 1;
    st->st_mode = m->mode;
    st->st_size = (off_t)m->size;
    st->st_blksize = PAGE;
    st->st_blocks = (blkcnt_t)((m->size + 511) / 512);
    st->st_atim.tv_sec = st->st_mtim.tv_sec = st->st_ctim.tv_sec = m->mtime_ns / 1000000000LL;
    st->st_atim.tv_nsec = st->st_mtim.tv_nsec = st->st_ctim.tv_nsec = m->mtime_ns % 1000000000LL;
}

static FS_NOSSP void fill_statx(struct sc_statx *sx, const struct meta *m)
{
    memset(sx, 0, sizeof *sx);
    sx->stx_mask = 0x7ff;           /* STATX_BASIC_STATS */
    sx->stx_blksize = PAGE;
    sx->stx_nlink = is_dir_mode(m->mode) ? 2 : 1;
    sx->stx_mode = (uint16_t)m->mode;
    sx->stx_ino = m->ino;
    sx->stx_size = m->size;
    sx->stx_blocks = (m->size + 511) / 512;
    struct sc_statx_ts t = {m->mtime_ns / 1000000000LL, (uint32_t)(m->mtime_ns % 1000000000LL), 0};
    sx->stx_atime = sx->stx_btime = sx->stx_ctime = sx->stx_mtime = t;
    sx->stx_dev_minor = (uint32_t)m->dev;
}

static FS_NOSSP struct meta img_meta(uint32_t i)
{
    struct img_ent e = ent(i);
    struct meta m = {e.mode, (uint64_t)i + 1, is_dir_mode(e.mode) ? PAGE : e.b, DEV_IMAGE,
                     IMAGE_MTIME * 1000000000LL};
    return m;
}

static FS_NOSSP struct meta tmp_meta(uint32_t i)
{
    struct tmp_node *nd = &nodes[i];
    struct meta m = {nd->mode, (uint64_t)i + 100000, is_dir_mode(nd->mode) ? PAGE : nd->size,
                     DEV_TMP, nd->mtime};
    return m;
}

/* Metadata of a normalised path: 0 or -ENOENT. */
static FS_NOSSP void null_meta(struct meta *m)
{
    struct meta s = {S_IFCHR | 0666, 1, 0, 0x0103, IMAGE_MTIME * 1000000000LL};
    *m = s;
}

static FS_NOSSP int path_meta(const char *path, struct meta *m)
{
    if (strcmp(path, DEV_NULL) == 0) {
        null_meta(m);
        return 0;
    }
    if (in_tmp(path) && strcmp(path, TMP) != 0) {
        long i = tmp_lookup(path);
        if (i < 0)
            return -ENOENT;
        *m = tmp_meta((uint32_t)i);
        return 0;
    }
    long i = img_lookup(path);
    if (i < 0)
        return -ENOENT;
    *m = img_meta((uint32_t)i);
    if (strcmp(path, TMP) == 0) {
        m->mode = S_IFDIR | 01777;
        m->dev = DEV_TMP;
    }
    return 0;
}

/* ---- descriptors --------------------------------------------------------------------------- */

static FS_NOSSP struct fdesc *get_fd(long fd)
{
    if (fd < 0 || fd >= SC_FS_MAX_FDS || fds[fd].kind == FD_FREE)
        return NULL;
    return &fds[fd];
}

static FS_NOSSP long new_fd(long min)
{
    for (long i = min < 3 ? 3 : min; i < SC_FS_MAX_FDS; i++)
        if (fds[i].kind == FD_FREE)
            return i;
    return -EMFILE;
}

/* The path an fd refers to (directories, for *at calls). */
static FS_NOSSP int fd_path(long dirfd, char *out)
{
    if (dirfd == AT_FDCWD_) {
        strcpy(out, cwd);
        return 0;
    }
    struct fdesc *d = get_fd(dirfd);
    if (!d)
        return -EBADF;
    if (d->kind == FD_IMG_DIR) {
        struct img_ent e = ent(d->idx);
        memcpy(out, img_strings + e.path_off, e.path_len);
        out[e.path_len] = '\0';
        return 0;
    }
    if (d->kind == FD_TMP_DIR) {
        if (d->idx == UINT32_MAX)
            strcpy(out, TMP);
        else
            strcpy(out, nodes[d->idx].path);
        return 0;
    }
    return -ENOTDIR;
}

/* Resolve (dirfd, path) into a normalised absolute path. */
static FS_NOSSP int resolve(long dirfd, const char *path, char *out)
{
    char base[SC_FS_PATH_MAX];
    if (!path)
        return -EFAULT;
    if (path[0] != '/') {
        int r = fd_path(dirfd, base);
        if (r)
            return r;
    } else {
        base[0] = '\0';
    }
    return normalise(base, path, out);
}

/* Is the parent of path an existing directory?  1 yes, 0 no; *in_image set when it is an image
 * directory outside /tmp. */
static FS_NOSSP int parent_dir(const char *path, int *in_image)
{
    char par[SC_FS_PATH_MAX];
    parent_of(path, par);
    *in_image = 0;
    if (in_tmp(par))
        return tmp_is_dir(par);
    long i = img_lookup(par);
    if (i >= 0 && is_dir_mode(ent((uint32_t)i).mode)) {
        *in_image = 1;
        return 1;
    }
    return 0;
}

static FS_NOSSP long do_open(long dirfd, const char *upath, long flags)
{
    char path[SC_FS_PATH_MAX];
    int r = resolve(dirfd, upath, path);
    if (r)
        return r;
    int acc = (int)(flags & O_ACCMODE);
    int writing = acc != O_RDONLY || (flags & (O_CREAT | O_TRUNC));
    long fd = new_fd(3);
    if (fd < 0)
        return fd;
    struct fdesc d = {FD_FREE, 0, 0, (int)(flags & (O_ACCMODE | O_APPEND)), (flags & O_CLOEXEC) != 0};
    if (strcmp(path, DEV_NULL) == 0) {
        if (flags & O_DIRECTORY)
            return -ENOTDIR;
        d.kind = FD_NULL;
        fds[fd] = d;
        return fd;
    }
    if (in_tmp(path) && strcmp(path, TMP) != 0) {
        long i = tmp_lookup(path);
        if (i >= 0 && (flags & O_CREAT) && (flags & O_EXCL))
            return -EEXIST;
        if (i < 0) {
            if (!(flags & O_CREAT))
                return -ENOENT;
            int img_par;
            if (!parent_dir(path, &img_par))
                return -ENOENT;
            if (flags & O_DIRECTORY)
                return -EINVAL;
            i = node_new(path, S_IFREG | 0644);
            if (i < 0)
                return i;
        }
        struct tmp_node *nd = &nodes[i];
        if (is_dir_mode(nd->mode)) {
            if (writing)
                return -EISDIR;
            d.kind = FD_TMP_DIR;
        } else {
            if (flags & O_DIRECTORY)
                return -ENOTDIR;
            d.kind = FD_TMP_FILE;
            if ((flags & O_TRUNC) && acc != O_RDONLY && nd->size) {
                node_resize(nd, 0);
                nd->dirty = 1;
                nd->mtime = now_ns();
            }
        }
        d.idx = (uint32_t)i;
        nd->opens++;
        fds[fd] = d;
        return fd;
    }
    long i = img_lookup(path);
    if (i < 0) {
        if (flags & O_CREAT) {
            int img_par;
            return parent_dir(path, &img_par) ? -EROFS : -ENOENT;
        }
        return -ENOENT;
    }
    struct img_ent e = ent((uint32_t)i);
    if (strcmp(path, TMP) == 0) {
        if (writing)
            return -EISDIR;
        d.kind = FD_TMP_DIR;
        d.idx = UINT32_MAX;
    } else if (is_dir_mode(e.mode)) {
        if (writing)
            return -EISDIR;
        d.kind = FD_IMG_DIR;
        d.idx = (uint32_t)i;
    } else {
        if (writing)
            return -EROFS;
        if (flags & O_DIRECTORY)
            return -ENOTDIR;
        d.kind = FD_IMG_FILE;
        d.idx = (uint32_t)i;
    }
    fds[fd] = d;
    return fd;
}

static FS_NOSSP long do_close(long fd)
{
    if (fd >= 0 && fd < 3 && fds[fd].kind == FD_STD)
        return 0;
    struct fdesc *d = get_fd(fd);
    if (!d)
        return -EBADF;
    if ((d->kind == FD_TMP_FILE || d->kind == FD_TMP_DIR) && d->idx != UINT32_MAX) {
        nodes[d->idx].opens--;
        node_release(d->idx);
    }
    memset(d, 0, sizeof *d);
    return 0;
}

/* Read up to n bytes at offset off of the file behind d into buf. */
static FS_NOSSP long file_pread(struct fdesc *d, char *buf, size_t n, uint64_t off)
{
    const char *src;
    uint64_t size;
    if (d->kind == FD_IMG_FILE) {
        struct img_ent e = ent(d->idx);
        src = (const char *)img + e.a;
        size = e.b;
    } else if (d->kind == FD_TMP_FILE) {
        src = nodes[d->idx].data;
        size = nodes[d->idx].size;
    } else if (d->kind == FD_IMG_DIR || d->kind == FD_TMP_DIR) {
        return -EISDIR;
    } else {
        return 0;                     /* stdin: end of file */
    }
    if ((d->flags & O_ACCMODE) == O_WRONLY)
        return -EBADF;
    if (off >= size)
        return 0;
    if (n > size - off)
        n = (size_t)(size - off);
    memcpy(buf, src + off, n);
    return (long)n;
}

/* The bytes of the read-only image file open as fd (for file-backed mmap, libmap.c): 0 with
 * *data and *size set; -EBADF when fd is not open, -EACCES when it is not an image file (files
 * under /tmp, directories and the standard streams cannot be mapped). */
FS_NOSSP long sc_fs_image_file(long fd, const void **data, uint64_t *size)
{
    struct fdesc *d = mounted ? get_fd(fd) : NULL;
    if (!d)
        return -EBADF;
    if (d->kind != FD_IMG_FILE || (d->flags & O_ACCMODE) == O_WRONLY)
        return -EACCES;
    struct img_ent e = ent(d->idx);
    *data = img + e.a;
    *size = e.b;
    return 0;
}

static FS_NOSSP long file_pwrite(struct fdesc *d, const char *buf, size_t n, uint64_t off)
{
    if (d->kind != FD_TMP_FILE)
        return d->kind == FD_IMG_DIR || d->kind == FD_TMP_DIR ? -EISDIR : -EBADF;
    if ((d->flags & O_ACCMODE) == O_RDONLY)
        return -EBADF;
    struct tmp_node *nd = &nodes[d->idx];
    if (off > ((uint64_t)1 << 40) || n > ((uint64_t)1 << 40))
        return -EFBIG;
    if (off + n > nd->size) {
        int r = node_resize(nd, (size_t)(off + n));
        if (r)
            return r;
    }
    memcpy(nd->data + off, buf, n);
    if (!nd->dirty)
        nd->mtime = now_ns();
    nd->dirty = 1;
    return (long)n;
}

static FS_NOSSP long do_rw(long fd, char *buf, size_t n, int write, int64_t at)
{
    if (fd >= 0 && fd < 3 && fds[fd].kind == FD_STD) {
        if (write)
            return -ENOSYS;           /* the caller forwards fd 1/2 writes to the host */
        return fd == 0 ? 0 : -EBADF;
    }
    struct fdesc *d = get_fd(fd);
    if (!d)
        return -EBADF;
    if (at < -1)
        return -EINVAL;
    if (d->kind == FD_NULL)
        return write ? (long)n : 0;
    uint64_t off = at >= 0 ? (uint64_t)at : d->off;
    long r;
    if (write) {
        if (at < 0 && (d->flags & O_APPEND) && d->kind == FD_TMP_FILE)
            off = nodes[d->idx].size;
        r = file_pwrite(d, buf, n, off);
    } else {
        r = file_pread(d, buf, n, off);
    }
    if (r > 0 && at < 0)
        d->off = off + (uint64_t)r;
    return r;
}

static FS_NOSSP long do_rwv(long fd, const struct iovec *iov, long cnt, int write, int64_t at)
{
    if (cnt < 0 || cnt > 1024)
        return -EINVAL;
    long total = 0;
    for (long k = 0; k < cnt; k++) {
        if (!iov[k].iov_len)
            continue;
        long r = do_rw(fd, iov[k].iov_base, iov[k].iov_len, write, at < 0 ? -1 : at + total);
        if (r < 0)
            return total ? total : r;
        total += r;
        if ((size_t)r < iov[k].iov_len)
            break;
    }
    return total;
}

static FS_NOSSP long do_lseek(long fd, int64_t off, long whence)
{
    if (fd >= 0 && fd < 3 && fds[fd].kind == FD_STD)
        return -ESPIPE;
    struct fdesc *d = get_fd(fd);
    if (!d)
        return -EBADF;
    if (d->kind == FD_NULL)
        return 0;
    int64_t size = 0;
    if (d->kind == FD_IMG_FILE)
        size = (int64_t)ent(d->idx).b;
    else if (d->kind == FD_TMP_FILE)
        size = (int64_t)nodes[d->idx].size;
    int64_t pos;
    switch (whence) {
    case SEEK_SET: pos = off; break;
    case SEEK_CUR: pos = (int64_t)d->off + off; break;
    case SEEK_END: pos = size + off; break;
    default: return -EINVAL;
    }
    if (pos < 0)
        return -EINVAL;
    if (d->kind == FD_IMG_DIR || d->kind == FD_TMP_DIR) {
        if (pos != 0 && whence != SEEK_SET)
            return -EINVAL;
    }
    d->off = (uint64_t)pos;
    return pos;
}

static FS_NOSSP int fd_meta(long fd, struct meta *m)
{
    if (fd >= 0 && fd < 3 && fds[fd].kind == FD_STD) {
        struct meta s = {S_IFCHR | 0620, (uint64_t)fd + 1, 0, 0x5c00, IMAGE_MTIME * 1000000000LL};
        *m = s;
        return 0;
    }
    struct fdesc *d = get_fd(fd);
    if (!d)
        return -EBADF;
    if (d->kind == FD_NULL)
        null_meta(m);
    else if (d->kind == FD_IMG_FILE || d->kind == FD_IMG_DIR)
        *m = img_meta(d->idx);
    else if (d->idx == UINT32_MAX)
        return path_meta(TMP, m);
    else
        *m = tmp_meta(d->idx);
    return 0;
}

/* ---- directories --------------------------------------------------------------------------- */

struct dirent_out {
    char *buf;
    size_t cap, len;
};

/* Append one linux_dirent64; 0, or -1 when it does not fit. */
static FS_NOSSP int put_dirent(struct dirent_out *o, uint64_t ino, uint64_t next, unsigned type,
                               const char *name, size_t nlen)
{
    size_t rec = (19 + nlen + 1 + 7) & ~(size_t)7;
    if (o->len + rec > o->cap)
        return -1;
    char *p = o->buf + o->len;
    memset(p, 0, rec);
    memcpy(p, &ino, 8);
    memcpy(p + 8, &next, 8);
    uint16_t r16 = (uint16_t)rec;
    memcpy(p + 16, &r16, 2);
    p[18] = (char)type;
    memcpy(p + 19, name, nlen);
    o->len += rec;
    return 0;
}

#define DT_DIR_ 4
#define DT_REG_ 8

static FS_NOSSP long do_getdents(long fd, char *buf, size_t cap)
{
    struct fdesc *d = get_fd(fd);
    if (!d)
        return -EBADF;
    if (d->kind != FD_IMG_DIR && d->kind != FD_TMP_DIR)
        return -ENOTDIR;
    struct dirent_out o = {buf, cap, 0};
    /* positions: 0 ".", 1 "..", then the children in order */
    for (;;) {
        uint64_t pos = d->off;
        int r;
        if (pos == 0) {
            r = put_dirent(&o, 1, 1, DT_DIR_, ".", 1);
        } else if (pos == 1) {
            r = put_dirent(&o, 1, 2, DT_DIR_, "..", 2);
        } else if (d->kind == FD_IMG_DIR) {
            struct img_ent e = ent(d->idx);
            uint64_t k = pos - 2;
            if (k >= e.b)
                break;
            uint32_t c = rd32(img_children + (e.a + k) * 4);
            struct img_ent ce = ent(c);
            const char *full = (const char *)img_strings + ce.path_off;
            const char *name = full;
            for (uint32_t j = 0; j < ce.path_len; j++)
                if (full[j] == '/')
                    name = full + j + 1;
            size_t nlen = ce.path_len - (size_t)(name - full);
            r = put_dirent(&o, (uint64_t)c + 1, pos + 1, is_dir_mode(ce.mode) ? DT_DIR_ : DT_REG_,
                           name, nlen);
        } else {
            /* /tmp or a directory below: the (pos - 2)-th node whose parent is this directory */
            char dir[SC_FS_PATH_MAX], par[SC_FS_PATH_MAX];
            strcpy(dir, d->idx == UINT32_MAX ? TMP : nodes[d->idx].path);
            uint64_t k = pos - 2, seen = 0;
            long found = -1;
            for (uint32_t i = 0; i < nodes_high; i++) {
                if (!nodes[i].linked)
                    continue;
                parent_of(nodes[i].path, par);
                if (strcmp(par, dir) == 0 && seen++ == k) {
                    found = i;
                    break;
                }
            }
            if (found < 0)
                break;
            const char *name = base_name(nodes[found].path);
            r = put_dirent(&o, (uint64_t)found + 100000, pos + 1,
                           is_dir_mode(nodes[found].mode) ? DT_DIR_ : DT_REG_, name, strlen(name));
        }
        if (r < 0) {
            if (o.len == 0)
                return -EINVAL;
            break;
        }
        d->off = pos + 1;
    }
    return (long)o.len;
}

/* ---- changes under /tmp -------------------------------------------------------------------- */

/* EROFS for a path outside /tmp whose parent exists, ENOENT when it does not. */
static FS_NOSSP long outside_tmp(const char *path)
{
    int img_par;
    if (img_lookup(path) >= 0 || parent_dir(path, &img_par))
        return -EROFS;
    return -ENOENT;
}

static FS_NOSSP long do_mkdir(long dirfd, const char *upath)
{
    char path[SC_FS_PATH_MAX];
    int r = resolve(dirfd, upath, path);
    if (r)
        return r;
    if (!in_tmp(path) || strcmp(path, TMP) == 0) {
        struct meta m;
        return path_meta(path, &m) == 0 ? -EEXIST : outside_tmp(path);
    }
    if (tmp_lookup(path) >= 0)
        return -EEXIST;
    int img_par;
    if (!parent_dir(path, &img_par))
        return -ENOENT;
    long i = node_new(path, S_IFDIR | 0755);
    return i < 0 ? i : 0;
}

static FS_NOSSP long do_unlink(long dirfd, const char *upath, long flags)
{
    char path[SC_FS_PATH_MAX];
    int r = resolve(dirfd, upath, path);
    if (r)
        return r;
    int rmdir = (flags & AT_REMOVEDIR) != 0;
    if (!in_tmp(path) || strcmp(path, TMP) == 0) {
        struct meta m;
        if (path_meta(path, &m) != 0)
            return -ENOENT;
        return strcmp(path, TMP) == 0 ? -EBUSY : -EROFS;
    }
    long i = tmp_lookup(path);
    if (i < 0)
        return -ENOENT;
    struct tmp_node *nd = &nodes[i];
    if (rmdir) {
        if (!is_dir_mode(nd->mode))
            return -ENOTDIR;
        if (tmp_has_children(path))
            return -ENOTEMPTY;
    } else if (is_dir_mode(nd->mode)) {
        return -EISDIR;
    }
    nd->linked = 0;
    nd->path[0] = '\0';
    node_release((uint32_t)i);
    return 0;
}

static FS_NOSSP long do_rename(long olddir, const char *uold, long newdir, const char *unew)
{
    char from[SC_FS_PATH_MAX], to[SC_FS_PATH_MAX];
    int r = resolve(olddir, uold, from);
    if (r)
        return r;
    r = resolve(newdir, unew, to);
    if (r)
        return r;
    int from_tmp = in_tmp(from) && strcmp(from, TMP) != 0;
    int to_tmp = in_tmp(to) && strcmp(to, TMP) != 0;
    if (!from_tmp) {
        struct meta m;
        return path_meta(from, &m) == 0 ? (strcmp(from, TMP) == 0 ? -EBUSY : -EROFS) : -ENOENT;
    }
    long i = tmp_lookup(from);
    if (i < 0)
        return -ENOENT;
    if (!to_tmp)
        return strcmp(to, TMP) == 0 ? -EBUSY : -EXDEV;
    if (strcmp(from, to) == 0)
        return 0;
    size_t fl = strlen(from);
    if (strncmp(to, from, fl) == 0 && to[fl] == '/')
        return -EINVAL;               /* into itself */
    int img_par;
    if (!parent_dir(to, &img_par))
        return -ENOENT;
    long j = tmp_lookup(to);
    int dir = is_dir_mode(nodes[i].mode);
    if (j >= 0) {
        int jdir = is_dir_mode(nodes[j].mode);
        if (dir && !jdir)
            return -ENOTDIR;
        if (!dir && jdir)
            return -EISDIR;
        if (jdir && tmp_has_children(to))
            return -ENOTEMPTY;
    }
    size_t tl = strlen(to);
    if (dir) {                        /* the children's paths must fit under the new name */
        for (uint32_t k = 0; k < nodes_high; k++)
            if (nodes[k].linked && strncmp(nodes[k].path, from, fl) == 0 && nodes[k].path[fl] == '/'
                && strlen(nodes[k].path) - fl + tl >= SC_FS_PATH_MAX)
                return -ENAMETOOLONG;
    }
    if (j >= 0) {
        nodes[j].linked = 0;
        nodes[j].path[0] = '\0';
        node_release((uint32_t)j);
    }
    if (dir) {
        char tail[SC_FS_PATH_MAX];
        for (uint32_t k = 0; k < nodes_high; k++) {
            if (nodes[k].linked && strncmp(nodes[k].path, from, fl) == 0 && nodes[k].path[fl] == '/') {
                strcpy(tail, nodes[k].path + fl);
                strcpy(nodes[k].path, to);
                strcpy(nodes[k].path + tl, tail);
            }
        }
    }
    strcpy(nodes[i].path, to);
    nodes[i].dirty = 1;
    return 0;
}

static FS_NOSSP long do_ftruncate(long fd, int64_t len)
{
    struct fdesc *d = get_fd(fd);
    if (!d)
        return -EBADF;
    if (len < 0)
        return -EINVAL;
    if (d->kind != FD_TMP_FILE || (d->flags & O_ACCMODE) == O_RDONLY)
        return d->kind == FD_IMG_FILE ? -EROFS : -EINVAL;
    struct tmp_node *nd = &nodes[d->idx];
    int r = node_resize(nd, (size_t)len);
    if (r)
        return r;
    nd->dirty = 1;
    nd->mtime = now_ns();
    return 0;
}

static FS_NOSSP long do_dup(long fd, long min, long exact, int cloexec)
{
    struct fdesc *d = get_fd(fd);
    if (!d || d->kind == FD_STD)
        return -EBADF;
    long nfd;
    if (exact >= 0) {
        if (exact < 3 || exact >= SC_FS_MAX_FDS)
            return -EBADF;
        if (exact == fd)
            return fd;
        if (fds[exact].kind != FD_FREE)
            do_close(exact);
        nfd = exact;
    } else {
        nfd = new_fd(min);
        if (nfd < 0)
            return nfd;
    }
    fds[nfd] = *d;
    fds[nfd].cloexec = cloexec;
    if ((d->kind == FD_TMP_FILE || d->kind == FD_TMP_DIR) && d->idx != UINT32_MAX)
        nodes[d->idx].opens++;
    return nfd;
}

static FS_NOSSP long do_fcntl(long fd, long cmd, long arg)
{
    if (fd >= 0 && fd < 3 && fds[fd].kind == FD_STD) {
        if (cmd == F_GETFD || cmd == F_SETFD || cmd == F_SETFL)
            return 0;
        if (cmd == F_GETFL)
            return fd == 0 ? O_RDONLY : O_WRONLY;
        return cmd == F_DUPFD || cmd == F_DUPFD_CLOEXEC ? -EMFILE : -EINVAL;
    }
    struct fdesc *d = get_fd(fd);
    if (!d)
        return -EBADF;
    switch (cmd) {
    case F_GETFD: return d->cloexec ? FD_CLOEXEC : 0;
    case F_SETFD: d->cloexec = (arg & FD_CLOEXEC) != 0; return 0;
    case F_GETFL: return d->flags;
    case F_SETFL: d->flags = (d->flags & ~O_APPEND) | (int)(arg & O_APPEND); return 0;
    case F_DUPFD: return do_dup(fd, arg, -1, 0);
    case F_DUPFD_CLOEXEC: return do_dup(fd, arg, -1, 1);
    default: return -EINVAL;
    }
}

static FS_NOSSP long do_access(long dirfd, const char *upath, long mode)
{
    char path[SC_FS_PATH_MAX];
    struct meta m;
    int r = resolve(dirfd, upath, path);
    if (r)
        return r;
    if (path_meta(path, &m))
        return -ENOENT;
    if ((mode & W_OK) && !(in_tmp(path)))
        return -EROFS;
    if ((mode & X_OK) && !is_dir_mode(m.mode))
        return -EACCES;
    return 0;
}

static FS_NOSSP long do_stat(long dirfd, const char *upath, void *out, long flags, int x)
{
    struct meta m;
    int r;
    if (upath && upath[0] == '\0' && (flags & AT_EMPTY_PATH)) {
        r = fd_meta(dirfd, &m);
    } else {
        char path[SC_FS_PATH_MAX];
        r = resolve(dirfd, upath, path);
        if (r)
            return r;
        r = path_meta(path, &m);
    }
    if (r)
        return r;
    if (x)
        fill_statx(out, &m);
    else
        fill_stat(out, &m);
    return 0;
}

static FS_NOSSP long do_readlink(long dirfd, const char *upath)
{
    char path[SC_FS_PATH_MAX];
    struct meta m;
    int r = resolve(dirfd, upath, path);
    if (r)
        return r;
    return path_meta(path, &m) ? -ENOENT : -EINVAL;   /* nothing is a symlink */
}

static FS_NOSSP long do_chdir(const char *upath)
{
    char path[SC_FS_PATH_MAX];
    struct meta m;
    int r = resolve(AT_FDCWD_, upath, path);
    if (r)
        return r;
    if (path_meta(path, &m))
        return -ENOENT;
    if (!is_dir_mode(m.mode))
        return -ENOTDIR;
    strcpy(cwd, path);
    return 0;
}

static FS_NOSSP long do_getcwd(char *buf, size_t size)
{
    size_t n = strlen(cwd) + 1;
    if (size < n)
        return -ERANGE;
    memcpy(buf, cwd, n);
    return (long)n;
}

static FS_NOSSP long do_utimensat(long dirfd, const char *upath)
{
    char path[SC_FS_PATH_MAX];
    struct meta m;
    if (!upath)
        return 0;                     /* futimens */
    int r = resolve(dirfd, upath, path);
    if (r)
        return r;
    if (path_meta(path, &m))
        return -ENOENT;
    return in_tmp(path) ? 0 : -EROFS;
}

/* The identity a guest with a file system reports (struct utsname: 6 fields of 65 bytes). */
static FS_NOSSP long do_uname(char *u)
{
    static const char *const fields[6] = {"Linux", "snapcell", "snapcell", "#1 snapcell guest",
                                          "x86_64", "(none)"};
    if (!u)
        return -EFAULT;
    memset(u, 0, 6 * 65);
    for (int i = 0; i < 6; i++)
        memcpy(u + 65 * i, fields[i], strlen(fields[i]));
    return 0;
}

/* ---- the system call hook ------------------------------------------------------------------ */

int sc_fs_syscall(long nr, long a0, long a1, long a2, long a3, long a4, long a5, long *ret)
{
    (void)a4; (void)a5;
    if (!mounted)
        return 0;
    const char *p0 = (const char *)a0, *p1 = (const char *)a1;
    long r;
    switch (nr) {
    case SYS_read: r = do_rw(a0, (char *)a1, (size_t)a2, 0, -1); break;
    case SYS_pread64: r = do_rw(a0, (char *)a1, (size_t)a2, 0, a3); break;
    case SYS_readv: r = do_rwv(a0, (const struct iovec *)a1, a2, 0, -1); break;
    case SYS_preadv: r = do_rwv(a0, (const struct iovec *)a1, a2, 0, a3); break;
    case SYS_write:
    case SYS_writev:
    case SYS_pwrite64:
    case SYS_pwritev:
        if (a0 == 1 || a0 == 2)
            return 0;                 /* the standard streams: to the host as before */
        if (nr == SYS_write)
            r = do_rw(a0, (char *)a1, (size_t)a2, 1, -1);
        else if (nr == SYS_pwrite64)
            r = do_rw(a0, (char *)a1, (size_t)a2, 1, a3);
        else
            r = do_rwv(a0, (const struct iovec *)a1, a2, 1, nr == SYS_writev ? -1 : a3);
        break;
    case SYS_open: r = do_open(AT_FDCWD_, p0, a1); break;
    case SYS_creat: r = do_open(AT_FDCWD_, p0, O_CREAT | O_WRONLY | O_TRUNC); break;
    case SYS_openat: r = do_open(a0, p1, a2); break;
    case SYS_close: r = do_close(a0); break;
    case SYS_lseek: r = do_lseek(a0, a1, a2); break;
    case SYS_stat:
    case SYS_lstat: r = do_stat(AT_FDCWD_, p0, (void *)a1, 0, 0); break;
    case SYS_fstat: r = do_stat(a0, "", (void *)a1, AT_EMPTY_PATH, 0); break;
    case SYS_newfstatat: r = do_stat(a0, p1, (void *)a2, a3, 0); break;
    case SYS_statx: r = do_stat(a0, p1, (void *)a4, a2, 1); break;
    case SYS_getdents64: r = do_getdents(a0, (char *)a1, (size_t)a2); break;
    case SYS_fcntl: r = do_fcntl(a0, a1, a2); break;
    case SYS_dup: r = do_dup(a0, 3, -1, 0); break;
    case SYS_dup2: r = do_dup(a0, 3, a1, 0); break;
    case SYS_dup3: r = do_dup(a0, 3, a1, (a2 & O_CLOEXEC) != 0); break;
    case SYS_access: r = do_access(AT_FDCWD_, p0, a1); break;
    case SYS_faccessat:
    case SYS_faccessat2: r = do_access(a0, p1, a2); break;
    case SYS_readlink: r = do_readlink(AT_FDCWD_, p0); break;
    case SYS_readlinkat: r = do_readlink(a0, p1); break;
    case SYS_getcwd: r = do_getcwd((char *)a0, (size_t)a1); break;
    case SYS_chdir: r = do_chdir(p0); break;
    case SYS_mkdir: r = do_mkdir(AT_FDCWD_, p0); break;
    case SYS_mkdirat: r = do_mkdir(a0, p1); break;
    case SYS_rmdir: r = do_unlink(AT_FDCWD_, p0, AT_REMOVEDIR); break;
    case SYS_unlink: r = do_unlink(AT_FDCWD_, p0, 0); break;
    case SYS_unlinkat: r = do_unlink(a0, p1, a2); break;
    case SYS_rename: r = do_rename(AT_FDCWD_, p0, AT_FDCWD_, p1); break;
    case SYS_renameat: r = do_rename(a0, p1, a2, (const char *)a3); break;
    case SYS_renameat2: r = a4 ? -EINVAL : do_rename(a0, p1, a2, (const char *)a3); break;
    case SYS_ftruncate: r = do_ftruncate(a0, a1); break;
    case SYS_fsync:
    case SYS_fdatasync: r = get_fd(a0) || (a0 >= 0 && a0 < 3) ? 0 : -EBADF; break;
    case SYS_utimensat: r = do_utimensat(a0, p1); break;
    case SYS_chmod:
    case SYS_fchmodat: r = 0; break;  /* modes are fixed */
    case SYS_fchmod: r = get_fd(a0) ? 0 : -EBADF; break;
    case SYS_getuid: case SYS_geteuid: case SYS_getgid: case SYS_getegid: r = 0; break;
    case SYS_uname: r = do_uname((char *)a0); break;
    default: return 0;
    }
    *ret = r;
    return 1;
}

/* ---- mounting and the C interface ---------------------------------------------------------- */

int sc_fs_mount(const void *image, size_t size, size_t tmp_limit, const char *dir)
{
    const unsigned char *p = image;
    if (!p || size < IMG_HDR || memcmp(p, IMG_MAGIC, 8) != 0 || rd32(p + 8) != 1)
        return -1;
    uint32_t count = rd32(p + 12);
    uint64_t toff = rd64(p + 16), coff = rd64(p + 24), soff = rd64(p + 32), doff = rd64(p + 40);
    if (rd64(p + 48) > size || count == 0 || count > (1u << 24))
        return -1;
    size = rd64(p + 48);        /* the image may be shorter than the room it was given */
    if (toff != IMG_HDR || coff != toff + (uint64_t)count * IMG_ENT || coff > soff || soff > doff
        || doff > size)
        return -1;
    uint64_t nchildren = (soff - coff) / 4;
    /* validate every entry: offsets inside their sections, sorted unique paths, parents */
    const unsigned char *prev = NULL;
    uint32_t prev_len = 0;
    long tmp_ent = -1;
    for (uint32_t i = 0; i < count; i++) {
        const unsigned char *e = p + toff + (size_t)i * IMG_ENT;
        uint32_t po = rd32(e), pl = rd32(e + 4), par = rd32(e + 8), mode = rd32(e + 12);
        uint64_t a = rd64(e + 16), b = rd64(e + 24);
        if (pl == 0 || pl >= SC_FS_PATH_MAX || po > doff - soff || pl > doff - soff - po)
            return -1;
        const unsigned char *path = p + soff + po;
        if (path[0] != '/' || memchr(path, 0, pl) || par >= count)
            return -1;
        if (i == 0 ? (pl != 1 || par != 0) : par >= i)
            return -1;
        if (prev) {
            uint32_t n = prev_len < pl ? prev_len : pl;
            int c = memcmp(prev, path, n);
            if (c > 0 || (c == 0 && prev_len >= pl))
                return -1;
        }
        prev = path;
        prev_len = pl;
        if (is_dir_mode(mode)) {
            if (a > nchildren || b > nchildren - a)
                return -1;
            for (uint64_t k = 0; k < b; k++)
                if (rd32(p + coff + (a + k) * 4) >= count)
                    return -1;
        } else if ((mode & S_IFMT) == S_IFREG) {
            if (a < doff || a > size || b > size - a)
                return -1;
        } else {
            return -1;
        }
        if (pl == 4 && memcmp(path, TMP, 4) == 0 && is_dir_mode(mode))
            tmp_ent = i;
    }
    if (tmp_ent < 0 || !is_dir_mode(rd32(p + toff + 12)))
        return -1;
    img = p;
    img_size = size;
    img_count = count;
    img_table = p + toff;
    img_children = p + coff;
    img_strings = p + soff;
    tmp_entry = (uint32_t)tmp_ent;
    memset(nodes, 0, sizeof nodes);
    nodes_high = 0;
    memset(fds, 0, sizeof fds);
    fds[0].kind = fds[1].kind = fds[2].kind = FD_STD;
    tmp_used = 0;
    tmp_cap_total = tmp_limit;
    mounted = 1;
    if (!dir || do_chdir(dir) != 0)
        strcpy(cwd, "/");
    return 0;
}

static int tmp_mkdirs(const char *path)
{
    char par[SC_FS_PATH_MAX];
    parent_of(path, par);
    if (strcmp(par, TMP) == 0)
        return 0;
    long i = tmp_lookup(par);
    if (i >= 0)
        return is_dir_mode(nodes[i].mode) ? 0 : -ENOTDIR;
    int r = tmp_mkdirs(par);
    if (r)
        return r;
    long k = node_new(par, S_IFDIR | 0755);
    return k < 0 ? (int)k : 0;
}

int sc_fs_tmp_write(const char *upath, const void *data, size_t len)
{
    char path[SC_FS_PATH_MAX];
    if (!mounted)
        return -ENOSYS;
    int r = normalise("/", upath, path);
    if (r)
        return r;
    if (!in_tmp(path) || strcmp(path, TMP) == 0)
        return -EINVAL;
    r = tmp_mkdirs(path);
    if (r)
        return r;
    long i = tmp_lookup(path);
    if (i >= 0 && is_dir_mode(nodes[i].mode))
        return -EISDIR;
    if (i < 0) {
        i = node_new(path, S_IFREG | 0644);
        if (i < 0)
            return (int)i;
    }
    struct tmp_node *nd = &nodes[i];
    r = node_resize(nd, 0);
    if (!r)
        r = node_resize(nd, len);
    if (r)
        return r;
    if (len)
        memcpy(nd->data, data, len);
    nd->dirty = 1;
    return 0;
}

void sc_fs_tmp_clear(void)
{
    for (uint32_t i = 0; i < nodes_high; i++) {
        if (nodes[i].linked) {
            nodes[i].linked = 0;
            nodes[i].path[0] = '\0';
            node_release(i);
        }
    }
}

int sc_fs_tmp_next(int *cursor, const char **path, const void **data, size_t *len, int *dirty)
{
    for (int i = *cursor; i >= 0 && i < (int)nodes_high; i++) {
        struct tmp_node *nd = &nodes[i];
        if (nd->linked && !is_dir_mode(nd->mode)) {
            *path = nd->path;
            *data = nd->data ? nd->data : "";
            *len = nd->size;
            *dirty = nd->dirty;
            *cursor = i + 1;
            return 1;
        }
    }
    return 0;
}

void sc_fs_tmp_clear_dirty(void)
{
    for (uint32_t i = 0; i < nodes_high; i++)
        if (nodes[i].dirty)
            nodes[i].dirty = 0;
}

size_t sc_fs_tmp_used(void) { return tmp_used; }
size_t sc_fs_tmp_limit(void) { return tmp_cap_total; }
