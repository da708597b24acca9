#!/usr/bin/env bash
# Start-up time of `eali serve` per zoo model: from exec to the first 200 of /v2/health/ready
# (the model loaded, its costs predicted, its policy built), on a simulated GPU.
#   EALI_BIN=target/release/eali bash e2e/serve-startup.sh [GPU]
set -euo pipefail
bin="${EALI_BIN:-target/release/eali}"
gpu="${1:-v100-sxm2}"
models=$("$bin" models --json | python3 -c 'import json,sys; print(" ".join(r["name"] for r in json.load(sys.stdin)))')
port=18000
printf '%-14s %8s\n' model "ready s"
for m in $models; do
    port=$((port + 1))
    start=$(date +%s.%N)
    "$bin" serve --model "$m" --gpu "$gpu" --http "127.0.0.1:$port" --grpc none >/dev/null 2>&1 &
    pid=$!
    until curl -sf "http://127.0.0.1:$port/v2/health/ready" >/dev/null 2>&1; do
        kill -0 "$pid" 2>/dev/null || { echo "$m: eali serve exited" >&2; break; }
        sleep 0.02
    done
    end=$(date +%s.%N)
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    printf '%-14s %8.2f\n' "$m" "$(echo "$end - $start" | bc)"
done
