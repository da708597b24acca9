//! `eali serve --device nvml:0` standalone on a machine's GPU, through the NVML code path (the
//! stand-in `libnvidia-ml`, `e2e/nvml-standin`): the server sets the GPU's clocks through the
//! clock guard, attributes that GPU's energy counter to its units and layers, and leaves the GPU
//! unlocked when it stops; without permission to set clocks it serves read-only; a GPU lost
//! mid-serving answers 503 with the reason, and serving resumes when it is back.
//!
//! Needs the stand-in built first: `cargo build -p nvml-standin`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod agent_support;
mod nvml_support;
mod serve_support;

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use agent_support::*;

fn envs(dir: &std::path::Path, faults: Option<&str>) -> HashMap<String, String> {
    let mut e: HashMap<String, String> = [
        ("EALI_NVML_PROFILE", "v100-sxm2".to_string()),
        ("EALI_NVML_GPUS", "1".to_string()),
        (
            "EALI_NVML_STATE",
            dir.join("driver.json").display().to_string(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    if let Some(f) = faults {
        e.insert("EALI_NVML_FAULTS".into(), f.into());
    }
    e
}

fn args(dir: &std::path::Path) -> Vec<String> {
    let lib = nvml_support::standin_lib().display().to_string();
    let record = dir.join("serve-locks.json").display().to_string();
    [
        "--model",
        "alexnet",
        "--policy",
        "maxPerformance",
        "--device",
        "nvml:0",
        "--nvml-lib",
        &lib,
        "--clock-record",
        &record,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// The value of the first sample of `family` in a Prometheus text body.
fn sample(body: &str, family: &str) -> Option<f64> {
    body.lines()
        .find(|l| l.starts_with(family))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn serve_on_a_local_gpu_sets_its_clocks_and_attributes_its_counter() {
    let dir = scratch();
    let args = args(&dir);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut s = Serve::spawn(&dir, &envs(&dir, None), POD_UID, &args);
    let ready = s.wait_log("model ready", Duration::from_secs(60));
    println!("{ready}");
    let http = s.http_addr(Duration::from_secs(10));
    assert!(ready.contains("NVML GPU 0"), "{ready}");
    // maxPerformance locks the top clock.
    let t0 = Instant::now();
    let locked = loop {
        if let Some(l) = lock_of_gpu0(&dir) {
            break l;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "serve never locked the GPU"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    println!("locked at {locked:?} MHz through NVML");
    assert_eq!(locked, (1530, 1530));
    println!("{}", load(&http, "alexnet", 100, 2, 1000));
    // The counter of this GPU, attributed by this process.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (gpu_j, layer_j) = loop {
        let (code, body) = http_get(&http, "/metrics");
        assert_eq!(code, 200);
        let gpu = sample(&body, "eali_gpu_energy_joules_total{").unwrap_or(0.0);
        let layer = sample(&body, "eali_layer_energy_joules_total{").unwrap_or(0.0);
        if gpu > 0.0 && layer > 0.0 {
            break (gpu, layer);
        }
        assert!(Instant::now() < deadline, "no GPU or layer energy:\n{body}");
        std::thread::sleep(Duration::from_millis(200));
    };
    println!("serve /metrics: GPU energy {gpu_j:.3} J, first layer {layer_j:.4} J");
    let _ = Command::new("kill")
        .args(["-TERM", &s.child.id().to_string()])
        .status();
    let status = s.child.wait().expect("serve exits");
    assert!(status.success(), "{status:?}");
    assert_eq!(lock_of_gpu0(&dir), None, "serve left the GPU locked");
    let record = std::fs::read_to_string(dir.join("serve-locks.json")).unwrap_or_default();
    assert!(!record.contains("GPU-"), "locks left on record: {record}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn without_permission_a_local_gpu_is_served_read_only() {
    let dir = scratch();
    let args = args(&dir);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut s = Serve::spawn(&dir, &envs(&dir, Some("noperm")), POD_UID, &args);
    let http = s.http_addr(Duration::from_secs(60));
    let line = s.wait_log("read-only", Duration::from_secs(10));
    println!("{line}");
    let report = load(&http, "alexnet", 50, 2, 1000);
    println!("{report}");
    assert!(report.contains("errors: none"), "{report}");
    assert_eq!(lock_of_gpu0(&dir), None);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_gpu_lost_answers_503_and_serving_resumes_when_it_is_back() {
    let dir = scratch();
    let args = args(&dir);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut env = envs(&dir, None);
    let faults = dir.join("faults");
    env.insert("EALI_NVML_FAULT_FILE".into(), faults.display().to_string());
    let mut s = Serve::spawn(&dir, &env, POD_UID, &args);
    s.wait_log("model ready", Duration::from_secs(60));
    let http = s.http_addr(Duration::from_secs(10));
    let url = |p: &str| format!("http://{http}{p}");
    let body = serve_support::infer_body(&[1, 3, 224, 224], 0.5);
    let r = serve_support::post_json(&url("/v2/models/alexnet/infer"), &body).await;
    assert_eq!(r.status, 200);

    std::fs::write(&faults, "lost").expect("fault file");
    let lost_at = Instant::now();
    let refused = loop {
        let r = serve_support::post_json(&url("/v2/models/alexnet/infer"), &body).await;
        if r.status == 503 {
            break r;
        }
        assert_eq!(r.status, 200);
        assert!(
            lost_at.elapsed() < Duration::from_secs(10),
            "still serving on a lost GPU"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let reason = String::from_utf8_lossy(&refused.body).to_string();
    println!("GPU lost: 503 after {:?}: {reason}", lost_at.elapsed());
    assert!(reason.contains("lost"), "{reason}");
    let ready = serve_support::get(&url("/v2/health/ready")).await;
    assert_eq!(ready.status, 503, "ready while the GPU is lost");

    std::fs::write(&faults, "").expect("clear the fault file");
    let back_at = Instant::now();
    loop {
        let r = serve_support::post_json(&url("/v2/models/alexnet/infer"), &body).await;
        if r.status == 200 {
            break;
        }
        assert!(
            back_at.elapsed() < Duration::from_secs(10),
            "not serving after the GPU came back: {}",
            r.status
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("GPU back: serving again after {:?}", back_at.elapsed());
    let _ = std::fs::remove_dir_all(&dir);
}
