//! The simulated driver behind the exported functions: one [`SimGpu`] per GPU, driven on wall
//! time (device time = seconds since the first `nvmlInit` of this process, plus the time the
//! restored settings took to settle), with an optional synthetic compute load, injected faults
//! falling due on schedule, and NVML event sets.
//!
//! Everything sits behind one mutex, like the per-process lock of the real library; blocking
//! set-clock calls sleep outside it.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Instant, SystemTime};

use eali::gpu::sim::{Fault, GpuProfile, SimGpu};
use eali::gpu::{GpuBackend, GpuError, HealthEvent, LayerWork, WorkKind};
use nvml_wrapper_sys::bindings::*;

use crate::config::{Config, FaultKind, FaultSpec};
use crate::state::{GpuSettings, PersistedState};

/// An `nvmlReturn_t`.
pub type Code = nvmlReturn_t;

/// Device time allowed for restored clock settings to take effect before wall time zero: far
/// beyond the simulated settle tail, so a restarted process sees the settings in force.
const RESTORE_SETTLE_S: f64 = 1.0;
/// The instantaneous power field averages over at least this window (the sensor's own).
const INSTANT_WINDOW_S: f64 = 0.01;

/// Event types the stand-in can deliver.
pub const SUPPORTED_EVENTS: u64 = (nvmlEventTypeSingleBitEccError
    | nvmlEventTypeDoubleBitEccError
    | nvmlEventTypeXidCriticalError
    | nvmlEventTypeClock
    | nvmlEventTypePState) as u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    pub gpu: u32,
    pub event_type: u64,
    pub data: u64,
}

/// One GPU of the driver.
pub struct Slot {
    pub index: u32,
    pub sim: SimGpu,
    /// What the driver keeps for this GPU (the clock settings as requested).
    pub settings: GpuSettings,
    pub lost: bool,
    /// Setters are refused (the agent is not root).
    pub no_permission: bool,
    /// Utilisation of the synthetic load (0 = idle).
    pub load: f64,
    offset_s: f64,
    pending_faults: Vec<FaultSpec>,
    events: Vec<Event>,
    next_busy_s: f64,
    work: LayerWork,
    /// (device time, ground-truth energy) samples for the instantaneous power field.
    samples: VecDeque<(f64, f64)>,
    pub instant_w: f64,
    /// Counter value to carry over to the next process (mJ), the last one read.
    last_energy_mj: u64,
}

impl Slot {
    fn new(index: u32, profile: GpuProfile, cfg: &Config, saved: Option<&GpuSettings>) -> Self {
        let mut sim = SimGpu::new(profile, index, cfg.seed);
        let fresh = GpuSettings {
            uuid: sim.info().uuid.clone(),
            locked: None,
            app_mhz: None,
            mem_locked: None,
            power_limit_w: sim.power_limit_w(),
            auto_boost: true,
            energy_base_mj: 0,
        };
        // A state file written for other GPUs (another seed or profile) does not apply.
        let settings = saved
            .filter(|s| s.uuid == fresh.uuid)
            .cloned()
            .unwrap_or(fresh);
        if let Some((lo, hi)) = settings.locked {
            let _ = sim.set_locked_clocks(lo, hi);
        }
        if let Some(f) = settings.app_mhz {
            let _ = sim.set_application_clocks(sim.profile().memory_clock_mhz(), f);
        }
        let _ = sim.set_power_limit(settings.power_limit_w);
        sim.advance_to(sim.now() + RESTORE_SETTLE_S);
        let offset_s = sim.now();
        // A compute-bound block of a few milliseconds, the grain of the synthetic load.
        let work = LayerWork {
            kind: WorkKind::Conv,
            flops: 2.0e10,
            bytes: 2.0e8,
            batch: 32,
        };
        let idle_w = sim.power().map_or(0.0, |p| p.watts);
        let pending_faults = cfg
            .faults
            .iter()
            .filter(|f| f.applies_to(index))
            .cloned()
            .collect();
        Self {
            index,
            last_energy_mj: settings.energy_base_mj,
            sim,
            settings,
            lost: false,
            no_permission: false,
            load: 0.0,
            offset_s,
            pending_faults,
            events: Vec::new(),
            next_busy_s: 0.0,
            work,
            samples: VecDeque::new(),
            instant_w: idle_w,
        }
    }

    /// Brings the GPU to wall time `wall_s`: due faults, the load, health events.
    fn sync(&mut self, wall_s: f64) {
        let (due, later): (Vec<_>, Vec<_>) = self
            .pending_faults
            .drain(..)
            .partition(|f| f.at_s <= wall_s);
        self.pending_faults = later;
        for f in due {
            self.inject(f.kind);
        }
        if let Ok(evs) = self.sim.poll_health_events() {
            for e in evs {
                let (event_type, data) = match e {
                    HealthEvent::Xid { code, .. } => (nvmlEventTypeXidCriticalError, code),
                    HealthEvent::DoubleBitEcc { .. } => (nvmlEventTypeDoubleBitEccError, 0),
                    HealthEvent::SingleBitEcc { .. } => (nvmlEventTypeSingleBitEccError, 0),
                    // NVML has no "lost" event: calls start failing with GPU_IS_LOST.
                    HealthEvent::Lost { .. } => continue,
                };
                self.events.push(Event {
                    gpu: self.index,
                    event_type: u64::from(event_type),
                    data,
                });
            }
        }
        if !self.lost {
            self.run_until(self.offset_s + wall_s);
        }
    }

    /// Clears every fault in force, as a GPU reset would (faults still to come stay pending).
    fn clear_faults(&mut self) {
        self.sim.clear_faults();
        self.lost = false;
        self.no_permission = false;
    }

    fn inject(&mut self, kind: FaultKind) {
        match kind {
            FaultKind::Lost => {
                self.sim.inject_fault(Fault::Lost);
                self.lost = true;
            }
            FaultKind::Xid(code) => {
                self.sim.inject_fault(Fault::Xid(code));
                self.lost |= code == 79;
            }
            FaultKind::DoubleBitEcc => self.sim.inject_fault(Fault::DoubleBitEcc),
            FaultKind::NoPermission => {
                self.sim.inject_fault(Fault::PermissionDenied);
                self.no_permission = true;
            }
            FaultKind::CounterStuck => self.sim.inject_fault(Fault::CounterStuck),
            FaultKind::DriverNotLoaded => {}
        }
    }

    /// Runs the synthetic load (busy `load` of the time, in blocks) or idles up to device time `t`.
    fn run_until(&mut self, t: f64) {
        let u = self.load.clamp(0.0, 1.0);
        while self.sim.now() < t {
            let now = self.sim.now();
            if u <= 0.0 || now < self.next_busy_s {
                let until = if u <= 0.0 { t } else { self.next_busy_s.min(t) };
                if until - now > INSTANT_WINDOW_S {
                    self.sim.advance_to(until - INSTANT_WINDOW_S);
                    self.sample();
                }
                self.sim.advance_to(until);
                self.sample();
                continue;
            }
            let one = self
                .sim
                .profile()
                .layer_time_s(&self.work, self.sim.effective_clock_mhz());
            // Enough repetitions for the busy share of the next ≤ 50 ms, in one O(1) call.
            let reps = (((t - now).min(0.05) * u) / one.max(1e-6)).floor().max(1.0) as u32;
            match self.sim.run_layer(&self.work, reps) {
                Ok(busy) => self.next_busy_s = self.sim.now() + busy * (1.0 - u) / u,
                Err(_) => break,
            }
            self.sample();
        }
    }

    fn sample(&mut self) {
        let now = self.sim.now();
        let e = self.sim.energy_truth_j();
        if self.samples.back().is_some_and(|&(t, _)| now - t < 1e-4) {
            return;
        }
        self.samples.push_back((now, e));
        while self.samples.len() > 64 {
            self.samples.pop_front();
        }
        let reference = self
            .samples
            .iter()
            .rev()
            .find(|&&(t, _)| now - t >= INSTANT_WINDOW_S)
            .or(self.samples.front());
        if let Some(&(t0, e0)) = reference
            && now > t0
        {
            self.instant_w = (e - e0) / (now - t0);
        }
    }

    /// The energy counter as NVML reports it: since driver load, across processes.
    pub fn energy_mj(&mut self) -> Result<u64, GpuError> {
        let v = self.settings.energy_base_mj + self.sim.energy_mj()?;
        self.last_energy_mj = v;
        Ok(v)
    }

    /// The settings as the state file keeps them, with the counter carried over.
    fn persisted(&mut self) -> GpuSettings {
        if !self.lost {
            let _ = self.energy_mj();
        }
        GpuSettings {
            energy_base_mj: self.last_energy_mj,
            ..self.settings.clone()
        }
    }
}

struct EventSetState {
    /// (GPU, event mask) registrations.
    regs: Vec<(u32, u64)>,
    queue: VecDeque<Event>,
}

pub struct Driver {
    pub cfg: Config,
    epoch: Instant,
    pub gpus: Vec<Slot>,
    refcount: u32,
    state: Option<PersistedState>,
    load_seen: Option<(SystemTime, u64)>,
    /// The fault file as last read (`Some(None)`: it was absent).
    fault_seen: Option<Option<(SystemTime, u64)>>,
    sets: Vec<Option<EventSetState>>,
}

static DRIVER: Mutex<Option<Driver>> = Mutex::new(None);

fn lock() -> MutexGuard<'static, Option<Driver>> {
    DRIVER.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `nvmlInit`: starts the driver on first use; later calls count references.
pub fn init() -> Code {
    let mut g = lock();
    if let Some(d) = g.as_mut() {
        d.refcount += 1;
        return nvmlReturn_enum_NVML_SUCCESS;
    }
    let cfg = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("nvml-standin: {e}");
            return nvmlReturn_enum_NVML_ERROR_UNKNOWN;
        }
    };
    if cfg
        .faults
        .iter()
        .any(|f| f.kind == FaultKind::DriverNotLoaded)
    {
        return nvmlReturn_enum_NVML_ERROR_DRIVER_NOT_LOADED;
    }
    match Driver::start(cfg) {
        Ok(d) => {
            *g = Some(d);
            nvmlReturn_enum_NVML_SUCCESS
        }
        Err(e) => {
            eprintln!("nvml-standin: {e}");
            nvmlReturn_enum_NVML_ERROR_UNKNOWN
        }
    }
}

/// `nvmlShutdown`: the driver (and the GPUs' settings) stay, as the kernel driver would.
pub fn shutdown() -> Code {
    with_driver(|d| {
        d.refcount -= 1;
        if d.refcount == 0 {
            d.save();
        }
        Ok(())
    })
    .err()
    .unwrap_or(nvmlReturn_enum_NVML_SUCCESS)
}

/// Runs `f` on the initialised driver.
pub fn with_driver<R>(f: impl FnOnce(&mut Driver) -> Result<R, Code>) -> Result<R, Code> {
    let mut g = lock();
    match g.as_mut() {
        Some(d) if d.refcount > 0 => f(d),
        _ => Err(nvmlReturn_enum_NVML_ERROR_UNINITIALIZED),
    }
}

pub fn handle_of(index: u32) -> nvmlDevice_t {
    std::ptr::without_provenance_mut(index as usize + 1)
}

fn index_of(device: nvmlDevice_t) -> Result<usize, Code> {
    (device.addr())
        .checked_sub(1)
        .ok_or(nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT)
}

pub fn set_handle_of(id: usize) -> nvmlEventSet_t {
    std::ptr::without_provenance_mut(id + 1)
}

impl Driver {
    fn start(cfg: Config) -> Result<Self, String> {
        let state = cfg
            .state_path
            .as_deref()
            .map(PersistedState::load)
            .transpose()?;
        let mut gpus = Vec::with_capacity(cfg.profiles.len());
        for (i, name) in cfg.profiles.iter().enumerate() {
            let profile = GpuProfile::load(name).map_err(|e| e.to_string())?;
            let saved = state.as_ref().and_then(|s| s.gpus.get(i));
            gpus.push(Slot::new(i as u32, profile, &cfg, saved));
        }
        let mut d = Self {
            cfg,
            epoch: Instant::now(),
            gpus,
            refcount: 1,
            state,
            load_seen: None,
            fault_seen: None,
            sets: Vec::new(),
        };
        for i in 0..d.gpus.len() {
            d.log(i as u32, "init".into());
        }
        d.save();
        Ok(d)
    }

    fn wall_s(&self) -> f64 {
        self.epoch.elapsed().as_secs_f64()
    }

    /// The GPU behind a handle, brought up to now.
    pub fn slot(&mut self, device: nvmlDevice_t) -> Result<&mut Slot, Code> {
        let i = index_of(device)?;
        if i >= self.gpus.len() {
            return Err(nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT);
        }
        self.sync_gpu(i);
        Ok(&mut self.gpus[i])
    }

    fn sync_gpu(&mut self, i: usize) {
        self.refresh_load();
        self.refresh_faults();
        let wall = self.wall_s();
        let slot = &mut self.gpus[i];
        slot.sync(wall);
        // Events go to every set registered for them at the time they happen.
        for ev in slot.events.drain(..) {
            for set in self.sets.iter_mut().flatten() {
                if set
                    .regs
                    .iter()
                    .any(|&(g, mask)| g == ev.gpu && mask & ev.event_type != 0)
                {
                    set.queue.push_back(ev);
                }
            }
        }
    }

    /// Re-reads the load file when it changed.
    fn refresh_load(&mut self) {
        let Some(path) = self.cfg.load_path.as_deref() else {
            return;
        };
        let Ok(meta) = std::fs::metadata(path) else {
            return;
        };
        let seen = (
            meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            meta.len(),
        );
        if self.load_seen == Some(seen) {
            return;
        }
        self.load_seen = Some(seen);
        let loads = read_loads(path);
        // The change takes effect now: bring every GPU to now at the old load first.
        let wall = self.wall_s();
        for (i, slot) in self.gpus.iter_mut().enumerate() {
            slot.sync(wall);
            let u = loads.get(i).or(loads.last()).copied().unwrap_or(0.0);
            slot.load = u;
            slot.next_busy_s = slot.sim.now();
        }
    }

    /// Re-reads the fault file when it changed: the faults it lists are in force from now, and
    /// every other one is cleared.
    fn refresh_faults(&mut self) {
        let Some(path) = self.cfg.fault_path.as_deref() else {
            return;
        };
        let seen = std::fs::metadata(path)
            .ok()
            .map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len()));
        if self.fault_seen == Some(seen) {
            return;
        }
        let first = self.fault_seen.is_none();
        self.fault_seen = Some(seen);
        let faults = std::fs::read_to_string(path)
            .map(|t| crate::config::parse_fault_file(&t))
            .unwrap_or_default();
        if first && faults.is_empty() {
            return;
        }
        let wall = self.wall_s();
        for slot in &mut self.gpus {
            slot.sync(wall);
            slot.clear_faults();
            let index = slot.index;
            for f in faults.iter().filter(|f| f.applies_to(index)) {
                slot.inject(f.kind);
            }
        }
    }

    pub fn log(&mut self, gpu: u32, op: String) {
        if let Some(s) = self.state.as_mut() {
            s.push_log(gpu, op);
        }
    }

    /// Writes the driver state (no-op without a state file).
    pub fn save(&mut self) {
        let (Some(path), Some(state)) = (self.cfg.state_path.clone(), self.state.as_mut()) else {
            return;
        };
        state.gpus = self.gpus.iter_mut().map(Slot::persisted).collect();
        if let Err(e) = state.save(&path) {
            eprintln!("nvml-standin: {e}");
        }
    }

    /// Logs an operation on GPU `gpu` and persists the state.
    pub fn record(&mut self, gpu: u32, op: String) {
        self.log(gpu, op);
        self.save();
    }

    pub fn create_set(&mut self) -> usize {
        self.sets.push(Some(EventSetState {
            regs: Vec::new(),
            queue: VecDeque::new(),
        }));
        self.sets.len() - 1
    }

    fn set_mut(&mut self, set: nvmlEventSet_t) -> Result<&mut EventSetState, Code> {
        let id = set
            .addr()
            .checked_sub(1)
            .ok_or(nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT)?;
        self.sets
            .get_mut(id)
            .and_then(Option::as_mut)
            .ok_or(nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT)
    }

    pub fn register(
        &mut self,
        device: nvmlDevice_t,
        mask: u64,
        set: nvmlEventSet_t,
    ) -> Result<(), Code> {
        let gpu = self.slot(device)?;
        if gpu.lost {
            return Err(nvmlReturn_enum_NVML_ERROR_GPU_IS_LOST);
        }
        let index = gpu.index;
        if mask & !SUPPORTED_EVENTS != 0 {
            return Err(nvmlReturn_enum_NVML_ERROR_NOT_SUPPORTED);
        }
        self.set_mut(set)?.regs.push((index, mask));
        Ok(())
    }

    /// One non-blocking look for an event: `Ok(Some)` an event, `Ok(None)` nothing yet.
    pub fn poll_set(&mut self, set: nvmlEventSet_t) -> Result<Option<Event>, Code> {
        let gpus: Vec<u32> = self.set_mut(set)?.regs.iter().map(|r| r.0).collect();
        for &g in &gpus {
            self.sync_gpu(g as usize);
        }
        let s = self.set_mut(set)?;
        if let Some(ev) = s.queue.pop_front() {
            return Ok(Some(ev));
        }
        if gpus.iter().any(|&g| self.gpus[g as usize].lost) {
            return Err(nvmlReturn_enum_NVML_ERROR_GPU_IS_LOST);
        }
        Ok(None)
    }

    pub fn free_set(&mut self, set: nvmlEventSet_t) -> Result<(), Code> {
        let id = set
            .addr()
            .checked_sub(1)
            .ok_or(nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT)?;
        match self.sets.get_mut(id) {
            Some(s @ Some(_)) => {
                *s = None;
                Ok(())
            }
            _ => Err(nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT),
        }
    }
}

/// Loads from the load file: one utilisation, or one per GPU; unreadable parts count as idle.
fn read_loads(path: &Path) -> Vec<f64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .split(',')
        .filter_map(|s| s.trim().parse::<f64>().ok())
        .map(|u| {
            if u.is_finite() {
                u.clamp(0.0, 1.0)
            } else {
                0.0
            }
        })
        .collect()
}

/// The NVML return code for a simulated GPU's error.
pub fn code_of(e: &GpuError) -> Code {
    match e {
        GpuError::NotSupported { .. } => nvmlReturn_enum_NVML_ERROR_NOT_SUPPORTED,
        GpuError::NoPermission { .. } => nvmlReturn_enum_NVML_ERROR_NO_PERMISSION,
        GpuError::GpuLost { .. } => nvmlReturn_enum_NVML_ERROR_GPU_IS_LOST,
        GpuError::DriverNotLoaded(_) => nvmlReturn_enum_NVML_ERROR_DRIVER_NOT_LOADED,
        GpuError::InvalidArgument(_) => nvmlReturn_enum_NVML_ERROR_INVALID_ARGUMENT,
        GpuError::Other(_) => nvmlReturn_enum_NVML_ERROR_UNKNOWN,
    }
}
