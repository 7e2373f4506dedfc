/*
 * python_mimalloc: the Python guest's static musl CPython as a native program whose raw
 * allocation domain is mimalloc, as in the guest (guests/python/python_guest.c takes blocks of
 * up to 128 KiB from it; natively every raw block may come from it). A bench peer: the same
 * build and allocator as the guest, outside the VM, so that the Python gap against Debian's
 * python3 splits into the build and the VM (docs/benchmarks.md, "Interpreters"). Built by
 * the Makefile as build/cpython/obj/python-mimalloc (beside obj/python: it finds the
 * standard library of the build tree the same way).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "mimalloc.h"

static void *raw_malloc(void *ctx, size_t n)
{
    (void)ctx;
    return mi_malloc(n);
}

static void *raw_calloc(void *ctx, size_t k, size_t n)
{
    (void)ctx;
    return mi_calloc(k, n);
}

static void *raw_realloc(void *ctx, void *p, size_t n)
{
    (void)ctx;
    return mi_realloc(p, n);
}

static void raw_free(void *ctx, void *p)
{
    (void)ctx;
    mi_free(p);
}

int main(int argc, char **argv)
{
    PyMemAllocatorEx raw = {NULL, raw_malloc, raw_calloc, raw_realloc, raw_free};
    PyMem_SetAllocator(PYMEM_DOMAIN_RAW, &raw);
    return Py_BytesMain(argc, argv);
}
