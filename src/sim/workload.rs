//! Request arrival processes for the simulator: Poisson, bursty (2-state MMPP), diurnal, step
//! changes, and replay of a recorded trace. Each produces the arrival times (seconds, ascending)
//! of one run of a given duration at a given mean (base) rate, deterministically under a seed.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// Why a workload could not be built or a trace could not be read.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum WorkloadError {
    #[error("invalid workload parameter: {0}")]
    InvalidParameter(String),
    #[error("cannot read trace {path}: {reason}")]
    Io { path: String, reason: String },
    #[error("trace {path}: {source}")]
    InTrace {
        path: String,
        source: Box<WorkloadError>,
    },
    #[error("trace line {line}: {reason}")]
    BadLine { line: usize, reason: String },
    #[error("trace header has no `timestamp` column (columns: {columns})")]
    NoTimestampColumn { columns: String },
    #[error("trace has fewer than two arrivals, so it has no rate")]
    TooShort,
    #[error("unknown workload kind `{0}` (expected poisson, bursty, diurnal, step or trace:PATH)")]
    UnknownKind(String),
}

/// Shape of the arrival process. Every kind's long-run mean rate equals the base rate it is
/// generated at, so load levels stay comparable across kinds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WorkloadKind {
    /// Exponential inter-arrival times.
    Poisson,
    /// Two-state Markov-modulated Poisson process: a high state at `ratio` times the rate of the
    /// low state; exponential sojourns with the given means. The state rates are scaled so the
    /// time-averaged rate equals the base rate.
    Bursty {
        ratio: f64,
        high_sojourn_s: f64,
        low_sojourn_s: f64,
    },
    /// Rate `base · (1 + amplitude · sin(2π t / period))`: a compressed day.
    Diurnal { amplitude: f64, period_s: f64 },
    /// Rate `base · levels[k]` during the k-th segment of `segment_s` seconds, cycling; levels are
    /// normalised to mean 1 so the base rate is the mean.
    Step { levels: Vec<f64>, segment_s: f64 },
    /// Replay of recorded arrival times, time-scaled so its mean rate equals the base rate and
    /// looped when shorter than the run.
    Trace {
        name: String,
        #[serde(skip)]
        arrivals: Arc<[f64]>,
    },
}

impl WorkloadKind {
    /// MMPP with a 3:1 high/low rate ratio, 2 s bursts and 6 s lulls: the high state runs at 2×
    /// the mean rate, the low state at 2/3 of it.
    pub fn bursty() -> Self {
        WorkloadKind::Bursty {
            ratio: 3.0,
            high_sojourn_s: 2.0,
            low_sojourn_s: 6.0,
        }
    }
    /// ±50 % around the mean over a 120 s period.
    pub fn diurnal() -> Self {
        WorkloadKind::Diurnal {
            amplitude: 0.5,
            period_s: 120.0,
        }
    }
    /// Levels 0.5, 1.0, 1.5, 1.0 of the mean rate, 20 s each.
    pub fn step() -> Self {
        WorkloadKind::Step {
            levels: vec![0.5, 1.0, 1.5, 1.0],
            segment_s: 20.0,
        }
    }

    /// Short name used in tables and JSON.
    pub fn name(&self) -> String {
        match self {
            WorkloadKind::Poisson => "poisson".into(),
            WorkloadKind::Bursty { .. } => "bursty".into(),
            WorkloadKind::Diurnal { .. } => "diurnal".into(),
            WorkloadKind::Step { .. } => "step".into(),
            WorkloadKind::Trace { name, .. } => format!("trace:{name}"),
        }
    }

    /// Parses `poisson`, `bursty`, `diurnal`, `step` (default parameters), `step:L1,L2,…:SEG`
    /// (levels relative to each other, each held SEG seconds; e.g. `step:4,1,1:10` with rate 700
    /// is 1400 req/s for 10 s, then 350 req/s for 20 s) or `trace:PATH` (reads the file).
    pub fn parse(s: &str) -> Result<Self, WorkloadError> {
        match s {
            "poisson" => Ok(WorkloadKind::Poisson),
            "bursty" | "mmpp" => Ok(WorkloadKind::bursty()),
            "diurnal" => Ok(WorkloadKind::diurnal()),
            "step" => Ok(WorkloadKind::step()),
            _ if s.starts_with("step:") => parse_step(&s["step:".len()..]),
            _ => match s.strip_prefix("trace:") {
                Some(path) => {
                    let arrivals = read_trace(Path::new(path))?;
                    let name = Path::new(path)
                        .file_stem()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_else(|| path.to_string());
                    Ok(WorkloadKind::Trace {
                        name,
                        arrivals: arrivals.into(),
                    })
                }
                None => Err(WorkloadError::UnknownKind(s.to_string())),
            },
        }
    }
}

/// `L1,L2,…:SEG` of a `step:` workload.
fn parse_step(spec: &str) -> Result<WorkloadKind, WorkloadError> {
    let bad = |why: &str| {
        WorkloadError::InvalidParameter(format!(
            "step:{spec}: {why} (expected step:L1,L2,…:SEGMENT_S, e.g. step:4,1,1:10)"
        ))
    };
    let (levels, seg) = spec
        .rsplit_once(':')
        .ok_or_else(|| bad("no segment length"))?;
    let segment_s: f64 = seg
        .parse()
        .map_err(|_| bad("segment length is not a number"))?;
    let levels = levels
        .split(',')
        .map(|l| l.trim().parse::<f64>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| bad("a level is not a number"))?;
    let kind = WorkloadKind::Step { levels, segment_s };
    // The same checks a step workload from a config gets.
    Workload::new(kind.clone(), 1.0, 1.0).validate()?;
    Ok(kind)
}

impl fmt::Display for WorkloadKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// One run's arrival process: kind, mean rate and duration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Workload {
    pub kind: WorkloadKind,
    /// Mean arrival rate (requests/s).
    pub rate: f64,
    pub duration_s: f64,
}

impl Workload {
    pub fn new(kind: WorkloadKind, rate: f64, duration_s: f64) -> Self {
        Self {
            kind,
            rate,
            duration_s,
        }
    }

    /// Arrival times in `[0, duration)`, ascending, reproducible for a given seed.
    pub fn generate(&self, seed: u64) -> Result<Vec<f64>, WorkloadError> {
        let mut out = Vec::new();
        self.generate_into(seed, &mut out)?;
        Ok(out)
    }

    /// Like [`Workload::generate`], reusing `out`'s allocation.
    pub fn generate_into(&self, seed: u64, out: &mut Vec<f64>) -> Result<(), WorkloadError> {
        self.validate()?;
        out.clear();
        out.reserve((self.rate * self.duration_s * 1.1) as usize + 16);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let (rate, dur) = (self.rate, self.duration_s);
        match &self.kind {
            WorkloadKind::Poisson => poisson(&mut rng, rate, dur, out),
            WorkloadKind::Bursty {
                ratio,
                high_sojourn_s,
                low_sojourn_s,
            } => mmpp(
                &mut rng,
                rate,
                dur,
                *ratio,
                *high_sojourn_s,
                *low_sojourn_s,
                out,
            ),
            WorkloadKind::Diurnal {
                amplitude,
                period_s,
            } => {
                let (a, p) = (*amplitude, *period_s);
                let tau = std::f64::consts::TAU;
                thinning(&mut rng, rate * (1.0 + a), dur, out, |t| {
                    rate * (1.0 + a * (tau * t / p).sin())
                })
            }
            WorkloadKind::Step { levels, segment_s } => {
                let mean = levels.iter().sum::<f64>() / levels.len() as f64;
                let max = levels.iter().cloned().fold(0.0, f64::max);
                let seg = *segment_s;
                thinning(&mut rng, rate * max / mean, dur, out, |t| {
                    let k = (t / seg) as usize % levels.len();
                    rate * levels[k] / mean
                })
            }
            WorkloadKind::Trace { arrivals, .. } => replay(arrivals, rate, dur, out),
        }
        Ok(())
    }

    fn validate(&self) -> Result<(), WorkloadError> {
        let bad = |what: &str| Err(WorkloadError::InvalidParameter(what.to_string()));
        if !(self.rate.is_finite() && positive(self.rate)) {
            return bad("rate must be a positive number");
        }
        if !(self.duration_s.is_finite() && positive(self.duration_s)) {
            return bad("duration must be a positive number");
        }
        match &self.kind {
            WorkloadKind::Bursty {
                ratio,
                high_sojourn_s,
                low_sojourn_s,
            } => {
                if !(*ratio >= 1.0 && *high_sojourn_s > 0.0 && *low_sojourn_s > 0.0) {
                    return bad("bursty needs ratio >= 1 and positive sojourn times");
                }
            }
            WorkloadKind::Diurnal {
                amplitude,
                period_s,
            } => {
                if !((0.0..=1.0).contains(amplitude) && *period_s > 0.0) {
                    return bad("diurnal needs 0 <= amplitude <= 1 and a positive period");
                }
            }
            WorkloadKind::Step { levels, segment_s } => {
                if levels.is_empty() || levels.iter().any(|l| !(*l >= 0.0 && l.is_finite())) {
                    return bad("step needs at least one non-negative level");
                }
                if levels.iter().sum::<f64>() <= 0.0 || !positive(*segment_s) {
                    return bad("step needs a positive level and a positive segment length");
                }
            }
            WorkloadKind::Trace { arrivals, .. } => {
                if arrivals.len() < 2 || trace_span(arrivals) <= 0.0 {
                    return Err(WorkloadError::TooShort);
                }
            }
            WorkloadKind::Poisson => {}
        }
        Ok(())
    }
}

/// `x > 0`, false for NaN.
fn positive(x: f64) -> bool {
    x > 0.0
}

/// Exponential variate with the given rate (inverse transform; `1 - u` avoids ln 0).
fn exp_sample(rng: &mut ChaCha8Rng, rate: f64) -> f64 {
    -(1.0 - rng.random::<f64>()).ln() / rate
}

fn poisson(rng: &mut ChaCha8Rng, rate: f64, dur: f64, out: &mut Vec<f64>) {
    let mut t = exp_sample(rng, rate);
    while t < dur {
        out.push(t);
        t += exp_sample(rng, rate);
    }
}

fn mmpp(
    rng: &mut ChaCha8Rng,
    rate: f64,
    dur: f64,
    ratio: f64,
    high_s: f64,
    low_s: f64,
    out: &mut Vec<f64>,
) {
    // Time-averaged rate = (r_hi·high_s + r_lo·low_s)/(high_s + low_s) = rate, r_hi = ratio·r_lo.
    let r_lo = rate * (high_s + low_s) / (ratio * high_s + low_s);
    let r_hi = ratio * r_lo;
    // Start in the stationary state distribution so short runs are unbiased.
    let mut high = rng.random::<f64>() < high_s / (high_s + low_s);
    let mut t = 0.0;
    while t < dur {
        let (r, mean_sojourn) = if high { (r_hi, high_s) } else { (r_lo, low_s) };
        let end = (t + exp_sample(rng, 1.0 / mean_sojourn)).min(dur);
        // Memorylessness lets each state restart its Poisson clock at the state boundary.
        let mut a = t + exp_sample(rng, r);
        while a < end {
            out.push(a);
            a += exp_sample(rng, r);
        }
        t = end;
        high = !high;
    }
}

/// Non-homogeneous Poisson process by thinning (Lewis–Shedler) against the bound `max_rate`.
fn thinning(
    rng: &mut ChaCha8Rng,
    max_rate: f64,
    dur: f64,
    out: &mut Vec<f64>,
    rate_at: impl Fn(f64) -> f64,
) {
    let mut t = exp_sample(rng, max_rate);
    while t < dur {
        if rng.random::<f64>() * max_rate < rate_at(t) {
            out.push(t);
        }
        t += exp_sample(rng, max_rate);
    }
}

/// Span of a sorted trace plus one mean inter-arrival gap, so that looping keeps the spacing.
fn trace_span(arrivals: &[f64]) -> f64 {
    let n = arrivals.len();
    let raw = arrivals[n - 1] - arrivals[0];
    raw + raw / (n - 1) as f64
}

fn replay(arrivals: &[f64], rate: f64, dur: f64, out: &mut Vec<f64>) {
    let span = trace_span(arrivals);
    let trace_rate = arrivals.len() as f64 / span;
    let scale = trace_rate / rate;
    let t0 = arrivals[0];
    let mut offset = 0.0;
    'outer: loop {
        for &a in arrivals {
            let t = offset + (a - t0) * scale;
            if t >= dur {
                break 'outer;
            }
            out.push(t);
        }
        offset += span * scale;
    }
}

/// Reads a trace of arrival timestamps (seconds): either one number per line, or a CSV with a
/// header row that has a column named `timestamp`. Blank lines and lines starting with `#` are
/// skipped. Timestamps are sorted (logs are often slightly out of order).
pub fn read_trace(path: &Path) -> Result<Vec<f64>, WorkloadError> {
    let text = std::fs::read_to_string(path).map_err(|e| WorkloadError::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    parse_trace(&text).map_err(|e| WorkloadError::InTrace {
        path: path.display().to_string(),
        source: Box::new(e),
    })
}

/// Parses trace text; see [`read_trace`].
pub fn parse_trace(text: &str) -> Result<Vec<f64>, WorkloadError> {
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim()))
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'))
        .peekable();
    // A first line that is not a number is a header naming the columns.
    let mut column = 0usize;
    let mut expect_columns = None;
    if let Some(&(_, first)) = lines.peek()
        && first.parse::<f64>().is_err()
    {
        let names: Vec<&str> = first
            .split(',')
            .map(|c| c.trim().trim_matches('"'))
            .collect();
        column = names
            .iter()
            .position(|c| c.eq_ignore_ascii_case("timestamp"))
            .ok_or_else(|| WorkloadError::NoTimestampColumn {
                columns: names.join(", "),
            })?;
        expect_columns = Some(names.len());
        lines.next();
    }
    let mut out = Vec::new();
    for (line, l) in lines {
        let field = match expect_columns {
            None => l,
            Some(n) => {
                let fields: Vec<&str> = l.split(',').collect();
                if fields.len() != n {
                    return Err(WorkloadError::BadLine {
                        line,
                        reason: format!("expected {n} columns, found {}", fields.len()),
                    });
                }
                fields[column].trim().trim_matches('"')
            }
        };
        let t: f64 = field.parse().map_err(|_| WorkloadError::BadLine {
            line,
            reason: format!("`{field}` is not a number"),
        })?;
        if !t.is_finite() || t < 0.0 {
            return Err(WorkloadError::BadLine {
                line,
                reason: format!("timestamp {field} must be a finite number >= 0"),
            });
        }
        out.push(t);
    }
    out.sort_by(f64::total_cmp);
    if out.len() < 2 || out[out.len() - 1] <= out[0] {
        return Err(WorkloadError::TooShort);
    }
    Ok(out)
}

#[cfg(test)]
#[path = "workload_tests.rs"]
mod tests;
