#!/usr/bin/env bash
# Makes a Docker engine reachable for `make image-offline` and the container tests, on a
# fresh CI machine or a developer's one; does nothing where `docker info` already works.
#
#   scripts/start-docker.sh
#
# As root, and only for what is missing: installs Debian's docker.io and debootstrap with
# apt-get, starts `dockerd --bridge=none --iptables=false` in the background (no bridge
# network: containers run with --network none, builds with --network host), and waits until
# the engine answers. Idempotent: safe to run again at any time.
#
# Environment:
#   DOCKERD_LOG       where dockerd's output goes (default /var/log/mctq-dockerd.log)
#   DOCKER_WAIT_SECS  how long to wait for the engine (default 60)
#   DOCKERD_PIDFILE   dockerd's pid file (default /var/run/docker.pid)
set -euo pipefail

log="${DOCKERD_LOG:-/var/log/mctq-dockerd.log}"
wait_secs="${DOCKER_WAIT_SECS:-60}"
pidfile="${DOCKERD_PIDFILE:-/var/run/docker.pid}"

say() { echo "start-docker: $*" >&2; }

missing=()
if ! command -v docker >/dev/null 2>&1 || ! command -v dockerd >/dev/null 2>&1; then
  missing+=(docker.io)
fi
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)

if ((${#missing[@]} == 0)) && docker info >/dev/null 2>&1; then
  say "the Docker engine is running"
  exit 0
fi

if [[ $(id -u) != 0 ]]; then
  if docker info >/dev/null 2>&1; then  # only debootstrap is missing: needed for a new local base alone
    say "the Docker engine is running; debootstrap is missing (make image-offline needs it, as root, for a new base)"
    exit 0
  fi
  say "needs root to install ${missing[*]:-nothing} and start dockerd; run it with sudo, or start Docker yourself"
  exit 1
fi

if ((${#missing[@]} > 0)); then
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Keep the package's init script from starting a dockerd with its default network
  # options: this script starts the one it wants below.
  policy=/usr/sbin/policy-rc.d
  ours=
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && ours=1
    trap 'rm -f "$policy"' EXIT
  fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if [[ -n $ours ]]; then rm -f "$policy"; trap - EXIT; fi
fi

if docker info >/dev/null 2>&1; then
  say "the Docker engine is running"
  exit 0
fi

# A dockerd may be starting already (a previous call, a service manager): only wait then.
if ! { [[ -s $pidfile ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; }; then
  say "starting dockerd (log: $log)"
  mkdir -p "$(dirname "$log")"
  # setsid + nohup: the engine outlives this script and the CI step's shell.
  setsid nohup dockerd --bridge=none --iptables=false --pidfile "$pidfile" >>"$log" 2>&1 </dev/null &
fi

for ((i = 0; i < wait_secs; i++)); do
  if docker info >/dev/null 2>&1; then
    say "the Docker engine is running (after ${i}s)"
    exit 0
  fi
  sleep 1
done

say "the Docker engine did not answer within ${wait_secs}s; last lines of $log:"
tail -n 20 "$log" >&2 || true
exit 1
