//! `eali agent`: the node agent. It runs the InferenceService controller behind a Lease (one
//! active instance per cluster) after startup checks (CRD installed, RBAC complete); with
//! `--device-plugin` the node side runs beside it (device plugin, per-GPU control sockets, clock
//! reset on release, per-GPU and per-layer energy telemetry), and with `--no-controller` alone.
//! `/metrics`, `/healthz` and `/readyz` are served on `--metrics-addr`.
//!
//! Order at start, for clock safety: the node side first resets whatever a previous agent left
//! locked (the on-disk lock record), before the HTTP endpoint, the Kubernetes client, the
//! control sockets or the device plugin exist.

use std::time::Duration;

use anyhow::Context;

use crate::k8s::checks;
use crate::k8s::controller::{self, ControllerConfig};
use crate::k8s::lease::{self, LeaseConfig};
use crate::k8s::objects::ServeDefaults;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Namespace of the leader-election Lease [default: $POD_NAMESPACE, else eali-system].
    #[arg(long)]
    pub namespace: Option<String>,
    /// Unique name of this agent [default: $POD_NAME, else <hostname>-<pid>].
    #[arg(long)]
    pub identity: Option<String>,
    /// ServiceAccount the agent runs as, only used in fix suggestions [default: $EALI_SERVICE_ACCOUNT].
    #[arg(long)]
    pub service_account: Option<String>,
    /// Name of the Lease.
    #[arg(long, default_value = "eali-controller")]
    pub lease_name: String,
    /// Seconds a silent leader keeps the Lease.
    #[arg(long, default_value_t = 15)]
    pub lease_duration_secs: u64,
    /// Seconds between Lease renewals (and follower retries).
    #[arg(long, default_value_t = 5)]
    pub renew_secs: u64,
    /// Reconcile every InferenceService at least this often (seconds).
    #[arg(long, default_value_t = 60)]
    pub requeue_secs: u64,
    /// Ignore serving reports older than this (seconds).
    #[arg(long, default_value_t = 120)]
    pub report_max_age_secs: u64,
    /// Least seconds between two load-driven replica changes.
    #[arg(long, default_value_t = 60)]
    pub scale_cooldown_secs: u64,
    /// Image of `eali serve` for InferenceServices that do not name one.
    #[arg(long, default_value = "eali/eali:latest")]
    pub serve_image: String,
    /// Reconcile InferenceServices in this namespace only [default: all namespaces].
    #[arg(long)]
    pub watch_namespace: Option<String>,
    /// Run the startup checks, print the result and exit.
    #[arg(long)]
    pub check_only: bool,
    /// Also run the node side: the `eali.dev/gpu` device plugin and the per-GPU control sockets
    /// over the GPUs NVML finds (every agent of the DaemonSet, leader or not).
    #[arg(long)]
    pub device_plugin: bool,
    /// This node's name, to find the pods that call the control sockets [default: $NODE_NAME].
    #[arg(long)]
    pub node_name: Option<String>,
    /// Serve `/metrics`, `/healthz` and `/readyz` here (the chart's metrics port).
    #[arg(long, default_value = "0.0.0.0:9400")]
    pub metrics_addr: std::net::SocketAddr,
    /// Run only the node side (needs `--device-plugin`): no Lease, no controller.
    #[arg(long)]
    pub no_controller: bool,
    /// Pod UIDs to `namespace/name` from this JSON file instead of the API server (nodes without
    /// API access; tests).
    #[arg(long)]
    pub pod_directory: Option<std::path::PathBuf>,
    /// The kubelet's device plugin directory.
    #[arg(long, default_value = crate::deviceplugin::DEVICE_PLUGIN_PATH)]
    pub plugin_dir: std::path::PathBuf,
    /// Host directory of the per-GPU control sockets (`<dir>/<uuid>/control.sock`).
    #[arg(long, default_value = "/run/eali/control")]
    pub control_root: std::path::PathBuf,
    /// Where Allocate mounts those directories in the serving container.
    #[arg(long, default_value = "/run/eali")]
    pub container_control_root: std::path::PathBuf,
    /// The kubelet's pod-resources socket.
    #[arg(long, default_value = crate::deviceplugin::POD_RESOURCES_SOCKET)]
    pub pod_resources_socket: std::path::PathBuf,
    /// Where callers' `/proc/<pid>/cgroup` files are read (the host's /proc).
    #[arg(long, default_value = "/proc")]
    pub proc_root: std::path::PathBuf,
    /// Pod-resources polling period for the clock reset on release (ms).
    #[arg(long, default_value_t = 500)]
    pub release_poll_ms: u64,
    /// GPU sampling period for telemetry (ms).
    #[arg(long, default_value_t = 50)]
    pub sample_ms: u64,
    /// How long an authorization decision for a calling process is reused (ms).
    #[arg(long, default_value_t = 2000)]
    pub authz_cache_ms: u64,
    /// How long counter readings wait for the pods' unit timings before attribution (ms).
    #[arg(long, default_value_t = 2000)]
    pub attribution_lag_ms: u64,
    /// How long an Unhealthy GPU must answer queries with no critical event before the device
    /// plugin reports it Healthy again (s).
    #[arg(long, default_value_t = 30.0)]
    pub health_recovery_s: f64,
    /// Seconds between the node's InferenceService status writes (GPUs, pods, their reports).
    #[arg(long, default_value_t = 10)]
    pub status_secs: u64,
}

fn env_or(value: Option<String>, var: &str) -> Option<String> {
    value.or_else(|| std::env::var(var).ok().filter(|v| !v.is_empty()))
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(agent(args))
}

async fn agent(args: Args) -> anyhow::Result<()> {
    use crate::agent::{AgentMetrics, HttpServer, Readiness};

    if args.no_controller && !args.device_plugin {
        anyhow::bail!("--no-controller leaves nothing to run without --device-plugin");
    }
    if args.check_only {
        let client = kube_client().await?;
        let namespace = namespace_of(&args);
        let sa = env_or(args.service_account.clone(), "EALI_SERVICE_ACCOUNT");
        startup_checks(&client, &namespace, sa.as_deref()).await?;
        println!("startup checks passed: CRD installed, RBAC grants everything the agent uses");
        return Ok(());
    }
    // Clocks first: nothing else may run while a GPU may sit at a lock a dead agent left.
    let node = if args.device_plugin {
        Some(prepare_node(&args)?)
    } else {
        None
    };
    let metrics = AgentMetrics::new()?;
    if let Some(n) = &node {
        for (uuid, _, _) in &n.recovered {
            metrics
                .clock_resets
                .with_label_values(&[uuid, crate::agent::metrics::reset_reason::RECOVERY])
                .inc();
        }
    }
    let (ready_tx, ready_rx) = tokio::sync::watch::channel(if node.is_some() {
        Readiness::NotReady("node side starting".into())
    } else {
        Readiness::Ready
    });
    let http = HttpServer::start(args.metrics_addr, metrics.clone(), ready_rx).await?;
    tracing::info!(addr = %http.addr, "serving /metrics /healthz /readyz");

    // One shutdown signal for the controller and the node side.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop_tx = std::sync::Arc::new(stop_tx);
    let on_signal = stop_tx.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = on_signal.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await.map(|_| ());
    };
    let needs_api = !args.no_controller || (node.is_some() && args.pod_directory.is_none());
    let client = if needs_api {
        Some(kube_client().await?)
    } else {
        None
    };
    let node_task = match node {
        Some(prepared) => {
            // Per-node status in the InferenceServices, where the API and the node name are known.
            let status: Option<std::sync::Arc<dyn crate::agent::NodeStatusSink>> =
                match (&client, env_or(args.node_name.clone(), "NODE_NAME")) {
                    (Some(c), Some(node)) => Some(std::sync::Arc::new(
                        crate::agent::kube_status::KubeNodeStatus::new(c.clone(), node),
                    )),
                    _ => None,
                };
            let directory: std::sync::Arc<dyn crate::control::PodDirectory> = if let Some(path) =
                &args.pod_directory
            {
                std::sync::Arc::new(crate::control::FilePodDirectory { path: path.clone() })
            } else {
                let node_name = env_or(args.node_name.clone(), "NODE_NAME")
                    .context("--device-plugin needs the node name (--node-name or $NODE_NAME)")?;
                std::sync::Arc::new(crate::control::authz::KubePodDirectory::new(
                    client
                        .clone()
                        .context("the pod directory needs API access or --pod-directory")?,
                    node_name,
                ))
            };
            Some(tokio::spawn(run_node_side(
                prepared,
                node_config(&args),
                directory,
                status,
                metrics.clone(),
                ready_tx,
                stopped(stop_rx.clone()),
            )))
        }
        None => None,
    };
    let controller = if let Some(client) = client.filter(|_| !args.no_controller) {
        run_controller(client, &args, stopped(stop_rx)).await
    } else {
        stopped(stop_rx).await;
        Ok(())
    };
    // A failed controller (startup checks) stops the node side too, through its graceful path:
    // sockets removed, every clock reset.
    let _ = stop_tx.send(true);
    if let Some(node) = node_task {
        node.await.context("node side task")??;
    }
    http.shutdown().await;
    controller
}

async fn kube_client() -> anyhow::Result<kube::Client> {
    kube::Client::try_default()
        .await
        .context("no Kubernetes credentials (in-cluster service account or KUBECONFIG)")
}

fn namespace_of(args: &Args) -> String {
    env_or(args.namespace.clone(), "POD_NAMESPACE").unwrap_or_else(|| "eali-system".into())
}

async fn startup_checks(
    client: &kube::Client,
    namespace: &str,
    sa: Option<&str>,
) -> anyhow::Result<()> {
    checks::check_crd(client).await?;
    checks::check_rbac(client, namespace, sa.map(|s| (namespace, s))).await?;
    Ok(())
}

/// The InferenceService controller behind the Lease, until `shutdown`.
async fn run_controller(
    client: kube::Client,
    args: &Args,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let namespace = namespace_of(args);
    let identity = env_or(args.identity.clone(), "POD_NAME").unwrap_or_else(|| {
        let host = std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default();
        format!(
            "{}-{}",
            if host.is_empty() { "eali-agent" } else { &host },
            std::process::id()
        )
    });
    let sa = env_or(args.service_account.clone(), "EALI_SERVICE_ACCOUNT");
    startup_checks(&client, &namespace, sa.as_deref()).await?;
    let lease_cfg = LeaseConfig {
        namespace: namespace.clone(),
        name: args.lease_name.clone(),
        identity: identity.clone(),
        duration: Duration::from_secs(args.lease_duration_secs.max(1)),
        renew_every: Duration::from_secs(args.renew_secs.max(1)),
    };
    let ctl_cfg = ControllerConfig {
        identity: identity.clone(),
        serve: ServeDefaults {
            image: args.serve_image.clone(),
        },
        requeue: Duration::from_secs(args.requeue_secs.max(1)),
        report_max_age: Duration::from_secs(args.report_max_age_secs),
        scale_cooldown: Duration::from_secs(args.scale_cooldown_secs),
        namespace: args.watch_namespace.clone(),
    };
    tracing::info!(%identity, %namespace, lease = %lease_cfg.name, "agent started; waiting for the lease");
    let work_client = client.clone();
    lease::run_while_leader(
        client,
        lease_cfg,
        move || {
            let (c, cfg) = (work_client.clone(), ctl_cfg.clone());
            async move {
                controller::run(c, cfg, std::future::pending()).await;
                Ok(())
            }
        },
        shutdown,
    )
    .await?;
    tracing::info!(%identity, "agent stopped; lease released");
    Ok(())
}

fn node_config(args: &Args) -> crate::agent::AgentNodeConfig {
    use crate::agent::{AgentNodeConfig, EnergyConfig};
    use crate::control::NodeConfig;
    use crate::deviceplugin::{AllocateConfig, PluginConfig};
    AgentNodeConfig {
        node: NodeConfig {
            plugin: PluginConfig {
                plugin_dir: args.plugin_dir.clone(),
                ..PluginConfig::default()
            },
            alloc: AllocateConfig {
                host_control_root: args.control_root.clone(),
                container_control_root: args.container_control_root.clone(),
                cdi_kind: None,
            },
            health: crate::deviceplugin::HealthPolicy {
                recovery_quiet: Duration::try_from_secs_f64(args.health_recovery_s)
                    .unwrap_or(Duration::ZERO),
                ..crate::deviceplugin::HealthPolicy::default()
            },
            ..NodeConfig::default()
        },
        energy: EnergyConfig {
            lag_s: Duration::from_millis(args.attribution_lag_ms).as_secs_f64(),
            ..EnergyConfig::default()
        },
        sample_every: Duration::from_millis(args.sample_ms.max(1)),
        release_every: Duration::from_millis(args.release_poll_ms.max(1)),
        status_every: Duration::from_secs(args.status_secs.max(1)),
    }
}

/// GPUs opened and clocks recovered, before anything else runs.
struct PreparedNode {
    sys: &'static crate::gpu::nvml::NvmlSystem,
    guard: std::sync::Arc<crate::gpu::clockguard::ClockGuard>,
    recovered: Vec<(String, crate::gpu::clockguard::LockKind, u32)>,
    pod_resources: std::path::PathBuf,
    proc_root: std::path::PathBuf,
    authz_cache: Duration,
}

/// NVML up and every clock a previous agent left locked reset (the on-disk record), timed.
fn prepare_node(args: &Args) -> anyhow::Result<PreparedNode> {
    use std::sync::Arc;

    use crate::gpu::clockguard::{ClockGuard, DEFAULT_RECORD, RECORD_ENV};
    use crate::gpu::nvml::{NvmlResetter, NvmlSystem};

    let t0 = std::time::Instant::now();
    let sys = NvmlSystem::global(None).context("NVML is needed for the device plugin")?;
    let record = std::env::var(RECORD_ENV).unwrap_or_else(|_| DEFAULT_RECORD.into());
    let (guard, report) = ClockGuard::start(
        std::path::Path::new(&record),
        Arc::new(NvmlResetter::new(sys)),
    )?;
    let took = t0.elapsed();
    if !report.reset.is_empty() || !report.is_clean() {
        tracing::warn!(?report, ?took, "reset clocks a previous agent left locked");
    } else {
        tracing::info!(?took, "no clocks left locked by a previous agent");
    }
    Ok(PreparedNode {
        sys,
        guard,
        recovered: report.reset,
        pod_resources: args.pod_resources_socket.clone(),
        proc_root: args.proc_root.clone(),
        authz_cache: Duration::from_millis(args.authz_cache_ms),
    })
}

/// The node side: device plugin, control sockets, release watcher and telemetry until
/// `shutdown`.
async fn run_node_side(
    prepared: PreparedNode,
    cfg: crate::agent::AgentNodeConfig,
    directory: std::sync::Arc<dyn crate::control::PodDirectory>,
    status: Option<std::sync::Arc<dyn crate::agent::NodeStatusSink>>,
    metrics: crate::agent::AgentMetrics,
    ready: tokio::sync::watch::Sender<crate::agent::Readiness>,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    use std::sync::{Arc, Mutex};

    use crate::control::Authorizer;
    use crate::deviceplugin::SharedGpu;
    use crate::gpu::nvml::OpenOptions;

    // No `install_exit_hooks`: its SIGTERM handler exits at once, before the lease is released
    // and the sockets removed; `run_node` resets every clock on the graceful path instead, and a
    // SIGKILL is covered by the recovery at the next start.
    let (opened, failed) = prepared.sys.open_all(&OpenOptions::default())?;
    for (index, e) in &failed {
        tracing::warn!(index, error = %e, "GPU not advertised: cannot open it");
    }
    let gpus: Vec<SharedGpu> = opened
        .into_iter()
        .map(|g| Arc::new(Mutex::new(g)) as SharedGpu)
        .collect();
    let authz = Authorizer::new(directory)
        .with_pod_resources_socket(prepared.pod_resources)
        .with_proc_root(prepared.proc_root)
        .with_cache_ttl(prepared.authz_cache);
    crate::agent::run_agent_node(
        cfg,
        gpus,
        prepared.guard,
        Arc::new(authz),
        metrics,
        ready,
        status,
        shutdown,
    )
    .await?;
    Ok(())
}

/// Completes on SIGTERM (kubelet stopping the pod) or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
