-- An agent-style Lua snippet for `snapcell bench` (interp_lua_snippet_*): parse log lines with
-- string patterns, aggregate in tables, serialise and parse back a JSON-like text, format a report.
local LOG = [[
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
]]

local function parse(text)
  local requests, jobs, other = {}, {}, {}
  for line in text:gmatch("[^\n]+") do
    local ts, level, method, path, status, ms, user =
      line:match("^(%S+) (%w+)%s+api%s+(%u+) (%S+) (%d%d%d) (%d+)ms user=(%w+)$")
    if ts then
      requests[#requests + 1] = {ts = ts, level = level, method = method, path = path,
                                 status = tonumber(status), ms = tonumber(ms), user = user}
    else
      local jts, jlevel, job, id, took = line:match("^(%S+) (%w+)%s+worker job=(%w+) id=(%d+) took=(%d+)ms$")
      if jts then
        jobs[#jobs + 1] = {ts = jts, level = jlevel, job = job, id = tonumber(id), ms = tonumber(took)}
      else
        other[#other + 1] = line
      end
    end
  end
  return requests, jobs, other
end

local function sorted_keys(t)
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = k end
  table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
  return keys
end

local function summarise(requests, jobs)
  local by_status, by_user, paths, job_ms = {}, {}, {}, {}
  local slowest = requests[1]
  for _, r in ipairs(requests) do
    local s = r.status // 100 * 100
    by_status[s] = (by_status[s] or 0) + 1
    by_user[r.user] = by_user[r.user] or {}
    table.insert(by_user[r.user], r.ms)
    if r.ms > slowest.ms then slowest = r end
    local p = r.path:gsub("/%d+", "/:id")
    paths[p] = (paths[p] or 0) + 1
  end
  for _, j in ipairs(jobs) do job_ms[j.job] = (job_ms[j.job] or 0) + j.ms end
  local users = {}
  for _, u in ipairs(sorted_keys(by_user)) do
    local v, sum = by_user[u], 0
    for _, ms in ipairs(v) do sum = sum + ms end
    users[u] = {n = #v, mean_ms = sum / #v}
  end
  local errors = {}
  for _, r in ipairs(requests) do
    if r.status >= 500 then errors[#errors + 1] = r.path end
  end
  return {requests = #requests, jobs = #jobs, status = by_status, users = users,
          slowest = {path = slowest.path, ms = slowest.ms}, paths = paths, job_ms = job_ms,
          errors = errors}
end

local function encode(v, out)
  local t = type(v)
  if t == "table" then
    if #v > 0 then
      out[#out + 1] = "["
      for i, x in ipairs(v) do
        if i > 1 then out[#out + 1] = "," end
        encode(x, out)
      end
      out[#out + 1] = "]"
    else
      out[#out + 1] = "{"
      for i, k in ipairs(sorted_keys(v)) do
        if i > 1 then out[#out + 1] = "," end
        out[#out + 1] = string.format("%q:", tostring(k))
        encode(v[k], out)
      end
      out[#out + 1] = "}"
    end
  elseif t == "string" then
    out[#out + 1] = string.format("%q", v)
  else
    out[#out + 1] = tostring(v)
  end
  return out
end

local function report(s)
  local lines = {string.format("%d requests, %d jobs", s.requests, s.jobs)}
  for _, status in ipairs(sorted_keys(s.status)) do
    lines[#lines + 1] = string.format("  %s: %d", status, s.status[status])
  end
  for _, user in ipairs(sorted_keys(s.users)) do
    local u = s.users[user]
    lines[#lines + 1] = string.format("  %-6s %2d req  %6.1f ms", user, u.n, u.mean_ms)
  end
  lines[#lines + 1] = string.format("slowest: %s (%d ms)", s.slowest.path, s.slowest.ms)
  return table.concat(lines, "\n")
end

local requests, jobs = parse(LOG)
local summary = summarise(requests, jobs)
local encoded = table.concat(encode(summary, {}))
local keys = 0
for _ in encoded:gmatch('"(%w+)":') do keys = keys + 1 end
local text = report(summary)
local emails = {}
for e in ("mail alice@example.com and bob@test.org"):gmatch("[%w.]+@[%w.]+") do emails[#emails + 1] = e end
local words = {}
for w in text:lower():gmatch("%a+") do words[w] = (words[w] or 0) + 1 end
print(text)
return {report_lines = select(2, text:gsub("\n", "")) + 1, emails = emails, keys = keys,
        bytes = #encoded, requests = summary.requests}
