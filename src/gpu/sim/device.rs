//! The simulated GPU on virtual time: clock state with delayed transitions, power capping, seeded
//! noise, energy bookkeeping and fault injection. The NVML-shaped interface is in `backend.rs`.

use std::collections::VecDeque;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

use super::meter::EnergyMeter;
use super::physics::WorkParts;
use super::profile::GpuProfile;
use super::span::{SpanCost, SpanRun};
use crate::gpu::{ClockChange, GpuError, GpuInfo, HealthEvent, PowerSemantics, Result};

/// Faults a test can inject, as an NVML stand-in would report them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The GPU fell off the bus: every call fails with [`GpuError::GpuLost`].
    Lost,
    /// An XID error event (79 = fallen off the bus, which also loses the GPU).
    Xid(u64),
    /// A double-bit ECC error event.
    DoubleBitEcc,
    /// Setters fail with [`GpuError::NoPermission`] (agent not running as root).
    PermissionDenied,
    /// The energy counter stops advancing.
    CounterStuck,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClockCmd {
    Lock(u32, u32),
    ResetLock,
    App(u32),
    ResetApp,
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    at_s: f64,
    cmd: ClockCmd,
}

#[derive(Debug, Clone, Default)]
pub(crate) struct FaultState {
    pub(crate) lost: bool,
    pub(crate) lost_reported: bool,
    pub(crate) no_permission: bool,
    pub(crate) stuck_counter_mj: Option<u64>,
}

/// A simulated GPU: deterministic under its seed, O(1) per span or repeated layer.
#[derive(Debug, Clone)]
pub struct SimGpu {
    pub(crate) profile: GpuProfile,
    pub(crate) info: GpuInfo,
    rng: ChaCha8Rng,
    pub(crate) now_s: f64,
    /// Locked range in force (floored to supported clocks).
    pub(crate) locked: Option<(u32, u32)>,
    /// Application clock in force, if set.
    pub(crate) app_mhz: Option<u32>,
    pending: VecDeque<Pending>,
    pub(crate) power_limit_w: f64,
    last_busy_end_s: f64,
    /// True while `now` is the end of a busy span (the clock reads as the load clock).
    pub(crate) busy_now: bool,
    pub(crate) last_run_clock_mhz: u32,
    pub(crate) last_run_capped: bool,
    pub(crate) meter: EnergyMeter,
    pub(crate) faults: FaultState,
    pub(crate) events: Vec<HealthEvent>,
    /// Log-normal parameters (ln median, σ) of call latency and settle tail (s).
    call_ln: (f64, f64),
    settle_ln: (f64, f64),
    settle_floor_s: f64,
    cap_cache: Box<[CapEntry; CAP_SLOTS]>,
}

/// One remembered power-cap search.
#[derive(Debug, Clone, Copy, Default)]
struct CapEntry {
    parts: WorkParts,
    f_req: u32,
    limit_w: f64,
    f_eff: u32,
}

const CAP_SLOTS: usize = 64;

fn cap_slot(parts: &WorkParts, f_req: u32, limit_w: f64) -> usize {
    let h = parts.comp_s.to_bits()
        ^ parts.mem_s.to_bits().rotate_left(17)
        ^ parts.fixed_s.to_bits().rotate_left(31)
        ^ limit_w.to_bits().rotate_left(43)
        ^ u64::from(f_req).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (h.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 58) as usize % CAP_SLOTS
}

/// z-score of the 99th percentile of a standard normal.
const Z99: f64 = 2.326_347_874;

fn lognormal_params(median: f64, p99: f64) -> (f64, f64) {
    (median.ln(), (p99 / median).ln() / Z99)
}

impl SimGpu {
    /// A fresh GPU (driver just loaded: energy counter at 0, nothing locked, idle).
    pub fn new(profile: GpuProfile, index: u32, seed: u64) -> Self {
        let spec = profile.spec();
        // Identity comes from its own stream so it does not shift the physics noise.
        let mut id_rng =
            ChaCha8Rng::seed_from_u64(seed ^ 0x1d_u64.wrapping_mul(u64::from(index) + 1));
        let uuid = format!(
            "GPU-{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            id_rng.random::<u32>(),
            id_rng.random::<u16>(),
            id_rng.random::<u16>() & 0x0fff | 0x4000,
            id_rng.random::<u16>() & 0x3fff | 0x8000,
            id_rng.random::<u64>() & 0xffff_ffff_ffff
        );
        let info = GpuInfo {
            index,
            uuid,
            name: spec.marketing_name.clone(),
            pci_bus_id: format!("00000000:{:02X}:00.0", 0x18 + index),
            numa_node: Some(0),
            memory_bytes: spec.memory_bytes,
            architecture: spec.architecture,
        };
        let averaged = matches!(spec.power.reading, PowerSemantics::Averaged1s).then_some(1.0);
        let meter = EnergyMeter::new(
            spec.energy_counter.period_ms * 1e-3,
            averaged,
            profile.idle_floor_w(),
            spec.thermal.tau_s,
        );
        let sw = &spec.switch;
        let call_ln = lognormal_params(sw.call_median_ms * 1e-3, sw.call_p99_ms * 1e-3);
        let settle_ln = lognormal_params(
            sw.settle_extra_median_ms * 1e-3,
            sw.settle_extra_p99_ms * 1e-3,
        );
        let settle_floor_s = sw.settle_floor_ms * 1e-3;
        let power_limit_w = spec.power.limit_default_w;
        let rng = ChaCha8Rng::seed_from_u64(
            seed.wrapping_add(u64::from(index).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
        );
        Self {
            info,
            rng,
            now_s: 0.0,
            locked: None,
            app_mhz: None,
            pending: VecDeque::new(),
            power_limit_w,
            last_busy_end_s: f64::NEG_INFINITY,
            busy_now: false,
            last_run_clock_mhz: profile.default_clock_under_load_mhz(),
            last_run_capped: false,
            meter,
            faults: FaultState::default(),
            events: Vec::new(),
            call_ln,
            settle_ln,
            settle_floor_s,
            cap_cache: Box::new([CapEntry::default(); CAP_SLOTS]),
            profile,
        }
    }

    pub fn profile(&self) -> &GpuProfile {
        &self.profile
    }

    pub fn now(&self) -> f64 {
        self.now_s
    }

    /// Ground-truth board energy since creation (J), at full resolution.
    pub fn energy_truth_j(&self) -> f64 {
        self.meter.truth_j()
    }

    pub fn power_limit_w(&self) -> f64 {
        self.power_limit_w
    }

    /// Clock changes issued but not yet in force.
    pub fn pending_changes(&self) -> usize {
        self.pending.len()
    }

    /// Graphics clock work would start at now, before any power cap (MHz).
    pub fn effective_clock_mhz(&self) -> u32 {
        self.work_clock_mhz()
    }

    /// Clock the last piece of work ended at, after the power cap (MHz).
    pub fn last_run_clock_mhz(&self) -> u32 {
        self.last_run_clock_mhz
    }

    fn work_clock_mhz(&self) -> u32 {
        if let Some((_, max)) = self.locked {
            max
        } else if let Some(app) = self.app_mhz {
            app
        } else {
            self.profile.default_clock_under_load_mhz()
        }
    }

    /// Clock and power of the idle GPU at time `t` (≥ the last busy end).
    fn idle_state(&self, t: f64) -> (u32, f64) {
        if let Some((min, _)) = self.locked {
            return (min, self.profile.idle_power_w(min));
        }
        let spec = self.profile.spec();
        if t < self.last_busy_end_s + spec.clocks.pstate_idle_delay_s {
            let f = self.work_clock_mhz();
            (f, self.profile.idle_power_w(f))
        } else {
            (spec.clocks.idle_mhz, self.profile.idle_floor_w())
        }
    }

    /// Graphics clock reading now.
    pub(crate) fn current_clock_mhz(&self) -> u32 {
        if self.busy_now {
            self.last_run_clock_mhz
        } else {
            self.idle_state(self.now_s).0
        }
    }

    /// Power of whatever the GPU is doing now, when nothing was accrued yet.
    pub(crate) fn idle_power_now_w(&self) -> f64 {
        self.idle_state(self.now_s).1
    }

    fn draw_switch(&mut self) -> (f64, f64) {
        let z1: f64 = self.rng.sample(StandardNormal);
        let z2: f64 = self.rng.sample(StandardNormal);
        let call = (self.call_ln.0 + self.call_ln.1 * z1).exp();
        let settle = self.settle_floor_s + (self.settle_ln.0 + self.settle_ln.1 * z2).exp();
        (call, settle)
    }

    /// Queues a clock command issued at device time `issued_s`; returns when it blocks the
    /// caller until and when it takes effect.
    pub(crate) fn schedule_cmd(
        &mut self,
        issued_s: f64,
        cmd: ClockCmd,
        applied_mhz: u32,
    ) -> ClockChange {
        let (call, settle) = self.draw_switch();
        let at_s = issued_s + call + settle;
        let i = self.pending.partition_point(|p| p.at_s <= at_s);
        self.pending.insert(i, Pending { at_s, cmd });
        ClockChange {
            applied_mhz,
            call_latency_s: call,
            effective_at_s: at_s,
        }
    }

    /// `nvmlDeviceSetGpuLockedClocks` issued at device time `t_s` by another thread: does not
    /// advance this GPU's time; the lock is in force at the returned `effective_at_s`.
    pub fn schedule_locked_clocks_at(
        &mut self,
        t_s: f64,
        min_mhz: u32,
        max_mhz: u32,
    ) -> Result<ClockChange> {
        let (min, max) = self.check_lock(min_mhz, max_mhz)?;
        Ok(self.schedule_cmd(t_s, ClockCmd::Lock(min, max), max))
    }

    /// `nvmlDeviceResetGpuLockedClocks` issued at device time `t_s` by another thread.
    pub fn schedule_reset_locked_clocks_at(&mut self, t_s: f64) -> Result<ClockChange> {
        self.check_setter("reset locked clocks")?;
        if !self.profile.has_locked_clocks() {
            return Err(self.not_supported("locked graphics clocks"));
        }
        let f = self.profile.default_clock_under_load_mhz();
        Ok(self.schedule_cmd(t_s, ClockCmd::ResetLock, f))
    }

    pub(crate) fn check_lock(&self, min_mhz: u32, max_mhz: u32) -> Result<(u32, u32)> {
        self.check_setter("set locked clocks")?;
        if !self.profile.has_locked_clocks() {
            return Err(self.not_supported("locked graphics clocks"));
        }
        if min_mhz > max_mhz {
            return Err(GpuError::InvalidArgument(format!(
                "locked clock range {min_mhz}..{max_mhz} MHz is reversed"
            )));
        }
        Ok((
            self.profile.floor_clock_mhz(min_mhz),
            self.profile.floor_clock_mhz(max_mhz),
        ))
    }

    pub(crate) fn not_supported(&self, what: &'static str) -> GpuError {
        GpuError::NotSupported {
            what,
            arch: self.profile.architecture(),
        }
    }

    pub(crate) fn lost_error(&self) -> GpuError {
        GpuError::GpuLost {
            uuid: self.info.uuid.clone(),
        }
    }

    pub(crate) fn check_alive(&self) -> Result<()> {
        if self.faults.lost {
            Err(self.lost_error())
        } else {
            Ok(())
        }
    }

    pub(crate) fn check_setter(&self, what: &'static str) -> Result<()> {
        self.check_alive()?;
        if self.faults.no_permission {
            return Err(GpuError::NoPermission {
                what,
                fix: "run the agent as root (CAP_SYS_ADMIN) or lift the API restriction",
            });
        }
        Ok(())
    }

    fn apply(&mut self, cmd: ClockCmd) {
        match cmd {
            ClockCmd::Lock(min, max) => self.locked = Some((min, max)),
            ClockCmd::ResetLock => self.locked = None,
            ClockCmd::App(f) => self.app_mhz = Some(f),
            ClockCmd::ResetApp => self.app_mhz = None,
        }
    }

    fn apply_due(&mut self) {
        while let Some(p) = self.pending.front() {
            if p.at_s > self.now_s {
                break;
            }
            let cmd = p.cmd;
            self.pending.pop_front();
            self.apply(cmd);
        }
    }

    /// Idles until device time `t_s` (no-op if already past), applying clock changes on the way.
    pub fn advance_to(&mut self, t_s: f64) {
        while self.now_s < t_s {
            let mut end = t_s;
            if let Some(p) = self.pending.front() {
                end = end.min(p.at_s.max(self.now_s));
            }
            if self.locked.is_none() {
                let drop = self.last_busy_end_s + self.profile.spec().clocks.pstate_idle_delay_s;
                if drop > self.now_s {
                    end = end.min(drop);
                }
            }
            let (_, p_w) = self.idle_state(self.now_s);
            let dur = end - self.now_s;
            if dur > 0.0 {
                self.meter.accrue(self.now_s, dur, p_w * dur);
                self.busy_now = false;
            }
            self.now_s = end;
            self.apply_due();
        }
        self.apply_due();
    }

    fn noise(&mut self, sd: f64) -> f64 {
        if sd <= 0.0 {
            return 1.0;
        }
        let z: f64 = self.rng.sample(StandardNormal);
        1.0 + sd * z.clamp(-4.0, 4.0)
    }

    /// Effective clock, capped flag, time and energy of `parts` when `f_req` is asked for.
    #[inline]
    fn capped(&mut self, parts: &WorkParts, f_req: u32) -> (u32, bool, f64, f64) {
        let curve = self.profile.physics().curve;
        let (t, e) = curve.time_energy(parts, curve.x(f64::from(f_req)));
        if t <= 0.0 || e <= self.power_limit_w * t {
            return (f_req, false, t, e);
        }
        // Capped work repeats (every batch of a power-capped T4): remember the search.
        let slot = cap_slot(parts, f_req, self.power_limit_w);
        let entry = &self.cap_cache[slot];
        let f =
            if entry.f_req == f_req && entry.limit_w == self.power_limit_w && entry.parts == *parts
            {
                entry.f_eff
            } else {
                let (f, _) = self
                    .profile
                    .power_capped_clock(parts, f_req, self.power_limit_w);
                self.cap_cache[slot] = CapEntry {
                    parts: *parts,
                    f_req,
                    limit_w: self.power_limit_w,
                    f_eff: f,
                };
                f
            };
        let (t, e) = curve.time_energy(parts, curve.x(f64::from(f)));
        (f, true, t, e)
    }

    /// Runs work with the given parts from now; `noise_scale` scales the profile's noise.
    pub(crate) fn run_parts(&mut self, parts: &WorkParts, noise_scale: f64) -> Result<SpanRun> {
        self.check_alive()?;
        self.apply_due();
        let (time_sd, power_sd) = (
            self.profile.spec().noise.time_sd,
            self.profile.spec().noise.power_sd,
        );
        let nt = self.noise(time_sd * noise_scale);
        let np = self.noise(power_sd * noise_scale);
        let start_s = self.now_s;
        let mut remaining = 1.0_f64;
        let mut energy = 0.0;
        let mut transitions = 0;
        let mut any_capped = false;
        let mut clock_start = None;
        loop {
            let (f, capped, t, e) = self.capped(parts, self.work_clock_mhz());
            clock_start.get_or_insert(f);
            any_capped |= capped;
            self.last_run_clock_mhz = f;
            self.last_run_capped = capped;
            let t = t * nt;
            let e = e * nt * np;
            let end = self.now_s + remaining * t;
            match self.pending.front() {
                Some(p) if p.at_s < end && t > 0.0 => {
                    // A clock change lands mid-span: the work done so far ran at the old clock.
                    let at = p.at_s.max(self.now_s);
                    let frac = (at - self.now_s) / t;
                    self.meter.accrue(self.now_s, at - self.now_s, e * frac);
                    energy += e * frac;
                    remaining -= frac;
                    self.now_s = at;
                    self.apply_due();
                    transitions += 1;
                }
                _ => {
                    let dur = remaining * t;
                    self.meter.accrue(self.now_s, dur, remaining * e);
                    energy += remaining * e;
                    self.now_s = end;
                    break;
                }
            }
        }
        self.apply_due();
        self.last_busy_end_s = self.now_s;
        self.busy_now = true;
        Ok(SpanRun {
            start_s,
            end_s: self.now_s,
            energy_j: energy,
            clock_start_mhz: clock_start.unwrap_or(self.last_run_clock_mhz),
            clock_end_mhz: self.last_run_clock_mhz,
            power_capped: any_capped,
            transitions,
        })
    }

    /// Runs a precomputed span from now: O(1) in the number of layers (a clock change landing
    /// inside the span splits it by the fraction of work done).
    pub fn run_span(&mut self, span: &SpanCost) -> Result<SpanRun> {
        debug_assert_eq!(
            span.profile_name(),
            self.profile.name(),
            "span built for another profile"
        );
        self.run_parts(span.parts(), 1.0)
    }

    /// Injects a fault at the current device time.
    pub fn inject_fault(&mut self, fault: Fault) {
        let at_s = self.now_s;
        match fault {
            Fault::Lost => self.lose(at_s),
            Fault::Xid(code) => {
                self.events.push(HealthEvent::Xid { code, at_s });
                if code == 79 {
                    self.lose(at_s);
                }
            }
            Fault::DoubleBitEcc => self.events.push(HealthEvent::DoubleBitEcc { at_s }),
            Fault::PermissionDenied => self.faults.no_permission = true,
            Fault::CounterStuck => self.faults.stuck_counter_mj = Some(self.meter.published_mj()),
        }
    }

    fn lose(&mut self, at_s: f64) {
        if !self.faults.lost {
            self.faults.lost = true;
            self.faults.lost_reported = false;
            self.events.push(HealthEvent::Lost { at_s });
        }
    }

    /// Clears every injected fault, as a GPU reset would (clock settings are kept).
    pub fn clear_faults(&mut self) {
        self.faults = FaultState::default();
    }
}
