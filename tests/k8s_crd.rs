//! The InferenceService CRD on a real kube-apiserver: it installs and is Established, `kubectl
//! explain` shows the field docs, the samples apply, and invalid objects are refused by the API
//! server with a message that names the field.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod k8s_env;

use k8s_env::{control_plane, eventually, repo};
use serde_json::{Value, json};

fn isvc(name: &str, spec: Value) -> String {
    json!({"apiVersion": "eali.dev/v1alpha1", "kind": "InferenceService",
           "metadata": {"name": name}, "spec": spec})
    .to_string()
}

fn valid_spec() -> Value {
    json!({"model": {"zoo": "resnet50"}, "slo": {"latencyMs": 50, "percentile": 99}})
}

/// `valid_spec()` with one JSON pointer replaced (or removed when `value` is null).
fn with(pointer: &str, value: Value) -> Value {
    let mut spec = valid_spec();
    let (parent, key) = pointer.rsplit_once('/').expect("pointer");
    if parent.is_empty() {
        let obj = spec.as_object_mut().expect("object");
        if value.is_null() {
            obj.remove(key)
        } else {
            obj.insert(key.into(), value)
        };
        return spec;
    }
    let mut cur = &mut spec;
    for part in parent.trim_start_matches('/').split('/') {
        let obj = cur.as_object_mut().expect("object");
        cur = obj.entry(part.to_string()).or_insert_with(|| json!({}));
    }
    let obj = cur.as_object_mut().expect("object");
    if value.is_null() {
        obj.remove(key)
    } else {
        obj.insert(key.into(), value)
    };
    spec
}

#[test]
fn crd_installs_samples_apply_and_invalid_objects_are_refused() {
    let Some(cp) = control_plane() else { return };
    cp.install_crd();
    let ns = cp.namespace("crd-test");

    // kubectl explain reads the descriptions from the published schema.
    // (The OpenAPI document is published a moment after the CRD is Established.)
    let explain = eventually(60, "kubectl explain", || {
        cp.kubectl(&["explain", "eisvc.spec.slo.latencyMs"]).ok()
    });
    assert!(
        explain.contains("Latency bound in milliseconds"),
        "{explain}"
    );

    // The samples apply.
    let samples = repo().join("manifests/samples");
    let out = cp
        .kubectl(&["apply", "-n", &ns, "-f", samples.to_str().expect("utf-8")])
        .expect("samples apply");
    println!("{out}");
    let names = cp
        .kubectl(&["get", "eisvc", "-n", &ns, "-o", "name"])
        .expect("get");
    assert_eq!(names.lines().count(), 3, "{names}");
    // Defaults come from the schema: policy and percentile were not given in the maxperf sample.
    let got = cp
        .kubectl(&["get", "eisvc", "resnet50-maxperf", "-n", &ns, "-o", "json"])
        .expect("get");
    let got: Value = serde_json::from_str(&got).expect("json");
    assert_eq!(got["spec"]["slo"]["percentile"].as_f64(), Some(99.0));
    assert_eq!(got["spec"]["maxBatchSize"], json!(32));
    assert_eq!(got["spec"]["replicas"], json!({"min": 1, "max": 1}));
    println!("{}", cp.kubectl(&["get", "eisvc", "-n", &ns]).expect("get"));

    // (what is wrong, spec, a field path the API server's message must name)
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "no model",
            with("/model", Value::Null),
            "spec.model: Required value",
        ),
        ("empty model", with("/model", json!({})), "spec.model"),
        (
            "zoo and uri both set",
            with("/model/uri", json!("file:///m/x.onnx")),
            "spec.model",
        ),
        (
            "zoo name not a DNS label",
            with("/model/zoo", json!("ResNet 50")),
            "spec.model.zoo",
        ),
        (
            "uri with unknown scheme",
            json!({"model": {"uri": "ftp://host/m.onnx"}, "slo": {"latencyMs": 50}}),
            "spec.model.uri",
        ),
        (
            "unknown model format",
            json!({"model": {"uri": "file:///m/x.pt", "format": "pytorch"}, "slo": {"latencyMs": 50}}),
            "spec.model.format",
        ),
        (
            "no slo",
            with("/slo", Value::Null),
            "spec.slo: Required value",
        ),
        (
            "latency 0 ms",
            with("/slo/latencyMs", json!(0)),
            "spec.slo.latencyMs",
        ),
        (
            "latency above 60 s",
            with("/slo/latencyMs", json!(100000)),
            "spec.slo.latencyMs",
        ),
        (
            "latency as a string",
            with("/slo/latencyMs", json!("50ms")),
            "spec.slo.latencyMs",
        ),
        (
            "percentile 100",
            with("/slo/percentile", json!(100)),
            "spec.slo.percentile",
        ),
        (
            "percentile below 50",
            with("/slo/percentile", json!(10)),
            "spec.slo.percentile",
        ),
        (
            "batch size 0",
            with("/maxBatchSize", json!(0)),
            "spec.maxBatchSize",
        ),
        (
            "batch size 4096",
            with("/maxBatchSize", json!(4096)),
            "spec.maxBatchSize",
        ),
        (
            "min replicas above max",
            with("/replicas", json!({"min": 3, "max": 2})),
            "spec.replicas.min",
        ),
        (
            "max replicas 0",
            with("/replicas", json!({"min": 1, "max": 0})),
            "spec.replicas.max",
        ),
        (
            "min replicas 100",
            with("/replicas", json!({"min": 100, "max": 100})),
            "spec.replicas.min",
        ),
        (
            "unknown policy",
            with("/policy", json!("fastest")),
            "spec.policy",
        ),
        (
            "GPU product with a space",
            with("/gpu/product", json!("V100 SXM2")),
            "spec.gpu.product",
        ),
        (
            "CPU not a quantity",
            with("/resources/cpu", json!("two")),
            "spec.resources.cpu",
        ),
        (
            "memory in GB",
            with("/resources/memory", json!("4GB")),
            "spec.resources.memory",
        ),
        ("empty image", with("/image", json!("")), "spec.image"),
        (
            "unknown field",
            with("/batchSize", json!(8)),
            "spec.batchSize",
        ),
    ];
    let mut report = String::from("\nrefused objects (field | API server message):\n");
    let mut failures = Vec::new();
    for (i, (what, spec, field)) in cases.iter().enumerate() {
        let name = format!("bad-{i}");
        match cp.kubectl_stdin(&["apply", "-n", &ns, "-f", "-"], &isvc(&name, spec.clone())) {
            Ok(out) => failures.push(format!("{what}: accepted ({})", out.trim())),
            Err(msg) => {
                let msg = msg.trim().replace('\n', " ");
                report.push_str(&format!("  {what:<26} | {msg}\n"));
                if !msg.contains(field) {
                    failures.push(format!("{what}: message does not name {field}: {msg}"));
                }
            }
        }
    }
    println!("{report}");
    assert!(cases.len() >= 15);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Nothing invalid slipped in.
    let names = cp
        .kubectl(&["get", "eisvc", "-n", &ns, "-o", "name"])
        .expect("get");
    assert_eq!(names.lines().count(), 3, "{names}");
}

#[test]
fn status_subresource_and_printer_columns() {
    let Some(cp) = control_plane() else { return };
    cp.install_crd();
    let ns = cp.namespace("crd-status");
    cp.kubectl_stdin(&["apply", "-n", &ns, "-f", "-"], &isvc("svc", valid_spec()))
        .expect("apply");
    // Status goes through the status subresource only; a spec update leaves it alone.
    let status = json!({"status": {
        "slo": "p99<=50ms", "p99Ms": 41.5, "joulesPerRequest": 0.82, "replicas": 1,
        "conditions": [{"type": "Ready", "status": "True", "reason": "Available", "message": "",
                        "lastTransitionTime": "2026-01-01T00:00:00Z"}]}});
    cp.kubectl(&[
        "patch",
        "eisvc",
        "svc",
        "-n",
        &ns,
        "--subresource=status",
        "--type=merge",
        "-p",
        &status.to_string(),
    ])
    .expect("status patch");
    let table = cp
        .kubectl(&["get", "eisvc", "svc", "-n", &ns])
        .expect("get");
    println!("{table}");
    let header: Vec<&str> = table
        .lines()
        .next()
        .expect("header")
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["NAME", "READY", "SLO", "P99", "J/REQ", "SAVED", "AGE"]
    );
    let row: Vec<&str> = table
        .lines()
        .nth(1)
        .expect("row")
        .split_whitespace()
        .collect();
    assert_eq!(&row[..5], ["svc", "True", "p99<=50ms", "41.5", "0.82"]);
    // A status written through the main resource is dropped by the status subresource contract.
    cp.kubectl(&[
        "patch",
        "eisvc",
        "svc",
        "-n",
        &ns,
        "--type=merge",
        "-p",
        r#"{"status":{"p99Ms":1}}"#,
    ])
    .expect("main patch");
    let p99 = cp
        .kubectl(&[
            "get",
            "eisvc",
            "svc",
            "-n",
            &ns,
            "-o",
            "jsonpath={.status.p99Ms}",
        ])
        .expect("get");
    assert_eq!(p99, "41.5");
    // Category and short name resolve.
    let by_cat = cp
        .kubectl(&["get", "eali", "-n", &ns, "-o", "name"])
        .expect("category");
    assert!(by_cat.contains("inferenceservice.eali.dev/svc"), "{by_cat}");
}
