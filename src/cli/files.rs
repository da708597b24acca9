//! Reading and writing the files the commands take and make (profiles, power models): the
//! file-system edge of the pure `perf` module, with the path in every error.

use std::path::Path;

use anyhow::Context as _;

use crate::eali::SwitchLatency;
use crate::perf::{PowerModel, Profile};

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// Writes `text` to `path`, creating parent directories.
pub fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

pub fn load_profile(path: &Path) -> anyhow::Result<Profile> {
    Profile::from_json(&read(path)?).with_context(|| format!("profile {}", path.display()))
}

pub fn save_profile(p: &Profile, path: &Path) -> anyhow::Result<()> {
    write(path, &p.to_json()?)
}

pub fn load_power_model(path: &Path) -> anyhow::Result<PowerModel> {
    PowerModel::from_json(&read(path)?).with_context(|| format!("power model {}", path.display()))
}

pub fn save_power_model(m: &PowerModel, path: &Path) -> anyhow::Result<()> {
    write(path, &m.to_json()?)
}

/// Reads a switch latency written by `eali gpu calibrate-switch --out FILE`.
pub fn load_switch_latency(path: &Path) -> anyhow::Result<SwitchLatency> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the switch latency file {}", path.display()))?;
    let s: SwitchLatency = serde_json::from_str(&text).with_context(|| {
        format!(
            "{} is not a switch latency (from `eali gpu calibrate-switch --out`)",
            path.display()
        )
    })?;
    let values = [s.call_median_s, s.total_median_s, s.total_p95_s];
    if values.iter().any(|v| !v.is_finite() || *v < 0.0) || s.total_p95_s < s.total_median_s {
        anyhow::bail!(
            "{}: switch latencies must be finite, non-negative, and p95 ≥ median",
            path.display()
        );
    }
    Ok(s)
}
