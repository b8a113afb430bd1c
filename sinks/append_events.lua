-- Append a request's events for one partition, atomically, skipping ids seen in the window.
-- Atomic per request and partition: the dataflow never reads half of a client's batch.
-- No MAXLEN: an acknowledged event is never trimmed before the dataflow has applied it
-- (the dataflow trims what it has applied, after the retention).
-- KEYS: 1 event stream
-- ARGV: 1 window seconds (0 = no de-duplication), 2 the stream's length cap (0 = none),
--       3 de-duplication key prefix (same hash tag as the stream), then per event: its
--       de-duplication id (features/identity.py ingest_dedupe_id), client key, event json
-- Each entry carries `n`, its number in the stream (a counter beside it, same hash tag): the
-- dataflow's pending entries are the counter less the `n` it last read.
-- Returns the stream's length, then per event its new stream id, or 0 for a duplicate; or
-- {-1, length} when the events would take the stream over its cap (nothing appended: the
-- caller answers "retry later", and no unprocessed event is ever dropped to make room).
local window = tonumber(ARGV[1])
local cap = tonumber(ARGV[2])
if cap > 0 then
  local length = redis.call('XLEN', KEYS[1])
  if length + (#ARGV - 3) / 3 > cap then return {-1, length} end
end
local results = {0}
for i = 4, #ARGV, 3 do
  local fresh = true
  if window > 0 then
    -- keyed by a digest of the id: ids may carry client ids, and an erased client must
    -- leave no key naming it
    fresh = redis.call('SET', ARGV[3] .. redis.sha1hex(ARGV[i]), '1', 'NX', 'EX', window)
  end
  if fresh then
    local n = redis.call('INCR', KEYS[1] .. ':count')
    table.insert(results, redis.call('XADD', KEYS[1], '*', 'k', ARGV[i + 1], 'e', ARGV[i + 2],
                                     'n', n))
  else
    table.insert(results, 0)
  end
end
results[1] = redis.call('XLEN', KEYS[1])
return results
