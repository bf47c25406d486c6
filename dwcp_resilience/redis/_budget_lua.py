"""The Lua scripts of :class:`~dwcp_resilience.redis.FleetErrorBudget` (one atomic round trip each).

Both keys of a budget share one Redis Cluster hash tag (``{<ns>:budget:<name>}``) and each script
declares every key it touches, so a cluster runs it on the node of that slot, and a slot being
migrated answers it with ``ASK`` (every key moved) or ``TRYAGAIN`` (some moved), never with a
script that finds half of its keys. Bucket starts are computed from Redis' ``TIME``, so they are
fields of one hash rather than keys of their own.
"""

from __future__ import annotations

__all__ = ("FLUSH_LUA", "SNAPSHOT_LUA")

# KEYS[1] the batch-number key, KEYS[2] the buckets hash. ARGV: bucket ms, buckets in the window,
# hash TTL ms, seq TTL ms, batch number, then (age ms, total, failed) triples.
# Returns 1 if applied, 0 if a duplicate. ``oldest`` is the oldest bucket a snapshot taken from now
# on reads: older ones are deleted (at most ``count + 1`` steps, or the whole hash when every
# bucket in it is older), and a delta dated before it is not written (no snapshot would read it).
FLUSH_LUA = """
local seq = tonumber(ARGV[5])
local last = tonumber(redis.call('GET', KEYS[1]) or '0')
if seq <= last then return 0 end
redis.call('SET', KEYS[1], seq, 'PX', ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local width = tonumber(ARGV[1])
local count = tonumber(ARGV[2])
local oldest = (math.floor(now / width) - count + 1) * width
local lo = tonumber(redis.call('HGET', KEYS[2], 'lo') or oldest)
if oldest - lo > (count + 1) * width then
    redis.call('DEL', KEYS[2])
else
    for start = lo, oldest - width, width do
        local s = string.format('%d', start)
        redis.call('HDEL', KEYS[2], 't:' .. s, 'f:' .. s)
    end
end
redis.call('HSET', KEYS[2], 'lo', string.format('%d', oldest))
for i = 6, #ARGV, 3 do
    local start = math.floor((now - tonumber(ARGV[i])) / width) * width
    if start >= oldest then
        local s = string.format('%d', start)
        redis.call('HINCRBY', KEYS[2], 't:' .. s, ARGV[i + 1])
        if tonumber(ARGV[i + 2]) > 0 then redis.call('HINCRBY', KEYS[2], 'f:' .. s, ARGV[i + 2]) end
    end
end
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return 1
"""

# KEYS[1] the buckets hash. ARGV: bucket ms, buckets in the window. Returns {now ms, total, failed}:
# the sums over the ``count`` buckets that end with the current one.
SNAPSHOT_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local width = tonumber(ARGV[1])
local newest = math.floor(now / width) * width
local oldest = newest - (tonumber(ARGV[2]) - 1) * width
local total, failed = 0, 0
local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
    local kind = string.sub(fields[i], 1, 2)
    if kind == 't:' or kind == 'f:' then
        local start = tonumber(string.sub(fields[i], 3))
        if start >= oldest and start <= newest then
            if kind == 't:' then
                total = total + tonumber(fields[i + 1])
            else
                failed = failed + tonumber(fields[i + 1])
            end
        end
    end
end
return {now, total, failed}
"""
