-- Commit one bucket's batch atomically: client states, touch ledger entries, trigger stream
-- entries, dead letters, segment and index memberships, timelines, activity counts, the
-- partition's clients per point and the bucket's stream position, guarded by
-- compare-and-set on that position. A replayed commit is a no-op, so the counts here are
-- never counted twice: its id is the bucket's last
-- commit id or an earlier one of the same process ("incarnation.number", numbered in
-- order, and applied in order, so every number up to the last was applied), or the
-- position is already at NEW. A commit from a process that lost the bucket (position
-- neither BASE nor NEW) is refused. The id matters when BASE == NEW (timers fired at an
-- idle head): the position alone cannot tell that commit's resend from a new one; and
-- when a batch sent again holds two commits of the bucket: the first's position is gone.
-- Returns {1, type and status of each trigger newly emitted...}, or {0} for a replayed commit
-- (whose reply was lost: its triggers go uncounted in the metrics, which is why only the id
-- is kept, not the reply, whose size grows with the commit: 14 B a client at 1M).
--
-- KEYS: 1 offsets hash, 2 bucket state hash, 3 trigger stream, 4 dead-letter stream,
--       5 segment-changes stream, 6 pending erasures hash, 7 bucket timeline hash,
--       8 partition's clients per point (hash), 9 activity hash of the batch's minute (for
--       triggers), 10 last commits hash (bucket -> its last commit id), 11 the set of the
--       partition's buckets whose clients KEYS[8] counts
-- ARGV: 1 bucket, 2 base position, 3 new position, 4 ledger key prefix, 5 ledger max entries,
--       6 stream maxlen, 7 number of states, 8 number of triggers, 9 number of dead letters,
--       10 number of segment changes, 11 number of erasures, 12 number of member operations,
--       13 number of timelines, 14 timeline max entries, 15 number of activity counts,
--       16 activity ttl seconds, 17 number of point moves, 18 commit id ("" for none),
--       19 number of the bucket's points as loaded (-1: none given, the bucket was counted),
--       then per erasure (applied first: a client may start afresh later in the batch):
--       client, erasure id, its event's stream id, requested at, number of set entries N,
--       then N pairs of sorted set key and member to remove
--       then per state: client, state bytes
--       then per trigger: client, ledger field, type, status, ledger json, point ("" for
--       none), number of stream fields N, then N field names and values for its entry
--       then per dead letter: reason, stream id, raw entry, the entry's client key
--       then per segment change: client, "entered" or "left", segment, time
--       then per member operation: sorted set key, member, "+" (add) or "-" (remove)
--       then per timeline: client, new lines (newest first)
--       then per activity count: hash key, field, count
--       then per point as loaded: point, its clients in the bucket
--       then per point move: point, change in its clients (+n, -n)
local commit_id = ARGV[18]
if commit_id ~= '' then
  local last = redis.call('HGET', KEYS[10], ARGV[1])
  if last == commit_id then return {0} end
  if last then
    local process, number = string.match(commit_id, '^(.+)%.(%d+)$')
    local last_process, last_number = string.match(last, '^(.+)%.(%d+)$')
    if process and process == last_process and tonumber(number) <= tonumber(last_number) then
      return {0}
    end
  end
end
local stored = redis.call('HGET', KEYS[1], ARGV[1])
if not stored then stored = '0-0' end
if stored ~= ARGV[2] then
  if stored == ARGV[3] then return {0} end
  return redis.error_reply('CRMFLOW_FENCED bucket ' .. ARGV[1] .. ' is at ' .. stored ..
                           ', this commit starts at ' .. ARGV[2])
end
local maxlen = ARGV[6]
local ledger_max = tonumber(ARGV[5])
local i = 20
local activity_ttl = tonumber(ARGV[16])
-- An erasure deletes the client's state, touch ledger and memberships here, atomically with
-- the position; the entries that mention it in the partition's streams up to now are
-- purged next (sinks/erasure.py), from the job recorded here.
local function last_id(stream)
  local last = redis.call('XREVRANGE', stream, '+', '-', 'COUNT', 1)
  if #last == 0 then return '0-0' end
  return last[1][1]
end
for _ = 1, tonumber(ARGV[11]) do
  local client = ARGV[i]
  redis.call('HDEL', KEYS[2], client)
  redis.call('HDEL', KEYS[7], client)
  redis.call('DEL', ARGV[4] .. client)
  local sets = tonumber(ARGV[i + 4])
  for j = i + 5, i + 4 + 2 * sets, 2 do redis.call('ZREM', ARGV[j], ARGV[j + 1]) end
  redis.call('HSET', KEYS[6], ARGV[i + 1], cjson.encode({
    client = client, requested_at = ARGV[i + 3], events_through = ARGV[i + 2],
    triggers_through = last_id(KEYS[3]), changes_through = last_id(KEYS[5]),
    dead_through = last_id(KEYS[4]), memberships = sets}))
  i = i + 5 + 2 * sets
end
-- States in calls of up to 1,000 fields each: a call from a script costs Redis more than
-- a field does (and the arguments go by range, within Lua's stack).
local states = tonumber(ARGV[7])
while states > 0 do
  local chunk = math.min(states, 1000)
  redis.call('HSET', KEYS[2], unpack(ARGV, i, i + 2 * chunk - 1))
  i = i + 2 * chunk
  states = states - chunk
end
-- Activity counts are summed here and written once per hash and field after the loop.
local counts, counted_keys = {}, {}
local function count(key, field, by)
  local fields = counts[key]
  if not fields then
    fields = {}
    counts[key] = fields
    counted_keys[#counted_keys + 1] = key
  end
  fields[field] = (fields[field] or 0) + by
end
local emitted = {1}
for _ = 1, tonumber(ARGV[8]) do
  local ledger = ARGV[4] .. ARGV[i]
  local fields = tonumber(ARGV[i + 6])
  if redis.call('HSETNX', ledger, ARGV[i + 1], ARGV[i + 4]) == 1 then
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', maxlen, '*',
               unpack(ARGV, i + 7, i + 6 + 2 * fields))
    emitted[#emitted + 1] = ARGV[i + 2]
    emitted[#emitted + 1] = ARGV[i + 3]
    local counted = 't:' .. ARGV[i + 2] .. '|' .. ARGV[i + 3]
    count(KEYS[9], counted, 1)
    if ARGV[i + 5] ~= '' then count(KEYS[9] .. '@' .. ARGV[i + 5], counted, 1) end
    -- Over the cap by a quarter: drop the oldest down to the cap in one pass (amortised,
    -- instead of reading the whole ledger on every insert once it is full).
    if redis.call('HLEN', ledger) > ledger_max + math.max(1, math.floor(ledger_max / 4)) then
      local entries = redis.call('HGETALL', ledger)
      local dated = {}
      for j = 1, #entries, 2 do
        table.insert(dated, {cjson.decode(entries[j + 1])['fired_at'], entries[j]})
      end
      table.sort(dated, function(a, b) return a[1] < b[1] end)
      for j = 1, #dated - ledger_max do redis.call('HDEL', ledger, dated[j][2]) end
    end
  end
  i = i + 7 + 2 * fields
end
for _ = 1, tonumber(ARGV[9]) do
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', maxlen, '*',
             'reason', ARGV[i], 'stream_id', ARGV[i + 1], 'entry', ARGV[i + 2],
             'client', ARGV[i + 3])
  i = i + 4
end
for _ = 1, tonumber(ARGV[10]) do
  redis.call('XADD', KEYS[5], 'MAXLEN', '~', maxlen, '*', 'client_id', ARGV[i],
             'segment', ARGV[i + 2], 'change', ARGV[i + 1], 'at', ARGV[i + 3])
  i = i + 4
end
for _ = 1, tonumber(ARGV[12]) do
  if ARGV[i + 2] == '+' then
    redis.call('ZADD', ARGV[i], 0, ARGV[i + 1])
  else
    redis.call('ZREM', ARGV[i], ARGV[i + 1])
  end
  i = i + 3
end
-- A timeline keeps its newest lines: the batch's, then the stored ones, up to the limit.
local timeline_max = tonumber(ARGV[14])
for _ = 1, tonumber(ARGV[13]) do
  local lines = ARGV[i + 1]
  local old = redis.call('HGET', KEYS[7], ARGV[i])
  if old then lines = lines .. '\n' .. old end
  -- cut before the newline that ends the last line kept, if there is one
  local stop, kept = 0, 0
  while kept < timeline_max do
    stop = string.find(lines, '\n', stop + 1, true)
    if not stop then break end
    kept = kept + 1
  end
  if timeline_max <= 0 then
    lines = ''
  elseif stop then
    lines = string.sub(lines, 1, stop - 1)
  end
  redis.call('HSET', KEYS[7], ARGV[i], lines)
  i = i + 2
end
for _ = 1, tonumber(ARGV[15]) do
  count(ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2]))
  i = i + 3
end
for _, key in ipairs(counted_keys) do
  for field, by in pairs(counts[key]) do redis.call('HINCRBY', key, field, by) end
  redis.call('EXPIRE', key, activity_ttl)
end
-- Clients per point: a bucket's clients are counted once, by the first commit after a load
-- that found them uncounted (its states as loaded: this commit's base, which the guard above
-- holds to), then moved by its commits; a point whose count reaches 0 is gone. Until a bucket
-- is counted its moves are left out: its counting will see their outcome.
local moves, loaded = tonumber(ARGV[17]), tonumber(ARGV[19])
local counted = (moves > 0 or loaded >= 0)
  and redis.call('SISMEMBER', KEYS[11], ARGV[1]) == 1
if loaded >= 0 then
  if not counted then
    for j = i, i + 2 * loaded - 1, 2 do
      redis.call('HINCRBY', KEYS[8], ARGV[j], ARGV[j + 1])
    end
    redis.call('SADD', KEYS[11], ARGV[1])
    counted = true
  end
  i = i + 2 * loaded
end
for _ = 1, moves do
  if counted and redis.call('HINCRBY', KEYS[8], ARGV[i], ARGV[i + 1]) <= 0 then
    redis.call('HDEL', KEYS[8], ARGV[i])
  end
  i = i + 2
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
if commit_id ~= '' then
  redis.call('HSET', KEYS[10], ARGV[1], commit_id)
end
return emitted
