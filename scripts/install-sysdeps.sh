#!/usr/bin/env bash
# Install the system packages the test suite needs, when they are missing:
#   redis-server  (the Redis backend's tests start a real server, a Redis Cluster and a Sentinel
#                 on loopback: `redis-server --sentinel` is the Sentinel)
#   redis-tools   (redis-cli: `redis-cli --cluster create` joins the cluster; a dependency of
#                 redis-server, checked in case it was removed)
#   prometheus    (promtool checks and unit-tests the shipped alert rules)
# Needs root for apt-get; without root it only says what is missing.
set -euo pipefail

missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || missing+=(redis-tools)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
    echo "install-sysdeps: missing ${missing[*]} and not root; install them with apt-get" >&2
    exit 0
fi

# Packages must not start their daemons here: tests start what they need on free loopback ports.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"
    chmod +x "$policy"
    created_policy=1
fi
trap '[ "$created_policy" -eq 1 ] && rm -f "$policy"' EXIT

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install-sysdeps: installed ${missing[*]}"
