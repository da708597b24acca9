//! Every fault the stand-in `libnvidia-ml` can inject, each in its own process running a small
//! agent loop (NVML init, open the GPUs, clock guard + clock thread, health polling, energy
//! reads): each fault must come out as the typed error or health event, never a crash. The test
//! prints the fault table: fault → what NVML said → what the agent did.
//!
//! Needs the stand-in built first: `cargo build -p nvml-standin`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod nvml_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use eali::gpu::clockguard::{
    ClockActuator, ClockEvent, ClockGuard, ClockTarget, LockKind, LockRecord,
};
use eali::gpu::nvml::{EnergySource, NvmlGpu, NvmlResetter, NvmlSystem, OpenOptions};
use eali::gpu::{GpuBackend, GpuError, HealthEvent};

const TEST: &str = "injected_faults_give_typed_errors_and_no_crash";
const CASE_ENV: &str = "EALI_FAULT_CASE";

/// (case, stand-in environment beyond the two V100s).
const CASES: &[(&str, &[(&str, &str)])] = &[
    ("none", &[]),
    ("lost", &[("EALI_NVML_FAULTS", "lost/0@0.4")]),
    ("xid79", &[("EALI_NVML_FAULTS", "xid79/0@0.4")]),
    ("xid48", &[("EALI_NVML_FAULTS", "xid48/0@0.4")]),
    ("dbe", &[("EALI_NVML_FAULTS", "dbe/1@0.4")]),
    ("noperm", &[("EALI_NVML_FAULTS", "noperm")]),
    ("stuck", &[("EALI_NVML_FAULTS", "stuck/0")]),
    ("nodriver", &[("EALI_NVML_FAULTS", "nodriver")]),
    (
        "nolib",
        &[("EALI_NVML_LIB", "/nonexistent/libnvidia-ml.so.1")],
    ),
    ("driver580", &[("EALI_NVML_DRIVER_VERSION", "580.82.07")]),
];

#[test]
fn injected_faults_give_typed_errors_and_no_crash() {
    if let Ok(case) = std::env::var(CASE_ENV)
        && nvml_support::is_child(TEST)
    {
        run_case(&case);
        return;
    }
    let mut rows = Vec::new();
    for (case, env) in CASES {
        let dir = nvml_support::scratch(&format!("fault-{case}"));
        let mut vars: Vec<(String, String)> = vec![
            (CASE_ENV.into(), (*case).into()),
            ("EALI_NVML_PROFILE".into(), "v100-sxm2".into()),
            ("EALI_NVML_GPUS".into(), "2".into()),
            (
                "EALI_NVML_STATE".into(),
                dir.join("driver.json").display().to_string(),
            ),
            (
                "EALI_CLOCK_RECORD".into(),
                dir.join("locks.json").display().to_string(),
            ),
        ];
        vars.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let out = nvml_support::child_command(TEST, &vars)
            .output()
            .expect("spawn child");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "case {case} failed ({}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let row = stdout
            .lines()
            .find_map(|l| l.find("ROW|").map(|i| &l[i + 4..]))
            .unwrap_or_else(|| panic!("case {case}: no row"));
        rows.push(row.to_string());
    }
    println!("\n| fault injected | what NVML / the backend reported | what the agent did |");
    println!("|---|---|---|");
    for r in rows {
        println!("| {} |", r.replace('|', " | "));
    }
}

fn row(fault: &str, observed: &str, action: &str) {
    println!("ROW|{fault}|{observed}|{action}");
}

/// The agent's pieces: NVML, the GPUs for monitoring, the clock guard and the clock thread
/// (with its own handles, as in the agent).
struct Agent {
    sys: &'static NvmlSystem,
    monitor: Vec<NvmlGpu>,
    guard: Arc<ClockGuard>,
    clocks: ClockActuator,
}

impl Agent {
    fn start() -> Result<Self, GpuError> {
        let sys = NvmlSystem::global(None)?;
        let opts = OpenOptions::default();
        let (monitor, failed) = sys.open_all(&opts)?;
        assert!(failed.is_empty(), "{failed:?}");
        let record = LockRecord::path(None);
        let (guard, report) =
            ClockGuard::start(&record, Arc::new(NvmlResetter::new(sys))).expect("clock guard");
        assert!(report.is_clean());
        let (mine, _) = sys.open_all(&opts)?;
        let gpus = mine
            .into_iter()
            .map(|g| Box::new(g) as Box<dyn GpuBackend + Send>)
            .collect();
        let clocks = ClockActuator::spawn(gpus, Arc::clone(&guard));
        Ok(Self {
            sys,
            monitor,
            guard,
            clocks,
        })
    }

    fn mid_clock(&self) -> u32 {
        let g = &self.monitor[0];
        let mem = g.supported_memory_clocks().unwrap()[0];
        let c = g.supported_graphics_clocks(mem).unwrap();
        c[c.len() / 2]
    }

    /// The first clock-thread event about a request (Applied or Failed).
    fn set(&self, gpu: usize, target: ClockTarget) -> ClockEvent {
        self.clocks.request(gpu, target);
        loop {
            match self
                .clocks
                .next_event(Duration::from_secs(3))
                .expect("clock thread answers")
            {
                e @ (ClockEvent::Applied { .. }
                | ClockEvent::Failed { .. }
                | ClockEvent::Skipped { .. }) => return e,
                _ => continue,
            }
        }
    }

    /// Health events of GPU `gpu` over `secs`, and the error that ended polling, if any.
    fn health(&mut self, gpu: usize, secs: f64) -> (Vec<HealthEvent>, Option<GpuError>) {
        let t0 = Instant::now();
        let mut events = Vec::new();
        while t0.elapsed().as_secs_f64() < secs {
            match self.monitor[gpu].poll_health_events() {
                Ok(v) => events.extend(v),
                Err(e) => return (events, Some(e)),
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        (events, None)
    }
}

fn kinds(events: &[HealthEvent]) -> String {
    let names: Vec<String> = events
        .iter()
        .map(|e| match e {
            HealthEvent::Xid { code, .. } => format!("Xid {code}"),
            HealthEvent::DoubleBitEcc { .. } => "DoubleBitEcc".into(),
            HealthEvent::SingleBitEcc { .. } => "SingleBitEcc".into(),
            HealthEvent::Lost { .. } => "Lost".into(),
        })
        .collect();
    names.join(", ")
}

fn run_case(case: &str) {
    match case {
        "nodriver" | "nolib" => {
            let fault = if case == "nodriver" {
                "driver not loaded (nvmlInit)"
            } else {
                "no libnvidia-ml at all"
            };
            match Agent::start() {
                Err(GpuError::DriverNotLoaded(msg)) => row(
                    fault,
                    &format!("GpuError::DriverNotLoaded: {msg}"),
                    "typed error at init, no panic: no NVML backend on this node",
                ),
                Err(e) => panic!("{case}: expected DriverNotLoaded, got {e:?}"),
                Ok(_) => panic!("{case}: NVML initialised"),
            }
        }
        "none" => {
            let mut a = Agent::start().unwrap();
            let f = a.mid_clock();
            let ev = a.set(
                0,
                ClockTarget::LockedRange {
                    min_mhz: f,
                    max_mhz: f,
                },
            );
            assert!(matches!(ev, ClockEvent::Applied { .. }), "{ev:?}");
            let (events, err) = a.health(0, 0.3);
            assert!(events.is_empty() && err.is_none());
            assert!(
                a.guard
                    .locked()
                    .iter()
                    .any(|e| e.kind == LockKind::Graphics)
            );
            drop(a.clocks);
            assert!(a.guard.locked().is_empty());
            row(
                "none (baseline)",
                "lock applied; no health events",
                "lock recorded, then reset and cleared at shutdown",
            );
        }
        "lost" | "xid79" => {
            let mut a = Agent::start().unwrap();
            let f = a.mid_clock();
            assert!(matches!(
                a.set(
                    0,
                    ClockTarget::LockedRange {
                        min_mhz: f,
                        max_mhz: f
                    }
                ),
                ClockEvent::Applied { .. }
            ));
            let (events, err) = a.health(0, 1.5);
            let expect_xid = case == "xid79";
            assert_eq!(
                events
                    .iter()
                    .any(|e| matches!(e, HealthEvent::Xid { code: 79, .. })),
                expect_xid,
                "{events:?}"
            );
            assert!(
                matches!(events.last(), Some(HealthEvent::Lost { .. })),
                "{events:?}"
            );
            assert!(matches!(err, Some(GpuError::GpuLost { .. })), "{err:?}");
            let reset = a.set(0, ClockTarget::Default);
            assert!(
                matches!(
                    reset,
                    ClockEvent::Failed {
                        error: GpuError::GpuLost { .. },
                        ..
                    }
                ),
                "{reset:?}"
            );
            // The other GPU is untouched.
            assert!(a.monitor[1].clocks().is_ok());
            let report = a.guard.reset_all();
            assert_eq!(report.failed.len(), 1, "{report:?}");
            let fault = if expect_xid {
                "XID 79 on GPU 0 (fallen off the bus)"
            } else {
                "GPU 0 lost (no XID)"
            };
            row(
                fault,
                &format!(
                    "health events [{}], then GpuError::GpuLost from every call",
                    kinds(&events)
                ),
                "Lost event handed to the health consumer; the reset fails (GpuLost), so the lock stays on record for the next start; GPU 1 unaffected",
            );
        }
        "xid48" | "dbe" => {
            let gpu = if case == "dbe" { 1 } else { 0 };
            let mut a = Agent::start().unwrap();
            let (events, err) = a.health(gpu, 1.0);
            assert!(err.is_none(), "{err:?}");
            let want = if case == "dbe" {
                matches!(events.as_slice(), [HealthEvent::DoubleBitEcc { .. }])
            } else {
                matches!(events.as_slice(), [HealthEvent::Xid { code: 48, .. }])
            };
            assert!(want, "{events:?}");
            assert!(a.monitor[gpu].clocks().is_ok() && a.monitor[gpu].energy_mj().is_ok());
            let fault = if case == "dbe" {
                "double-bit ECC event on GPU 1"
            } else {
                "XID 48 on GPU 0 (DBE)"
            };
            row(
                fault,
                &format!("health event [{}]; the GPU still answers", kinds(&events)),
                "event handed to the health consumer (the device plugin's Unhealthy signal); no crash; clocks still controllable",
            );
        }
        "noperm" => {
            let a = Agent::start().unwrap();
            let f = a.mid_clock();
            let ev = a.set(
                0,
                ClockTarget::LockedRange {
                    min_mhz: f,
                    max_mhz: f,
                },
            );
            let ClockEvent::Failed {
                error: GpuError::NoPermission { what, fix },
                ..
            } = ev
            else {
                panic!("expected NoPermission, got {ev:?}")
            };
            assert!(fix.contains("root"));
            assert!(
                a.guard.locked().is_empty(),
                "a refused lock left a record entry"
            );
            assert_eq!(a.monitor[0].clocks().unwrap().locked, None);
            assert!(a.monitor[0].power().is_ok() && a.monitor[0].energy_mj().is_ok());
            row(
                "permission denied on setters",
                &format!("GpuError::NoPermission {{ what: \"{what}\", fix: \"{fix}\" }}"),
                "request failed and reported; write-ahead entry withdrawn; readings keep working (monitor-only)",
            );
        }
        "stuck" => {
            let a = Agent::start().unwrap();
            let EnergySource::IntegratedPower { reason } = a.monitor[0].energy_source().clone()
            else {
                panic!("stuck counter accepted: {:?}", a.monitor[0].energy_source())
            };
            assert_eq!(a.monitor[1].energy_source(), &EnergySource::Counter);
            let e0 = a.monitor[0].energy_mj().unwrap();
            for _ in 0..20 {
                std::thread::sleep(Duration::from_millis(10));
                a.monitor[0].power().unwrap();
            }
            let e1 = a.monitor[0].energy_mj().unwrap();
            assert!(e1 > e0, "integrated energy did not advance");
            row(
                "energy counter stuck on GPU 0",
                &format!("counter rejected at open: {reason}"),
                &format!(
                    "GPU 0 energy integrated from power ({} mJ over 0.2 s); GPU 1 keeps the counter",
                    e1 - e0
                ),
            );
        }
        "driver580" => {
            let a = Agent::start().unwrap();
            assert_eq!(a.sys.driver_version(), "580.82.07");
            let scheme = a.sys.nvml().field_id_scheme();
            assert!(a.monitor[0].power().is_ok());
            row(
                "driver version 580.82.07",
                &format!("nvml-wrapper picks field-id scheme {scheme:?}"),
                "power read through the instant-power field as before",
            );
        }
        other => panic!("unknown case {other}"),
    }
}
