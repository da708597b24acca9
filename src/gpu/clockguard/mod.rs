//! Clock safety: a GPU is never left at a locked low clock (`docs/architecture.md`, "Contracts").
//!
//! - [`ClockGuard`] keeps an on-disk [`LockRecord`] of the clock settings this node's agent has
//!   made. An entry is written and synced *before* the NVML call that locks a GPU, and removed
//!   after the reset, so whatever moment a process dies at, the record names every GPU it may
//!   have left locked.
//! - At start, [`ClockGuard::recover`] resets every GPU a previous instance left in the record,
//!   before anything else touches the clocks.
//! - On normal exit ([`ClockGuard::reset_all`], also run by [`ClockActuator`]'s shutdown and
//!   drop), on SIGTERM/SIGINT and on panic ([`ClockGuard::install_exit_hooks`]) every recorded
//!   GPU is reset. SIGKILL cannot be caught: that is what the start-time recovery is for.
//! - Clock changes run on a dedicated thread ([`ClockActuator`]) fed by a queue: the batch path
//!   never blocks on NVML's 4–5 ms call, superseded requests are dropped, and a request for the
//!   clock already in force is skipped.
//!
//! Resets go through a [`ClockResetter`], which opens the GPU afresh by UUID, so a reset from a
//! signal or panic hook never waits on a lock held by the thread that was interrupted.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use serde::Serialize;

use crate::gpu::GpuError;

mod actuator;
mod record;
#[cfg(test)]
mod tests;

pub use crate::gpu::ClockTarget;
pub use actuator::{ActuatorStats, ClockActuator, ClockEvent};
pub use record::{DEFAULT_RECORD, LockEntry, LockKind, LockRecord, RECORD_ENV};

#[derive(Debug, thiserror::Error)]
pub enum ClockGuardError {
    #[error("clock lock record {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("clock lock record {path} is corrupt ({reason}); every GPU will be reset")]
    Corrupt { path: PathBuf, reason: String },
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

/// Returns a GPU to its default clocks. Implemented over NVML by
/// [`crate::gpu::nvml::NvmlResetter`] and by test doubles.
pub trait ClockResetter: Send + Sync + 'static {
    /// Undoes the setting `entry` describes.
    fn reset(&self, entry: &LockEntry) -> Result<(), GpuError>;
    /// Every GPU of the node with the setting kinds it supports: what is reset when the record
    /// cannot be read.
    fn all_gpus(&self) -> Result<Vec<LockEntry>, GpuError>;
}

/// What a recovery or exit reset did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ResetReport {
    /// Settings reset: (uuid, kind, pid that made them).
    pub reset: Vec<(String, LockKind, u32)>,
    /// Settings whose reset failed, with why; they stay in the record.
    pub failed: Vec<(String, LockKind, String)>,
    /// The record could not be read, so every GPU was reset.
    pub record_was_corrupt: bool,
}

impl ResetReport {
    pub fn is_clean(&self) -> bool {
        self.failed.is_empty()
    }
}

/// The clock-safety record and its reset paths.
pub struct ClockGuard {
    path: PathBuf,
    record: Mutex<LockRecord>,
    resetter: Arc<dyn ClockResetter>,
}

impl std::fmt::Debug for ClockGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClockGuard")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl ClockGuard {
    /// Opens the record at `path` and resets whatever a previous instance left locked. Call this
    /// before anything else changes clocks.
    pub fn start(
        path: &Path,
        resetter: Arc<dyn ClockResetter>,
    ) -> Result<(Arc<Self>, ResetReport), ClockGuardError> {
        let guard = Arc::new(Self {
            path: path.to_path_buf(),
            record: Mutex::new(LockRecord::default()),
            resetter,
        });
        let report = guard.recover()?;
        Ok((guard, report))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn record(&self) -> MutexGuard<'_, LockRecord> {
        self.record.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Resets every setting in the on-disk record (all GPUs if the record is corrupt) and keeps
    /// only the ones whose reset failed.
    pub fn recover(&self) -> Result<ResetReport, ClockGuardError> {
        let (entries, corrupt) = match LockRecord::load(&self.path) {
            Ok(r) => (r.entries, false),
            Err(ClockGuardError::Corrupt { .. }) => {
                let all = self.resetter.all_gpus().unwrap_or_default();
                (all, true)
            }
            Err(e) => return Err(e),
        };
        let (mut report, failed) = self.reset_entries(entries, corrupt);
        report.record_was_corrupt = corrupt;
        let mut rec = self.record();
        rec.entries = failed;
        rec.save(&self.path)?;
        Ok(report)
    }

    /// Resets `entries`; with `tolerate_unsupported`, a kind the GPU lacks counts as reset.
    /// Returns the report and the entries whose reset failed.
    fn reset_entries(
        &self,
        entries: Vec<LockEntry>,
        tolerate_unsupported: bool,
    ) -> (ResetReport, Vec<LockEntry>) {
        let mut report = ResetReport::default();
        let mut failed = Vec::new();
        for e in entries {
            match self.resetter.reset(&e) {
                Ok(()) => report.reset.push((e.uuid.clone(), e.kind, e.pid)),
                Err(GpuError::NotSupported { .. }) if tolerate_unsupported => {}
                // A lost GPU cannot be reset (its clocks return to default when the driver
                // reloads it); it stays recorded like any other failure, for the next start.
                Err(err) => {
                    report
                        .failed
                        .push((e.uuid.clone(), e.kind, err.to_string()));
                    failed.push(e);
                }
            }
        }
        (report, failed)
    }

    /// Records a setting before it is made (write-ahead): if this fails, do not make it.
    pub fn before_set(&self, entry: LockEntry) -> Result<(), ClockGuardError> {
        let mut rec = self.record();
        rec.upsert(entry);
        rec.save(&self.path)
    }

    /// Clears a setting after it was undone.
    pub fn after_reset(&self, uuid: &str, kind: LockKind) -> Result<(), ClockGuardError> {
        let mut rec = self.record();
        if rec.remove(uuid, kind) {
            rec.save(&self.path)?;
        }
        Ok(())
    }

    /// The settings currently recorded.
    pub fn locked(&self) -> Vec<LockEntry> {
        self.record().entries.clone()
    }

    /// Resets every recorded setting (normal exit, signals, panic); failures stay recorded for
    /// the next start.
    pub fn reset_all(&self) -> ResetReport {
        // A panic while the record lock is held must not stop the reset: read it anyway.
        let entries = match self.record.try_lock() {
            Ok(r) => r.entries.clone(),
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner().entries.clone(),
            Err(std::sync::TryLockError::WouldBlock) => LockRecord::load(&self.path)
                .map(|r| r.entries)
                .unwrap_or_default(),
        };
        let (report, _) = self.reset_entries(entries, false);
        if let Ok(mut rec) = self.record.try_lock() {
            for (uuid, kind, _) in &report.reset {
                rec.remove(uuid, *kind);
            }
            let _ = rec.save(&self.path);
        }
        report
    }

    /// Resets on SIGTERM/SIGINT (then dies of the signal, as without the handler) and on panic
    /// (then runs the previous panic hook). Call once per process.
    pub fn install_exit_hooks(self: &Arc<Self>) -> Result<(), ClockGuardError> {
        use signal_hook::consts::{SIGINT, SIGTERM};
        let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])
            .map_err(ClockGuardError::Signals)?;
        let guard = Arc::clone(self);
        std::thread::Builder::new()
            .name("eali-clock-signals".into())
            .spawn(move || {
                if let Some(sig) = signals.forever().next() {
                    let report = guard.reset_all();
                    eprintln!(
                        "eali: signal {sig}: reset clocks of {} GPU setting(s)",
                        report.reset.len()
                    );
                    for (uuid, kind, err) in &report.failed {
                        eprintln!("eali: could not reset {kind:?} clocks of {uuid}: {err}");
                    }
                    let _ = signal_hook::low_level::emulate_default_handler(sig);
                    std::process::exit(128 + sig);
                }
            })
            .map_err(ClockGuardError::Signals)?;
        let guard = Arc::clone(self);
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let report = guard.reset_all();
            eprintln!(
                "eali: panic: reset clocks of {} GPU setting(s)",
                report.reset.len()
            );
            previous(info);
        }));
        Ok(())
    }
}
