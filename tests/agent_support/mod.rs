//! Shared by the `agent_*` tests: the real `eali agent` binary on a node without a cluster.
//! NVML is the stand-in library (`e2e/nvml-standin`, driver state shared through a file so the
//! test sees what the agent did to the GPU), the kubelet is the device-plugin harness and a fake
//! pod-resources server in the test process, and pods are a UID → name file
//! (`--pod-directory`). Processes are put in pods by cgroup files under the agent's
//! `--proc-root`.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use eali::control::ControlClient;
use eali::deviceplugin::harness::{FakeKubelet, FakePodResources, KubeletEvent};
use serde_json::Value;

use crate::nvml_support;

pub const POD_UID: &str = "7d3b1a52-90e4-4c1f-8a6e-2f0c9b4d5e61";
pub const LOW_MHZ: u32 = 300;

/// A short fresh directory (Unix socket paths are limited to 108 bytes).
pub fn scratch() -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let d = std::env::temp_dir().join(format!(
        "eali-ag-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(d.join("dp")).expect("scratch dir");
    d
}

pub fn in_pod(uid: &str) -> String {
    let u = uid.replace('-', "_");
    format!(
        "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/cri-containerd-0a1b2c.scope\n"
    )
}

/// Files process `pid` under pod `uid` in the agent's view of /proc.
pub fn put_in_pod(dir: &Path, pid: u32, uid: &str) {
    let d = dir.join("proc").join(pid.to_string());
    std::fs::create_dir_all(&d).expect("proc dir");
    std::fs::write(d.join("cgroup"), in_pod(uid)).expect("cgroup file");
}

/// A running agent with its stderr collected by a thread.
pub struct Agent {
    pub child: Child,
    pub addr: String,
    pub log: std::sync::mpsc::Receiver<String>,
}

pub fn agent_command(dir: &Path, extra: &[&str]) -> Command {
    let mut cmd = node_agent_command(dir, extra);
    cmd.arg("--no-controller");
    cmd
}

/// The agent's node side on the test's node, without `--no-controller`: with a kubeconfig in
/// the environment it runs the controller too and writes the node's InferenceService status.
pub fn node_agent_command(dir: &Path, extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_eali"));
    cmd.arg("agent")
        .arg("--device-plugin")
        .arg("--pod-directory")
        .arg(dir.join("pods.json"))
        .arg("--plugin-dir")
        .arg(dir.join("dp"))
        .arg("--control-root")
        .arg(dir.join("control"))
        .arg("--container-control-root")
        .arg(dir.join("control"))
        .arg("--pod-resources-socket")
        .arg(dir.join("pr.sock"))
        .arg("--proc-root")
        .arg(dir.join("proc"))
        .args(["--metrics-addr", "127.0.0.1:0"])
        .args(extra)
        .env("EALI_NVML_LIB", nvml_support::standin_lib())
        .env("EALI_NVML_PROFILE", "v100-sxm2")
        .env("EALI_NVML_GPUS", "1")
        .env("EALI_NVML_STATE", dir.join("driver.json"))
        .env("EALI_NVML_LOAD_FILE", dir.join("load"))
        .env("EALI_CLOCK_RECORD", dir.join("locks.json"))
        .env(
            "RUST_LOG",
            std::env::var("EALI_TEST_AGENT_LOG").unwrap_or_else(|_| "info".into()),
        )
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

impl Agent {
    pub fn spawn(dir: &Path, extra: &[&str]) -> Self {
        Self::attach(agent_command(dir, extra).spawn().expect("spawn eali agent"))
    }

    /// Collects the child's stderr and waits for its HTTP address.
    pub fn attach(mut child: Child) -> Self {
        let stderr = child.stderr.take().expect("stderr");
        let (tx, log) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut a = Self {
            child,
            addr: String::new(),
            log,
        };
        let line = a.wait_log("serving /metrics", Duration::from_secs(20));
        // ... addr=127.0.0.1:PORT
        a.addr = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("addr="))
            .map(|s| s.trim_matches('"').to_string())
            .unwrap_or_else(|| panic!("no address in {line}"));
        a
    }

    pub fn wait_log(&mut self, marker: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.log.recv_timeout(left) {
                Ok(l) if l.contains(marker) => return l,
                Ok(_) => {}
                Err(_) => {
                    let status = self.child.try_wait();
                    panic!("agent did not log `{marker}` (status {status:?})");
                }
            }
        }
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(&self.addr, path)
    }

    /// SIGTERM and wait; the exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                return s;
            }
            assert!(Instant::now() < deadline, "agent did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the agent's HTTP port");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).expect("response");
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|b| b.1.to_string())
        .unwrap_or_default();
    (code, body)
}

/// The stand-in driver's state file (retried: the library rewrites it in place).
pub fn driver_state(dir: &Path) -> Value {
    for _ in 0..100 {
        if let Ok(bytes) = std::fs::read(dir.join("driver.json"))
            && let Ok(v) = serde_json::from_slice(&bytes)
        {
            return v;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    panic!("driver state unreadable");
}

/// Locked range of GPU 0 in the driver.
pub fn lock_of_gpu0(dir: &Path) -> Option<(u64, u64)> {
    driver_state(dir)["gpus"][0]["locked"]
        .as_array()
        .map(|a| (a[0].as_u64().unwrap_or(0), a[1].as_u64().unwrap_or(0)))
}

/// Driver operations of process `pid`, in order (`init`, `lock A-B`, `reset-lock`, ...).
pub fn ops_of(dir: &Path, pid: u32) -> Vec<String> {
    driver_state(dir)["log"]
        .as_array()
        .expect("log")
        .iter()
        .filter(|e| e["pid"].as_u64() == Some(u64::from(pid)))
        .map(|e| e["op"].as_str().unwrap_or("").to_string())
        .collect()
}

pub fn record_entries(dir: &Path) -> usize {
    eali::gpu::clockguard::LockRecord::load(&dir.join("locks.json"))
        .expect("lock record")
        .entries
        .len()
}

/// The kubelet side and the pod's identity; returns the GPU UUID the agent advertised.
pub async fn wait_registered(kubelet: &mut FakeKubelet) -> (Vec<String>, Instant) {
    kubelet
        .wait_for(Duration::from_secs(20), |e| match e {
            KubeletEvent::Devices { devices, at } => {
                Some((devices.iter().map(|d| d.id.clone()).collect(), *at))
            }
            _ => None,
        })
        .await
        .expect("the agent registers and advertises its GPU")
}

pub fn make_holder(dir: &Path, pods: &FakePodResources, uuid: &str) {
    std::fs::write(
        dir.join("pods.json"),
        format!("{{\"{POD_UID}\": \"serving/resnet-0\"}}"),
    )
    .expect("pod directory");
    put_in_pod(dir, std::process::id(), POD_UID);
    pods.set(
        "eali.dev/gpu",
        &[("serving", "resnet-0", vec![uuid.to_string()])],
    );
}

pub async fn lock_low(dir: &Path, uuid: &str) -> ControlClient {
    let socket = dir.join("control").join(uuid).join("control.sock");
    let mut client = ControlClient::connect(&socket, uuid)
        .await
        .expect("connect to the control socket");
    let st = client
        .set_clocks(LOW_MHZ, LOW_MHZ)
        .await
        .expect("the holder may lock");
    assert_eq!(st.applied_mhz, LOW_MHZ);
    client
}

pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64()
}

/// `eali serve` started with Allocate's environment, as pod `uid`. It runs under `sh`, which
/// waits for a line on stdin before it execs the server (same pid), so that the process is
/// filed in its pod before its first control call.
pub struct Serve {
    pub child: Child,
    pub log: std::sync::mpsc::Receiver<String>,
}

impl Serve {
    pub fn spawn(
        dir: &Path,
        envs: &std::collections::HashMap<String, String>,
        uid: &str,
        args: &[&str],
    ) -> Self {
        let mut child = Command::new("sh")
            .args(["-c", "read go; exec \"$0\" \"$@\""])
            .arg(env!("CARGO_BIN_EXE_eali"))
            .arg("serve")
            .args(args)
            .args(["--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0"])
            .env("RUST_LOG", "info")
            .envs(envs)
            .env("NO_COLOR", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn eali serve");
        put_in_pod(dir, child.id(), uid);
        child
            .stdin
            .as_mut()
            .expect("stdin")
            .write_all(b"go\n")
            .expect("go");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, log) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        Self { child, log }
    }

    pub fn wait_log(&mut self, marker: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.log.recv_timeout(left) {
                Ok(l) if l.contains(marker) => return l,
                Ok(l) => seen.push(l),
                Err(_) => panic!("serve did not log `{marker}`:\n{}", seen.join("\n")),
            }
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Serve {
    /// Waits for the server's "serving" line; its REST address.
    pub fn http_addr(&mut self, timeout: Duration) -> String {
        let line = self.wait_log("serving", timeout);
        line.split_whitespace()
            .find_map(|w| w.strip_prefix("http="))
            .unwrap_or_else(|| panic!("no http address in `{line}`"))
            .to_string()
    }
}

/// Runs `eali load` at `rate` req/s for `secs` against the REST server at `http`, with `extra`
/// flags; its standard output.
fn run_load(http: &str, model: &str, rate: u32, secs: u32, slo_ms: u32, extra: &[&str]) -> Vec<u8> {
    let out = Command::new(env!("CARGO_BIN_EXE_eali"))
        .args(["load", "--url", &format!("http://{http}"), "--model", model])
        .args(["--rate", &rate.to_string(), "--duration", &secs.to_string()])
        .args(["--slo-ms", &slo_ms.to_string()])
        .args(extra)
        .output()
        .expect("eali load");
    assert!(
        out.status.success(),
        "eali load: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// `eali load` at `rate` req/s for `secs` against the REST server at `http`; its report.
pub fn load(http: &str, model: &str, rate: u32, secs: u32, slo_ms: u32) -> String {
    String::from_utf8_lossy(&run_load(http, model, rate, secs, slo_ms, &[])).into_owned()
}

/// `eali load --json` (5 s request timeout) against the REST server at `http`; its report.
pub fn load_json(http: &str, model: &str, rate: u32, secs: u32, slo_ms: u32) -> Value {
    let out = run_load(
        http,
        model,
        rate,
        secs,
        slo_ms,
        &["--timeout", "5", "--json"],
    );
    serde_json::from_slice(&out).expect("load report")
}

/// One line of a `load_json` report.
pub fn summary(r: &Value) -> String {
    format!(
        "sent {} ok {} errors {} p99 {:.1} ms",
        r["sent"],
        r["ok"],
        r["errors"],
        r["p99_ms"].as_f64().unwrap_or(f64::NAN)
    )
}

/// Allocate of one GPU, as the kubelet asks it: the environment the container gets.
pub async fn allocate_envs(
    kubelet: &FakeKubelet,
    uuid: &str,
) -> std::collections::HashMap<String, String> {
    let mut plugin = kubelet.plugin_client().await.expect("plugin client");
    let resp = plugin
        .allocate(eali::deviceplugin::proto::AllocateRequest {
            container_requests: vec![eali::deviceplugin::proto::ContainerAllocateRequest {
                devices_ids: vec![uuid.to_string()],
            }],
        })
        .await
        .expect("allocate")
        .into_inner();
    resp.container_responses[0].envs.clone()
}

/// A node with a registered agent and one serving pod, `serving/<pod>`, holding its GPU.
pub struct Node {
    pub kubelet: FakeKubelet,
    pub pods: FakePodResources,
    pub pr: tokio::task::JoinHandle<()>,
    pub agent: Agent,
    pub uuid: String,
    /// What Allocate gives the pod's container.
    pub envs: std::collections::HashMap<String, String>,
}

/// Starts the kubelet side and `agent` (spawned by the caller once the kubelet listens), waits
/// for it to register, and files pod `serving/<pod>` as the GPU's holder.
pub async fn start_node(dir: &Path, pod: &str, agent: impl FnOnce() -> Agent) -> Node {
    let mut kubelet = FakeKubelet::start(&dir.join("dp")).await.expect("kubelet");
    let pods = FakePodResources::default();
    let pr = pods.serve(&dir.join("pr.sock")).expect("pod-resources");
    let agent = agent();
    let (ids, _) = wait_registered(&mut kubelet).await;
    let uuid = ids[0].clone();
    std::fs::write(
        dir.join("pods.json"),
        format!("{{\"{POD_UID}\": \"serving/{pod}\"}}"),
    )
    .expect("pod directory");
    pods.set("eali.dev/gpu", &[("serving", pod, vec![uuid.clone()])]);
    let envs = allocate_envs(&kubelet, &uuid).await;
    Node {
        kubelet,
        pods,
        pr,
        agent,
        uuid,
        envs,
    }
}
