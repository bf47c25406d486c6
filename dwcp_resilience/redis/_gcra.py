"""The GCRA Lua script of :class:`~dwcp_resilience.redis.RedisRateLimiter` (one atomic round trip).

State is one string key, ``"<t> <off>"``: at Redis time ``t`` (µs of Redis' own ``TIME``, so the
clocks of the processes sharing it do not matter) the bucket's "theoretical arrival time" was
``tat = t + off``. Keeping ``off`` small (relative to ``t``) keeps its precision: a float of
absolute microseconds (~1.7e15) cannot tell apart steps below 0.25 µs, which a high rate needs.
With the emission interval ``T = 1e6 / rate`` and the tolerance ``tau = burst * T``, a request of
``n`` tokens at ``now`` has ``off = max(tat - now, 0)``, costs ``new = off + n * T``, and conforms
when ``new <= tau``.

``KEYS[1]``: the bucket. ``ARGV``:

1. ``T`` (µs per token, a float), 2. ``burst``, 3. ``n``,
4. ``lease_max``: the most tokens one call may take (``n`` plus a lease of extras),
5. ``lease_us``: a lease's lifetime ``L``. A leasing call counts its tokens as arriving at
   ``now + L``, the latest moment they may be used (``new = max(off, L) + granted * T``), so that
   extras used anywhere in ``[now, now + L]`` keep the exact bound; once the bucket's debt is ``L``
   or more, leasing costs nothing extra,
6. ``wait_us``: the longest reservation (``-1``: never reserve; ``1e300``: no bound),
7. ``now_us``: empty in production; tests pass a synthetic clock here.

Reply ``{code, now_us, granted, wait_us}``:

- ``code 1``: admitted now; ``granted - n`` extra tokens are leased (usable until ``now + L``);
- ``code 2``: reserved: the tokens are the caller's at ``now + wait_us`` (``tat`` already moved);
- ``code 0``: rejected; they would be there in ``wait_us`` (``-1``: ``n > burst``, never).

Leases are granted only out of the upper half of the bucket (after the ``L`` charge), so a
bucket under pressure is served one exact request per call and cannot be hoarded.
The key's TTL (``PEXPIRE``) is the time until the bucket is full again: an absent key *is* a full
bucket, so nothing is left behind.
"""

from __future__ import annotations

__all__ = ("GCRA_LUA",)

GCRA_LUA = """
local now
if ARGV[7] ~= nil and ARGV[7] ~= '' then
  now = tonumber(ARGV[7])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local T = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local n = tonumber(ARGV[3])
local lease_max = tonumber(ARGV[4])
local lease_us = tonumber(ARGV[5])
local wait_us = tonumber(ARGV[6])
if n > burst then
  return {0, now, 0, -1}
end
local tau = burst * T
local off = 0
local stored = redis.call('GET', KEYS[1])
if stored then
  local sep = string.find(stored, ' ', 1, true)
  off = tonumber(string.sub(stored, sep + 1)) - (now - tonumber(string.sub(stored, 1, sep - 1)))
  if off < 0 then
    off = 0
  end
end
local new = off + n * T
local code = 1
local granted = n
local wait = 0
if new <= tau then
  if lease_max > n then
    local base = off
    if base < lease_us then
      base = lease_us
    end
    local extra = math.min(lease_max - n, math.floor((tau - base) / T - n - burst / 2))
    if extra >= 1 then
      granted = n + extra
      new = base + granted * T
    end
  end
else
  wait = math.ceil(new - tau)
  if wait_us < 0 or wait > wait_us then
    return {0, now, 0, wait}
  end
  code = 2
end
redis.call('SET', KEYS[1], string.format('%.17g %.17g', now, new), 'PX', math.ceil(new / 1000) + 1)
return {code, now, granted, wait}
"""
