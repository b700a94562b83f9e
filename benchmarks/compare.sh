#!/usr/bin/env bash
# Server CPU per request and latency of mlserve checkouts side by side, as a user runs them (API
# key required, every feature on), under wrk at one concurrency: for A/B runs of two commits.
#   bash benchmarks/compare.sh [-c 64] [-s 8] TREE [TREE ...]     e.g. a worktree of an older commit and .
# Each TREE is a checkout of mlserve; the venv of this one runs them all. Server on core 0, wrk on core 1.
set -euo pipefail
C=64; SECS=8
while getopts "c:s:" opt; do case $opt in c) C=$OPTARG;; s) SECS=$OPTARG;; *) exit 2;; esac; done
shift $((OPTIND - 1))
PY=$(cd "$(dirname "$0")/.." && pwd)/.venv/bin/python
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)"; exit 1; }
for TREE in "$@"; do
  TREE=$(cd "$TREE" && pwd); W=$(mktemp -d); mkdir -p "$W/models/mlp/1"
  (cd "$TREE" && PYTHONPATH=$TREE $PY -c "from pathlib import Path; from mlserve.examples import write_mlp_onnx; write_mlp_onnx(Path('$W/models/mlp/1/model.onnx'), seed=1)")
  printf 'max_batch_size = 64\nmax_queue_delay_us = 2000\nmax_queue_size = 1024\nintra_op_threads = 1\n' > "$W/models/mlp/model.toml"
  KEY=$(cd "$TREE" && PYTHONPATH=$TREE $PY -m mlserve keys create --file "$W/keys.json" --name bench --scopes infer 2>/dev/null | grep -o 'mls_[A-Za-z0-9_-]*' | head -1)
  $PY -c "import json; print(json.dumps({'inputs':[{'name':'x','shape':[1,768],'datatype':'FP32','data':[0.01*i for i in range(768)]}]}))" > "$W/body.json"
  PORT=$($PY -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])")
  (cd "$TREE" && OMP_NUM_THREADS=1 PYTHONPATH=$TREE exec taskset -c 0 $PY -m mlserve start --models "$W/models" --port "$PORT" --log-level warning --auth-keys "$W/keys.json" > "$W/server.log" 2>&1) &
  SPID=$!
  for _ in $(seq 600); do curl -sf -o /dev/null -H "Authorization: Bearer $KEY" -H "Content-Type: application/json" -d @"$W/body.json" "localhost:$PORT/v2/models/mlp/infer" && break; sleep 0.2; done
  printf 'wrk.method = "POST"\nlocal f = io.open("%s", "rb"); wrk.body = f:read("*a"); f:close()\nwrk.headers["Content-Type"] = "application/json"\nwrk.headers["Authorization"] = "Bearer %s"\n' "$W/body.json" "$KEY" > "$W/post.lua"
  taskset -c 1 wrk -t1 -c"$C" -d2s -s "$W/post.lua" "http://127.0.0.1:$PORT/v2/models/mlp/infer" > /dev/null
  PID=$(pgrep -f -- "--port $PORT" | head -1)
  CPU0=$(awk '{print $14+$15}' /proc/$PID/stat)
  taskset -c 1 wrk -t1 -c"$C" -d"${SECS}s" --latency -s "$W/post.lua" "http://127.0.0.1:$PORT/v2/models/mlp/infer" > "$W/wrk.txt"
  CPU1=$(awk '{print $14+$15}' /proc/$PID/stat)
  REQS=$(grep -o '[0-9]* requests in' "$W/wrk.txt" | awk '{print $1}')
  TICK=$(getconf CLK_TCK)
  echo "$TREE c=$C: $(grep Requests/sec "$W/wrk.txt" | awk '{print $2}') req/s, p50 $(grep ' 50%' "$W/wrk.txt" | awk '{print $2}'), p99 $(grep ' 99%' "$W/wrk.txt" | awk '{print $2}'), server CPU $(( (CPU1 - CPU0) * 1000000 / TICK / REQS )) us/request"
  kill "$PID" 2>/dev/null || true; wait "$SPID" 2>/dev/null || true; rm -rf "$W"
done
