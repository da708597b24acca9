//! Clock-switch latency as the planner sees it: what a set-clock call costs in time and energy,
//! and how far ahead of a unit boundary it must be issued.

use serde::{Deserialize, Serialize};

/// Measured latency of a graphics-clock change (from issuing the call until the new clock is in
/// force), e.g. from the agent's start-up measurement or a GPU profile.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct SwitchLatency {
    /// Median time the set-clock call blocks its caller (s).
    pub call_median_s: f64,
    /// Median total latency: call + settle until the new clock is in force (s).
    pub total_median_s: f64,
    /// 95th percentile of the total latency (s).
    pub total_p95_s: f64,
}

impl SwitchLatency {
    /// V100-class figures (`docs/architecture.md`, "Switch latency"): call p50 ≈ 4.5 ms, total
    /// p50 ≈ 25 ms, p95 ≈ 32 ms.
    pub fn v100_like() -> Self {
        Self {
            call_median_s: 0.0045,
            total_median_s: 0.025,
            total_p95_s: 0.032,
        }
    }

    /// A switch that costs nothing (for tests and for hypothetical instant DVFS).
    pub fn zero() -> Self {
        Self {
            call_median_s: 0.0,
            total_median_s: 0.0,
            total_p95_s: 0.0,
        }
    }
}

/// What the planner charges for one clock change.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SwitchCost {
    /// Time reserved in the batch's execution-time budget for each change (s). Conservative: the
    /// p95 of the total latency, covering a change that lands late and runs part of a unit at the
    /// old clock.
    pub reserve_s: f64,
    /// How far ahead of a unit boundary the set-call is issued so that the clock is in force when
    /// the unit starts (s): the median call + settle latency.
    pub lead_s: f64,
}

impl SwitchCost {
    /// The planner's default reading of a measured latency: reserve the p95, lead by the median.
    pub fn from_latency(lat: &SwitchLatency) -> Self {
        Self {
            reserve_s: lat.total_p95_s.max(0.0),
            lead_s: lat.total_median_s.max(0.0),
        }
    }

    /// A less conservative reading for executors that really issue each change `lead_s` ahead
    /// (the GPU keeps running at the old clock until the new one lands): a change then lands
    /// within its latency jitter of the boundary, so only the jitter (p95 − median) is reserved.
    pub fn pre_issued(lat: &SwitchLatency) -> Self {
        Self {
            reserve_s: (lat.total_p95_s - lat.total_median_s).max(0.0),
            lead_s: lat.total_median_s.max(0.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn costs_read_a_measured_latency() {
        let lat = SwitchLatency::v100_like();
        let cost = SwitchCost::from_latency(&lat);
        assert_eq!(
            (cost.reserve_s, cost.lead_s),
            (lat.total_p95_s, lat.total_median_s)
        );
        let pre = SwitchCost::pre_issued(&lat);
        assert_eq!(pre.lead_s, cost.lead_s);
        assert!(pre.reserve_s < cost.reserve_s && pre.reserve_s >= 0.0);
    }
}
