#!/usr/bin/env bash
# Runs every test of the project: builds what the tests need first (the real Kubernetes control
# plane from the Go module proxy, cached; the stand-in libnvidia-ml), then the Rust test suites.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "==> control plane for the k8s_* tests (cached binaries unless versions changed)"
bash e2e/build-control-plane.sh
# The k8s_* tests fail instead of skipping when the binaries are missing.
export EALI_E2E_REQUIRE=1

echo "==> stand-in libnvidia-ml for the nvml_* tests"
cargo build --release --locked -p nvml-standin

echo "==> tests"
cargo test --release --locked --workspace
