//! The clock settings everything that changes a GPU's clock speaks: a scheduling policy's
//! set-calls, the simulated GPU, the clock guard's actuator, the agent's control socket.

use serde::Serialize;

/// A clock setting for one GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClockTarget {
    /// Graphics clock locked at one frequency: `nvmlDeviceSetGpuLockedClocks(f, f)`.
    Locked(u32),
    /// Graphics clocks locked to a range (Volta and newer).
    LockedRange { min_mhz: u32, max_mhz: u32 },
    /// Application clocks (the clock knob of older parts).
    Application { memory_mhz: u32, graphics_mhz: u32 },
    /// The GPU's own default behaviour: whatever was set is reset
    /// (`nvmlDeviceResetGpuLockedClocks`).
    Default,
}

impl ClockTarget {
    /// The graphics clock range the setting asks for (`None`: the GPU's own default).
    pub fn graphics_range(self) -> Option<(u32, u32)> {
        match self {
            ClockTarget::Locked(f) => Some((f, f)),
            ClockTarget::LockedRange { min_mhz, max_mhz } => Some((min_mhz, max_mhz)),
            ClockTarget::Application { graphics_mhz, .. } => Some((graphics_mhz, graphics_mhz)),
            ClockTarget::Default => None,
        }
    }

    /// The clock the setting is reported as (the top of a locked range), 0 for the default.
    pub fn mhz(self) -> u32 {
        self.graphics_range().map_or(0, |(_, hi)| hi)
    }
}

/// A set-call the clock thread issues `offset_s` after the batch is dispatched (ahead of the unit
/// boundary where the clock should be in force). The batch path never waits for it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SetCall {
    pub offset_s: f64,
    pub target: ClockTarget,
}

/// When a clock thread makes its set-calls: one at a time, each when both its planned time and
/// the end of the previous call have come (a set-call blocks its caller for the call latency),
/// and not at all when it asks for the target already requested. The simulated GPU's clock
/// thread in the server and the discrete-event simulator's both time their calls with it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SerialSetCalls {
    free_at_s: f64,
    last: Option<ClockTarget>,
    issued: u64,
    skipped: u64,
}

impl Default for SerialSetCalls {
    fn default() -> Self {
        Self::new(f64::NEG_INFINITY)
    }
}

impl SerialSetCalls {
    /// A thread free from device time `free_at_s` on.
    pub fn new(free_at_s: f64) -> Self {
        Self {
            free_at_s,
            last: None,
            issued: 0,
            skipped: 0,
        }
    }

    /// When a call for `target` planned at `at_s` is made, the device's time being `now_s`;
    /// `None` (counted as skipped) when `target` is the one already requested.
    pub fn start(&mut self, at_s: f64, now_s: f64, target: ClockTarget) -> Option<f64> {
        if self.last == Some(target) {
            self.skipped += 1;
            return None;
        }
        Some(at_s.max(self.free_at_s).max(now_s))
    }

    /// The call for `target` started at `t_s` and blocked for `call_latency_s`.
    pub fn made(&mut self, t_s: f64, target: ClockTarget, call_latency_s: f64) {
        self.free_at_s = t_s + call_latency_s;
        self.last = Some(target);
        self.issued += 1;
    }

    /// The target last requested (None before the first call).
    pub fn requested(&self) -> Option<ClockTarget> {
        self.last
    }
    pub fn issued(&self) -> u64 {
        self.issued
    }
    pub fn skipped(&self) -> u64 {
        self.skipped
    }
}

/// Set-calls waiting for their time, for a clock thread that makes them one after another on
/// its own clock (time is passed in, so the same queue serves wall and virtual time).
///
/// Calls are made in time order. When several are due at once (the thread was busy or woke
/// late), only the newest is made: the older ones could no longer be in force at their unit's
/// start, and the newest is what the plan wants now. A call is dropped only that way, never
/// because a later call was queued before its time came.
#[derive(Debug, Clone, Default)]
pub struct SetCallQueue {
    /// `(due_s, target)`, ascending by due time (ties in arrival order).
    pending: std::collections::VecDeque<(f64, ClockTarget)>,
    superseded: u64,
}

impl SetCallQueue {
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues `target` to be made at `due_s` (a non-finite time counts as now).
    pub fn push(&mut self, due_s: f64, target: ClockTarget) {
        let due_s = if due_s.is_finite() {
            due_s
        } else {
            f64::NEG_INFINITY
        };
        let at = self.pending.partition_point(|&(t, _)| t <= due_s);
        self.pending.insert(at, (due_s, target));
    }

    /// When the next call is due, if any.
    pub fn next_due(&self) -> Option<f64> {
        self.pending.front().map(|&(t, _)| t)
    }

    /// The call to make at `now_s`, with the time it was due: the newest of those due, the
    /// older due ones superseded.
    pub fn take_due(&mut self, now_s: f64) -> Option<(f64, ClockTarget)> {
        let due = self.pending.partition_point(|&(t, _)| t <= now_s);
        let newest = self.pending.drain(..due).next_back();
        self.superseded += due.saturating_sub(1) as u64;
        newest
    }

    /// Everything queued as if due now (a flush before a reset or an exit).
    pub fn take_all(&mut self) -> Option<(f64, ClockTarget)> {
        self.take_due(f64::INFINITY)
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
    /// Calls dropped because a newer one was due with them.
    pub fn superseded(&self) -> u64 {
        self.superseded
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_made_at_their_time_and_dropped_only_when_a_newer_one_is_due() {
        let mut q = SetCallQueue::new();
        // A batch of three units planned at 0, 30 and 60 ms after dispatch at t = 1 s.
        q.push(1.00, ClockTarget::Locked(1380));
        q.push(1.06, ClockTarget::Locked(900));
        q.push(1.03, ClockTarget::Locked(1100));
        assert_eq!(q.next_due(), Some(1.00));
        assert_eq!(q.take_due(0.99), None);
        assert_eq!(
            q.take_due(1.00).map(|c| c.1),
            Some(ClockTarget::Locked(1380))
        );
        // Queued before its time: kept, made in order.
        assert_eq!(q.next_due(), Some(1.03));
        assert_eq!(
            q.take_due(1.031).map(|c| c.1),
            Some(ClockTarget::Locked(1100))
        );
        assert_eq!(q.superseded(), 0);
        // The thread wakes late with two calls due: only the newest is made.
        q.push(1.07, ClockTarget::Default);
        assert_eq!(q.take_due(1.2).map(|c| c.1), Some(ClockTarget::Default));
        assert_eq!(q.superseded(), 1);
        assert!(q.is_empty());
        q.push(f64::NAN, ClockTarget::Locked(700));
        q.push(5.0, ClockTarget::Locked(800));
        assert_eq!(q.take_due(0.0).map(|c| c.1), Some(ClockTarget::Locked(700)));
        assert_eq!(q.take_all(), Some((5.0, ClockTarget::Locked(800))));
        assert_eq!(q.len(), 0);
    }
}
