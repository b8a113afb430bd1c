"""A record's attempt count, kept where the record is pending: its entry in the endpoint's
consumer group.

The count must outlive the process (a restart, a crash) and move with the record when
another consumer takes it over, or `max_attempts` bounds nothing: a deliverer restarted
every few attempts would retry a dead endpoint's records for ever. Redis already keeps one
per pending entry, its delivery count (`XPENDING`'s fourth field), and it goes with the
entry: no key of its own to clean up (`XACK` drops it), nothing to scan, in the stream's
own slot on a cluster. What changes it, on Redis 6.2 and 7 alike: a read of new records
(`>`) starts it at 1; a consumer's read of its own pending records, `XAUTOCLAIM` and
`XCLAIM` add one; `XCLAIM ... JUSTID` (the hold renewal) leaves it; `RETRYCOUNT` sets it.

So a read or a takeover reserves the number of the attempt it leads to, and a retry sets the
count to its own number before it is sent: the count is the attempts begun, the one under
way included. A crash between the count and the request costs the record the attempt it
did not make (the next one skips a number); it never sends one past `max_attempts`. Records
read and never begun when the process stops (waiting for a free slot) give back the number
their read reserved.
"""

from __future__ import annotations

from typing import cast

import redis.asyncio as aioredis

# The attempt a record this consumer holds is at. ARGV[4] '0': the count as it stands (the
# first attempt after a read of its own pending records or a takeover, which raised it);
# else the count is set to ARGV[4] (a retry), which renews the hold too. 0 when the record is
# no longer this consumer's: taken over after a stall, settled, or erased (Redis 7 drops an
# erased entry from the group as it claims it). KEYS: the trigger stream. ARGV: the group,
# this consumer, the entry id, the attempt.
_BEGIN = """
local entry = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)[1]
if not entry or entry[2] ~= ARGV[2] then return 0 end
if ARGV[4] == '0' then return math.max(entry[4], 1) end
local claimed = redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3],
                           'RETRYCOUNT', ARGV[4], 'JUSTID')
if #claimed == 0 then return 0 end
return tonumber(ARGV[4])
"""

# Lower by one the count of records this consumer read and never sent, still its own: the
# attempt their read reserved was not made. Their idle time is kept, so a takeover is not
# put off. KEYS: the trigger stream. ARGV: the group, this consumer, the entry ids.
_RELEASE = """
for i = 3, #ARGV do
  local entry = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)[1]
  if entry and entry[2] == ARGV[2] and entry[4] > 0 then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'IDLE', entry[3],
               'RETRYCOUNT', entry[4] - 1, 'JUSTID')
  end
end
return 0
"""


async def begin_attempt(client: aioredis.Redis, stream: str, group: str, consumer: str,
                        entry_id: str, attempt: int | None) -> int | None:
    """The number of the attempt about to be sent: `attempt`, recorded as the record's
    count, or with None the count a read or a takeover left; None when the record is no
    longer this consumer's (it must not be sent)."""
    number = int(cast(int, await client.eval(
        _BEGIN, 1, stream, group, consumer, entry_id, attempt or 0)))
    return number or None


async def release_unsent(client: aioredis.Redis, stream: str, group: str, consumer: str,
                         entry_ids: list[str]) -> None:
    """Give back the attempt number reserved by the read of records never sent."""
    if entry_ids:
        await client.eval(_RELEASE, 1, stream, group, consumer, *entry_ids)
