//! The figures `kubectl get eisvc` shows come from the serving pods, end to end: a real
//! kube-apiserver, the real `eali agent` (controller and node side, the stand-in NVML, the
//! device-plugin harness as kubelet) and a real `eali serve` started with Allocate's
//! environment in a pod that holds the GPU. Under load from `eali load`, the pod sends each
//! serving window over the control socket; the agent writes it as the pod's `status.reports`
//! entry (joules per request from the GPU's energy counter) and the controller aggregates it
//! into `p99Ms`, `requestsPerSecond`, `joulesPerRequest` and `energySavedRatio`. A real
//! Prometheus scrapes the agent meanwhile and evaluates every query of the chart's Grafana
//! dashboard. When the pod stops and lets the GPU go, its report is withdrawn.
//!
//! Needs the binaries of `e2e/build-control-plane.sh` (control plane and Prometheus), the
//! stand-in (`cargo build -p nvml-standin`) and curl.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod agent_support;
mod k8s_env;
mod nvml_support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agent_support::*;
use eali::deviceplugin::harness::{FakeKubelet, FakePodResources};
use k8s_env::{ControlPlane, bin_dir, control_plane, eventually, repo};
use serde_json::{Value, json};

fn get_isvc(cp: &ControlPlane, ns: &str, name: &str) -> Option<Value> {
    cp.kubectl(&["get", "eisvc", name, "-n", ns, "-o", "json"])
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
}

/// Every PromQL expression of the chart's Grafana dashboard.
fn dashboard_exprs() -> Vec<String> {
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(e)) = m.get("expr") {
                    out.push(e.clone());
                }
                m.values().for_each(|x| walk(x, out));
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    let path = repo().join("charts/eali/dashboards/eali-energy.json");
    let text = std::fs::read_to_string(&path).expect("dashboard");
    let v: Value = serde_json::from_str(&text).expect("dashboard JSON");
    let mut out = Vec::new();
    walk(&v, &mut out);
    out
}

/// The `eali_*` metric names an expression reads.
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("eali_") {
        let name: String = rest[i..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || *c == '_')
            .collect();
        rest = &rest[i + name.len()..];
        out.push(name);
    }
    out
}

fn sample(metrics: &str, prefix: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A real Prometheus scraping one target every second.
struct Prometheus {
    child: Child,
    addr: String,
}

impl Prometheus {
    fn start(dir: &Path, target: &str) -> Self {
        let bin = bin_dir().join("prometheus");
        assert!(
            bin.is_file(),
            "{} missing: run e2e/build-control-plane.sh",
            bin.display()
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let addr = format!("127.0.0.1:{port}");
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
                 scrape_configs:\n  - job_name: eali-agent\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .expect("prometheus.yml");
        let log = std::fs::File::create(dir.join("prometheus.log")).expect("log");
        let child = Command::new(bin)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn prometheus");
        let p = Self { child, addr };
        eventually(60, "Prometheus scrapes the agent", || {
            let v = p.query("up{job=\"eali-agent\"}").ok()?;
            (v.first()?["value"][1] == "1").then_some(())
        });
        p
    }

    /// The result vector of an instant query.
    fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "10", "-G"])
            .arg(format!("http://{}/api/v1/query", self.addr))
            .arg("--data-urlencode")
            .arg(format!("query={expr}"))
            .output()
            .map_err(|e| format!("curl: {e}"))?;
        let v: Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| format!("{e}: {}", String::from_utf8_lossy(&out.stdout)))?;
        if v["status"] != "success" {
            return Err(v.to_string());
        }
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn report_of<'a>(isvc: &'a Value, pod: &str) -> Option<&'a Value> {
    isvc["status"]["reports"]
        .as_array()?
        .iter()
        .find(|r| r["pod"] == pod)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serving_pods_windows_become_the_status_kubectl_shows() {
    let Some(cp) = control_plane() else { return };
    cp.install_crd();
    let ns = cp.namespace("reports");
    let isvc = json!({"apiVersion": "eali.dev/v1alpha1", "kind": "InferenceService",
        "metadata": {"name": "alexnet"},
        "spec": {"model": {"zoo": "alexnet"}, "slo": {"latencyMs": 200}}});
    cp.kubectl_stdin(&["apply", "-n", &ns, "-f", "-"], &isvc.to_string())
        .expect("apply");

    let dir = scratch();
    let mut kubelet = FakeKubelet::start(&dir.join("dp")).await.expect("kubelet");
    let pods = FakePodResources::default();
    let pr = pods.serve(&dir.join("pr.sock")).expect("pod-resources");
    let mut cmd = node_agent_command(
        &dir,
        &[
            "--namespace",
            &ns,
            "--watch-namespace",
            &ns,
            "--identity",
            "agent-reports",
            "--node-name",
            "node-a",
            "--serve-image",
            "eali:test",
            "--requeue-secs",
            "1",
            "--status-secs",
            "1",
            "--report-max-age-secs",
            "30",
            "--authz-cache-ms",
            "0",
            "--attribution-lag-ms",
            "300",
        ],
    );
    cmd.env("KUBECONFIG", &cp.kubeconfig);
    let agent = Agent::attach(cmd.spawn().expect("spawn eali agent"));
    let (ids, _) = wait_registered(&mut kubelet).await;
    let uuid = ids[0].clone();
    let prometheus = Prometheus::start(&dir, &agent.addr);
    std::fs::write(
        dir.join("pods.json"),
        format!("{{\"{POD_UID}\": \"{ns}/alexnet-0\"}}"),
    )
    .expect("pod directory");
    pods.set("eali.dev/gpu", &[(&ns, "alexnet-0", vec![uuid.clone()])]);
    let envs = allocate_envs(&kubelet, &uuid).await;

    // The serving pod: the EALI policy, two-second windows.
    let mut serve = Serve::spawn(
        &dir,
        &envs,
        POD_UID,
        &[
            "--model",
            "alexnet",
            "--name",
            "alexnet",
            "--slo-ms",
            "200",
            "--report-window-secs",
            "2",
        ],
    );
    let http = serve.http_addr(Duration::from_secs(120));
    println!("{}", load(&http, "alexnet", 60, 8, 200));

    // A report of a window with traffic, written by this node, aggregated by the controller.
    let isvc = eventually(60, "the pod's report and the aggregated status", || {
        let v = get_isvc(cp, &ns, "alexnet")?;
        let r = report_of(&v, "alexnet-0")?;
        let busy = r["requestsPerSecond"].as_f64()? > 20.0;
        (busy && v["status"]["p99Ms"].as_f64().is_some()).then(|| v.clone())
    });
    println!(
        "{}",
        cp.kubectl(&["get", "eisvc", "-n", &ns, "-o", "wide"])
            .expect("get")
    );
    let r = report_of(&isvc, "alexnet-0").expect("report");
    println!("status.reports[alexnet-0]: {r}");
    let status = &isvc["status"];
    println!(
        "status: p99Ms {} requestsPerSecond {} joulesPerRequest {} energySavedRatio {}",
        status["p99Ms"],
        status["requestsPerSecond"],
        status["joulesPerRequest"],
        status["energySavedRatio"]
    );
    assert_eq!(r["node"], "node-a");
    let f = |k: &str| {
        r[k].as_f64()
            .unwrap_or_else(|| panic!("report has no {k}: {r}"))
    };
    assert!(f("p99Ms") > 0.0 && f("p99Ms") <= 200.0, "{r}");
    assert!((20.0..=100.0).contains(&f("requestsPerSecond")), "{r}");
    assert!(f("joulesPerRequest") > 0.0, "{r}");
    assert!(f("loadRatio") > 0.0 && f("loadRatio") < 1.0, "{r}");
    assert!(
        f("energySavedRatio") > 0.0 && f("energySavedRatio") < 1.0,
        "below max-clock capacity EALI runs lower clocks: {r}"
    );
    assert_eq!(r["saturated"], false);
    assert!(status["joulesPerRequest"].as_f64().is_some_and(|j| j > 0.0));
    assert!(status["energySavedRatio"].as_f64().is_some());
    let slo_met = status["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "SloMet"))
        .cloned();
    println!("SloMet: {slo_met:?}");
    assert!(
        slo_met.is_some_and(|c| c["status"] == "True"),
        "the pods' reports meet the SLO"
    );

    // Every series the chart's Grafana dashboard reads is on the agent's /metrics.
    let (_, metrics) = agent.get("/metrics");
    let exprs = dashboard_exprs();
    assert!(exprs.len() >= 10, "{exprs:?}");
    for e in &exprs {
        for name in metric_names(e) {
            assert!(
                metrics.contains(&format!("\n{name}{{")) || metrics.contains(&format!("\n{name} ")),
                "the dashboard reads {name} ({e}), which the agent does not export:\n{metrics}"
            );
        }
    }
    let as_run = sample(
        &metrics,
        "eali_serving_estimated_energy_joules_total{clocks=\"as_run\"",
    );
    let max = sample(
        &metrics,
        "eali_serving_estimated_energy_joules_total{clocks=\"max\"",
    );
    println!(
        "agent /metrics: estimated energy as run {as_run:.1} J, at max clocks {max:.1} J: dashboard's saved = {:.3}",
        1.0 - as_run / max
    );
    assert!(as_run > 0.0 && as_run < max);

    // Prometheus, which scraped the agent all along, answers every query of the dashboard
    // (Grafana's $__range as the last two minutes) with data.
    let deadline = Instant::now() + Duration::from_secs(30);
    for e in &exprs {
        let q = e.replace("$__range", "2m");
        let result = loop {
            match prometheus.query(&q) {
                Ok(r) if !r.is_empty() => break r,
                other => assert!(
                    Instant::now() < deadline,
                    "Prometheus has no data for the dashboard's `{q}`: {other:?}"
                ),
            }
            std::thread::sleep(Duration::from_millis(500));
        };
        let first: f64 = result[0]["value"][1]
            .as_str()
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN);
        println!("prometheus: {q} -> {first:.4} ({} series)", result.len());
        assert!(first.is_finite(), "{q}: {result:?}");
    }
    let saved = prometheus
        .query(&exprs[0].replace("$__range", "2m"))
        .expect("saved");
    let saved: f64 = saved[0]["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .expect("a number");
    assert!(
        saved > 0.0 && saved < 1.0,
        "the dashboard's energy saved: {saved}"
    );
    drop(prometheus);

    // The pod stops and the kubelet lets the GPU go: its report is withdrawn.
    let _ = Command::new("kill")
        .args(["-TERM", &serve.child.id().to_string()])
        .status();
    let _ = serve.child.wait();
    pods.set("eali.dev/gpu", &[]);
    eventually(30, "the stopped pod's report withdrawn", || {
        let v = get_isvc(cp, &ns, "alexnet")?;
        report_of(&v, "alexnet-0").is_none().then_some(())
    });
    let (_, metrics) = agent.get("/metrics");
    assert!(
        !metrics.contains("eali_serving_requests_total{"),
        "the released pod's window series are dropped:\n{metrics}"
    );

    cp.kubectl(&["delete", "eisvc", "alexnet", "-n", &ns, "--wait=true"])
        .expect("delete");
    let status = agent.stop();
    assert!(status.success(), "{status:?}");
    pr.abort();
    let _ = std::fs::remove_dir_all(&dir);
}
