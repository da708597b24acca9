//! A real kubelet (built from the Kubernetes Go modules) on Kubernetes' fake container runtime,
//! registered with the test kube-apiserver, and a real `eali agent --device-plugin` over simulated
//! GPUs (the stand-in libnvidia-ml) beside it: the agent registers with the kubelet's own
//! device-plugin socket, the Node shows `eali.dev/gpu` capacity, a pod asking for one GPU is
//! admitted with the environment and control-socket mount Allocate returned (and the kubelet's
//! pod-resources API names it as the GPU's holder), a pod asking for more
//! GPUs than are free is refused by the kubelet, and after a kubelet restart the plugin registers
//! again and serves new pods.
//!
//! Runs `e2e/kubelet/run-kubelet.sh` (root, a private mount namespace so the kubelet's fixed
//! `/var/lib/kubelet/device-plugins` path is a temp dir). Skips with a loud message when the
//! binaries (kubelet, fakecri from `e2e/build-control-plane.sh`; the stand-in NVML library from
//! `cargo build -p nvml-standin`) or root are missing, unless `EALI_E2E_REQUIRE=1`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod k8s_env;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use eali::control::{Authorizer, PodName, StaticPodDirectory};
use k8s_env::{ControlPlane, bin_dir, control_plane, eventually, repo};
use serde_json::Value;

const GPUS: usize = 2;

/// Why this test cannot run here, if it cannot.
fn missing_prerequisite() -> Option<String> {
    let bin = bin_dir();
    let mut missing: Vec<String> = ["kubelet", "fakecri"]
        .into_iter()
        .filter(|b| !bin.join(b).is_file())
        .map(|b| format!("{} (run e2e/build-control-plane.sh)", bin.join(b).display()))
        .collect();
    if !standin_lib().is_file() {
        missing.push(format!(
            "{} (run cargo build -p nvml-standin)",
            standin_lib().display()
        ));
    }
    let uid = Command::new("id").arg("-u").output().ok();
    if uid.is_none_or(|o| String::from_utf8_lossy(&o.stdout).trim() != "0") {
        missing.push("root (mount namespace for /var/lib/kubelet)".into());
    }
    if Command::new("unshare").arg("--help").output().is_err() {
        missing.push("unshare (util-linux)".into());
    }
    (!missing.is_empty()).then(|| missing.join(", "))
}

/// Like the control plane: skip loudly, or fail under EALI_E2E_REQUIRE=1.
fn prerequisites_or_skip() -> bool {
    let Some(msg) = missing_prerequisite() else {
        return true;
    };
    let msg = format!("real-kubelet test needs {msg}");
    if std::env::var("EALI_E2E_REQUIRE").as_deref() == Ok("1") {
        panic!("{msg} (EALI_E2E_REQUIRE=1)");
    }
    eprintln!(
        "\n{}\n!!! SKIPPING real-kubelet test: {msg}\n{}\n",
        "!".repeat(100),
        "!".repeat(100)
    );
    false
}

/// The stand-in libnvidia-ml of this build profile (`target/<profile>/libnvml_standin.so`).
fn standin_lib() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(|d| d.parent())
        .map(|d| d.join("libnvml_standin.so"))
        .unwrap_or_default()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// `run-kubelet.sh` with the agent beside the kubelet; stopped (SIGTERM to the script, which
/// stops its children) on drop, with the logs printed when the test failed.
struct Node {
    child: Child,
    work: PathBuf,
}

impl Node {
    fn start(cp: &ControlPlane, name: &str, lease_ns: &str) -> Node {
        let work = cp.dir.join(format!("kubelet-{name}"));
        std::fs::create_dir_all(&work).expect("work dir");
        let child = Command::new("bash")
            .arg(repo().join("e2e/kubelet/run-kubelet.sh"))
            .arg(&work)
            .arg(&cp.kubeconfig)
            .arg(name)
            .arg("--")
            .arg(env!("CARGO_BIN_EXE_eali"))
            .args(["agent", "--device-plugin", "--node-name", name])
            .args(["--namespace", lease_ns, "--watch-namespace", lease_ns])
            .args(["--identity", &format!("agent-{name}")])
            .args(["--metrics-addr", "127.0.0.1:0"])
            .env("EALI_E2E_BIN", bin_dir())
            .env("EALI_KUBELET_PORT", free_port().to_string())
            .env("KUBECONFIG", &cp.kubeconfig)
            .env("EALI_NVML_LIB", standin_lib())
            .env("EALI_NVML_PROFILE", "v100-sxm2")
            .env("EALI_NVML_GPUS", GPUS.to_string())
            .env("EALI_NVML_REALTIME", "0")
            // Inside the namespace /run/eali is a temp dir too.
            .env("EALI_CLOCK_RECORD", "/run/eali/clock-locks.json")
            .env("RUST_LOG", "info,kube=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn run-kubelet.sh");
        Node { child, work }
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.work.join(name)).unwrap_or_default()
    }

    /// What the fake runtime was asked to create, one JSON object per container.
    fn containers(&self) -> Vec<Value> {
        self.log("containers.jsonl")
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    fn signal(&self, sig: &str) {
        Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("kill");
    }

    fn still_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("run-kubelet.sh exited early ({status})");
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.signal("-TERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            for f in ["kubelet.log", "command.log", "fakecri.log"] {
                let text = self.log(f);
                let tail: Vec<&str> = text.lines().rev().take(60).collect();
                eprintln!("--- tail of {f} ---");
                for l in tail.into_iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
    }
}

fn gpu_pod(cp: &ControlPlane, ns: &str, name: &str, node: &str, gpus: u32) {
    // spec.nodeName set directly: no kube-scheduler runs, and the kubelet's own admission (where
    // the device manager calls Allocate) is what this test is about.
    let manifest = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  nodeName: {node}\n  \
         containers:\n  - name: serve\n    image: eali:test\n    resources:\n      limits: {{eali.dev/gpu: \"{gpus}\"}}\n"
    );
    cp.kubectl_stdin(&["apply", "-f", "-"], &manifest)
        .unwrap_or_else(|e| panic!("pod {name}: {e}"));
}

fn pod_phase(cp: &ControlPlane, ns: &str, name: &str) -> Option<(String, String, String)> {
    let p = cp.get_json(&["pod", name, "-n", ns])?;
    let s = |k: &str| p["status"][k].as_str().unwrap_or_default().to_string();
    Some((s("phase"), s("reason"), s("message")))
}

/// The GPUs the agent advertised: one control directory per UUID under the node's /run/eali.
fn advertised_uuids(work: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(work.join("run-eali/control"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Checks what the kubelet put into a container from the plugin's Allocate.
fn assert_allocated(container: &Value, advertised: &[String]) -> String {
    let envs = &container["envs"];
    let uuid = envs["EALI_GPU_UUID"]
        .as_str()
        .expect("EALI_GPU_UUID")
        .to_string();
    assert!(advertised.contains(&uuid), "{uuid} not in {advertised:?}");
    assert_eq!(envs["NVIDIA_VISIBLE_DEVICES"], uuid.as_str());
    let in_pod = format!("/run/eali/{uuid}");
    assert_eq!(
        envs["EALI_CONTROL_SOCKET"],
        format!("{in_pod}/control.sock").as_str()
    );
    let mounts = container["mounts"].as_array().expect("mounts");
    assert!(
        mounts.iter().any(|m| m["containerPath"] == in_pod.as_str()
            && m["hostPath"] == format!("/run/eali/control/{uuid}").as_str()),
        "control-socket mount missing: {mounts:?}"
    );
    uuid
}

#[test]
fn real_kubelet_registers_the_device_plugin_and_admits_gpu_pods() {
    if !prerequisites_or_skip() {
        return;
    }
    let Some(cp) = control_plane() else { return };
    cp.install_crd();
    let ns = cp.namespace("kubelet-real");
    let node_name = format!("eali-kubelet-{}", std::process::id());
    let t0 = Instant::now();
    let mut node = Node::start(cp, &node_name, &ns);

    // The kubelet registers the Node and reports Ready on the fake runtime.
    eventually(90, "Node Ready", || {
        node.still_running();
        let n = cp.get_json(&["node", &node_name])?;
        n["status"]["conditions"]
            .as_array()?
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
            .then_some(())
    });
    let ready_s = t0.elapsed().as_secs_f64();

    // The agent registered with the kubelet's device-plugin socket: capacity and allocatable.
    let n = eventually(60, "eali.dev/gpu capacity", || {
        node.still_running();
        let n = cp.get_json(&["node", &node_name])?;
        (n["status"]["allocatable"]["eali.dev/gpu"] == GPUS.to_string().as_str()).then_some(n)
    });
    let capacity_s = t0.elapsed().as_secs_f64();
    assert_eq!(
        n["status"]["capacity"]["eali.dev/gpu"],
        GPUS.to_string().as_str()
    );
    assert_eq!(n["status"]["nodeInfo"]["kubeletVersion"], "v1.34.4");
    let kubelet_log = node.log("kubelet.log");
    assert!(
        kubelet_log.contains("eali.dev/gpu"),
        "kubelet log never names the resource"
    );
    let advertised = advertised_uuids(&node.work);
    assert_eq!(advertised.len(), GPUS, "{advertised:?}");

    // A pod asking for one GPU: admitted, Allocate's env and mount reach the container config.
    gpu_pod(cp, &ns, "one-gpu", &node_name, 1);
    eventually(60, "pod one-gpu Running", || {
        node.still_running();
        pod_phase(cp, &ns, "one-gpu").filter(|(p, _, _)| p == "Running")
    });
    let running_s = t0.elapsed().as_secs_f64();
    let created = node.containers();
    let first = created
        .iter()
        .find(|c| c["pod"] == "one-gpu")
        .expect("one-gpu container created");
    let first_uuid = assert_allocated(first, &advertised);
    // The kubelet's pod-resources API (what the agent's control-socket authorizer and release
    // watcher read) names the pod as the holder of that GPU.
    let authz = Authorizer::new(Arc::new(StaticPodDirectory::default()))
        .with_pod_resources_socket(node.work.join("var-lib-kubelet/pod-resources/kubelet.sock"));
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let held = rt
        .block_on(authz.assignments())
        .expect("pod-resources List");
    let one_gpu = PodName {
        namespace: ns.clone(),
        name: "one-gpu".into(),
    };
    assert_eq!(held.get(&first_uuid), Some(&vec![one_gpu]), "{held:?}");
    assert_eq!(held.len(), 1, "{held:?}");

    // Two more GPUs than are free: the kubelet's device manager refuses the pod.
    gpu_pod(cp, &ns, "too-many", &node_name, GPUS as u32);
    let (_, reason, message) = eventually(60, "pod too-many rejected", || {
        pod_phase(cp, &ns, "too-many").filter(|(p, _, _)| p == "Failed")
    });
    assert_eq!(reason, "UnexpectedAdmissionError");
    assert!(
        message.contains("eali.dev/gpu") && message.contains(&format!("Requested: {GPUS}")),
        "{message}"
    );

    // The kubelet restarts (new sockets): the agent registers again and the new kubelet
    // allocates the remaining GPU to a new pod.
    let registrations = |log: &str| log.matches("registered with the kubelet").count();
    let before = registrations(&node.log("command.log"));
    let t_restart = Instant::now();
    node.signal("-HUP");
    eventually(60, "re-registration after kubelet restart", || {
        node.still_running();
        (registrations(&node.log("command.log")) > before).then_some(())
    });
    let reregister_s = t_restart.elapsed().as_secs_f64();
    gpu_pod(cp, &ns, "after-restart", &node_name, 1);
    eventually(90, "pod after-restart Running", || {
        node.still_running();
        pod_phase(cp, &ns, "after-restart").filter(|(p, _, _)| p == "Running")
    });
    let created = node.containers();
    let second = created
        .iter()
        .find(|c| c["pod"] == "after-restart")
        .expect("after-restart container created");
    let second_uuid = assert_allocated(second, &advertised);
    assert_ne!(
        first_uuid, second_uuid,
        "the restarted kubelet kept one-gpu's GPU in use"
    );
    eprintln!(
        "real kubelet: Node Ready {ready_s:.1} s, eali.dev/gpu={GPUS} {capacity_s:.1} s, \
         pod Running {running_s:.1} s after start; re-registered {reregister_s:.1} s after \
         the kubelet restart"
    );
}
