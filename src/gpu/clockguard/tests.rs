//! Clock-guard tests against fake GPUs whose clock state outlives guard instances, as the
//! driver's outlives processes. The fake GPU checks the write-ahead rule itself: when it is
//! asked to lock, the on-disk record must already name the lock.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use proptest::prelude::*;

use super::*;
use crate::gpu::{
    Architecture, ClockChange, ClockState, GpuBackend, GpuInfo, HealthEvent, PowerLimit,
    PowerReading, PowerSemantics, Result, ThrottleReasons,
};

#[derive(Debug, Default)]
struct FakeState {
    locked: Option<(u32, u32)>,
    sets: u32,
    resets: u32,
    lost: bool,
    /// A lock was made without its record entry on disk.
    write_ahead_violations: u32,
}

type Node = Arc<Mutex<HashMap<String, FakeState>>>;

struct FakeGpu {
    info: GpuInfo,
    node: Node,
    record: PathBuf,
}

fn uuid(i: u32) -> String {
    format!("GPU-fake-{i}")
}

impl FakeGpu {
    fn new(i: u32, node: &Node, record: &Path) -> Self {
        node.lock().unwrap().entry(uuid(i)).or_default();
        let info = GpuInfo {
            index: i,
            uuid: uuid(i),
            name: "fake".into(),
            pci_bus_id: format!("00000000:{i:02X}:00.0"),
            numa_node: None,
            memory_bytes: 1 << 30,
            architecture: Architecture::Volta,
        };
        Self {
            info,
            node: Arc::clone(node),
            record: record.to_path_buf(),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut FakeState) -> R) -> R {
        f(self.node.lock().unwrap().get_mut(&self.info.uuid).unwrap())
    }

    fn change(mhz: u32) -> ClockChange {
        ClockChange {
            applied_mhz: mhz,
            call_latency_s: 0.0,
            effective_at_s: 0.0,
        }
    }
}

impl GpuBackend for FakeGpu {
    fn info(&self) -> &GpuInfo {
        &self.info
    }
    fn now_s(&self) -> f64 {
        0.0
    }
    fn supported_memory_clocks(&self) -> Result<Vec<u32>> {
        Ok(vec![877])
    }
    fn supported_graphics_clocks(&self, _m: u32) -> Result<Vec<u32>> {
        Ok(vec![1530, 900, 300])
    }
    fn default_graphics_clock(&self) -> Result<u32> {
        Ok(1530)
    }
    fn clocks(&self) -> Result<ClockState> {
        let locked = self.with(|s| s.locked);
        Ok(ClockState {
            graphics_mhz: locked.map_or(1530, |l| l.1),
            memory_mhz: 877,
            locked,
            application_mhz: 1290,
        })
    }
    fn set_locked_clocks(&mut self, min_mhz: u32, max_mhz: u32) -> Result<ClockChange> {
        let recorded = LockRecord::load(&self.record)
            .is_ok_and(|r| r.contains(&self.info.uuid, LockKind::Graphics));
        let uuid = self.info.uuid.clone();
        self.with(|s| {
            if s.lost {
                return Err(GpuError::GpuLost { uuid });
            }
            s.write_ahead_violations += u32::from(!recorded);
            s.locked = Some((min_mhz, max_mhz));
            s.sets += 1;
            Ok(Self::change(max_mhz))
        })
    }
    fn reset_locked_clocks(&mut self) -> Result<ClockChange> {
        self.with(|s| {
            s.locked = None;
            s.resets += 1;
        });
        Ok(Self::change(1530))
    }
    fn set_application_clocks(&mut self, _m: u32, g: u32) -> Result<ClockChange> {
        Ok(Self::change(g))
    }
    fn reset_application_clocks(&mut self) -> Result<ClockChange> {
        Ok(Self::change(1290))
    }
    fn power(&self) -> Result<PowerReading> {
        Ok(PowerReading {
            watts: 40.0,
            semantics: PowerSemantics::Instantaneous,
        })
    }
    fn energy_mj(&self) -> Result<u64> {
        Ok(0)
    }
    fn power_limit(&self) -> Result<PowerLimit> {
        Ok(PowerLimit {
            current_w: 300.0,
            default_w: 300.0,
            min_w: 150.0,
            max_w: 300.0,
        })
    }
    fn set_power_limit(&mut self, _w: f64) -> Result<()> {
        Ok(())
    }
    fn throttle_reasons(&self) -> Result<ThrottleReasons> {
        Ok(ThrottleReasons::default())
    }
    fn temperature_c(&self) -> Result<u32> {
        Ok(40)
    }
    fn poll_health_events(&mut self) -> Result<Vec<HealthEvent>> {
        Ok(Vec::new())
    }
}

struct FakeResetter {
    node: Node,
    gpus: u32,
}

impl ClockResetter for FakeResetter {
    fn reset(&self, entry: &LockEntry) -> Result<(), GpuError> {
        let mut node = self.node.lock().unwrap();
        let s = node
            .get_mut(&entry.uuid)
            .ok_or_else(|| GpuError::InvalidArgument(entry.uuid.clone()))?;
        if s.lost {
            return Err(GpuError::GpuLost {
                uuid: entry.uuid.clone(),
            });
        }
        if entry.kind == LockKind::Graphics {
            s.locked = None;
            s.resets += 1;
        }
        Ok(())
    }
    fn all_gpus(&self) -> Result<Vec<LockEntry>, GpuError> {
        Ok((0..self.gpus)
            .map(|i| LockEntry::new(&uuid(i), i, LockKind::Graphics, 0, 0))
            .collect())
    }
}

struct Fixture {
    dir: PathBuf,
    record: PathBuf,
    node: Node,
    gpus: u32,
}

impl Fixture {
    fn new(tag: &str, gpus: u32) -> Self {
        let dir =
            std::env::temp_dir().join(format!("eali-clockguard-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let node: Node = Arc::default();
        for i in 0..gpus {
            node.lock().unwrap().entry(uuid(i)).or_default();
        }
        Self {
            record: dir.join("locks.json"),
            dir,
            node,
            gpus,
        }
    }

    /// A new "process": guard start with recovery, then a clock thread over the GPUs.
    fn start(&self) -> (Arc<ClockGuard>, ResetReport, ClockActuator) {
        let resetter = Arc::new(FakeResetter {
            node: Arc::clone(&self.node),
            gpus: self.gpus,
        });
        let (guard, report) = ClockGuard::start(&self.record, resetter).unwrap();
        let gpus: Vec<Box<dyn GpuBackend + Send>> = (0..self.gpus)
            .map(|i| Box::new(FakeGpu::new(i, &self.node, &self.record)) as _)
            .collect();
        let act = ClockActuator::spawn(gpus, Arc::clone(&guard));
        (guard, report, act)
    }

    fn locked(&self, i: u32) -> Option<(u32, u32)> {
        self.node.lock().unwrap()[&uuid(i)].locked
    }

    fn on_disk(&self) -> LockRecord {
        LockRecord::load(&self.record).unwrap()
    }

    fn violations(&self) -> u32 {
        self.node
            .lock()
            .unwrap()
            .values()
            .map(|s| s.write_ahead_violations)
            .sum()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn lock(f: u32) -> ClockTarget {
    ClockTarget::LockedRange {
        min_mhz: f,
        max_mhz: f,
    }
}

#[test]
fn lock_is_recorded_before_it_is_made_and_cleared_after_reset() {
    let fx = Fixture::new("wal", 1);
    let (_guard, report, act) = fx.start();
    assert_eq!(report, ResetReport::default());
    act.request(0, lock(300));
    act.flush();
    assert_eq!(fx.locked(0), Some((300, 300)));
    assert!(fx.on_disk().contains(&uuid(0), LockKind::Graphics));
    act.request(0, ClockTarget::Default);
    act.flush();
    assert_eq!(fx.locked(0), None);
    assert!(fx.on_disk().entries.is_empty());
    assert_eq!(fx.violations(), 0);
}

#[test]
fn a_request_for_the_setting_in_force_is_skipped() {
    let fx = Fixture::new("noop", 1);
    let (_g, _r, act) = fx.start();
    act.request(0, lock(900));
    act.flush();
    act.request(0, lock(900));
    act.flush();
    act.request(0, ClockTarget::Default);
    act.flush();
    act.request(0, ClockTarget::Default);
    act.flush();
    let s = act.stats();
    assert_eq!(
        (s.requested, s.applied, s.skipped),
        (4, 2, 2),
        "{:?}",
        act.drain_events()
    );
    let node = fx.node.lock().unwrap();
    assert_eq!((node[&uuid(0)].sets, node[&uuid(0)].resets), (1, 1));
}

#[test]
fn queued_requests_collapse_to_the_newest_and_out_of_range_fails() {
    let fx = Fixture::new("coalesce", 1);
    let (_g, _r, act) = fx.start();
    for f in [300, 600, 900, 1200] {
        act.request(0, lock(f));
    }
    act.request(7, lock(300));
    act.flush();
    assert_eq!(fx.locked(0), Some((1200, 1200)));
    let s = act.stats();
    assert_eq!(s.applied + s.superseded + s.skipped + s.failed, s.requested);
    assert_eq!(s.failed, 1);
    assert!(
        act.drain_events()
            .iter()
            .any(|e| matches!(e, ClockEvent::Failed { gpu: 7, .. }))
    );
}

#[test]
fn timed_requests_are_made_at_their_time_in_order() {
    let fx = Fixture::new("timed", 1);
    let (_g, _r, act) = fx.start();
    let t0 = std::time::Instant::now();
    let ms = std::time::Duration::from_millis;
    // A plan's three set-calls, queued at dispatch for 0, 60 and 120 ms after it.
    act.request_at(0, t0, lock(1530));
    act.request_at(0, t0 + ms(120), lock(300));
    act.request_at(0, t0 + ms(60), lock(900));
    let mut seen = Vec::new();
    while seen.len() < 3 {
        match act.next_event(ms(1000)) {
            Some(ClockEvent::Applied { target, .. }) => seen.push((t0.elapsed(), target)),
            Some(_) => {}
            None => panic!("set-calls not made: {seen:?}"),
        }
    }
    let order: Vec<ClockTarget> = seen.iter().map(|s| s.1).collect();
    assert_eq!(order, [lock(1530), lock(900), lock(300)]);
    // Never before their time.
    assert!(seen[1].0 >= ms(60) && seen[2].0 >= ms(120), "{seen:?}");
    assert_eq!(act.stats().superseded, 0);
    // A flush makes a call planned far ahead at once.
    act.request_at(0, std::time::Instant::now() + ms(60_000), lock(600));
    act.flush();
    assert_eq!(fx.locked(0), Some((600, 600)));
}

#[test]
fn shutdown_resets_every_gpu_it_changed() {
    let fx = Fixture::new("shutdown", 2);
    let (_g, _r, act) = fx.start();
    act.request(0, lock(300));
    act.request(1, lock(600));
    let gpus = act.shutdown();
    assert_eq!(gpus.len(), 2);
    assert_eq!((fx.locked(0), fx.locked(1)), (None, None));
    assert!(fx.on_disk().entries.is_empty());
}

#[test]
fn a_restart_resets_what_a_killed_instance_left_locked() {
    let fx = Fixture::new("restart", 2);
    let (_g, _r, act) = fx.start();
    act.request(1, lock(300));
    act.flush();
    act.abandon(); // SIGKILL: no reset of any kind
    assert_eq!(fx.locked(1), Some((300, 300)));
    let (_g2, report, _act2) = fx.start();
    assert_eq!(
        report.reset,
        vec![(uuid(1), LockKind::Graphics, std::process::id())]
    );
    assert_eq!(fx.locked(1), None);
    assert!(fx.on_disk().entries.is_empty());
}

#[test]
fn a_corrupt_record_resets_every_gpu_and_a_lost_gpu_stays_recorded() {
    let fx = Fixture::new("corrupt", 2);
    fx.node.lock().unwrap().get_mut(&uuid(0)).unwrap().locked = Some((300, 300));
    std::fs::write(&fx.record, b"{ torn").unwrap();
    let (_g, report, act) = fx.start();
    assert!(report.record_was_corrupt);
    assert_eq!(fx.locked(0), None);
    assert_eq!(report.reset.len(), 2);
    drop(act);

    act_lost(&fx);
}

fn act_lost(fx: &Fixture) {
    let (guard, _r, act) = fx.start();
    act.request(1, lock(300));
    act.flush();
    fx.node.lock().unwrap().get_mut(&uuid(1)).unwrap().lost = true;
    let report = guard.reset_all();
    assert_eq!(report.failed.len(), 1, "{report:?}");
    act.abandon();
    // The next start tries again and keeps the entry while the GPU stays lost.
    let (_g2, report, _a2) = fx.start();
    assert_eq!(report.failed.len(), 1);
    assert!(fx.on_disk().contains(&uuid(1), LockKind::Graphics));
}

#[derive(Debug, Clone)]
enum Op {
    Lock(u32, u32),
    Reset(u32),
    Kill,
    Exit,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u32..3, prop::sample::select(vec![300u32, 900, 1530])).prop_map(|(g, f)| Op::Lock(g, f)),
        2 => (0u32..3).prop_map(Op::Reset),
        1 => Just(Op::Kill),
        1 => Just(Op::Exit),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Over any sequence of locks, resets, kills and clean exits: every locked GPU is on record
    /// at every step, no lock is made before it is recorded, and after each (re)start nothing
    /// is locked.
    #[test]
    fn no_gpu_is_ever_locked_off_the_record(ops in prop::collection::vec(op(), 1..30)) {
        let fx = Fixture::new("prop", 3);
        let (_g, _r, mut act) = fx.start();
        for op in ops {
            match op {
                Op::Lock(g, f) => act.request(g as usize, lock(f)),
                Op::Reset(g) => act.request(g as usize, ClockTarget::Default),
                Op::Kill | Op::Exit => {
                    if matches!(op, Op::Kill) { act.abandon() } else { drop(act) }
                    let (_g, report, a) = fx.start();
                    prop_assert!(report.is_clean());
                    for i in 0..3 {
                        prop_assert_eq!(fx.locked(i), None);
                    }
                    prop_assert!(fx.on_disk().entries.is_empty());
                    act = a;
                }
            }
            act.flush();
            let rec = fx.on_disk();
            for i in 0..3 {
                if fx.locked(i).is_some() {
                    prop_assert!(rec.contains(&uuid(i), LockKind::Graphics), "GPU {} locked off the record", i);
                }
            }
        }
        drop(act);
        for i in 0..3 {
            prop_assert_eq!(fx.locked(i), None);
        }
        prop_assert_eq!(fx.violations(), 0);
    }
}
