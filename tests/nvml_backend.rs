//! The NVML backend (`eali::gpu::nvml`) against the stand-in `libnvidia-ml` built from the
//! simulated GPU: every backend method goes through `nvml-wrapper` and the C ABI, as on a real
//! node. Expected values come from the GPU profiles the stand-in simulates.
//!
//! Needs the stand-in built first: `cargo build -p nvml-standin` (`--release` for release tests).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

mod nvml_support;

use std::time::{Duration, Instant};

use eali::gpu::clockguard::{ClockActuator, ClockEvent, ClockGuard, ClockTarget};
use eali::gpu::nvml::{EnergySource, NvmlGpu, NvmlResetter, NvmlSystem, OpenOptions, PowerSource};
use eali::gpu::sim::GpuProfile;
use eali::gpu::{Architecture, GpuBackend, GpuError};

const FIVE: &str = "m40,v100-sxm2,t4,a100-sxm4,h100-sxm";

fn sys() -> &'static NvmlSystem {
    NvmlSystem::global(None).expect("stand-in NVML initialises")
}

fn open(i: u32) -> NvmlGpu {
    sys().open(i, &OpenOptions::default()).expect("open GPU")
}

fn profile(name: &str) -> GpuProfile {
    GpuProfile::builtin(name).expect("built-in profile")
}

/// Polls `f` every 2 ms until it holds or `limit` passes; the time it took.
fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if f() {
            return Some(t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    None
}

standin_test!(
    inventory_of_five_generations,
    [("EALI_NVML_PROFILE", FIVE)],
    {
        let s = sys();
        assert_eq!(s.device_count().unwrap(), 5);
        assert_eq!(s.driver_version(), "550.127.05");
        let (gpus, failed) = s.open_all(&OpenOptions::default()).unwrap();
        assert!(failed.is_empty(), "{failed:?}");
        let names: Vec<&str> = FIVE.split(',').collect();
        for (g, name) in gpus.iter().zip(&names) {
            let p = profile(name);
            let i = g.info();
            println!(
                "{} {:<20} {:?} {} GiB bus {} numa {:?} uuid {} power {:?} energy {:?}",
                i.index,
                i.name,
                i.architecture,
                i.memory_bytes >> 30,
                i.pci_bus_id,
                i.numa_node,
                i.uuid,
                g.power_source(),
                g.energy_source()
            );
            assert_eq!(i.name, p.spec().marketing_name);
            assert_eq!(i.architecture, p.architecture());
            assert_eq!(i.memory_bytes, p.spec().memory_bytes);
            assert_eq!(i.numa_node, Some(0));
            assert!(
                i.uuid.starts_with("GPU-") && i.uuid.len() == 40,
                "{}",
                i.uuid
            );
            assert_eq!(
                i.pci_bus_id,
                format!("00000000:{:02X}:00.0", 0x18 + i.index)
            );
            assert_eq!(g.power_source(), PowerSource::InstantField);
            assert!(g.has_health_events());
            match g.energy_source() {
                EnergySource::Counter => assert!(p.has_energy_counter()),
                EnergySource::IntegratedPower { reason } => {
                    assert!(!p.has_energy_counter(), "counter rejected: {reason}");
                    assert!(reason.contains("before Volta"), "{reason}");
                }
            }
        }
        let mut uuids: Vec<&str> = gpus.iter().map(|g| g.info().uuid.as_str()).collect();
        uuids.dedup();
        assert_eq!(uuids.len(), 5);
        let by_uuid = s
            .open_by_uuid(&gpus[2].info().uuid, &OpenOptions::default())
            .unwrap();
        assert_eq!(by_uuid.info().index, 2);
        assert!(matches!(
            s.open_by_uuid(
                "GPU-00000000-0000-4000-8000-000000000000",
                &OpenOptions::default()
            ),
            Err(GpuError::InvalidArgument(_))
        ));
    }
);

standin_test!(
    clock_tables_come_whole_past_128_entries,
    [("EALI_NVML_PROFILE", "v100-sxm2")],
    {
        let g = open(0);
        let p = profile("v100-sxm2");
        let mem = g.supported_memory_clocks().unwrap();
        assert_eq!(mem, vec![p.memory_clock_mhz()]);
        let clocks = g.supported_graphics_clocks(mem[0]).unwrap();
        println!(
            "{} graphics clocks: {} … {} MHz",
            clocks.len(),
            clocks[0],
            clocks[clocks.len() - 1]
        );
        // nvml-wrapper alone would cut a list longer than its 128-entry first buffer.
        assert_eq!(clocks, p.supported_clocks_mhz());
        assert!(clocks.windows(2).all(|w| w[0] > w[1]));
        assert!(matches!(
            g.supported_graphics_clocks(mem[0] + 1),
            Err(GpuError::InvalidArgument(_))
        ));
        let expect_default = if p.has_locked_clocks() {
            p.max_clock_mhz()
        } else {
            p.spec().clocks.default_application_mhz
        };
        assert_eq!(g.default_graphics_clock().unwrap(), expect_default);
    }
);

standin_test!(
    locked_clocks_take_effect_after_the_settle_delay,
    [("EALI_NVML_PROFILE", "v100-sxm2")],
    {
        let mut g = open(0);
        let p = profile("v100-sxm2");
        assert!(p.has_locked_clocks());
        assert_eq!(g.clocks().unwrap().locked, None);
        let want = p.floor_clock_mhz(900);
        let change = g.set_locked_clocks(want, want).unwrap();
        assert_eq!(change.applied_mhz, want);
        assert!(change.call_latency_s > 0.0 && change.effective_at_s > g.now_s() - 1.0);
        assert_eq!(g.clocks().unwrap().locked, Some((want, want)));
        let settled = wait_for(Duration::from_secs(2), || {
            g.clocks().unwrap().graphics_mhz == want
        });
        println!(
            "lock {want} MHz: call {:.1} ms, in force after {settled:?}",
            change.call_latency_s * 1e3
        );
        assert!(settled.is_some(), "clock never reached {want} MHz");
        g.reset_locked_clocks().unwrap();
        assert_eq!(g.clocks().unwrap().locked, None);
        let idle = p.spec().clocks.idle_mhz;
        assert!(
            wait_for(Duration::from_secs(3), || g.clocks().unwrap().graphics_mhz
                == idle)
            .is_some()
        );
        assert!(matches!(
            g.set_locked_clocks(1000, 900),
            Err(GpuError::InvalidArgument(_))
        ));
    }
);

standin_test!(
    application_clocks_and_auto_boost_follow_the_generation,
    [("EALI_NVML_PROFILE", "m40")],
    {
        let mut g = open(0);
        let p = profile("m40");
        let mem = p.memory_clock_mhz();
        let clocks = g.supported_graphics_clocks(mem).unwrap();
        let f = clocks[clocks.len() / 2];
        if p.has_locked_clocks() {
            g.set_locked_clocks(f, f).unwrap();
            g.reset_locked_clocks().unwrap();
        } else {
            assert!(
                matches!(g.set_locked_clocks(f, f), Err(GpuError::NotSupported { arch, .. }) if arch == p.architecture())
            );
        }
        g.set_application_clocks(mem, f).unwrap();
        assert_eq!(g.clocks().unwrap().application_mhz, f);
        if p.architecture() < Architecture::Pascal {
            // Application clocks leave auto boost on before Pascal: the backend turns it off.
            assert!(!g.auto_boost().unwrap());
        }
        g.reset_application_clocks().unwrap();
        assert_eq!(
            g.clocks().unwrap().application_mhz,
            p.spec().clocks.default_application_mhz
        );
        if p.architecture() < Architecture::Pascal {
            assert!(g.auto_boost().unwrap());
        }
        assert!(matches!(
            g.set_application_clocks(mem, f + 1),
            Err(GpuError::InvalidArgument(_))
        ));
    }
);

standin_test!(
    memory_locked_clocks_from_ampere_on,
    [("EALI_NVML_PROFILE", "v100-sxm2,a100-sxm4")],
    {
        for i in 0..2 {
            let mut g = open(i);
            let mem = g.supported_memory_clocks().unwrap()[0];
            let r = g.set_memory_locked_clocks(mem, mem);
            if g.info().architecture >= Architecture::Ampere {
                r.unwrap();
                assert_eq!(g.memory_locked(), Some((mem, mem)));
                g.reset_memory_locked_clocks().unwrap();
                assert_eq!(g.memory_locked(), None);
            } else {
                assert!(matches!(r, Err(GpuError::NotSupported { .. })), "{r:?}");
            }
        }
    }
);

standin_test!(
    power_readings_say_what_they_are,
    [
        ("EALI_NVML_PROFILE", "v100-sxm2,a100-sxm4,h100-sxm"),
        ("EALI_NVML_POWER_FIELDS", "0")
    ],
    {
        for (i, name) in ["v100-sxm2", "a100-sxm4", "h100-sxm"].iter().enumerate() {
            let g = open(i as u32);
            let p = profile(name);
            // Without the instant field, nvmlDeviceGetPowerUsage: its meaning depends on the part.
            let PowerSource::PowerUsage(sem) = g.power_source() else {
                panic!("{:?}", g.power_source())
            };
            assert_eq!(
                sem,
                p.power_semantics(),
                "{name}: the profile and NVML's rule disagree"
            );
            let r = g.power().unwrap();
            assert_eq!(r.semantics, sem);
            let limit = g.power_limit().unwrap();
            println!(
                "{name}: {:.1} W ({:?}), limit {:?}",
                r.watts, r.semantics, limit
            );
            assert!(r.watts > 0.0 && r.watts < limit.current_w, "{r:?}");
        }
    }
);

fn load_file() -> std::path::PathBuf {
    std::env::var_os("EALI_NVML_LOAD_FILE")
        .expect("load file configured")
        .into()
}

/// Mean power (integrated from readings every 5 ms) and counter energy over `secs`.
fn measure(g: &NvmlGpu, secs: f64) -> (f64, f64) {
    let e0 = g.energy_mj().unwrap();
    let t0 = Instant::now();
    let mut last = (t0, g.power().unwrap().watts);
    let mut joules = 0.0;
    while t0.elapsed().as_secs_f64() < secs {
        std::thread::sleep(Duration::from_millis(5));
        let now = (Instant::now(), g.power().unwrap().watts);
        joules += 0.5 * (last.1 + now.1) * (now.0 - last.0).as_secs_f64();
        last = now;
    }
    let counter_j = (g.energy_mj().unwrap() - e0) as f64 / 1e3;
    (joules, counter_j)
}

standin_test!(
    energy_counter_agrees_with_integrated_power_idle_and_loaded,
    [
        ("EALI_NVML_PROFILE", "v100-sxm2"),
        (
            "EALI_NVML_LOAD_FILE",
            nvml_support::scratch("load-agree").join("load").display()
        )
    ],
    {
        std::fs::write(load_file(), "0").unwrap();
        let g = open(0);
        assert_eq!(g.energy_source(), &EnergySource::Counter);
        let (idle_j, idle_counter_j) = measure(&g, 0.5);
        assert_eq!(g.utilization().unwrap(), (0, 0));
        std::fs::write(load_file(), "1").unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let (load_j, load_counter_j) = measure(&g, 1.0);
        assert_eq!(g.utilization().unwrap().0, 100);
        println!(
            "idle: integrated {idle_j:.2} J, counter {idle_counter_j:.2} J; load: integrated {load_j:.2} J, counter {load_counter_j:.2} J"
        );
        for (a, b) in [(idle_j, idle_counter_j), (load_j, load_counter_j)] {
            assert!(
                (a / b - 1.0).abs() < 0.05,
                "integrated {a} J vs counter {b} J"
            );
        }
        assert!(
            load_j / 1.0 > 2.0 * idle_j / 0.5,
            "load power not above idle"
        );
    }
);

standin_test!(
    a_power_cap_holds_the_clock_below_the_request_and_the_clock_thread_says_so,
    [
        ("EALI_NVML_PROFILE", "v100-sxm2"),
        (
            "EALI_NVML_LOAD_FILE",
            nvml_support::scratch("load-cap").join("load").display()
        )
    ],
    {
        let dir = load_file().parent().unwrap().to_path_buf();
        std::fs::write(load_file(), "1").unwrap();
        let mut g = open(0);
        let p = profile("v100-sxm2");
        let limit = g.power_limit().unwrap();
        assert_eq!(
            (limit.min_w, limit.max_w),
            (p.spec().power.limit_min_w, p.spec().power.limit_max_w)
        );
        assert!(matches!(
            g.set_power_limit(limit.max_w + 100.0),
            Err(GpuError::InvalidArgument(_))
        ));
        g.set_power_limit(limit.min_w).unwrap();
        assert_eq!(g.power_limit().unwrap().current_w, limit.min_w);

        let (guard, report) = ClockGuard::start(
            &dir.join("locks.json"),
            std::sync::Arc::new(NvmlResetter::new(sys())),
        )
        .unwrap();
        assert!(report.reset.is_empty());
        let act = ClockActuator::spawn(vec![Box::new(g)], guard);
        let max = p.max_clock_mhz();
        act.request(
            0,
            ClockTarget::LockedRange {
                min_mhz: max,
                max_mhz: max,
            },
        );
        let mut seen = Vec::new();
        while let Some(ev) = act.next_event(Duration::from_secs(2)) {
            let done = matches!(
                ev,
                ClockEvent::BelowRequest { .. } | ClockEvent::Verified { .. }
            );
            seen.push(ev);
            if done {
                break;
            }
        }
        println!("{seen:#?}");
        assert!(matches!(seen.first(), Some(ClockEvent::Applied { .. })));
        match seen.last() {
            Some(ClockEvent::BelowRequest {
                actual_mhz,
                reasons,
                ..
            }) => {
                assert!(*actual_mhz < max && reasons.sw_power_cap);
            }
            other => panic!(
                "expected a capped clock at {} W, got {other:?}",
                limit.min_w
            ),
        }
        assert_eq!(act.stats().below_request, 1);
        let mut gpus = act.shutdown();
        gpus[0].set_power_limit(limit.default_w).unwrap();
    }
);

standin_test!(
    idle_readings_temperature_and_throttle_reasons,
    [("EALI_NVML_PROFILE", "v100-sxm2")],
    {
        let g = open(0);
        let t = g.temperature_c().unwrap();
        let p = profile("v100-sxm2");
        assert!(
            f64::from(t) >= p.spec().thermal.ambient_c - 1.0 && t < 100,
            "{t} °C"
        );
        let r = g.throttle_reasons().unwrap();
        assert!(r.gpu_idle && !r.sw_power_cap, "{r:?}");
        assert!(g.power().unwrap().watts < p.spec().power.limit_default_w / 2.0);
        let now = g.now_s();
        std::thread::sleep(Duration::from_millis(20));
        assert!(g.now_s() > now);
    }
);

standin_test!(a_missing_library_is_driver_not_loaded, [], {
    let r = NvmlSystem::global(Some(std::path::Path::new("/nonexistent/libnvidia-ml.so.1")));
    match r {
        Err(GpuError::DriverNotLoaded(msg)) => println!("{msg}"),
        other => panic!("expected DriverNotLoaded, got {other:?}"),
    }
});

standin_test!(
    switch_calibration_through_nvml_leaves_the_gpu_as_found,
    [
        ("EALI_NVML_PROFILE", "v100-sxm2"),
        (
            "EALI_CLOCK_RECORD",
            nvml_support::scratch("calib").join("locks.json").display()
        )
    ],
    {
        use eali::gpu::calibrate_switch::{CalibrationConfig, calibrate};
        use eali::gpu::clockguard::LockRecord;
        let record = LockRecord::path(None);
        let (guard, _) =
            ClockGuard::start(&record, std::sync::Arc::new(NvmlResetter::new(sys()))).unwrap();
        let mut g = open(0);
        let p = profile("v100-sxm2");
        let cfg = CalibrationConfig::spread(p.supported_clocks_mhz(), 4, 1);
        let r = calibrate(&mut g, &guard, &cfg, &mut |_, s| {
            std::thread::sleep(Duration::from_secs_f64(s))
        })
        .unwrap();
        println!(
            "{} switches: call median {:.1} ms, total median {:.1} ms, p95 {:.1} ms",
            r.samples.len(),
            r.call.median_s * 1e3,
            r.total.median_s * 1e3,
            r.total.p95_s * 1e3
        );
        assert_eq!(r.samples.len(), 4 * 3);
        assert_eq!(r.timeouts, 0);
        // No clock reads the new value before the settle floor has passed.
        assert!(r.settle.median_s * 1e3 >= p.spec().switch.settle_floor_ms);
        let s = r.switch_latency;
        assert!(
            s.call_median_s > 0.0
                && s.call_median_s < s.total_median_s
                && s.total_median_s <= s.total_p95_s
        );
        assert_eq!(g.clocks().unwrap().locked, None);
        assert!(LockRecord::load(&record).unwrap().entries.is_empty());
    }
);

/// `eali gpu check` only reads: the stand-in's driver log shows no operation but its start.
#[test]
fn gpu_check_is_read_only() {
    let dir = nvml_support::scratch("check");
    let state = dir.join("driver.json");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_eali"))
        .args(["gpu", "check", "--idle-secs", "0.3", "--json"])
        .env("EALI_NVML_LIB", nvml_support::standin_lib())
        .env("EALI_NVML_PROFILE", "v100-sxm2,a100-sxm4")
        .env("EALI_NVML_STATE", &state)
        .output()
        .expect("run eali gpu check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let json_start = stdout.find('[').expect("JSON output");
    let checks: serde_json::Value =
        serde_json::from_str(&stdout[json_start..]).expect("check JSON");
    assert_eq!(checks.as_array().unwrap().len(), 2);
    for c in checks.as_array().unwrap() {
        let agreement = c["idle"]["agreement"].as_f64().expect("counter agreement");
        assert!(
            (agreement - 1.0).abs() < 0.1,
            "counter/integrated {agreement}"
        );
        assert!(c["graphics_clocks"].as_u64().unwrap() > 0);
    }
    let st: serde_json::Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    let ops: Vec<&str> = st["log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["op"].as_str().unwrap())
        .collect();
    assert!(
        ops.iter().all(|o| *o == "init"),
        "gpu check changed something: {ops:?}"
    );
}
