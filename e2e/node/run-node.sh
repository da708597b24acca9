#!/usr/bin/env bash
# Runs a real Kubernetes node for the end-to-end tests: containerd (with its CRI plugin, runc and
# the CNI bridge) and the kubelet on it, registered with a kube-apiserver, in a private mount
# namespace where the node's fixed paths (/var/lib/kubelet, /run/eali, /var/lib/cni, /var/log/pods)
# are bind mounts of directories under WORKDIR. Containers really run: the images named in
# IMAGES (OCI archives, e2e/image/build.sh) are imported into containerd before the kubelet
# starts, and pods get their own network namespace on a bridge of their own (NODE_BRIDGE, subnet
# NODE_POD_CIDR), reachable from the host by pod IP; nothing leaves the machine.
#
# Usage: run-node.sh WORKDIR KUBECONFIG NODE_NAME IMAGE_ARCHIVE...
# Environment: EALI_E2E_BIN (kubelet, containerd, containerd-shim-runc-v2, ctr; default e2e/.bin),
# EALI_KUBELET_PORT, EALI_NODE_LABELS (kubelet --node-labels), EALI_NODE_BRIDGE (default eali-e2e0),
# EALI_NODE_POD_CIDR (default 10.233.0.0/24), EALI_SANDBOX_IMAGE (the pause image's name),
# EALI_NODE_CGROUP_ROOT (the kubelet's cgroupRoot, default eali-e2e), EALI_RUNC (runc binary).
# One node at a time per bridge and cgroup root: a start stops what an earlier run left there.
# Needs root, runc and the CNI plugins (Debian: runc, containernetworking-plugins).
# Logs: WORKDIR/{containerd,kubelet}.log. Runs until SIGTERM/SIGINT or until the process that
# started it dies, then stops the kubelet, every pod's containers and containerd.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
bin="${EALI_E2E_BIN:-$here/../.bin}"
cni_bin="${EALI_CNI_BIN:-/usr/lib/cni}"
bridge="${EALI_NODE_BRIDGE:-eali-e2e0}"
pod_cidr="${EALI_NODE_POD_CIDR:-10.233.0.0/24}"
sandbox="${EALI_SANDBOX_IMAGE:-localhost/eali-e2e/pause:1}"

if [ $# -lt 3 ]; then
    echo "usage: $0 WORKDIR KUBECONFIG NODE_NAME [IMAGE_ARCHIVE...]" >&2
    exit 2
fi
work="$(mkdir -p "$1" && cd "$1" && pwd)"
kubeconfig="$2"
node="$3"
shift 3

if [ "${EALI_NODE_NS:-}" != 1 ]; then
    [ "$(id -u)" = 0 ] || { echo "run-node: needs root (mount namespace, containerd, kubelet)" >&2; exit 3; }
    for b in kubelet containerd containerd-shim-runc-v2 ctr; do
        [ -x "$bin/$b" ] || { echo "run-node: $bin/$b missing; run e2e/build-control-plane.sh" >&2; exit 3; }
    done
    command -v runc >/dev/null || { echo "run-node: runc missing (apt-get install runc)" >&2; exit 3; }
    [ -x "$cni_bin/bridge" ] || { echo "run-node: CNI plugins missing in $cni_bin (apt-get install containernetworking-plugins)" >&2; exit 3; }
    mkdir -p /var/lib/kubelet /run/eali /var/lib/cni /var/log/pods
    export EALI_NODE_PARENT="${EALI_NODE_PARENT:-$PPID}"
    EALI_NODE_NS=1 exec unshare --mount --propagation private -- "$0" "$work" "$kubeconfig" "$node" "$@"
fi

for d in var-lib-kubelet run-eali var-lib-cni pod-logs containerd/root containerd/state cni/net.d; do
    mkdir -p "$work/$d"
done
mount --bind "$work/var-lib-kubelet" /var/lib/kubelet
# Volumes the kubelet mounts under /var/lib/kubelet must reach containerd's mounts: same
# namespace, and shared so a later mount under a pod's directory propagates.
mount --make-rshared /var/lib/kubelet
mount --bind "$work/run-eali" /run/eali
mount --bind "$work/var-lib-cni" /var/lib/cni
mount --bind "$work/pod-logs" /var/log/pods

containerd_pid=
kubelet_pid=
watch_pid=
sock="$work/containerd.sock"
ctr() { "$bin/ctr" --address "$sock" -n k8s.io "$@"; }

# The pods' cgroups live under a root of this harness (the kubelet's cgroupRoot), so every
# process a run left behind (its containers, whatever killed the run) can be found and stopped,
# and nothing else on the host is touched.
cg_root="${EALI_NODE_CGROUP_ROOT:-eali-e2e}"
cg_dirs() {
    if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
        echo "/sys/fs/cgroup/$cg_root"
    else
        for c in /sys/fs/cgroup/*/; do
            [ -f "$c/cgroup.procs" ] && [ "$(basename "$c")" != unified ] && echo "$c$cg_root"
        done
    fi
}
make_cgroup_root() {
    local d
    for d in $(cg_dirs); do
        mkdir -p "$d"
        # A new cpuset cgroup starts with no CPUs or memory nodes; give it its parent's.
        if [ -f "$d/cpuset.cpus" ]; then
            cat "$(dirname "$d")/cpuset.cpus" >"$d/cpuset.cpus"
            cat "$(dirname "$d")/cpuset.mems" >"$d/cpuset.mems"
        fi
    done
}
# Kills every process in the harness's cgroups and the shims of containerds that are gone.
reap() {
    local d f
    for _ in 1 2 3; do
        for d in $(cg_dirs); do
            [ -d "$d" ] || continue
            find "$d" -name cgroup.procs 2>/dev/null | while read -r f; do
                xargs -r kill -9 <"$f" 2>/dev/null || true
            done
        done
        sleep 0.2
    done
    { pgrep -f "containerd-shim-runc-v2 -namespace k8s.io -id" || true; } | while read -r p; do
        a="$(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null | sed -n 's/.*-address \([^ ]*\).*/\1/p')"
        [ -n "$a" ] && [ ! -S "${a#unix://}" ] && kill -9 "$p" 2>/dev/null
    done
    true
}

stop() {
    trap - TERM INT EXIT
    set +e  # every step is best effort; one failing must not skip the rest
    [ -n "$watch_pid" ] && kill "$watch_pid" 2>/dev/null
    # The kubelet first (it would restart what is killed), then every container, containerd,
    # the shims and the bridge; quick, so a test that stops the node is not kept waiting.
    [ -n "$kubelet_pid" ] && kill -9 "$kubelet_pid" 2>/dev/null
    reap
    [ -n "$containerd_pid" ] && kill -9 "$containerd_pid" 2>/dev/null
    pkill -9 -f "containerd-shim-runc-v2 .*-address .*$work" 2>/dev/null
    ip link del "$bridge" 2>/dev/null
    for d in $(cg_dirs); do find "$d" -depth -type d -exec rmdir {} + 2>/dev/null; done
    wait 2>/dev/null
    true
}
trap 'stop; exit 0' TERM INT
trap stop EXIT

if [ -n "${EALI_NODE_PARENT:-}" ]; then
    me=$$
    (while kill -0 "$EALI_NODE_PARENT" 2>/dev/null; do sleep 1; done; kill -TERM "$me") &
    watch_pid=$!
fi

# The bridge, made before the kubelet starts: its gateway address is the node's IP (the kubelet
# refuses a loopback node IP), where host-network pods listen and the host reaches pod IPs.
read -r gateway prefix < <(python3 -c 'import ipaddress,sys; n=ipaddress.ip_network(sys.argv[1]); print(next(n.hosts()), n.prefixlen)' "$pod_cidr")
reap  # what an earlier run that was killed outright left behind
ip link del "$bridge" 2>/dev/null || true
ip link add "$bridge" type bridge
ip addr add "$gateway/$prefix" dev "$bridge"
ip link set "$bridge" up
make_cgroup_root
echo "$gateway" >"$work/node-ip"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# One bridge network for the pods; the gateway address on the bridge gives the host (kubelet
# probes, the test's clients) a route to every pod IP.
cat >"$work/cni/net.d/10-eali-e2e.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "eali-e2e",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$bridge",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "$pod_cidr"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": "$work/var-lib-cni/networks"
      }
    }
  ]
}
EOF

# containerd 2.x configuration (version 3): everything under WORKDIR, overlayfs snapshots, runc
# with cgroupfs (the kubelet's driver below), the locally built pause image as the sandbox image.
cat >"$work/containerd.toml" <<EOF
version = 3
root = "$work/containerd/root"
state = "$work/containerd/state"

[grpc]
  address = "$sock"

[ttrpc]
  address = "$sock.ttrpc"

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "$sandbox"

[plugins."io.containerd.cri.v1.runtime"]
  enable_selinux = false
  # The kubelet asks -998 for every pod sandbox; lowering an OOM score needs CAP_SYS_RESOURCE,
  # which sandboxed CI VMs may not give even to root (runc then fails with "failed to update
  # /proc/self/oom_score_adj"). Scores are clamped at containerd's own instead.
  restrict_oom_score_adj = true
  disable_hugetlb_controller = true
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = "${EALI_RUNC:-$(command -v runc)}"
        SystemdCgroup = false
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["$cni_bin"]
    conf_dir = "$work/cni/net.d"
    max_conf_num = 1

[plugins."io.containerd.grpc.v1.cri"]
  disable_tcp_service = true
EOF

PATH="$bin:$PATH" "$bin/containerd" --config "$work/containerd.toml" >"$work/containerd.log" 2>&1 &
containerd_pid=$!
for _ in $(seq 100); do
    [ -S "$sock" ] && ctr version >/dev/null 2>&1 && break
    kill -0 "$containerd_pid" 2>/dev/null || { echo "run-node: containerd exited; see $work/containerd.log" >&2; exit 4; }
    sleep 0.1
done

# Images the pods run; imported, never pulled (no registry is reachable).
for archive in "$@"; do
    ctr images import --snapshotter overlayfs --digests "$archive" >>"$work/images.log" 2>&1 \
        || { echo "run-node: importing $archive failed; see $work/images.log" >&2; exit 4; }
done
# A registry pull also names an image by its digest; the CRI resolves `repo@sha256:...` (the
# chart's image.digest) only through such a name, so each imported image gets one.
ctr images ls 2>/dev/null | awk 'NR > 1 && $1 !~ /^sha256:/ && $1 !~ /@/ {print $1, $3}' |
    while read -r ref digest; do
        ctr images tag --force "$ref" "${ref%:*}@$digest" >>"$work/images.log" 2>&1
    done
ctr images ls -q >>"$work/images.log" 2>&1 || true

# The shared KubeletConfiguration (e2e/kubelet/kubelet-config.sh) on containerd, with per-QoS
# cgroups under the harness's root: the agent identifies control-socket callers by their
# .../kubepods/.../pod<uid>/... cgroup.
. "$here/../kubelet/kubelet-config.sh"
{
    kubelet_config "unix://$sock" "${EALI_KUBELET_PORT:-$(free_port)}"
    echo "cgroupsPerQOS: true"
    echo "cgroupRoot: /$cg_root"
    echo "podLogsDir: /var/log/pods"
    echo "serializeImagePulls: false"
} >"$work/kubelet.yaml"

start_kubelet() {
    "$bin/kubelet" --config="$work/kubelet.yaml" --kubeconfig="$kubeconfig" \
        --hostname-override="$node" --node-ip="$gateway" --root-dir=/var/lib/kubelet \
        ${EALI_NODE_LABELS:+--node-labels="$EALI_NODE_LABELS"} \
        --cert-dir="$work/pki" -v="${EALI_KUBELET_V:-2}" >>"$work/kubelet.log" 2>&1 &
    kubelet_pid=$!
    echo "$kubelet_pid" >"$work/kubelet.pid"
}
start_kubelet

# Ends when containerd or the kubelet ends (the test reads the logs), or on SIGTERM/SIGINT.
# The kubelet's start-up race on its pod-resources socket (k3s-io/k3s#4042) is retried.
retries=0
while true; do
    wait -n "$containerd_pid" "$kubelet_pid" || true
    if kill -0 "$containerd_pid" 2>/dev/null && [ $retries -lt 3 ] && ! kill -0 "$kubelet_pid" 2>/dev/null \
        && grep -q "pod-resources/kubelet.sock: invalid cross-device link" "$work/kubelet.log"; then
        retries=$((retries + 1))
        echo "run-node: the kubelet hit the pod-resources socket race; starting it again" >>"$work/kubelet.log"
        start_kubelet
        continue
    fi
    break
done
echo "run-node: containerd or the kubelet exited; stopping" >&2
