//! Per-node status by server-side apply against a real kube-apiserver: two node agents'
//! `NodeStatusWriter`s apply their `status.nodes` entries (and their pods' `status.reports`) under
//! their own field managers while the real controller keeps reconciling; both entries coexist, the
//! controller's fields survive and it aggregates the node-written reports, a node's second apply
//! changes only its own entry, and `kubectl get` still reads the object.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod k8s_env;

use std::time::Duration;

use eali::k8s::controller::{self, ControllerConfig};
use eali::k8s::crd::{InferenceService, ServingReport};
use eali::k8s::node_status::{
    NodeGpu, NodePod, NodeReport, NodeStatusBatch, NodeStatusWriter, PlanSummary,
};
use eali::k8s::objects::ServeDefaults;
use k8s_env::{control_plane, repo};
use kube::Api;
use serde_json::Value;

fn now() -> String {
    jiff::Timestamp::now().to_string()
}

/// What the agent on `node` reports for one serving pod there.
fn entry(node: &str, pod: &str, gpu: &str, batch: u32, rps: f64, jpr: f64) -> NodeReport {
    NodeReport {
        node: node.into(),
        time: now(),
        gpus: vec![NodeGpu {
            uuid: gpu.into(),
            pod: Some(pod.into()),
            product: Some("Tesla V100-SXM2-16GB".into()),
            clock_mhz: Some(1230),
            energy_joules: Some(1234.5),
        }],
        pods: vec![NodePod {
            pod: pod.into(),
            gpu: Some(gpu.into()),
            plan: Some(PlanSummary {
                batch_size: batch,
                clocks_mhz: vec![1530, 945, 1230],
                switches: 2,
                predicted_latency_ms: Some(41.5),
                predicted_joules_per_request: Some(jpr * 0.95),
                saturated: false,
            }),
            requests_per_second: Some(rps),
            joules_per_request: Some(jpr),
        }],
        ..Default::default()
    }
    .with_totals()
}

fn report(pod: &str, rps: f64, jpr: f64) -> ServingReport {
    ServingReport {
        pod: pod.into(),
        node: None,
        time: now(),
        p99_ms: 30.0,
        requests_per_second: rps,
        joules_per_request: jpr,
        ..Default::default()
    }
}

async fn get(api: &Api<InferenceService>, name: &str) -> Value {
    serde_json::to_value(api.get(name).await.expect("get isvc")).expect("json")
}

fn node_entry<'a>(isvc: &'a Value, node: &str) -> Option<&'a Value> {
    isvc["status"]["nodes"]
        .as_array()?
        .iter()
        .find(|n| n["node"] == node)
}

fn names(list: &Value, key: &str) -> Vec<String> {
    let mut v: Vec<String> = list
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e[key].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Managers of the status subresource and what each owns (as the API server records it).
fn status_managers(isvc: &Value) -> Vec<(String, Value)> {
    isvc["metadata"]["managedFields"]
        .as_array()
        .expect("managedFields")
        .iter()
        .filter(|m| m["subresource"] == "status")
        .map(|m| {
            (
                m["manager"].as_str().unwrap_or_default().to_string(),
                m["fieldsV1"].clone(),
            )
        })
        .collect()
}

/// Polls `f` every 200 ms until it returns Some, or panics after `secs`.
async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    secs: u64,
    what: &str,
    mut f: impl FnMut() -> F,
) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {secs} s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_entries_merge_per_node_beside_the_controller_status() {
    let Some(cp) = control_plane() else { return };
    cp.install_crd();
    let ns = cp.namespace("node-status");
    let name = "resnet50";
    let sample = repo().join("manifests/samples/resnet50-eali.yaml");
    cp.kubectl(&["apply", "-n", &ns, "-f", sample.to_str().expect("utf-8")])
        .expect("apply sample");

    let client = cp.client().await;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let ctl = tokio::spawn(controller::run(
        client.clone(),
        ControllerConfig {
            identity: "node-status-test".into(),
            serve: ServeDefaults {
                image: "eali:test".into(),
            },
            requeue: Duration::from_secs(1),
            report_max_age: Duration::from_secs(600),
            scale_cooldown: Duration::from_secs(600),
            namespace: Some(ns.clone()),
        },
        async move {
            let _ = stop_rx.await;
        },
    ));
    let api: Api<InferenceService> = Api::namespaced(client.clone(), &ns);
    eventually(60, "controller status", || async {
        let v = get(&api, name).await;
        v["status"]["observedGeneration"].as_i64().map(|_| ())
    })
    .await;

    let a = NodeStatusWriter::new(client.clone(), "node-a");
    let b = NodeStatusWriter::new(client.clone(), "node-b");
    assert_eq!(a.manager(), "eali-agent/node-a");
    a.apply_with_reports(
        &ns,
        name,
        &entry("node-a", "resnet50-a", "GPU-aaaa", 8, 100.0, 0.3),
        &[report("resnet50-a", 100.0, 0.3)],
    )
    .await
    .expect("node-a apply");
    b.apply_with_reports(
        &ns,
        name,
        &entry("node-b", "resnet50-b", "GPU-bbbb", 16, 300.0, 0.6),
        &[report("resnet50-b", 300.0, 0.6)],
    )
    .await
    .expect("node-b apply");

    // Both entries, both reports, and the controller's own fields.
    let v = get(&api, name).await;
    assert_eq!(names(&v["status"]["nodes"], "node"), ["node-a", "node-b"]);
    assert_eq!(
        names(&v["status"]["reports"], "pod"),
        ["resnet50-a", "resnet50-b"]
    );
    let na = node_entry(&v, "node-a").expect("node-a");
    assert_eq!(na["gpus"][0]["uuid"], "GPU-aaaa");
    assert_eq!(na["gpus"][0]["pod"], "resnet50-a");
    assert_eq!(na["pods"][0]["plan"]["batchSize"], 8);
    assert_eq!(
        na["pods"][0]["plan"]["clocksMhz"],
        serde_json::json!([1530, 945, 1230])
    );
    assert_eq!(na["joulesPerRequest"], 0.3);
    assert!(
        v["status"]["conditions"]
            .as_array()
            .is_some_and(|c| !c.is_empty())
    );
    assert_eq!(v["status"]["slo"], "p99<=50ms");
    let reports = v["status"]["reports"].as_array().expect("reports");
    assert!(
        reports
            .iter()
            .any(|r| r["pod"] == "resnet50-b" && r["node"] == "node-b"),
        "a report names its node: {reports:?}"
    );
    let managers: Vec<String> = status_managers(&v).into_iter().map(|(m, _)| m).collect();
    for m in ["eali-controller", "eali-agent/node-a", "eali-agent/node-b"] {
        assert!(managers.iter().any(|x| x == m), "{m} in {managers:?}");
    }

    // The controller re-applies its status every second: the entries survive, and it aggregates
    // the node-written reports (request-weighted: (100*0.3 + 300*0.6) / 400 = 0.525 J).
    let v = eventually(30, "controller aggregates node reports", || async {
        let v = get(&api, name).await;
        (v["status"]["joulesPerRequest"].as_f64() == Some(0.525)).then_some(v)
    })
    .await;
    assert_eq!(v["status"]["requestsPerSecond"], 400.0);
    assert_eq!(names(&v["status"]["nodes"], "node"), ["node-a", "node-b"]);
    let b_before = node_entry(&v, "node-b").expect("node-b").clone();
    let b_fields_before = status_managers(&v)
        .into_iter()
        .find(|(m, _)| m == "eali-agent/node-b")
        .expect("node-b fields");

    // node-a's second apply: a new plan on the same pod, and a second pod on another GPU.
    let mut second = entry("node-a", "resnet50-a", "GPU-aaaa", 24, 150.0, 0.2);
    let extra = entry("node-a", "resnet50-c", "GPU-cccc", 4, 50.0, 0.4);
    second.gpus.extend(extra.gpus);
    second.pods.extend(extra.pods);
    let second = second.with_totals();
    a.apply_with_reports(
        &ns,
        name,
        &second,
        &[
            report("resnet50-a", 150.0, 0.2),
            report("resnet50-c", 50.0, 0.4),
        ],
    )
    .await
    .expect("node-a second apply");
    let v = get(&api, name).await;
    let na = node_entry(&v, "node-a").expect("node-a");
    assert_eq!(names(&na["pods"], "pod"), ["resnet50-a", "resnet50-c"]);
    assert_eq!(names(&na["gpus"], "uuid"), ["GPU-aaaa", "GPU-cccc"]);
    let pa = na["pods"]
        .as_array()
        .expect("pods")
        .iter()
        .find(|p| p["pod"] == "resnet50-a")
        .expect("resnet50-a");
    assert_eq!(pa["plan"]["batchSize"], 24);
    assert_eq!(na["requestsPerSecond"], 200.0);
    assert_eq!(na["joulesPerRequest"], 0.25);
    assert_eq!(
        node_entry(&v, "node-b"),
        Some(&b_before),
        "node-b untouched"
    );
    let b_fields_after = status_managers(&v)
        .into_iter()
        .find(|(m, _)| m == "eali-agent/node-b")
        .expect("node-b fields");
    assert_eq!(
        b_fields_after, b_fields_before,
        "node-b still owns its fields"
    );
    assert_eq!(
        names(&v["status"]["reports"], "pod"),
        ["resnet50-a", "resnet50-b", "resnet50-c"]
    );
    assert!(
        v["status"]["conditions"]
            .as_array()
            .is_some_and(|c| !c.is_empty())
    );

    // A pod that moved away: node-a's next apply omits it, and only its report and entry go.
    a.apply_with_reports(
        &ns,
        name,
        &entry("node-a", "resnet50-c", "GPU-cccc", 4, 50.0, 0.4),
        &[report("resnet50-c", 50.0, 0.4)],
    )
    .await
    .expect("node-a third apply");
    let v = get(&api, name).await;
    let na = node_entry(&v, "node-a").expect("node-a");
    assert_eq!(names(&na["pods"], "pod"), ["resnet50-c"]);
    assert_eq!(
        names(&v["status"]["reports"], "pod"),
        ["resnet50-b", "resnet50-c"]
    );

    // node-b withdraws: its entry and report go, node-a's and the controller's stay.
    b.clear(&ns, name).await.expect("node-b clear");
    let v = get(&api, name).await;
    assert_eq!(names(&v["status"]["nodes"], "node"), ["node-a"]);
    assert_eq!(names(&v["status"]["reports"], "pod"), ["resnet50-c"]);
    assert_eq!(v["status"]["slo"], "p99<=50ms");

    // The schema still guards the entries: an over-long GPU UUID is refused with the field named.
    let mut bad = entry("node-b", "resnet50-b", &"G".repeat(64), 8, 1.0, 0.1);
    bad.pods.clear();
    let err = b
        .apply(&ns, name, &bad)
        .await
        .expect_err("64-character UUID refused")
        .to_string();
    assert!(err.contains("uuid"), "{err}");

    // kubectl still reads it, printer columns and the per-node list included.
    let table = cp
        .kubectl(&["get", "eisvc", name, "-n", &ns, "-o", "wide"])
        .expect("kubectl get");
    assert!(table.contains("p99<=50ms"), "{table}");
    let nodes = cp
        .kubectl(&[
            "get",
            "eisvc",
            name,
            "-n",
            &ns,
            "-o",
            "jsonpath={.status.nodes[*].node}",
        ])
        .expect("kubectl jsonpath");
    assert_eq!(nodes.trim(), "node-a");

    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), ctl).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_writes_each_service_and_withdraws_from_the_ones_gone() {
    let Some(cp) = control_plane() else { return };
    cp.install_crd();
    let ns = cp.namespace("node-publish");
    let sample = std::fs::read_to_string(repo().join("manifests/samples/resnet50-eali.yaml"))
        .expect("sample");
    for name in ["svc-a", "svc-b"] {
        let text = sample.replace("name: resnet50", &format!("name: {name}"));
        cp.kubectl_stdin(&["apply", "-n", &ns, "-f", "-"], &text)
            .expect("apply isvc");
    }
    let client = cp.client().await;
    let api: Api<InferenceService> = Api::namespaced(client.clone(), &ns);
    let w = NodeStatusWriter::new(client, "node-p");

    // Round 1: a pod of each service, plus one of a service that does not exist (skipped).
    let mut batch = NodeStatusBatch::default();
    for (svc, gpu) in [("svc-a", "GPU-1"), ("svc-b", "GPU-2"), ("ghost", "GPU-3")] {
        let pod = format!("{svc}-0");
        let e = entry("node-p", &pod, gpu, 8, 10.0, 0.5);
        batch
            .gpu(&ns, svc, e.gpus[0].clone())
            .pod(&ns, svc, e.pods[0].clone())
            .report(&ns, svc, report(&pod, 10.0, 0.5));
    }
    let t1 = now();
    let failed = w.publish(batch, &t1).await;
    assert!(failed.is_empty(), "{failed:?}");
    for svc in ["svc-a", "svc-b"] {
        let v = get(&api, svc).await;
        let n = node_entry(&v, "node-p").unwrap_or_else(|| panic!("{svc}: no entry"));
        assert_eq!(n["time"], t1.as_str(), "stamped with the round's time");
        assert_eq!(n["pods"][0]["pod"], format!("{svc}-0").as_str());
        assert_eq!(n["joulesPerRequest"], 0.5, "totals filled in");
        assert_eq!(names(&v["status"]["reports"], "pod"), [format!("{svc}-0")]);
    }

    // Round 2: svc-b's pod left the node; its entry and report are withdrawn, svc-a's updated.
    let mut batch = NodeStatusBatch::default();
    let e = entry("node-p", "svc-a-0", "GPU-1", 16, 20.0, 0.4);
    batch
        .gpu(&ns, "svc-a", e.gpus[0].clone())
        .pod(&ns, "svc-a", e.pods[0].clone())
        .report(&ns, "svc-a", report("svc-a-0", 20.0, 0.4));
    let failed = w.publish(batch, &now()).await;
    assert!(failed.is_empty(), "{failed:?}");
    let a = get(&api, "svc-a").await;
    let n = node_entry(&a, "node-p").expect("svc-a entry");
    assert_eq!(n["pods"][0]["plan"]["batchSize"], 16);
    let b = get(&api, "svc-b").await;
    assert!(node_entry(&b, "node-p").is_none(), "{:?}", b["status"]);
    assert!(names(&b["status"]["reports"], "pod").is_empty());

    // Round 3: nothing left on the node; svc-a is withdrawn too.
    let failed = w.publish(NodeStatusBatch::default(), &now()).await;
    assert!(failed.is_empty(), "{failed:?}");
    let a = get(&api, "svc-a").await;
    assert!(node_entry(&a, "node-p").is_none(), "{:?}", a["status"]);
}
