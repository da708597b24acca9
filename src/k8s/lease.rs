//! Leader election through a `coordination.k8s.io/v1` Lease, so one agent per cluster runs the
//! InferenceService controller while every node runs an agent.
//!
//! Same protocol as client-go's leaderelection: a candidate takes the Lease when it is free or its
//! holder stopped renewing; the holder renews every `renew_every`; writes are guarded by
//! resourceVersion, so of two racing candidates one gets a 409 Conflict and stays follower. Expiry
//! is judged by when *this* process last saw the record change, not by the timestamps inside it,
//! so clock skew between nodes does not matter. On a clean stop the holder releases the Lease
//! (empty holder) and a follower takes over at its next try instead of after a full lease.

use std::future::Future;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};

use super::K8sError;

/// Where the Lease lives and how this candidate behaves.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// Unique per process: pod name (+ node) in a cluster.
    pub identity: String,
    /// How long a holder that stops renewing keeps the Lease.
    pub duration: Duration,
    /// How often the holder renews and a follower retries.
    pub renew_every: Duration,
}

/// What a candidate should do with the record it just read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The Lease is absent: create it.
    Create,
    /// We hold it: renew.
    Renew,
    /// It is free or expired: take it over (counts a transition).
    TakeOver,
    /// Someone else holds it and is alive.
    Follow { holder: String },
}

/// The part of a Lease record whose change proves the holder is alive.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Observed {
    pub holder: Option<String>,
    pub renew_time: Option<String>,
}

impl Observed {
    pub fn of(lease: &Lease) -> Self {
        let spec = lease.spec.as_ref();
        Observed {
            holder: spec
                .and_then(|s| s.holder_identity.clone())
                .filter(|h| !h.is_empty()),
            renew_time: spec
                .and_then(|s| s.renew_time.as_ref())
                .map(|t| t.0.to_string()),
        }
    }
}

/// Decides from the record read now, the record seen before and how long it has been unchanged.
pub fn decide(
    record: Option<&Observed>,
    me: &str,
    unchanged_for: Duration,
    lease_duration: Duration,
) -> Decision {
    match record {
        None => Decision::Create,
        Some(r) => match &r.holder {
            Some(h) if h == me => Decision::Renew,
            None => Decision::TakeOver,
            Some(_) if unchanged_for >= lease_duration => Decision::TakeOver,
            Some(h) => Decision::Follow { holder: h.clone() },
        },
    }
}

/// One candidate's view of the Lease across tries.
pub struct Elector {
    api: Api<Lease>,
    cfg: LeaseConfig,
    last_seen: Option<(Observed, Instant)>,
}

impl Elector {
    pub fn new(client: Client, cfg: LeaseConfig) -> Self {
        Elector {
            api: Api::namespaced(client, &cfg.namespace),
            cfg,
            last_seen: None,
        }
    }

    pub fn config(&self) -> &LeaseConfig {
        &self.cfg
    }

    fn spec(&self, transitions: i32, acquire: Option<MicroTime>) -> LeaseSpec {
        let now = MicroTime(Timestamp::now());
        LeaseSpec {
            holder_identity: Some(self.cfg.identity.clone()),
            lease_duration_seconds: Some(self.cfg.duration.as_secs().max(1) as i32),
            acquire_time: Some(acquire.unwrap_or_else(|| now.clone())),
            renew_time: Some(now),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    /// One round: returns Ok(true) when this process holds the Lease afterwards.
    pub async fn try_acquire_or_renew(&mut self) -> Result<bool, K8sError> {
        let current = self.api.get_opt(&self.cfg.name).await?;
        let observed = current.as_ref().map(Observed::of);
        let unchanged_for = match (&self.last_seen, &observed) {
            (Some((seen, at)), Some(o)) if seen == o => at.elapsed(),
            _ => Duration::ZERO,
        };
        if let Some(o) = &observed
            && self.last_seen.as_ref().is_none_or(|(seen, _)| seen != o)
        {
            self.last_seen = Some((o.clone(), Instant::now()));
        }
        let decision = decide(
            observed.as_ref(),
            &self.cfg.identity,
            unchanged_for,
            self.cfg.duration,
        );
        let result = match (decision, current) {
            (Decision::Create, _) => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.cfg.name.clone()),
                        ..Default::default()
                    },
                    spec: Some(self.spec(0, None)),
                };
                self.api
                    .create(&PostParams::default(), &lease)
                    .await
                    .map(|_| ())
            }
            (Decision::Follow { .. }, _) => return Ok(false),
            (d, Some(mut lease)) => {
                let old = lease.spec.take().unwrap_or_default();
                let transitions = old.lease_transitions.unwrap_or(0);
                lease.spec = Some(if d == Decision::Renew {
                    self.spec(transitions, old.acquire_time)
                } else {
                    self.spec(transitions + 1, None)
                });
                // replace() sends the resourceVersion we read: a concurrent writer makes this a 409.
                let name = lease.name_any();
                self.api
                    .replace(&name, &PostParams::default(), &lease)
                    .await
                    .map(|_| ())
            }
            (_, None) => return Ok(false),
        };
        match result {
            Ok(()) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Gives the Lease up if this process holds it, so a follower need not wait for expiry.
    pub async fn release(&mut self) -> Result<(), K8sError> {
        let Some(mut lease) = self.api.get_opt(&self.cfg.name).await? else {
            return Ok(());
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(self.cfg.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        let name = lease.name_any();
        match self
            .api
            .replace(&name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// Runs `work` only while this process holds the Lease; stops it when the Lease is lost and
/// starts it again when regained. Returns when `shutdown` completes (after releasing the Lease)
/// or when `work` itself returns an error.
pub async fn run_while_leader<W, F>(
    client: Client,
    cfg: LeaseConfig,
    mut work: W,
    shutdown: impl Future<Output = ()>,
) -> Result<(), K8sError>
where
    W: FnMut() -> F,
    F: Future<Output = Result<(), K8sError>> + Send + 'static,
{
    let mut elector = Elector::new(client, cfg.clone());
    let mut running: Option<tokio::task::JoinHandle<Result<(), K8sError>>> = None;
    let mut last_renew = Instant::now();
    tokio::pin!(shutdown);
    loop {
        let leading = match elector.try_acquire_or_renew().await {
            Ok(true) => {
                last_renew = Instant::now();
                true
            }
            Ok(false) => false,
            // A transient API error: keep leading until the lease could have expired for others.
            Err(e) => {
                let still = running.is_some()
                    && last_renew.elapsed() < cfg.duration.saturating_sub(cfg.renew_every);
                tracing::warn!(error = %e, still_leading = still, "lease renewal failed");
                still
            }
        };
        match (leading, running.is_some()) {
            (true, false) => {
                tracing::info!(identity = %cfg.identity, lease = %cfg.name, "became leader");
                running = Some(tokio::spawn(work()));
            }
            (false, true) => {
                tracing::warn!(identity = %cfg.identity, "lost the lease; stopping the controller");
                if let Some(h) = running.take() {
                    h.abort();
                }
            }
            _ => {}
        }
        if let Some(h) = running.take_if(|h| h.is_finished()) {
            let res = h.await;
            let _ = elector.release().await;
            return match res {
                Ok(r) => r,
                Err(e) => Err(K8sError::Task(e.to_string())),
            };
        }
        tokio::select! {
            _ = &mut shutdown => {
                if let Some(h) = running.take() {
                    h.abort();
                }
                elector.release().await?;
                return Ok(());
            }
            _ = tokio::time::sleep(cfg.renew_every) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: Duration = Duration::from_secs(15);

    fn held_by(h: &str) -> Observed {
        Observed {
            holder: Some(h.into()),
            renew_time: Some("2026-01-01T00:00:00Z".into()),
        }
    }

    #[test]
    fn decisions() {
        assert_eq!(decide(None, "a", Duration::ZERO, D), Decision::Create);
        assert_eq!(
            decide(Some(&held_by("a")), "a", Duration::from_secs(100), D),
            Decision::Renew
        );
        assert_eq!(
            decide(Some(&held_by("b")), "a", Duration::from_secs(14), D),
            Decision::Follow { holder: "b".into() }
        );
        assert_eq!(decide(Some(&held_by("b")), "a", D, D), Decision::TakeOver);
        assert_eq!(
            decide(Some(&Observed::default()), "a", Duration::ZERO, D),
            Decision::TakeOver
        );
    }

    #[test]
    fn empty_holder_counts_as_free() {
        let lease = Lease {
            metadata: Default::default(),
            spec: Some(LeaseSpec {
                holder_identity: Some(String::new()),
                ..Default::default()
            }),
        };
        assert_eq!(Observed::of(&lease).holder, None);
    }
}
