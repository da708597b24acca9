//! The on-disk record of clock settings this node's agent has made: written (and synced) before
//! a GPU is locked, cleared after it is reset. A record that outlives its process names exactly
//! the GPUs a crashed agent may have left locked.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::ClockGuardError;

/// Environment variable overriding where the record lives.
pub const RECORD_ENV: &str = "EALI_CLOCK_RECORD";
/// Where the record lives by default: tmpfs, so a reboot (which also resets every clock) clears it.
pub const DEFAULT_RECORD: &str = "/run/eali/clock-locks.json";

/// Which clock setting an entry holds; each is reset its own way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LockKind {
    /// `nvmlDeviceSetGpuLockedClocks` (Volta and newer).
    Graphics,
    /// `nvmlDeviceSetApplicationsClocks` (older parts).
    Application,
    /// `nvmlDeviceSetMemoryLockedClocks` (Ampere and newer).
    Memory,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LockEntry {
    pub uuid: String,
    /// NVML index when the entry was written (the UUID is what identifies the GPU).
    pub index: u32,
    pub kind: LockKind,
    pub min_mhz: u32,
    pub max_mhz: u32,
    /// Process that made the setting.
    pub pid: u32,
    pub since_unix_ms: u64,
}

impl LockEntry {
    pub fn new(uuid: &str, index: u32, kind: LockKind, min_mhz: u32, max_mhz: u32) -> Self {
        let since_unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        Self {
            uuid: uuid.to_string(),
            index,
            kind,
            min_mhz,
            max_mhz,
            pid: std::process::id(),
            since_unix_ms,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LockRecord {
    pub entries: Vec<LockEntry>,
}

impl LockRecord {
    /// The record path: `explicit`, else `$EALI_CLOCK_RECORD`, else [`DEFAULT_RECORD`].
    pub fn path(explicit: Option<&Path>) -> PathBuf {
        explicit
            .map(Path::to_path_buf)
            .or_else(|| {
                std::env::var_os(RECORD_ENV)
                    .filter(|v| !v.is_empty())
                    .map(PathBuf::from)
            })
            .unwrap_or_else(|| PathBuf::from(DEFAULT_RECORD))
    }

    /// Reads the record; a missing file is an empty record.
    pub fn load(path: &Path) -> Result<Self, ClockGuardError> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| ClockGuardError::Corrupt {
                path: path.to_path_buf(),
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(source) => Err(ClockGuardError::Io {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Writes the record durably: temp file, fsync, rename, fsync of the directory, so a crash
    /// at any point leaves the old or the new record, never a torn one.
    pub fn save(&self, path: &Path) -> Result<(), ClockGuardError> {
        let io = |source| ClockGuardError::Io {
            path: path.to_path_buf(),
            source,
        };
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(io)?;
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| io(std::io::Error::other(e)))?;
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(&bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)?;
        if let Ok(d) = std::fs::File::open(dir) {
            // Directory fsync makes the rename durable; not every filesystem supports it.
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Adds or replaces the entry for (uuid, kind).
    pub fn upsert(&mut self, entry: LockEntry) {
        match self
            .entries
            .iter_mut()
            .find(|e| e.uuid == entry.uuid && e.kind == entry.kind)
        {
            Some(e) => *e = entry,
            None => self.entries.push(entry),
        }
    }

    /// Removes the entry for (uuid, kind); whether there was one.
    pub fn remove(&mut self, uuid: &str, kind: LockKind) -> bool {
        let before = self.entries.len();
        self.entries.retain(|e| !(e.uuid == uuid && e.kind == kind));
        self.entries.len() != before
    }

    pub fn contains(&self, uuid: &str, kind: LockKind) -> bool {
        self.entries
            .iter()
            .any(|e| e.uuid == uuid && e.kind == kind)
    }
}
