"""Lua scripts that change a workflow as a whole: submit it, cancel it.

Same calling convention and prelude as `orchestrator.lua.scripts` (common ARGV[1..14], then the
script's own arguments from ARGV[15]). What happens to a workflow when one of its steps ends
(dependents queued, the rest cancelled after a failure) lives in the prelude's `finish`, so every
script that ends a job keeps the workflow consistent in the same atomic call.
"""

from __future__ import annotations

from orchestrator.lua.scripts import PRELUDE

# ARGV[15] workflow_id, ARGV[16] idempotency key name ('' = none), ARGV[17] tenant,
# ARGV[18] batch id ('' = none), ARGV[19] steps JSON [{id, job_id, task}], ARGV[20] n,
# ARGV[21] the workflow's webhook URL ('' = none), ARGV[22] the batch's webhook URL ('' = none: keep),
# then n groups of 7: job_id, priority, seed, spec JSON, deps (count), dependents (JSON list),
# the step's own webhook URL ('' = none).
# Every step's job hash is written; only the steps with deps = 0 get a stream entry.
# Returns {1, workflow_id, created_at} for a new workflow, {0, existing_workflow_id} when the
# idempotency key (or the workflow id) already names one. Errors: BATCHTENANT (the batch belongs to
# another tenant), STEPEXISTS (a step's job id is taken by a job outside this workflow).
SUBMIT_WORKFLOW = (
    PRELUDE
    + r"""
local wf_id, idem, tenant, batch = ARGV[15], ARGV[16], ARGV[17], ARGV[18]
local steps_json, n, url, batch_url = ARGV[19], tonumber(ARGV[20]), ARGV[21], ARGV[22]
local wk = WF .. wf_id
if idem ~= '' then
  local existing = redis.call('GET', idem)
  if existing then return {0, existing} end
end
if redis.call('EXISTS', wk) == 1 then return {0, wf_id} end
if batch ~= '' then
  local owner = redis.call('HGET', BATCH .. batch, 'tenant')
  if owner and owner ~= tenant then
    return redis.error_reply('BATCHTENANT batch ' .. batch .. ' belongs to tenant ' .. owner)
  end
end
local a = 23
for _ = 1, n do
  if redis.call('EXISTS', JOB .. ARGV[a]) == 1 then
    return redis.error_reply('STEPEXISTS job ' .. ARGV[a] .. ' already exists')
  end
  a = a + 7
end
local now_s, now_ms = now()
redis.call('HSET', wk, 'tenant', tenant, 'steps', steps_json, 'created_at', now_s, 'open', n)
if batch ~= '' then redis.call('HSET', wk, 'batch', batch) end
if url ~= '' then redis.call('HSET', wk, 'webhook_url', url) end
sweep(TJOBS .. tenant, JOB, n + 16)
if idem ~= '' then
  redis.call('HSET', wk, 'idem', idem)
  redis.call('SET', idem, wf_id)
end
a = 23
for _ = 1, n do
  local id, pr, seed, spec = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
  local deps, dependents, step_url = ARGV[a + 4], ARGV[a + 5], ARGV[a + 6]
  a = a + 7
  local jk = JOB .. id
  redis.call('HSET', jk, 'status', 'queued', 'priority', pr, 'tenant', tenant, 'seed', seed,
    'spec', spec, 'submitted_at', now_s, 'attempts', 0, 'workflow', wf_id, 'deps', deps,
    'dependents', dependents)
  if batch ~= '' then redis.call('HSET', jk, 'batch', batch) end
  if step_url ~= '' then redis.call('HSET', jk, 'webhook_url', step_url) end
  list_job(id, tenant, batch, now_ms)
  if tonumber(deps) == 0 then
    local eid = redis.call('XADD', STREAM .. pr, '*', 'job', id)
    redis.call('HSET', jk, 'entry', eid)
  else
    redis.call('HSET', jk, 'stage', 'waiting')
  end
end
if batch ~= '' then batch_add(batch, tenant, n, now_s, now_ms, batch_url) end
return {1, wf_id, now_s}
"""
)

# ARGV[15] workflow_id. Marks the workflow cancelled (unless it already ended, or a step failed
# first) and ends every step that is not final: queued or waiting -> `cancelled` (never runs),
# running -> cancel flag (its engine stops between stages).
# Returns '' for an unknown workflow, else '1'.
CANCEL_WORKFLOW = (
    PRELUDE
    + r"""
local wf_id = ARGV[15]
local wk = WF .. wf_id
local r = redis.call('HMGET', wk, 'open', 'failed_step')
if not r[1] then return '' end
if tonumber(r[1]) > 0 and not r[2] then redis.call('HSET', wk, 'cancelled', '1') end
local now_s = now()
wf_stop(wf_id, 'not run: workflow cancelled', 'cancelled', now_s)
return '1'
"""
)
