//! The whole product on a real node: a control plane with kube-controller-manager and
//! kube-scheduler, and a node of containerd + runc + the CNI bridge with the real kubelet
//! (`e2e/node/run-node.sh`), running the chart's own image (`e2e/image/build.sh`, imported into
//! containerd, never pulled). `helm install` → the agent DaemonSet's pod runs and its device
//! plugin registers `eali.dev/gpu` (two stand-in GPUs, mounted into the agent pod through the
//! chart's `agent.extraVolumes`) → an InferenceService in a namespace that enforces the Pod
//! Security Standard `restricted` → the leader agent makes its Deployment, the scheduler places
//! the serving pod, Allocate gives it a control socket, it serves → `eali load` drives it by pod
//! IP → `kubectl get eisvc` shows READY, p99 and J/req → the agent pod is killed: the DaemonSet
//! replaces it, clocks are reset, the plugin registers again and serving goes on → the
//! InferenceService is deleted: its pods go and the GPU's clocks are reset → `helm uninstall`
//! leaves none of the chart's objects behind.
//!
//! Needs root, the binaries of `e2e/build-control-plane.sh` (with the node: containerd, runc, CNI
//! plugins), Go (the pause image), python3 and the stand-in (`cargo build -p nvml-standin`);
//! skips loudly without them unless `EALI_E2E_REQUIRE=1`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod agent_support;
mod k8s_env;
mod nvml_support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use agent_support::{driver_state, load_json, summary};
use k8s_env::{ControlPlane, bin_dir, eventually, full_control_plane, repo};
use nvml_support::standin_lib;

const NODE: &str = "gpu-node-1";
const GPUS: usize = 2;
const NS: &str = "eali-system";
const APP_NS: &str = "serving";

fn missing_prerequisite() -> Option<String> {
    let bin = bin_dir();
    let mut missing: Vec<String> = [
        "kubelet",
        "containerd",
        "containerd-shim-runc-v2",
        "ctr",
        "kube-scheduler",
        "kube-controller-manager",
        "helm",
    ]
    .into_iter()
    .filter(|b| !bin.join(b).is_file())
    .map(|b| format!("{} (run e2e/build-control-plane.sh)", bin.join(b).display()))
    .collect();
    for (cmd, what) in [
        ("runc", "runc (apt-get install runc)"),
        ("go", "go (the pause image)"),
        ("python3", "python3 (e2e/image/build-image.py)"),
        ("unshare", "unshare (util-linux)"),
    ] {
        if Command::new(cmd)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_err()
        {
            missing.push(what.into());
        }
    }
    if !Path::new("/usr/lib/cni/bridge").is_file() {
        missing.push(
            "CNI plugins in /usr/lib/cni (apt-get install containernetworking-plugins)".into(),
        );
    }
    if !standin_lib().is_file() {
        missing.push(format!(
            "{} (run cargo build -p nvml-standin)",
            standin_lib().display()
        ));
    }
    let uid = Command::new("id").arg("-u").output().ok();
    if uid.is_none_or(|o| String::from_utf8_lossy(&o.stdout).trim() != "0") {
        missing.push("root (containerd, kubelet, mount namespace)".into());
    }
    (!missing.is_empty()).then(|| missing.join(", "))
}

fn prerequisites_or_skip() -> bool {
    let Some(msg) = missing_prerequisite() else {
        return true;
    };
    let msg = format!("real-node test needs {msg}");
    if std::env::var("EALI_E2E_REQUIRE").as_deref() == Ok("1") {
        panic!("{msg} (EALI_E2E_REQUIRE=1)");
    }
    eprintln!(
        "\n{}\n!!! SKIPPING real-node test: {msg}\n{}\n",
        "!".repeat(100),
        "!".repeat(100)
    );
    false
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// The images of this build: `(eali archive, eali digest, pause archive)`.
fn build_images(out: &Path) -> (PathBuf, String, PathBuf) {
    let t = Instant::now();
    let status = Command::new("bash")
        .arg(repo().join("e2e/image/build.sh"))
        .env("EALI_BIN", env!("CARGO_BIN_EXE_eali"))
        .env("EALI_IMAGE_OUT", out)
        .status()
        .expect("e2e/image/build.sh");
    assert!(status.success(), "e2e/image/build.sh failed");
    let digest = std::fs::read_to_string(out.join("eali.digest"))
        .expect("eali.digest")
        .trim()
        .to_string();
    println!("images built in {:.1} s", t.elapsed().as_secs_f64());
    (out.join("eali.oci.tar"), digest, out.join("pause.oci.tar"))
}

/// `run-node.sh`: containerd and the kubelet in their own mount namespace; stopped on drop.
struct Node {
    child: Child,
    work: PathBuf,
}

impl Node {
    fn start(cp: &ControlPlane, images: &[&Path]) -> Node {
        let work = cp.dir.join("node");
        std::fs::create_dir_all(&work).expect("node dir");
        let child = Command::new("bash")
            .arg(repo().join("e2e/node/run-node.sh"))
            .arg(&work)
            .arg(&cp.kubeconfig)
            .arg(NODE)
            .args(images)
            .env("EALI_E2E_BIN", bin_dir())
            .env("EALI_KUBELET_PORT", free_port().to_string())
            .env("EALI_NODE_LABELS", "eali.dev/gpu.present=true")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn run-node.sh");
        Node { child, work }
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.work.join(name)).unwrap_or_default()
    }

    /// How often the kubelet logged a registration of the `eali.dev/gpu` device plugin.
    fn registrations(&self) -> usize {
        self.log("kubelet.log")
            .lines()
            .filter(|l| {
                l.contains("Got registration request from device plugin")
                    && l.contains("eali.dev/gpu")
            })
            .count()
    }

    fn still_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "run-node.sh exited early ({status})\n--- containerd.log ---\n{}\n--- kubelet.log ---\n{}",
                tail(&self.log("containerd.log"), 40),
                tail(&self.log("kubelet.log"), 60)
            );
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for f in ["containerd.log", "kubelet.log", "images.log"] {
                eprintln!("--- {f} (tail) ---\n{}", tail(&self.log(f), 40));
            }
            // Every container's log, as `kubectl logs` would show it (the kubelet's files).
            for f in walk(&self.work.join("pod-logs")) {
                let text = std::fs::read_to_string(&f).unwrap_or_default();
                eprintln!("--- {} (tail) ---\n{}", f.display(), tail(&text, 40));
            }
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// What `kubectl get nodes,pods,eisvc -A -o wide` shows now, printed under a heading.
fn snapshot(cp: &ControlPlane, step: &str, t0: Instant) {
    let nodes = cp
        .kubectl(&["get", "nodes,pods", "-A", "-o", "wide"])
        .unwrap_or_else(|e| e);
    let eisvc = cp
        .kubectl(&["get", "eisvc", "-A", "-o", "wide"])
        .unwrap_or_else(|e| e);
    println!(
        "\n### {step} (t = {:.1} s)\n$ kubectl get nodes,pods,eisvc -A -o wide\n{nodes}{eisvc}",
        t0.elapsed().as_secs_f64()
    );
}

/// The agent DaemonSet's pod (name, uid) once it runs and is Ready.
fn ready_agent_pod(cp: &ControlPlane) -> Option<(String, String)> {
    let pods = cp.get_json(&["pods", "-n", NS, "-l", "app.kubernetes.io/name=eali"])?;
    pods["items"].as_array()?.iter().find_map(|p| {
        let ready = p["status"]["conditions"]
            .as_array()?
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        let deleting = !p["metadata"]["deletionTimestamp"].is_null();
        (ready && !deleting).then(|| {
            (
                p["metadata"]["name"].as_str().unwrap_or("").to_string(),
                p["metadata"]["uid"].as_str().unwrap_or("").to_string(),
            )
        })
    })
}

/// The node's allocatable `eali.dev/gpu`.
fn allocatable_gpus(cp: &ControlPlane) -> Option<u64> {
    let node = cp.get_json(&["node", NODE])?;
    node["status"]["allocatable"]["eali.dev/gpu"]
        .as_str()?
        .parse()
        .ok()
}

/// The serving pod that runs and is Ready: (name, pod IP).
fn ready_serving_pod(cp: &ControlPlane) -> Option<(String, String)> {
    let pods = cp.get_json(&[
        "pods",
        "-n",
        APP_NS,
        "-l",
        "eali.dev/inferenceservice=alexnet",
    ])?;
    pods["items"].as_array()?.iter().find_map(|p| {
        let ready = p["status"]["conditions"]
            .as_array()?
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        let ip = p["status"]["podIP"].as_str()?;
        ready.then(|| {
            (
                p["metadata"]["name"].as_str().unwrap_or("").to_string(),
                ip.to_string(),
            )
        })
    })
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill {sig} {pid}");
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Seconds since the epoch of an RFC 3339 time (`date -d` parses it).
fn unix_of(t: &str) -> Option<f64> {
    let out = Command::new("date")
        .args(["-u", "-d", t, "+%s.%N"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// GPUs whose graphics clock is locked now.
fn locked_gpus(dir: &Path) -> usize {
    driver_state(dir)["gpus"]
        .as_array()
        .map(|g| g.iter().filter(|g| !g["locked"].is_null()).count())
        .unwrap_or(0)
}

fn ops(dir: &Path) -> Vec<String> {
    driver_state(dir)["log"]
        .as_array()
        .map(|l| {
            l.iter()
                .map(|e| e["op"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn helm_install_runs_the_whole_product_on_a_real_node() {
    if !prerequisites_or_skip() {
        return;
    }
    let Some(cp) = full_control_plane() else {
        return;
    };
    let (eali_image, digest, pause_image) = build_images(&cp.dir.join("images"));
    let mut node = Node::start(cp, &[&eali_image, &pause_image]);
    let ready = eventually(120, "the node Ready on containerd", || {
        node.still_running();
        let n = cp.get_json(&["node", NODE])?;
        let ok = n["status"]["conditions"]
            .as_array()?
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        ok.then(|| n["status"]["nodeInfo"]["containerRuntimeVersion"].clone())
    });
    println!("node {NODE} Ready, runtime {ready}");
    assert!(
        ready.as_str().unwrap_or("").starts_with("containerd://"),
        "runtime {ready}"
    );

    // The stand-in GPUs: the library and its shared state reach the agent pod by hostPath.
    let standin = cp.dir.join("standin");
    std::fs::create_dir_all(standin.join("lib")).expect("standin dir");
    std::fs::copy(standin_lib(), standin.join("lib/libnvml_standin.so")).expect("copy standin");
    let api_port = cp.server.rsplit(':').next().expect("api port").to_string();
    let values = format!(
        r#"image:
  digest: "{digest}"
  pullPolicy: Never
agent:
  leaseDurationSeconds: 6
  renewSeconds: 2
  requeueSeconds: 5
  # No kube-proxy runs on this node: the agent reaches the API server on the host's loopback.
  hostNetwork: true
  extraEnv:
    - {{name: KUBERNETES_SERVICE_HOST, value: "127.0.0.1"}}
    - {{name: KUBERNETES_SERVICE_PORT, value: "{api_port}"}}
    - {{name: EALI_NVML_LIB, value: /opt/eali-standin/libnvml_standin.so}}
    - {{name: EALI_NVML_PROFILE, value: v100-sxm2}}
    - {{name: EALI_NVML_GPUS, value: "{GPUS}"}}
    - {{name: EALI_NVML_STATE, value: /var/lib/eali-standin/driver.json}}
    - {{name: EALI_NVML_REALTIME, value: "0"}}
  extraVolumes:
    - {{name: nvml-standin, hostPath: {{path: {lib}, type: Directory}}}}
    - {{name: nvml-state, hostPath: {{path: {state}, type: Directory}}}}
  extraVolumeMounts:
    - {{name: nvml-standin, mountPath: /opt/eali-standin, readOnly: true}}
    - {{name: nvml-state, mountPath: /var/lib/eali-standin}}
metrics:
  port: {metrics}
"#,
        lib = standin.join("lib").display(),
        state = standin.display(),
        metrics = free_port(),
    );
    let values_file = cp.dir.join("values-node.yaml");
    std::fs::write(&values_file, values).expect("values");
    snapshot(cp, "node up, before helm install", Instant::now());

    // helm install → the agent runs and registers the GPUs.
    let t0 = Instant::now();
    let chart = repo().join("charts/eali");
    let install = cp
        .helm(&[
            "install",
            "eali",
            chart.to_str().expect("chart path"),
            "--namespace",
            NS,
            "--create-namespace",
            "-f",
            values_file.to_str().expect("values path"),
        ])
        .expect("helm install");
    println!("{install}");
    let (agent_pod, agent_uid) = eventually(180, "the agent pod Ready", || {
        node.still_running();
        ready_agent_pod(cp)
    });
    let gpus = eventually(60, "eali.dev/gpu allocatable on the node", || {
        allocatable_gpus(cp).filter(|&n| n == GPUS as u64)
    });
    println!(
        "agent pod {agent_pod} Ready, node allocatable eali.dev/gpu = {gpus}, {:.1} s after helm install",
        t0.elapsed().as_secs_f64()
    );
    let image = cp
        .get_json(&["pod", &agent_pod, "-n", NS])
        .expect("agent pod")["spec"]["containers"][0]["image"]
        .clone();
    assert_eq!(image.as_str(), Some(&*format!("eali/eali@{digest}")));
    snapshot(cp, "helm install: agent Ready, GPUs registered", t0);

    // An InferenceService in a namespace that enforces `restricted`.
    cp.kubectl(&["create", "namespace", APP_NS])
        .expect("namespace");
    cp.kubectl(&[
        "label",
        "namespace",
        APP_NS,
        "pod-security.kubernetes.io/enforce=restricted",
        "pod-security.kubernetes.io/enforce-version=latest",
    ])
    .expect("label namespace");
    let isvc = format!(
        "apiVersion: eali.dev/v1alpha1\nkind: InferenceService\nmetadata: {{name: alexnet, namespace: {APP_NS}}}\n\
         spec:\n  model: {{zoo: alexnet}}\n  slo: {{latencyMs: 200}}\n"
    );
    cp.kubectl_stdin(&["apply", "-f", "-"], &isvc)
        .expect("apply InferenceService");
    let (serve_pod, pod_ip) = eventually(180, "the serving pod Ready", || {
        node.still_running();
        ready_serving_pod(cp)
    });
    let http = format!("{pod_ip}:8080");
    let first = eventually(60, "a first 200 from the serving pod", || {
        let r = load_json(&http, "alexnet", 5, 1, 200);
        (r["ok"].as_u64().unwrap_or(0) > 0).then_some(r)
    });
    println!(
        "serving pod {serve_pod} ({pod_ip}): first 200 {:.1} s after helm install ({})",
        t0.elapsed().as_secs_f64(),
        summary(&first)
    );
    let events = cp
        .kubectl(&["get", "events", "-n", APP_NS, "-o", "wide"])
        .unwrap_or_default();
    assert!(
        !events.contains("violates PodSecurity"),
        "the serving pod violates restricted:\n{events}"
    );
    snapshot(cp, "InferenceService applied: serving pod Ready", t0);

    // Under load, the InferenceService's status: p99 from the pod's reports, J/req from the
    // agent's energy counter.
    let under_load = std::thread::spawn({
        let http = http.clone();
        move || load_json(&http, "alexnet", 40, 25, 200)
    });
    eventually(120, "eisvc READY with p99 and J/req", || {
        let s = cp.get_json(&["eisvc", "alexnet", "-n", APP_NS])?;
        let ready = s["status"]["conditions"]
            .as_array()?
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        let jpr = s["status"]["joulesPerRequest"].as_f64()?;
        let p99 = s["status"]["p99Ms"].as_f64()?;
        (ready && jpr > 0.0 && p99 > 0.0).then_some(())
    });
    let shown = cp
        .kubectl(&["get", "eisvc", "alexnet", "-n", APP_NS])
        .expect("get eisvc");
    println!("$ kubectl get eisvc alexnet -n {APP_NS}\n{shown}");
    assert!(
        locked_gpus(&standin) >= 1,
        "no GPU clock locked while serving"
    );
    snapshot(cp, "under load: eisvc READY with p99 and J/req", t0);
    let r = under_load.join().expect("load");
    println!("eali load 40 req/s for 25 s: {}", summary(&r));
    assert!(r["ok"].as_u64().unwrap_or(0) > 900, "{}", summary(&r));

    // The API server unreachable for 60 s: stopped, so that connections hang as in a partition.
    // The node goes on (serving answers, the serving pod's clock control is not refused, no pod
    // restarts); afterwards status writes and the agent's Lease resume without a restart.
    let locks_before = ops(&standin)
        .iter()
        .filter(|o| o.starts_with("lock"))
        .count();
    let during = std::thread::spawn({
        let http = http.clone();
        move || load_json(&http, "alexnet", 20, 70, 200)
    });
    std::thread::sleep(Duration::from_secs(3));
    signal(cp.apiserver_pid, "-STOP");
    let stopped = Instant::now();
    while stopped.elapsed() < Duration::from_secs(60) {
        node.still_running();
        std::thread::sleep(Duration::from_secs(2));
    }
    signal(cp.apiserver_pid, "-CONT");
    let resumed = unix_now();
    let locks_during = ops(&standin)
        .iter()
        .filter(|o| o.starts_with("lock"))
        .count()
        - locks_before;
    let r = during.join().expect("load across the outage");
    println!(
        "API server stopped for 60 s under load (20 req/s, 70 s): {}; set-calls that reached the \
         driver meanwhile: {locks_during}",
        summary(&r)
    );
    assert_eq!(
        r["ok"],
        r["sent"],
        "serving faltered without the API server: {}",
        summary(&r)
    );
    let refusals = walk(&node.work.join("pod-logs"))
        .iter()
        .filter(|f| f.to_string_lossy().contains("serving_"))
        .map(|f| std::fs::read_to_string(f).unwrap_or_default())
        .map(|t| {
            t.matches("refused clock control").count()
                + t.matches("serving window not delivered").count()
        })
        .sum::<usize>();
    assert_eq!(
        refusals, 0,
        "the agent refused the serving pod's control calls (set-calls, serving windows)"
    );
    eventually(
        60,
        "a status report written after the API server is back",
        || {
            let s = cp.get_json(&["eisvc", "alexnet", "-n", APP_NS])?;
            let latest = s["status"]["reports"]
                .as_array()?
                .iter()
                .filter_map(|r| unix_of(r["time"].as_str()?))
                .fold(f64::MIN, f64::max);
            (latest > resumed).then_some(())
        },
    );
    eventually(
        60,
        "the agent's Lease renewed after the API server is back",
        || {
            let l = cp.get_json(&["lease", "eali-controller", "-n", NS])?;
            (unix_of(l["spec"]["renewTime"].as_str()?)? > resumed).then_some(())
        },
    );
    let agent_restarts = cp
        .get_json(&["pod", &agent_pod, "-n", NS])
        .expect("agent pod")["status"]["containerStatuses"][0]["restartCount"]
        .as_u64();
    assert_eq!(
        agent_restarts,
        Some(0),
        "the agent restarted during the outage"
    );
    snapshot(cp, "API server back after 60 s", t0);

    // Kill the agent pod: the DaemonSet makes a new one, which resets clocks and registers again.
    let resets_before = ops(&standin)
        .iter()
        .filter(|o| o.starts_with("reset"))
        .count();
    let registered_before = node.registrations();
    assert!(registered_before >= 1, "the kubelet logged no registration");
    cp.kubectl(&[
        "delete",
        "pod",
        &agent_pod,
        "-n",
        NS,
        "--grace-period=0",
        "--force",
    ])
    .expect("delete agent pod");
    let t_kill = Instant::now();
    let during = std::thread::spawn({
        let http = http.clone();
        move || load_json(&http, "alexnet", 20, 10, 200)
    });
    let (new_agent, _) = eventually(120, "a new agent pod Ready", || {
        node.still_running();
        ready_agent_pod(cp).filter(|(_, uid)| *uid != agent_uid)
    });
    println!(
        "agent pod killed; {new_agent} Ready {:.1} s later",
        t_kill.elapsed().as_secs_f64()
    );
    eventually(60, "the clocks reset by the new agent", || {
        (ops(&standin)
            .iter()
            .filter(|o| o.starts_with("reset"))
            .count()
            > resets_before)
            .then_some(())
    });
    eventually(
        60,
        "the new agent's device plugin registered with the kubelet",
        || (node.registrations() > registered_before).then_some(()),
    );
    eventually(60, "eali.dev/gpu allocatable again", || {
        allocatable_gpus(cp).filter(|&n| n == GPUS as u64)
    });
    let r = during.join().expect("load during the agent restart");
    println!(
        "load across the agent restart (20 req/s, 10 s): {}",
        summary(&r)
    );
    assert!(
        r["ok"].as_u64().unwrap_or(0) * 100 >= r["sent"].as_u64().unwrap_or(0) * 95,
        "serving did not go on across the agent restart: {}",
        summary(&r)
    );
    snapshot(cp, "agent pod killed and replaced", t0);
    let restarts = cp
        .get_json(&["pod", &serve_pod, "-n", APP_NS])
        .expect("serving pod")["status"]["containerStatuses"][0]["restartCount"]
        .as_u64();
    assert_eq!(restarts, Some(0), "the serving pod restarted");

    // Delete the InferenceService: its pods go, and the GPU's clocks are reset on release.
    cp.kubectl(&["delete", "eisvc", "alexnet", "-n", APP_NS, "--wait=true"])
        .expect("delete eisvc");
    eventually(120, "the serving pods gone", || {
        let pods = cp.get_json(&["pods", "-n", APP_NS])?;
        pods["items"].as_array()?.is_empty().then_some(())
    });
    eventually(60, "every GPU clock reset after the pod left", || {
        (locked_gpus(&standin) == 0).then_some(())
    });
    snapshot(cp, "InferenceService deleted", t0);

    // helm uninstall leaves nothing of the chart behind (the CRD stays: Helm never deletes what
    // a chart's crds/ installed, so that InferenceServices survive a reinstall).
    cp.helm(&["uninstall", "eali", "-n", NS, "--wait"])
        .expect("helm uninstall");
    let left = eventually(120, "no object of the chart left", || {
        let out = cp
            .kubectl(&[
                "get",
                "all,configmap,serviceaccount,role,rolebinding,clusterrole,clusterrolebinding,lease",
                "-A",
                "-l",
                "app.kubernetes.io/instance=eali",
                "-o",
                "name",
            ])
            .ok()?;
        out.trim().is_empty().then_some(out)
    });
    assert!(left.trim().is_empty());
    snapshot(cp, "helm uninstall", t0);
    node.still_running();
}
