//! The stand-in's configuration, read from the environment when NVML is first initialised.
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `EALI_NVML_PROFILE` | GPU profile names, comma separated, one per GPU (the last repeats) | `v100-sxm2` |
//! | `EALI_NVML_GPUS` | number of GPUs | number of profiles listed |
//! | `EALI_NVML_SEED` | seed of the simulated GPUs (UUIDs, noise, switch latency) | `1` |
//! | `EALI_NVML_FAULTS` | injected faults, see [`FaultSpec::parse`] | none |
//! | `EALI_NVML_DRIVER_VERSION` | what `nvmlSystemGetDriverVersion` reports | `550.127.05` |
//! | `EALI_NVML_STATE` | JSON file holding the driver state across processes (clock locks, power limits, energy base, an operation log) | in memory only |
//! | `EALI_NVML_FAULT_FILE` | file listing the faults in force now (as `EALI_NVML_FAULTS`, without times; comma or newline separated); re-read when it changes, and emptying or removing it clears every fault, as a GPU reset would | none |
//! | `EALI_NVML_LOAD_FILE` | file holding a utilisation (0..1, or one per GPU, comma separated) of a synthetic compute load; re-read when it changes | idle |
//! | `EALI_NVML_POWER_FIELDS` | `0`: `nvmlDeviceGetFieldValues` has no power fields (older drivers) | `1` |
//! | `EALI_NVML_REALTIME` | `0`: set-clock calls return at once instead of blocking for their simulated call latency | `1` |

use std::path::PathBuf;

/// One injected fault: what, on which GPU (all when `None`), and when (seconds after the first
/// `nvmlInit` of this process).
#[derive(Debug, Clone, PartialEq)]
pub struct FaultSpec {
    pub kind: FaultKind,
    pub gpu: Option<u32>,
    pub at_s: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// The GPU falls off the bus without an XID event.
    Lost,
    /// An XID event; 79 also loses the GPU, 48 is a double-bit ECC error.
    Xid(u64),
    /// A double-bit ECC event without an XID.
    DoubleBitEcc,
    /// Setters fail with `NVML_ERROR_NO_PERMISSION`.
    NoPermission,
    /// The energy counter stops advancing.
    CounterStuck,
    /// `nvmlInit` fails with `NVML_ERROR_DRIVER_NOT_LOADED` (kernel module not loaded).
    DriverNotLoaded,
}

/// The faults a fault file lists (see the module docs); unparsable items are reported and
/// skipped, so a typo in a test's file does not take the library down.
pub fn parse_fault_file(text: &str) -> Vec<FaultSpec> {
    text.split([',', '\n'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .filter_map(|item| {
            FaultSpec::parse(item)
                .inspect_err(|e| eprintln!("nvml-standin: fault file: {e}"))
                .ok()
        })
        .collect()
}

impl FaultSpec {
    /// `KIND[/GPU][@SECONDS]`, KIND one of `lost`, `xidN` (e.g. `xid48`, `xid79`), `dbe`,
    /// `noperm`, `stuck`, `nodriver`. Examples: `noperm`, `xid79/1@0.5`, `stuck/0`.
    pub fn parse(item: &str) -> Result<Self, String> {
        let (rest, at_s) = match item.split_once('@') {
            Some((r, t)) => {
                let t: f64 = t
                    .trim()
                    .parse()
                    .map_err(|_| format!("bad fault time in `{item}`"))?;
                if t.is_nan() || t < 0.0 {
                    return Err(format!("fault time must be ≥ 0 in `{item}`"));
                }
                (r, t)
            }
            None => (item, 0.0),
        };
        let (kind, gpu) = match rest.split_once('/') {
            Some((k, g)) => {
                let g: u32 = g
                    .trim()
                    .parse()
                    .map_err(|_| format!("bad GPU index in `{item}`"))?;
                (k.trim(), Some(g))
            }
            None => (rest.trim(), None),
        };
        let kind = match kind {
            "lost" => FaultKind::Lost,
            "dbe" => FaultKind::DoubleBitEcc,
            "noperm" => FaultKind::NoPermission,
            "stuck" => FaultKind::CounterStuck,
            "nodriver" => FaultKind::DriverNotLoaded,
            k if k.starts_with("xid") => {
                let code: u64 = k[3..]
                    .parse()
                    .map_err(|_| format!("bad XID code in `{item}`"))?;
                FaultKind::Xid(code)
            }
            other => return Err(format!("unknown fault `{other}` in `{item}`")),
        };
        Ok(Self { kind, gpu, at_s })
    }

    pub fn applies_to(&self, index: u32) -> bool {
        self.gpu.is_none_or(|g| g == index)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Profile name per GPU.
    pub profiles: Vec<String>,
    pub seed: u64,
    pub faults: Vec<FaultSpec>,
    pub driver_version: String,
    pub state_path: Option<PathBuf>,
    pub load_path: Option<PathBuf>,
    pub fault_path: Option<PathBuf>,
    pub power_fields: bool,
    pub realtime: bool,
}

impl Config {
    pub fn from_env() -> Result<Self, String> {
        Self::parse(|k| std::env::var(k).ok().filter(|v| !v.trim().is_empty()))
    }

    pub fn parse(get: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let names: Vec<String> = get("EALI_NVML_PROFILE")
            .unwrap_or_else(|| "v100-sxm2".into())
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect();
        let last = names
            .last()
            .cloned()
            .ok_or("EALI_NVML_PROFILE lists no profile")?;
        let count = match get("EALI_NVML_GPUS") {
            Some(n) => n
                .trim()
                .parse::<usize>()
                .map_err(|_| format!("bad EALI_NVML_GPUS `{n}`"))?,
            None => names.len(),
        };
        if count > 64 {
            return Err(format!("EALI_NVML_GPUS={count}: at most 64 GPUs"));
        }
        let profiles = (0..count)
            .map(|i| names.get(i).cloned().unwrap_or_else(|| last.clone()))
            .collect();
        let seed = match get("EALI_NVML_SEED") {
            Some(s) => s
                .trim()
                .parse()
                .map_err(|_| format!("bad EALI_NVML_SEED `{s}`"))?,
            None => 1,
        };
        let faults = match get("EALI_NVML_FAULTS") {
            Some(f) => f
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(FaultSpec::parse)
                .collect::<Result<_, _>>()?,
            None => Vec::new(),
        };
        let flag = |k: &str| get(k).is_none_or(|v| v.trim() != "0");
        Ok(Self {
            profiles,
            seed,
            faults,
            driver_version: get("EALI_NVML_DRIVER_VERSION").unwrap_or_else(|| "550.127.05".into()),
            state_path: get("EALI_NVML_STATE").map(PathBuf::from),
            load_path: get("EALI_NVML_LOAD_FILE").map(PathBuf::from),
            fault_path: get("EALI_NVML_FAULT_FILE").map(PathBuf::from),
            power_fields: flag("EALI_NVML_POWER_FIELDS"),
            realtime: flag("EALI_NVML_REALTIME"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(vars: &[(&str, &str)]) -> Result<Config, String> {
        Config::parse(|k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        })
    }

    #[test]
    fn faults_parse_with_gpu_and_time() {
        let f = FaultSpec::parse("xid79/1@0.5").unwrap();
        assert_eq!(
            f,
            FaultSpec {
                kind: FaultKind::Xid(79),
                gpu: Some(1),
                at_s: 0.5
            }
        );
        assert!(f.applies_to(1) && !f.applies_to(0));
        let f = FaultSpec::parse("noperm").unwrap();
        assert_eq!(
            f,
            FaultSpec {
                kind: FaultKind::NoPermission,
                gpu: None,
                at_s: 0.0
            }
        );
        assert!(FaultSpec::parse("melt").is_err());
        assert!(FaultSpec::parse("xidZ").is_err());
        assert!(FaultSpec::parse("lost@-1").is_err());
    }

    #[test]
    fn fault_files_list_faults_and_skip_typos() {
        let f = parse_fault_file("lost/0\n dbe, melt\n\n");
        assert_eq!(
            f.iter().map(|f| (f.kind, f.gpu)).collect::<Vec<_>>(),
            [(FaultKind::Lost, Some(0)), (FaultKind::DoubleBitEcc, None)]
        );
        assert!(parse_fault_file("").is_empty());
    }

    #[test]
    fn profiles_repeat_the_last_to_the_gpu_count() {
        let c = cfg(&[("EALI_NVML_PROFILE", "t4,a100"), ("EALI_NVML_GPUS", "3")]).unwrap();
        assert_eq!(c.profiles, ["t4", "a100", "a100"]);
        let c = cfg(&[]).unwrap();
        assert_eq!(c.profiles, ["v100-sxm2"]);
        assert!(c.realtime && c.power_fields && c.faults.is_empty());
        assert!(cfg(&[("EALI_NVML_GPUS", "x")]).is_err());
        assert!(cfg(&[("EALI_NVML_FAULTS", "stuck/0,bogus")]).is_err());
    }
}
