// A peer of `snapcell bench`, run as a child process by snapcell/bench/peers.py:
//   node js_peers.js PEER SNIPPET_JS SNIPPET_PY
// with NODE_PATH pointing at the installed npm packages. It prints one JSON line
// {"rows": [...]} when ready (with "version" when the package cannot tell it), then serves
// batches like the C floor does: a line "ROW K" on stdin runs ROW K times and answers one line
// of K times in ns, each taken around one run in this process with process.hrtime.bigint (as
// snapcell times its own rows).
"use strict";
const fs = require("fs");
const readline = require("readline");

const [peer, snippetJsPath, snippetPyPath] = process.argv.slice(2);
const snippetJs = fs.readFileSync(snippetJsPath, "utf8");
const snippetPy = fs.readFileSync(snippetPyPath, "utf8");
const now = process.hrtime.bigint;
// The snippet prints its report as agent code does; a peer's context gets a console that keeps
// what a run printed (as snapcell returns a run's output), emptied before each run.
const CONSOLE = 'globalThis.console = { log: (...a) => { globalThis.__out += a.join(" ") + "\\n"; } };';
const snippetRun = "globalThis.__out = '';\n" + snippetJs;

function check(value, what) {
  if (value !== 2) throw new Error(`${what} gave ${value}, not 2`);
}

async function isolatedVm() {
  const ivm = require("isolated-vm");
  const shared = new ivm.Isolate({ memoryLimit: 64 });
  const warm = shared.createContextSync();
  warm.evalSync(CONSOLE);
  return {
    rows: {
      // a new isolate (its own heap) with a context, `1+1`, disposed
      new_isolate_run: () => {
        const iso = new ivm.Isolate({ memoryLimit: 64 });
        const ctx = iso.createContextSync();
        check(ctx.evalSync("1+1"), "isolated-vm");
        ctx.release();
        iso.dispose();
      },
      // a new context in a shared isolate, `1+1`, released
      new_context_run: () => {
        const ctx = shared.createContextSync();
        check(ctx.evalSync("1+1"), "isolated-vm");
        ctx.release();
      },
      // the snippet in a long-lived context, its value copied out
      warm_snippet: () => { warm.evalSync(snippetRun, { copy: true }); },
    },
  };
}

async function quickjsEmscripten() {
  const core = require("quickjs-emscripten-core");
  const variant = require("@jitl/quickjs-wasmfile-release-sync").default;
  const QuickJS = await core.newQuickJSWASMModuleFromVariant(variant);
  const rt = QuickJS.newRuntime();
  const warm = rt.newContext();
  const evalIn = (ctx, code) => {
    const handle = ctx.unwrapResult(ctx.evalCode(code));
    const value = ctx.dump(handle);
    handle.dispose();
    return value;
  };
  evalIn(warm, CONSOLE);
  return {
    rows: {
      new_runtime_run: () => {
        const r = QuickJS.newRuntime();
        const ctx = r.newContext();
        check(evalIn(ctx, "1+1"), "quickjs-emscripten");
        ctx.dispose();
        r.dispose();
      },
      new_context_run: () => {
        const ctx = rt.newContext();
        check(evalIn(ctx, "1+1"), "quickjs-emscripten");
        ctx.dispose();
      },
      warm_snippet: () => { evalIn(warm, snippetRun); },
    },
  };
}

async function nodeVm() {
  const vm = require("vm");
  const warm = vm.createContext({});
  vm.runInContext(CONSOLE, warm);
  return {
    version: process.version,
    rows: {
      new_context_run: () => { check(vm.runInContext("1+1", vm.createContext({})), "node:vm"); },
      warm_snippet: () => { JSON.stringify(vm.runInContext(snippetRun, warm)); },
    },
  };
}

async function pyodide() {
  const { loadPyodide } = require("pyodide");
  const quiet = { stdout: () => {}, stderr: () => {} };
  let py = await loadPyodide(quiet);
  const dict = py.globals.get("dict");
  const run = (code) => {
    const ns = dict();
    try {
      const value = py.runPython(code, { globals: ns });
      if (value && typeof value.toJs === "function") {
        const out = value.toJs({ dict_converter: Object.fromEntries });
        value.destroy();
        return out;
      }
      return value;
    } finally {
      ns.destroy();
    }
  };
  return {
    rows: {
      // a whole new interpreter (the only new box Pyodide has): seconds, few samples
      load: async () => { const p = await loadPyodide(quiet); check(p.runPython("1+1"), "pyodide"); },
      // `1+1` in the one interpreter, fresh globals per run (no boundary between runs)
      same_interpreter_run: () => { check(run("1+1"), "pyodide"); },
      warm_snippet: () => { run(snippetPy); },
    },
  };
}

const PEERS = {
  "isolated-vm": isolatedVm,
  "quickjs-emscripten": quickjsEmscripten,
  "node-vm": nodeVm,
  pyodide,
};

async function main() {
  const make = PEERS[peer];
  if (!make) throw new Error(`unknown peer ${peer}`);
  const { version, rows } = await make();
  process.stdout.write(JSON.stringify({ version, rows: Object.keys(rows) }) + "\n");
  const rl = readline.createInterface({ input: process.stdin });
  for await (const line of rl) {
    const [row, k] = line.trim().split(/\s+/);
    const fn = rows[row];
    if (!fn) {
      process.stdout.write(`error unknown row ${row}\n`);
      continue;
    }
    const out = [];
    for (let i = 0; i < Number(k); i++) {
      const t = now();
      const r = fn();
      if (r instanceof Promise) await r;
      out.push(String(now() - t));
    }
    process.stdout.write(out.join(" ") + "\n");
  }
}

main().catch((e) => {
  process.stdout.write(JSON.stringify({ error: String(e && e.stack || e) }) + "\n");
  process.exit(1);
});
