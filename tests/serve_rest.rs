//! `eali serve` over REST, in-process on free ports: the protocol endpoints, simulated and real
//! (CPU) inference, the bad-input and overload answers, metrics, and the drain on shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod serve_support;

use std::sync::Arc;

use eali::exec::CpuExecutor;
use eali::k8s::crd::Policy;
use eali::model::zoo;
use serde_json::json;
use serve_support::*;

const IMAGE: [i64; 4] = [1, 3, 224, 224];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_endpoints_and_simulated_inference() {
    let s = start(
        "alex",
        spec("alexnet", 100, 8, Policy::MaxPerformance),
        options(),
    )
    .await;
    let meta = get(&s.url("/v2")).await;
    assert_eq!(meta.status, 200);
    assert_eq!(meta.json()["extensions"], json!(["binary_tensor_data"]));
    assert_eq!(get(&s.url("/v2/health/live")).await.status, 200);
    assert_eq!(get(&s.url("/v2/health/ready")).await.status, 200);
    assert_eq!(get(&s.url("/healthz")).await.status, 200);
    assert_eq!(get(&s.url("/readyz")).await.status, 200);
    let m = get(&s.url("/v2/models/alex")).await.json();
    assert_eq!(m["inputs"][0]["shape"], json!([-1, 3, 224, 224]));
    assert_eq!(m["outputs"][0]["shape"], json!([-1, 1000]));
    assert_eq!(get(&s.url("/v2/models/alex/versions/1")).await.status, 200);
    assert_eq!(get(&s.url("/v2/models/alex/ready")).await.status, 200);

    // Unknown model, version, endpoint: 404 with a reason.
    let r = get(&s.url("/v2/models/nope")).await;
    assert_eq!(r.status, 404);
    assert!(
        r.json()["error"]
            .as_str()
            .unwrap()
            .contains("unknown model 'nope'")
    );
    assert_eq!(get(&s.url("/v2/models/alex/versions/7")).await.status, 404);
    assert_eq!(
        post_json(&s.url("/v2/models/nope/infer"), &infer_body(&IMAGE, 0.5))
            .await
            .status,
        404
    );
    assert_eq!(get(&s.url("/v3")).await.status, 404);

    // JSON tensors: simulated, so no outputs, and the response says so.
    let r = post_json(&s.url("/v2/models/alex/infer"), &infer_body(&IMAGE, 0.5)).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let v = r.json();
    assert_eq!(v["model_name"], "alex");
    assert_eq!(v["parameters"]["simulated"], true);
    assert_eq!(v["outputs"], json!([]));

    // Binary tensor data extension, with an id echoed back and a batch of two images.
    let header = json!({"id": "b1", "inputs": [{"name": "input", "shape": [2, 3, 224, 224], "datatype": "FP32",
        "parameters": {"binary_data_size": 2 * 3 * 224 * 224 * 4}}]})
    .to_string();
    let mut body = header.clone().into_bytes();
    body.extend(std::iter::repeat_n(0u8, 2 * 3 * 224 * 224 * 4));
    let r = request(
        "POST",
        &s.url("/v2/models/alex/versions/1/infer"),
        &[("inference-header-content-length", header.len().to_string())],
        body,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["id"], "b1");

    let text = String::from_utf8(get(&s.url("/metrics")).await.body.to_vec()).unwrap();
    for family in [
        "eali_requests_total{model=\"alex\",outcome=\"ok\"} 2",
        "eali_requests_total{model=\"\",outcome=\"not_found\"} 1",
        "eali_request_duration_seconds_bucket",
        "eali_batch_size_bucket",
        "eali_queue_depth",
        "eali_slo_latency_seconds{model=\"alex\"} 0.1",
        "eali_gpu_energy_joules_total",
        "eali_gpu_clock_target_hertz",
        "eali_gpu_clock_switches_total",
        "eali_layer_energy_joules_total{layer=\"features.0\"",
    ] {
        assert!(text.contains(family), "missing {family} in\n{text}");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_reasons() {
    let mut opts = options();
    opts.max_body_bytes = 4 << 20;
    let s = start(
        "alex",
        spec("alexnet", 100, 2, Policy::MaxPerformance),
        opts,
    )
    .await;
    let url = s.url("/v2/models/alex/infer");
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (b"{\"inputs\": [".to_vec(), 400, "malformed"),
        (json!({"inputs": [{"name": "input", "shape": [1, 3], "datatype": "INT32", "data": [1, 2, 3]}]}).to_string().into_bytes(), 400, "must be FP32"),
        (json!({"inputs": [{"name": "input", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}).to_string().into_bytes(), 400, "expected [N, 3, 224, 224]"),
        (json!({"inputs": [{"name": "input", "shape": [2], "datatype": "FP32", "data": [1]}]}).to_string().into_bytes(), 400, "expected 2"),
        (json!({"inputs": [{"name": "image", "shape": [1], "datatype": "FP32", "data": [1]}]}).to_string().into_bytes(), 400, "no input 'image'"),
        (vec![b' '; 5 << 20], 413, "exceeds the limit"),
    ];
    for (body, status, why) in cases {
        let r = request("POST", &url, &[], body).await;
        assert_eq!(
            r.status,
            status,
            "{why}: {:?}",
            String::from_utf8_lossy(&r.body)
        );
        let msg = r.json()["error"].as_str().unwrap_or_default().to_string();
        assert!(msg.contains(why), "{why}: {msg}");
    }
    // Three images when the model batches at most two.
    let r = post_json(&url, &infer_body(&[3, 3, 224, 224], 0.0)).await;
    assert_eq!(r.status, 400);
    // A deadline of 1 µs cannot be met: refused at the door (503), rather than a late answer.
    let mut body = infer_body(&IMAGE, 0.0);
    body["parameters"] = json!({"timeout": 1});
    let r = post_json(&url, &body).await;
    assert_eq!(r.status, 503);
    assert!(r.json()["error"].as_str().unwrap().contains("deadline"));
    let text = String::from_utf8(get(&s.url("/metrics")).await.body.to_vec()).unwrap();
    let requests: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("eali_requests_total"))
        .collect();
    assert!(
        text.contains("eali_requests_total{model=\"alex\",outcome=\"overloaded\"} 1"),
        "{requests:?}"
    );
    assert!(
        text.contains("eali_requests_total{model=\"alex\",outcome=\"too_large\"} 1"),
        "{requests:?}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_answers_429_with_retry_after() {
    let mut opts = options();
    opts.queue_capacity = 2;
    // A 3 s SLO gives Triton-style batching a 1 s queue delay: requests wait in the queue.
    let s = start(
        "alex",
        spec("alexnet", 3000, 8, Policy::MaxPerformance),
        opts,
    )
    .await;
    let url = s.url("/v2/models/alex/infer");
    let body = infer_body(&IMAGE, 0.1);
    let waiting: Vec<_> = (0..2)
        .map(|_| {
            let (u, b) = (url.clone(), body.clone());
            tokio::spawn(async move { post_json(&u, &b).await.status })
        })
        .collect();
    let entry = &s.state.models["alex"];
    while entry.queue.len() < 2 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let r = post_json(&url, &body).await;
    assert_eq!(r.status, 429);
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry >= 1);
    for w in waiting {
        assert_eq!(w.await.unwrap(), 200);
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_finishes_accepted_requests_and_refuses_new_ones() {
    // The longest SLO: the policy holds a partial batch for a third of it (20 s), so the five
    // requests stay queued until the drain however slowly a loaded machine delivers them.
    let mut s = start(
        "alex",
        spec("alexnet", 60_000, 8, Policy::MaxPerformance),
        options(),
    )
    .await;
    let url = s.url("/v2/models/alex/infer");
    let body = infer_body(&IMAGE, 0.2);
    let accepted: Vec<_> = (0..5)
        .map(|_| {
            let (u, b) = (url.clone(), body.clone());
            tokio::spawn(async move { post_json(&u, &b).await.status })
        })
        .collect();
    let state = s.state.clone();
    let queued = async {
        while state.models["alex"].queue.len() < 5 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(60), queued)
        .await
        .expect("the five requests were never all queued");
    s.begin_stop();
    while !state.is_draining() {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    // Refused while draining (the listener may already be closed once everything finished).
    if let Ok(r) = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        let c = client();
        let req = hyper::Request::post(url.as_str())
            .body(http_body_util::Full::new(bytes::Bytes::from(
                body.to_string(),
            )))
            .unwrap();
        c.request(req).await
    })
    .await
    .unwrap()
    {
        assert_eq!(r.status(), 503);
    }
    for a in accepted {
        assert_eq!(a.await.unwrap(), 200, "an accepted request was dropped");
    }
    s.join().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_compute_returns_the_reference_executors_outputs() {
    let mut opts = options();
    opts.runtime.compute = eali::serve::Compute::Cpu;
    let seed = opts.runtime.seed;
    let s = start(
        "mobile",
        spec("mobilenet_v2", 60_000, 2, Policy::MaxPerformance),
        opts,
    )
    .await;
    let n = 3 * 224 * 224;
    let image: Vec<f32> = (0..n).map(|i| ((i % 251) as f32 / 125.0) - 1.0).collect();
    let body =
        json!({"inputs": [{"name": "input", "shape": IMAGE, "datatype": "FP32", "data": image}]});
    let r = post_json(&s.url("/v2/models/mobile/infer"), &body).await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["outputs"][0]["shape"], json!([1, 1000]));
    assert!(v["parameters"].get("simulated").is_none());
    let got: Vec<f32> = v["outputs"][0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    let graph = Arc::new(zoo::build("mobilenet_v2").unwrap());
    let want = CpuExecutor::seeded(graph, seed)
        .unwrap()
        .forward(&image, 1)
        .unwrap();
    assert_eq!(got, want);
    s.stop().await;
}

/// A profile of `model` measured on a simulated V100 by the profiler `eali profile` runs.
fn measured(model: &str) -> eali::perf::profile::Profile {
    use eali::exec::{DeviceClock, SimDevice, SimExecutor};
    use eali::gpu::sim::{GpuProfile, SimGpu};
    use eali::perf::profiler::{ClockSelection, ProfileConfig, profile};
    let graph = zoo::build(model).unwrap();
    let dev = SimDevice::new(
        SimGpu::new(GpuProfile::builtin("v100-sxm2").unwrap(), 0, 11),
        DeviceClock::Virtual,
    );
    let mut exec = SimExecutor::new(dev.clone(), Arc::new(graph.clone()));
    let cfg = ProfileConfig {
        batches: vec![1, 4, 16, 32],
        clocks: ClockSelection::Spread(5),
        backend: "sim:v100".into(),
        ..ProfileConfig::default()
    };
    profile(&mut dev.clone(), &mut exec, &graph, &cfg, &mut |_| {}).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_measured_profile_plans_the_served_model_and_a_wrong_one_is_refused() {
    use eali::serve::MeasuredProfile;
    let mut opts = options();
    opts.runtime.profiles = vec![MeasuredProfile {
        path: "measured/v100-alexnet.json".into(),
        profile: Arc::new(measured("alexnet")),
    }];
    let s = start("alex", spec("alexnet", 100, 8, Policy::Eali), opts).await;
    for _ in 0..4 {
        let r = post_json(&s.url("/v2/models/alex/infer"), &infer_body(&IMAGE, 0.5)).await;
        assert_eq!(r.status, 200, "{:?}", r.body);
    }
    let text = String::from_utf8(get(&s.url("/metrics")).await.body.to_vec()).unwrap();
    assert!(
        text.contains("eali_layer_energy_joules_total{layer=\"features.0\""),
        "energy is attributed with the measured profile's power model:\n{text}"
    );
    s.stop().await;

    // A profile that says it is of alexnet but holds another network's layers.
    let mut wrong = measured("resnet18");
    wrong.model = "alexnet".into();
    let mut opts = options();
    opts.runtime.profiles = vec![MeasuredProfile {
        path: "measured/mislabelled.json".into(),
        profile: Arc::new(wrong),
    }];
    let config =
        eali::serve::ServeConfig::single("alex", spec("alexnet", 100, 8, Policy::Eali)).unwrap();
    let err = eali::serve::Server::bind(&config, opts)
        .await
        .err()
        .expect("a profile of other layers is refused")
        .to_string();
    assert!(
        err.contains("measured/mislabelled.json") && err.contains("profile it with"),
        "{err}"
    );
}

/// The head (with `Expect: 100-continue` when `expect`) and the body of a binary-extension
/// infer request for one ResNet-50 image.
fn binary_infer(model: &str, expect: bool) -> (Vec<u8>, Vec<u8>) {
    let n = 3 * 224 * 224;
    let header = json!({"inputs": [{"name": "input", "shape": IMAGE, "datatype": "FP32",
                           "parameters": {"binary_data_size": n * 4}}]})
    .to_string();
    let mut body = header.clone().into_bytes();
    body.resize(header.len() + n * 4, 0);
    let head = format!(
        "POST /v2/models/{model}/infer HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\
         Inference-Header-Content-Length: {}\r\n{}\r\n",
        body.len(),
        header.len(),
        if expect {
            "Expect: 100-continue\r\n"
        } else {
            ""
        }
    );
    (head.into_bytes(), body)
}

/// Reads from `conn` until a whole response (head and `Content-Length` body) is in; the bytes.
async fn read_response(conn: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&buf).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let len = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return text;
            }
        }
        let n = tokio::time::timeout(std::time::Duration::from_secs(10), conn.read(&mut chunk))
            .await
            .expect("a response within 10 s")
            .unwrap();
        assert!(n > 0, "closed before a whole response: {text:?}");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_refused_from_the_headers() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut opts = options();
    opts.deadline_factor = 1.0;
    // No batch of ResNet-50 answers within 1 ms: admission refuses every request, which is
    // what it does to most of them under overload.
    let s = start("r50", spec("resnet50", 1, 8, Policy::MaxPerformance), opts).await;
    let (head, body) = binary_infer("r50", true);
    // With `Expect: 100-continue` the refusal comes without `100 Continue`: no body is asked
    // for, none sent, and the server closes the connection it left mid-request.
    let mut conn = tokio::net::TcpStream::connect(s.http).await.unwrap();
    conn.write_all(&head).await.unwrap();
    let answer = read_response(&mut conn).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(
        answer.contains("at capacity") && answer.to_ascii_lowercase().contains("retry-after"),
        "{answer}"
    );
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        conn.read_to_end(&mut rest),
    )
    .await;
    assert!(matches!(closed, Ok(Ok(0))), "{closed:?} {rest:?}");
    // Without it, the body is read and dropped, the refusal follows, and the connection
    // carries the next request.
    let (head, body_plain) = binary_infer("r50", false);
    assert_eq!(body.len(), body_plain.len());
    let mut conn = tokio::net::TcpStream::connect(s.http).await.unwrap();
    conn.write_all(&head).await.unwrap();
    conn.write_all(&body_plain).await.unwrap();
    let answer = read_response(&mut conn).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    conn.write_all(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = read_response(&mut conn).await;
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "same connection after the body: {answer}"
    );
    let metrics = String::from_utf8(get(&s.url("/metrics")).await.body.to_vec()).unwrap();
    assert!(
        metrics.contains("eali_requests_total{model=\"r50\",outcome=\"overloaded\"} 2"),
        "{metrics}"
    );
    s.stop().await;
}

/// `eali load --expect-continue` against a server that admits and one that refuses: its
/// client sends the body when asked, and takes a refusal without one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_load_generators_expect_continue_client_is_answered_either_way() {
    use eali::load::{LoadConfig, Protocol, run};
    use eali::sim::workload::{Workload, WorkloadKind};
    let cfg = |s: &Running| LoadConfig {
        url: format!("http://{}", s.http),
        protocol: Protocol::Rest,
        model: "r50".into(),
        workload: Workload::new(WorkloadKind::Poisson, 40.0, 1.0),
        seed: 2,
        slo_ms: 1000.0,
        binary: true,
        timeout_s: 10.0,
        expect_continue: true,
    };
    let mut opts = options();
    opts.deadline_factor = 1.0;
    let s = start(
        "r50",
        spec("resnet50", 1000, 8, Policy::MaxPerformance),
        opts.clone(),
    )
    .await;
    let r = run(&cfg(&s)).await.unwrap();
    assert!(r.sent > 10, "{r:?}");
    assert_eq!(r.ok, r.sent, "every request answered: {r:?}");
    s.stop().await;
    let s = start("r50", spec("resnet50", 1, 8, Policy::MaxPerformance), opts).await;
    let r = run(&cfg(&s)).await.unwrap();
    assert_eq!(r.ok, 0, "{r:?}");
    assert_eq!(
        r.errors.get("503"),
        Some(&r.sent),
        "every request refused, none lost: {r:?}"
    );
    s.stop().await;
}
