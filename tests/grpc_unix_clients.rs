//! Standard gRPC clients on the agent's Unix sockets. Python's `grpcio` (gRPC's C core, as Ruby
//! and PHP use it) sends the socket path, percent-encoded, as `:authority`, which tonic's HTTP/2
//! layer refuses with `RST_STREAM(PROTOCOL_ERROR)` unless the server repairs it
//! (`src/deviceplugin/authority.rs`). Here the real `grpcio` from PyPI calls the device plugin's
//! socket and a GPU's control socket of the real `eali agent`, with both target spellings, and
//! gets the services' answers.
//!
//! Needs the stand-in built first (`cargo build -p nvml-standin`) and the Python environment of
//! `e2e/run-tests.sh` (`target/py`, or `EALI_TEST_PYTHON`); without the latter the test skips
//! loudly, unless `EALI_E2E_REQUIRE=1`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod agent_support;
mod nvml_support;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use agent_support::*;
use eali::deviceplugin::harness::{FakeKubelet, FakePodResources};

/// Calls one unary method with an empty message (every request here is an empty or all-default
/// proto) once the test writes a line to its stdin, after it has put the process in the pod.
/// Prints `OK <response bytes>` or `STATUS <code> <details>`.
const CLIENT: &str = r#"
import sys, grpc
target, method = sys.argv[1], sys.argv[2]
print("pid ready", flush=True)
sys.stdin.readline()
with grpc.insecure_channel(target) as channel:
    call = channel.unary_unary(method)
    try:
        print("OK", len(call(b"", timeout=20)), flush=True)
    except grpc.RpcError as e:
        print("STATUS", e.code().name, e.details(), flush=True)
"#;

fn python() -> Option<PathBuf> {
    let p = std::env::var_os("EALI_TEST_PYTHON").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("target/py/bin/python"),
        PathBuf::from,
    );
    let has_grpcio = Command::new(&p)
        .args(["-c", "import grpc"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if has_grpcio {
        return Some(p);
    }
    let msg = format!(
        "no Python with grpcio at {} (e2e/run-tests.sh makes it; or set EALI_TEST_PYTHON)",
        p.display()
    );
    if std::env::var("EALI_E2E_REQUIRE").as_deref() == Ok("1") {
        panic!("{msg} (EALI_E2E_REQUIRE=1)");
    }
    eprintln!("SKIPPED: {msg}");
    None
}

/// Runs the client against `target`, inside pod `POD_UID` as the agent sees it.
fn call(py: &Path, dir: &Path, target: &str, method: &str) -> String {
    let mut child = Command::new(py)
        .args(["-c", CLIENT, target, method])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("ready line");
    assert_eq!(line.trim(), "pid ready");
    put_in_pod(dir, child.id(), POD_UID);
    writeln!(child.stdin.take().expect("stdin")).expect("go");
    line.clear();
    out.read_line(&mut line).expect("answer");
    assert!(child.wait().expect("python exits").success());
    println!("{target} {method}: {}", line.trim());
    line.trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_is_served_on_the_device_plugin_and_control_sockets() {
    let Some(py) = python() else { return };
    let dir = scratch();
    let mut kubelet = FakeKubelet::start(&dir.join("dp")).await.expect("kubelet");
    let pods = FakePodResources::default();
    let pr = pods.serve(&dir.join("pr.sock")).expect("pod-resources");
    let agent = Agent::spawn(&dir, &["--authz-cache-ms", "0"]);
    let (ids, _) = wait_registered(&mut kubelet).await;
    make_holder(&dir, &pods, &ids[0]);
    let envs = allocate_envs(&kubelet, &ids[0]).await;
    let control = envs["EALI_CONTROL_SOCKET"].clone();
    let plugin = std::fs::read_dir(dir.join("dp"))
        .expect("plugin dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.file_name().is_some_and(|n| n != "kubelet.sock"))
        .expect("the plugin's socket");
    let plugin = plugin.display().to_string();

    for target in [format!("unix:{plugin}"), format!("unix://{plugin}")] {
        let got = call(
            &py,
            &dir,
            &target,
            "/v1beta1.DevicePlugin/GetDevicePluginOptions",
        );
        assert!(got.starts_with("OK "), "{got}");
    }
    for target in [format!("unix:{control}"), format!("unix://{control}")] {
        let got = call(&py, &dir, &target, "/eali.control.v1.GpuControl/GetStatus");
        assert!(got.starts_with("OK "), "{got}");
        // A caller outside the pod reaches the service too, and is refused by it.
        let got = call_outside(&py, &target, "/eali.control.v1.GpuControl/GetStatus");
        assert!(got.starts_with("STATUS PERMISSION_DENIED"), "{got}");
    }

    let status = agent.stop();
    assert!(status.success(), "{status:?}");
    pr.abort();
    let _ = std::fs::remove_dir_all(&dir);
}

/// The client as a process the agent finds in no pod.
fn call_outside(py: &Path, target: &str, method: &str) -> String {
    let mut child = Command::new(py)
        .args(["-c", CLIENT, target, method])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python");
    writeln!(child.stdin.take().expect("stdin")).expect("go");
    let out = child.wait_with_output().expect("python exits");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or("").to_string();
    println!("{target} {method} (outside the pod): {line}");
    line
}
