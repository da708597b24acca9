//! `eali serve` with `model.uri`: safetensors weights that name their network (a custom graph or
//! a zoo model) are loaded from `file://` and plain-path uris and computed by the CPU executor;
//! remote schemes and files that cannot be served are refused at start-up with the reason.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod serve_support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use eali::exec::{CpuExecutor, Weights};
use eali::k8s::crd::{InferenceServiceSpec, ModelRef, Policy};
use eali::model::{Conv, Graph, GraphBuilder, Shape, zoo};
use eali::serve::source::{META_GRAPH, META_MODEL};
use eali::serve::{Compute, ServeConfig, Server};
use serde_json::json;
use serve_support::*;

fn tiny() -> Graph {
    let mut b = GraphBuilder::new("tiny", Shape::new(3, 6, 6));
    let x = b.input();
    let y = b.conv("conv", x, Conv::new(4, 3).padding(1)).unwrap();
    let y = b.batch_norm("bn", y).unwrap();
    let y = b.relu("relu", y).unwrap();
    let y = b.global_avg_pool("gap", y).unwrap();
    let y = b.flatten("flatten", y).unwrap();
    b.linear("fc", y, 5, true).unwrap();
    b.finish().unwrap()
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("eali-serve-uri-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn uri_spec(uri: String) -> InferenceServiceSpec {
    let mut s = spec("unused", 60_000, 4, Policy::MaxPerformance);
    s.model = ModelRef {
        zoo: None,
        uri: Some(uri),
        format: None,
        sha256: None,
    };
    s
}

fn write(path: &Path, graph: &Graph, weights: &Weights, key: &str, value: String) {
    let meta = HashMap::from([(key.to_string(), value)]);
    std::fs::write(path, weights.to_safetensors_with(graph, meta).unwrap()).unwrap();
}

/// Outputs and the executor that computed them.
async fn infer(s: &Running, model: &str, shape: &[i64], image: &[f32]) -> (Vec<f32>, String) {
    let body =
        json!({"inputs": [{"name": "input", "shape": shape, "datatype": "FP32", "data": image}]});
    let r = post_json(&s.url(&format!("/v2/models/{model}/infer")), &body).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert!(v["parameters"].get("simulated").is_none());
    let out = v["outputs"][0]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    (
        out,
        v["parameters"]["executor"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_network_in_safetensors_is_served_with_its_weights() {
    let dir = scratch("custom");
    let graph = tiny();
    // Not the server's seed: the outputs can only match if the file's weights are used.
    let weights = Weights::seeded(&graph, 1234);
    let path = dir.join("tiny.safetensors");
    write(
        &path,
        &graph,
        &weights,
        META_GRAPH,
        serde_json::to_string(&graph).unwrap(),
    );
    let image: Vec<f32> = (0..2 * 3 * 6 * 6).map(|i| (i % 7) as f32 - 3.0).collect();
    let want = CpuExecutor::new(Arc::new(graph.clone()), Arc::new(weights))
        .unwrap()
        .forward(&image, 2)
        .unwrap();
    let other = CpuExecutor::seeded(Arc::new(graph), options().runtime.seed)
        .unwrap()
        .forward(&image, 2)
        .unwrap();
    assert_ne!(want, other);
    // file:// and a plain path name the same file.
    for uri in [
        format!("file://{}", path.display()),
        path.display().to_string(),
    ] {
        let mut opts = options();
        opts.runtime.compute = Compute::Cpu;
        let s = start("tiny", uri_spec(uri), opts).await;
        let meta = get(&s.url("/v2/models/tiny")).await.json();
        assert_eq!(meta["inputs"][0]["shape"], json!([-1, 3, 6, 6]));
        assert_eq!(meta["outputs"][0]["shape"], json!([-1, 5]));
        let (got, executor) = infer(&s, "tiny", &[2, 3, 6, 6], &image).await;
        assert_eq!(got, want);
        assert_eq!(executor, "cpu");
        s.stop().await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zoo_weights_in_safetensors_run_on_the_simulated_gpu() {
    let dir = scratch("zoo");
    let graph = zoo::build("mobilenet_v2").unwrap();
    let weights = Weights::seeded(&graph, 77);
    let path = dir.join("mobilenet.safetensors");
    write(&path, &graph, &weights, META_MODEL, "mobilenet_v2".into());
    let mut opts = options();
    opts.runtime.compute = Compute::Cpu;
    let s = start(
        "mobile",
        uri_spec(format!("file://{}", path.display())),
        opts,
    )
    .await;
    let image: Vec<f32> = (0..3 * 224 * 224)
        .map(|i| ((i % 251) as f32 / 125.0) - 1.0)
        .collect();
    let (got, executor) = infer(&s, "mobile", &[1, 3, 224, 224], &image).await;
    let want = CpuExecutor::new(Arc::new(graph), Arc::new(weights))
        .unwrap()
        .forward(&image, 1)
        .unwrap();
    assert_eq!(got, want);
    // Timed by the simulated GPU, computed by the CPU executor.
    assert!(
        executor.starts_with("sim:") && executor.ends_with("+cpu"),
        "{executor}"
    );
    s.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_custom_network_without_compute_runs_on_the_simulated_gpu_from_its_layer_costs() {
    let dir = scratch("custom-sim");
    let graph = tiny();
    let path = dir.join("tiny.safetensors");
    let json = serde_json::to_string(&graph).unwrap();
    write(&path, &graph, &Weights::seeded(&graph, 1), META_GRAPH, json);
    let s = start("tiny", uri_spec(path.display().to_string()), options()).await;
    let body = json!({"inputs": [{"name": "input", "shape": [1, 3, 6, 6], "datatype": "FP32",
        "data": vec![0.5f32; 3 * 6 * 6]}]});
    let r = post_json(&s.url("/v2/models/tiny/infer"), &body).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["parameters"]["simulated"], true);
    assert!(
        v["parameters"]["executor"]
            .as_str()
            .is_some_and(|e| e.starts_with("sim:")),
        "{v}"
    );
    s.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A plain HTTP server on loopback: `/m/FILE` serves `body`, `/r` redirects there, anything
/// else is 404. Returns its base URL.
async fn file_server(file: &'static str, body: Vec<u8>) -> String {
    use http_body_util::Full;
    use hyper::body::Bytes;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let body = Bytes::from(body);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let body = body.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| {
                        let body = body.clone();
                        async move {
                            let path = req.uri().path().to_string();
                            let resp = if path == format!("/m/{file}") {
                                hyper::Response::new(Full::new(body))
                            } else if path == "/r" {
                                hyper::Response::builder()
                                    .status(302)
                                    .header("location", format!("/m/{file}"))
                                    .body(Full::new(Bytes::new()))
                                    .unwrap()
                            } else {
                                hyper::Response::builder()
                                    .status(404)
                                    .body(Full::new(Bytes::new()))
                                    .unwrap()
                            };
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    },
                );
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, svc)
                    .await;
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_over_http_is_downloaded_once_checked_against_its_sha256_and_served() {
    use eali::serve::fetch::{FetchOptions, fetch_models};
    use sha2::Digest;
    let dir = scratch("fetch");
    let graph = tiny();
    let weights = Weights::seeded(&graph, 99);
    let bytes = weights
        .to_safetensors_with(
            &graph,
            HashMap::from([(
                META_GRAPH.to_string(),
                serde_json::to_string(&graph).unwrap(),
            )]),
        )
        .unwrap();
    let sha: String = sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let base = file_server("tiny.safetensors", bytes.clone()).await;
    let fetch = FetchOptions {
        dir: dir.join("cache"),
        limit_bytes: 1 << 20,
    };
    let config = |uri: String, sha256: Option<String>| {
        let mut spec = uri_spec(uri);
        spec.model.sha256 = sha256;
        ServeConfig::single("tiny", spec).unwrap()
    };

    // Through a redirect, with the right checksum: the service now names the local copy.
    let mut c = config(format!("{base}/r"), Some(sha.clone()));
    fetch_models(&mut c, &fetch).await.unwrap();
    let local = c.services[0].spec.model.uri.clone().unwrap();
    assert!(
        local.starts_with(&fetch.dir.display().to_string()),
        "{local}"
    );
    assert_eq!(std::fs::read(&local).unwrap(), bytes);
    let mut opts = options();
    opts.runtime.compute = Compute::Cpu;
    let server = Server::bind(&c, opts).await.expect("serves the download");
    drop(server);

    // A wrong checksum, a file over the limit and a missing file are refused with the reason,
    // and leave nothing behind.
    let wrong = "0".repeat(64);
    let mut c = config(format!("{base}/m/tiny.safetensors"), Some(wrong.clone()));
    let e = fetch_models(&mut c, &fetch).await.unwrap_err().to_string();
    assert!(
        e.contains("SHA-256") && e.contains(&sha) && e.contains(&wrong),
        "{e}"
    );
    let small = FetchOptions {
        limit_bytes: 100,
        ..fetch.clone()
    };
    let mut c = config(format!("{base}/m/tiny.safetensors"), None);
    let e = fetch_models(&mut c, &small).await.unwrap_err().to_string();
    assert!(e.contains("100"), "{e}");
    let mut c = config(format!("{base}/m/absent.safetensors"), None);
    let e = fetch_models(&mut c, &fetch).await.unwrap_err().to_string();
    assert!(e.contains("404"), "{e}");
    let mut c = config(format!("{base}/r"), Some("XYZ".into()));
    let e = fetch_models(&mut c, &fetch).await.unwrap_err().to_string();
    assert!(e.contains("64 lowercase hex"), "{e}");
    let left: Vec<_> = std::fs::read_dir(&fetch.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(left.len(), 1, "only the good download stays: {left:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

async fn refusal(spec: InferenceServiceSpec, compute: Compute) -> String {
    let mut opts = options();
    opts.runtime.compute = compute;
    let config = ServeConfig::single("m", spec).unwrap();
    match Server::bind(&config, opts).await {
        Ok(_) => panic!("the server started"),
        Err(e) => e.to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unservable_uris_are_refused_with_the_reason() {
    for (uri, says) in [
        ("s3://bucket/resnet50.safetensors", "pvc://CLAIM/PATH"),
        ("gs://bucket/resnet50.safetensors", "pre-signed https://"),
        // Downloaded by `eali serve` before the server is bound (see the fetch test below).
        (
            "https://example.com/resnet50.safetensors",
            "downloaded when eali serve starts",
        ),
    ] {
        let e = refusal(uri_spec(uri.into()), Compute::Cpu).await;
        assert!(e.contains(uri) && e.contains(says), "{e}");
    }
    let dir = scratch("refused");
    let e = refusal(
        uri_spec(format!(
            "file://{}",
            dir.join("absent.safetensors").display()
        )),
        Compute::Cpu,
    )
    .await;
    assert!(e.contains("cannot read"), "{e}");
    let graph = tiny();
    let path = dir.join("tiny.safetensors");
    let json = serde_json::to_string(&graph).unwrap();
    write(&path, &graph, &Weights::seeded(&graph, 1), META_GRAPH, json);
    // Weights without the network they belong to.
    let bare = dir.join("bare.safetensors");
    std::fs::write(
        &bare,
        Weights::seeded(&graph, 1).to_safetensors(&graph).unwrap(),
    )
    .unwrap();
    let e = refusal(uri_spec(bare.display().to_string()), Compute::Cpu).await;
    assert!(e.contains(META_MODEL) && e.contains(META_GRAPH), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}
