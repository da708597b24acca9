//! Unit tests of the simulated GPU: profiles, physics invariants, clock transitions, power cap,
//! energy counter, power-reading semantics and fault injection.

use proptest::prelude::*;

use super::*;
use crate::gpu::{GpuBackend, GpuError, HealthEvent, LayerWork, PowerSemantics, WorkKind};

fn quiet(name: &str) -> GpuProfile {
    let mut spec = GpuProfile::builtin(name).unwrap().spec().clone();
    spec.noise.time_sd = 0.0;
    spec.noise.power_sd = 0.0;
    GpuProfile::from_spec(spec).unwrap()
}

fn conv(batch: u32) -> LayerWork {
    // ResNet-50 conv4_x 3×3, 256 channels at 14×14.
    let n = f64::from(batch);
    let out = 256.0 * 196.0;
    LayerWork {
        kind: WorkKind::Conv,
        flops: 2.0 * 9.0 * 256.0 * out * n,
        bytes: (2.0 * out * n + 9.0 * 256.0 * 256.0) * 4.0,
        batch,
    }
}

fn lock_now(gpu: &mut SimGpu, f: u32) {
    let ch = gpu.set_locked_clocks(f, f).unwrap();
    gpu.advance_to(ch.effective_at_s);
}

#[test]
fn builtin_profiles_load_with_aliases() {
    assert_eq!(
        GpuProfile::names(),
        [
            "m40",
            "v100-sxm2",
            "v100-pcie",
            "t4",
            "a100-sxm4",
            "h100-sxm",
            "b200"
        ]
    );
    for n in GpuProfile::names() {
        let p = GpuProfile::builtin(n).unwrap();
        assert_eq!(p.name(), n);
        assert!(p.default_clock_under_load_mhz() <= p.max_clock_mhz());
        assert!(p.idle_floor_w() < p.spec().power.limit_min_w);
    }
    for (alias, name) in [
        ("v100", "v100-sxm2"),
        ("A100", "a100-sxm4"),
        ("h100", "h100-sxm"),
    ] {
        assert_eq!(GpuProfile::builtin(alias).unwrap().name(), name);
    }
    assert!(matches!(
        GpuProfile::builtin("k80"),
        Err(ProfileError::Unknown(_))
    ));
}

#[test]
fn clock_tables_follow_nvml_order_and_steps() {
    let v = GpuProfile::builtin("v100-sxm2").unwrap();
    let c = v.supported_clocks_mhz();
    assert_eq!(&c[..5], &[1530, 1522, 1515, 1507, 1500]);
    assert_eq!(c.len(), 187);
    assert_eq!(*c.last().unwrap(), 135);
    for f in [607, 810, 1012, 1200, 1327, 1432] {
        assert!(v.is_supported_clock(f), "Tang's sweep point {f}");
    }
    let a = GpuProfile::builtin("a100-sxm4").unwrap();
    assert!(
        a.supported_clocks_mhz()
            .windows(2)
            .all(|w| w[0] - w[1] == 15)
    );
    assert_eq!(v.floor_clock_mhz(1000), 997);
    assert_eq!(v.floor_clock_mhz(10), 135);
    assert_eq!(v.floor_clock_mhz(5000), 1530);
}

#[test]
fn profile_from_path_and_validation() {
    let path = std::env::temp_dir().join(format!("eali-profile-{}.toml", std::process::id()));
    let text = include_str!("../../../profiles/gpus/t4.toml");
    std::fs::write(&path, text).unwrap();
    let p = GpuProfile::load(path.to_str().unwrap()).unwrap();
    assert_eq!(p, GpuProfile::builtin("t4").unwrap());
    std::fs::remove_file(&path).unwrap();

    let bad = text.replace(
        "default_application_mhz = 585",
        "default_application_mhz = 586",
    );
    assert!(matches!(
        GpuProfile::from_toml_str(&bad, "bad"),
        Err(ProfileError::Invalid { .. })
    ));
    let bad = text.replace("architecture = \"turing\"", "architecture = \"maxwell\"");
    assert!(matches!(
        GpuProfile::from_toml_str(&bad, "bad"),
        Err(ProfileError::Invalid { .. })
    ));
    assert!(matches!(
        GpuProfile::from_toml_str("name = 1", "bad"),
        Err(ProfileError::Parse { .. })
    ));
}

#[test]
fn idle_power_rises_with_a_held_clock() {
    let p = GpuProfile::builtin("v100-sxm2").unwrap();
    assert!((p.idle_power_w(135) - 39.8).abs() < 1e-9);
    assert!(p.idle_power_w(1530) > p.idle_power_w(1000));
    assert!(p.idle_power_w(1000) > p.idle_floor_w());
}

#[test]
fn voltage_is_flat_below_the_knee() {
    let p = GpuProfile::builtin("v100-sxm2").unwrap();
    let ph = p.physics();
    assert_eq!(ph.voltage_ratio(300.0), ph.voltage_ratio(1000.0));
    assert!(ph.voltage_ratio(1300.0) > ph.voltage_ratio(1100.0));
    assert!((ph.voltage_ratio(1530.0) - 1.0).abs() < 1e-12);
}

#[test]
fn efficiency_rises_with_batch() {
    let p = GpuProfile::builtin("v100-sxm2").unwrap();
    let per_sample = |b: u32| p.layer_time_s(&conv(b), 1530) / f64::from(b);
    assert!(per_sample(1) > 1.5 * per_sample(32));
    assert!(per_sample(32) > per_sample(128));
}

#[test]
fn span_parts_add_up_to_the_layers() {
    let p = GpuProfile::builtin("a100-sxm4").unwrap();
    let layers = [
        conv(16),
        LayerWork {
            kind: WorkKind::Elementwise,
            flops: 1e6,
            bytes: 8e6,
            batch: 16,
        },
        LayerWork {
            kind: WorkKind::Linear,
            flops: 6.5e7,
            bytes: 1.6e7,
            batch: 16,
        },
    ];
    let span = SpanCost::from_layers(&p, &layers, &[1410, 900]);
    for (i, f) in [1410u32, 900].into_iter().enumerate() {
        let t: f64 = layers.iter().map(|w| p.layer_time_s(w, f)).sum();
        let e: f64 = layers.iter().map(|w| p.layer_energy_j(w, f)).sum();
        assert!((span.table_time_s()[i] - t).abs() < 1e-12 * t.max(1.0));
        assert!((span.table_energy_j()[i] - e).abs() < 1e-9 * e);
        assert!((span.time_s(f) - t).abs() < 1e-12);
    }
    let both = span.then(&span);
    assert!((both.energy_j(1200) - 2.0 * span.energy_j(1200)).abs() < 1e-9);
}

fn kind_strategy() -> impl Strategy<Value = WorkKind> {
    prop_oneof![
        Just(WorkKind::Conv),
        Just(WorkKind::DepthwiseConv),
        Just(WorkKind::Linear),
        Just(WorkKind::Pool),
        Just(WorkKind::Elementwise),
        Just(WorkKind::DataMovement),
    ]
}

proptest! {
    /// The power cap's search relies on power rising with the clock; time must not rise with it.
    #[test]
    fn power_rises_and_time_falls_with_clock(
        kind in kind_strategy(),
        flops in 1e3f64..1e12,
        bytes in 1e3f64..1e10,
        batch in 1u32..256,
        name in prop::sample::select(GpuProfile::names()),
    ) {
        let p = GpuProfile::builtin(name).unwrap();
        let w = LayerWork { kind, flops, bytes, batch };
        let clocks = p.supported_clocks_mhz();
        for pair in clocks.windows(2) {
            let (hi, lo) = (pair[0], pair[1]);
            prop_assert!(p.layer_power_w(&w, hi) >= p.layer_power_w(&w, lo) - 1e-9);
            prop_assert!(p.layer_time_s(&w, hi) <= p.layer_time_s(&w, lo) + 1e-15);
        }
    }
}

#[test]
fn power_cap_lowers_the_clock_with_sw_power_cap() {
    let mut gpu = SimGpu::new(quiet("t4"), 0, 1);
    lock_now(&mut gpu, 1590);
    let w = conv(128);
    let repeats = 200;
    let t = gpu.run_layer(&w, repeats).unwrap();
    let f = gpu.last_run_clock_mhz();
    assert!(f < 1590, "T4 under dense load should be capped, ran at {f}");
    assert!(gpu.throttle_reasons().unwrap().sw_power_cap);
    assert!(gpu.power().unwrap().watts <= 70.0 + 1e-9);
    assert_eq!(gpu.clocks().unwrap().graphics_mhz, f);
    let expected = gpu.profile().layer_time_s(&w, f) * f64::from(repeats);
    assert!((t - expected).abs() < 1e-9 * expected);
    // The highest clock that fits: one step up does not.
    let next = gpu.profile().supported_clocks_mhz()[gpu.profile().floor_clock_index(f) - 1];
    assert!(gpu.profile().layer_power_w(&w, next) > 70.0);
}

#[test]
fn power_cap_follows_the_limit_across_repeated_work() {
    let profile = quiet("t4");
    let span = SpanCost::from_layers(&profile, &[conv(64); 4], &[]);
    let mut gpu = SimGpu::new(profile, 0, 1);
    let at_70 = gpu.run_span(&span).unwrap();
    gpu.set_power_limit(60.0).unwrap();
    let at_60 = gpu.run_span(&span).unwrap();
    gpu.set_power_limit(70.0).unwrap();
    let again = gpu.run_span(&span).unwrap();
    assert!(at_70.power_capped && at_60.power_capped);
    assert!(at_60.clock_end_mhz < at_70.clock_end_mhz);
    assert_eq!(again.clock_end_mhz, at_70.clock_end_mhz);
    let expect = gpu.profile().power_capped_clock(span.parts(), 1590, 60.0).0;
    assert_eq!(at_60.clock_end_mhz, expect);
}

#[test]
fn run_layer_scales_with_repeats() {
    let mut gpu = SimGpu::new(quiet("v100-sxm2"), 0, 1);
    lock_now(&mut gpu, 1200);
    let w = conv(8);
    let one = gpu.run_layer(&w, 1).unwrap();
    let e0 = gpu.energy_truth_j();
    let many = gpu.run_layer(&w, 1_000_000).unwrap();
    assert!((many / one - 1e6).abs() < 1e-3);
    let e = gpu.energy_truth_j() - e0;
    assert!((e - 1e6 * gpu.profile().layer_energy_j(&w, 1200)).abs() < 1e-6 * e);
}

#[test]
fn locked_clock_waits_for_call_plus_settle() {
    let mut gpu = SimGpu::new(quiet("v100-sxm2"), 0, 3);
    lock_now(&mut gpu, 1530);
    let issued = gpu.now();
    let ch = gpu.set_locked_clocks(765, 765).unwrap();
    assert!(
        (gpu.now() - issued - ch.call_latency_s).abs() < 1e-12,
        "the call blocks its caller"
    );
    assert!(ch.effective_at_s - gpu.now() >= 0.0195, "settle floor");
    assert_eq!(gpu.effective_clock_mhz(), 1530);
    gpu.advance_to(ch.effective_at_s - 1e-6);
    assert_eq!(gpu.clocks().unwrap().graphics_mhz, 1530);
    gpu.advance_to(ch.effective_at_s);
    assert_eq!(gpu.clocks().unwrap().graphics_mhz, 765);
    assert_eq!(gpu.clocks().unwrap().locked, Some((765, 765)));
}

#[test]
fn clock_change_mid_span_splits_by_work_done() {
    let profile = quiet("v100-sxm2");
    let span = SpanCost::from_layers(&profile, &[conv(128); 20], &[]);
    let (t_hi, t_lo) = (span.time_s(1380), span.time_s(765));
    let (e_hi, e_lo) = (span.energy_j(1380), span.energy_j(765));
    let mut gpu = SimGpu::new(profile, 0, 5);
    lock_now(&mut gpu, 1380);
    let start = gpu.now();
    // Issued by another thread: it does not move this GPU's time.
    let ch = gpu
        .schedule_locked_clocks_at(start - 0.02, 765, 765)
        .unwrap();
    assert_eq!(gpu.now(), start);
    let frac = (ch.effective_at_s - start) / t_hi;
    assert!(
        frac > 0.0 && frac < 1.0,
        "the change must land inside the span"
    );
    let r = gpu.run_span(&span).unwrap();
    assert_eq!(
        (r.transitions, r.clock_start_mhz, r.clock_end_mhz),
        (1, 1380, 765)
    );
    let expect_t = frac * t_hi + (1.0 - frac) * t_lo;
    assert!((r.duration_s() - expect_t).abs() < 1e-12);
    assert!((r.energy_j - (frac * e_hi + (1.0 - frac) * e_lo)).abs() < 1e-9);
}

#[test]
fn unlocked_gpu_drops_to_the_idle_floor_after_a_delay() {
    let mut gpu = SimGpu::new(quiet("v100-sxm2"), 0, 1);
    gpu.run_layer(&conv(32), 10).unwrap();
    let delay = gpu.profile().spec().clocks.pstate_idle_delay_s;
    let held = gpu.profile().idle_power_w(1530);
    gpu.advance_to(gpu.now() + delay / 2.0);
    assert_eq!(gpu.clocks().unwrap().graphics_mhz, 1530);
    assert!((gpu.power().unwrap().watts - held).abs() < 1e-9);
    gpu.advance_to(gpu.now() + delay);
    assert_eq!(gpu.clocks().unwrap().graphics_mhz, 135);
    assert!((gpu.power().unwrap().watts - 39.8).abs() < 1e-9);
    assert!(gpu.throttle_reasons().unwrap().gpu_idle);
}

#[test]
fn energy_counter_publishes_whole_mj_every_10_ms() {
    let mut gpu = SimGpu::new(quiet("v100-sxm2"), 0, 1);
    gpu.idle(0.0099).unwrap();
    assert_eq!(gpu.energy_mj().unwrap(), 0);
    gpu.idle(0.0002).unwrap();
    // 10 ms at the 39.8 W floor: 398 mJ (397 if rounding lands just below).
    let at_tick = gpu.energy_mj().unwrap();
    assert!((397..=398).contains(&at_tick), "{at_tick}");
    gpu.idle(0.0098).unwrap();
    assert_eq!(gpu.energy_mj().unwrap(), at_tick, "no update between ticks");
    assert!(gpu.energy_truth_j() > 0.78);
}

#[test]
fn hopper_reports_a_one_second_average() {
    let mut gpu = SimGpu::new(quiet("h100-sxm"), 0, 1);
    gpu.idle(2.0).unwrap();
    let idle = gpu.power().unwrap();
    assert_eq!(idle.semantics, PowerSemantics::Averaged1s);
    let w = conv(128);
    let t1 = gpu.profile().layer_time_s(&w, 1980);
    gpu.run_layer(&w, (0.3 / t1) as u32).unwrap();
    let busy = gpu.profile().layer_power_w(&w, 1980);
    let avg = gpu.power().unwrap().watts;
    assert!(
        avg > idle.watts + 10.0 && avg < busy - 10.0,
        "{} < {avg} < {busy}",
        idle.watts
    );
    let mut v = SimGpu::new(quiet("v100-sxm2"), 0, 1);
    v.run_layer(&w, 10).unwrap();
    assert_eq!(v.power().unwrap().semantics, PowerSemantics::Instantaneous);
    let f = v.last_run_clock_mhz();
    assert!((v.power().unwrap().watts - v.profile().layer_power_w(&w, f)).abs() < 1e-6);
}

#[test]
fn maxwell_has_application_clocks_only() {
    let mut gpu = SimGpu::new(quiet("m40"), 0, 1);
    assert!(matches!(
        gpu.set_locked_clocks(900, 900),
        Err(GpuError::NotSupported { .. })
    ));
    assert!(matches!(
        gpu.energy_mj(),
        Err(GpuError::NotSupported { .. })
    ));
    assert!(matches!(
        gpu.set_application_clocks(3004, 949),
        Err(GpuError::InvalidArgument(_))
    ));
    let ch = gpu.set_application_clocks(3004, 948).unwrap();
    gpu.advance_to(ch.effective_at_s);
    gpu.run_layer(&conv(32), 5).unwrap();
    assert_eq!(gpu.last_run_clock_mhz(), 948);
    assert!(gpu.throttle_reasons().unwrap().applications_clocks_setting);
    let ch = gpu.reset_application_clocks().unwrap();
    gpu.advance_to(ch.effective_at_s);
    assert_eq!(gpu.effective_clock_mhz(), 1114);
}

#[test]
fn power_limit_range_is_enforced() {
    let mut gpu = SimGpu::new(quiet("v100-sxm2"), 0, 1);
    assert!(matches!(
        gpu.set_power_limit(100.0),
        Err(GpuError::InvalidArgument(_))
    ));
    gpu.set_power_limit(150.0).unwrap();
    assert_eq!(gpu.power_limit().unwrap().current_w, 150.0);
}

#[test]
fn faults_show_in_errors_and_events() {
    let mut gpu = SimGpu::new(quiet("a100-sxm4"), 0, 1);
    gpu.inject_fault(Fault::PermissionDenied);
    assert!(matches!(
        gpu.set_locked_clocks(900, 900),
        Err(GpuError::NoPermission { .. })
    ));
    assert!(gpu.clocks().is_ok(), "reads need no privilege");
    gpu.clear_faults();
    gpu.set_locked_clocks(900, 900).unwrap();

    gpu.run_layer(&conv(8), 100).unwrap();
    gpu.inject_fault(Fault::CounterStuck);
    let stuck = gpu.energy_mj().unwrap();
    let truth = gpu.energy_truth_j();
    gpu.idle(1.0).unwrap();
    assert_eq!(gpu.energy_mj().unwrap(), stuck);
    assert!(gpu.energy_truth_j() > truth + 10.0);

    gpu.inject_fault(Fault::DoubleBitEcc);
    gpu.inject_fault(Fault::Xid(13));
    let ev = gpu.poll_health_events().unwrap();
    assert!(matches!(
        ev[..],
        [
            HealthEvent::DoubleBitEcc { .. },
            HealthEvent::Xid { code: 13, .. }
        ]
    ));
    assert!(gpu.poll_health_events().unwrap().is_empty());
    assert!(
        gpu.run_layer(&conv(8), 1).is_ok(),
        "an XID 13 does not lose the GPU"
    );

    gpu.inject_fault(Fault::Xid(79));
    assert!(matches!(
        gpu.run_layer(&conv(8), 1),
        Err(GpuError::GpuLost { .. })
    ));
    assert!(matches!(gpu.power(), Err(GpuError::GpuLost { .. })));
    let ev = gpu.poll_health_events().unwrap();
    assert!(matches!(
        ev[..],
        [HealthEvent::Xid { code: 79, .. }, HealthEvent::Lost { .. }]
    ));
    assert!(matches!(
        gpu.poll_health_events(),
        Err(GpuError::GpuLost { .. })
    ));
    gpu.clear_faults();
    assert!(gpu.power().is_ok());
}

#[test]
fn identity_is_stable_per_seed_and_index() {
    let a = SimGpu::new(quiet("t4"), 0, 9);
    let b = SimGpu::new(quiet("t4"), 0, 9);
    let c = SimGpu::new(quiet("t4"), 1, 9);
    assert_eq!(a.info(), b.info());
    assert_ne!(a.info().uuid, c.info().uuid);
    assert!(a.info().uuid.starts_with("GPU-") && a.info().uuid.len() == 40);
    assert_eq!(a.info().name, "Tesla T4");
}
