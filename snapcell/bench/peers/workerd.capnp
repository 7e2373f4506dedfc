# workerd for `snapcell bench` (snapcell/bench/peers.py): a static trivial worker on socket
# "trivial" and, on socket "loader", a worker that loads a new worker (a new isolate) per request
# through the Worker Loader (experimental: `workerd serve --experimental`). The sockets are
# listening descriptors the bench passes in (`--socket-fd trivial=N --socket-fd loader=M`).
using Workerd = import "/workerd/workerd.capnp";

const config :Workerd.Config = (
  services = [
    (name = "trivial", worker = .trivialWorker),
    (name = "loader", worker = .loaderWorker),
  ],
  sockets = [
    (name = "trivial", http = (), service = "trivial"),
    (name = "loader", http = (), service = "loader"),
  ],
);

const trivialWorker :Workerd.Worker = (
  modules = [(name = "trivial.js", esModule = embed "workerd_trivial.js")],
  compatibilityDate = "2025-06-01",
);

const loaderWorker :Workerd.Worker = (
  modules = [(name = "loader.js", esModule = embed "workerd_loader.js")],
  compatibilityDate = "2025-06-01",
  compatibilityFlags = ["experimental"],
  bindings = [(name = "LOADER", workerLoader = ())],
);
