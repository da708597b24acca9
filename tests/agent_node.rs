//! The node side of the real `eali agent` binary (see `agent_support`): crash recovery, clock
//! reset on release, and the HTTP endpoint with per-GPU and per-layer energy metrics.
//!
//! - SIGKILL while a GPU is locked low, restart: the clocks are reset before the restarted agent
//!   registers with the kubelet or touches the GPU otherwise; the time to restore is printed.
//! - The pod releases the GPU (gone from pod-resources): clocks reset within 2 s.
//! - `/metrics` carries the per-GPU families and the per-layer energy attributed from the unit
//!   timings sent over the control socket; `/healthz`, `/readyz`.
//!
//! Needs the stand-in built first: `cargo build -p nvml-standin` (add --release for release
//! tests).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod agent_support;
mod nvml_support;

use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use agent_support::*;
use eali::control::proto::{LayerShare, UnitTiming};
use eali::deviceplugin::harness::{FakeKubelet, FakePodResources};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_locked_low_then_restart_restores_clocks_before_serving() {
    let dir = scratch();
    let mut kubelet = FakeKubelet::start(&dir.join("dp")).await.expect("kubelet");
    let pods = FakePodResources::default();
    let pr = pods.serve(&dir.join("pr.sock")).expect("pod-resources");

    let first = Agent::spawn(&dir, &[]);
    let (ids, _) = wait_registered(&mut kubelet).await;
    let uuid = ids[0].clone();
    make_holder(&dir, &pods, &uuid);
    let _client = lock_low(&dir, &uuid).await;
    assert_eq!(lock_of_gpu0(&dir), Some((300, 300)));
    assert_eq!(
        record_entries(&dir),
        1,
        "the lock is on record before it is made"
    );

    let mut first = first;
    first.child.kill().expect("SIGKILL");
    let status = first.child.wait().expect("wait");
    assert_eq!(status.signal(), Some(9));
    assert_eq!(
        lock_of_gpu0(&dir),
        Some((300, 300)),
        "the driver keeps the dead agent's lock"
    );
    drop(first);

    // Restart: poll the driver from the moment of the spawn until the lock is gone.
    let t0 = Instant::now();
    let second = agent_command(&dir, &[]).spawn().expect("restart");
    let pid = second.id();
    let restored = loop {
        if lock_of_gpu0(&dir).is_none() {
            break t0.elapsed();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "clocks never restored"
        );
        std::thread::sleep(Duration::from_millis(1));
    };
    let (_, registered_at) = wait_registered(&mut kubelet).await;
    let registered = registered_at.duration_since(t0);
    println!(
        "restart after SIGKILL: clocks restored {:.1} ms after the spawn, plugin registered with the kubelet at {:.1} ms",
        restored.as_secs_f64() * 1e3,
        registered.as_secs_f64() * 1e3
    );
    assert!(
        restored <= registered,
        "registered before the clocks were restored"
    );
    // In the driver's own log, the restarted agent's first operation after init is the reset.
    let ops = ops_of(&dir, pid);
    println!("restarted agent's driver operations: {ops:?}");
    let first_op = ops.iter().find(|o| o.as_str() != "init");
    assert_eq!(first_op.map(String::as_str), Some("reset-lock"), "{ops:?}");
    assert_eq!(record_entries(&dir), 0);

    // The restarted agent serves: metrics count the recovery, readiness follows registration.
    let agent = Agent::attach(second);
    let (code, body) = agent.get("/metrics");
    assert_eq!(code, 200);
    let line = format!("eali_gpu_clock_resets_total{{gpu=\"{uuid}\",reason=\"recovery\"}} 1");
    assert!(body.contains(&line), "{body}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while agent.get("/readyz").0 != 200 {
        assert!(Instant::now() < deadline, "never ready");
        std::thread::sleep(Duration::from_millis(20));
    }

    let status = agent.stop();
    assert!(status.success(), "{status:?}");
    pr.abort();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn released_gpu_is_reset_and_metrics_carry_layer_energy() {
    let dir = scratch();
    let mut kubelet = FakeKubelet::start(&dir.join("dp")).await.expect("kubelet");
    let pods = FakePodResources::default();
    let pr = pods.serve(&dir.join("pr.sock")).expect("pod-resources");
    // A busy GPU, so that the energy counter moves briskly.
    std::fs::write(dir.join("load"), "0.9").expect("load");
    let agent = Agent::spawn(
        &dir,
        &[
            "--release-poll-ms",
            "100",
            "--attribution-lag-ms",
            "300",
            "--sample-ms",
            "20",
            "--authz-cache-ms",
            "0",
        ],
    );
    assert_eq!(agent.get("/healthz").0, 200);
    let (ids, _) = wait_registered(&mut kubelet).await;
    let uuid = ids[0].clone();
    make_holder(&dir, &pods, &uuid);
    let mut client = lock_low(&dir, &uuid).await;

    // Two units of a batch that just ran, the first split over two layers 1:3 (after the agent
    // has sampled the counter for a while: energy from before its first reading is unknown).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let now = unix_now();
    let unit = |i: u32, s: f64, e: f64, layers: Vec<LayerShare>| UnitTiming {
        gpu_uuid: uuid.clone(),
        model: "resnet50".into(),
        inference_service: "resnet".into(),
        unit: i,
        unit_name: format!("u{i}"),
        batch: 8,
        start_unix_s: s,
        end_unix_s: e,
        clock_mhz: LOW_MHZ,
        predicted_power_w: 200.0,
        layers,
    };
    let layer = |n: &str, j: f64| LayerShare {
        name: n.into(),
        predicted_energy_j: j,
    };
    let summary = client
        .report_timings(vec![
            unit(
                0,
                now - 0.25,
                now - 0.15,
                vec![layer("conv1", 1.0), layer("layer1.0.conv2", 3.0)],
            ),
            unit(1, now - 0.15, now - 0.05, vec![layer("fc", 1.0)]),
        ])
        .await
        .expect("timings");
    assert_eq!((summary.received, summary.rejected), (2, 0));

    let layer_line = |body: &str, layer: &str| -> Option<f64> {
        body.lines()
            .find(|l| {
                l.starts_with("eali_layer_energy_joules_total{")
                    && l.contains(&format!("layer=\"{layer}\""))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let body = loop {
        let (code, body) = agent.get("/metrics");
        assert_eq!(code, 200);
        // Both units' windows attributed: the lag (300 ms) past the last unit's end.
        if layer_line(&body, "fc").is_some_and(|j| j > 0.0) && unix_now() > now + 0.6 {
            break body;
        }
        if Instant::now() > deadline {
            let log: Vec<String> = agent.log.try_iter().collect();
            panic!("no layer energy:\n{body}\nagent log:\n{}", log.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    println!("/metrics excerpt:");
    for l in body.lines().filter(|l| {
        !l.starts_with('#')
            && (l.starts_with("eali_layer_energy")
                || l.starts_with("eali_unit_energy")
                || l.starts_with("eali_gpu_"))
    }) {
        println!("  {l}");
    }
    let (c1, c2) = (
        layer_line(&body, "conv1").expect("conv1"),
        layer_line(&body, "layer1.0.conv2").expect("conv2"),
    );
    assert!((c2 / c1 - 3.0).abs() < 1e-6, "{c1} {c2}");
    let full = "eali_layer_energy_joules_total{layer=\"fc\",model=\"resnet50\",namespace=\"serving\",pod=\"resnet-0\",service=\"resnet\",unit=\"u1\"}";
    assert!(body.contains(full), "{body}");
    for family in [
        format!("eali_gpu_energy_joules_total{{gpu=\"{uuid}\"}}"),
        format!("eali_gpu_power_watts{{gpu=\"{uuid}\"}}"),
        format!("eali_gpu_clock_hertz{{gpu=\"{uuid}\"}}"),
        format!("eali_gpu_clock_target_hertz{{gpu=\"{uuid}\"}} 300000000"),
        format!("eali_gpu_clock_switches_total{{gpu=\"{uuid}\"}} 1"),
        format!("eali_gpu_healthy{{gpu=\"{uuid}\"}} 1"),
    ] {
        assert!(body.contains(&family), "{family} missing:\n{body}");
    }
    assert_eq!(agent.get("/readyz").0, 200);

    // The pod goes away: the kubelet no longer lists it.
    pods.set("eali.dev/gpu", &[]);
    let t0 = Instant::now();
    let took = loop {
        if lock_of_gpu0(&dir).is_none() {
            break t0.elapsed();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(2),
            "GPU still locked 2 s after its pod released it"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    println!(
        "pod released the GPU: clocks reset after {:.0} ms (pod-resources polled every 100 ms)",
        took.as_secs_f64() * 1e3
    );
    // The record entry goes right after the driver call.
    let deadline = Instant::now() + Duration::from_secs(1);
    while record_entries(&dir) != 0 {
        assert!(
            Instant::now() < deadline,
            "record not cleared after the reset"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let (_, body) = agent.get("/metrics");
        let reset = format!("eali_gpu_clock_resets_total{{gpu=\"{uuid}\",reason=\"release\"}} 1");
        if body.contains(&reset) && !body.contains("pod=\"resnet-0\"") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "release not reflected in the metrics:\n{body}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The released pod's process may no longer control the GPU.
    match client.set_clocks(LOW_MHZ, LOW_MHZ).await {
        Err(eali::control::ControlError::Rpc(s)) => {
            assert_eq!(s.code(), tonic::Code::PermissionDenied)
        }
        other => panic!("expected PERMISSION_DENIED, got {other:?}"),
    }

    let status = agent.stop();
    assert!(status.success(), "{status:?}");
    assert!(!dir.join("dp").join("eali-gpu.sock").exists());
    pr.abort();
    let _ = std::fs::remove_dir_all(&dir);
}
