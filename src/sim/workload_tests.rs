//! Statistical checks of the arrival generators and the trace parser.

use super::*;

fn rate_of(arrivals: &[f64], from: f64, to: f64) -> f64 {
    arrivals.iter().filter(|&&t| t >= from && t < to).count() as f64 / (to - from)
}

fn check_sorted_in_range(a: &[f64], dur: f64) {
    assert!(a.windows(2).all(|w| w[0] <= w[1]), "arrivals not ascending");
    assert!(
        a.iter().all(|&t| (0.0..dur).contains(&t)),
        "arrival outside [0, duration)"
    );
}

#[test]
fn poisson_hits_rate_and_is_exponential() {
    let w = Workload::new(WorkloadKind::Poisson, 1000.0, 100.0);
    let a = w.generate(7).unwrap();
    check_sorted_in_range(&a, 100.0);
    // 100 000 expected, std 316: 2 % is > 6 sigma.
    let rate = a.len() as f64 / 100.0;
    assert!((rate - 1000.0).abs() < 20.0, "rate {rate}");
    // Exponential gaps: coefficient of variation ≈ 1.
    let gaps: Vec<f64> = a.windows(2).map(|w| w[1] - w[0]).collect();
    let mean = gaps.iter().sum::<f64>() / gaps.len() as f64;
    let var = gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / gaps.len() as f64;
    let cv = var.sqrt() / mean;
    assert!((cv - 1.0).abs() < 0.03, "cv {cv}");
}

#[test]
fn deterministic_under_seed_and_seed_sensitive() {
    let w = Workload::new(WorkloadKind::bursty(), 300.0, 30.0);
    assert_eq!(w.generate(1).unwrap(), w.generate(1).unwrap());
    assert_ne!(w.generate(1).unwrap(), w.generate(2).unwrap());
}

/// Variance-to-mean ratio of counts in 1 s windows (1 for Poisson).
fn dispersion(a: &[f64], dur: f64) -> f64 {
    let mut counts = vec![0.0f64; dur as usize];
    for &t in a {
        counts[t as usize] += 1.0;
    }
    let mean = counts.iter().sum::<f64>() / counts.len() as f64;
    let var = counts.iter().map(|c| (c - mean).powi(2)).sum::<f64>() / counts.len() as f64;
    var / mean
}

#[test]
fn bursty_hits_mean_rate_and_is_overdispersed() {
    let w = Workload::new(WorkloadKind::bursty(), 50.0, 10_000.0);
    let a = w.generate(3).unwrap();
    check_sorted_in_range(&a, 10_000.0);
    let rate = a.len() as f64 / 10_000.0;
    assert!((rate - 50.0).abs() < 2.5, "rate {rate}");
    let d = dispersion(&a, 10_000.0);
    assert!(
        d > 5.0,
        "MMPP should be much burstier than Poisson, dispersion {d}"
    );
    let p = Workload::new(WorkloadKind::Poisson, 50.0, 10_000.0)
        .generate(3)
        .unwrap();
    let dp = dispersion(&p, 10_000.0);
    assert!((dp - 1.0).abs() < 0.1, "Poisson dispersion {dp}");
}

#[test]
fn diurnal_follows_the_sine() {
    let kind = WorkloadKind::Diurnal {
        amplitude: 0.5,
        period_s: 100.0,
    };
    let a = Workload::new(kind, 400.0, 1000.0).generate(11).unwrap();
    check_sorted_in_range(&a, 1000.0);
    let rate = a.len() as f64 / 1000.0;
    assert!((rate - 400.0).abs() < 8.0, "mean rate {rate}");
    // Over 10 periods: around the peak (t mod 100 in [20, 30)) the rate is ≈ 400·(1 + 0.5·0.95).
    let (mut peak, mut trough) = (0usize, 0usize);
    for &t in &a {
        let ph = t % 100.0;
        if (20.0..30.0).contains(&ph) {
            peak += 1;
        } else if (70.0..80.0).contains(&ph) {
            trough += 1;
        }
    }
    let (peak, trough) = (peak as f64 / 100.0, trough as f64 / 100.0);
    assert!((peak - 590.0).abs() < 30.0, "peak {peak}");
    assert!((trough - 210.0).abs() < 20.0, "trough {trough}");
}

#[test]
fn step_segments_hit_their_levels() {
    let kind = WorkloadKind::Step {
        levels: vec![1.0, 3.0],
        segment_s: 50.0,
    };
    let a = Workload::new(kind, 200.0, 200.0).generate(5).unwrap();
    check_sorted_in_range(&a, 200.0);
    // Levels normalised to mean 1: 0.5 and 1.5 of the base rate.
    for (from, expect) in [(0.0, 100.0), (50.0, 300.0), (100.0, 100.0), (150.0, 300.0)] {
        let r = rate_of(&a, from, from + 50.0);
        assert!(
            (r - expect).abs() < 0.1 * expect,
            "segment at {from}: {r} vs {expect}"
        );
    }
}

#[test]
fn trace_replay_rescales_and_loops() {
    // 11 arrivals over 10 s = 1.1 req/s; span with one extra gap = 11 s → 1 req/s exactly.
    let arrivals: Vec<f64> = (0..11).map(|i| 100.0 + i as f64).collect();
    let kind = WorkloadKind::Trace {
        name: "t".into(),
        arrivals: arrivals.into(),
    };
    let a = Workload::new(kind, 10.0, 5.0).generate(0).unwrap();
    // At 10 req/s the gaps become 0.1 s, shifted to start at 0, looped over 5 s.
    assert_eq!(a.len(), 50);
    for (i, t) in a.iter().enumerate() {
        assert!((t - i as f64 * 0.1).abs() < 1e-9, "arrival {i} at {t}");
    }
}

#[test]
fn trace_parses_plain_and_csv() {
    assert_eq!(
        parse_trace("0.5\n# comment\n\n0.25\n1.0\n").unwrap(),
        vec![0.25, 0.5, 1.0]
    );
    let csv = "id,timestamp,model\n1, 0.1 ,a\n2,0.3,b\n3,\"0.2\",c\n";
    assert_eq!(parse_trace(csv).unwrap(), vec![0.1, 0.2, 0.3]);
    let csv_upper = "Timestamp\n1\n2\n";
    assert_eq!(parse_trace(csv_upper).unwrap(), vec![1.0, 2.0]);
}

#[test]
fn trace_rejects_bad_input_with_line_numbers() {
    assert_eq!(
        parse_trace("0.1\n0.2\nabc\n"),
        Err(WorkloadError::BadLine {
            line: 3,
            reason: "`abc` is not a number".into()
        })
    );
    assert!(matches!(
        parse_trace("time,id\n1,2\n"),
        Err(WorkloadError::NoTimestampColumn { .. })
    ));
    assert!(matches!(
        parse_trace("id,timestamp\n1,0.5\n2\n"),
        Err(WorkloadError::BadLine { line: 3, .. })
    ));
    assert!(matches!(
        parse_trace("0.1\n-2\n"),
        Err(WorkloadError::BadLine { line: 2, .. })
    ));
    assert!(matches!(
        parse_trace("0.1\ninf\n"),
        Err(WorkloadError::BadLine { line: 2, .. })
    ));
    assert_eq!(parse_trace(""), Err(WorkloadError::TooShort));
    assert_eq!(parse_trace("3\n3\n"), Err(WorkloadError::TooShort));
}

#[test]
fn trace_file_errors_name_the_path() {
    let err = read_trace(Path::new("/nonexistent/eali-trace.csv")).unwrap_err();
    assert!(
        err.to_string().contains("/nonexistent/eali-trace.csv"),
        "{err}"
    );
    assert!(matches!(
        WorkloadKind::parse("nonsense"),
        Err(WorkloadError::UnknownKind(_))
    ));
}

#[test]
fn invalid_parameters_are_refused() {
    for w in [
        Workload::new(WorkloadKind::Poisson, 0.0, 1.0),
        Workload::new(WorkloadKind::Poisson, 1.0, f64::NAN),
        Workload::new(
            WorkloadKind::Diurnal {
                amplitude: 2.0,
                period_s: 1.0,
            },
            1.0,
            1.0,
        ),
        Workload::new(
            WorkloadKind::Step {
                levels: vec![],
                segment_s: 1.0,
            },
            1.0,
            1.0,
        ),
        Workload::new(
            WorkloadKind::Bursty {
                ratio: 0.5,
                high_sojourn_s: 1.0,
                low_sojourn_s: 1.0,
            },
            1.0,
            1.0,
        ),
    ] {
        assert!(
            matches!(w.generate(0), Err(WorkloadError::InvalidParameter(_))),
            "{w:?}"
        );
    }
}

#[test]
fn step_with_levels_parses_and_runs_each_level_for_its_segment() {
    let kind = WorkloadKind::parse("step:4,1,1:10").unwrap();
    assert_eq!(
        kind,
        WorkloadKind::Step {
            levels: vec![4.0, 1.0, 1.0],
            segment_s: 10.0
        }
    );
    // Mean 700: 1400 req/s for 10 s, then 350 req/s.
    let a = Workload::new(kind, 700.0, 30.0).generate(3).unwrap();
    let first = a.iter().filter(|&&t| t < 10.0).count() as f64 / 10.0;
    let rest = a.iter().filter(|&&t| t >= 10.0).count() as f64 / 20.0;
    assert!((first / 1400.0 - 1.0).abs() < 0.05, "{first}");
    assert!((rest / 350.0 - 1.0).abs() < 0.05, "{rest}");
    for bad in [
        "step:4,1",
        "step:4,x:10",
        "step::10",
        "step:-1,1:10",
        "step:1,1:0",
    ] {
        assert!(
            matches!(
                WorkloadKind::parse(bad),
                Err(WorkloadError::InvalidParameter(_))
            ),
            "{bad}"
        );
    }
}
