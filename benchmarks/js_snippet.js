// An agent-style JS snippet for `snapcell bench` (interp_js_snippet_*): parse log lines with
// regular expressions, aggregate with Map and objects, round-trip JSON, format a report.
// In a block, so a warm interpreter can run it again (its `const`s are block scoped).
{
  const LOG = `2024-05-01T10:00:01Z INFO  api    GET /users/17 200 12ms user=alice
2024-05-01T10:00:02Z INFO  api    GET /users/18 200 9ms user=bob
2024-05-01T10:00:02Z WARN  api    GET /users/99 404 3ms user=carol
2024-05-01T10:00:03Z INFO  worker job=resize id=771 took=120ms
2024-05-01T10:00:04Z ERROR api    POST /orders 500 40ms user=alice
2024-05-01T10:00:05Z INFO  api    GET /orders/5 200 15ms user=dave
2024-05-01T10:00:06Z INFO  worker job=email id=772 took=35ms
2024-05-01T10:00:07Z WARN  api    GET /search 429 1ms user=bob
2024-05-01T10:00:08Z INFO  api    PUT /users/17 204 22ms user=alice
2024-05-01T10:00:09Z INFO  worker job=resize id=773 took=98ms`;

  const REQ = /^(?<ts>\S+) (?<level>\w+)\s+api\s+(?<method>[A-Z]+) (?<path>\S+) (?<status>\d{3}) (?<ms>\d+)ms user=(?<user>\w+)$/;
  const JOB = /^(?<ts>\S+) (?<level>\w+)\s+worker job=(?<job>\w+) id=(?<id>\d+) took=(?<ms>\d+)ms$/;

  function parse(text) {
    const requests = [], jobs = [], other = [];
    for (const line of text.split("\n")) {
      let m = REQ.exec(line);
      if (m) {
        requests.push({ ...m.groups, status: Number(m.groups.status), ms: Number(m.groups.ms) });
        continue;
      }
      m = JOB.exec(line);
      if (m) {
        jobs.push({ ...m.groups, id: Number(m.groups.id), ms: Number(m.groups.ms) });
        continue;
      }
      other.push(line);
    }
    return { requests, jobs, other };
  }

  function countBy(items, key) {
    const out = new Map();
    for (const it of items) {
      const k = key(it);
      out.set(k, (out.get(k) || 0) + 1);
    }
    return out;
  }

  function summarise(requests, jobs) {
    const byStatus = countBy(requests, (r) => Math.floor(r.status / 100) * 100);
    const byUser = new Map();
    for (const r of requests) {
      if (!byUser.has(r.user)) byUser.set(r.user, []);
      byUser.get(r.user).push(r.ms);
    }
    const slowest = requests.reduce((a, b) => (b.ms > a.ms ? b : a));
    const paths = countBy(requests, (r) => r.path.replace(/\/\d+/g, "/:id"));
    const jobMs = {};
    for (const j of jobs) jobMs[j.job] = (jobMs[j.job] || 0) + j.ms;
    const users = {};
    for (const [u, v] of [...byUser].sort()) {
      users[u] = { n: v.length, mean_ms: v.reduce((a, b) => a + b, 0) / v.length };
    }
    return {
      requests: requests.length,
      jobs: jobs.length,
      status: Object.fromEntries([...byStatus].sort((a, b) => a[0] - b[0]).map(([k, v]) => [String(k), v])),
      users,
      slowest: { path: slowest.path, ms: slowest.ms },
      paths: Object.fromEntries([...paths].sort((a, b) => b[1] - a[1]).slice(0, 3)),
      job_ms: Object.fromEntries(Object.entries(jobMs).sort()),
      errors: requests.filter((r) => r.status >= 500).map((r) => r.path),
    };
  }

  function report(s) {
    const lines = [`${s.requests} requests, ${s.jobs} jobs`];
    for (const [status, n] of Object.entries(s.status)) lines.push(`  ${status}: ${n}`);
    for (const [user, u] of Object.entries(s.users)) {
      lines.push(`  ${user.padEnd(6)} ${String(u.n).padStart(2)} req  ${u.mean_ms.toFixed(1).padStart(6)} ms`);
    }
    lines.push(`slowest: ${s.slowest.path} (${s.slowest.ms} ms)`);
    return lines.join("\n");
  }

  const { requests, jobs } = parse(LOG);
  const summary = summarise(requests, jobs);
  const encoded = JSON.stringify(summary, null, 2);
  const decoded = JSON.parse(encoded);
  if (JSON.stringify(decoded) !== JSON.stringify(JSON.parse(JSON.stringify(decoded)))) throw new Error("round trip");
  const text = report(decoded);
  const emails = "mail alice@example.com and bob@test.org".match(/[\w.]+@[\w.]+/g);
  const words = countBy(text.toLowerCase().match(/[a-z]+/g), (w) => w);
  console.log(text);
  ({
    summary: decoded,
    report_lines: text.split("\n").length,
    emails,
    top_words: [...words].sort((a, b) => b[1] - a[1]).slice(0, 2),
    bytes: encoded.length,
  });
}
