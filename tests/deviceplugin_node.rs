//! The node runtime `eali agent --device-plugin` starts, against the kubelet stand-in: it
//! registers, advertises every GPU, serves a control socket at exactly the path Allocate hands
//! the pod, refuses a caller outside any pod (this test process, read from the real /proc),
//! and on shutdown removes its sockets.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::sync::{Arc, Mutex};
use std::time::Duration;

use eali::control::{Authorizer, ControlClient, ControlError, NodeConfig, StaticPodDirectory};
use eali::deviceplugin::harness::{FakeKubelet, KubeletEvent};
use eali::deviceplugin::{AllocateConfig, PluginConfig, SharedGpu, proto};
use eali::gpu::GpuError;
use eali::gpu::clockguard::{ClockGuard, ClockResetter, LockEntry};
use eali::gpu::sim::{GpuProfile, SimGpu};

struct NoLocks;

impl ClockResetter for NoLocks {
    fn reset(&self, _: &LockEntry) -> Result<(), GpuError> {
        Ok(())
    }
    fn all_gpus(&self) -> Result<Vec<LockEntry>, GpuError> {
        Ok(Vec::new())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_registers_serves_control_sockets_and_cleans_up() {
    let dir = std::env::temp_dir().join(format!("eali-node-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let mut kubelet = FakeKubelet::start(&dir).await.expect("kubelet");

    let profile = GpuProfile::builtin("t4").expect("profile");
    let gpus: Vec<SharedGpu> = (0..2)
        .map(|i| Arc::new(Mutex::new(SimGpu::new(profile.clone(), i, 5))) as SharedGpu)
        .collect();
    let uuids: Vec<String> = gpus
        .iter()
        .map(|g| g.lock().unwrap().info().uuid.clone())
        .collect();
    let (guard, _) = ClockGuard::start(&dir.join("locks.json"), Arc::new(NoLocks)).expect("guard");
    let authz = Authorizer::new(Arc::new(StaticPodDirectory::default()))
        .with_pod_resources_socket(dir.join("no-pod-resources.sock"));
    let control = dir.join("control");
    let cfg = NodeConfig {
        plugin: PluginConfig {
            plugin_dir: dir.clone(),
            ..PluginConfig::default()
        },
        alloc: AllocateConfig {
            host_control_root: control.clone(),
            // No container here: the pod sees the host path.
            container_control_root: control.clone(),
            cdi_kind: None,
        },
        health_every: Duration::from_millis(100),
        ..NodeConfig::default()
    };
    let (stop, mut stop_rx) = tokio::sync::watch::channel(false);
    let node = tokio::spawn(eali::control::run_node(
        cfg,
        gpus,
        guard,
        Arc::new(authz),
        None,
        async move {
            let _ = stop_rx.wait_for(|s| *s).await.map(|_| ());
        },
    ));

    let list = kubelet
        .wait_for(Duration::from_secs(5), |e| match e {
            KubeletEvent::Devices { devices, .. } => Some(devices.clone()),
            _ => None,
        })
        .await
        .expect("devices advertised");
    let ids: Vec<String> = list.iter().map(|d| d.id.clone()).collect();
    assert_eq!(ids, uuids);

    let mut client = kubelet.plugin_client().await.expect("plugin client");
    let resp = client
        .allocate(proto::AllocateRequest {
            container_requests: vec![proto::ContainerAllocateRequest {
                devices_ids: vec![uuids[1].clone()],
            }],
        })
        .await
        .expect("allocate")
        .into_inner();
    let socket = resp.container_responses[0]
        .envs
        .get("EALI_CONTROL_SOCKET")
        .cloned()
        .expect("socket env");
    assert!(std::path::Path::new(&socket).exists(), "{socket} is served");

    let mut ctl = ControlClient::connect(std::path::Path::new(&socket), &uuids[1])
        .await
        .expect("connect");
    match ctl.status().await {
        Err(ControlError::Rpc(s)) => {
            assert_eq!(s.code(), tonic::Code::PermissionDenied);
            println!("caller outside any pod: {}", s.message());
        }
        other => panic!("expected PERMISSION_DENIED, got {other:?}"),
    }

    let _ = stop.send(true);
    let r = tokio::time::timeout(Duration::from_secs(5), node)
        .await
        .expect("node stops")
        .expect("joins");
    assert!(r.is_ok(), "{r:?}");
    assert!(
        !std::path::Path::new(&socket).exists(),
        "control socket removed"
    );
    assert!(!dir.join("eali-gpu.sock").exists(), "plugin socket removed");
    let _ = std::fs::remove_dir_all(&dir);
}
