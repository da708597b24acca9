#!/usr/bin/env bash
# Read-only check of the real GPUs of this machine through NVML: `eali gpu check` prints the
# inventory, supported clocks, power and energy readings idle and under a load, the energy
# counter's step, and the agreement between the counter and integrated power.
#
# It changes nothing: no clocks, power limits, persistence or compute modes (safe on a shared
# GPU). The load, if any, is an ordinary CUDA program run as this user.
#
#   e2e/gpu-check.sh                  # idle readings; a PyTorch matmul load if torch is installed
#   LOAD_CMD='./my-cuda-bench' e2e/gpu-check.sh
#   IDLE_SECS=3 LOAD_SECS=10 e2e/gpu-check.sh --json
set -euo pipefail
cd "$(dirname "$0")/.."

IDLE_SECS="${IDLE_SECS:-3}"
LOAD_SECS="${LOAD_SECS:-8}"

if ! command -v nvidia-smi >/dev/null 2>&1 && ! ldconfig -p 2>/dev/null | grep -q libnvidia-ml; then
  echo "no NVIDIA driver here (no nvidia-smi, no libnvidia-ml): nothing to check" >&2
  exit 2
fi

if [ -x target/release/eali ] && [ target/release/eali -nt Cargo.toml ]; then
  EALI=target/release/eali
else
  echo "==> building eali (release)" >&2
  cargo build --release --bin eali ${CARGO_OFFLINE:+--offline} >&2
  EALI=target/release/eali
fi

if [ -z "${LOAD_CMD:-}" ] && python3 -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  # A dense FP32 matmul loop on GPU 0, stopped by the check after LOAD_SECS.
  LOAD_CMD="python3 -c 'import torch
a=torch.randn(8192,8192,device=\"cuda\"); b=torch.randn(8192,8192,device=\"cuda\")
while True:
    c=a@b; torch.cuda.synchronize()'"
fi

args=(gpu check --idle-secs "$IDLE_SECS" --load-secs "$LOAD_SECS")
if [ -n "${LOAD_CMD:-}" ]; then
  args+=(--load-cmd "$LOAD_CMD")
else
  echo "note: no load (set LOAD_CMD, or install PyTorch with CUDA): idle readings only" >&2
fi

if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=index,name,driver_version,clocks.sm,clocks.max.sm,power.draw,power.limit,persistence_mode \
    --format=csv 2>/dev/null || true
fi
exec "$EALI" "${args[@]}" "$@"
