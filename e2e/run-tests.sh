#!/usr/bin/env bash
# Runs every test of the project (the README's test command). First it builds what the tests
# need, each step cached: the real Kubernetes control plane and node (containerd) from the Go
# module proxy, the stand-in libnvidia-ml, the container images, and a Python environment with the
# real tritonclient; then the Rust test suites (the real-node test among them) and the
# tritonclient/curl tests against `eali serve`.
set -euo pipefail
cd "$(dirname "$0")/.."
# Each step prints its title; the previous step's duration is printed when the next starts
# and at exit.
STEP_T0=$(date +%s); STEP_NAME=""
step_done() { [ -n "$STEP_NAME" ] && printf '<== %s: %ss\n' "$STEP_NAME" "$(( $(date +%s) - STEP_T0 ))"; STEP_NAME=""; }
step() { step_done; STEP_NAME="$*"; STEP_T0=$(date +%s); printf '\n==> %s\n' "$*"; }
trap 'step_done' EXIT

step "real Kubernetes control plane for the k8s_* tests (cached binaries unless versions changed)"
bash e2e/build-control-plane.sh
# The k8s_* tests fail instead of skipping when the binaries are missing.
export EALI_E2E_REQUIRE=1

step "stand-in libnvidia-ml for the nvml_* tests (e2e/nvml-standin)"
cargo build --release --locked -p nvml-standin

step "container images: eali (release binary + its shared libraries) and pause, as OCI archives (e2e/image/build.sh)"
cargo build --release --locked --bin eali
bash e2e/image/build.sh

step "Python tritonclient, onnx, onnxruntime, pytest and curl for the serving tests (installed once)"
command -v curl >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq curl; }
PY=target/py/bin/python
if ! "$PY" -c "import tritonclient.http, tritonclient.grpc, numpy, pytest, onnx, onnxruntime" >/dev/null 2>&1; then
  command -v python3 >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq python3; }
  python3 -m venv target/py 2>/dev/null || { apt-get update -qq && apt-get install -y -qq python3-venv && python3 -m venv target/py; }
  "$PY" -m pip install -q --disable-pip-version-check "tritonclient[http,grpc]" numpy pytest onnx onnxruntime
fi

step "Rust tests"
cargo test --release --locked --workspace

step "tritonclient (HTTP, gRPC) and curl against eali serve; ONNX models against onnxruntime"
cargo build --release --locked --bin eali
EALI_BIN=target/release/eali "$PY" -m pytest -q tests/python
