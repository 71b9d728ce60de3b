"""The claim script of the queue (the largest one): weighted rotation over the priority streams,
delayed retries made due, leases taken over from stalled consumers, each claim given a fresh
token. Shares the PRELUDE of `orchestrator.lua.scripts`."""

from orchestrator.lua.scripts import PRELUDE

# KEYS: n streams (highest priority first), n delayed sets, n XAUTOCLAIM cursors, claim-seq.
# ARGV[15] n, ARGV[16..15+n] priority names, ARGV[16+n..15+2n] weights, then consumer, count,
# lease_ms, max_attempts, reclaim ('1' = also take over entries idle for >= lease_ms).
# Returns {skipped, next_due_ms (-1 = none), server_ms, started_at, {last entry id per stream},
# job, job, ...}. Each job is one string of fields joined by the unit separator \31 (which
# neither ids nor JSON text contain), the spec JSON last:
#   stream index (1-based), job_id, entry_id, attempt, seed, submitted_at, batch, spec
# (one bulk string per job keeps the reply cheap to parse for large claims).
# `skipped` counts entries consumed without producing a job (cancelled, stale, malformed, dead).
# The last entry ids (only when no job was taken) let the caller block on XREAD for newer ones.
CLAIM = (
    PRELUDE
    + r"""
local n = tonumber(ARGV[15])
local names, weights = {}, {}
for i = 1, n do
  names[i] = ARGV[15 + i]
  weights[i] = tonumber(ARGV[15 + n + i])
end
local a = 16 + 2 * n
local consumer, want, lease_ms = ARGV[a], tonumber(ARGV[a + 1]), ARGV[a + 2]
local max_attempts, do_reclaim = tonumber(ARGV[a + 3]), ARGV[a + 4] == '1'
local seq_key = KEYS[3 * n + 1]
local now_s, now_ms = now()
local out, skipped = {}, 0

local function drop(i, eid, why, fields)
  retire(KEYS[i], eid)
  redis.call('XADD', DEAD, 'MAXLEN', '~', DEAD_MAXLEN, '*', 'entry', eid, 'stream', KEYS[i],
    'error', why, 'raw', cjson.encode(fields), 'at', now_s)
  skipped = skipped + 1
end

local function take(i, eid, fields)
  local job_id = nil
  for k = 1, #fields, 2 do
    if fields[k] == 'job' then job_id = fields[k + 1] end
  end
  if not job_id or job_id == '' then
    drop(i, eid, 'malformed stream entry ' .. eid .. ': no "job" field', fields)
    return
  end
  if string.find(job_id, '%c') then
    drop(i, eid, 'malformed stream entry ' .. eid .. ': job id contains control characters', fields)
    return
  end
  local jk = JOB .. job_id
  local r = redis.call('HMGET', jk, 'status', 'entry', 'cancel', 'attempts', 'spec', 'seed',
    'submitted_at', 'batch', 'error', 'consumer')
  local st = r[1]
  if not st then
    drop(i, eid, 'stream entry ' .. eid .. ' names job ' .. job_id .. ', which has no record', fields)
    return
  end
  if r[2] ~= eid or (st ~= 'queued' and st ~= 'running') then
    -- A superseded entry, or a job that already ended (e.g. cancelled while queued).
    retire(KEYS[i], eid)
    skipped = skipped + 1
    return
  end
  if r[3] == '1' then
    retire(KEYS[i], eid)
    finish(job_id, st, 'cancelled', false, 'cancelled', now_s)
    skipped = skipped + 1
    return
  end
  local attempts = tonumber(r[4] or '0') + 1
  if attempts > max_attempts then
    -- Only reachable by reclaiming: the holder died (or stalled past its lease) on every attempt.
    retire(KEYS[i], eid)
    local err = 'lease of consumer ' .. (r[10] or '?') .. ' lapsed without an ack on attempt ' ..
      (attempts - 1) .. ' of ' .. max_attempts
    if r[9] and r[9] ~= '' then err = err .. '; previous error: ' .. r[9] end
    finish(job_id, st, 'dead', err, 'retries_exhausted', now_s)
    skipped = skipped + 1
    return
  end
  redis.call('HSET', jk, 'status', 'running', 'attempts', attempts, 'lease', attempts,
    'consumer', consumer, 'started_at', now_s, 'stage', 'claimed')
  if st == 'queued' and r[8] and r[8] ~= '' then
    redis.call('HINCRBY', BATCH .. r[8], 'queued', -1)
    redis.call('HINCRBY', BATCH .. r[8], 'running', 1)
  end
  out[#out + 1] = table.concat({i, job_id, eid, attempts, r[6] or '0', r[7] or '0', r[8] or '',
    r[5] or ''}, '\31')
end

-- 1. Retries whose backoff is over go back onto their stream.
for i = 1, n do
  local dk = KEYS[n + i]
  local due = redis.call('ZRANGEBYSCORE', dk, '-inf', now_ms, 'LIMIT', 0, 500)
  for _, id in ipairs(due) do
    local jk = JOB .. id
    if redis.call('HGET', jk, 'status') == 'queued' then
      local eid = redis.call('XADD', KEYS[i], '*', 'job', id)
      redis.call('HSET', jk, 'entry', eid, 'stage', 'queued')
      redis.call('HDEL', jk, 'retry_at')
    end
  end
  if #due > 0 then redis.call('ZREM', dk, unpack(due)) end
end

-- 2. Entries whose holder stopped renewing for a whole lease are taken over. The scan cursor is
--    kept per stream so successive calls walk the whole pending list.
if do_reclaim then
  for i = 1, n do
    local rounds = 0
    while #out < want and rounds < 100 do
      rounds = rounds + 1
      local ck = KEYS[2 * n + i]
      local cursor = redis.call('GET', ck) or '0-0'
      local r = redis.call('XAUTOCLAIM', KEYS[i], GROUP, consumer, lease_ms, cursor, 'COUNT', want - #out)
      redis.call('SET', ck, r[1])
      for _, e in ipairs(r[2]) do
        if type(e) == 'table' and type(e[2]) == 'table' then take(i, e[1], e[2]) end
      end
      if r[1] == '0-0' then break end
    end
  end
end

-- 3. New entries, priority streams in weighted rotation: the stream read first changes with a
--    shared counter (weights 6:3:1 -> every 10th claim starts at the lowest), so no class starves.
if #out < want then
  local total = 0
  for i = 1, n do total = total + weights[i] end
  local slot = tonumber(redis.call('GET', seq_key) or '0') % total
  local first, acc = 1, 0
  for i = 1, n do
    acc = acc + weights[i]
    if slot < acc then first = i; break end
  end
  local order = {first}
  for i = 1, n do
    if i ~= first then order[#order + 1] = i end
  end
  for _, i in ipairs(order) do
    if #out >= want then break end
    local r = redis.call('XREADGROUP', 'GROUP', GROUP, consumer, 'COUNT', want - #out,
      'STREAMS', KEYS[i], '>')
    if r then
      for _, e in ipairs(r[1][2]) do take(i, e[1], e[2]) end
    end
  end
end
if #out > 0 then redis.call('INCR', seq_key) end

-- 4. Nothing to hand out: tell the caller how long it may block.
local next_due, last = -1, {}
if #out == 0 then
  for i = 1, n do
    local top = redis.call('ZRANGE', KEYS[n + i], 0, 0, 'WITHSCORES')
    if top[2] then
      local d = tonumber(top[2])
      if next_due < 0 or d < next_due then next_due = d end
    end
    local e = redis.call('XREVRANGE', KEYS[i], '+', '-', 'COUNT', 1)
    if e[1] then last[i] = e[1][1] else last[i] = '0-0' end
  end
end
local res = {skipped, next_due, now_ms, now_s, last}
for _, job in ipairs(out) do res[#res + 1] = job end
return res
"""
)
