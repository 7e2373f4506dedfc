/*
 * python_guest: CPython 3.11 (static, musl) as a snapcell guest (docs/code-sandboxes.md).
 *
 * snapcell_main() mounts the standard library image linked into the ELF (sc_python_image,
 * built by scripts/build_python_image.py) with a /tmp scratch area, initialises the
 * interpreter once (site, encodings, and the warm modules _snapcell_runner imports: json, re,
 * math, datetime, collections, ...), freezes the GC generations and registers `Run`; the
 * sandbox snapshot taken after init is the warm interpreter every run starts from.
 *
 * Run(bytes) follows guests/common/codebox.h; the Python side of a run (last-expression value,
 * tracebacks, tools as functions, stdout/stderr) is guests/python/_snapcell_runner.py. This
 * file holds what must be C: the `_snapcell` built-in module (captured output, tool calls,
 * MessagePack <-> Python values), the memory limit (a counting allocator under every Python
 * allocation domain) and the /tmp files in and out.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <malloc.h>
#include <stdio.h>
#include <string.h>

#include "codebox.h"
#include "mimalloc.h"
#include "snapcell.h"
#include "snapcell_fs.h"
#include "sockets.h"

extern const unsigned char sc_python_image[], sc_python_image_end[];

#define TMP_LIMIT ((size_t)32 << 20)       /* bytes of file data under /tmp */

/* ---- memory limit -------------------------------------------------------------------------- */

static size_t mem_used, mem_limit = (size_t)-1;
static size_t mem_warm;                     /* in use by the warm interpreter (end of init) */
static PyMemAllocatorEx raw_alloc;          /* the allocator we wrap (malloc) */
static PyObjectArenaAllocator arena_alloc;  /* pymalloc's arenas (mmap) */

static int mem_take(size_t n)
{
    if (n > mem_limit || mem_used > mem_limit - n)
        return 0;
    mem_used += n;
    return 1;
}

static void mem_give(size_t n) { mem_used = n > mem_used ? 0 : mem_used - n; }

/* Where the raw domain's memory comes from (docs/benchmarks.md, "Interpreters"): blocks of up
 * to SMALL_MAX bytes from mimalloc, which keeps its memory (no system call once warm), larger
 * ones from musl's malloc (one mmap each). musl's mallocng alone maps, unmaps and madvises its
 * small groups all the time, ~100 system calls per run of an ordinary snippet at ~20 µs each in
 * a guest; mimalloc alone needs 32 MiB-aligned address space for every large block, which the
 * heap arena (no mmap address hints) cannot give near the memory limit. */
#define SMALL_MAX ((size_t)128 << 10)      /* mimalloc's small and medium sizes */

static size_t h_usable(void *p)
{
    return mi_is_in_heap_region(p) ? mi_usable_size(p) : malloc_usable_size(p);
}

static void h_free(void *p)
{
    if (mi_is_in_heap_region(p))
        mi_free(p);
    else
        raw_alloc.free(raw_alloc.ctx, p);
}

static void *h_malloc(size_t n)
{
    return n <= SMALL_MAX ? mi_malloc(n) : raw_alloc.malloc(raw_alloc.ctx, n);
}

static void *h_realloc(void *old, size_t n)
{
    if (!old)
        return h_malloc(n);
    int small = mi_is_in_heap_region(old);
    if (small == (n <= SMALL_MAX))
        return small ? mi_realloc(old, n) : raw_alloc.realloc(raw_alloc.ctx, old, n);
    void *p = h_malloc(n);                 /* crossing SMALL_MAX: move to the other allocator */
    if (p) {
        size_t keep = h_usable(old);
        memcpy(p, old, keep < n ? keep : n);
        h_free(old);
    }
    return p;
}

static void *c_malloc(void *ctx, size_t n)
{
    (void)ctx;
    if (!mem_take(n))
        return NULL;
    void *p = h_malloc(n);
    if (!p) {
        mem_give(n);
        return NULL;
    }
    mem_give(n);
    mem_used += h_usable(p);
    return p;
}

static void *c_calloc(void *ctx, size_t k, size_t n)
{
    (void)ctx;
    if (n && k > (size_t)-1 / n)
        return NULL;
    if (!mem_take(k * n))
        return NULL;
    void *p = k * n <= SMALL_MAX ? mi_calloc(k, n) : raw_alloc.calloc(raw_alloc.ctx, k, n);
    mem_give(k * n);
    if (p)
        mem_used += h_usable(p);
    return p;
}

static void *c_realloc(void *ctx, void *old, size_t n)
{
    (void)ctx;
    size_t before = old ? h_usable(old) : 0;
    if (n > before && !mem_take(n - before))
        return NULL;
    void *p = h_realloc(old, n);
    if (n > before)
        mem_give(n - before);
    if (!p)
        return NULL;
    mem_give(before);
    mem_used += h_usable(p);
    return p;
}

static void c_free(void *ctx, void *p)
{
    (void)ctx;
    if (p) {
        mem_give(h_usable(p));
        h_free(p);
    }
}

static void *c_arena_alloc(void *ctx, size_t n)
{
    (void)ctx;
    if (!mem_take(n))
        return NULL;
    void *p = arena_alloc.alloc(arena_alloc.ctx, n);
    if (!p)
        mem_give(n);
    return p;
}

static void c_arena_free(void *ctx, void *p, size_t n)
{
    (void)ctx;
    mem_give(n);
    arena_alloc.free(arena_alloc.ctx, p, n);
}

static void install_allocators(void)
{
    PyMem_GetAllocator(PYMEM_DOMAIN_RAW, &raw_alloc);
    PyMemAllocatorEx a = {NULL, c_malloc, c_calloc, c_realloc, c_free};
    PyMem_SetAllocator(PYMEM_DOMAIN_RAW, &a);
    PyObject_GetArenaAllocator(&arena_alloc);
    PyObjectArenaAllocator na = {NULL, c_arena_alloc, c_arena_free};
    PyObject_SetArenaAllocator(&na);
}

/* ---- Python values <-> MessagePack ----------------------------------------------------------- */

static int encode(cb_buf *b, PyObject *v, int depth);

static int encode_fail(const char *what)
{
    PyErr_Format(PyExc_TypeError, "a value of type %s cannot be passed to the host", what);
    return -1;
}

static int encode(cb_buf *b, PyObject *v, int depth)
{
    if (depth > CB_MAX_DEPTH) {
        PyErr_SetString(PyExc_TypeError, "value nested too deeply (or cyclic) to pass to the host");
        return -1;
    }
    if (v == Py_None) {
        cb_nil(b);
    } else if (PyBool_Check(v)) {
        cb_bool(b, v == Py_True);
    } else if (PyLong_Check(v)) {
        int overflow = 0;
        long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
        if (overflow > 0) {
            unsigned long long u = PyLong_AsUnsignedLongLong(v);
            if (PyErr_Occurred()) {
                PyErr_Clear();
                PyErr_SetString(PyExc_OverflowError,
                                "an int outside the int64/uint64 range cannot be passed to the host");
                return -1;
            }
            char *w = cb_room(b, 9);
            if (w)
                b->len += (size_t)(mp_encode_uint(w, u) - w);
        } else if (overflow < 0) {
            PyErr_SetString(PyExc_OverflowError,
                            "an int outside the int64/uint64 range cannot be passed to the host");
            return -1;
        } else {
            if (x == -1 && PyErr_Occurred())
                return -1;
            cb_int(b, x);
        }
    } else if (PyFloat_Check(v)) {
        cb_double(b, PyFloat_AS_DOUBLE(v));
    } else if (PyUnicode_Check(v)) {
        Py_ssize_t n;
        const char *s = PyUnicode_AsUTF8AndSize(v, &n);
        if (!s)
            return -1;
        cb_str(b, s, (size_t)n);
    } else if (PyBytes_Check(v)) {
        cb_bin(b, PyBytes_AS_STRING(v), (size_t)PyBytes_GET_SIZE(v));
    } else if (PyByteArray_Check(v)) {
        cb_bin(b, PyByteArray_AS_STRING(v), (size_t)PyByteArray_GET_SIZE(v));
    } else if (PyList_Check(v) || PyTuple_Check(v)) {
        PyObject *seq = PySequence_Fast(v, "");
        if (!seq)
            return -1;
        Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
        cb_array(b, (uint32_t)n);
        for (Py_ssize_t i = 0; i < n; i++) {
            if (encode(b, PySequence_Fast_GET_ITEM(seq, i), depth + 1)) {
                Py_DECREF(seq);
                return -1;
            }
        }
        Py_DECREF(seq);
    } else if (PyDict_Check(v)) {
        cb_map(b, (uint32_t)PyDict_GET_SIZE(v));
        Py_ssize_t pos = 0;
        PyObject *k, *x;
        while (PyDict_Next(v, &pos, &k, &x)) {
            if (!(k == Py_None || PyBool_Check(k) || PyLong_Check(k) || PyFloat_Check(k)
                  || PyUnicode_Check(k) || PyBytes_Check(k)))
                return encode_fail(Py_TYPE(k)->tp_name);
            if (encode(b, k, depth + 1) || encode(b, x, depth + 1))
                return -1;
        }
    } else {
        return encode_fail(Py_TYPE(v)->tp_name);
    }
    if (b->oom) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

static PyObject *decode(const char **r, int depth)
{
    if (depth > CB_MAX_DEPTH + 2) {
        PyErr_SetString(PyExc_ValueError, "value from the host nested too deeply");
        return NULL;
    }
    uint32_t n;
    const char *s;
    switch (mp_typeof(**r)) {
    case MP_NIL: mp_decode_nil(r); Py_RETURN_NONE;
    case MP_BOOL: return PyBool_FromLong(mp_decode_bool(r));
    case MP_UINT: return PyLong_FromUnsignedLongLong(mp_decode_uint(r));
    case MP_INT: return PyLong_FromLongLong(mp_decode_int(r));
    case MP_FLOAT: return PyFloat_FromDouble(mp_decode_float(r));
    case MP_DOUBLE: return PyFloat_FromDouble(mp_decode_double(r));
    case MP_STR: s = mp_decode_str(r, &n); return PyUnicode_DecodeUTF8(s, n, "replace");
    case MP_BIN: s = mp_decode_bin(r, &n); return PyBytes_FromStringAndSize(s, n);
    case MP_ARRAY: {
        n = mp_decode_array(r);
        PyObject *l = PyList_New(n);
        if (!l)
            return NULL;
        for (uint32_t i = 0; i < n; i++) {
            PyObject *x = decode(r, depth + 1);
            if (!x) {
                Py_DECREF(l);
                return NULL;
            }
            PyList_SET_ITEM(l, i, x);
        }
        return l;
    }
    case MP_MAP: {
        n = mp_decode_map(r);
        PyObject *d = PyDict_New();
        if (!d)
            return NULL;
        for (uint32_t i = 0; i < n; i++) {
            PyObject *k = decode(r, depth + 1);
            PyObject *x = k ? decode(r, depth + 1) : NULL;
            if (!x || PyDict_SetItem(d, k, x)) {
                Py_XDECREF(k);
                Py_XDECREF(x);
                Py_DECREF(d);
                return NULL;
            }
            Py_DECREF(k);
            Py_DECREF(x);
        }
        return d;
    }
    default:
        mp_next(r);
        PyErr_SetString(PyExc_ValueError, "unsupported MessagePack value from the host");
        return NULL;
    }
}

/* ---- the _snapcell module ------------------------------------------------------------------ */

/* _snapcell.write(stream, text) -> bool: False when the output cap was reached */
static PyObject *m_write(PyObject *self, PyObject *args)
{
    (void)self;
    int stream;
    const char *s;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "is#", &stream, &s, &n))
        return NULL;
    return PyBool_FromLong(cb_output_write(stream, s, (size_t)n) == 0);
}

/* _snapcell.call_tool(name, args_tuple[, kwargs_dict]) -> (True, value) | (False, type, message) */
static PyObject *m_call_tool(PyObject *self, PyObject *args)
{
    (void)self;
    const char *name;
    Py_ssize_t nlen;
    PyObject *targs, *tkw = NULL;
    static cb_buf enc, enc_kw;
    if (!PyArg_ParseTuple(args, "s#O!|O!", &name, &nlen, &PyTuple_Type, &targs, &PyDict_Type, &tkw))
        return NULL;
    cb_reset(&enc);
    if (encode(&enc, targs, 0))
        return NULL;
    cb_reset(&enc_kw);
    if (tkw && encode(&enc_kw, tkw, 0))
        return NULL;
    const char *v, *vend, *et, *em;
    if (cb_call_tool_kw(name, (size_t)nlen, &enc, tkw ? &enc_kw : NULL, &v, &vend, &et, &em) != 0)
        return Py_BuildValue("(Oss)", Py_False, et, em);
    PyObject *value = decode(&v, 0);
    if (!value)
        return NULL;
    return Py_BuildValue("(ON)", Py_True, value);
}

/* _snapcell.memory() -> (bytes the run has in use, the run's limit): both beyond what the warm
 * interpreter holds, as the limit is counted (-1: no limit) */
static PyObject *m_memory(PyObject *self, PyObject *noargs)
{
    (void)self;
    (void)noargs;
    size_t own = mem_used > mem_warm ? mem_used - mem_warm : 0;
    return Py_BuildValue("(nn)", (Py_ssize_t)own,
                         mem_limit == (size_t)-1 ? (Py_ssize_t)-1 : (Py_ssize_t)(mem_limit - mem_warm));
}

/* _snapcell.net_error() -> (errno, type, message) of the last failed network host call, or None
 * (sockets.c: the socket layer reports errno; Python puts the host's message back) */
static PyObject *m_net_error(PyObject *self, PyObject *noargs)
{
    (void)self;
    (void)noargs;
    const char *t, *m;
    int e = ns_last_error(&t, &m);
    if (!e)
        Py_RETURN_NONE;
    return Py_BuildValue("(iss)", e, t, m);
}

/* _snapcell.net_wait(fd, writing, timeout) -> whether the socket is ready within `timeout`
 * seconds; the host waits, so no clock is read (sockets.c; _snapcell_sandbox.py's socket) */
static PyObject *m_net_wait(PyObject *self, PyObject *args)
{
    (void)self;
    int fd, writing;
    double timeout;
    if (!PyArg_ParseTuple(args, "ipd", &fd, &writing, &timeout))
        return NULL;
    long ms = timeout < 0 ? -1 : timeout > 86400000.0 ? 86400000000L : (long)ceil(timeout * 1000.0);
    long r = ns_wait(fd, writing, ms);
    if (r < 0) {
        errno = (int)-r;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return PyBool_FromLong(r > 0);
}

static PyMethodDef methods[] = {
    {"write", m_write, METH_VARARGS, "Append text to the captured stdout (1) or stderr (2)."},
    {"call_tool", m_call_tool, METH_VARARGS, "Call a host tool."},
    {"memory", m_memory, METH_NOARGS, "Heap bytes in use and the limit."},
    {"net_error", m_net_error, METH_NOARGS, "The last network host call's error, or None."},
    {"net_wait", m_net_wait, METH_VARARGS, "Wait for a socket, the host waiting."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_snapcell", NULL, -1, methods,
                                    NULL, NULL, NULL, NULL};

static PyObject *init_module(void) { return PyModule_Create(&module); }

/* CPython's C-API test modules are linked in with the static build; take them out of the table
 * of built-in modules so that no code can import them (_testcapi writes to arbitrary memory). */
static void drop_test_modules(void)
{
    static const char *const drop[] = {"_testcapi", "_testbuffer", "_testclinic",
                                       "_testinternalcapi", "_testmultiphase", "_testimportmultiple"};
    struct _inittab *t = PyImport_Inittab, *w = t;
    for (; t->name; t++) {
        int keep = 1;
        for (size_t i = 0; i < sizeof drop / sizeof *drop; i++)
            keep &= strcmp(t->name, drop[i]) != 0;
        if (keep)
            *w++ = *t;
    }
    *w = *t;
}

/* ---- Run ----------------------------------------------------------------------------------- */

static PyObject *runner_run, *runner_reseed;
static uint8_t pending_seed[32];
static int reseed_pending;

/* OpenSSL's DRBGs reseed from getrandom() (the host's per-sandbox entropy) at their first use
 * after this changes (third_party/patches/openssl-restore-fork-id.patch): it counts the
 * restores this guest has seen, so a sandbox restored from a snapshot never continues the
 * snapshot's DRBG state, which every other restore of it holds too. */
static int restores_seen;
int snapcell_fork_id(void);
int snapcell_fork_id(void) { return restores_seen; }

static void on_reseed(const uint8_t seed[32], uint64_t generation)
{
    (void)generation;
    restores_seen++;
    memcpy(pending_seed, seed, 32);
    reseed_pending = 1;
}

static sc_value respond(void)
{
    cb_buf *r = cb_response();
    if (r->oom)
        return sc_error(2, "out of guest memory encoding the response");
    return sc_bytes(r->p, (uint32_t)r->len);
}

/* Text of a Python str (borrowed; "" when not a str). */
static const char *text_of(PyObject *o, Py_ssize_t *n)
{
    const char *s = o && PyUnicode_Check(o) ? PyUnicode_AsUTF8AndSize(o, n) : NULL;
    if (!s) {
        PyErr_Clear();
        *n = 0;
        return "";
    }
    return s;
}

/* Put the request's files under /tmp; 0, or -1 with a message in why. */
static int files_in(const cb_request *req, char *why, size_t whysz)
{
    const char *r = req->files;
    uint32_t nf = mp_decode_map(&r);
    for (uint32_t i = 0; i < nf; i++) {
        uint32_t nl, dl;
        const char *name = mp_decode_str(&r, &nl);
        const char *data = mp_decode_bin(&r, &dl);
        char path[SC_FS_PATH_MAX];
        if (nl == 0 || nl > SC_FS_PATH_MAX - 6) {
            snprintf(why, whysz, "file name too long or empty");
            return -1;
        }
        memcpy(path, "/tmp/", 5);
        memcpy(path + 5, name, nl);
        path[5 + nl] = '\0';
        int e = sc_fs_tmp_write(path, data, dl);
        if (e) {
            snprintf(why, whysz, "cannot write %s: %s", path, strerror(-e));
            return -1;
        }
    }
    return 0;
}

/* Append [{name: data} of the files written under /tmp during the run, truncated]. */
static void files_out(cb_buf *b, uint64_t cap)
{
    int cursor = 0, dirty, truncated = 0;
    uint32_t count = 0;
    uint64_t total = 0;
    const char *path;
    const void *data;
    size_t len;
    while (sc_fs_tmp_next(&cursor, &path, &data, &len, &dirty)) {
        if (!dirty)
            continue;
        if (len > cap - total) {
            truncated = 1;
            continue;
        }
        total += len;
        count++;
    }
    cb_array(b, 2);
    cb_map(b, count);
    cursor = 0;
    total = 0;
    while (sc_fs_tmp_next(&cursor, &path, &data, &len, &dirty)) {
        if (!dirty || len > cap - total)
            continue;
        total += len;
        cb_str(b, path + 5, strlen(path + 5));
        cb_bin(b, data, len);
    }
    cb_bool(b, truncated);
}

static sc_value Run(const sc_value *args)
{
    cb_request req;
    char why[200];
    if (cb_parse_request((const char *)args[0].bytes.ptr, args[0].bytes.len, &req, why, sizeof why))
        return sc_error(1, "bad Run request: %s", why);
    if (reseed_pending) {
        PyObject *seed = PyBytes_FromStringAndSize((const char *)pending_seed, 32);
        PyObject *r = seed ? PyObject_CallOneArg(runner_reseed, seed) : NULL;
        Py_XDECREF(seed);
        if (!r)
            PyErr_Clear();
        Py_XDECREF(r);
        reseed_pending = 0;
    }
    cb_output_begin(req.max_output);
    ns_run_begin();
    if (req.has_files && files_in(&req, why, sizeof why))
        return sc_error(1, "bad Run request: %s", why);
    sc_fs_tmp_clear_dirty();

    PyObject *code = PyUnicode_DecodeUTF8(req.code, req.code_len, "surrogateescape");
    PyObject *tools = PyTuple_New(req.ntools);
    for (uint32_t i = 0; tools && i < req.ntools; i++)
        PyTuple_SET_ITEM(tools, i, PyUnicode_FromStringAndSize(req.tools[i], req.tool_lens[i]));
    PyObject *res = NULL;
    /* the limit is the run's own: beyond what the warm interpreter (and an image's preloaded
     * packages) already hold */
    mem_limit = req.memory_limit ? mem_warm + (size_t)req.memory_limit : (size_t)-1;
    if (code && tools)
        res = PyObject_CallFunction(runner_run, "OsO", code, req.filename, tools);
    mem_limit = (size_t)-1;
    ns_run_end();
    Py_XDECREF(code);
    Py_XDECREF(tools);
    /* res = (True, value) | (False, (type, message, stack, line)) */
    int ok = res && PyTuple_Check(res) && PyTuple_GET_SIZE(res) == 2;
    cb_buf *b;
    uint32_t extra = req.has_files ? 1 : 0;
    if (!ok) {
        PyErr_Clear();
        b = cb_response_begin_ext(1, extra);
        cb_nil(b);
        const char *m = "the Python runner failed (out of memory?)";
        cb_response_finish("InternalError", m, strlen(m), NULL, 0, 0);
    } else if (PyTuple_GET_ITEM(res, 0) == Py_True) {
        b = cb_response_begin_ext(0, extra);
        size_t mark = b->len;
        if (encode(b, PyTuple_GET_ITEM(res, 1), 0) == 0) {
            cb_response_finish(NULL, NULL, 0, NULL, 0, 0);
        } else {
            PyObject *et, *ev, *etb;
            PyErr_Fetch(&et, &ev, &etb);
            PyObject *msg = ev ? PyObject_Str(ev) : NULL;
            Py_ssize_t ml;
            const char *ms = text_of(msg, &ml);
            b->len = mark;
            b->p[1] = 1;                 /* status: error (fixarray byte, then the status) */
            cb_nil(b);
            const char *tn = et ? ((PyTypeObject *)et)->tp_name : "TypeError";
            cb_response_finish(tn, ms, (size_t)ml, NULL, 0, 0);
            Py_XDECREF(msg);
            Py_XDECREF(et);
            Py_XDECREF(ev);
            Py_XDECREF(etb);
        }
    } else {
        PyObject *e = PyTuple_GET_ITEM(res, 1);
        b = cb_response_begin_ext(1, extra);
        cb_nil(b);
        Py_ssize_t tl, ml, sl;
        const char *t = text_of(PyTuple_GetItem(e, 0), &tl);
        const char *m = text_of(PyTuple_GetItem(e, 1), &ml);
        const char *st = text_of(PyTuple_GetItem(e, 2), &sl);
        long long line = PyLong_AsLongLong(PyTuple_GetItem(e, 3));
        if (line < 0) {
            PyErr_Clear();
            line = 0;
        }
        char type[128];
        snprintf(type, sizeof type, "%.*s", (int)tl, t);
        cb_response_finish(type, m, (size_t)ml, st, (size_t)sl, line);
    }
    Py_XDECREF(res);
    if (req.has_files)
        files_out(b, req.max_files_out);
    return respond();
}

/* ---- SQLite (_sqlite3): one process, so no file locks ------------------------------------------ */

#include <sqlite3.h>

/* The guest is one process with one thread: nothing else can open a database file, and the
 * in-guest file system has no fcntl locks. SQLite's "unix-none" VFS (its unix VFS without
 * locking) becomes the default, so sqlite3.connect("data.db") works under /tmp. */
static void sqlite_without_locks(void)
{
    sqlite3_vfs *v = sqlite3_vfs_find("unix-none");
    if (!v || sqlite3_vfs_register(v, 1) != SQLITE_OK)
        sc_abort(1, "SQLite has no unix-none VFS");
}

/* ---- init ---------------------------------------------------------------------------------- */

static void fail_status(const char *what, PyStatus st)
{
    sc_abort(1, "%s: %s%s%s", what, st.func ? st.func : "", st.func ? ": " : "",
             st.err_msg ? st.err_msg : "failed");
}

void snapcell_main(void)
{
    size_t image_size = (size_t)(sc_python_image_end - sc_python_image);
    if (sc_fs_mount(sc_python_image, image_size, TMP_LIMIT, "/tmp") != 0)
        sc_abort(1, "the standard library image is malformed");
    cb_rng_init();
    sc_on_reseed(on_reseed);
    sqlite_without_locks();

    PyPreConfig pre;
    PyPreConfig_InitIsolatedConfig(&pre);
    pre.utf8_mode = 1;
    PyStatus st = Py_PreInitialize(&pre);
    if (PyStatus_Exception(st))
        fail_status("Py_PreInitialize", st);
    install_allocators();
    if (PyImport_AppendInittab("_snapcell", init_module) != 0)
        sc_abort(1, "PyImport_AppendInittab failed");
    drop_test_modules();

    PyConfig config;
    PyConfig_InitIsolatedConfig(&config);
    config.site_import = 1;
    config.user_site_directory = 0;
    config.write_bytecode = 0;
    config.install_signal_handlers = 0;
    config.pathconfig_warnings = 0;
    config.buffered_stdio = 0;
    config.parse_argv = 0;
#define SET(field, value)                                                                          \
    do {                                                                                           \
        st = PyConfig_SetString(&config, &config.field, value);                                    \
        if (PyStatus_Exception(st))                                                                \
            fail_status("PyConfig " #field, st);                                                   \
    } while (0)
    SET(program_name, L"python3");
    SET(executable, L"/usr/bin/python3");
    SET(home, L"/usr");
    config.module_search_paths_set = 1;
    st = PyWideStringList_Append(&config.module_search_paths, L"/usr/lib/python3.11");
    if (PyStatus_Exception(st))
        fail_status("module_search_paths", st);
    st = Py_InitializeFromConfig(&config);
    PyConfig_Clear(&config);
    if (PyStatus_Exception(st))
        fail_status("Py_InitializeFromConfig", st);

    PyObject *mod = PyImport_ImportModule("_snapcell_runner");
    if (!mod) {
        PyErr_Print();
        sc_abort(1, "importing _snapcell_runner failed");
    }
    runner_run = PyObject_GetAttrString(mod, "run");
    runner_reseed = PyObject_GetAttrString(mod, "reseed");
    PyObject *warm = PyObject_GetAttrString(mod, "warm_up");
    PyObject *r = warm ? PyObject_CallNoArgs(warm) : NULL;
    if (!runner_run || !runner_reseed || !r) {
        PyErr_Print();
        sc_abort(1, "the Python runner is incomplete");
    }
    Py_DECREF(r);
    Py_DECREF(warm);
    Py_DECREF(mod);
    sc_fs_tmp_clear();
    mem_warm = mem_used;
    ns_install();
    sc_register("Run", Run, SC_BYTES, 1, SC_BYTES);
}
