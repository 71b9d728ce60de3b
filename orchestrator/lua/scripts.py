"""Lua scripts of the Redis Streams queue. Each state change of a job is one script, so it is atomic.

Calling convention (shared by every script; `orchestrator.queue` fills it in):

    ARGV[1] job_base      ARGV[2] batch_base    ARGV[3] batch_failures_base
    ARGV[4] dead-letter stream                  ARGV[5] dead-letter MAXLEN (approximate)
    ARGV[6] retention_s   ARGV[7] consumer group
    ARGV[8] stream_base   ARGV[9] delayed_base  ARGV[10] workflow_base
    ARGV[11] webhook events stream              ARGV[12] tenant_jobs_base
    ARGV[13] tenant_batches_base                ARGV[14] batch_jobs_base
    ARGV[15..]            script-specific arguments (documented per script)

The scripts never spell a key: fixed keys arrive in KEYS, per-id keys are `base .. id` with the
bases from `orchestrator.keys`. Times come from the Redis server clock (`TIME`), so every
consumer agrees on due times and timestamps.

Job hash fields: status, priority, tenant, seed, spec, submitted_at, attempts, entry (the stream
entry id that currently represents the job), batch, idem (its idempotency key name), lease (the
token of the current claim: the attempt number), consumer, started_at, stage, timings (JSON),
error, error_code (its machine code, `orchestrator.errors.ErrorCode`), result_uri, extra (JSON),
cancel ("1" when requested), retry_at, finished_at, webhook_url, dead_entry (its entry in the
dead-letter stream while dead); a workflow's
step also has workflow (its id), deps (how many steps it uses have not succeeded yet) and dependents
(JSON list of the job ids of the steps that use it). A step with deps > 0 is `queued` with no stream
entry: the success of its last dependency adds the entry (see `finish`).

Workflow hash (`workflow_base` + id): tenant, steps (JSON [{id, job_id, task}]), created_at, batch,
idem, open (steps not final yet; at 0 the hash expires with its records), cancelled ('1'),
failed_step and error (the first step that failed or died, and its error), webhook_url.

Listing: every new job is added to its tenant's `tenant_jobs` sorted set (score: submit time in ms)
and, in a batch, to the batch's `batch_jobs` list; every new batch to `tenant_batches`. An index
entry whose object expired is dropped by the next submission's sweep of the oldest entries (and by
a listing that meets it), so the indexes stay as long as the records they point to.

Webhook events: when a job, a batch or a workflow with a `webhook_url` reaches its end, the same
script appends `object, id, event, tenant, url` to the events stream (`notify`): exactly one event
per end (a retry is no end; a dead-lettered job's event is `failed`; a batch's is `completed`).

Exactly one final state: every script that ends or renews a claim first checks that the job is
`running`, that `lease` equals the caller's token and that `entry` equals the caller's entry id.
A claim (fresh or reclaimed with XAUTOCLAIM) writes a new token in the same script that takes the
entry, so a consumer whose lease lapsed and was taken over can no longer ack, fail or renew.
"""

from __future__ import annotations

PRELUDE = r"""
local JOB, BATCH, FAILS, DEAD = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local DEAD_MAXLEN, RETENTION, GROUP = ARGV[5], tonumber(ARGV[6]), ARGV[7]
local STREAM, DELAYED, WF = ARGV[8], ARGV[9], ARGV[10]
local EVENTS, TJOBS, TBATCHES, BJOBS = ARGV[11], ARGV[12], ARGV[13], ARGV[14]

-- Server time as (seconds string with microseconds, integer milliseconds).
local function now()
  local t = redis.call('TIME')
  local s, us = tonumber(t[1]), tonumber(t[2])
  return string.format('%d.%06d', s, us), s * 1000 + math.floor(us / 1000)
end

-- Take an entry out of its stream for good: acknowledged and deleted (acked entries are history).
local function retire(stream, eid)
  redis.call('XACK', stream, GROUP, eid)
  redis.call('XDEL', stream, eid)
end

-- An object with a webhook URL reached its end: one event for the webhook dispatcher.
local function notify(object, id, event, tenant, url)
  if url and url ~= '' then
    redis.call('XADD', EVENTS, '*', 'object', object, 'id', id, 'event', event, 'tenant', tenant or '',
      'url', url)
  end
end

-- Drop the `k` oldest entries of a listing index whose record (`base` .. id) has expired.
local function sweep(index, base, k)
  for _, id in ipairs(redis.call('ZRANGE', index, 0, k - 1)) do
    if redis.call('EXISTS', base .. id) == 0 then redis.call('ZREM', index, id) end
  end
end

local wf_settle  -- defined below `finish` (the two call each other)

-- Move a job from `prev` to the final `status` with error `err` and its machine code `code`: batch
-- counters, failure list, dead-letter entry, webhook event, expiry of the record and of its
-- idempotency key, and for a workflow's step what follows for its workflow (`wf_settle`).
-- `f` = {batch, idem, attempts, tenant} when the caller already read them (nil: read here);
-- `sets` = more field/value pairs written with it; `quiet` = the step is being cancelled by its
-- workflow (count it, do not start another round of cancelling).
local function finish(job_id, prev, status, err, code, now_s, f, sets, quiet)
  local jk = JOB .. job_id
  f = f or redis.call('HMGET', jk, 'batch', 'idem', 'attempts', 'tenant')
  local hset = {'HSET', jk, 'status', status, 'finished_at', now_s}
  if err then
    hset[#hset + 1] = 'error'
    hset[#hset + 1] = err
  end
  if code then
    hset[#hset + 1] = 'error_code'
    hset[#hset + 1] = code
  end
  for _, v in ipairs(sets or {}) do hset[#hset + 1] = v end
  redis.call(unpack(hset))
  if status == 'succeeded' then
    -- A success clears earlier attempts' error.
    redis.call('HDEL', jk, 'lease', 'retry_at', 'error', 'error_code')
  else
    redis.call('HDEL', jk, 'lease', 'retry_at')
  end
  redis.call('EXPIRE', jk, RETENTION)
  if f[2] and f[2] ~= '' then redis.call('EXPIRE', f[2], RETENTION) end
  if status == 'dead' then
    local eid = redis.call('XADD', DEAD, 'MAXLEN', '~', DEAD_MAXLEN, '*', 'job', job_id, 'error', err or '',
      'error_code', code or '', 'attempts', f[3] or '0', 'tenant', f[4] or '', 'batch', f[1] or '', 'at', now_s)
    redis.call('HSET', jk, 'dead_entry', eid)
  end
  local event = status
  if status == 'dead' then event = 'failed' end
  notify('job', job_id, event, f[4], redis.call('HGET', jk, 'webhook_url'))
  local batch = f[1]
  if batch and batch ~= '' then
    local bk = BATCH .. batch
    redis.call('HINCRBY', bk, prev, -1)
    redis.call('HINCRBY', bk, status, 1)
    if status == 'failed' or status == 'dead' then redis.call('RPUSH', FAILS .. batch, job_id) end
    -- 'open' counts the batch's jobs not yet final: at 0 the batch is complete and expires with its
    -- records (a later submit into the same batch PERSISTs it again).
    if redis.call('HINCRBY', bk, 'open', -1) <= 0 then
      redis.call('EXPIRE', bk, RETENTION)
      redis.call('EXPIRE', FAILS .. batch, RETENTION)
      redis.call('EXPIRE', BJOBS .. batch, RETENTION)
      local b = redis.call('HMGET', bk, 'tenant', 'webhook_url')
      notify('batch', batch, 'completed', b[1], b[2])
    end
  end
  local wf = redis.call('HGET', jk, 'workflow')
  if wf and wf ~= '' then wf_settle(wf, job_id, status, err, now_s, quiet) end
end

-- End every step of workflow `wf` that is not final: a queued step (waiting for its dependencies,
-- in a stream, or waiting for a retry) ends `cancelled` with `why` and `code` and never runs; a
-- running step gets the cancel flag (its engine stops between stages).
local function wf_stop(wf, why, code, now_s)
  local raw = redis.call('HGET', WF .. wf, 'steps')
  if not raw then return end
  for _, s in ipairs(cjson.decode(raw)) do
    local jk = JOB .. s.job_id
    local r = redis.call('HMGET', jk, 'status', 'priority', 'entry')
    if r[1] == 'queued' then
      if r[3] then retire(STREAM .. r[2], r[3]) end
      redis.call('ZREM', DELAYED .. r[2], s.job_id)
      redis.call('HSET', jk, 'cancel', '1')
      finish(s.job_id, 'queued', 'cancelled', why, code, now_s, nil, nil, true)
    elseif r[1] == 'running' then
      redis.call('HSET', jk, 'cancel', '1')
    end
  end
end

-- How a workflow whose steps are all final ended (the rule of `orchestrator.workflows.workflow_state`).
local function wf_outcome(wk, steps)
  local all_ok, failed = true, false
  for _, s in ipairs(steps) do
    local st = redis.call('HGET', JOB .. s.job_id, 'status')
    if st ~= 'succeeded' then all_ok = false end
    if st == 'failed' or st == 'dead' then failed = true end
  end
  if all_ok then return 'succeeded' end
  if redis.call('HGET', wk, 'cancelled') == '1' then return 'cancelled' end
  if failed then return 'failed' end
  return 'cancelled'
end

-- A step of workflow `wf` ended with `status`. Success: each step that uses it counts one
-- dependency less and is queued (a stream entry) when none is left. Failed / dead: the workflow
-- records the step and its error (the first failure wins), and its other steps are stopped.
-- Cancelled: the workflow counts as cancelled (unless a step failed first), and the rest stops.
-- When the last step ends, the workflow's webhook event is sent.
wf_settle = function(wf, job_id, status, err, now_s, quiet)
  local wk = WF .. wf
  if redis.call('EXISTS', wk) == 0 then return end  -- expired: nothing left to keep consistent
  if redis.call('HINCRBY', wk, 'open', -1) <= 0 then
    -- Every step is final: the workflow, its idempotency key and its steps' records expire together.
    redis.call('EXPIRE', wk, RETENTION)
    local w = redis.call('HMGET', wk, 'idem', 'tenant', 'webhook_url')
    if w[1] and w[1] ~= '' then redis.call('EXPIRE', w[1], RETENTION) end
    local steps = cjson.decode(redis.call('HGET', wk, 'steps') or '[]')
    for _, s in ipairs(steps) do
      redis.call('EXPIRE', JOB .. s.job_id, RETENTION)
    end
    if w[3] and w[3] ~= '' then notify('workflow', wf, wf_outcome(wk, steps), w[2], w[3]) end
  end
  if status == 'succeeded' then
    local deps = redis.call('HGET', JOB .. job_id, 'dependents')
    if not deps or deps == '' then return end
    for _, d in ipairs(cjson.decode(deps)) do
      local dk = JOB .. d
      local r = redis.call('HMGET', dk, 'status', 'priority', 'entry')
      if r[1] == 'queued' and redis.call('HINCRBY', dk, 'deps', -1) <= 0 and not r[3] then
        local eid = redis.call('XADD', STREAM .. r[2], '*', 'job', d)
        redis.call('HSET', dk, 'entry', eid)
        redis.call('HDEL', dk, 'stage')  -- no longer 'waiting'
      end
    end
    return
  end
  if quiet then return end
  local step = job_id
  for _, s in ipairs(cjson.decode(redis.call('HGET', wk, 'steps') or '[]')) do
    if s.job_id == job_id then step = s.id end
  end
  local code = 'cancelled'
  if status == 'cancelled' then
    if not redis.call('HGET', wk, 'failed_step') then redis.call('HSET', wk, 'cancelled', '1') end
  else
    code = 'dependency_failed'
    if redis.call('HSETNX', wk, 'failed_step', step) == 1 then
      redis.call('HSET', wk, 'error', err or status)
    end
  end
  wf_stop(wf, "not run: step '" .. step .. "' " .. status, code, now_s)
end

-- Count `n` new queued jobs into `batch` (created for `tenant` if new, then listed for it, with
-- `url` as its webhook URL when given); a finished batch that gets new jobs stops expiring.
local function batch_add(batch, tenant, n, now_s, now_ms, url)
  local bk = BATCH .. batch
  redis.call('HINCRBY', bk, 'total', n)
  redis.call('HINCRBY', bk, 'queued', n)
  redis.call('HINCRBY', bk, 'open', n)
  redis.call('HSETNX', bk, 'tenant', tenant)
  if redis.call('HSETNX', bk, 'created_at', now_s) == 1 then
    sweep(TBATCHES .. tenant, BATCH, 16)
    redis.call('ZADD', TBATCHES .. tenant, now_ms, batch)
  end
  if url and url ~= '' then redis.call('HSET', bk, 'webhook_url', url) end
  redis.call('PERSIST', bk)
  redis.call('PERSIST', FAILS .. batch)
  redis.call('PERSIST', BJOBS .. batch)
end

-- A new job `id` of `tenant` (in `batch`, '' = none) is listed: in its tenant's index (after
-- sweeping expired entries off the old end) and at the end of its batch's job list.
local function list_job(id, tenant, batch, now_ms)
  redis.call('ZADD', TJOBS .. tenant, now_ms, id)
  if batch ~= '' then redis.call('RPUSH', BJOBS .. batch, id) end
end

-- The claim check: returns the job's hash fields when (job, entry, token) is still the live claim.
local function held(job_id, eid, token, ...)
  local r = redis.call('HMGET', JOB .. job_id, 'status', 'lease', 'entry', ...)
  if r[1] ~= 'running' or r[2] ~= token or r[3] ~= eid then return nil end
  return r
end

local function merge_json(jk, field, patch)
  if patch == '' then return end
  local cur = redis.call('HGET', jk, field)
  local t = {}
  if cur and cur ~= '' then t = cjson.decode(cur) end
  for k, v in pairs(cjson.decode(patch)) do t[k] = v end
  redis.call('HSET', jk, field, cjson.encode(t))
end
"""

# ARGV[15] batch id ('' = none), ARGV[16] batch tenant, ARGV[17] the batch's webhook URL ('' = none),
# ARGV[18] n, then n groups of 7: job_id, priority, tenant, seed, idempotency key name ('' = none),
# spec JSON, webhook URL ('' = none).
# Returns {submitted_at, job_id_1, created_1, ...}: created 1 = new job, 0 = an existing job was
# found (same idempotency key, or same job id) and its id is returned instead.
SUBMIT = (
    PRELUDE
    + r"""
local batch, batch_tenant, batch_url, n = ARGV[15], ARGV[16], ARGV[17], tonumber(ARGV[18])
local now_s, now_ms = now()
if batch ~= '' then
  local owner = redis.call('HGET', BATCH .. batch, 'tenant')
  if owner and owner ~= batch_tenant then
    return redis.error_reply('BATCHTENANT batch ' .. batch .. ' belongs to tenant ' .. owner)
  end
end
local out = {now_s}
local created = 0
local a = 19
for _ = 1, n do
  local id, pr, tenant = ARGV[a], ARGV[a + 1], ARGV[a + 2]
  local seed, idem, spec, url = ARGV[a + 3], ARGV[a + 4], ARGV[a + 5], ARGV[a + 6]
  a = a + 7
  local existing = false
  if idem ~= '' then existing = redis.call('GET', idem) end
  if not existing and redis.call('EXISTS', JOB .. id) == 1 then existing = id end
  if existing then
    out[#out + 1] = existing
    out[#out + 1] = 0
  else
    local jk = JOB .. id
    local eid = redis.call('XADD', STREAM .. pr, '*', 'job', id)
    redis.call('HSET', jk, 'status', 'queued', 'priority', pr, 'tenant', tenant, 'seed', seed,
      'spec', spec, 'submitted_at', now_s, 'attempts', 0, 'entry', eid)
    if batch ~= '' then redis.call('HSET', jk, 'batch', batch) end
    if url ~= '' then redis.call('HSET', jk, 'webhook_url', url) end
    if idem ~= '' then
      redis.call('HSET', jk, 'idem', idem)
      redis.call('SET', idem, id)
    end
    if created == 0 then sweep(TJOBS .. tenant, JOB, n + 16) end
    list_job(id, tenant, batch, now_ms)
    created = created + 1
    out[#out + 1] = id
    out[#out + 1] = 1
  end
end
if batch ~= '' and created > 0 then batch_add(batch, batch_tenant, created, now_s, now_ms, batch_url) end
return out
"""
)

# KEYS[1] the job's stream. ARGV[15] job_id, ARGV[16] entry id, ARGV[17] token, ARGV[18] consumer.
# Resets the entry's idle time (XCLAIM JUSTID does not count a delivery).
# Returns -1 = lease lost, 0 = renewed, 1 = renewed and a cancel was requested.
RENEW = (
    PRELUDE
    + r"""
local r = held(ARGV[15], ARGV[16], ARGV[17], 'cancel')
if not r then return -1 end
local c = redis.call('XCLAIM', KEYS[1], GROUP, ARGV[18], 0, ARGV[16], 'JUSTID')
if #c == 0 then return -1 end
if r[4] == '1' then return 1 end
return 0
"""
)

# ARGV[15] job_id, ARGV[16] entry id, ARGV[17] token, ARGV[18] stage ('' = keep),
# ARGV[19] timings JSON object to merge ('' = none). Returns 1, or 0 when the lease is lost.
STAGE = (
    PRELUDE
    + r"""
if not held(ARGV[15], ARGV[16], ARGV[17]) then return 0 end
local jk = JOB .. ARGV[15]
if ARGV[18] ~= '' then redis.call('HSET', jk, 'stage', ARGV[18]) end
merge_json(jk, 'timings', ARGV[19])
return 1
"""
)

# ARGV[15] final status ('succeeded' or 'cancelled'), ARGV[16] n, then n
# groups of 7: job_id, entry id, token, priority, result uri, extra JSON, timings JSON to merge.
# Each job is checked and finished on its own. Returns one 1 (recorded) or 0 (lease lost,
# nothing changed) per job.
COMPLETE = (
    PRELUDE
    + r"""
local status, n = ARGV[15], tonumber(ARGV[16])
local now_s = now()
local res = {}
local a = 17
for k = 1, n do
  local job_id, eid, token = ARGV[a], ARGV[a + 1], ARGV[a + 2]
  local stream, uri, extra, timings = STREAM .. ARGV[a + 3], ARGV[a + 4], ARGV[a + 5], ARGV[a + 6]
  a = a + 7
  local r = held(job_id, eid, token, 'batch', 'idem', 'attempts', 'tenant')
  if r then
    local f = {r[4], r[5], r[6], r[7]}
    retire(stream, eid)
    merge_json(JOB .. job_id, 'timings', timings)
    if status == 'succeeded' then
      local sets = {'result_uri', uri, 'extra', extra, 'stage', 'done'}
      finish(job_id, 'running', 'succeeded', false, false, now_s, f, sets)
    else
      finish(job_id, 'running', 'cancelled', 'cancelled while running', 'cancelled', now_s, f)
    end
    res[k] = 1
  else
    res[k] = 0
  end
end
return res
"""
)

# KEYS[1] the job's stream, KEYS[2] the delayed set of its priority. ARGV[15] job_id,
# ARGV[16] entry id, ARGV[17] token, ARGV[18] error, ARGV[19] retryable '1'/'0',
# ARGV[20] retry delay in ms, ARGV[21] max_attempts, ARGV[22] timings JSON to merge,
# ARGV[23] the error's machine code (kept on a failed job and on a job waiting for its retry; a job
# out of attempts is dead with `retries_exhausted`, a cancelled one gets `cancelled`).
# Returns the new status ('queued' = retry scheduled, 'failed', 'dead', 'cancelled'),
# or '' when the lease is lost (nothing changed).
FAIL = (
    PRELUDE
    + r"""
local r = held(ARGV[15], ARGV[16], ARGV[17], 'attempts', 'cancel', 'batch', 'idem', 'tenant')
if not r then return '' end
local now_s, now_ms = now()
local job_id, err, code = ARGV[15], ARGV[18], ARGV[23]
local jk = JOB .. job_id
local f = {r[6], r[7], r[4], r[8]}
retire(KEYS[1], ARGV[16])
merge_json(jk, 'timings', ARGV[22])
if r[5] == '1' then
  finish(job_id, 'running', 'cancelled', err, 'cancelled', now_s, f)
  return 'cancelled'
end
if ARGV[19] == '1' and tonumber(r[4]) < tonumber(ARGV[21]) then
  local due_ms = now_ms + tonumber(ARGV[20])
  redis.call('HSET', jk, 'status', 'queued', 'stage', 'retry-wait', 'error', err, 'error_code', code,
    'retry_at', string.format('%d.%03d', math.floor(due_ms / 1000), due_ms % 1000))
  redis.call('HDEL', jk, 'lease')
  redis.call('ZADD', KEYS[2], due_ms, job_id)
  if r[6] and r[6] ~= '' then
    redis.call('HINCRBY', BATCH .. r[6], 'running', -1)
    redis.call('HINCRBY', BATCH .. r[6], 'queued', 1)
  end
  return 'queued'
end
if ARGV[19] == '1' then
  finish(job_id, 'running', 'dead', err, 'retries_exhausted', now_s, f)
  return 'dead'
end
finish(job_id, 'running', 'failed', err, code, now_s, f)
return 'failed'
"""
)

# ARGV[15] job_id.
# Returns the status after the call: 'cancelled' (was queued: it will never run), 'running'
# (a cancel is requested; the holder stops between stages), another final status (unchanged),
# or '' for an unknown job.
CANCEL = (
    PRELUDE
    + r"""
local job_id = ARGV[15]
local jk = JOB .. job_id
local r = redis.call('HMGET', jk, 'status', 'priority', 'entry')
if not r[1] then return '' end
if r[1] == 'queued' then
  -- Not claimed, so its entry is in no pending list: delete it outright (or drop the delayed retry).
  if r[3] then redis.call('XDEL', STREAM .. r[2], r[3]) end
  redis.call('ZREM', DELAYED .. r[2], job_id)
  redis.call('HSET', jk, 'cancel', '1')
  local now_s = now()
  finish(job_id, 'queued', 'cancelled', false, 'cancelled', now_s)
  return 'cancelled'
end
if r[1] == 'running' then
  redis.call('HSET', jk, 'cancel', '1')
  return 'running'
end
return r[1]
"""
)
