//! `eali agent`: the node agent. For now it runs the InferenceService controller behind a Lease
//! (one active instance per cluster) after startup checks (CRD installed, RBAC complete); the
//! device plugin and control sockets run beside it with `--device-plugin`; telemetry joins
//! them in later work.

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
    let namespace = env_or(args.namespace, "POD_NAMESPACE").unwrap_or_else(|| "eali-system".into());
    let identity = env_or(args.identity, "POD_NAME").unwrap_or_else(|| {
        let host = std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default();
        format!(
            "{}-{}",
            if host.is_empty() { "eali-agent" } else { &host },
            std::process::id()
        )
    });
    let sa = env_or(args.service_account, "EALI_SERVICE_ACCOUNT");

    let client = kube::Client::try_default()
        .await
        .context("no Kubernetes credentials (in-cluster service account or KUBECONFIG)")?;
    checks::check_crd(&client).await?;
    checks::check_rbac(
        &client,
        &namespace,
        sa.as_deref().map(|s| (namespace.as_str(), s)),
    )
    .await?;
    if args.check_only {
        println!("startup checks passed: CRD installed, RBAC grants everything the agent uses");
        return Ok(());
    }

    let lease_cfg = LeaseConfig {
        namespace: namespace.clone(),
        name: args.lease_name,
        identity: identity.clone(),
        duration: Duration::from_secs(args.lease_duration_secs.max(1)),
        renew_every: Duration::from_secs(args.renew_secs.max(1)),
    };
    let ctl_cfg = ControllerConfig {
        identity: identity.clone(),
        serve: ServeDefaults {
            image: args.serve_image,
        },
        requeue: Duration::from_secs(args.requeue_secs.max(1)),
        report_max_age: Duration::from_secs(args.report_max_age_secs),
        scale_cooldown: Duration::from_secs(args.scale_cooldown_secs),
        namespace: args.watch_namespace,
    };
    // One shutdown signal for the controller and the node side.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await.map(|_| ());
    };
    let node = if args.device_plugin {
        let node_name = env_or(args.node_name, "NODE_NAME")
            .context("--device-plugin needs the node name (--node-name or $NODE_NAME)")?;
        Some(tokio::spawn(run_node_side(
            client.clone(),
            node_name,
            stopped(stop_rx.clone()),
        )))
    } else {
        None
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
        stopped(stop_rx),
    )
    .await?;
    if let Some(node) = node {
        node.await.context("node side task")??;
    }
    tracing::info!(%identity, "agent stopped; lease released");
    Ok(())
}

/// The node side: GPUs from NVML, clocks recovered before anything else touches them, then the
/// device plugin and control sockets until `shutdown`.
async fn run_node_side(
    client: kube::Client,
    node_name: String,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    use std::sync::{Arc, Mutex};

    use crate::control::authz::KubePodDirectory;
    use crate::control::{Authorizer, NodeConfig, run_node};
    use crate::deviceplugin::SharedGpu;
    use crate::gpu::clockguard::{ClockGuard, DEFAULT_RECORD, RECORD_ENV};
    use crate::gpu::nvml::{NvmlResetter, NvmlSystem, OpenOptions};

    let sys = NvmlSystem::global(None).context("NVML is needed for the device plugin")?;
    let record = std::env::var(RECORD_ENV).unwrap_or_else(|_| DEFAULT_RECORD.into());
    let (guard, report) = ClockGuard::start(
        std::path::Path::new(&record),
        Arc::new(NvmlResetter::new(sys)),
    )?;
    if !report.reset.is_empty() || !report.is_clean() {
        tracing::warn!(?report, "reset clocks a previous agent left locked");
    }
    // No `install_exit_hooks`: its SIGTERM handler exits at once, before the lease is released
    // and the sockets removed; `run_node` resets every clock on the graceful path instead, and a
    // SIGKILL is covered by the recovery above on the next start.
    let (opened, failed) = sys.open_all(&OpenOptions::default())?;
    for (index, e) in &failed {
        tracing::warn!(index, error = %e, "GPU not advertised: cannot open it");
    }
    let gpus: Vec<SharedGpu> = opened
        .into_iter()
        .map(|g| Arc::new(Mutex::new(g)) as SharedGpu)
        .collect();
    let authz = Authorizer::new(Arc::new(KubePodDirectory {
        client,
        node: node_name,
    }));
    run_node(
        NodeConfig::default(),
        gpus,
        guard,
        Arc::new(authz),
        None,
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
