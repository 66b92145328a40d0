#!/usr/bin/env bash
# The Docker part of CI, runnable by hand (as root, from the repository):
#
#   scripts/docker-ci.sh          # setup, then check
#   scripts/docker-ci.sh setup    # engine, base image, wheelhouse and image
#   scripts/docker-ci.sh check    # compose up, make test-full, the kill/rejoin test, compose down
#   scripts/docker-ci.sh stop-engine   # stop the dockerd that setup started, if any
#
# setup installs Debian's docker.io, docker-compose and debootstrap when they
# are missing, starts dockerd when no engine answers, makes the base image
# from Debian packages when there is none (Docker Hub may be out of reach:
# BASE=python:3.11-slim to use it instead) and builds the image from a
# wheelhouse built here.  check runs its own compose project (dcounter-ci) on
# host ports 9088-9090 and always takes it down again, with its volumes; then
# it stops a dockerd that setup started, unless KEEP_DOCKERD is set.
set -euo pipefail
cd "$(dirname "$0")/.."

BASE="${BASE:-dcounter-base:bookworm}"
export COMPOSE_PROJECT_NAME=dcounter-ci
STATE=run/docker-ci
started=$SECONDS
mkdir -p "$STATE"

say() { echo "docker-ci: $*"; }
engine_answers() { timeout 10 docker info >/dev/null 2>&1; }

# The Debian mirror apt already uses, for debootstrap.
apt_mirror() {
  local uri
  uri=$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | awk '{print $2}' | grep -v security | head -1 || true)
  [ -n "$uri" ] || uri=$(grep -hs '^deb ' /etc/apt/sources.list | awk '{print $2}' | head -1 || true)
  echo "${uri:-http://deb.debian.org/debian}"
}

setup() {
  local need=()
  command -v dockerd >/dev/null || need+=(docker.io)
  command -v docker-compose >/dev/null || need+=(docker-compose)
  command -v debootstrap >/dev/null || need+=(debootstrap)
  if [ ${#need[@]} -gt 0 ]; then
    say "installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi

  if ! engine_answers; then
    say "starting dockerd (log: $STATE/dockerd.log)"
    dockerd >"$STATE/dockerd.log" 2>&1 &
    echo $! >"$STATE/dockerd.pid"
    for _ in $(seq 120); do engine_answers && break; sleep 0.5; done
    engine_answers || { say "dockerd did not answer within 60s: $(tail -1 "$STATE/dockerd.log")" >&2; exit 1; }
  fi
  say "engine: $(docker version --format '{{.Server.Version}}'), compose: $(docker-compose version --short)"

  # The base (debootstrap: mostly downloads) is made while the wheelhouse is built.
  local t0=$SECONDS
  if ! docker image inspect "$BASE" >/dev/null 2>&1; then
    if [ "$BASE" = dcounter-base:bookworm ]; then
      say "making $BASE from Debian packages ($(apt_mirror)), beside the wheelhouse"
      make --no-print-directory base-image MIRROR="$(apt_mirror)" >"$STATE/base-image.log" 2>&1 &
      base_pid=$!
    else
      docker pull -q "$BASE"
    fi
  fi
  make --no-print-directory wheelhouse
  say "venv and wheelhouse ready after $((SECONDS - t0))s"
  if [ -n "$base_pid" ]; then
    wait "$base_pid" || { base_pid=; say "making $BASE failed: $(tail -3 "$STATE/base-image.log")" >&2; exit 1; }
    base_pid=
    say "$BASE ready after $((SECONDS - t0))s"
  fi
  local t1=$SECONDS
  make --no-print-directory -o wheelhouse image BASE="$BASE"
  say "image built in $((SECONDS - t1))s"
  say "setup took $((SECONDS - started))s"
}

check() {
  checking=1
  say "compose cluster up on 9088-9090"
  make --no-print-directory -o image compose-up  # the image from setup
  make --no-print-directory test-full
  say "the kill/rejoin test: four scaled nodes in a compose project of its own"
  CI="${CI:-true}" .venv/bin/pytest -q -p no:cacheprovider tests/integration/test_compose.py
  say "docker part took $((SECONDS - started))s"
}

# Whatever happens: take the compose cluster down after a check, and stop a
# dockerd this script started, unless setup alone succeeded (check needs it).
cleanup() {
  local status=$?
  # A base image still being made finishes (debootstrap is not cut off mid-way).
  if [ -n "$base_pid" ]; then wait "$base_pid" 2>/dev/null || true; fi
  if [ -n "$checking" ]; then
    if [ "$status" -ne 0 ]; then
      say "failed; the nodes' last log lines:" >&2
      docker-compose --profile extra logs --tail=20 >&2 || true
    fi
    docker-compose --profile extra down -v >/dev/null 2>&1 || true
    rm -f run/compose-up
  fi
  if { [ "$status" -ne 0 ] || [ -n "$checking" ]; } && [ -z "${KEEP_DOCKERD:-}" ]; then
    stop_engine
  fi
  exit "$status"
}

stop_engine() {
  [ -f "$STATE/dockerd.pid" ] || return 0
  local pid
  pid=$(cat "$STATE/dockerd.pid")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 200); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  rm -f "$STATE/dockerd.pid"
  say "stopped the dockerd that setup started (pid $pid)"
}

checking=
base_pid=
trap cleanup EXIT
trap 'exit 143' TERM INT  # so that cleanup runs when stopped too
case "${1:-all}" in
  setup) setup ;;
  check) check ;;
  all) setup; check ;;
  stop-engine) stop_engine ;;
  *) echo "usage: $0 [setup|check|all|stop-engine]" >&2; exit 2 ;;
esac
