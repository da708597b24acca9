# Sourced by e2e/kubelet/run-kubelet.sh (fake runtime) and e2e/node/run-node.sh (containerd):
# the KubeletConfiguration both test nodes share. Callers append what differs (cgroups, log dir).
#
# kubelet_config CRI_ENDPOINT PORT: cgroupfs, no eviction (CI disks are often fuller than the
# default thresholds), no swap or local-storage checks, anonymous/AlwaysAllow on a loopback port
# (test only), fast status updates.
kubelet_config() {
    cat <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
containerRuntimeEndpoint: $1
cgroupDriver: cgroupfs
enforceNodeAllocatable: []
failSwapOn: false
failCgroupV1: false
localStorageCapacityIsolation: false
protectKernelDefaults: false
evictionHard: {}
evictionSoft: {}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
resolvConf: ""
readOnlyPort: 0
healthzPort: 0
port: $2
address: 127.0.0.1
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization: {mode: AlwaysAllow}
registerNode: true
nodeStatusUpdateFrequency: 2s
nodeStatusReportFrequency: 2s
syncFrequency: 5s
EOF
}
