/*
 * lua_guest: Lua 5.4 as a snapcell guest. snapcell_main() creates one lua_State (the warm state
 * the host snapshots); `Run` evaluates a chunk in it (see guests/common/codebox.h for the
 * request and response). Each run normally starts from the snapshot, so nothing a chunk does
 * survives it unless the host keeps the state.
 *
 * Libraries: base (without dofile/loadfile; `load` accepts source text only, never bytecode),
 * coroutine, table, string, math (math.random reseeded on every new sandbox), utf8, and os
 * reduced to clock/date/time/difftime. No io, package or debug: there is no file or process
 * API; `http.request` (LuaSocket-like) asks the host to make an HTTP(S) request under the
 * sandbox's network policy. `print` writes to the captured stdout (capped per run).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cbstream.h"
#include "codebox.h"
#include "lauxlib.h"
#include "lua.h"
#include "lualib.h"
#include "mimalloc.h"
#include "snapcell.h"

static lua_State *L;
static size_t mem_used, mem_limit = (size_t)-1;
static cb_buf scratch[CB_MAX_DEPTH + 1];
static int tool_depth;
static const char *TRACEBACK_KEY = "snapcell.traceback";
static const char *RANDOMSEED_KEY = "snapcell.randomseed";

/* ---- allocator with a limit --------------------------------------------------------------- */

/* Blocks of up to SMALL_MAX bytes come from mimalloc, which keeps its memory (no system call
 * once warm), larger ones from musl's malloc (one mmap each): musl's mallocng alone maps and
 * unmaps small groups all the time, at ~20 µs a system call in a guest; mimalloc alone needs
 * 32 MiB-aligned address space for every large block (docs/benchmarks.md, "Interpreters").
 * Lua always passes a block's size, so its size alone says which allocator holds it. */
#define SMALL_MAX ((size_t)128 << 10)      /* mimalloc's small and medium sizes */

static void *l_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    (void)ud;
    if (ptr == NULL)
        osize = 0;
    int was_small = osize <= SMALL_MAX;
    if (nsize == 0) {
        if (was_small)
            mi_free(ptr);
        else
            free(ptr);
        mem_used -= osize;
        return NULL;
    }
    if (nsize > osize && (nsize - osize > mem_limit || mem_used + (nsize - osize) > mem_limit))
        return NULL;
    int small = nsize <= SMALL_MAX;
    void *p;
    if (ptr != NULL && was_small != small) {          /* crossing SMALL_MAX: move the block */
        p = small ? mi_malloc(nsize) : malloc(nsize);
        if (p) {
            memcpy(p, ptr, osize < nsize ? osize : nsize);
            if (was_small)
                mi_free(ptr);
            else
                free(ptr);
        }
    } else {
        p = small ? mi_realloc(ptr, nsize) : realloc(ptr, nsize);
    }
    if (p)
        mem_used = mem_used - osize + nsize;
    return p;
}

/* ---- Lua value -> MessagePack (raises Lua errors: call protected) ------------------------- */

static void encode(lua_State *l, cb_buf *b, int idx, int depth);

/* Whether the table at idx is a non-empty sequence 1..n; *count = its number of keys. */
static int is_sequence(lua_State *l, int idx, lua_Integer *count)
{
    lua_Integer len = (lua_Integer)lua_rawlen(l, idx), n = 0;
    int seq = 1;
    lua_pushnil(l);
    while (lua_next(l, idx)) {
        lua_pop(l, 1);
        n++;
        if (seq && (!lua_isinteger(l, -1) || lua_tointeger(l, -1) < 1 || lua_tointeger(l, -1) > len))
            seq = 0;
    }
    *count = n;
    return seq && n == len && len > 0;
}

static void encode_string(cb_buf *b, const char *s, size_t n)
{
    if (cb_utf8_valid(s, n))
        cb_str(b, s, n);
    else
        cb_bin(b, s, n);
}

static void encode(lua_State *l, cb_buf *b, int idx, int depth)
{
    idx = lua_absindex(l, idx);
    if (depth > CB_MAX_DEPTH)
        luaL_error(l, "value nested more than %d levels deep (or cyclic)", CB_MAX_DEPTH);
    if (b->oom)
        luaL_error(l, "not enough memory");
    switch (lua_type(l, idx)) {
    case LUA_TNIL:
        cb_nil(b);
        return;
    case LUA_TBOOLEAN:
        cb_bool(b, lua_toboolean(l, idx));
        return;
    case LUA_TNUMBER:
        if (lua_isinteger(l, idx))
            cb_int(b, lua_tointeger(l, idx));
        else
            cb_double(b, lua_tonumber(l, idx));
        return;
    case LUA_TSTRING: {
        size_t n;
        const char *s = lua_tolstring(l, idx, &n);
        encode_string(b, s, n);
        return;
    }
    case LUA_TTABLE: {
        luaL_checkstack(l, 4, "value nested too deeply");
        lua_Integer n;
        if (is_sequence(l, idx, &n)) {
            cb_array(b, (uint32_t)n);
            for (lua_Integer i = 1; i <= n; i++) {
                lua_rawgeti(l, idx, i);
                encode(l, b, -1, depth + 1);
                lua_pop(l, 1);
            }
            return;
        }
        cb_map(b, (uint32_t)n);
        lua_pushnil(l);
        while (lua_next(l, idx)) {
            int kt = lua_type(l, -2);
            if (kt != LUA_TSTRING && kt != LUA_TNUMBER)
                luaL_error(l, "a table key of type %s cannot be passed to the host", lua_typename(l, kt));
            encode(l, b, -2, depth + 1);
            encode(l, b, -1, depth + 1);
            lua_pop(l, 1);
        }
        return;
    }
    default:
        luaL_error(l, "a %s cannot be passed to the host", luaL_typename(l, idx));
    }
}

/* protected: encode(value at 1) into the buffer at light userdata 2 */
static int p_encode(lua_State *l)
{
    encode(l, (cb_buf *)lua_touserdata(l, 2), 1, 0);
    return 0;
}

/* ---- MessagePack -> Lua value ------------------------------------------------------------- */

static void decode(lua_State *l, const char **r, int depth)
{
    luaL_checkstack(l, 3, "value from the host nested too deeply");
    uint32_t n;
    const char *s;
    switch (mp_typeof(**r)) {
    case MP_NIL: mp_decode_nil(r); lua_pushnil(l); return;
    case MP_BOOL: lua_pushboolean(l, mp_decode_bool(r)); return;
    case MP_UINT: {
        uint64_t u = mp_decode_uint(r);
        if (u <= (uint64_t)LUA_MAXINTEGER)
            lua_pushinteger(l, (lua_Integer)u);
        else
            lua_pushnumber(l, (lua_Number)u);
        return;
    }
    case MP_INT: lua_pushinteger(l, (lua_Integer)mp_decode_int(r)); return;
    case MP_FLOAT: lua_pushnumber(l, mp_decode_float(r)); return;
    case MP_DOUBLE: lua_pushnumber(l, mp_decode_double(r)); return;
    case MP_STR: s = mp_decode_str(r, &n); lua_pushlstring(l, s, n); return;
    case MP_BIN: s = mp_decode_bin(r, &n); lua_pushlstring(l, s, n); return;
    case MP_ARRAY:
        if (depth > CB_MAX_DEPTH + 1)
            luaL_error(l, "value from the host nested too deeply");
        n = mp_decode_array(r);
        lua_createtable(l, (int)(n < 1u << 20 ? n : 1u << 20), 0);
        for (uint32_t i = 0; i < n; i++) {
            decode(l, r, depth + 1);
            lua_rawseti(l, -2, (lua_Integer)i + 1);
        }
        return;
    case MP_MAP:
        if (depth > CB_MAX_DEPTH + 1)
            luaL_error(l, "value from the host nested too deeply");
        n = mp_decode_map(r);
        lua_createtable(l, 0, (int)(n < 1u << 20 ? n : 1u << 20));
        for (uint32_t i = 0; i < n; i++) {
            decode(l, r, depth + 1);
            decode(l, r, depth + 1);
            if (lua_isnil(l, -2))
                lua_pop(l, 2);
            else
                lua_rawset(l, -3);
        }
        return;
    default:
        mp_next(r);
        luaL_error(l, "unsupported value from the host");
    }
}

/* ---- built-ins ---------------------------------------------------------------------------- */

static int output_over(lua_State *l)
{
    return luaL_error(l, "output limit exceeded");
}

static int l_print(lua_State *l)
{
    int n = lua_gettop(l);
    for (int i = 1; i <= n; i++) {
        size_t len;
        const char *s = luaL_tolstring(l, i, &len);
        if ((i > 1 && cbs_write(1, "\t", 1)) || cbs_write(1, s, len))
            return output_over(l);
        lua_pop(l, 1);
    }
    if (cbs_write(1, "\n", 1))
        return output_over(l);
    return 0;
}

static int l_tool(lua_State *l)
{
    size_t nl;
    const char *name = lua_tolstring(l, lua_upvalueindex(1), &nl);
    if (tool_depth >= CB_MAX_DEPTH)
        return luaL_error(l, "tool calls nested too deeply");
    int argc = lua_gettop(l);
    cb_buf *args = &scratch[tool_depth];
    cb_reset(args);
    cb_array(args, (uint32_t)argc);
    for (int i = 1; i <= argc; i++)
        encode(l, args, i, 1);
    const char *v, *vend, *et, *em;
    tool_depth++;
    int rc = cb_call_tool(name, nl, args, &v, &vend, &et, &em);
    tool_depth--;
    if (rc)
        return luaL_error(l, "%s: %s: %s", name, et, em);
    decode(l, &v, 0);
    return 1;
}

static int msgh(lua_State *l)
{
    luaL_traceback(l, l, NULL, 1);
    lua_setfield(l, LUA_REGISTRYINDEX, TRACEBACK_KEY);
    return 1;     /* the original error value */
}

static void reseed_math(const uint8_t seed[32], uint64_t generation)
{
    (void)generation;
    int top = lua_gettop(L);
    lua_getfield(L, LUA_REGISTRYINDEX, RANDOMSEED_KEY);
    lua_Integer a, b;
    memcpy(&a, seed, sizeof a);
    memcpy(&b, seed + 8, sizeof b);
    lua_pushinteger(L, a);
    lua_pushinteger(L, b);
    size_t saved = mem_limit;
    mem_limit = (size_t)-1;
    if (lua_pcall(L, 2, 0, 0) != LUA_OK)
        lua_pop(L, 1);
    mem_limit = saved;
    lua_settop(L, top);
}

/* ---- Run ---------------------------------------------------------------------------------- */

static sc_value respond(void)
{
    cbs_end();
    cb_buf *r = cb_response();
    if (r->oom)
        return sc_error(2, "out of guest memory encoding the response");
    return sc_bytes(r->p, (uint32_t)r->len);
}

static void respond_error(const char *type, int base, const char *filename)
{
    size_t ml = 0, tl = 0;
    const char *msg;
    if (lua_type(L, -1) == LUA_TSTRING || lua_type(L, -1) == LUA_TNUMBER)
        msg = lua_tolstring(L, -1, &ml);
    else {
        lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, -1));
        msg = lua_tolstring(L, -1, &ml);
    }
    lua_getfield(L, LUA_REGISTRYINDEX, TRACEBACK_KEY);
    const char *tb = lua_tolstring(L, -1, &tl);
    int64_t line = cb_find_line(msg, ml, filename);
    cb_buf *r = cb_response_begin(1);
    cb_nil(r);
    cb_response_finish(type, msg, ml, tb, tb ? tl : 0, line);
    lua_settop(L, base);
}

static const char *status_type(int status)
{
    switch (status) {
    case LUA_ERRSYNTAX: return "SyntaxError";
    case LUA_ERRMEM: return "MemoryError";
    case LUA_ERRERR: return "ErrorInErrorHandler";
    default: return "RuntimeError";
    }
}

static sc_value Run(const sc_value *args)
{
    cb_request req;
    char why[160], chunkname[132];
    if (cb_parse_request((const char *)args[0].bytes.ptr, args[0].bytes.len, &req, why, sizeof why))
        return sc_error(1, "bad Run request: %s", why);
    cb_output_begin(req.max_output);
    cbs_begin(&req);
    int base = lua_gettop(L);
    lua_pushnil(L);
    lua_setfield(L, LUA_REGISTRYINDEX, TRACEBACK_KEY);
    lua_pushglobaltable(L);
    for (uint32_t i = 0; i < req.ntools; i++) {
        if (cbs_is_tool(req.tools[i], req.tool_lens[i]))
            continue;
        lua_pushlstring(L, req.tools[i], req.tool_lens[i]);
        lua_pushvalue(L, -1);
        lua_pushcclosure(L, l_tool, 1);
        lua_rawset(L, -3);
    }
    lua_settop(L, base);
    snprintf(chunkname, sizeof chunkname, "=%s", req.filename);
    mem_limit = req.memory_limit ? (size_t)req.memory_limit : (size_t)-1;

    lua_pushcfunction(L, msgh);
    int h = lua_gettop(L);
    /* an expression's value, like the Lua REPL: try "return <code>" first */
    int status = LUA_ERRSYNTAX;
    if (req.code_len < (1u << 30)) {
        luaL_Buffer lb;
        luaL_buffinit(L, &lb);
        luaL_addstring(&lb, "return ");
        luaL_addlstring(&lb, req.code, req.code_len);
        luaL_pushresult(&lb);
        size_t n;
        const char *s = lua_tolstring(L, -1, &n);
        status = luaL_loadbufferx(L, s, n, chunkname, "t");
        lua_remove(L, -2);
        if (status != LUA_OK)
            lua_pop(L, 1);
    }
    if (status != LUA_OK)
        status = luaL_loadbufferx(L, req.code, req.code_len, chunkname, "t");
    if (status != LUA_OK) {
        mem_limit = (size_t)-1;
        respond_error(status_type(status), base, req.filename);
        return respond();
    }
    status = lua_pcall(L, 0, 1, h);
    mem_limit = (size_t)-1;
    if (status != LUA_OK) {
        respond_error(status_type(status), base, req.filename);
        return respond();
    }
    cb_buf *r = cb_response_begin(0);
    lua_pushcfunction(L, p_encode);
    lua_pushvalue(L, -2);
    lua_pushlightuserdata(L, r);
    status = lua_pcall(L, 2, 0, h);
    if (status != LUA_OK) {
        respond_error(status_type(status), base, req.filename);
        return respond();
    }
    cb_response_finish(NULL, NULL, 0, NULL, 0, 0);
    lua_settop(L, base);
    return respond();
}

/* ---- init --------------------------------------------------------------------------------- */

static const luaL_Reg libs[] = {
    {LUA_GNAME, luaopen_base},          {LUA_COLIBNAME, luaopen_coroutine},
    {LUA_TABLIBNAME, luaopen_table},    {LUA_STRLIBNAME, luaopen_string},
    {LUA_MATHLIBNAME, luaopen_math},    {LUA_UTF8LIBNAME, luaopen_utf8},
    {LUA_OSLIBNAME, luaopen_os},        {NULL, NULL},
};

static const char *const prelude =
    "dofile, loadfile = nil, nil\n"
    "local keep = {clock = true, date = true, time = true, difftime = true}\n"
    "for k in pairs(os) do if not keep[k] then os[k] = nil end end\n"
    "local _load = load\n"
    "load = function(chunk, name, mode, ...)\n"
    "  if select('#', ...) > 0 then return _load(chunk, name, 't', ...) end\n"
    "  return _load(chunk, name, 't')\n"
    "end\n"
    "-- http.request: the host performs it under the sandbox's network policy (net.fetch)\n"
    "local fetch = __snapcell_fetch\n"
    "__snapcell_fetch = nil\n"
    "http = {}\n"
    "function http.request(url, opts)\n"
    "  local method, hs, body = 'GET', {}, nil\n"
    "  if type(opts) == 'string' then\n"
    "    method, body = 'POST', opts\n"
    "    hs[1] = {'content-type', 'application/x-www-form-urlencoded'}\n"
    "  elseif type(opts) == 'table' then\n"
    "    method, body = opts.method or (opts.body and 'POST' or 'GET'), opts.body\n"
    "    for k, v in pairs(opts.headers or {}) do hs[#hs + 1] = {tostring(k), tostring(v)} end\n"
    "  elseif opts ~= nil then\n"
    "    error('http.request: the second argument is a body (string) or {method=, headers=, body=}', 2)\n"
    "  end\n"
    "  local ok, r = pcall(fetch, tostring(method), tostring(url), #hs > 0 and hs or nil, body)\n"
    "  if not ok then return nil, (tostring(r):gsub('^net%.fetch: %w+: ', '')) end\n"
    "  local h = {}\n"
    "  for _, p in ipairs(r.headers) do h[p[1]] = h[p[1]] and h[p[1]] .. ', ' .. p[2] or p[2] end\n"
    "  return r.body, r.status, h, 'HTTP/1.1 ' .. r.status .. ' ' .. r.statusText\n"
    "end\n"
    "-- warm up\n"
    "local t = {} for i = 1, 64 do t[i] = tostring(i) end\n"
    "string.format('%d %s %5.2f', 1, 'x', 2.5) ; ('abc'):find('b') ; table.sort(t)\n";

static int panic(lua_State *l)
{
    sc_abort(2, "Lua panic: %s", lua_tostring(l, -1));
}

void snapcell_main(void)
{
    L = lua_newstate(l_alloc, NULL);
    if (!L)
        sc_abort(1, "lua_newstate failed");
    lua_atpanic(L, panic);
    for (const luaL_Reg *lib = libs; lib->func; lib++) {
        luaL_requiref(L, lib->name, lib->func, 1);
        lua_pop(L, 1);
    }
    lua_pushcfunction(L, l_print);
    lua_setglobal(L, "print");
    lua_getglobal(L, "math");
    lua_getfield(L, -1, "randomseed");
    lua_setfield(L, LUA_REGISTRYINDEX, RANDOMSEED_KEY);
    lua_pop(L, 1);
    lua_pushliteral(L, "net.fetch");           /* http.request's host operation (egress/) */
    lua_pushcclosure(L, l_tool, 1);
    lua_setglobal(L, "__snapcell_fetch");
    if (luaL_dostring(L, prelude) != LUA_OK)
        sc_abort(1, "Lua prelude failed: %s", lua_tostring(L, -1));
    lua_settop(L, 0);
    lua_gc(L, LUA_GCCOLLECT);
    cb_rng_init();
    sc_on_reseed(reseed_math);
    sc_register("Run", Run, SC_BYTES, 1, SC_BYTES);
}
