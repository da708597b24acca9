//! `eali calibrate`: runs the simulated GPU's calibration checks and prints each published
//! measurement next to the simulator's figure (the same table as `tests/calibration.rs`).

use std::io::Write as _;

use crate::gpu::sim::calibration;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only checks whose name contains this text (e.g. "zeus", "switch").
    #[arg(long)]
    pub only: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let mut checks = calibration::run_all()?;
    if let Some(f) = &args.only {
        checks.retain(|c| c.name.contains(f.as_str()));
    }
    let out = if args.json {
        serde_json::to_string_pretty(&checks)?
    } else {
        calibration::format_table(&checks)
    };
    match writeln!(std::io::stdout().lock(), "{out}") {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        other => other?,
    }
    let failed: Vec<&str> = checks
        .iter()
        .filter(|c| !c.pass)
        .map(|c| c.name.as_str())
        .collect();
    if !failed.is_empty() {
        anyhow::bail!(
            "{} calibration check(s) failed: {}",
            failed.len(),
            failed.join(", ")
        );
    }
    Ok(())
}
