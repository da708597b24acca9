//! The control socket end to end: a serving process that holds the GPU (per a fake kubelet
//! pod-resources server speaking the real v1 API) sets clocks through the socket and gets the
//! effective clocks and energy back, with every lock recorded by the clock guard first; a caller
//! whose pod does not hold the GPU, or that is not in a pod at all, gets PERMISSION_DENIED.
//!
//! The caller is this test process (its real SO_PEERCRED pid); since it is not really in a
//! pod, the authorizer reads `<tmp>/proc/<pid>/cgroup`, written here in the kubelet's layout.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use eali::control::proto::{ServingWindow, UnitTiming};
use eali::control::{
    Authorizer, ControlClient, ControlError, ControlServer, ControlService, StaticPodDirectory,
};
use eali::deviceplugin::podresources as pr;
use eali::deviceplugin::podresources::pod_resources_lister_server::{
    PodResourcesLister, PodResourcesListerServer,
};
use eali::deviceplugin::{SharedGpu, uds};
use eali::gpu::clockguard::{ClockGuard, ClockResetter, LockEntry, LockKind};
use eali::gpu::sim::{GpuProfile, SimGpu};
use eali::gpu::{GpuBackend, GpuError};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};

const POD_UID: &str = "7d3b1a52-90e4-4c1f-8a6e-2f0c9b4d5e61";
const OTHER_UID: &str = "0c4f9e11-5a2b-4d7e-9f10-3b6a8c2d4e07";

/// The kubelet's pod-resources API with a settable answer.
#[derive(Clone, Default)]
struct FakePodResources(Arc<Mutex<Vec<pr::PodResources>>>);

impl FakePodResources {
    fn set_holder(&self, namespace: &str, name: &str, gpu: &str) {
        *self.0.lock().unwrap() = vec![pr::PodResources {
            name: name.into(),
            namespace: namespace.into(),
            containers: vec![pr::ContainerResources {
                name: "serve".into(),
                devices: vec![
                    pr::ContainerDevices {
                        resource_name: "example.com/nic".into(),
                        device_ids: vec!["nic0".into()],
                        topology: None,
                    },
                    pr::ContainerDevices {
                        resource_name: "eali.dev/gpu".into(),
                        device_ids: vec![gpu.into()],
                        topology: None,
                    },
                ],
                cpu_ids: vec![],
                memory: vec![],
            }],
        }];
    }
}

#[tonic::async_trait]
impl PodResourcesLister for FakePodResources {
    async fn list(
        &self,
        _: Request<pr::ListPodResourcesRequest>,
    ) -> Result<Response<pr::ListPodResourcesResponse>, Status> {
        Ok(Response::new(pr::ListPodResourcesResponse {
            pod_resources: self.0.lock().unwrap().clone(),
        }))
    }
    async fn get_allocatable_resources(
        &self,
        _: Request<pr::AllocatableResourcesRequest>,
    ) -> Result<Response<pr::AllocatableResourcesResponse>, Status> {
        Err(Status::unimplemented("not used"))
    }
    async fn get(
        &self,
        _: Request<pr::GetPodResourcesRequest>,
    ) -> Result<Response<pr::GetPodResourcesResponse>, Status> {
        Err(Status::unimplemented("not used"))
    }
}

/// Resets the simulated GPU the guard recorded.
struct SimResetter(Arc<Mutex<SimGpu>>);

impl ClockResetter for SimResetter {
    fn reset(&self, entry: &LockEntry) -> Result<(), GpuError> {
        let mut g = self.0.lock().unwrap();
        match entry.kind {
            LockKind::Graphics => g.reset_locked_clocks().map(|_| ()),
            LockKind::Application => g.reset_application_clocks().map(|_| ()),
            LockKind::Memory => Ok(()),
        }
    }
    fn all_gpus(&self) -> Result<Vec<LockEntry>, GpuError> {
        let g = self.0.lock().unwrap();
        Ok(vec![LockEntry::new(
            &g.info().uuid,
            0,
            LockKind::Graphics,
            0,
            0,
        )])
    }
}

fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("eali-ctl-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

fn write_cgroup(proc_root: &Path, contents: &str) {
    write_cgroup_of(proc_root, std::process::id(), contents);
}

fn write_cgroup_of(proc_root: &Path, pid: u32, contents: &str) {
    let dir = proc_root.join(pid.to_string());
    std::fs::create_dir_all(&dir).expect("proc dir");
    std::fs::write(dir.join("cgroup"), contents).expect("cgroup file");
}

fn in_pod(uid: &str) -> String {
    let u = uid.replace('-', "_");
    format!(
        "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{u}.slice/cri-containerd-0a1b2c.scope\n"
    )
}

fn denied(r: Result<impl std::fmt::Debug, ControlError>) -> String {
    match r {
        Err(ControlError::Rpc(s)) if s.code() == tonic::Code::PermissionDenied => {
            s.message().to_string()
        }
        other => panic!("expected PERMISSION_DENIED, got {other:?}"),
    }
}

/// The kubelet's pod-resources server and the agent's control server for one simulated GPU.
struct Node {
    dir: PathBuf,
    proc_root: PathBuf,
    sim: Arc<Mutex<SimGpu>>,
    uuid: String,
    pods: FakePodResources,
    guard: Arc<ClockGuard>,
    socket: PathBuf,
    timings: tokio::sync::mpsc::UnboundedReceiver<eali::control::AttributedTiming>,
    windows: tokio::sync::mpsc::UnboundedReceiver<eali::control::AttributedWindow>,
    server: ControlServer,
    pr_server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
}

fn start_node(tag: &str) -> Node {
    let dir = temp_dir(tag);
    let proc_root = dir.join("proc");
    // The kubelet side: pod-resources says serving/resnet-0 holds the GPU.
    let sim = Arc::new(Mutex::new(SimGpu::new(
        GpuProfile::builtin("v100-sxm2").expect("profile"),
        0,
        3,
    )));
    let uuid = sim.lock().unwrap().info().uuid.clone();
    let pods = FakePodResources::default();
    pods.set_holder("serving", "resnet-0", &uuid);
    let pr_sock = dir.join("pod-resources.sock");
    let listener = uds::bind(&pr_sock).expect("bind");
    let pr_server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(PodResourcesListerServer::new(pods.clone()))
            .serve_with_incoming(UnixListenerStream::new(listener)),
    );
    // The agent side.
    let (guard, _) = ClockGuard::start(
        &dir.join("clock-locks.json"),
        Arc::new(SimResetter(sim.clone())),
    )
    .expect("guard");
    let directory = Arc::new(StaticPodDirectory::default());
    directory.insert(POD_UID, "serving", "resnet-0");
    directory.insert(OTHER_UID, "serving", "other-0");
    let authz = Authorizer::new(directory)
        .with_proc_root(proc_root.clone())
        .with_pod_resources_socket(pr_sock)
        .with_cache_ttl(Duration::ZERO);
    let (tx, timings) = tokio::sync::mpsc::unbounded_channel();
    let shared: SharedGpu = sim.clone();
    let (wtx, windows) = tokio::sync::mpsc::unbounded_channel();
    let svc =
        ControlService::new(shared, guard.clone(), Arc::new(authz), Some(tx)).with_windows(wtx);
    let socket = dir.join("control").join(&uuid).join("control.sock");
    let server = ControlServer::spawn(&socket, svc).expect("control server");
    Node {
        dir,
        proc_root,
        sim,
        uuid,
        pods,
        guard,
        socket,
        timings,
        windows,
        server,
        pr_server,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_pod_holding_the_gpu_controls_its_clocks() {
    let Node {
        dir,
        proc_root,
        sim,
        uuid,
        pods,
        guard,
        socket,
        mut timings,
        mut windows,
        server,
        pr_server,
    } = start_node("main");
    // The serving pod: its process is in resnet-0's cgroup.
    write_cgroup(&proc_root, &in_pod(POD_UID));
    let mut client = ControlClient::connect(&socket, &uuid)
        .await
        .expect("connect");
    let clocks = {
        let g = sim.lock().unwrap();
        let mem = g.supported_memory_clocks().expect("memory clocks")[0];
        g.supported_graphics_clocks(mem).expect("graphics clocks")
    };
    let low = clocks[clocks.len() * 3 / 4];
    let st = client
        .set_clocks(low, low)
        .await
        .expect("holder may set clocks");
    println!("SetClocks({low},{low}) -> {st:?}");
    assert_eq!(st.applied_mhz, low);
    assert!(st.call_latency_s > 0.0);
    // The status reports what is in force now: the lock lands ~20 ms after the call returns.
    assert!(st.effective_at_s > st.device_time_s);
    assert_eq!((st.locked_min_mhz, st.locked_max_mhz), (0, 0));
    let rec = guard.locked();
    assert_eq!(rec.len(), 1, "the lock is recorded before it is made");
    assert_eq!(
        (rec[0].uuid.as_str(), rec[0].kind, rec[0].max_mhz),
        (uuid.as_str(), LockKind::Graphics, low)
    );

    {
        // The energy counter advances with work done on the GPU.
        use eali::gpu::{LayerWork, WorkKind};
        let work = LayerWork {
            kind: WorkKind::Conv,
            flops: 4e12,
            bytes: 2e9,
            batch: 8,
        };
        sim.lock().unwrap().run_layer(&work, 10).expect("run");
    }
    let st2 = client.status().await.expect("status");
    assert!(
        st2.energy_mj > st.energy_mj,
        "{} -> {}",
        st.energy_mj,
        st2.energy_mj
    );
    assert!(st2.device_time_s > st.effective_at_s);
    assert_eq!(
        (st2.locked_min_mhz, st2.locked_max_mhz),
        (low, low),
        "the lock is in force after the settle time"
    );
    assert!(st2.graphics_mhz <= low);
    println!("GetStatus after work -> {st2:?}");

    let t = |unit, s: f64, e: f64| UnitTiming {
        gpu_uuid: uuid.clone(),
        model: "resnet50".into(),
        unit,
        batch: 8,
        start_unix_s: s,
        end_unix_s: e,
        clock_mhz: low,
        ..Default::default()
    };
    let summary = client
        .report_timings(vec![t(0, 1.0, 1.01), t(1, 1.01, 1.03), t(2, 1.03, 1.02)])
        .await
        .expect("timings");
    assert_eq!((summary.received, summary.rejected), (2, 1));
    let first = timings.recv().await.expect("attributed timing");
    assert_eq!(first.pod.to_string(), "serving/resnet-0");

    // A serving window reaches the agent with the caller's pod; one the status could not
    // carry (NaN, negative) is a bad request.
    let window = ServingWindow {
        gpu_uuid: uuid.clone(),
        inference_service: "resnet50".into(),
        model: "resnet50".into(),
        window_s: 10.0,
        end_unix_s: 1_795_000_000.0,
        requests: 400,
        latency_ms: Some(41.0),
        slo_percentile: 0.99,
        slo_latency_ms: 50.0,
        load_ratio: Some(0.4),
        saturated: false,
        predicted_energy_j: Some(900.0),
        max_clock_energy_j: Some(1200.0),
    };
    let ack = client.report_window(window.clone()).await.expect("window");
    assert!(ack.energy_mj > 0);
    let got = windows.recv().await.expect("attributed window");
    assert_eq!(
        (got.pod.to_string(), got.gpu_uuid.as_str(), &got.window),
        ("serving/resnet-0".to_string(), uuid.as_str(), &window)
    );
    for bad in [
        ServingWindow {
            latency_ms: Some(f64::NAN),
            ..window.clone()
        },
        ServingWindow {
            load_ratio: Some(-0.1),
            ..window.clone()
        },
        ServingWindow {
            window_s: 0.0,
            ..window.clone()
        },
        ServingWindow {
            inference_service: String::new(),
            ..window.clone()
        },
    ] {
        match client.report_window(bad).await {
            Err(ControlError::Rpc(s)) => {
                assert_eq!(s.code(), tonic::Code::InvalidArgument, "{s:?}");
                println!("refused window: {}", s.message());
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(windows.try_recv().is_err(), "refused windows go nowhere");

    client.reset_clocks().await.expect("reset");
    assert!(
        guard.locked().is_empty(),
        "the record is cleared after the reset"
    );
    {
        use eali::gpu::GpuBackend;
        sim.lock()
            .unwrap()
            .idle(0.1)
            .expect("idle past the settle time");
    }
    let st = client.status().await.expect("status");
    assert_eq!((st.locked_min_mhz, st.locked_max_mhz), (0, 0));

    // The GPU is reassigned to another pod: the same caller is refused.
    pods.set_holder("serving", "other-0", &uuid);
    let why = denied(client.set_clocks(low, low).await);
    println!("refused caller (pod does not hold the GPU): {why}");
    assert!(
        why.contains("serving/resnet-0") && why.contains("serving/other-0"),
        "{why}"
    );
    assert!(guard.locked().is_empty(), "a refused call records nothing");
    denied(client.status().await);
    denied(client.report_window(window.clone()).await);
    assert!(windows.try_recv().is_err(), "a refused window goes nowhere");

    // A process outside any pod, and one in an unknown pod, are refused too.
    pods.set_holder("serving", "resnet-0", &uuid);
    write_cgroup(&proc_root, "0::/user.slice/user-0.slice/session-1.scope\n");
    let why = denied(client.set_clocks(low, low).await);
    println!("refused caller (not in a pod): {why}");
    write_cgroup(&proc_root, &in_pod("00000000-0000-4000-8000-000000000000"));
    let why = denied(client.set_clocks(low, low).await);
    println!("refused caller (unknown pod): {why}");

    // A wrong GPU UUID on an authorized call is a bad request, not a permission matter.
    write_cgroup(&proc_root, &in_pod(POD_UID));
    let mut wrong = ControlClient::connect(&socket, "GPU-other")
        .await
        .expect("connect");
    match wrong.set_clocks(low, low).await {
        Err(ControlError::Rpc(s)) => assert_eq!(s.code(), tonic::Code::InvalidArgument),
        other => panic!("{other:?}"),
    }

    server.shutdown().await;
    assert!(!socket.exists(), "socket removed on shutdown");
    pr_server.abort();
    let _ = std::fs::remove_dir_all(dir);
}

/// Set in the environment of the child processes [`serving_process`] runs in.
const CHILD_ENV: &str = "EALI_TEST_CONTROL_CHILD";

/// The serving process: started by [`a_second_process_is_refused`] with Allocate's environment,
/// it waits for "go" on stdin (its cgroup file is written by then), sets a clock through
/// `EALI_CONTROL_SOCKET` and prints the outcome.
#[tokio::test]
#[ignore = "runs only as a child process of a_second_process_is_refused"]
async fn serving_process() {
    if std::env::var(CHILD_ENV).is_err() {
        panic!("run by a_second_process_is_refused, not directly");
    }
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).expect("go line");
    let mhz: u32 = line.trim().parse().expect("a clock in MHz");
    let mut client = ControlClient::from_env()
        .await
        .expect("EALI_CONTROL_SOCKET set")
        .expect("connect");
    match client.set_clocks(mhz, mhz).await {
        Ok(st) => println!("RESULT allowed applied_mhz={}", st.applied_mhz),
        Err(ControlError::Rpc(s)) => println!("RESULT {:?} {}", s.code(), s.message()),
        Err(e) => println!("RESULT error {e}"),
    }
}

/// Starts the serving process with `envs`, files its pid under `pod_uid`, and returns what it
/// printed.
fn run_serving_process(
    proc_root: &Path,
    envs: &std::collections::HashMap<String, String>,
    pod_uid: &str,
    mhz: u32,
) -> String {
    use std::io::Write;
    let exe = std::env::current_exe().expect("test binary");
    let mut child = std::process::Command::new(exe)
        .args(["serving_process", "--exact", "--ignored", "--nocapture"])
        .envs(envs)
        .env(CHILD_ENV, "1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn the serving process");
    write_cgroup_of(proc_root, child.id(), &in_pod(pod_uid));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(format!("{mhz}\n").as_bytes())
        .expect("go");
    let out = child.wait_with_output().expect("serving process ends");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.lines()
        .find_map(|l| l.strip_prefix("RESULT ").map(str::to_string))
        .unwrap_or_else(|| panic!("no RESULT line in:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_is_refused() {
    let node = start_node("procs");
    // Allocate's answer for this GPU, with the host path standing in for the container path
    // (no container here).
    let alloc = eali::deviceplugin::AllocateConfig {
        host_control_root: node.dir.join("control"),
        container_control_root: node.dir.join("control"),
        cdi_kind: None,
    };
    let envs = alloc
        .container_response(std::slice::from_ref(&node.uuid))
        .envs;
    assert_eq!(
        envs.get("EALI_CONTROL_SOCKET").map(PathBuf::from),
        Some(node.socket.clone())
    );
    let mhz = {
        let g = node.sim.lock().unwrap();
        let mem = g.supported_memory_clocks().expect("memory clocks")[0];
        let c = g.supported_graphics_clocks(mem).expect("graphics clocks");
        c[c.len() / 2]
    };
    let (proc_root, pods) = (node.proc_root.clone(), node.pods.clone());
    let (first, second) = tokio::task::spawn_blocking(move || {
        let first = run_serving_process(&proc_root, &envs, POD_UID, mhz);
        let second = run_serving_process(&proc_root, &envs, OTHER_UID, mhz);
        drop(pods);
        (first, second)
    })
    .await
    .expect("children");
    println!("process in serving/resnet-0 (holds the GPU): {first}");
    println!("process in serving/other-0: {second}");
    assert_eq!(first, format!("allowed applied_mhz={mhz}"));
    assert!(second.starts_with("PermissionDenied"), "{second}");
    assert!(second.contains("serving/other-0"), "{second}");
    assert_eq!(
        node.guard.locked().len(),
        1,
        "only the holder's lock is recorded"
    );
    node.server.shutdown().await;
    node.pr_server.abort();
    let _ = std::fs::remove_dir_all(&node.dir);
}

/// A batch's set-calls through the serving pod's remote clock: each is made at its planned time
/// (not before it), in order, none dropped when they are spaced wider than a call, and the
/// drain's reset clears the lock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_calls_reach_the_agent_at_their_planned_times() {
    use eali::control::remote::RemoteClock;
    use eali::gpu::ClockTarget;
    use std::time::Instant;
    let node = start_node("timed");
    write_cgroup(&node.proc_root, &in_pod(POD_UID));
    let clocks = {
        let g = node.sim.lock().unwrap();
        let mem = g.supported_memory_clocks().unwrap()[0];
        g.supported_graphics_clocks(mem).unwrap()
    };
    let plan = [
        clocks[clocks.len() / 4],
        clocks[clocks.len() / 2],
        clocks[clocks.len() * 3 / 4],
    ];
    let remote = RemoteClock::start(node.socket.clone(), node.uuid.clone()).unwrap();
    let t0 = Instant::now() + Duration::from_millis(200);
    let spacing = Duration::from_millis(400);
    // Queued all at once, as the worker does at dispatch (the later ones first, to show that
    // order comes from the planned times).
    for (i, mhz) in plan.iter().enumerate().rev() {
        remote.request_at(t0 + spacing * i as u32, ClockTarget::Locked(*mhz));
    }
    // The clock guard records each lock before the agent makes it: watch it change.
    let mut seen: Vec<(Duration, Option<u32>)> = Vec::new();
    let end = t0 + spacing * 3;
    while Instant::now() < end {
        let locked = node.guard.locked().first().map(|e| e.max_mhz);
        if seen.last().map(|s| s.1) != Some(locked) {
            seen.push((Instant::now().saturating_duration_since(t0), locked));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    remote.request(ClockTarget::Default);
    assert!(
        remote.flush(Duration::from_secs(5)),
        "the reset reached the agent"
    );
    println!("unit, planned offset, clock, seen at (offset from the first call's time):");
    let applied: Vec<(Duration, u32)> = seen
        .iter()
        .filter_map(|&(at, mhz)| mhz.map(|m| (at, m)))
        .collect();
    for (i, mhz) in plan.iter().enumerate() {
        let at = applied.iter().find(|a| a.1 == *mhz).map(|a| a.0);
        println!(
            "  unit {i}: +{:?} -> {mhz} MHz, seen at {at:?}",
            spacing * i as u32
        );
    }
    assert_eq!(
        applied.iter().map(|a| a.1).collect::<Vec<_>>(),
        plan.to_vec(),
        "each planned clock in order: {seen:?}"
    );
    for (i, (at, _)) in applied.iter().enumerate() {
        // The guard records a lock just before the call is made, so never before its time.
        assert!(*at >= spacing * i as u32, "unit {i} clock early: {seen:?}");
    }
    assert!(node.guard.locked().is_empty(), "the reset cleared the lock");
    // The sender thread ends and closes its connection, so the server can shut down.
    drop(remote);
    node.server.shutdown().await;
    node.pr_server.abort();
    let _ = std::fs::remove_dir_all(&node.dir);
}
