//! The InferenceService controller: keeps a serving Deployment and Service per InferenceService
//! (server-side apply, owner references), scales between replicas.min and max from the pods'
//! reports, writes status (conditions, observedGeneration, endpoint, observed figures) and Events,
//! and removes what it created when the InferenceService is deleted (finalizer).
//!
//! Reconcile is idempotent: it recomputes everything from the object, the Deployment and `now`,
//! and requeues on a timer so stale reports age out even when nothing changes.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use serde_json::json;

use super::K8sError;
use super::crd::{InferenceService, InferenceServiceStatus, ServingReport};
use super::objects::{self, ServeDefaults};
use super::status::{self, ConditionInput, ScaleInput, ScaleReason};

/// Finalizer that makes deletion wait for cleanup (the test control plane and some clusters run
/// no garbage collector, and explicit deletion reports errors where GC would be silent).
pub const FINALIZER: &str = "eali.dev/cleanup";
/// Field manager for everything the controller applies.
pub const MANAGER: &str = "eali-controller";

/// Controller settings.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// Reported as the Event's reportingInstance (pod name).
    pub identity: String,
    pub serve: ServeDefaults,
    /// Reconcile every InferenceService at least this often.
    pub requeue: Duration,
    /// Reports older than this are ignored.
    pub report_max_age: Duration,
    /// Least time between two load-driven replica changes.
    pub scale_cooldown: Duration,
    /// Watch one namespace only (None = all).
    pub namespace: Option<String>,
}

struct Ctx {
    client: Client,
    recorder: Recorder,
    cfg: ControllerConfig,
}

/// Errors inside one reconcile.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    K8s(#[from] K8sError),
    #[error(transparent)]
    Kube(#[from] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(String),
}

/// Runs the controller until `shutdown` completes.
pub async fn run(
    client: Client,
    cfg: ControllerConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let (isvcs, deployments): (Api<InferenceService>, Api<Deployment>) = match &cfg.namespace {
        Some(ns) => (
            Api::namespaced(client.clone(), ns),
            Api::namespaced(client.clone(), ns),
        ),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    let reporter = Reporter {
        controller: MANAGER.into(),
        instance: Some(cfg.identity.clone()),
    };
    let ctx = Arc::new(Ctx {
        recorder: Recorder::new(client.clone(), reporter),
        client,
        cfg,
    });
    use futures_util::StreamExt;
    Controller::new(isvcs, watcher::Config::default())
        .owns(
            deployments,
            watcher::Config::default().labels(objects::SERVICE_LABEL),
        )
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "reconcile failed");
            }
        })
        .await;
}

async fn reconcile(obj: Arc<InferenceService>, ctx: Arc<Ctx>) -> Result<Action, ReconcileError> {
    let ns = obj
        .namespace()
        .ok_or_else(|| K8sError::InvalidObject("InferenceService without namespace".into()))?;
    let api: Api<InferenceService> = Api::namespaced(ctx.client.clone(), &ns);
    finalizer(&api, FINALIZER, obj, |event| async {
        match event {
            Finalizer::Apply(o) => apply(&o, &ctx).await,
            Finalizer::Cleanup(o) => cleanup(&o, &ctx).await,
        }
    })
    .await
    .map_err(|e| ReconcileError::Finalizer(e.to_string()))
}

fn error_policy(obj: Arc<InferenceService>, err: &ReconcileError, _ctx: Arc<Ctx>) -> Action {
    tracing::warn!(name = %obj.name_any(), namespace = ?obj.namespace(), error = %err, "reconcile failed; retrying in 5 s");
    Action::requeue(Duration::from_secs(5))
}

async fn publish(
    ctx: &Ctx,
    obj: &InferenceService,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let ev = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: action.into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, &obj.object_ref(&())).await {
        tracing::warn!(error = %e, reason, "could not publish event");
    }
}

async fn apply(obj: &InferenceService, ctx: &Ctx) -> Result<Action, ReconcileError> {
    let name = obj.name_any();
    let ns = obj.namespace().unwrap_or_default();
    let now = Timestamp::now();
    // Whole seconds for condition times, like metav1.Time, so they read like Kubernetes' own.
    let now_s = Timestamp::from_second(now.as_second()).unwrap_or(now);
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    let existing = deployments.get_opt(&name).await?;
    let old_status = obj.status.clone().unwrap_or_default();

    let fresh = status::fresh_reports(&old_status.reports, now, ctx.cfg.report_max_age);
    let observed = status::aggregate(&fresh);
    let current = old_status
        .replicas
        .or_else(|| {
            existing
                .as_ref()
                .and_then(|d| d.spec.as_ref())
                .and_then(|s| s.replicas)
        })
        .map(|r| r.max(0) as u32);
    let (desired, why) = status::desired_replicas(&ScaleInput {
        min: obj.spec.replicas.min,
        max: obj.spec.replicas.max,
        current,
        fresh: &fresh,
        last_scale: old_status
            .last_scale_time
            .as_deref()
            .and_then(|t| t.parse().ok()),
        now,
        cooldown: ctx.cfg.scale_cooldown,
    });

    let pp = PatchParams::apply(MANAGER).force();
    let deployment = objects::deployment(obj, desired as i32, &ctx.cfg.serve)?;
    let applied = deployments
        .patch(&name, &pp, &Patch::Apply(&deployment))
        .await?;
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), &ns);
    services
        .patch(&name, &pp, &Patch::Apply(&objects::service(obj)?))
        .await?;

    if existing.is_none() {
        publish(
            ctx,
            obj,
            EventType::Normal,
            "Created",
            "CreateServing",
            format!(
                "created Deployment {name} ({desired} replica(s), {} each) and Service {name}",
                objects::GPU_RESOURCE
            ),
        )
        .await;
    }
    if let (Some(why), Some(from)) = (&why, current) {
        let cause = match why {
            ScaleReason::Bounds => "spec.replicas changed".to_string(),
            ScaleReason::Saturated => {
                let pods: Vec<&str> = fresh
                    .iter()
                    .filter(|r| r.saturated)
                    .map(|r| r.pod.as_str())
                    .collect();
                format!("saturated: {}", pods.join(", "))
            }
            ScaleReason::Underused => "load fits in fewer pods".to_string(),
        };
        publish(
            ctx,
            obj,
            EventType::Normal,
            "Scaled",
            "Scale",
            format!("scaled from {from} to {desired} replicas ({cause})"),
        )
        .await;
    }

    let available = applied
        .status
        .as_ref()
        .and_then(|s| s.available_replicas)
        .unwrap_or(0);
    let conditions = status::conditions(
        &ConditionInput {
            spec: &obj.spec,
            generation: obj.metadata.generation,
            desired,
            available,
            observed: observed.as_ref(),
            now: now_s,
        },
        &old_status.conditions,
    );
    let was_met = old_status
        .conditions
        .iter()
        .find(|c| c.type_ == status::SLO_MET)
        .map(|c| c.status.as_str());
    let now_met = conditions.iter().find(|c| c.type_ == status::SLO_MET);
    if let Some(c) = now_met
        && c.status == "False"
        && was_met != Some("False")
    {
        publish(
            ctx,
            obj,
            EventType::Warning,
            "SloViolated",
            "Observe",
            c.message.clone(),
        )
        .await;
    }

    let (endpoint, grpc) = objects::endpoints(obj).unzip();
    let new_status = InferenceServiceStatus {
        conditions,
        observed_generation: obj.metadata.generation,
        slo: Some(obj.spec.slo_text()),
        endpoint,
        grpc_endpoint: grpc,
        replicas: Some(desired as i32),
        ready_replicas: Some(available),
        p99_ms: observed.as_ref().map(|o| round(o.p99_ms, 2)),
        requests_per_second: observed.as_ref().map(|o| round(o.requests_per_second, 2)),
        joules_per_request: observed.as_ref().map(|o| round(o.joules_per_request, 4)),
        energy_saved_ratio: observed
            .as_ref()
            .and_then(|o| o.energy_saved_ratio)
            .map(|s| round(s, 4)),
        last_scale_time: if why.is_some() {
            Some(scale_mark(now, &fresh).to_string())
        } else {
            old_status.last_scale_time.clone()
        },
        // Reports belong to the node agents' field managers; applying without them leaves them be.
        reports: Vec::new(),
        // Likewise the per-node entries (node_status.rs).
        nodes: Vec::new(),
    };
    let body = json!({
        "apiVersion": InferenceService::api_version(&()),
        "kind": InferenceService::kind(&()),
        "status": new_status,
    });
    let api: Api<InferenceService> = Api::namespaced(ctx.client.clone(), &ns);
    api.patch_status(&name, &pp, &Patch::Apply(&body)).await?;
    Ok(Action::requeue(ctx.cfg.requeue))
}

/// The time a scale decision is stamped with: only reports taken after it count for the next
/// decision. The newest report's time wins when a node clock runs ahead of ours, so that report
/// is not counted twice.
fn scale_mark(now: Timestamp, fresh: &[&ServingReport]) -> Timestamp {
    fresh
        .iter()
        .filter_map(|r| r.time.parse::<Timestamp>().ok())
        .fold(now, Timestamp::max)
}

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

async fn cleanup(obj: &InferenceService, ctx: &Ctx) -> Result<Action, ReconcileError> {
    let name = obj.name_any();
    let ns = obj.namespace().unwrap_or_default();
    // Background: the API server removes the object now and the garbage collector (where one runs)
    // removes its ReplicaSets; foreground would wait for a collector that a bare API server lacks.
    let dp = DeleteParams::background();
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), &ns);
    // Only delete what this InferenceService owns: a same-named object someone else made stays.
    let uid = obj.uid();
    let owned = |m: &kube::api::ObjectMeta| {
        m.owner_references
            .iter()
            .flatten()
            .any(|o| Some(&o.uid) == uid.as_ref())
    };
    if let Some(d) = deployments.get_opt(&name).await?
        && owned(&d.metadata)
    {
        deployments.delete(&name, &dp).await?;
    }
    if let Some(s) = services.get_opt(&name).await?
        && owned(&s.metadata)
    {
        services.delete(&name, &dp).await?;
    }
    publish(
        ctx,
        obj,
        EventType::Normal,
        "Deleted",
        "DeleteServing",
        format!("deleted Deployment and Service {name}"),
    )
    .await;
    Ok(Action::await_change())
}
