"""A peer of `snapcell bench`, run as a child process by snapcell/bench/peers.py under a native
python3 (Debian's, not the bench's own interpreter): `python3 py_peer.py SNIPPET_PY`.

It prints one JSON line {"version": ..., "rows": [...]} when ready, then serves batches like the
C floor does: a line "ROW K" on stdin runs ROW K times and answers one line of K times in ns,
each taken around one run with time.perf_counter_ns, as snapcell times its own rows. A run
compiles the code and executes it in fresh globals with stdout captured, as a REPL worker would;
the value of a last expression is taken like snapcell's Python guest does."""

import ast
import contextlib
import io
import json
import sys
import time


def run(code: str) -> object:
    """Run `code` in fresh globals with stdout captured; the value of its last expression."""
    tree = ast.parse(code)
    last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
    ns: dict = {"__name__": "__main__"}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(tree, "<run>", "exec"), ns)
        value = None if last is None else eval(compile(ast.Expression(last.value), "<run>", "eval"), ns)
    json.dumps(value, default=repr)
    return value


def main() -> None:
    """Serve batches of the rows until stdin closes."""
    with open(sys.argv[1]) as f:
        snippet = f.read()

    def trivial() -> None:
        if run("1+1") != 2:
            raise SystemExit("1+1 did not give 2")

    rows = {"same_interpreter_run": trivial, "warm_snippet": lambda: run(snippet)}
    print(json.dumps({"version": sys.version.split()[0], "rows": list(rows)}), flush=True)
    clock = time.perf_counter_ns
    for line in sys.stdin:
        row, k = line.split()
        fn = rows.get(row)
        if fn is None:
            print(f"error unknown row {row}", flush=True)
            continue
        times = []
        for _ in range(int(k)):
            t = clock()
            fn()
            times.append(clock() - t)
        print(" ".join(map(str, times)), flush=True)


if __name__ == "__main__":
    main()
