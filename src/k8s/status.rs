//! Pure status logic of the InferenceService controller: aggregating the serving pods' reports,
//! choosing the replica count, and computing the Ready / SloMet / Degraded conditions.
//!
//! No I/O and no clock: the caller passes `now`, so every rule is tested with fixed times.

use std::time::Duration;

use jiff::Timestamp;

use super::crd::{Condition, InferenceServiceSpec, ServingReport};

/// Condition types the controller maintains.
pub const READY: &str = "Ready";
/// The observed latency at the SLO percentile is within the bound.
pub const SLO_MET: &str = "SloMet";
/// The service works but not as asked (SLO broken, saturated at max replicas, pods missing).
pub const DEGRADED: &str = "Degraded";

/// A scale-in only happens when the remaining pods would run below this share of capacity, so a
/// load that hovers near a boundary does not make the replica count flap.
pub const SCALE_IN_HEADROOM: f64 = 0.7;

/// Figures across all fresh reports.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    /// Worst pod's latency at the SLO percentile: percentiles of different pods cannot be merged
    /// without their histograms, and the worst pod is what an unlucky client sees.
    pub p99_ms: f64,
    /// Sum over pods.
    pub requests_per_second: f64,
    /// Request-weighted mean (plain mean while no pod has traffic).
    pub joules_per_request: f64,
    /// Request-weighted mean over pods that report it.
    pub energy_saved_ratio: Option<f64>,
    /// Reports that were fresh enough to count.
    pub pods: usize,
    /// Some fresh report says its pod is saturated.
    pub saturated: bool,
}

/// Reports younger than `max_age` at `now`; a report whose time does not parse is dropped.
pub fn fresh_reports(
    reports: &[ServingReport],
    now: Timestamp,
    max_age: Duration,
) -> Vec<&ServingReport> {
    reports
        .iter()
        .filter(|r| match r.time.parse::<Timestamp>() {
            Ok(t) => now.duration_since(t).unsigned_abs() <= max_age,
            Err(_) => false,
        })
        .collect()
}

/// Aggregates fresh reports; `None` when there are none.
pub fn aggregate(fresh: &[&ServingReport]) -> Option<Observed> {
    if fresh.is_empty() {
        return None;
    }
    let rps: f64 = fresh.iter().map(|r| r.requests_per_second.max(0.0)).sum();
    let weight = |r: &ServingReport| {
        if rps > 0.0 {
            r.requests_per_second.max(0.0)
        } else {
            1.0
        }
    };
    let total_w: f64 = fresh.iter().map(|r| weight(r)).sum();
    let jpr = fresh
        .iter()
        .map(|r| weight(r) * r.joules_per_request)
        .sum::<f64>()
        / total_w;
    let saved: Vec<(f64, f64)> = fresh
        .iter()
        .filter_map(|r| r.energy_saved_ratio.map(|s| (weight(r), s)))
        .collect();
    let saved_w: f64 = saved.iter().map(|(w, _)| w).sum();
    Some(Observed {
        p99_ms: fresh.iter().map(|r| r.p99_ms).fold(f64::MIN, f64::max),
        requests_per_second: rps,
        joules_per_request: jpr,
        energy_saved_ratio: (saved_w > 0.0)
            .then(|| saved.iter().map(|(w, s)| w * s).sum::<f64>() / saved_w),
        pods: fresh.len(),
        saturated: fresh.iter().any(|r| r.saturated),
    })
}

/// Why the replica count changed.
#[derive(Debug, Clone, PartialEq)]
pub enum ScaleReason {
    /// The current count was outside spec.replicas (the spec changed).
    Bounds,
    /// A pod reported saturation and max was not reached.
    Saturated,
    /// The load fits in one pod fewer with headroom.
    Underused,
}

/// Inputs of the scaling rule.
#[derive(Debug, Clone)]
pub struct ScaleInput<'a> {
    pub min: u32,
    pub max: u32,
    /// Replicas the controller asked for last time (None on first reconcile).
    pub current: Option<u32>,
    pub fresh: &'a [&'a ServingReport],
    pub last_scale: Option<Timestamp>,
    pub now: Timestamp,
    /// Least time between two load-driven changes.
    pub cooldown: Duration,
}

/// The replica count to ask for, and why it differs from the current one (None = unchanged).
pub fn desired_replicas(inp: &ScaleInput<'_>) -> (u32, Option<ScaleReason>) {
    let Some(current) = inp.current else {
        return (inp.min, None);
    };
    if current < inp.min {
        return (inp.min, Some(ScaleReason::Bounds));
    }
    if current > inp.max {
        return (inp.max, Some(ScaleReason::Bounds));
    }
    let cooling = inp
        .last_scale
        .is_some_and(|t| inp.now.duration_since(t).unsigned_abs() < inp.cooldown);
    // Only figures taken after the last change say anything about the current replica count;
    // acting on older ones would scale again and again on the same report.
    let after: Vec<&ServingReport> = inp
        .fresh
        .iter()
        .copied()
        .filter(|r| match (inp.last_scale, r.time.parse::<Timestamp>()) {
            (Some(last), Ok(t)) => t > last,
            (None, Ok(_)) => true,
            (_, Err(_)) => false,
        })
        .collect();
    if cooling || after.is_empty() {
        return (current, None);
    }
    if after.iter().any(|r| r.saturated) {
        return if current < inp.max {
            (current + 1, Some(ScaleReason::Saturated))
        } else {
            (current, None)
        };
    }
    // Scale in only when every pod reported its load: a missing figure is not evidence of idleness.
    let loads: Option<Vec<f64>> = after.iter().map(|r| r.load_ratio).collect();
    if let Some(loads) = loads
        && current > inp.min
        && after.len() as u32 >= current
    {
        let total: f64 = loads.iter().sum();
        if total <= SCALE_IN_HEADROOM * f64::from(current - 1) {
            return (current - 1, Some(ScaleReason::Underused));
        }
    }
    (current, None)
}

/// What the controller knows when it computes conditions.
#[derive(Debug, Clone)]
pub struct ConditionInput<'a> {
    pub spec: &'a InferenceServiceSpec,
    pub generation: Option<i64>,
    pub desired: u32,
    /// Available replicas of the serving Deployment.
    pub available: i32,
    pub observed: Option<&'a Observed>,
    pub now: Timestamp,
}

/// Ready, SloMet and Degraded, keeping `lastTransitionTime` of a condition whose status did not
/// change.
pub fn conditions(inp: &ConditionInput<'_>, previous: &[Condition]) -> Vec<Condition> {
    let bound = f64::from(inp.spec.slo.latency_ms);
    let ready = if inp.available > 0 {
        (
            "True",
            "Available",
            format!("{}/{} serving pods available", inp.available, inp.desired),
        )
    } else {
        (
            "False",
            "Unavailable",
            format!("0/{} serving pods available", inp.desired),
        )
    };
    let slo = match inp.observed {
        None => (
            "Unknown",
            "NoReports",
            "no serving pod has reported yet".to_string(),
        ),
        Some(o) if o.p99_ms <= bound => (
            "True",
            "WithinSlo",
            format!("p{} {:.1} ms <= {} ms", pct(inp.spec), o.p99_ms, bound),
        ),
        Some(o) => (
            "False",
            "SloViolated",
            format!("p{} {:.1} ms > {} ms", pct(inp.spec), o.p99_ms, bound),
        ),
    };
    let degraded = match inp.observed {
        Some(o) if o.saturated && inp.desired >= inp.spec.replicas.max => (
            "True",
            "SaturatedAtMax",
            format!(
                "pods report saturation at replicas.max = {}",
                inp.spec.replicas.max
            ),
        ),
        Some(o) if o.p99_ms > bound => ("True", "SloViolated", slo.2.clone()),
        _ if inp.available > 0 && (inp.available as u32) < inp.desired => (
            "True",
            "ReplicasUnavailable",
            format!("{}/{} serving pods available", inp.available, inp.desired),
        ),
        _ => ("False", "AsExpected", String::new()),
    };
    [(READY, ready), (SLO_MET, slo), (DEGRADED, degraded)]
        .into_iter()
        .map(|(ty, (status, reason, message))| {
            let prev = previous.iter().find(|c| c.type_ == ty);
            let since = match prev {
                Some(p) if p.status == status => p.last_transition_time.clone(),
                _ => inp.now.to_string(),
            };
            Condition {
                type_: ty.to_string(),
                status: status.to_string(),
                reason: reason.to_string(),
                message,
                last_transition_time: since,
                observed_generation: inp.generation,
            }
        })
        .collect()
}

fn pct(spec: &InferenceServiceSpec) -> String {
    let p = spec.slo.percentile;
    if p.fract() == 0.0 {
        format!("{p:.0}")
    } else {
        format!("{p}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(pod: &str, at: &str, p99: f64, rps: f64, jpr: f64) -> ServingReport {
        ServingReport {
            pod: pod.into(),
            time: at.into(),
            p99_ms: p99,
            requests_per_second: rps,
            joules_per_request: jpr,
            ..Default::default()
        }
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    const NOW: &str = "2026-03-01T12:00:00Z";

    #[test]
    fn stale_and_unparsable_reports_are_dropped() {
        let reports = vec![
            report("a", "2026-03-01T11:59:50Z", 10.0, 1.0, 1.0),
            report("b", "2026-03-01T11:58:00Z", 10.0, 1.0, 1.0),
            report("c", "yesterday", 10.0, 1.0, 1.0),
        ];
        let fresh = fresh_reports(&reports, ts(NOW), Duration::from_secs(60));
        assert_eq!(
            fresh.iter().map(|r| r.pod.as_str()).collect::<Vec<_>>(),
            ["a"]
        );
    }

    #[test]
    fn aggregate_takes_worst_latency_sum_rate_and_weighted_energy() {
        let mut a = report("a", NOW, 30.0, 300.0, 0.5);
        a.energy_saved_ratio = Some(0.4);
        let mut b = report("b", NOW, 45.0, 100.0, 0.9);
        b.saturated = true;
        let o = aggregate(&[&a, &b]).expect("some");
        assert_eq!(o.p99_ms, 45.0);
        assert_eq!(o.requests_per_second, 400.0);
        assert!((o.joules_per_request - (300.0 * 0.5 + 100.0 * 0.9) / 400.0).abs() < 1e-12);
        assert_eq!(o.energy_saved_ratio, Some(0.4));
        assert!(o.saturated);
        assert_eq!(aggregate(&[]), None);
        // Without traffic every pod counts the same.
        let idle = aggregate(&[
            &report("x", NOW, 1.0, 0.0, 2.0),
            &report("y", NOW, 1.0, 0.0, 4.0),
        ])
        .expect("some");
        assert_eq!(idle.joules_per_request, 3.0);
    }

    fn input<'a>(current: Option<u32>, fresh: &'a [&'a ServingReport]) -> ScaleInput<'a> {
        ScaleInput {
            min: 1,
            max: 3,
            current,
            fresh,
            last_scale: None,
            now: ts(NOW),
            cooldown: Duration::from_secs(30),
        }
    }

    #[test]
    fn scales_out_on_saturation_up_to_max_only() {
        let mut r = report("a", NOW, 40.0, 100.0, 1.0);
        r.saturated = true;
        let f = [&r];
        assert_eq!(
            desired_replicas(&input(Some(1), &f)),
            (2, Some(ScaleReason::Saturated))
        );
        assert_eq!(desired_replicas(&input(Some(3), &f)), (3, None));
        // Cooldown holds the count.
        let mut cooling = input(Some(1), &f);
        cooling.last_scale = Some(ts("2026-03-01T11:59:45Z"));
        assert_eq!(desired_replicas(&cooling), (1, None));
        cooling.last_scale = Some(ts("2026-03-01T11:59:00Z"));
        assert_eq!(
            desired_replicas(&cooling),
            (2, Some(ScaleReason::Saturated))
        );
        // A report older than the last change does not count again.
        cooling.last_scale = Some(ts("2026-03-01T12:00:00Z"));
        cooling.now = ts("2026-03-01T12:10:00Z");
        assert_eq!(desired_replicas(&cooling), (1, None));
    }

    #[test]
    fn scales_in_only_when_all_pods_report_low_load() {
        let mut a = report("a", NOW, 10.0, 10.0, 1.0);
        let mut b = report("b", NOW, 10.0, 10.0, 1.0);
        a.load_ratio = Some(0.3);
        b.load_ratio = Some(0.3);
        assert_eq!(
            desired_replicas(&input(Some(2), &[&a, &b])),
            (1, Some(ScaleReason::Underused))
        );
        // 0.8 total does not fit in one pod with headroom.
        b.load_ratio = Some(0.5);
        assert_eq!(desired_replicas(&input(Some(2), &[&a, &b])), (2, None));
        // A pod without a load figure blocks scale-in.
        b.load_ratio = None;
        assert_eq!(desired_replicas(&input(Some(2), &[&a, &b])), (2, None));
        // Only one of two pods reported.
        assert_eq!(desired_replicas(&input(Some(2), &[&a])), (2, None));
        // Never below min.
        assert_eq!(desired_replicas(&input(Some(1), &[&a])), (1, None));
    }

    #[test]
    fn first_reconcile_and_spec_bounds() {
        assert_eq!(desired_replicas(&input(None, &[])), (1, None));
        assert_eq!(
            desired_replicas(&input(Some(5), &[])),
            (3, Some(ScaleReason::Bounds))
        );
        let mut i = input(Some(1), &[]);
        i.min = 2;
        assert_eq!(desired_replicas(&i), (2, Some(ScaleReason::Bounds)));
    }

    fn spec() -> InferenceServiceSpec {
        InferenceServiceSpec::from_yaml(
            "model: {zoo: resnet50}\nslo: {latencyMs: 50}\nreplicas: {min: 1, max: 2}\n",
        )
        .expect("spec")
    }

    fn status_of<'a>(cs: &'a [Condition], ty: &str) -> (&'a str, &'a str) {
        let c = cs.iter().find(|c| c.type_ == ty).expect("condition");
        (c.status.as_str(), c.reason.as_str())
    }

    #[test]
    fn conditions_follow_availability_and_reports() {
        let spec = spec();
        let mut inp = ConditionInput {
            spec: &spec,
            generation: Some(3),
            desired: 1,
            available: 0,
            observed: None,
            now: ts(NOW),
        };
        let c = conditions(&inp, &[]);
        assert_eq!(status_of(&c, READY), ("False", "Unavailable"));
        assert_eq!(status_of(&c, SLO_MET), ("Unknown", "NoReports"));
        assert_eq!(status_of(&c, DEGRADED), ("False", "AsExpected"));
        assert!(
            c.iter()
                .all(|c| c.observed_generation == Some(3) && c.last_transition_time == NOW)
        );

        let ok = aggregate(&[&report("a", NOW, 41.0, 10.0, 1.0)]).expect("some");
        inp.available = 1;
        inp.observed = Some(&ok);
        inp.now = ts("2026-03-01T12:05:00Z");
        let c2 = conditions(&inp, &c);
        assert_eq!(status_of(&c2, READY), ("True", "Available"));
        assert_eq!(status_of(&c2, SLO_MET), ("True", "WithinSlo"));
        // Degraded kept its status, so it keeps its transition time; the others moved.
        let t = |cs: &[Condition], ty: &str| {
            cs.iter()
                .find(|c| c.type_ == ty)
                .expect("c")
                .last_transition_time
                .clone()
        };
        assert_eq!(t(&c2, DEGRADED), NOW);
        assert_eq!(t(&c2, READY), "2026-03-01T12:05:00Z");

        let mut slow_r = report("a", NOW, 61.0, 10.0, 1.0);
        let slow = aggregate(&[&slow_r]).expect("some");
        inp.observed = Some(&slow);
        let c3 = conditions(&inp, &c2);
        assert_eq!(status_of(&c3, SLO_MET), ("False", "SloViolated"));
        assert_eq!(status_of(&c3, DEGRADED), ("True", "SloViolated"));

        slow_r.p99_ms = 20.0;
        slow_r.saturated = true;
        let sat = aggregate(&[&slow_r]).expect("some");
        inp.observed = Some(&sat);
        inp.desired = 2;
        inp.available = 2;
        assert_eq!(
            status_of(&conditions(&inp, &c3), DEGRADED),
            ("True", "SaturatedAtMax")
        );
        inp.observed = Some(&ok);
        inp.available = 1;
        assert_eq!(
            status_of(&conditions(&inp, &c3), DEGRADED),
            ("True", "ReplicasUnavailable")
        );
    }
}
