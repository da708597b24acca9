#!/usr/bin/env bash
# The overload table of issue #17: `eali serve` (ResNet-50 on the simulated V100, SLO p99 50 ms,
# default flags) against `eali load` at 1x, 2x and 5x its max-clock capacity (about 700 req/s),
# REST (hyper's client, and `--expect-continue`) and gRPC, then a 5x step followed by 350 req/s
# to see the recovery. Both processes run on this machine; for each row it prints the load
# report, both processes' CPU time and the server's request outcomes and mean batch.
#
#   cargo build --release && e2e/overload-table.sh > table.txt
#
# Env: EALI_BIN (default target/release/eali), DURATION (s per row, default 10).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${EALI_BIN:-target/release/eali}
DURATION=${DURATION:-10}
WORK=$(mktemp -d)
SERVER=""
stop() {
    if [ -n "$SERVER" ]; then
        kill "$SERVER" 2>/dev/null || true
        wait "$SERVER" 2>/dev/null || true
        SERVER=""
    fi
}
trap 'stop; rm -rf "$WORK"' EXIT

serve() {
    stop
    "$BIN" serve --model resnet50 --gpu v100 --slo-ms 50 > "$WORK/serve.log" 2>&1 &
    SERVER=$!
    for _ in $(seq 100); do
        # Ready, and the one started here (not another server holding the port).
        if curl -sf localhost:8000/readyz > /dev/null && kill -0 "$SERVER" 2>/dev/null; then
            return 0
        fi
        kill -0 "$SERVER" 2>/dev/null || break
        sleep 0.2
    done
    echo "eali serve did not become ready; its log:" >&2
    cat "$WORK/serve.log" >&2
    exit 1
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# row LABEL PROTOCOL RATE DURATION [eali load args...]
row() {
    local label=$1 proto=$2 rate=$3 dur=$4
    shift 4
    serve
    echo "=== $label"
    local url=()
    if [ "$proto" = grpc ]; then url=(--protocol grpc --url http://127.0.0.1:8001); fi
    local before
    before=$(cpu_ticks "$SERVER")
    # The load generator's memory is capped (8 GiB of address space): a client that buffers
    # every request it cannot send grows past what the machine has, and the row then reports
    # the generator's failure instead of the kernel killing whatever it picks.
    (
        ulimit -v $((8 << 20))
        /usr/bin/time -f "load cpu: user %U s, sys %S s, wall %e s, max RSS %M KB" \
            "$BIN" load --model resnet50 --rate "$rate" --duration "$dur" --slo-ms 50 "${url[@]}" "$@" 2>&1
    ) | grep -v '^SLO' || echo "(eali load failed)"
    echo "server cpu: $(( ($(cpu_ticks "$SERVER") - before) / $(getconf CLK_TCK) )) s"
    curl -s localhost:8000/metrics | grep -E '^eali_requests_total|^eali_batch_size_(sum|count)'
}

echo "# e2e/overload-table.sh at $(git rev-parse --short HEAD 2>/dev/null || echo '?'), $(nproc) cores, $(date -u +%FT%TZ)"
row "rest 700 (1x)" rest 700 "$DURATION"
row "rest 1400 (2x)" rest 1400 "$DURATION"
row "rest 3500 (5x)" rest 3500 "$DURATION"
row "rest 700 (1x) --expect-continue" rest 700 "$DURATION" --expect-continue
row "rest 1400 (2x) --expect-continue" rest 1400 "$DURATION" --expect-continue
row "rest 3500 (5x) --expect-continue" rest 3500 "$DURATION" --expect-continue
row "grpc 700 (1x)" grpc 700 "$DURATION"
row "grpc 1400 (2x)" grpc 1400 "$DURATION"
row "grpc 3500 (5x)" grpc 3500 "$DURATION"
# step:10,1,1:10 around a mean of 1400: 3500 req/s (5x) for 10 s, then 350 req/s for 20 s.
row "recovery: rest --expect-continue, 3500 req/s for 10 s then 350 req/s" rest 1400 30 \
    --expect-continue --workload step:10,1,1:10 --timeline
