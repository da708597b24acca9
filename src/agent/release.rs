//! Clock reset when a pod releases its GPU. The agent polls the kubelet's pod-resources API
//! (one `List` per period): a GPU with a clock setting on the guard's record and no pod holding
//! it any more, or whose holder left, is reset through the GPU backend and its record entries
//! cleared. Locks are only made for a holder (the control socket checks), so "recorded and
//! unheld" means the holder is gone; the check also catches a set-call that slipped in through
//! the authorizer's short cache just after the release.
//!
//! When pod-resources cannot be read (kubelet restarting) nothing is reset: the GPU may still be
//! held. The released pods are returned, so their energy series can be dropped.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError};

use super::metrics::{AgentMetrics, reset_reason};
use crate::control::service::reset_recorded;
use crate::control::{Authorizer, ControlError, PodName};
use crate::deviceplugin::SharedGpu;
use crate::gpu::clockguard::ClockGuard;

/// What one poll saw and did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReleasePoll {
    /// Pods per GPU now (GPUs of this agent only).
    pub holders: HashMap<String, Vec<PodName>>,
    /// (GPU, pod) pairs that were held at the previous poll and are not now.
    pub released: Vec<(String, PodName)>,
    /// GPUs whose clocks were reset.
    pub reset: Vec<String>,
    /// GPUs whose reset failed, with why (retried at the next poll).
    pub failed: Vec<(String, String)>,
}

pub struct ReleaseWatcher {
    gpus: Vec<(String, SharedGpu)>,
    guard: Arc<ClockGuard>,
    authz: Arc<Authorizer>,
    metrics: AgentMetrics,
    last: HashMap<String, Vec<PodName>>,
}

impl ReleaseWatcher {
    pub fn new(
        gpus: &[SharedGpu],
        guard: Arc<ClockGuard>,
        authz: Arc<Authorizer>,
        metrics: AgentMetrics,
    ) -> Self {
        let gpus = gpus
            .iter()
            .map(|g| {
                let uuid = crate::deviceplugin::health::shared_uuid(g);
                (uuid, g.clone())
            })
            .collect();
        Self {
            gpus,
            guard,
            authz,
            metrics,
            last: HashMap::new(),
        }
    }

    /// One poll: reads pod-resources, resets released GPUs.
    pub async fn poll(&mut self) -> Result<ReleasePoll, ControlError> {
        let mut all = self.authz.assignments().await?;
        let mut out = ReleasePoll::default();
        let locked = self.guard.locked();
        for (uuid, gpu) in &self.gpus {
            let now = all.remove(uuid).unwrap_or_default();
            let before = self.last.get(uuid).cloned().unwrap_or_default();
            let left: Vec<PodName> = before.into_iter().filter(|p| !now.contains(p)).collect();
            self.metrics
                .gpu_holders
                .with_label_values(&[uuid])
                .set(i64::try_from(now.len()).unwrap_or(i64::MAX));
            let on_record = locked.iter().any(|e| &e.uuid == uuid);
            if on_record && (now.is_empty() || !left.is_empty()) {
                let (g, guard) = (gpu.clone(), self.guard.clone());
                let r = tokio::task::spawn_blocking(move || {
                    let mut g = g.lock().unwrap_or_else(PoisonError::into_inner);
                    reset_recorded(&mut *g, &guard)
                })
                .await;
                match r {
                    Ok(Ok(_)) => {
                        tracing::info!(gpu = %uuid, released_by = ?left, "GPU released: clocks reset");
                        self.metrics
                            .clock_resets
                            .with_label_values(&[uuid, reset_reason::RELEASE])
                            .inc();
                        out.reset.push(uuid.clone());
                    }
                    Ok(Err(status)) => {
                        tracing::error!(gpu = %uuid, error = %status.message(), "clock reset after release failed");
                        out.failed
                            .push((uuid.clone(), status.message().to_string()));
                    }
                    Err(e) => out.failed.push((uuid.clone(), e.to_string())),
                }
            }
            out.released
                .extend(left.into_iter().map(|p| (uuid.clone(), p)));
            out.holders.insert(uuid.clone(), now);
        }
        self.last = out.holders.clone();
        Ok(out)
    }
}
