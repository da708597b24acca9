//! Serving overhead: `eali serve` with a zero-cost model against a bare hyper echo server on the
//! same machine, both over REST with the same request bodies and the same client.
//!
//! 1. Peak throughput: closed loop, `CONNS` clients sending back to back for `SECS` seconds.
//!    Target (`docs/architecture.md`, "Targets"): eali ≥ 50 % of the echo server's requests
//!    per second.
//! 2. Latency at half the echo server's peak (the strictest reading of the target's load), at
//!    half eali's own peak, and at half the throughput target (a quarter of the echo peak):
//!    open loop (Poisson), p50/p99 of both. Target: eali's p99 at most 1 ms above the echo
//!    server's.
//!
//! `cargo bench --bench serving` (env `SERVING_SECS`, `SERVING_CONNS`, `SERVING_REPS`,
//! `SERVING_SERVER_THREADS`, `SERVING_CLIENT_THREADS` to change the run, `SERVING_BODY=binary`
//! for the binary tensor data extension, `SERVING_RATES=r1,r2,…` for latency at these request
//! rates instead of the three above, `SERVING_AA=1` for the control: a second echo server in
//! eali's place, so the "added p99" printed is what the machine and client measure between two
//! identical servers; the latency runs are
//! repeated, the servers taking turns, and judged on the median).
//! This is a measurement, not a test: it prints the figures and the verdict, and never fails on
//! them.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a bench's setup failing is a failed bench

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use eali::k8s::crd::{
    GpuSelector, InferenceServiceSpec, ModelFormat, ModelRef, PodResources, Policy, Replicas, Slo,
};
use eali::model::{Conv, GraphBuilder, Shape};
use eali::serve::{Compute, DeviceChoice, RuntimeOptions, ServeConfig, ServeOptions, Server};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rand::SeedableRng;
use rand_distr::{Distribution, Exp};

fn env(name: &str, default: f64) -> f64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A bare hyper HTTP/1 server answering every request with a fixed small JSON body after reading
/// the request body: the floor any HTTP inference server sits on.
async fn echo_server() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let svc = service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                    let _ = req.into_body().collect().await;
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(
                        br#"{"model_name":"echo","model_version":"1","outputs":[]}"#,
                    ))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// `eali serve` with a tiny model (3×8×8 input, 10 classes) and the zero-cost executor.
async fn eali_server(dir: &std::path::Path) -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let mut b = GraphBuilder::new("tiny", Shape::new(3, 8, 8));
    let x = b.input();
    let y = b.conv("conv", x, Conv::new(8, 3).padding(1)).unwrap();
    let y = b.global_avg_pool("gap", y).unwrap();
    let y = b.flatten("flatten", y).unwrap();
    b.linear("fc", y, 10, true).unwrap();
    let path = dir.join("tiny.json");
    std::fs::write(&path, serde_json::to_string(&b.finish().unwrap()).unwrap()).unwrap();
    let spec = InferenceServiceSpec {
        model: ModelRef {
            zoo: None,
            uri: Some(format!("file://{}", path.display())),
            format: Some(ModelFormat::EaliJson),
            sha256: None,
        },
        slo: Slo {
            latency_ms: 50,
            percentile: 99.0,
        },
        max_batch_size: 64,
        replicas: Replicas::default(),
        policy: Policy::MaxPerformance,
        gpu: GpuSelector::default(),
        resources: PodResources::default(),
        image: None,
    };
    let opts = ServeOptions {
        http: SocketAddr::from(([127, 0, 0, 1], 0)),
        grpc: None,
        runtime: RuntimeOptions {
            compute: Compute::None,
            default_gpu: "v100-sxm2".into(),
            seed: 1,
            weights: None,
            zero_cost: true,
            locations: Default::default(),
            device: DeviceChoice::Sim,
            switch_latency: None,
            profiles: Vec::new(),
            power_model: None,
        },
        queue_capacity: 1 << 16,
        deadline_factor: 100.0,
        max_body_bytes: 1 << 20,
        report_window_s: 10.0,
    };
    let server = Server::bind(&ServeConfig::single("tiny", spec).unwrap(), opts)
        .await
        .unwrap();
    let addr = server.http_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.run(async {
        let _ = rx.await;
    }));
    (addr, tx)
}

/// The machine's 1/5/15-minute load averages (other work on the machine skews the figures).
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// A request body: the tensor as JSON numbers (`SERVING_BODY=json`, the default) or in the binary
/// tensor data extension (`SERVING_BODY=binary`: what tritonclient sends by default), with the
/// `Inference-Header-Content-Length` the latter needs.
#[derive(Clone)]
struct Body {
    bytes: Bytes,
    header_len: Option<usize>,
}

fn binary_body() -> bool {
    std::env::var("SERVING_BODY").is_ok_and(|v| v == "binary")
}

fn body() -> Body {
    let values: Vec<f32> = (0..3 * 8 * 8).map(|i| i as f32 / 192.0).collect();
    if binary_body() {
        let header = serde_json::json!({"inputs": [{"name": "input", "shape": [1, 3, 8, 8], "datatype": "FP32",
            "parameters": {"binary_data_size": values.len() * 4}}]})
        .to_string();
        let mut bytes = header.as_bytes().to_vec();
        for v in &values {
            bytes.extend(v.to_le_bytes());
        }
        return Body {
            bytes: bytes.into(),
            header_len: Some(header.len()),
        };
    }
    Body {
        bytes: serde_json::json!({"inputs": [{"name": "input", "shape": [1, 3, 8, 8], "datatype": "FP32", "data": values}]})
            .to_string()
            .into(),
        header_len: None,
    }
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn client() -> HttpClient {
    let mut c = HttpConnector::new();
    c.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1024)
        .build(c)
}

async fn one(c: &HttpClient, uri: &hyper::Uri, body: &Body) -> bool {
    let mut req = hyper::Request::post(uri.clone());
    req = match body.header_len {
        Some(n) => req
            .header("content-type", "application/octet-stream")
            .header("inference-header-content-length", n),
        None => req.header("content-type", "application/json"),
    };
    let req = req.body(Full::new(body.bytes.clone())).unwrap();
    match c.request(req).await {
        Ok(r) => {
            let ok = r.status().is_success();
            ok && r.into_body().collect().await.is_ok()
        }
        Err(_) => false,
    }
}

/// Closed loop: `conns` clients back to back for `secs`; successful requests per second.
async fn peak(uri: hyper::Uri, conns: usize, secs: f64) -> f64 {
    let (c, b) = (client(), body());
    // Warm the connections up.
    for _ in 0..conns {
        one(&c, &uri, &b).await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..conns)
        .map(|_| {
            let (c, b, u, stop, done) = (
                c.clone(),
                b.clone(),
                uri.clone(),
                stop.clone(),
                done.clone(),
            );
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    if one(&c, &u, &b).await {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    stop.store(true, Ordering::Relaxed);
    let n = done.load(Ordering::Relaxed);
    let elapsed = t0.elapsed().as_secs_f64();
    for t in tasks {
        let _ = t.await;
    }
    n as f64 / elapsed
}

/// Open loop at `rate` for `secs` over `conns` kept-alive connections (as wrk2 does): Poisson
/// send times are fixed in advance, each connection takes the next one when free (an atomic
/// index, so the client threads never wait on a lock) and sleeps until it, and latency counts
/// from the scheduled time, so a request that waited for a free connection is charged for it.
/// Returns (p50, p99) in ms of successful requests.
async fn latency(uri: hyper::Uri, rate: f64, secs: f64, conns: usize, seed: u64) -> (f64, f64) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let exp = Exp::new(rate).unwrap();
    let start = tokio::time::Instant::now() + Duration::from_millis(200);
    let mut times = Vec::new();
    let mut t = 0.0;
    while t < secs {
        t += exp.sample(&mut rng);
        times.push(start + Duration::from_secs_f64(t));
    }
    let times: Arc<[tokio::time::Instant]> = times.into();
    let next = Arc::new(AtomicUsize::new(0));
    let b = body();
    let workers: Vec<_> = (0..conns)
        .map(|_| {
            let (times, next, b, uri) = (times.clone(), next.clone(), b.clone(), uri.clone());
            tokio::spawn(async move {
                // One client per task: its pool holds this task's single connection.
                let c = client();
                one(&c, &uri, &b).await;
                let mut lat = Vec::new();
                while let Some(&at) = times.get(next.fetch_add(1, Ordering::Relaxed)) {
                    tokio::time::sleep_until(at).await;
                    if one(&c, &uri, &b).await {
                        lat.push(at.elapsed().as_secs_f64() * 1e3);
                    }
                }
                lat
            })
        })
        .collect();
    let mut lat: Vec<f64> = Vec::new();
    for w in workers {
        lat.extend(w.await.unwrap_or_default());
    }
    lat.sort_by(f64::total_cmp);
    let q = |p: f64| {
        let i = ((p * lat.len() as f64).ceil() as usize).clamp(1, lat.len().max(1)) - 1;
        lat.get(i).copied().unwrap_or(f64::NAN)
    };
    (q(0.5), q(0.99))
}

/// Worker threads for the servers' runtime and for the client's, from `SERVING_SERVER_THREADS`
/// and `SERVING_CLIENT_THREADS`; by default the cores are split in half. The client runs on its
/// own runtime so that, where there are cores enough, the load it generates does not queue
/// behind the server's work on the same worker threads (on 2 cores they still share the CPU).
fn threads() -> (usize, usize) {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let server = (env("SERVING_SERVER_THREADS", (cores / 2).max(1) as f64) as usize).max(1);
    let client = (env(
        "SERVING_CLIENT_THREADS",
        cores.saturating_sub(server).max(1) as f64,
    ) as usize)
        .max(1);
    (server, client)
}

fn main() {
    let secs = env("SERVING_SECS", 5.0);
    let conns = env("SERVING_CONNS", 32.0) as usize;
    let reps = (env("SERVING_REPS", 3.0) as usize).max(1);
    let (server_threads, client_threads) = threads();
    let runtime = |n: usize, name: &str| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .thread_name(name)
            .enable_all()
            .build()
            .unwrap()
    };
    let (server_rt, client_rt) = (
        runtime(server_threads, "server-rt"),
        runtime(client_threads, "client-rt"),
    );
    let dir = std::env::temp_dir().join(format!("eali-serving-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Both servers live on the servers' runtime (their accept loops and connections are spawned
    // there); the client drives them from its own.
    // `SERVING_AA=1`: a second echo server in eali's place, the control that shows how much
    // "added p99" this machine and client measure between two identical servers.
    let aa = std::env::var("SERVING_AA").is_ok_and(|v| v == "1");
    let name = if aa { "echo no.2" } else { "eali serve" };
    let (echo, (eali, stop)) = server_rt.block_on(async {
        let echo = echo_server().await;
        if aa {
            (
                echo,
                (echo_server().await, tokio::sync::oneshot::channel::<()>().0),
            )
        } else {
            (echo, eali_server(&dir).await)
        }
    });
    client_rt.block_on(async {
        let echo_uri: hyper::Uri = format!("http://{echo}/v2/models/tiny/infer").parse().unwrap();
        let eali_uri: hyper::Uri = format!("http://{eali}/v2/models/tiny/infer").parse().unwrap();
        println!(
            "serving overhead: {conns} connections, {secs} s per measurement, same client and body ({}); server runtime {server_threads} threads, client runtime {client_threads}, {} cores; load average {}",
            if binary_body() { "binary tensor extension" } else { "JSON tensor" },
            std::thread::available_parallelism().map_or(0, |n| n.get()),
            loadavg()
        );
        let echo_rps = peak(echo_uri.clone(), conns, secs).await;
        let eali_rps = peak(eali_uri.clone(), conns, secs).await;
        let ratio = eali_rps / echo_rps;
        println!("peak throughput   hyper echo {echo_rps:>9.0} req/s   {name} {eali_rps:>9.0} req/s   ratio {:.1} % (target >= 50 %: {})",
            100.0 * ratio, if ratio >= 0.5 { "met" } else { "NOT met" });
        let mut rates = vec![
            ("half the echo peak".to_string(), echo_rps / 2.0),
            ("half eali's peak".to_string(), eali_rps / 2.0),
            ("half the 50 % target, a quarter of the echo peak".to_string(), echo_rps / 4.0),
        ];
        // `SERVING_RATES=30000,40000`: a latency-against-load curve at these rates instead.
        if let Ok(list) = std::env::var("SERVING_RATES") {
            rates = list
                .split(',')
                .filter_map(|r| r.trim().parse::<f64>().ok())
                .map(|r| (format!("{:.0} % of the echo peak", 100.0 * r / echo_rps), r))
                .collect();
        }
        for (what, rate) in rates {
            // Repeated, the two servers taking turns, so a burst of other work on the machine
            // lands on one repetition rather than on one server; the verdict is on the median.
            let mut added = Vec::with_capacity(reps);
            for rep in 0..reps {
                let seed = 1 + rep as u64;
                let (e50, e99) = latency(echo_uri.clone(), rate, secs, conns, seed).await;
                let (s50, s99) = latency(eali_uri.clone(), rate, secs, conns, seed).await;
                println!(
                    "at {rate:.0} req/s ({what}), run {}: hyper echo p50 {e50:.3} ms p99 {e99:.3} ms; {name} p50 {s50:.3} ms p99 {s99:.3} ms; added p99 {:.3} ms",
                    rep + 1,
                    s99 - e99
                );
                added.push(s99 - e99);
            }
            added.sort_by(f64::total_cmp);
            let median = added[added.len() / 2];
            println!(
                "at {rate:.0} req/s ({what}): median added p99 {median:.3} ms over {reps} runs, range {:.3} to {:.3} (target <= 1 ms: {})",
                added[0],
                added[added.len() - 1],
                if median <= 1.0 { "met" } else { "NOT met" }
            );
        }
        println!("load average after: {}", loadavg());
    });
    let _ = stop.send(());
    drop(server_rt);
    let _ = std::fs::remove_dir_all(&dir);
}
