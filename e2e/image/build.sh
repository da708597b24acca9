#!/usr/bin/env bash
# Builds the container images of EALI without a container engine or daemon, as OCI image
# layouts written by e2e/image/build-image.py (Python 3 standard library only):
#   - docker.io/eali/eali:<Cargo.toml version> from ${EALI_BIN:-target/release/eali}, its shared
#     libraries (ldd) and the host's CA bundle (`eali serve` fetches models over HTTPS);
#   - localhost/eali-e2e/pause:1, the pod sandbox image, from e2e/image/pause (static Go).
# Outputs under ${EALI_IMAGE_OUT:-target/image}/: <name>-oci/ (layout), <name>.oci.tar (for
# `ctr -n k8s.io images import FILE`), <name>.digest; prints each image's digest and size.
# The images are reproducible: the same inputs give the same digests (SOURCE_DATE_EPOCH sets the
# file times, 0 by default). Needs go and python3; run from anywhere.
# Environment: EALI_BIN (agent binary), EALI_IMAGE (repository, default docker.io/eali/eali),
# EALI_IMAGE_TAG (default: the Cargo.toml version).
set -euo pipefail
cd "$(dirname "$0")/../.."

out="${EALI_IMAGE_OUT:-target/image}"
eali_bin="${EALI_BIN:-target/release/eali}"
mkdir -p "$out"

command -v go >/dev/null || { echo "build.sh: go not found (needed for the pause binary)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "build.sh: python3 not found" >&2; exit 1; }
[ -f "$eali_bin" ] || { echo "build.sh: $eali_bin missing: cargo build --release --locked --bin eali (or set EALI_BIN)" >&2; exit 1; }

echo "== pause binary ($out/pause)"
(cd e2e/image/pause && CGO_ENABLED=0 GOFLAGS=-buildvcs=false go build -trimpath -ldflags '-s -w' -o "$(cd ../../.. && realpath -m "$out")/pause" .)

eali_args=(--binary "$eali_bin" --out "$out")
[ -n "${EALI_IMAGE:-}" ] && eali_args+=(--name "$EALI_IMAGE")
[ -n "${EALI_IMAGE_TAG:-}" ] && eali_args+=(--tag "$EALI_IMAGE_TAG")
ca=/etc/ssl/certs/ca-certificates.crt
if [ -f "$ca" ]; then
    eali_args+=(--extra "$ca:$ca")
else
    echo "build.sh: warning: no $ca on this host; the image gets no CA bundle" >&2
fi

echo "== eali image"
python3 e2e/image/build-image.py "${eali_args[@]}"

echo "== pause image"
python3 e2e/image/build-image.py --binary "$out/pause" --name localhost/eali-e2e/pause --tag 1 \
    --entrypoint /pause --out "$out"

echo "== summary"
eali_base="$(basename "${EALI_IMAGE:-eali}")"
for base in "$eali_base" pause; do
    printf '%-6s %s  %s (%s bytes)\n' "$base" "$(cat "$out/$base.digest")" "$out/$base.oci.tar" \
        "$(stat -c %s "$out/$base.oci.tar")"
done
