//! `eali serve` in a pod on a node run by the real `eali agent` (see `agent_support`): started
//! with the environment the device plugin's Allocate returns, it controls the GPU's clocks
//! through the control socket (the stand-in driver's lock changes, and is reset when the server
//! drains); a second serving process in a pod that does not hold the GPU is refused with
//! PERMISSION_DENIED and changes nothing.
//!
//! Needs the stand-in built first: `cargo build -p nvml-standin`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod agent_support;
mod nvml_support;

use std::process::Command;
use std::time::{Duration, Instant};

use agent_support::*;
use eali::deviceplugin::harness::{FakeKubelet, FakePodResources};

const OTHER_UID: &str = "0c4f9e11-5a2b-4d7e-9f10-3b6a8c2d4e07";
const SERVE_ARGS: &[&str] = &["--model", "alexnet", "--policy", "maxPerformance"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_with_allocates_environment_controls_clocks_and_another_pod_is_refused() {
    let dir = scratch();
    let mut kubelet = FakeKubelet::start(&dir.join("dp")).await.expect("kubelet");
    let pods = FakePodResources::default();
    let pr = pods.serve(&dir.join("pr.sock")).expect("pod-resources");
    let agent = Agent::spawn(
        &dir,
        &["--authz-cache-ms", "0", "--attribution-lag-ms", "300"],
    );
    let (ids, _) = wait_registered(&mut kubelet).await;
    let uuid = ids[0].clone();
    std::fs::write(
        dir.join("pods.json"),
        format!("{{\"{POD_UID}\": \"serving/resnet-0\", \"{OTHER_UID}\": \"serving/other-0\"}}"),
    )
    .expect("pod directory");
    pods.set(
        "eali.dev/gpu",
        &[("serving", "resnet-0", vec![uuid.clone()])],
    );
    // What the kubelet hands the container (the host path doubles as the container path).
    let envs = allocate_envs(&kubelet, &uuid).await;
    println!("Allocate environment: {envs:?}");
    assert_eq!(lock_of_gpu0(&dir), None);

    // The pod holding the GPU: maxPerformance locks the GPU's top clock at start.
    let mut a = Serve::spawn(&dir, &envs, POD_UID, SERVE_ARGS);
    let t0 = Instant::now();
    let locked = loop {
        if let Some(l) = lock_of_gpu0(&dir) {
            break l;
        }
        if let Ok(Some(s)) = a.child.try_wait() {
            let log: Vec<String> = a.log.try_iter().collect();
            panic!("serve exited ({s:?}):\n{}", log.join("\n"));
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "serve never set the clocks"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    println!(
        "serve in serving/resnet-0 locked the GPU at {locked:?} MHz through the control socket"
    );
    // The agent counts the switch once its set-call has returned; the driver's state can show
    // the lock a moment earlier.
    let switches = format!("eali_gpu_clock_switches_total{{gpu=\"{uuid}\"}} 1");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = agent.get("/metrics");
        if body.contains(&switches) {
            break;
        }
        assert!(Instant::now() < deadline, "{body}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Requests through it: the pod streams its unit timings to the agent, which attributes the
    // GPU's energy counter to the pod's units and layers.
    let http = a.http_addr(Duration::from_secs(60));
    load(&http, "alexnet", 40, 2, 1000);
    let deadline = Instant::now() + Duration::from_secs(30);
    let layer_line = loop {
        let (_, body) = agent.get("/metrics");
        if let Some(l) = body.lines().find(|l| {
            l.starts_with("eali_layer_energy_joules_total{")
                && l.contains("pod=\"resnet-0\"")
                && l.contains("service=\"alexnet\"")
        }) {
            break l.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no per-layer energy for serving/resnet-0 on the agent:\n{body}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    println!("agent /metrics: {layer_line}");
    let joules: f64 = layer_line
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .expect("sample value");
    assert!(joules > 0.0, "{layer_line}");

    // Stopping it drains the server, whose reset goes through the socket too.
    let _ = Command::new("kill")
        .args(["-TERM", &a.child.id().to_string()])
        .status();
    let status = a.child.wait().expect("serve exits");
    println!(
        "serve stopped on SIGTERM: {status:?}, driver lock now {:?}",
        lock_of_gpu0(&dir)
    );
    assert_eq!(lock_of_gpu0(&dir), None, "serve left the GPU locked");

    // A second process, in a pod that does not hold the GPU, with the same environment.
    let mut b = Serve::spawn(&dir, &envs, OTHER_UID, SERVE_ARGS);
    let line = b.wait_log("refused clock control", Duration::from_secs(60));
    println!("serve in serving/other-0: {line}");
    assert!(line.contains("PermissionDenied"), "{line}");
    assert!(line.contains("serving/other-0"), "{line}");
    assert_eq!(
        lock_of_gpu0(&dir),
        None,
        "the refused process changed the clocks"
    );
    drop(b);

    let status = agent.stop();
    assert!(status.success(), "{status:?}");
    pr.abort();
    let _ = std::fs::remove_dir_all(&dir);
}
