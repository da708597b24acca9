#!/usr/bin/env bash
# Runs a real kubelet against a kube-apiserver with Kubernetes' fake container runtime
# (e2e/kubelet/fakecri, nothing is executed), plus an optional command beside it (the EALI agent),
# all in a private mount namespace where /var/lib/kubelet and /run/eali are bind mounts of
# directories under WORKDIR. The kubelet's device-plugin socket path is compiled in
# (/var/lib/kubelet/device-plugins/kubelet.sock) and it wipes that directory when it starts, so the
# bind mount keeps the test from touching the host's copy and lets tests run side by side.
#
# Usage: run-kubelet.sh WORKDIR KUBECONFIG NODE_NAME [-- COMMAND ARGS...]
# Needs root (mount namespace, bind mounts; the kubelet's container manager). Logs go to
# WORKDIR/{fakecri,kubelet,command}.log, the containers the kubelet created (with the env and mounts
# device plugins gave them) to WORKDIR/containers.jsonl. Runs until SIGTERM/SIGINT, then stops its
# children; SIGHUP restarts the kubelet.
# Binaries: $EALI_E2E_BIN (default e2e/.bin) holds kubelet and fakecri (e2e/build-control-plane.sh).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
bin="${EALI_E2E_BIN:-$here/../.bin}"

if [ $# -lt 3 ]; then
    echo "usage: $0 WORKDIR KUBECONFIG NODE_NAME [-- COMMAND ARGS...]" >&2
    exit 2
fi
work="$(mkdir -p "$1" && cd "$1" && pwd)"
kubeconfig="$2"
node="$3"
shift 3
[ "${1:-}" = "--" ] && shift

if [ "${EALI_KUBELET_NS:-}" != 1 ]; then
    [ "$(id -u)" = 0 ] || { echo "run-kubelet: needs root (mount namespace, kubelet)" >&2; exit 3; }
    for b in kubelet fakecri; do
        [ -x "$bin/$b" ] || { echo "run-kubelet: $bin/$b missing; run e2e/build-control-plane.sh" >&2; exit 3; }
    done
    # The mount points must exist on the host side; they stay empty there.
    mkdir -p /var/lib/kubelet /run/eali
    # Whoever started us (the test); if it dies without stopping us, we stop too.
    export EALI_KUBELET_PARENT="${EALI_KUBELET_PARENT:-$PPID}"
    EALI_KUBELET_NS=1 exec unshare --mount --propagation private -- "$0" "$work" "$kubeconfig" "$node" -- "$@"
fi

mkdir -p "$work/var-lib-kubelet" "$work/run-eali"
mount --bind "$work/var-lib-kubelet" /var/lib/kubelet
mount --bind "$work/run-eali" /run/eali

pids=()
kubelet_pid=
stop() {
    trap - TERM INT EXIT
    local all=("${pids[@]}" ${kubelet_pid:+"$kubelet_pid"})
    for p in "${all[@]}"; do kill "$p" 2>/dev/null || true; done
    sleep 1
    for p in "${all[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap 'stop; exit 0' TERM INT
trap stop EXIT

if [ -n "${EALI_KUBELET_PARENT:-}" ]; then
    me=$$
    (while kill -0 "$EALI_KUBELET_PARENT" 2>/dev/null; do sleep 1; done; kill -TERM "$me") &
    pids+=($!)
fi

# The kubelet's API port (loopback only); the test passes a free one in EALI_KUBELET_PORT.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

cri="unix://$work/cri.sock"
"$bin/fakecri" --endpoint "$cri" --record "$work/containers.jsonl" >"$work/fakecri.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do [ -S "$work/cri.sock" ] && break; sleep 0.1; done

# The shared KubeletConfiguration, without per-QoS cgroups (nothing runs on the fake runtime).
. "$here/kubelet-config.sh"
{
    kubelet_config "$cri" "${EALI_KUBELET_PORT:-$(free_port)}"
    echo "cgroupsPerQOS: false"
} >"$work/kubelet.yaml"

start_kubelet() {
    log_from=$(($(stat -c %s "$work/kubelet.log" 2>/dev/null || echo 0) + 1))
    "$bin/kubelet" --config="$work/kubelet.yaml" --kubeconfig="$kubeconfig" \
        --hostname-override="$node" --root-dir=/var/lib/kubelet \
        --cert-dir="$work/pki" -v="${EALI_KUBELET_V:-2}" >>"$work/kubelet.log" 2>&1 &
    kubelet_pid=$!
}
start_kubelet

if [ $# -gt 0 ]; then
    "$@" >"$work/command.log" 2>&1 &
    pids+=($!)
fi

# SIGHUP restarts the kubelet (as a node's kubelet restarts: it recreates its sockets and the
# device plugins must register again). Otherwise this ends when any child ends (the test reads
# the logs) or on SIGTERM/SIGINT.
restart=0
retries=0
trap 'restart=1' HUP
while true; do
    wait -n "${pids[@]}" "$kubelet_pid" || true
    # The kubelet sometimes dies at start-up renaming its pod-resources socket into place
    # ("invalid cross-device link" within one directory, a known kubelet race: k3s-io/k3s#4042).
    # That start is retried, a few times at most; any other exit ends the run as before.
    if [ $restart = 0 ] && [ $retries -lt 3 ] && ! kill -0 "$kubelet_pid" 2>/dev/null \
        && tail -c +"$log_from" "$work/kubelet.log" | grep -q "pod-resources/kubelet.sock: invalid cross-device link"; then
        retries=$((retries + 1))
        echo "run-kubelet: the kubelet hit the pod-resources socket race; starting it again" >>"$work/kubelet.log"
        start_kubelet
        echo "$kubelet_pid" >"$work/kubelet.pid"
        continue
    fi
    if [ $restart = 1 ]; then
        restart=0
        kill "$kubelet_pid" 2>/dev/null || true
        wait "$kubelet_pid" 2>/dev/null || true
        echo "run-kubelet: restarting the kubelet" >>"$work/kubelet.log"
        start_kubelet
        echo "$kubelet_pid" >"$work/kubelet.pid"
        continue
    fi
    break
done
echo "run-kubelet: a child exited; stopping" >&2
