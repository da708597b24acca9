//! Driver state that outlives a process, as the kernel driver keeps it on a real machine: clock
//! locks, application clocks, power limits and the energy counter survive the process that set
//! them (that is what makes a crashed agent dangerous). Kept in a JSON file named by
//! `EALI_NVML_STATE`, rewritten atomically (temp file + rename) after every change, so a process
//! killed at any moment leaves either the old or the new state (a power cut may lose the last
//! change: there is no fsync). One process at a time is meant
//! to use a state file (a test starts, kills and restarts processes in turn).
//!
//! The file also carries an operation log (who changed what, when), which the crash-recovery
//! tests read to check that a restarted agent reset the clocks before doing anything else.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Entries kept in the operation log (oldest dropped first).
const LOG_CAP: usize = 2000;

/// Settings of one GPU that the driver keeps across processes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuSettings {
    pub uuid: String,
    /// Locked graphics clock range (MHz), as requested.
    pub locked: Option<(u32, u32)>,
    /// Application graphics clock (MHz).
    pub app_mhz: Option<u32>,
    /// Locked memory clock range (MHz), Ampere and newer.
    pub mem_locked: Option<(u32, u32)>,
    pub power_limit_w: f64,
    pub auto_boost: bool,
    /// Energy counted by earlier processes (mJ): the counter runs since driver load, not since
    /// a process started.
    pub energy_base_mj: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    pub pid: u32,
    /// Milliseconds since the Unix epoch.
    pub unix_ms: u64,
    /// Microseconds since the Unix epoch (the same instant, finer: to compare with unit
    /// boundaries of a few milliseconds).
    #[serde(default)]
    pub unix_us: u64,
    pub gpu: u32,
    /// `init`, `lock MIN-MAX`, `reset-lock`, `app MEM,GR`, `reset-app`, `mem-lock MIN-MAX`,
    /// `reset-mem-lock`, `power-limit W`, `auto-boost on|off`, or `denied OP` / `failed OP`.
    pub op: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PersistedState {
    pub gpus: Vec<GpuSettings>,
    pub log: Vec<LogEntry>,
}

impl PersistedState {
    /// Reads the state; a missing file is a fresh driver.
    pub fn load(path: &Path) -> Result<Self, String> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| format!("stand-in state {} does not parse: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(format!(
                "cannot read stand-in state {}: {e}",
                path.display()
            )),
        }
    }

    pub fn save(&self, path: &Path) -> Result<(), String> {
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            // No fsync: the rename is atomic against a killed process (the case tested), and an
            // fsync would add milliseconds to every simulated set-clock call.
            f.write_all(&serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?)?;
            std::fs::rename(&tmp, path)
        };
        write().map_err(|e| format!("cannot write stand-in state {}: {e}", path.display()))
    }

    pub fn push_log(&mut self, gpu: u32, op: String) {
        let unix_us = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
        self.log.push(LogEntry {
            pid: std::process::id(),
            unix_ms: unix_us / 1000,
            unix_us,
            gpu,
            op,
        });
        if self.log.len() > LOG_CAP {
            let excess = self.log.len() - LOG_CAP;
            self.log.drain(..excess);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_missing_file_is_fresh() {
        let dir = std::env::temp_dir().join(format!("nvml-standin-state-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.json");
        assert_eq!(
            PersistedState::load(&path).unwrap(),
            PersistedState::default()
        );
        let mut s = PersistedState::default();
        s.gpus.push(GpuSettings {
            uuid: "GPU-x".into(),
            locked: Some((300, 300)),
            app_mhz: None,
            mem_locked: None,
            power_limit_w: 250.0,
            auto_boost: true,
            energy_base_mj: 42,
        });
        s.push_log(0, "lock 300-300".into());
        s.save(&path).unwrap();
        assert_eq!(PersistedState::load(&path).unwrap(), s);
        std::fs::write(&path, b"{not json").unwrap();
        assert!(PersistedState::load(&path).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
