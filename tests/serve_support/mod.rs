//! Shared helpers of the `serve_*` integration tests: start a server in-process on free ports,
//! talk HTTP to it, stop it.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use eali::k8s::crd::{
    GpuSelector, InferenceServiceSpec, ModelRef, PodResources, Policy, Replicas, Slo,
};
use eali::serve::state::AppState;
use eali::serve::{
    Compute, DeviceChoice, RuntimeOptions, ServeConfig, ServeError, ServeOptions, Server,
};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

pub fn spec(zoo: &str, slo_ms: u32, max_batch: u32, policy: Policy) -> InferenceServiceSpec {
    InferenceServiceSpec {
        model: ModelRef {
            zoo: Some(zoo.into()),
            uri: None,
            format: None,
            sha256: None,
        },
        slo: Slo {
            latency_ms: slo_ms,
            percentile: 99.0,
        },
        max_batch_size: max_batch,
        replicas: Replicas::default(),
        policy,
        gpu: GpuSelector {
            profile: Some("v100-sxm2".into()),
            ..GpuSelector::default()
        },
        resources: PodResources::default(),
        image: None,
    }
}

pub fn options() -> ServeOptions {
    ServeOptions {
        http: SocketAddr::from(([127, 0, 0, 1], 0)),
        grpc: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        runtime: RuntimeOptions {
            compute: Compute::None,
            default_gpu: "v100-sxm2".into(),
            seed: 3,
            weights: None,
            zero_cost: false,
            locations: Default::default(),
            device: DeviceChoice::Sim,
            switch_latency: None,
            profiles: Vec::new(),
            power_model: None,
        },
        queue_capacity: 256,
        deadline_factor: 2.0,
        max_body_bytes: 16 << 20,
        report_window_s: 10.0,
    }
}

pub struct Running {
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    pub state: Arc<AppState>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), ServeError>>,
}

pub async fn start(name: &str, spec: InferenceServiceSpec, opts: ServeOptions) -> Running {
    let config = ServeConfig::single(name, spec).unwrap();
    let server = Server::bind(&config, opts).await.unwrap();
    let http = server.http_addr().unwrap();
    let grpc = server.grpc_addr().unwrap().unwrap();
    let state = server.state();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async {
        let _ = rx.await;
    }));
    Running {
        http,
        grpc,
        state,
        stop: Some(tx),
        task,
    }
}

impl Running {
    /// Starts the drain and waits until the server has shut down.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.task.await.unwrap().unwrap();
    }
    /// Starts the drain without waiting.
    pub fn begin_stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
    pub async fn join(self) {
        self.task.await.unwrap().unwrap();
    }
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }
}

pub struct Reply {
    pub status: u16,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

pub async fn request(method: &str, url: &str, headers: &[(&str, String)], body: Vec<u8>) -> Reply {
    let mut b = hyper::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, v);
    }
    let resp = client()
        .request(b.body(Full::new(Bytes::from(body))).unwrap())
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Reply {
        status,
        headers,
        body,
    }
}

pub async fn get(url: &str) -> Reply {
    request("GET", url, &[], Vec::new()).await
}

pub async fn post_json(url: &str, body: &serde_json::Value) -> Reply {
    request(
        "POST",
        url,
        &[("content-type", "application/json".into())],
        body.to_string().into_bytes(),
    )
    .await
}

/// A JSON infer body with one FP32 input of `dims` filled with `fill`.
pub fn infer_body(dims: &[i64], fill: f32) -> serde_json::Value {
    let n: i64 = dims.iter().product();
    serde_json::json!({
        "inputs": [{"name": "input", "shape": dims, "datatype": "FP32", "data": vec![fill; n as usize]}]
    })
}
