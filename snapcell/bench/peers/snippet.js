// An agent-style snippet for `snapcell bench` (the JS twin of benchmarks/python_snippet.py):
// parse log lines with regular expressions, aggregate, round-trip JSON, format a report.
// One block, so that a peer can evaluate it again and again in one global scope.
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
  const REQ = /^(\S+) (\w+)\s+api\s+([A-Z]+) (\S+) (\d{3}) (\d+)ms user=(\w+)$/;
  const JOB = /^(\S+) (\w+)\s+worker job=(\w+) id=(\d+) took=(\d+)ms$/;
  const requests = [], jobs = [];
  for (const line of LOG.split("\n")) {
    let m = REQ.exec(line);
    if (m) {
      requests.push({ level: m[2], method: m[3], path: m[4], status: +m[5], ms: +m[6], user: m[7] });
      continue;
    }
    m = JOB.exec(line);
    if (m) jobs.push({ job: m[3], id: +m[4], ms: +m[5] });
  }
  const byUser = {}, byStatus = {}, jobTime = {};
  for (const r of requests) {
    const u = (byUser[r.user] ??= { count: 0, ms: 0, errors: 0 });
    u.count += 1;
    u.ms += r.ms;
    if (r.status >= 500) u.errors += 1;
    const klass = `${Math.floor(r.status / 100)}xx`;
    byStatus[klass] = (byStatus[klass] ?? 0) + 1;
  }
  for (const j of jobs) (jobTime[j.job] ??= []).push(j.ms);
  const summary = {
    users: Object.fromEntries(Object.entries(byUser).sort().map(
      ([k, v]) => [k, { ...v, avg_ms: Math.round((v.ms / v.count) * 100) / 100 }])),
    statuses: byStatus,
    jobs: Object.fromEntries(Object.entries(jobTime).map(
      ([k, v]) => [k, { n: v.length, max: Math.max(...v), total: v.reduce((a, b) => a + b, 0) }])),
    slowest: requests.slice().sort((a, b) => b.ms - a.ms).slice(0, 3).map((r) => r.path),
  };
  const encoded = JSON.stringify(summary, null, 2);
  const decoded = JSON.parse(encoded);
  const lines = [];
  for (const [user, v] of Object.entries(decoded.users))
    lines.push(`${user.padEnd(8)} ${String(v.count).padStart(3)} req ${v.avg_ms.toFixed(1).padStart(7)} ms avg`);
  for (const [job, v] of Object.entries(decoded.jobs))
    lines.push(`job ${job.padEnd(8)} n=${v.n} max=${v.max}ms total=${v.total}ms`);
  const text = lines.join("\n");
  const emails = "mail alice@example.com and bob@test.org".match(/[\w.]+@[\w.]+/g);
  const words = {};
  for (const w of text.toLowerCase().match(/[a-z]+/g)) words[w] = (words[w] ?? 0) + 1;
  const top = Object.entries(words).sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1)).slice(0, 2);
  ({ summary: decoded, report_lines: lines.length, emails, top_words: top, bytes: encoded.length });
}
