#!/usr/bin/env bash
# The Docker Compose cluster, tested for real: builds the image around a release binary,
# starts docker-compose.yml (control, worker1, worker2), inserts through the control node and
# through a worker, queries, kills worker2 (SIGKILL) and checks that the answer is still
# complete (replication factor 2), restarts it and writes again, scales to a third worker,
# waits until the rebalance gives it its share and writes again, then tears everything down.
# Then the same for docker-compose.ha.yml (three control nodes, worker1, worker2): inserts
# through control1, kills the metadata group's leader (SIGKILL), inserts and counts through
# a surviving control node, checks that the count covers every acknowledged point, and
# tears it down with its volumes.
#
#   cargo build --release --bin raftmetrics-server
#   docker/compose-test.sh [path/to/raftmetrics-server]
#
# Needs docker, docker-compose (or the compose plugin), curl and jq. Without registry
# access, set RUNTIME_IMAGE to a local Debian 12 image (docker/local-base.sh makes one).
set -euo pipefail
cd "$(dirname "$0")/.."

binary="${1:-${CARGO_TARGET_DIR:-target}/release/raftmetrics-server}"
[ -x "$binary" ] || { echo "no binary at $binary: cargo build --release --bin raftmetrics-server" >&2; exit 1; }
runtime_image="${RUNTIME_IMAGE:-debian:bookworm-slim}"
if docker compose version >/dev/null 2>&1; then compose=(docker compose); else compose=(docker-compose); fi

export RAFTMETRICS_IMAGE="raftmetrics:compose-test"
export CONTROL_PORT="${CONTROL_PORT:-18080}" WORKER1_PORT="${WORKER1_PORT:-18081}" WORKER2_PORT="${WORKER2_PORT:-18082}"
export AUTH_TOKENS="compose-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
export CLUSTER_SECRET="$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')"
export REPLICATION_FACTOR=2 MIN_WORKERS=2
project="raftmetrics-compose-test"
dc() { "${compose[@]}" -p "$project" -f docker-compose.yml "$@"; }
# The HA cluster: its own project and host ports (control1 takes CONTROL_PORT once the first
# cluster is down).
export CONTROL1_PORT="$CONTROL_PORT" CONTROL2_PORT="${CONTROL2_PORT:-18090}" CONTROL3_PORT="${CONTROL3_PORT:-18091}"
ha_project="raftmetrics-compose-test-ha"
ha_compose=("${compose[@]}" -p "$ha_project" -f docker-compose.ha.yml)
dcha() { "${ha_compose[@]}" "$@"; }
control="http://127.0.0.1:$CONTROL_PORT"
auth=(-H "Authorization: Bearer $AUTH_TOKENS")

context="$(mktemp -d)"
cleanup() {
  status=$?
  if [ $status -ne 0 ]; then
    echo "== FAILED; container logs:"
    dc logs --no-color --tail=40 2>/dev/null || true
    dcha logs --no-color --tail=60 2>/dev/null || true
    if [ "${ha_up:-0}" = 1 ]; then
      for port in "$CONTROL1_PORT" "$CONTROL2_PORT" "$CONTROL3_PORT"; do
        echo "== GET /health on 127.0.0.1:$port"
        curl -s -m 5 "${auth[@]}" "http://127.0.0.1:$port/health" || true
        echo
      done
    fi
  fi
  timeout 120 "${compose[@]}" -p "$project" -f docker-compose.yml down -v -t 2 >/dev/null 2>&1 || true
  timeout 120 "${ha_compose[@]}" down -v -t 2 >/dev/null 2>&1 || true
  docker image rm "$RAFTMETRICS_IMAGE" >/dev/null 2>&1 || true
  rm -rf "$context"
  exit $status
}
trap cleanup EXIT

fail() { echo "FAIL: $*" >&2; exit 1; }
# wait_for DESCRIPTION SECONDS COMMAND...: runs COMMAND once a second until it succeeds.
wait_for() {
  local what="$1" deadline=$((SECONDS + $2)); shift 2
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || fail "timed out waiting for $what"
    sleep 1
  done
  echo "ok: $what"
}
health() { curl -sf "${auth[@]}" "$control/health"; }
# cluster_ready WORKERS: that many healthy workers, and every partition with a live leader.
cluster_ready() {
  health | jq -e --argjson n "$1" \
    '.worker_nodes.healthy == $n and .partitions_total > 0 and .partitions_available == .partitions_total'
}
# ready URL: the node at URL answers GET /ready with 200.
ready() { curl -sf "${auth[@]}" "$1/ready" | jq -e '.status == "ready"'; }
# workers_are TOTAL HEALTHY: the control node's worker counts.
workers_are() {
  health | jq -e --argjson t "$1" --argjson h "$2" \
    '.worker_nodes.total == $t and .worker_nodes.healthy == $h'
}
# container_healthy SERVICE: Docker's HEALTHCHECK passes in the service's container.
container_healthy() {
  [ "$(docker inspect -f '{{.State.Health.Status}}' "$(dc ps -q "$1")")" = healthy ]
}
containers_healthy() { container_healthy control && container_healthy worker1 && container_healthy worker2; }
# count_is N: a complete answer counting N points of the test metric.
count_is() {
  curl -sf "${auth[@]}" "$control/aggregate?metric=compose_test&agg=count,sum" \
    | jq -e --argjson n "$1" '.is_partial == false and .aggregations.count == $n'
}
# insert FROM TO: points FROM..TO-1 through the control node, one batch.
insert() {
  jq -nc --argjson a "$1" --argjson b "$2" \
    '[range($a; $b) | {metric: "compose_test", value: ., partition_key: "user\(.)"}]' \
    | curl -sf "${auth[@]}" -H 'Content-Type: application/json' --data-binary @- "$control/metrics"
}

echo "== image from $binary on $runtime_image"
mkdir -p "$context/dist"
cp Dockerfile "$context/"
cp "$binary" "$context/dist/raftmetrics-server"
docker build -q --target prebuilt --build-arg RUNTIME_IMAGE="$runtime_image" \
  -t "$RAFTMETRICS_IMAGE" "$context" >/dev/null

echo "== docker-compose up"
dc up -d --no-build
wait_for "control, worker1 and worker2 up, partitions placed" 90 cluster_ready 2
wait_for "control ready (GET /ready)" 30 ready "$control"
wait_for "worker1 ready (GET /ready)" 30 ready "http://127.0.0.1:$WORKER1_PORT"
wait_for "control and worker containers healthy (HEALTHCHECK)" 60 containers_healthy
[ "$(dc exec -T control id -u | tr -d '\r')" = 10001 ] || fail "the node does not run as uid 10001"

echo "== inserts through the control node and through worker1"
wait_for "200 points acknowledged" 30 insert 0 200
curl -sf "${auth[@]}" -H 'Content-Type: application/json' "http://127.0.0.1:$WORKER1_PORT/insert" \
  -d '{"metric": "compose_test", "partition_key": "user123", "value": 42.5}' >/dev/null \
  || fail "insert through worker1"
wait_for "count 201, complete" 30 count_is 201

echo "== worker2 killed (SIGKILL)"
dc kill -s SIGKILL worker2 >/dev/null
wait_for "control sees worker2 gone" 30 workers_are 2 1
count_is 201 >/dev/null || fail "with worker2 down, the answer is not complete with 201 points: \
$(curl -s "${auth[@]}" "$control/aggregate?metric=compose_test&agg=count")"
echo "ok: complete answer from worker1 alone (every partition has a replica there)"

echo "== worker2 restarted"
dc start worker2 >/dev/null
wait_for "worker2 back, every partition led" 90 cluster_ready 2
wait_for "100 more points acknowledged" 30 insert 200 300
wait_for "count 301, complete" 30 count_is 301

echo "== scaled: one more worker"
dc up -d --no-build --no-recreate --scale worker=1 >/dev/null
wait_for "three workers registered" 60 workers_are 3 3
id="$(dc exec -T worker cat /data/node-id | tr -d '\r\n')"
[[ "$id" =~ ^[0-9]+$ ]] || fail "the new worker kept no id: '$id'"
echo "ok: the new worker registered with id $id"
# holds_share ID: the worker holds at least a third of the replicas less one, and no move
# is in flight (16 partitions x 2 replicas over 3 workers: 10 or 11 each).
holds_share() {
  curl -sf "${auth[@]}" "$control/admin/workers" | jq -e --argjson id "$1" \
    '(.moves | length) == 0 and ([.workers[] | select(.id == $id) | .replicas][0] >= 10)'
}
wait_for "the third worker holds its share of the replicas" 180 holds_share "$id"
count_is 301 >/dev/null || fail "the answer changed after scaling"
wait_for "100 more points acknowledged after the rebalance" 30 insert 300 400
wait_for "count 401, complete" 30 count_is 401

echo "== docker-compose down (with its volumes)"
timeout 120 "${compose[@]}" -p "$project" -f docker-compose.yml down -v -t 2 >/dev/null \
  || fail "docker-compose down"

# ---- Three control nodes: docker-compose.ha.yml ----
ha_ports=([1]="$CONTROL1_PORT" [2]="$CONTROL2_PORT" [3]="$CONTROL3_PORT")
# control_url I: control node I's base URL.
control_url() { echo "http://127.0.0.1:${ha_ports[$1]}"; }
# ha_curl ARGS...: curl with the token, failing on HTTP errors, bounded in time (longer than
# a node's request deadline, 30 s).
ha_curl() { curl -sf -m 40 "${auth[@]}" "$@"; }
# any_ready I...: one of control nodes I... answers GET /ready with 200.
any_ready() {
  local i
  for i in "$@"; do
    curl -sf -m 5 "${auth[@]}" "$(control_url "$i")/ready" | jq -e '.status == "ready"' >/dev/null 2>&1 \
      && return 0
  done
  return 1
}
# metadata_leader I...: prints the I (of I...) whose /health says its replica of the metadata
# group leads.
metadata_leader() {
  local i
  for i in "$@"; do
    if curl -sf -m 5 "${auth[@]}" "$(control_url "$i")/health" \
        | jq -e '.raft_status.role == "leader"' >/dev/null 2>&1; then
      echo "$i"
      return 0
    fi
  done
  return 1
}
# insert_via URL FROM TO: points FROM..TO-1 of the HA test metric through the node at URL.
insert_via() {
  jq -nc --argjson a "$2" --argjson b "$3" \
    '[range($a; $b) | {metric: "compose_ha", value: ., partition_key: "user\(.)"}]' \
    | ha_curl -H 'Content-Type: application/json' --data-binary @- "$1/metrics" >/dev/null
}
# count_covers URL N: the node at URL answers completely, counting at least N points (every
# acknowledged one; a retried batch may have been stored before its acknowledgement was
# lost).
count_covers() {
  ha_curl "$1/aggregate?metric=compose_ha&agg=count" \
    | jq -e --argjson n "$2" '.is_partial == false and .aggregations.count >= $n'
}
count_of() {
  curl -s -m 40 "${auth[@]}" "$1/aggregate?metric=compose_ha&agg=count" || true
}

echo "== docker-compose -f docker-compose.ha.yml up (three control nodes)"
ha_up=1
timeout 300 "${ha_compose[@]}" up -d --no-build || fail "docker-compose -f docker-compose.ha.yml up"
wait_for "a control node ready (GET /ready): metadata leader elected, partitions placed" 120 \
  any_ready 1 2 3
wait_for "a metadata leader" 60 metadata_leader 1 2 3

echo "== inserts through control1"
wait_for "200 points acknowledged through control1" 60 insert_via "$(control_url 1)" 0 200
wait_for "count covers 200, complete, through control1" 30 count_covers "$(control_url 1)" 200

leader="$(metadata_leader 1 2 3)" || fail "no metadata leader any more"
survivors=()
for i in 1 2 3; do [ "$i" = "$leader" ] || survivors+=("$i"); done
survivor="$(control_url "${survivors[0]}")"
echo "== metadata leader control$leader killed (SIGKILL)"
timeout 60 "${ha_compose[@]}" kill -s SIGKILL "control$leader" >/dev/null \
  || fail "cannot kill control$leader"
wait_for "a new metadata leader among control${survivors[0]} and control${survivors[1]}" 60 \
  metadata_leader "${survivors[@]}"
wait_for "a surviving control node ready" 60 any_ready "${survivors[@]}"

echo "== inserts and queries through control${survivors[0]}"
wait_for "100 more points acknowledged through control${survivors[0]}" 60 \
  insert_via "$survivor" 200 300
wait_for "count covers 300, complete, through control${survivors[0]}" 30 \
  count_covers "$survivor" 300
wait_for "count covers 300, complete, through control${survivors[1]}" 30 \
  count_covers "$(control_url "${survivors[1]}")" 300
echo "ok: $(count_of "$survivor" | jq -c '{count: .aggregations.count, is_partial}')"

echo "== docker-compose -f docker-compose.ha.yml down (with its volumes)"
timeout 120 "${ha_compose[@]}" down -v -t 2 >/dev/null || fail "docker-compose down of the HA cluster"

echo "compose test passed"
