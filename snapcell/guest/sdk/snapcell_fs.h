/*
 * snapcell in-guest file system (snapcell/guest/sdk/fs.c, docs/guest-abi.md "File system").
 *
 * A guest that mounts an image gets a read-only tree (an image built by snapcell.guest.fsimage
 * and linked into the guest, so its pages are part of the ELF) plus a bounded in-memory
 * scratch area under /tmp that lives in the guest's own memory — it is in every snapshot and
 * comes back as it was on restore. The file system calls are then served inside the guest with
 * no VM exit; paths outside the image and /tmp do not exist (ENOENT), writes outside /tmp fail
 * with EROFS. A guest that mounts nothing keeps the old behaviour (the calls go to the host,
 * which answers -ENOSYS).
 */
#ifndef SNAPCELL_FS_H
#define SNAPCELL_FS_H

#include <stddef.h>
#include <stdint.h>

#define SC_FS_PATH_MAX 256      /* longest path, NUL included */
#define SC_FS_MAX_NODES 512     /* files + directories under /tmp */
#define SC_FS_MAX_FDS 128       /* open descriptors (0-2 are the standard streams) */

/* Mount `image` (at most size bytes: its header gives its length) read-only at / with an empty /tmp holding at most tmp_limit bytes
 * of file data; the working directory becomes `cwd` (e.g. "/tmp"). 0, or -1 when the image is
 * malformed (nothing is mounted then). */
int sc_fs_mount(const void *image, size_t size, size_t tmp_limit, const char *cwd);

/* The system call hook of the SDK's dispatcher: 1 with *ret set when the call was served by the
 * file system, 0 when it is not a file system call (or nothing is mounted). */
int sc_fs_syscall(long nr, long a0, long a1, long a2, long a3, long a4, long a5, long *ret);

/* /tmp from the guest's own C code (files in and out of code sandboxes). Paths are absolute
 * and under /tmp. write: create or replace a file, making missing parent directories; 0 or
 * -errno. */
int sc_fs_tmp_write(const char *path, const void *data, size_t len);
/* Remove everything under /tmp (open descriptors to it stay valid until closed). */
void sc_fs_tmp_clear(void);
/* Iterate the regular files under /tmp: start with *cursor = 0; returns 1 with the file's path,
 * data, length and whether it was written since the last sc_fs_tmp_clear_dirty(), 0 at the end. */
int sc_fs_tmp_next(int *cursor, const char **path, const void **data, size_t *len, int *dirty);
void sc_fs_tmp_clear_dirty(void);
/* Bytes of file data held under /tmp now, and the limit. */
size_t sc_fs_tmp_used(void);
size_t sc_fs_tmp_limit(void);

/* The bytes of the read-only image file open as `fd`: 0 with *data and *size set, -EBADF
 * (not open) or -EACCES (not an image file). Used by file-backed mmap (libmap.c). */
long sc_fs_image_file(long fd, const void **data, uint64_t *size);

#endif
