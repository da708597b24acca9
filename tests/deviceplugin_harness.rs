//! The device plugin against a kubelet stand-in that speaks the v1beta1 API as the kubelet does
//! (`eali::deviceplugin::harness`): registration, ListAndWatch health changes and recovery,
//! Allocate and GetPreferredAllocation, re-registration after kubelet restarts and dropped
//! streams, socket removal on shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eali::deviceplugin::harness::{FakeKubelet, KubeletEvent};
use eali::deviceplugin::proto;
use eali::deviceplugin::{
    AllocateConfig, DevicePluginRunner, DeviceTable, Health, HealthMonitor, HealthPolicy,
    PluginConfig, PluginDevice, SharedGpu,
};
use eali::gpu::GpuBackend;
use eali::gpu::sim::{Fault, GpuProfile, SimGpu};
use tokio::sync::watch;

/// A fresh directory (short path: Unix socket paths are limited to 108 bytes).
fn temp_dir() -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let d = std::env::temp_dir().join(format!(
        "eali-dp-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

fn config(dir: &std::path::Path) -> PluginConfig {
    PluginConfig {
        plugin_dir: dir.to_path_buf(),
        watch_every: Duration::from_millis(20),
        backoff_initial: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        stream_drop_grace: Duration::from_millis(300),
        ..PluginConfig::default()
    }
}

fn alloc_config(dir: &std::path::Path) -> AllocateConfig {
    AllocateConfig {
        host_control_root: dir.join("control"),
        container_control_root: PathBuf::from("/run/eali"),
        cdi_kind: None,
    }
}

fn dev(uuid: &str, numa: u32, model: &str) -> PluginDevice {
    PluginDevice {
        uuid: uuid.into(),
        model: model.into(),
        numa_node: Some(numa),
        health: Health::Healthy,
    }
}

struct Plugin {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), eali::deviceplugin::DevicePluginError>>,
    stats: watch::Receiver<eali::deviceplugin::RunnerStats>,
}

fn start_plugin(cfg: PluginConfig, table: DeviceTable, alloc: AllocateConfig) -> Plugin {
    let runner = DevicePluginRunner::new(cfg, table, alloc);
    let stats = runner.stats();
    let (stop, mut rx) = watch::channel(false);
    let task = tokio::spawn(runner.run(async move {
        let _ = rx.wait_for(|s| *s).await.map(|_| ());
    }));
    Plugin { stop, task, stats }
}

impl Plugin {
    async fn shutdown(self) {
        let _ = self.stop.send(true);
        let r = tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("plugin stops within 5 s")
            .expect("task joins");
        assert!(r.is_ok(), "{r:?}");
    }
}

async fn registered(k: &mut FakeKubelet, within: Duration) -> (proto::RegisterRequest, Instant) {
    k.wait_for(within, |e| match e {
        KubeletEvent::Registered { request, at, .. } => Some((request.clone(), *at)),
        _ => None,
    })
    .await
    .expect("the plugin registers")
}

async fn devices(k: &mut FakeKubelet, within: Duration) -> (Vec<proto::Device>, Instant) {
    k.wait_for(within, |e| match e {
        KubeletEvent::Devices { devices, at } => Some((devices.clone(), *at)),
        _ => None,
    })
    .await
    .expect("a device list arrives")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registers_with_consistent_options_and_advertises_gpus_with_numa() {
    let dir = temp_dir();
    let mut kubelet = FakeKubelet::start(&dir).await.expect("kubelet");
    let table = DeviceTable::new(vec![dev("GPU-a", 0, "H100"), dev("GPU-b", 1, "H100")]);
    let plugin = start_plugin(config(&dir), table, alloc_config(&dir));

    let ev = kubelet
        .wait_for(Duration::from_secs(5), |e| match e {
            KubeletEvent::Registered {
                request, options, ..
            } => Some((request.clone(), *options)),
            _ => None,
        })
        .await
        .expect("registration");
    let (req, options) = ev;
    assert_eq!(req.version, "v1beta1");
    assert_eq!(req.resource_name, "eali.dev/gpu");
    assert_eq!(req.endpoint, "eali-gpu.sock", "a file name, not a path");
    assert_eq!(
        req.options, options,
        "Register and GetDevicePluginOptions agree"
    );
    assert_eq!(
        options.map(|o| o.get_preferred_allocation_available),
        Some(true)
    );

    let (list, _) = devices(&mut kubelet, Duration::from_secs(5)).await;
    let got: Vec<_> = list
        .iter()
        .map(|d| {
            let numa = d
                .topology
                .as_ref()
                .map(|t| t.nodes.iter().map(|n| n.id).collect::<Vec<_>>());
            (d.id.as_str(), d.health.as_str(), numa)
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("GPU-a", "Healthy", Some(vec![0])),
            ("GPU-b", "Healthy", Some(vec![1]))
        ]
    );
    assert!(dir.join("eali-gpu.sock").exists());
    plugin.shutdown().await;
    assert!(
        !dir.join("eali-gpu.sock").exists(),
        "socket removed on shutdown"
    );
    // Stopping advertises an empty list before the stream ends.
    let (last, _) = devices(&mut kubelet, Duration::from_secs(2)).await;
    assert!(last.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_retries_until_the_kubelet_appears() {
    let dir = temp_dir();
    let table = DeviceTable::new(vec![dev("GPU-a", 0, "H100")]);
    let plugin = start_plugin(config(&dir), table, alloc_config(&dir));
    let mut stats = plugin.stats.clone();
    stats
        .wait_for(|s| s.failed_attempts >= 3)
        .await
        .expect("stats");
    let mut kubelet = FakeKubelet::start(&dir).await.expect("kubelet");
    registered(&mut kubelet, Duration::from_secs(2)).await;
    // The kubelet sees the Register call before the plugin has counted its reply.
    tokio::time::timeout(
        Duration::from_secs(2),
        stats.wait_for(|s| s.registrations >= 1),
    )
    .await
    .expect("registration counted within 2 s")
    .expect("stats");
    assert_eq!(plugin.stats.borrow().registrations, 1);
    plugin.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_change_reaches_list_and_watch_within_a_second_and_recovers() {
    let dir = temp_dir();
    let mut kubelet = FakeKubelet::start(&dir).await.expect("kubelet");
    let profile = GpuProfile::builtin("v100-sxm2").expect("profile");
    let sims: Vec<Arc<Mutex<SimGpu>>> = (0..2)
        .map(|i| Arc::new(Mutex::new(SimGpu::new(profile.clone(), i, 11))))
        .collect();
    let devs: Vec<PluginDevice> = sims
        .iter()
        .map(|g| PluginDevice::from_info(g.lock().unwrap().info()))
        .collect();
    let victim = devs[1].uuid.clone();
    let table = DeviceTable::new(devs);
    let shared: Vec<SharedGpu> = sims.iter().map(|g| g.clone() as SharedGpu).collect();
    let policy = HealthPolicy {
        recovery_quiet: Duration::from_millis(400),
        ..HealthPolicy::default()
    };
    let monitor = HealthMonitor::new(table.clone(), shared, policy);
    let (stop_mon, mut stop_rx) = watch::channel(false);
    let mon = tokio::spawn(monitor.run(Duration::from_millis(50), async move {
        let _ = stop_rx.wait_for(|s| *s).await.map(|_| ());
    }));
    let plugin = start_plugin(config(&dir), table, alloc_config(&dir));
    registered(&mut kubelet, Duration::from_secs(5)).await;
    let (first, _) = devices(&mut kubelet, Duration::from_secs(5)).await;
    assert!(first.iter().all(|d| d.health == "Healthy"));

    // An application XID changes nothing; a double-bit ECC error does.
    sims[1].lock().unwrap().inject_fault(Fault::Xid(43));
    let injected = Instant::now();
    sims[1].lock().unwrap().inject_fault(Fault::DoubleBitEcc);
    let (list, at) = devices(&mut kubelet, Duration::from_secs(1)).await;
    let seen = at.duration_since(injected);
    let health = |l: &[proto::Device], id: &str| {
        l.iter()
            .find(|d| d.id == id)
            .map(|d| d.health.clone())
            .unwrap_or_default()
    };
    assert_eq!(health(&list, &victim), "Unhealthy");
    assert_eq!(list.len(), 2, "ListAndWatch sends the full list");
    println!("unhealthy seen by ListAndWatch after {seen:?}");
    assert!(seen < Duration::from_secs(1));

    let (list, at) = devices(&mut kubelet, Duration::from_secs(3)).await;
    assert_eq!(health(&list, &victim), "Healthy");
    println!(
        "healthy again after {:?} (quiet period 400 ms)",
        at.duration_since(injected)
    );

    // Allocate refuses the GPU while it is Unhealthy.
    sims[1].lock().unwrap().inject_fault(Fault::Lost);
    let (list, _) = devices(&mut kubelet, Duration::from_secs(1)).await;
    assert_eq!(health(&list, &victim), "Unhealthy");
    let mut client = kubelet.plugin_client().await.expect("client");
    let err = client
        .allocate(proto::AllocateRequest {
            container_requests: vec![proto::ContainerAllocateRequest {
                devices_ids: vec![victim.clone()],
            }],
        })
        .await
        .expect_err("unhealthy device refused");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    sims[1].lock().unwrap().clear_faults();
    let (list, _) = devices(&mut kubelet, Duration::from_secs(2)).await;
    assert_eq!(health(&list, &victim), "Healthy");

    let _ = stop_mon.send(true);
    mon.await.expect("monitor");
    plugin.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allocate_and_preferred_allocation_contents() {
    let dir = temp_dir();
    let mut kubelet = FakeKubelet::start(&dir).await.expect("kubelet");
    let table = DeviceTable::new(vec![
        dev("GPU-a0", 0, "H100"),
        dev("GPU-a1", 0, "H100"),
        dev("GPU-b0", 1, "H100"),
        dev("GPU-b1", 1, "H100"),
        dev("GPU-b2", 1, "H100"),
        dev("GPU-c0", 1, "A100"),
    ]);
    let alloc = alloc_config(&dir);
    let plugin = start_plugin(config(&dir), table, alloc.clone());
    registered(&mut kubelet, Duration::from_secs(5)).await;
    let mut client = kubelet.plugin_client().await.expect("client");

    let resp = client
        .allocate(proto::AllocateRequest {
            container_requests: vec![proto::ContainerAllocateRequest {
                devices_ids: vec!["GPU-b1".into()],
            }],
        })
        .await
        .expect("allocate")
        .into_inner();
    assert_eq!(resp.container_responses.len(), 1);
    let c = &resp.container_responses[0];
    assert_eq!(
        c.envs.get("NVIDIA_VISIBLE_DEVICES").map(String::as_str),
        Some("GPU-b1")
    );
    assert_eq!(
        c.envs.get("EALI_GPU_UUID").map(String::as_str),
        Some("GPU-b1")
    );
    assert_eq!(
        c.envs.get("EALI_CONTROL_SOCKET").map(String::as_str),
        Some("/run/eali/GPU-b1/control.sock")
    );
    assert_eq!(
        c.mounts,
        vec![proto::Mount {
            container_path: "/run/eali/GPU-b1".into(),
            host_path: dir.join("control/GPU-b1").display().to_string(),
            read_only: false,
        }]
    );
    assert!(
        dir.join("control/GPU-b1").is_dir(),
        "mount source exists before the container starts"
    );
    println!(
        "Allocate(GPU-b1) -> envs {:?} mounts {:?}",
        c.envs, c.mounts
    );

    let err = client
        .allocate(proto::AllocateRequest {
            container_requests: vec![proto::ContainerAllocateRequest {
                devices_ids: vec!["GPU-zz".into()],
            }],
        })
        .await
        .expect_err("unknown device");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    let all: Vec<String> = ["GPU-c0", "GPU-b2", "GPU-a1", "GPU-b0", "GPU-a0", "GPU-b1"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let ask = |must: &[&str], size| proto::ContainerPreferredAllocationRequest {
        available_device_i_ds: all.clone(),
        must_include_device_i_ds: must.iter().map(|s| s.to_string()).collect(),
        allocation_size: size,
    };
    let resp = client
        .get_preferred_allocation(proto::PreferredAllocationRequest {
            container_requests: vec![ask(&[], 2), ask(&[], 3), ask(&["GPU-b2"], 2)],
        })
        .await
        .expect("preferred")
        .into_inner();
    let got: Vec<Vec<String>> = resp
        .container_responses
        .into_iter()
        .map(|r| r.device_i_ds)
        .collect();
    println!("GetPreferredAllocation -> {got:?}");
    assert_eq!(
        got[0],
        vec!["GPU-a0", "GPU-a1"],
        "two on one NUMA node, best fit"
    );
    assert_eq!(
        got[1],
        vec!["GPU-b0", "GPU-b1", "GPU-b2"],
        "three H100 on node 1, not the A100"
    );
    assert_eq!(
        got[2],
        vec!["GPU-b2", "GPU-b0"],
        "the must-include GPU's own group"
    );
    plugin.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn re_registers_within_two_seconds_after_50_kubelet_restarts() {
    let dir = temp_dir();
    let mut kubelet = FakeKubelet::start(&dir).await.expect("kubelet");
    let table = DeviceTable::new(vec![dev("GPU-a", 0, "H100")]);
    let plugin = start_plugin(config(&dir), table, alloc_config(&dir));
    registered(&mut kubelet, Duration::from_secs(5)).await;
    devices(&mut kubelet, Duration::from_secs(5)).await;

    let mut timings = Vec::new();
    for i in 0..50 {
        let recreated = kubelet.restart().await.expect("restart");
        let (_, at) = registered(&mut kubelet, Duration::from_secs(2)).await;
        let (list, _) = devices(&mut kubelet, Duration::from_secs(2)).await;
        assert_eq!(list.len(), 1, "restart {i}: devices advertised again");
        let took = at.duration_since(recreated);
        assert!(took < Duration::from_secs(2), "restart {i}: {took:?}");
        timings.push(took);
    }
    timings.sort();
    println!(
        "re-registration after kubelet.sock recreated, 50 restarts: min {:?} median {:?} max {:?}",
        timings[0], timings[25], timings[49]
    );
    // The kubelet sees the last Register call before the plugin has counted its reply.
    let mut stats = plugin.stats.clone();
    tokio::time::timeout(
        Duration::from_secs(2),
        stats.wait_for(|s| s.registrations >= 51),
    )
    .await
    .expect("51st registration counted within 2 s")
    .expect("stats");
    assert_eq!(plugin.stats.borrow().registrations, 51);
    plugin.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn re_registers_when_the_kubelet_drops_the_stream() {
    let dir = temp_dir();
    let mut kubelet = FakeKubelet::start(&dir).await.expect("kubelet");
    let table = DeviceTable::new(vec![dev("GPU-a", 0, "H100")]);
    let plugin = start_plugin(config(&dir), table, alloc_config(&dir));
    registered(&mut kubelet, Duration::from_secs(5)).await;
    devices(&mut kubelet, Duration::from_secs(5)).await;
    let dropped = kubelet.drop_stream();
    let (_, at) = registered(&mut kubelet, Duration::from_secs(3)).await;
    println!(
        "re-registered {:?} after the stream dropped",
        at.duration_since(dropped)
    );
    assert_eq!(
        plugin.stats.borrow().last_restart,
        Some(eali::deviceplugin::runner::RestartReason::StreamDropped)
    );
    // A stable stream causes no further registrations.
    devices(&mut kubelet, Duration::from_secs(2)).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(plugin.stats.borrow().registrations, 2);
    plugin.shutdown().await;
}
