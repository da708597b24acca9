//! Performance-model tests on the simulated GPU: the profiler measures what the instrument does
//! (and leaves the clocks unlocked), the power model meets its accuracy targets on zoo models, and
//! cost tables predict whole-model time and energy at batch sizes and clocks never measured.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a failed unwrap is a failed test

use std::sync::Arc;

use eali::exec::{DeviceClock, SimDevice, SimExecutor};
use eali::gpu::sim::{Fault, GpuProfile, ProfileSpec, SimGpu};
use eali::gpu::{Architecture, GpuBackend, PowerSemantics};
use eali::model::{Graph, zoo};
use eali::perf::PerfError;
use eali::perf::cost_table::build_cost_table;
use eali::perf::fit::{FitConfig, fit_power_model};
use eali::perf::power_model::PowerModel;
use eali::perf::profile::{EnergySource, Profile};
use eali::perf::profiler::{ClockSelection, ProfileConfig, profile};
use eali::perf::regress::{BoostParams, ForestParams, RegressorSpec, RidgeParams};

fn small_config(seed: u64) -> ProfileConfig {
    ProfileConfig {
        batches: vec![1, 4, 16, 64],
        clocks: ClockSelection::Spread(5),
        backend: "sim:v100".into(),
        seed: Some(seed),
        ..ProfileConfig::default()
    }
}

fn sim(name: &str, seed: u64) -> SimGpu {
    SimGpu::new(GpuProfile::builtin(name).unwrap(), 0, seed)
}

/// The same GPU without measurement noise: what remains is the error of the method.
fn noiseless(name: &str) -> SimGpu {
    noiseless_with(name, |_| {})
}

fn noiseless_with(name: &str, change: impl FnOnce(&mut ProfileSpec)) -> SimGpu {
    let mut spec = GpuProfile::builtin(name).unwrap().spec().clone();
    spec.noise.time_sd = 0.0;
    spec.noise.power_sd = 0.0;
    change(&mut spec);
    SimGpu::new(GpuProfile::from_spec(spec).unwrap(), 0, 1)
}

/// Profiles `graph` on `gpu` through the simulated executor, as `eali profile` does; `gpu` is
/// left as the profiler left it.
fn run(gpu: &mut SimGpu, graph: &Graph, cfg: &ProfileConfig) -> Result<Profile, PerfError> {
    let dev = SimDevice::new(gpu.clone(), DeviceClock::Virtual);
    let mut exec = SimExecutor::new(dev.clone(), Arc::new(graph.clone()));
    let r = profile(&mut dev.clone(), &mut exec, graph, cfg, &mut |_| {});
    *gpu = dev.snapshot();
    r
}

/// Relative errors of measured time and energy against the instrument's physics.
fn errors(p: &Profile, graph: &Graph, gpu: &GpuProfile) -> (Vec<f64>, Vec<f64>) {
    p.records
        .iter()
        .map(|r| {
            let w = graph.layer_work(r.layer, r.batch);
            (
                r.time_s / gpu.layer_time_s(&w, r.clock_mhz) - 1.0,
                r.energy_j / gpu.layer_energy_j(&w, r.clock_mhz) - 1.0,
            )
        })
        .unzip()
}

fn max_abs(v: &[f64]) -> f64 {
    v.iter().fold(0.0, |a, x| a.max(x.abs()))
}

#[test]
fn counter_readings_at_ticks_measure_layer_energy_exactly() {
    let graph = zoo::build("resnet18").unwrap();
    let mut gpu = noiseless("v100");
    let p = run(&mut gpu, &graph, &small_config(1)).unwrap();
    assert_eq!(p.energy_source, EnergySource::Counter);
    let measured = graph.layers.len() - p.layers.iter().filter(|l| l.is_noop()).count();
    assert_eq!(p.records.len(), measured * 4 * 5);
    let (t, e) = errors(&p, &graph, gpu.profile());
    let (mut free_t, mut free_e) = (Vec::new(), Vec::new());
    for ((r, t), e) in p.records.iter().zip(t).zip(e) {
        if r.power_capped {
            // The power cap lowered the clock: slower than the requested clock would be.
            assert!(
                t > 0.0,
                "{} b={} f={} capped but not slower",
                r.name,
                r.batch,
                r.clock_mhz
            );
        } else {
            free_t.push(t);
            free_e.push(e);
        }
    }
    assert!(free_t.len() > p.records.len() / 2);
    // Whole-mJ steps every 10 ms over ≥ 200 ms runs, read at ticks: well under 1 %.
    assert!(max_abs(&free_t) < 1e-9, "time error {}", max_abs(&free_t));
    assert!(
        max_abs(&free_e) < 0.005,
        "energy error {}",
        max_abs(&free_e)
    );
    for (pt, clock) in p.idle.iter().zip(&p.clocks_mhz) {
        let truth = gpu.profile().idle_power_w(*clock);
        assert!(
            (pt.power_w / truth - 1.0).abs() < 0.005,
            "{pt:?} vs {truth}"
        );
    }
    assert!(
        p.records
            .iter()
            .all(|r| r.time_s * f64::from(r.repeats) >= 0.2 * 0.99)
    );
}

#[test]
fn noisy_measurements_are_unbiased() {
    let graph = zoo::build("mobilenet_v2").unwrap();
    let mut gpu = sim("v100", 5);
    let mut p = run(&mut gpu, &graph, &small_config(5)).unwrap();
    // Power-capped runs are slower than the physics at the requested clock, by design.
    p.records.retain(|r| !r.power_capped);
    assert!(!p.records.is_empty());
    let (t, e) = errors(&p, &graph, gpu.profile());
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    assert!(
        mean(&t).abs() < 0.002 && mean(&e).abs() < 0.002,
        "{} {}",
        mean(&t),
        mean(&e)
    );
    assert!(max_abs(&e) < 0.05, "energy error {}", max_abs(&e));
}

#[test]
fn profiler_resets_clocks_on_success_and_on_failure() {
    let graph = zoo::build("alexnet").unwrap();
    let mut gpu = sim("v100", 2);
    let cfg = small_config(2);
    run(&mut gpu, &graph, &cfg).unwrap();
    let c = gpu.clocks().unwrap();
    assert_eq!(c.locked, None, "clocks left locked: {c:?}");

    // A counter that stops advancing fails the measurement after the clock was locked.
    let mut gpu = sim("v100", 2);
    gpu.inject_fault(Fault::CounterStuck);
    let err = run(&mut gpu, &graph, &cfg).unwrap_err();
    assert!(matches!(err, PerfError::CounterStuck { .. }), "{err}");
    assert_eq!(gpu.clocks().unwrap().locked, None);
}

/// A Maxwell-generation GPU (like the M40): no energy counter, no locked clocks.
fn maxwell(spec: &mut ProfileSpec) {
    spec.architecture = Architecture::Maxwell;
    spec.energy_counter.present = false;
}

#[test]
fn gpus_without_energy_counter_fall_back_to_power_sampling() {
    let graph = zoo::build("alexnet").unwrap();
    let cfg = ProfileConfig {
        batches: vec![1, 8],
        clocks: ClockSelection::Spread(3),
        ..ProfileConfig::default()
    };
    for semantics in [PowerSemantics::Instantaneous, PowerSemantics::Averaged1s] {
        let mut gpu = noiseless_with("m40", |s| {
            maxwell(s);
            s.power.reading = semantics;
        });
        let p = run(&mut gpu, &graph, &cfg).unwrap();
        assert_eq!(p.energy_source, EnergySource::PowerSampling);
        assert!(
            p.notes.iter().any(|n| n.contains("no energy counter")),
            "{:?}",
            p.notes
        );
        assert_eq!(
            p.notes.iter().any(|n| n.contains("1 s averages")),
            semantics == PowerSemantics::Averaged1s
        );
        let (_, e) = errors(&p, &graph, gpu.profile());
        let uncapped: Vec<f64> = p
            .records
            .iter()
            .zip(&e)
            .filter(|(r, _)| !r.power_capped)
            .map(|(_, e)| *e)
            .collect();
        assert!(
            max_abs(&uncapped) < 0.01,
            "{semantics:?}: energy error {}",
            max_abs(&uncapped)
        );
        // Application clocks were used and reset.
        let c = gpu.clocks().unwrap();
        assert_eq!(c.locked, None);
        assert_eq!(
            c.application_mhz,
            gpu.profile().spec().clocks.default_application_mhz
        );
    }
}

#[test]
fn profiles_are_deterministic_under_a_seed() {
    let graph = zoo::build("alexnet").unwrap();
    let json = |seed| {
        let mut gpu = sim("v100", seed);
        serde_json::to_string(&run(&mut gpu, &graph, &small_config(seed)).unwrap()).unwrap()
    };
    assert_eq!(json(7), json(7));
    assert_ne!(json(7), json(8));
}

#[test]
fn profile_file_round_trips() {
    let graph = zoo::build("alexnet").unwrap();
    let mut gpu = sim("v100", 3);
    let p = run(&mut gpu, &graph, &small_config(3)).unwrap();
    assert_eq!(Profile::from_json(&p.to_json().unwrap()).unwrap(), p);
    assert!(Profile::from_json("{\"format\": 1}").is_err());
    assert!(Profile::from_json("not json").is_err());
}

/// Light settings so the validation fits stay quick in a debug build.
fn light_fit(seed: u64) -> FitConfig {
    FitConfig {
        seed,
        max_rows: 1200,
        candidates: vec![
            RegressorSpec::Ridge(RidgeParams { alpha: 1.0 }),
            RegressorSpec::RandomForest(ForestParams {
                n_trees: 15,
                max_depth: 10,
                min_samples_leaf: 3,
                mtry: Some(6),
            }),
            RegressorSpec::GradientBoosting(BoostParams {
                n_trees: 60,
                learning_rate: 0.15,
                max_depth: 4,
                min_samples_leaf: 3,
                subsample: 0.7,
            }),
        ],
        ..FitConfig::default()
    }
}

fn zoo_profiles(models: &[&str]) -> Vec<Profile> {
    models
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let mut gpu = sim("v100", 10 + i as u64);
            run(
                &mut gpu,
                &zoo::build(m).unwrap(),
                &small_config(10 + i as u64),
            )
            .unwrap()
        })
        .collect()
}

#[test]
fn power_model_meets_targets_and_cost_tables_predict_unmeasured_points() {
    let profiles = zoo_profiles(&["alexnet", "resnet18", "googlenet", "mobilenet_v2"]);
    let (model, report) = fit_power_model(&profiles, &light_fit(42)).unwrap();
    assert_eq!(report.candidates.len(), 3);
    assert_eq!(report.models.len(), 4);
    let chosen = report
        .candidates
        .iter()
        .find(|c| c.kind() == report.chosen)
        .unwrap();
    assert!(chosen.cv.r2 >= 0.95, "10-fold R² {}", chosen.cv.r2);
    let lomo = chosen.leave_one_model_out_mean.unwrap();
    assert!(lomo.r2 >= 0.90, "leave-one-model-out R² {}", lomo.r2);
    assert!(chosen.leave_one_model_out.iter().all(|(_, s)| s.r2 >= 0.90));
    // The chosen one has the lowest cross-validated RMSE.
    assert!(
        report
            .candidates
            .iter()
            .all(|c| c.cv.rmse >= chosen.cv.rmse)
    );

    // Predicted whole-model time and energy at batch sizes and clocks never profiled.
    let batches = [2, 8, 24, 50];
    let clocks = [700, 1000, 1300];
    for (p, name) in profiles
        .iter()
        .zip(["alexnet", "resnet18", "googlenet", "mobilenet_v2"])
    {
        let graph = zoo::build(name).unwrap();
        // Ground truth from the instrument itself, without noise (and with its power cap).
        let mut gpu = noiseless("v100");
        let t = build_cost_table(p, &model, &batches, &clocks).unwrap();
        assert_eq!(t.layers.len(), graph.layers.len());
        assert_eq!(t.batch_overhead_s.len(), batches.len());
        assert_eq!(t.idle_power_w.len(), clocks.len());
        for (bi, &b) in batches.iter().enumerate() {
            for (fi, &f) in clocks.iter().enumerate() {
                let change = gpu.set_locked_clocks(f, f).unwrap();
                gpu.idle(change.effective_at_s - gpu.now_s() + 0.001)
                    .unwrap();
                let (mut tt, mut te, mut pt, mut pe) = (0.0, 0.0, 0.0, 0.0);
                for l in 0..graph.layers.len() {
                    let w = graph.layer_work(l, b);
                    if w.flops == 0.0 && w.bytes == 0.0 {
                        assert_eq!(t.time_s[l][bi][fi], 0.0);
                        continue;
                    }
                    let e0 = gpu.energy_truth_j();
                    tt += gpu.run_layer(&w, 1).unwrap();
                    te += gpu.energy_truth_j() - e0;
                    pt += t.time_s[l][bi][fi];
                    pe += t.energy_j[l][bi][fi];
                }
                assert!(
                    (pt / tt - 1.0).abs() < 0.03,
                    "{name} b={b} f={f}: time {pt} vs {tt}"
                );
                assert!(
                    (pe / te - 1.0).abs() < 0.05,
                    "{name} b={b} f={f}: energy {pe} vs {te}"
                );
            }
        }
        // Idle power rises with the clock; the input copy grows with the batch.
        assert!(t.idle_power_w.windows(2).all(|w| w[0] <= w[1]));
        assert!(t.batch_overhead_s.windows(2).all(|w| w[0] < w[1]));
    }

    // Cost tables refuse a power model of another GPU.
    let mut other = profiles[0].clone();
    other.gpu.name = "Tesla T4".into();
    assert!(build_cost_table(&other, &model, &[1], &[1000]).is_err());
}

#[test]
fn fitting_is_deterministic_and_saved_models_predict_the_same() {
    let profiles = zoo_profiles(&["alexnet", "mobilenet_v2", "resnet18"]);
    let mut cfg = light_fit(9);
    cfg.folds = 5;
    let (a, ra) = fit_power_model(&profiles, &cfg).unwrap();
    let (_, rb) = fit_power_model(&profiles, &cfg).unwrap();
    assert_eq!(ra, rb);
    let queries: Vec<_> = profiles[0]
        .records
        .iter()
        .step_by(7)
        .map(|r| eali::perf::features::LayerFeatures::from_record(r, profiles[0].gpu.max_clock_mhz))
        .collect();
    // Every family survives the save/load round trip (trees are refitted from the saved rows).
    for spec in cfg.candidates.clone() {
        let one = FitConfig {
            candidates: vec![spec],
            leave_one_model_out: false,
            ..cfg.clone()
        };
        let (m, _) = fit_power_model(&profiles, &one).unwrap();
        let back = PowerModel::from_json(&m.to_json().unwrap()).unwrap();
        assert_eq!(back.kind(), spec.kind());
        assert_eq!(
            m.predict_many(&queries).unwrap(),
            back.predict_many(&queries).unwrap()
        );
        assert!(queries.iter().all(|q| m.predict(q) > 0.0));
    }
    assert!(
        a.predict_many(&queries)
            .unwrap()
            .iter()
            .all(|w| w.is_finite())
    );
}
