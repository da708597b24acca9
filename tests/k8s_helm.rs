//! The Helm chart and the agent's startup checks on a real kube-apiserver: `helm lint`, `helm
//! template | kubectl apply --dry-run=server`, values.schema.json refusing bad values, `helm
//! install`, RBAC checked with `kubectl auth can-i --list` as the agent's ServiceAccount (what it
//! needs and no more), and `eali agent` saying how to fix a missing CRD or missing RBAC.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod k8s_env;

use std::collections::BTreeSet;
use std::process::{Command, Stdio};

use eali::k8s::checks::PERMISSIONS;
use k8s_env::{ControlPlane, control_plane, eventually, pipe, repo};

fn chart() -> String {
    repo()
        .join("charts/eali")
        .to_str()
        .expect("utf-8")
        .to_string()
}

/// Runs `eali agent` with a kubeconfig; returns (success, stdout + stderr).
fn agent(kubeconfig: &std::path::Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_eali"))
        .arg("agent")
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .env_remove("POD_NAMESPACE")
        .env_remove("EALI_SERVICE_ACCOUNT")
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .stdin(Stdio::null())
        .output()
        .expect("run eali agent");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A kubeconfig that authenticates as a ServiceAccount through a TokenRequest token.
fn sa_kubeconfig(cp: &ControlPlane, ns: &str, sa: &str) -> std::path::PathBuf {
    let token = cp
        .kubectl(&["create", "token", sa, "-n", ns, "--duration=1h"])
        .expect("token");
    let path = cp.dir.join(format!("kubeconfig-{ns}-{sa}"));
    cp.write_token_kubeconfig(&path, token.trim())
        .expect("kubeconfig");
    path
}

/// (resource, verb) pairs from `kubectl auth can-i --list`, resource rows only.
fn can_i(cp: &ControlPlane, user: &str, ns: &str) -> BTreeSet<(String, String)> {
    let out = cp
        .kubectl(&["auth", "can-i", "--list", "--as", user, "-n", ns])
        .expect("can-i --list");
    let mut set = BTreeSet::new();
    for line in out.lines().skip(1) {
        // Columns: Resources, Non-Resource URLs, Resource Names, Verbs; lists print as [a b c].
        let (Some(first), Some(start)) = (line.split_whitespace().next(), line.rfind('[')) else {
            continue;
        };
        if first.starts_with('[') {
            continue; // non-resource URL rows
        }
        for v in line[start..]
            .trim_matches(|c| c == '[' || c == ']' || c == ' ')
            .split_whitespace()
        {
            set.insert((first.to_string(), v.to_string()));
        }
    }
    set
}

fn expected(lease_namespace: bool) -> BTreeSet<(String, String)> {
    let mut set = BTreeSet::new();
    for p in PERMISSIONS {
        if p.own_namespace && !lease_namespace {
            continue;
        }
        let (res, sub) = match p.resource.split_once('/') {
            Some((r, s)) => (r, format!("/{s}")),
            None => (p.resource, String::new()),
        };
        let name = if p.group.is_empty() {
            format!("{res}{sub}")
        } else {
            format!("{res}.{}{sub}", p.group)
        };
        for v in p.verbs {
            set.insert((name.clone(), v.to_string()));
        }
    }
    set
}

#[test]
fn chart_installs_with_least_privilege_rbac_and_agent_checks_explain_fixes() {
    let Some(cp) = control_plane() else { return };

    // Before the CRD exists the agent refuses to start and says how to install it.
    let (ok, out) = agent(&cp.kubeconfig, &["--check-only", "--namespace", "default"]);
    println!("agent without CRD:\n{out}");
    assert!(!ok);
    assert!(
        out.contains("inferenceservices.eali.dev) is not installed"),
        "{out}"
    );
    assert!(
        out.contains("eali crd | kubectl apply --server-side -f -"),
        "{out}"
    );

    // Lint, strict.
    let lint = cp.helm(&["lint", "--strict", &chart()]).expect("helm lint");
    println!("{lint}");

    // values.schema.json refuses bad values.
    for bad in [
        "agent.renewSeconds=0",
        "image.pullPolicy=Sometimes",
        "agent.leaseName=Bad_Name",
        "nosuchkey=1",
    ] {
        let err = cp
            .helm(&["template", "eali", &chart(), "--set", bad])
            .expect_err(bad);
        assert!(
            err.contains("values don't meet the specifications of the schema"),
            "{bad}: {err}"
        );
    }

    // The optional ServiceMonitor renders only when asked for.
    let off = cp.helm(&["template", "eali", &chart()]).expect("template");
    assert!(!off.contains("kind: ServiceMonitor"));
    let on = cp
        .helm(&[
            "template",
            "eali",
            &chart(),
            "--set",
            "metrics.serviceMonitor.enabled=true",
        ])
        .expect("template");
    assert!(
        on.contains("kind: ServiceMonitor") && on.contains("port: metrics"),
        "{on}"
    );

    // Rendered manifests pass the API server's own validation (dry run, nothing stored).
    cp.kubectl(&["create", "namespace", "eali-dry"])
        .expect("ns");
    let rendered = cp
        .helm(&[
            "template",
            "eali",
            &chart(),
            "--namespace",
            "eali-dry",
            "--include-crds",
        ])
        .expect("template");
    let dry = pipe(
        cp.kubectl_cmd()
            .args(["apply", "--dry-run=server", "-f", "-"]),
        &rendered,
    )
    .expect("dry-run=server");
    println!("{dry}");
    assert!(
        dry.contains("daemonset.apps/eali-agent created (server dry run)"),
        "{dry}"
    );
    assert!(
        cp.kubectl(&["get", "daemonset", "eali-agent", "-n", "eali-dry"])
            .is_err(),
        "dry run stored objects"
    );

    // Install for real (the chart's crds/ installs the CRD first).
    let install = cp
        .helm(&[
            "install",
            "eali",
            &chart(),
            "--namespace",
            "eali-system",
            "--create-namespace",
        ])
        .expect("helm install");
    println!("{install}");
    cp.kubectl(&[
        "wait",
        "--for=condition=Established",
        "crd/inferenceservices.eali.dev",
        "--timeout=60s",
    ])
    .expect("CRD Established");
    let ds = cp
        .kubectl(&[
            "get",
            "daemonset",
            "eali-agent",
            "-n",
            "eali-system",
            "-o",
            "json",
        ])
        .expect("daemonset");
    let ds: serde_json::Value = serde_json::from_str(&ds).expect("json");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["priorityClassName"], "system-node-critical");
    assert_eq!(pod["serviceAccountName"], "eali");
    // Not privileged: root with every capability dropped but SYS_ADMIN (NVML's clock setters).
    let sc = &pod["containers"][0]["securityContext"];
    assert_eq!(sc["privileged"], false);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(sc["capabilities"]["add"], serde_json::json!(["SYS_ADMIN"]));
    // The node side runs by default, wired to the mounted kubelet and socket directories, with
    // host PIDs to identify control-socket callers.
    assert_eq!(pod["hostPID"], true);
    let args: Vec<&str> = pod["containers"][0]["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    for want in [
        "--device-plugin",
        "--plugin-dir=/var/lib/kubelet/device-plugins",
        "--pod-resources-socket=/var/lib/kubelet/pod-resources/kubelet.sock",
        "--control-root=/run/eali/control",
    ] {
        assert!(args.contains(&want), "{want} missing from {args:?}");
    }
    let host_paths: Vec<&str> = pod["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .filter_map(|v| v["hostPath"]["path"].as_str())
        .collect();
    assert_eq!(
        host_paths,
        [
            "/var/lib/kubelet/device-plugins",
            "/var/lib/kubelet/pod-resources",
            "/run/eali"
        ]
    );
    let tolerated: Vec<&str> = pod["tolerations"]
        .as_array()
        .expect("tolerations")
        .iter()
        .filter_map(|t| t["key"].as_str())
        .collect();
    assert!(tolerated.contains(&"nvidia.com/gpu"), "{tolerated:?}");
    assert!(
        pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
            .is_object()
    );

    // RBAC: exactly PERMISSIONS on top of what every authenticated user gets.
    cp.kubectl(&["create", "serviceaccount", "nobody", "-n", "eali-system"])
        .expect("sa");
    let agent_user = "system:serviceaccount:eali-system:eali";
    let base_user = "system:serviceaccount:eali-system:nobody";
    for (ns, lease_ns) in [("eali-system", true), ("default", false)] {
        let base = can_i(cp, base_user, ns);
        let granted: BTreeSet<_> = can_i(cp, agent_user, ns)
            .difference(&base)
            .cloned()
            .collect();
        println!("granted to {agent_user} in {ns}:");
        for (r, v) in &granted {
            println!("  {v:<7} {r}");
        }
        assert_eq!(granted, expected(lease_ns), "RBAC in namespace {ns}");
    }

    // The agent, authenticated as its ServiceAccount, passes its checks...
    let kc = sa_kubeconfig(cp, "eali-system", "eali");
    let (ok, out) = agent(&kc, &["--check-only", "--namespace", "eali-system"]);
    assert!(ok, "{out}");
    // ...and really works with those rights: it reconciles an InferenceService.
    let ns = cp.namespace("helm-serving");
    let mut child = Command::new(env!("CARGO_BIN_EXE_eali"))
        .args([
            "agent",
            "--namespace",
            "eali-system",
            "--identity",
            "sa-agent",
            "--renew-secs",
            "1",
            // Not the chart's fixed port: nothing else on the test machine may hold it.
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .env("KUBECONFIG", &kc)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("agent");
    let sample = repo().join("manifests/samples/resnet50-eali.yaml");
    cp.kubectl(&["apply", "-n", &ns, "-f", sample.to_str().expect("utf-8")])
        .expect("sample");
    let reconciled = eventually(60, "status from the SA agent", || {
        cp.kubectl(&[
            "get",
            "eisvc",
            "resnet50",
            "-n",
            &ns,
            "-o",
            "jsonpath={.status.endpoint}",
        ])
        .ok()
        .filter(|s| !s.is_empty())
    });
    assert_eq!(reconciled, "http://resnet50.helm-serving.svc:8080");
    cp.kubectl(&["get", "deployment", "resnet50", "-n", &ns])
        .expect("deployment made by the SA agent");
    cp.kubectl(&["delete", "eisvc", "resnet50", "-n", &ns, "--timeout=60s"])
        .expect("delete");
    let _ = child.kill();
    let _ = child.wait();

    // A ServiceAccount without the chart's RBAC: the agent lists what is missing and the fix.
    let weak = sa_kubeconfig(cp, "eali-system", "nobody");
    let (ok, out) = agent(
        &weak,
        &[
            "--check-only",
            "--namespace",
            "eali-system",
            "--service-account",
            "nobody",
        ],
    );
    println!("agent without RBAC:\n{out}");
    assert!(!ok);
    assert!(
        out.contains("RBAC forbids the agent (system:serviceaccount:eali-system:nobody)"),
        "{out}"
    );
    assert!(
        out.contains("- inferenceservices.eali.dev: get, list, watch, patch"),
        "{out}"
    );
    assert!(
        out.contains("- leases.coordination.k8s.io in namespace eali-system: get, create, update"),
        "{out}"
    );
    assert!(
        out.contains("helm upgrade --install eali charts/eali --namespace eali-system"),
        "{out}"
    );

    let status = cp
        .helm(&["status", "eali", "-n", "eali-system"])
        .expect("helm status");
    assert!(status.contains("STATUS: deployed"), "{status}");
    cp.helm(&["uninstall", "eali", "-n", "eali-system"])
        .expect("helm uninstall");
}
