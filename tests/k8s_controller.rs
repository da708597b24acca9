//! `eali agent` against a real kube-apiserver: an InferenceService yields the Deployment and
//! Service (requests, labels, owner references), status and conditions move as serving pods
//! report, the controller scales on saturation, deletion cleans up, and of two agents only the
//! Lease holder reconciles while the other takes over when it stops.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod k8s_env;

use std::process::{Child, Command, Stdio};

use eali::k8s::crd::InferenceServiceSpec;
use k8s_env::{ControlPlane, control_plane, eventually, repo};
use serde_json::{Value, json};

/// A running `eali agent`, killed on drop.
struct Agent {
    child: Child,
    identity: String,
    log: std::path::PathBuf,
}

impl Agent {
    fn start(cp: &ControlPlane, ns: &str, identity: &str, extra: &[&str]) -> Agent {
        let log_path = cp.dir.join(format!("agent-{identity}.log"));
        let log = std::fs::File::create(&log_path).expect("log");
        let child = Command::new(env!("CARGO_BIN_EXE_eali"))
            .args([
                "agent",
                "--namespace",
                ns,
                "--watch-namespace",
                ns,
                "--identity",
                identity,
            ])
            .args([
                "--lease-duration-secs",
                "4",
                "--renew-secs",
                "1",
                "--requeue-secs",
                "2",
            ])
            .args([
                "--scale-cooldown-secs",
                "0",
                "--report-max-age-secs",
                "600",
                "--serve-image",
                "eali:test",
            ])
            // Two agents run side by side here: each takes a free port for /metrics.
            .args(["--metrics-addr", "127.0.0.1:0"])
            .args(extra)
            .env("KUBECONFIG", &cp.kubeconfig)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn eali agent");
        Agent {
            child,
            identity: identity.into(),
            log: log_path,
        }
    }

    fn signal(&self, sig: &str) {
        Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("kill");
    }

    fn wait(&mut self) {
        let _ = self.child.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("--- log of eali agent {} ---\n{log}", self.identity);
        }
    }
}

fn condition(isvc: &Value, ty: &str) -> Option<(String, String)> {
    isvc["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == ty)
        .map(|c| {
            (
                c["status"].as_str().unwrap_or_default().to_string(),
                c["reason"].as_str().unwrap_or_default().to_string(),
            )
        })
}

fn now() -> String {
    jiff::Timestamp::now().to_string()
}

/// What a node agent writes for its serving pods: the status `reports` list.
fn report(cp: &ControlPlane, ns: &str, name: &str, reports: Value) {
    let patch = json!({"status": {"reports": reports}}).to_string();
    cp.kubectl(&[
        "patch",
        "eisvc",
        name,
        "-n",
        ns,
        "--subresource=status",
        "--type=merge",
        "-p",
        &patch,
    ])
    .expect("report");
}

fn events(cp: &ControlPlane, ns: &str, name: &str) -> Vec<(String, String, String)> {
    let v = cp
        .get_json(&[
            "events.v1.events.k8s.io",
            "-n",
            ns,
            "--field-selector",
            &format!("regarding.name={name}"),
        ])
        .unwrap_or(Value::Null);
    v["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                // Only events about the InferenceService: the Service of the same name also
                // gets events from the API server's own controllers (e.g. the ClusterIP
                // allocator's repair loop), which are not ours to check.
                .filter(|e| e["regarding"]["kind"] == "InferenceService")
                .map(|e| {
                    let s = |k: &str| e[k].as_str().unwrap_or_default().to_string();
                    (s("reason"), s("reportingInstance"), s("note"))
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn inference_service_yields_deployment_and_service_and_status_follows_reports() {
    let Some(cp) = control_plane() else { return };
    cp.install_crd();
    let ns = cp.namespace("ctl-main");
    let _agent = Agent::start(cp, &ns, "agent-main", &[]);
    let sample = repo().join("manifests/samples/resnet50-eali.yaml");
    cp.kubectl(&["apply", "-n", &ns, "-f", sample.to_str().expect("utf-8")])
        .expect("apply sample");

    // Deployment: one replica, one eali.dev/gpu, owned by the InferenceService.
    let d = eventually(60, "Deployment resnet50", || {
        cp.get_json(&["deployment", "resnet50", "-n", &ns])
    });
    let isvc = cp
        .get_json(&["eisvc", "resnet50", "-n", &ns])
        .expect("isvc");
    assert_eq!(d["spec"]["replicas"], 1);
    let owner = &d["metadata"]["ownerReferences"][0];
    assert_eq!(owner["kind"], "InferenceService");
    assert_eq!(owner["name"], "resnet50");
    assert_eq!(owner["uid"], isvc["metadata"]["uid"]);
    assert_eq!(owner["controller"], true);
    assert_eq!(
        d["metadata"]["labels"]["eali.dev/inferenceservice"],
        "resnet50"
    );
    assert_eq!(
        d["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "eali"
    );
    let c = &d["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["image"], "eali:test");
    assert_eq!(c["resources"]["limits"]["eali.dev/gpu"], "1");
    assert_eq!(c["resources"]["requests"]["eali.dev/gpu"], "1");
    assert_eq!(c["resources"]["limits"]["memory"], "4Gi");
    assert_eq!(
        d["spec"]["template"]["spec"]["nodeSelector"]["eali.dev/gpu-product"],
        "Tesla-V100-SXM2-16GB"
    );
    let spec_env = c["env"]
        .as_array()
        .expect("env")
        .iter()
        .find(|e| e["name"] == "EALI_SERVE_SPEC")
        .expect("spec env");
    let spec: InferenceServiceSpec =
        serde_json::from_str(spec_env["value"].as_str().expect("str")).expect("json");
    assert_eq!(
        spec,
        serde_json::from_value::<InferenceServiceSpec>(isvc["spec"].clone()).expect("spec")
    );
    // Managed by server-side apply under one field manager.
    let full = cp
        .get_json(&["deployment", "resnet50", "-n", &ns, "--show-managed-fields"])
        .expect("deployment");
    let managers: Vec<&str> = full["metadata"]["managedFields"]
        .as_array()
        .expect("managedFields")
        .iter()
        .filter_map(|m| m["manager"].as_str())
        .collect();
    assert!(managers.contains(&"eali-controller"), "{managers:?}");

    let s = eventually(30, "Service resnet50", || {
        cp.get_json(&["service", "resnet50", "-n", &ns])
    });
    let ports: Vec<(String, i64)> = s["spec"]["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap_or_default().into(),
                p["port"].as_i64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        ports,
        [("http".to_string(), 8080), ("grpc".to_string(), 8081)]
    );
    assert_eq!(
        s["spec"]["selector"]["eali.dev/inferenceservice"],
        "resnet50"
    );
    assert_eq!(
        s["metadata"]["ownerReferences"][0]["uid"],
        isvc["metadata"]["uid"]
    );

    // Status: finalizer, observedGeneration, endpoint, Ready False (no pods run here), SLO unknown.
    let isvc = eventually(30, "status written", || {
        cp.get_json(&["eisvc", "resnet50", "-n", &ns])
            .filter(|v| v["status"]["observedGeneration"].is_i64())
    });
    assert_eq!(isvc["metadata"]["finalizers"], json!(["eali.dev/cleanup"]));
    assert_eq!(
        isvc["status"]["observedGeneration"],
        isvc["metadata"]["generation"]
    );
    assert_eq!(
        isvc["status"]["endpoint"],
        "http://resnet50.ctl-main.svc:8080"
    );
    assert_eq!(isvc["status"]["grpcEndpoint"], "resnet50.ctl-main.svc:8081");
    assert_eq!(isvc["status"]["slo"], "p99<=50ms");
    assert_eq!(
        condition(&isvc, "Ready"),
        Some(("False".into(), "Unavailable".into()))
    );
    assert_eq!(
        condition(&isvc, "SloMet"),
        Some(("Unknown".into(), "NoReports".into()))
    );

    // No kube-controller-manager runs here, so play the Deployment controller: one pod available.
    cp.kubectl(&[
        "patch",
        "deployment",
        "resnet50",
        "-n",
        &ns,
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"replicas":1,"readyReplicas":1,"availableReplicas":1}}"#,
    ])
    .expect("deployment status");
    eventually(30, "Ready True", || {
        cp.get_json(&["eisvc", "resnet50", "-n", &ns])
            .filter(|v| condition(v, "Ready") == Some(("True".into(), "Available".into())))
    });

    // Idempotent: requeues every 2 s change nothing while nothing changes.
    let rv = |kind: &str| {
        cp.get_json(&[kind, "resnet50", "-n", &ns])
            .map(|v| v["metadata"]["resourceVersion"].clone())
    };
    let before = (rv("deployment"), rv("service"), rv("eisvc"));
    std::thread::sleep(std::time::Duration::from_secs(5));
    assert_eq!(
        (rv("deployment"), rv("service"), rv("eisvc")),
        before,
        "a no-op reconcile wrote"
    );

    // A pod reports a saturated load within the SLO: figures appear, replicas go to 2.
    report(
        cp,
        &ns,
        "resnet50",
        json!([{"pod": "resnet50-a", "node": "n1", "time": now(), "p99Ms": 41.5,
        "requestsPerSecond": 180.0, "joulesPerRequest": 0.62, "energySavedRatio": 0.31, "loadRatio": 0.97,
        "saturated": true}]),
    );
    let isvc = eventually(30, "scale to 2", || {
        cp.get_json(&["eisvc", "resnet50", "-n", &ns])
            .filter(|v| v["status"]["replicas"] == 2)
    });
    assert_eq!(isvc["status"]["p99Ms"].as_f64(), Some(41.5));
    assert_eq!(isvc["status"]["joulesPerRequest"].as_f64(), Some(0.62));
    assert_eq!(isvc["status"]["requestsPerSecond"].as_f64(), Some(180.0));
    assert_eq!(isvc["status"]["energySavedRatio"].as_f64(), Some(0.31));
    assert_eq!(
        condition(&isvc, "SloMet"),
        Some(("True".into(), "WithinSlo".into()))
    );
    // The reports stay: the controller's apply does not own them.
    assert_eq!(isvc["status"]["reports"].as_array().map(Vec::len), Some(1));
    eventually(30, "Deployment at 2 replicas", || {
        cp.get_json(&["deployment", "resnet50", "-n", &ns])
            .filter(|d| d["spec"]["replicas"] == 2)
    });
    println!(
        "{}",
        cp.kubectl(&["get", "eisvc", "-n", &ns, "-o", "wide"])
            .expect("get")
    );

    // Two pods, both slow and lightly loaded: SLO violated (Warning event), then scale-in.
    report(
        cp,
        &ns,
        "resnet50",
        json!([
        {"pod": "resnet50-a", "time": now(), "p99Ms": 72.0, "requestsPerSecond": 20.0, "joulesPerRequest": 0.9, "loadRatio": 0.2},
        {"pod": "resnet50-b", "time": now(), "p99Ms": 55.0, "requestsPerSecond": 20.0, "joulesPerRequest": 1.1, "loadRatio": 0.2}]),
    );
    let isvc = eventually(30, "SLO violated and scaled in", || {
        cp.get_json(&["eisvc", "resnet50", "-n", &ns]).filter(|v| {
            condition(v, "SloMet").is_some_and(|c| c.0 == "False") && v["status"]["replicas"] == 1
        })
    });
    assert_eq!(
        condition(&isvc, "Degraded"),
        Some(("True".into(), "SloViolated".into()))
    );
    assert_eq!(isvc["status"]["p99Ms"].as_f64(), Some(72.0));
    assert_eq!(isvc["status"]["joulesPerRequest"].as_f64(), Some(1.0));
    println!("{}", cp.kubectl(&["get", "eisvc", "-n", &ns]).expect("get"));
    let evs = eventually(30, "events", || {
        let e = events(cp, &ns, "resnet50");
        let reasons: Vec<&str> = e.iter().map(|(r, _, _)| r.as_str()).collect();
        (reasons.contains(&"Created")
            && reasons.contains(&"SloViolated")
            && reasons.contains(&"Scaled"))
        .then_some(e)
    });
    for (reason, instance, note) in &evs {
        println!("event {reason:<12} from {instance}: {note}");
        assert_eq!(instance, "agent-main");
    }

    // Deletion: the finalizer removes Deployment and Service, then the InferenceService goes.
    cp.kubectl(&[
        "delete",
        "eisvc",
        "resnet50",
        "-n",
        &ns,
        "--wait=true",
        "--timeout=60s",
    ])
    .expect("delete");
    assert!(
        cp.get_json(&["deployment", "resnet50", "-n", &ns])
            .is_none(),
        "Deployment left behind"
    );
    assert!(
        cp.get_json(&["service", "resnet50", "-n", &ns]).is_none(),
        "Service left behind"
    );
}

fn lease_holder(cp: &ControlPlane, ns: &str) -> Option<String> {
    let l = cp.get_json(&["lease", "eali-controller", "-n", ns])?;
    l["spec"]["holderIdentity"].as_str().map(String::from)
}

fn apply_isvc(cp: &ControlPlane, ns: &str, name: &str) {
    let obj = json!({"apiVersion": "eali.dev/v1alpha1", "kind": "InferenceService", "metadata": {"name": name},
        "spec": {"model": {"zoo": "resnet50"}, "slo": {"latencyMs": 50}}});
    cp.kubectl_stdin(&["apply", "-n", ns, "-f", "-"], &obj.to_string())
        .expect("apply");
}

fn reconcilers(cp: &ControlPlane, ns: &str, name: &str) -> Vec<String> {
    let mut who: Vec<String> = events(cp, ns, name)
        .into_iter()
        .map(|(_, i, _)| i)
        .collect();
    who.sort();
    who.dedup();
    who
}

#[test]
fn only_the_lease_holder_reconciles_and_the_other_takes_over() {
    let Some(cp) = control_plane() else { return };
    cp.install_crd();
    let ns = cp.namespace("ctl-lease");
    let mut one = Agent::start(cp, &ns, "agent-one", &[]);
    eventually(30, "agent-one leads", || {
        (lease_holder(cp, &ns).as_deref() == Some("agent-one")).then_some(())
    });
    let two = Agent::start(cp, &ns, "agent-two", &[]);

    apply_isvc(cp, &ns, "first");
    eventually(60, "Deployment first", || {
        cp.get_json(&["deployment", "first", "-n", &ns])
    });
    // Give the follower several renew periods to (wrongly) act.
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert_eq!(lease_holder(cp, &ns).as_deref(), Some("agent-one"));
    assert_eq!(reconcilers(cp, &ns, "first"), ["agent-one"]);

    // Clean stop: agent-one releases the Lease and agent-two takes over without waiting it out.
    one.signal("-TERM");
    one.wait();
    eventually(30, "agent-two leads", || {
        (lease_holder(cp, &ns).as_deref() == Some(two.identity.as_str())).then_some(())
    });
    apply_isvc(cp, &ns, "second");
    eventually(60, "Deployment second", || {
        cp.get_json(&["deployment", "second", "-n", &ns])
    });
    eventually(30, "event from agent-two", || {
        (reconcilers(cp, &ns, "second") == ["agent-two"]).then_some(())
    });

    // Crash: agent-two is killed without releasing; agent-three waits out the Lease, then leads.
    two.signal("-KILL");
    let _three = Agent::start(cp, &ns, "agent-three", &[]);
    eventually(60, "agent-three leads", || {
        (lease_holder(cp, &ns).as_deref() == Some("agent-three")).then_some(())
    });
    let lease = cp
        .get_json(&["lease", "eali-controller", "-n", &ns])
        .expect("lease");
    assert_eq!(lease["spec"]["leaseTransitions"], 2, "{lease}");
    apply_isvc(cp, &ns, "third");
    eventually(60, "Deployment third", || {
        cp.get_json(&["deployment", "third", "-n", &ns])
    });
    eventually(30, "event from agent-three", || {
        (reconcilers(cp, &ns, "third") == ["agent-three"]).then_some(())
    });
}

#[test]
fn a_model_on_a_persistent_volume_claim_is_mounted_read_only_into_the_serving_pods() {
    let Some(cp) = control_plane() else { return };
    cp.install_crd();
    let ns = cp.namespace("ctl-pvc");
    let _agent = Agent::start(cp, &ns, "agent-pvc", &[]);
    let sample = repo().join("manifests/samples/custom-onnx.yaml");
    cp.kubectl(&["apply", "-n", &ns, "-f", sample.to_str().expect("utf-8")])
        .expect("apply the PVC sample");
    let d = eventually(60, "Deployment custom-onnx", || {
        cp.get_json(&["deployment", "custom-onnx", "-n", &ns])
    });
    let pod = &d["spec"]["template"]["spec"];
    // As the API server stored it, for the record.
    println!(
        "custom-onnx Deployment pod spec (volumes, container mounts and args): {}",
        serde_json::to_string_pretty(&json!({
            "replicas": d["spec"]["replicas"],
            "volumes": pod["volumes"],
            "volumeMounts": pod["containers"][0]["volumeMounts"],
            "args": pod["containers"][0]["args"],
        }))
        .expect("json")
    );
    assert_eq!(d["spec"]["replicas"], 2);
    assert_eq!(
        pod["volumes"],
        json!([{"name": "model", "persistentVolumeClaim": {"claimName": "models", "readOnly": true}}])
    );
    assert_eq!(
        pod["containers"][0]["volumeMounts"],
        json!([{"name": "model", "mountPath": "/var/lib/eali/pvc/models", "readOnly": true}])
    );
    assert_eq!(
        pod["containers"][0]["args"],
        json!(["serve", "--http", "0.0.0.0:8080", "--grpc", "0.0.0.0:8081"])
    );
}
