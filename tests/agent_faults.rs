//! Faults on a node run by the real `eali agent` (see `agent_support`), each with `eali serve`
//! in a pod under load from `eali load`:
//!
//! - the agent killed (SIGKILL) and restarted: the pod keeps serving, no accepted request is
//!   lost, the restarted agent resets the GPU's clocks first and the pod, reconnected, sets its
//!   clocks again; then the serving pod killed mid-batch and released: its clocks are reset;
//! - the GPU lost in the middle of serving (the stand-in's fault file): ListAndWatch turns it
//!   Unhealthy, requests get 503 naming the loss, nothing hangs, and serving resumes once the
//!   stand-in brings the GPU back and the device is Healthy again;
//! - a control-socket caller sending bytes that are not HTTP/2, a malformed protobuf message
//!   and an oversized one: each refused, and the agent goes on answering the pod that holds
//!   the GPU.
//!
//! Needs the stand-in built first: `cargo build -p nvml-standin`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod agent_support;
mod nvml_support;
mod serve_support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use agent_support::*;
use eali::deviceplugin::harness::{FakeKubelet, KubeletEvent};
use serde_json::Value;

/// Each test runs a server, an agent and a load generator on two cores: one at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const SERVE_ARGS: &[&str] = &[
    "--model",
    "alexnet",
    "--policy",
    "maxPerformance",
    "--slo-ms",
    "200",
];

/// `eali load --json` against `http` in a thread (started now); its report.
fn load_in_background(http: &str, rate: u32, secs: u32) -> std::thread::JoinHandle<Value> {
    let http = http.to_string();
    std::thread::spawn(move || load_json(&http, "alexnet", rate, secs, 200))
}

/// Waits until the driver's lock on GPU 0 is `want`.
fn wait_lock(dir: &Path, want: Option<(u64, u64)>, timeout: Duration) -> Duration {
    let t0 = Instant::now();
    while lock_of_gpu0(dir) != want {
        assert!(
            t0.elapsed() < timeout,
            "GPU lock {:?}, expected {want:?}",
            lock_of_gpu0(dir)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    t0.elapsed()
}

fn spawn_agent(dir: &Path, extra: &[&str]) -> Agent {
    let mut cmd = agent_command(dir, &[&["--authz-cache-ms", "0"], extra].concat());
    cmd.env("EALI_NVML_FAULT_FILE", dir.join("faults"));
    Agent::attach(cmd.spawn().expect("spawn eali agent"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_restart_under_load_loses_nothing_and_a_killed_pod_is_reset() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = scratch();
    let mut node = start_node(&dir, "alexnet-0", || spawn_agent(&dir, &[])).await;
    let mut s = Serve::spawn(&dir, &node.envs, POD_UID, SERVE_ARGS);
    let http = s.http_addr(Duration::from_secs(60));
    let t0 = Instant::now();
    let locked = loop {
        if let Some(l) = lock_of_gpu0(&dir) {
            break l;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "serve never locked");
        std::thread::sleep(Duration::from_millis(20));
    };
    println!("serve locked the GPU at {locked:?} MHz");

    // The agent dies under load and comes back.
    // Light enough that the debug-built server and the agent's restart leave every request
    // time to meet its deadline on two cores: a failure here is the restart's.
    let run = load_in_background(&http, 50, 10);
    std::thread::sleep(Duration::from_secs(2));
    let old_pid = node.agent.child.id();
    node.agent.child.kill().expect("SIGKILL the agent");
    node.agent.child.wait().expect("reaped");
    println!(
        "agent {old_pid} killed; GPU lock left {:?}",
        lock_of_gpu0(&dir)
    );
    std::thread::sleep(Duration::from_secs(1));
    let restarted = Instant::now();
    node.agent = spawn_agent(&dir, &[]);
    let new_pid = node.agent.child.id();
    wait_registered(&mut node.kubelet).await;
    wait_lock(&dir, Some(locked), Duration::from_secs(10));
    let ops = ops_of(&dir, new_pid);
    println!(
        "agent {new_pid} up again: the pod's clocks back {:?} after the restart; its driver ops: {ops:?}",
        restarted.elapsed()
    );
    let first_lock = ops.iter().position(|o| o.starts_with("lock"));
    let first_reset = ops.iter().position(|o| o.starts_with("reset"));
    assert!(
        first_reset.is_some() && first_reset < first_lock,
        "the restarted agent resets the clocks before anything else: {ops:?}"
    );
    let report = run.join().expect("load thread");
    println!("load across the restart: {}", summary(&report));
    assert_eq!(
        report["errors"],
        serde_json::json!({}),
        "requests lost across the agent's restart"
    );
    assert_eq!(report["ok"], report["sent"]);

    // The serving pod killed in the middle of a batch, then released by the kubelet.
    let run = load_in_background(&http, 200, 3);
    std::thread::sleep(Duration::from_millis(1500));
    s.child.kill().expect("SIGKILL serve");
    s.child.wait().expect("reaped");
    let _ = run.join();
    println!(
        "serve killed under load; GPU lock {:?} until the kubelet releases it",
        lock_of_gpu0(&dir)
    );
    assert_eq!(lock_of_gpu0(&dir), Some(locked));
    node.pods.set("eali.dev/gpu", &[]);
    let took = wait_lock(&dir, None, Duration::from_secs(3));
    println!("released: clocks reset {took:?} after the pod left pod-resources");

    let status = node.agent.stop();
    assert!(status.success(), "{status:?}");
    node.pr.abort();
    let _ = std::fs::remove_dir_all(&dir);
}

/// The device health the kubelet's ListAndWatch stream reports next, within `timeout`.
async fn wait_health(kubelet: &mut FakeKubelet, want: &str, timeout: Duration) -> Instant {
    kubelet
        .wait_for(timeout, |e| match e {
            KubeletEvent::Devices { devices, at } if devices.iter().all(|d| d.health == want) => {
                Some(*at)
            }
            _ => None,
        })
        .await
        .unwrap_or_else(|| panic!("ListAndWatch never reported {want}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gpu_lost_mid_serving_answers_503_and_serving_resumes_when_it_is_back() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = scratch();
    let mut node = start_node(&dir, "alexnet-0", || {
        spawn_agent(&dir, &["--health-recovery-s", "2"])
    })
    .await;
    let mut s = Serve::spawn(&dir, &node.envs, POD_UID, SERVE_ARGS);
    let http = s.http_addr(Duration::from_secs(60));
    let url = |p: &str| format!("http://{http}{p}");
    let body = serve_support::infer_body(&[1, 3, 224, 224], 0.5);

    let run = load_in_background(&http, 100, 12);
    std::thread::sleep(Duration::from_secs(3));
    let lost_at = Instant::now();
    std::fs::write(dir.join("faults"), "lost").expect("fault file");
    let t = wait_health(&mut node.kubelet, "Unhealthy", Duration::from_secs(10)).await;
    println!(
        "GPU lost: ListAndWatch Unhealthy after {:?}",
        t.saturating_duration_since(lost_at)
    );
    // Requests are refused with the reason, soon after the loss.
    let refused = loop {
        let r = serve_support::post_json(&url("/v2/models/alexnet/infer"), &body).await;
        if r.status == 503 {
            break r;
        }
        assert_eq!(r.status, 200);
        assert!(
            lost_at.elapsed() < Duration::from_secs(5),
            "still serving on a lost GPU"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let reason = String::from_utf8_lossy(&refused.body).to_string();
    println!("infer {:?} after the loss: 503 {reason}", lost_at.elapsed());
    assert!(
        reason.contains(&node.uuid) && reason.contains("lost"),
        "{reason}"
    );
    let ready = serve_support::get(&url("/v2/health/ready")).await;
    assert_eq!(ready.status, 503, "ready while the GPU is lost");

    // The stand-in brings the GPU back: Healthy after the quiet period, then serving again.
    std::thread::sleep(Duration::from_secs(2));
    let back_at = Instant::now();
    std::fs::write(dir.join("faults"), "").expect("fault file");
    let t = wait_health(&mut node.kubelet, "Healthy", Duration::from_secs(10)).await;
    println!(
        "GPU back: ListAndWatch Healthy after {:?}",
        t.saturating_duration_since(back_at)
    );
    loop {
        let r = serve_support::post_json(&url("/v2/models/alexnet/infer"), &body).await;
        if r.status == 200 {
            break;
        }
        assert!(
            back_at.elapsed() < Duration::from_secs(10),
            "not serving after the GPU came back: {} {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "serving again {:?} after the GPU came back",
        back_at.elapsed()
    );
    assert_eq!(
        serve_support::get(&url("/v2/health/ready")).await.status,
        200
    );

    let report = run.join().expect("load thread");
    println!("load across the loss: {}", summary(&report));
    let errors = report["errors"].as_object().expect("errors");
    // Answered or refused, never left hanging: no timeouts, no broken connections.
    assert!(
        errors.keys().all(|k| k == "503"),
        "failures other than 503: {errors:?}"
    );
    assert!(errors.get("503").and_then(Value::as_u64).unwrap_or(0) > 0);
    let timeline = report["timeline"].as_array().expect("timeline");
    let last = timeline.last().expect("seconds");
    assert_eq!(
        last["ok"], last["sent"],
        "the last second after recovery: {last}"
    );

    let _ = Command::new("kill")
        .args(["-TERM", &s.child.id().to_string()])
        .status();
    s.child.wait().expect("serve exits");
    let status = node.agent.stop();
    assert!(status.success(), "{status:?}");
    node.pr.abort();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Sends message bytes as they are, to call a method with a malformed or oversized message.
#[derive(Clone, Default)]
struct RawCodec;

struct RawEncoder;
struct RawDecoder;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

impl tonic::codec::Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        use bytes::Buf;
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

async fn raw_call(socket: &Path, method: &str, message: Vec<u8>) -> tonic::Status {
    let channel = eali::deviceplugin::uds::connect(socket)
        .await
        .expect("connect");
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    let path = format!("/eali.control.v1.GpuControl/{method}")
        .parse()
        .expect("path");
    match grpc
        .unary(tonic::Request::new(message), path, RawCodec)
        .await
    {
        Ok(r) => panic!("{method} accepted {} bytes back", r.get_ref().len()),
        Err(s) => s,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_control_messages_are_refused_and_the_agent_goes_on() {
    let _one = ONE_AT_A_TIME.lock().await;
    let dir = scratch();
    let node = start_node(&dir, "alexnet-0", || spawn_agent(&dir, &[])).await;
    make_holder(&dir, &node.pods, &node.uuid);
    let socket = dir.join("control").join(&node.uuid).join("control.sock");

    // Not HTTP/2 at all: the connection is closed, nothing else happens.
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut raw = tokio::net::UnixStream::connect(&socket)
            .await
            .expect("connect");
        raw.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n\x00\xff garbage")
            .await
            .expect("write");
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut buf)).await;
        println!(
            "non-HTTP/2 bytes: connection closed ({} bytes back)",
            buf.len()
        );
        assert!(read.is_ok(), "the agent kept a garbage connection open");
    }
    // A SetClocks whose bytes are no protobuf message.
    let st = raw_call(&socket, "SetClocks", vec![0xff; 64]).await;
    println!("malformed SetClocks: {:?} {}", st.code(), st.message());
    assert_eq!(st.code(), tonic::Code::Internal, "{st:?}");
    // A well-formed one far over the message limit (a 16 MiB GPU UUID).
    let big = eali::control::proto::SetClocksRequest {
        gpu_uuid: "G".repeat(16 << 20),
        min_mhz: 300,
        max_mhz: 300,
    };
    let st = raw_call(&socket, "SetClocks", prost::Message::encode_to_vec(&big)).await;
    println!("16 MiB SetClocks: {:?} {}", st.code(), st.message());
    // tonic's code for a message over the decoding limit.
    assert_eq!(st.code(), tonic::Code::OutOfRange, "{st:?}");
    // Unknown method.
    let st = raw_call(&socket, "Reboot", Vec::new()).await;
    println!("unknown method: {:?}", st.code());
    assert_eq!(st.code(), tonic::Code::Unimplemented, "{st:?}");
    assert_eq!(
        lock_of_gpu0(&dir),
        None,
        "a refused call changed the clocks"
    );

    // The agent goes on: the holder sets and reads its clocks, the agent is alive and ready.
    let mut client = lock_low(&dir, &node.uuid).await;
    let st = client.status().await.expect("status");
    assert_eq!(st.locked_max_mhz, LOW_MHZ);
    assert!(!st.unhealthy);
    assert_eq!(node.agent.get("/readyz").0, 200);
    client.reset_clocks().await.expect("reset");
    println!("the holder's calls still answered; agent ready");

    let status = node.agent.stop();
    assert!(status.success(), "{status:?}");
    node.pr.abort();
    let _ = std::fs::remove_dir_all(&dir);
}
