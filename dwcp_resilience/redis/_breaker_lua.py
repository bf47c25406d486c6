"""The fleet breaker's Redis layout and Lua scripts (each one round trip, on Redis' clock).

Keys and scripts (``<ns>`` is the backend's namespace, ``<name>`` the fleet breaker's name; both
keys carry the hash tag ``{<name>}``, so the poll script that reads both is Redis Cluster safe):

- ``{<ns>:breaker:<name>}:opened``, a sorted set: member = instance id, score = the Redis server
  time (ms, from ``TIME`` inside the script) of that instance's latest opening. One member per
  instance, so the key never grows beyond the fleet's size; the publish script also drops entries
  older than ``window`` and sets a TTL of ``window`` (the key vanishes when nobody reported).
- ``{<ns>:breaker:<name>}:members``, a sorted set: member = instance id, score = the Redis time of
  its latest poll. Every poll is a heartbeat: the poll script adds this instance, drops the members
  not seen for ``member_ttl`` and sets a TTL of ``member_ttl``, all in the same round trip as the
  read of the reports. A member that stops polling (crash, partition, Redis unreachable from it)
  leaves the count after ``member_ttl``; one that leaves ``async with`` removes itself at once.
  A sorted set rather than a key per member: counting the live members is one ``ZCARD`` of one
  key (per-member keys would need a ``SCAN``, which Redis Cluster spreads over every node).
- ``<ns>:breaker:<name>:events``, a pub/sub channel: the publish script announces every report on
  it so followers react at once. Messages can be lost (Redis blips, reconnects), so followers also
  poll every ``poll_interval``.

Both scripts date everything with ``TIME`` inside the script, so hosts' clocks never need to agree.
"""

from __future__ import annotations

__all__ = ("POLL_LUA", "PUBLISH_LUA")

# KEYS[1] the sorted set; ARGV: instance, window ms, age ms, known score ms (or ""), channel.
# Returns {score used, 1 if the set changed}.
PUBLISH_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[2])
local score
if ARGV[4] ~= '' then score = tonumber(ARGV[4]) else score = now - tonumber(ARGV[3]) end
if score <= now - window then return {score, 0} end
local changed = redis.call('ZADD', KEYS[1], 'GT', 'CH', score, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
redis.call('PEXPIRE', KEYS[1], window)
if changed > 0 then redis.call('PUBLISH', ARGV[5], ARGV[1]) end
return {score, changed}
"""

# KEYS[1] the reports' sorted set, KEYS[2] the members' sorted set (one hash tag: one slot).
# ARGV: instance, window ms, member TTL ms. Heartbeats (this instance is a member as of now; members
# not seen for the TTL are dropped, and the key expires a TTL after the last poll of anyone), then
# returns {now ms, live members, then per report within the window: member, score, 1 if a live
# member else 0}.
POLL_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])
redis.call('ZADD', KEYS[2], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - ttl)
redis.call('PEXPIRE', KEYS[2], ttl)
local out = {now, redis.call('ZCARD', KEYS[2])}
local found = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. (now - tonumber(ARGV[2])), '+inf',
    'WITHSCORES')
for i = 1, #found, 2 do
    out[#out + 1] = found[i]
    out[#out + 1] = found[i + 1]
    out[#out + 1] = redis.call('ZSCORE', KEYS[2], found[i]) and 1 or 0
end
return out
"""
