"""Lua script that reads one page of a listing index (a tenant's jobs or batches), newest first.

Same calling convention and prelude as `orchestrator.lua.scripts`. An index is a sorted set of ids
scored by creation time in ms; entries with equal scores are ordered by id, so the position
`(score, id)` of the last entry returned is an exact cursor even when many jobs share one
millisecond (a batch chunk is queued in one script call).
"""

from __future__ import annotations

from orchestrator.lua.scripts import PRELUDE

# KEYS[1] the index. ARGV[15] the base of the indexed records (job_base or batch_base), ARGV[16]
# cursor score ('' = from the newest), ARGV[17] cursor id, ARGV[18] how many entries to return,
# ARGV[19] the lowest score to return ('-inf' = no bound).
# Entries whose record expired are removed from the index on the way (not counted, not returned).
# Returns {looked_at, last_score, last_id, id_1, score_1, id_2, score_2, ...}, newest first:
# `looked_at` counts the entries read (returned or removed) and (last_score, last_id) is the position
# of the last one ('' when none), the cursor of the next page; fewer than asked for means the end.
LIST_PAGE = (
    PRELUDE
    + r"""
local index, base, cs, cid = KEYS[1], ARGV[15], ARGV[16], ARGV[17]
local want, lowest = tonumber(ARGV[18]), ARGV[19]
local out, looked, last_score, last_id = {}, 0, '', ''
local function take(id, score)
  looked = looked + 1
  last_score, last_id = score, id
  if redis.call('EXISTS', base .. id) == 0 then
    redis.call('ZREM', index, id)
  else
    out[#out + 1] = id
    out[#out + 1] = score
  end
end
local top = '+inf'
if cs ~= '' then
  -- The rest of the cursor's millisecond: ids below the cursor's id (REV order is by id descending).
  local ties = redis.call('ZRANGE', index, cs, cs, 'BYSCORE', 'REV')
  for _, id in ipairs(ties) do
    if looked >= want then break end
    if id < cid then take(id, cs) end
  end
  top = '(' .. cs
end
if looked < want then
  local rest = redis.call('ZRANGE', index, top, lowest, 'BYSCORE', 'REV', 'LIMIT', 0, want - looked,
    'WITHSCORES')
  for i = 1, #rest, 2 do take(rest[i], rest[i + 1]) end
end
local res = {looked, last_score, last_id}
for _, v in ipairs(out) do res[#res + 1] = v end
return res
"""
)
