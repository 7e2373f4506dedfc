// `snapcell bench`'s Worker Loader peer: every request loads a worker under a new name (a new
// isolate) from code given at run time, and forwards the request to it.
let loaded = 0;

export default {
  fetch(request, env) {
    const worker = env.LOADER.get(`box${loaded++}`, () => ({
      compatibilityDate: "2025-06-01",
      mainModule: "box.js",
      modules: { "box.js": "export default { fetch() { return new Response(String(1 + 1)); } }" },
    }));
    return worker.getEntrypoint().fetch(request);
  },
};
