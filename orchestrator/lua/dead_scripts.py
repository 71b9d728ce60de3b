"""Lua script that puts a dead-lettered job back on its queue (an operator's requeue).

Same calling convention and prelude as `orchestrator.lua.scripts`.
"""

from __future__ import annotations

from orchestrator.lua.scripts import PRELUDE

# ARGV[15] job_id.
# Only a `dead` job that is no workflow's step is requeued: it is queued again at the end of its
# priority stream with no attempts, error or timings, its record and idempotency key stop
# expiring, its dead-letter entry is deleted and its batch counts it as queued (and open) again.
# Returns 'requeued' when requeued, '' for an unknown (or expired) job, 'step:<workflow id>' for a
# workflow's step, else the job's status (unchanged).
REQUEUE_DEAD = (
    PRELUDE
    + r"""
local job_id = ARGV[15]
local jk = JOB .. job_id
local r = redis.call('HMGET', jk, 'status', 'priority', 'batch', 'dead_entry', 'workflow', 'idem')
if not r[1] then return '' end
if r[1] ~= 'dead' then return r[1] end
if r[5] and r[5] ~= '' then return 'step:' .. r[5] end
redis.call('PERSIST', jk)
if r[6] and r[6] ~= '' then redis.call('PERSIST', r[6]) end
redis.call('HDEL', jk, 'error', 'error_code', 'finished_at', 'started_at', 'retry_at', 'dead_entry', 'lease',
  'consumer', 'cancel', 'timings', 'extra', 'result_uri')
local eid = redis.call('XADD', STREAM .. r[2], '*', 'job', job_id)
redis.call('HSET', jk, 'status', 'queued', 'attempts', 0, 'stage', 'queued', 'entry', eid)
if r[4] and r[4] ~= '' then redis.call('XDEL', DEAD, r[4]) end
local batch = r[3]
if batch and batch ~= '' then
  local bk = BATCH .. batch
  redis.call('HINCRBY', bk, 'dead', -1)
  redis.call('HINCRBY', bk, 'queued', 1)
  redis.call('HINCRBY', bk, 'open', 1)
  redis.call('LREM', FAILS .. batch, 0, job_id)
  redis.call('PERSIST', bk)
  redis.call('PERSIST', FAILS .. batch)
  redis.call('PERSIST', BJOBS .. batch)
end
return 'requeued'
"""
)
