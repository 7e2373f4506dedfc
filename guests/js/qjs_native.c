/*
 * qjs_native: a minimal native QuickJS-ng command (`qjs_native 'code'`), built with the host
 * compiler from the same sources as the js guest — the "fresh native process" peer of the
 * benchmarks (the quickjs-ng sdist ships no qjs.c). Prints the value of the last expression.
 *
 * `qjs_native --serve FILE`: the warm native peer of the bench (snapcell/bench/interpreters.py).
 * For every line "k" on stdin, evaluates FILE's script k times in one context (console.log
 * output discarded) and prints k pairs "wall_ns cpu_ns" (this thread's CPU time) on one line.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "quickjs.h"

static int quiet;      /* --serve: console.log prints nothing */

static JSValue js_log(JSContext *ctx, JSValueConst this_val, int argc, JSValueConst *argv)
{
    (void)this_val;
    if (quiet)
        return JS_UNDEFINED;
    for (int i = 0; i < argc; i++) {
        const char *s = JS_ToCString(ctx, argv[i]);
        if (!s)
            return JS_EXCEPTION;
        printf("%s%s", i ? " " : "", s);
        JS_FreeCString(ctx, s);
    }
    putchar('\n');
    return JS_UNDEFINED;
}

static long long ns(clockid_t clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* --serve FILE (above); 0 at the end of stdin, 1 when FILE cannot be read or the script throws */
static int serve(JSContext *ctx, const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return 1;
    static char code[1 << 20];
    size_t len = fread(code, 1, sizeof code - 1, f);
    fclose(f);
    code[len] = 0;
    quiet = 1;
    char line[32];
    while (fgets(line, sizeof line, stdin)) {
        long k = strtol(line, NULL, 10);
        for (long i = 0; i < k; i++) {
            long long w = ns(CLOCK_MONOTONIC), c = ns(CLOCK_THREAD_CPUTIME_ID);
            JSValue v = JS_Eval(ctx, code, len, "main.js", JS_EVAL_TYPE_GLOBAL);
            long long c2 = ns(CLOCK_THREAD_CPUTIME_ID), w2 = ns(CLOCK_MONOTONIC);
            if (JS_IsException(v))
                return 1;
            JS_FreeValue(ctx, v);
            printf("%s%lld %lld", i ? " " : "", w2 - w, c2 - c);
        }
        printf("\n");
        fflush(stdout);
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc != 2 && !(argc == 3 && strcmp(argv[1], "--serve") == 0)) {
        fprintf(stderr, "usage: qjs_native CODE | qjs_native --serve FILE\n");
        return 2;
    }
    JSRuntime *rt = JS_NewRuntime();
    JSContext *ctx = JS_NewContext(rt);
    JSValue global = JS_GetGlobalObject(ctx), console = JS_NewObject(ctx);
    JS_SetPropertyStr(ctx, console, "log", JS_NewCFunction(ctx, js_log, "log", 1));
    JS_SetPropertyStr(ctx, global, "console", console);
    JS_FreeValue(ctx, global);
    if (argc == 3)
        return serve(ctx, argv[2]);
    JSValue v = JS_Eval(ctx, argv[1], strlen(argv[1]), "main.js", JS_EVAL_TYPE_GLOBAL);
    int rc = 0;
    if (JS_IsException(v)) {
        JSValue e = JS_GetException(ctx);
        const char *s = JS_ToCString(ctx, e);
        fprintf(stderr, "%s\n", s ? s : "exception");
        JS_FreeCString(ctx, s);
        JS_FreeValue(ctx, e);
        rc = 1;
    } else if (!JS_IsUndefined(v)) {
        const char *s = JS_ToCString(ctx, v);
        if (s)
            puts(s);
        JS_FreeCString(ctx, s);
    }
    JS_FreeValue(ctx, v);
    JS_FreeContext(ctx);
    JS_FreeRuntime(rt);
    return rc;
}
