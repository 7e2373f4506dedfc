# A 100-line agent-style snippet for `snapcell bench` (code_run_python_json_re_snippet): parse
# log lines with re, aggregate with collections, round-trip JSON, format a report.
import json
import re
from collections import Counter, defaultdict

LOG = """\
2024-05-01T10:00:01Z INFO  api    GET /users/17 200 12ms user=alice
2024-05-01T10:00:02Z INFO  api    GET /users/18 200 9ms user=bob
2024-05-01T10:00:02Z WARN  api    GET /users/99 404 3ms user=carol
2024-05-01T10:00:03Z INFO  worker job=resize id=771 took=120ms
2024-05-01T10:00:04Z ERROR api    POST /orders 500 40ms user=alice
2024-05-01T10:00:05Z INFO  api    GET /orders/5 200 15ms user=dave
2024-05-01T10:00:06Z INFO  worker job=email id=772 took=35ms
2024-05-01T10:00:07Z WARN  api    GET /search 429 1ms user=bob
2024-05-01T10:00:08Z INFO  api    PUT /users/17 204 22ms user=alice
2024-05-01T10:00:09Z INFO  worker job=resize id=773 took=98ms
"""

REQ = re.compile(r"^(?P<ts>\S+) (?P<level>\w+)\s+api\s+(?P<method>[A-Z]+) (?P<path>\S+) "
                 r"(?P<status>\d{3}) (?P<ms>\d+)ms user=(?P<user>\w+)$")
JOB = re.compile(r"^(?P<ts>\S+) (?P<level>\w+)\s+worker job=(?P<job>\w+) id=(?P<id>\d+) "
                 r"took=(?P<ms>\d+)ms$")


def parse(text):
    requests, jobs, other = [], [], []
    for line in text.splitlines():
        m = REQ.match(line)
        if m:
            d = m.groupdict()
            d["status"] = int(d["status"])
            d["ms"] = int(d["ms"])
            requests.append(d)
            continue
        m = JOB.match(line)
        if m:
            d = m.groupdict()
            d["id"] = int(d["id"])
            d["ms"] = int(d["ms"])
            jobs.append(d)
            continue
        other.append(line)
    return requests, jobs, other


def summarise(requests, jobs):
    by_status = Counter(r["status"] // 100 * 100 for r in requests)
    by_user = defaultdict(list)
    for r in requests:
        by_user[r["user"]].append(r["ms"])
    slowest = max(requests, key=lambda r: r["ms"])
    paths = Counter(re.sub(r"/\d+", "/:id", r["path"]) for r in requests)
    job_ms = defaultdict(int)
    for j in jobs:
        job_ms[j["job"]] += j["ms"]
    return {
        "requests": len(requests),
        "jobs": len(jobs),
        "status": {str(k): v for k, v in sorted(by_status.items())},
        "users": {u: {"n": len(v), "mean_ms": sum(v) / len(v)} for u, v in sorted(by_user.items())},
        "slowest": {"path": slowest["path"], "ms": slowest["ms"]},
        "paths": dict(paths.most_common(3)),
        "job_ms": dict(sorted(job_ms.items())),
        "errors": [r["path"] for r in requests if r["status"] >= 500],
    }


def report(summary):
    lines = [f"{summary['requests']} requests, {summary['jobs']} jobs"]
    for status, n in summary["status"].items():
        lines.append(f"  {status}: {n}")
    for user, s in summary["users"].items():
        lines.append(f"  {user:<6} {s['n']:>2} req  {s['mean_ms']:6.1f} ms")
    lines.append(f"slowest: {summary['slowest']['path']} ({summary['slowest']['ms']} ms)")
    return "\n".join(lines)


requests, jobs, other = parse(LOG)
summary = summarise(requests, jobs)
encoded = json.dumps(summary, sort_keys=True, indent=2)
decoded = json.loads(encoded)
assert decoded == json.loads(json.dumps(decoded))
text = report(decoded)
emails = re.findall(r"[\w.]+@[\w.]+", "mail alice@example.com and bob@test.org")
words = Counter(re.findall(r"[a-z]+", text.lower()))
result = {
    "summary": decoded,
    "report_lines": len(text.splitlines()),
    "emails": emails,
    "top_words": words.most_common(2),
    "bytes": len(encoded),
}
print(text)
result
