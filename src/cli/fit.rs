//! `eali fit`: train and cross-validate the layer power prediction model from profile files,
//! print the comparison table and save the chosen model.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context as _, bail};

use super::profile::{default_profile_path, profile_model};
use crate::model::zoo;
use crate::perf::fit::{FitConfig, FitReport, fit_power_model};
use crate::perf::profile::Profile;
use crate::perf::profiler::ProfileConfig;

/// Zoo models `--profile-zoo` profiles: plain, residual, inception, dense and depthwise nets.
pub const ZOO_TRAINING_SET: [&str; 5] = [
    "alexnet",
    "resnet50",
    "googlenet",
    "densenet121",
    "mobilenet_v2",
];

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Profile files or directories of them (comma separated or repeated).
    #[arg(long, value_delimiter = ',', default_value = "out/profiles")]
    pub profiles: Vec<PathBuf>,
    /// Where to save the chosen model.
    #[arg(long, default_value = "out/power-model.json")]
    pub out: PathBuf,
    /// Seed for the fold split, row sampling and the tree ensembles.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Cross-validation folds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(2..))]
    pub folds: u32,
    /// Cap on training rows after de-duplication.
    #[arg(long, default_value_t = 3000)]
    pub max_rows: usize,
    /// Only use profiles of this GPU (name substring) when the inputs hold several GPUs.
    #[arg(long)]
    pub gpu: Option<String>,
    /// First profile several zoo models on a simulated GPU (written to out/profiles/).
    #[arg(long)]
    pub profile_zoo: bool,
    /// Backend for --profile-zoo.
    #[arg(long, default_value = "sim:v100")]
    pub zoo_gpu: String,
    /// Models for --profile-zoo.
    #[arg(long, value_delimiter = ',', default_values_t = ZOO_TRAINING_SET.map(String::from))]
    pub zoo_models: Vec<String>,
    /// Also write the full report as JSON to this file.
    #[arg(long)]
    pub report: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if args.profile_zoo {
        for (i, name) in args.zoo_models.iter().enumerate() {
            let graph = zoo::build(name)?;
            let cfg = ProfileConfig {
                backend: args.zoo_gpu.clone(),
                seed: Some(args.seed.wrapping_add(i as u64)),
                ..ProfileConfig::default()
            };
            let p = profile_model(&args.zoo_gpu, &graph, &cfg, false)?;
            let path = default_profile_path(&args.zoo_gpu, &graph.name);
            super::files::save_profile(&p, &path)?;
            eprintln!("wrote {} ({} records)", path.display(), p.records.len());
        }
    }
    let files = profile_files(&args.profiles)?;
    if files.is_empty() {
        bail!("{}", no_profiles_help(&args.profiles));
    }
    let mut profiles = Vec::with_capacity(files.len());
    for f in &files {
        profiles.push(super::files::load_profile(f)?);
    }
    let profiles = select_gpu(profiles, args.gpu.as_deref())?;
    let cfg = FitConfig {
        seed: args.seed,
        folds: args.folds as usize,
        max_rows: args.max_rows,
        ..FitConfig::default()
    };
    let (model, report) = fit_power_model(&profiles, &cfg).context("fitting the power model")?;
    super::files::save_power_model(&model, &args.out)?;
    print!("{}", render_report(&report));
    println!("saved -> {}", args.out.display());
    if let Some(path) = &args.report {
        super::files::write(path, &(serde_json::to_string_pretty(&report)? + "\n"))?;
    }
    Ok(())
}

/// JSON files named directly, or found (sorted, non-recursive) in named directories. A missing
/// path yields nothing, so the caller can explain how to make profiles.
fn profile_files(inputs: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in inputs {
        if p.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("reading {}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.extension().is_some_and(|x| x == "json"))
                .collect();
            found.sort();
            out.extend(found);
        } else if p.is_file() {
            out.push(p.clone());
        }
    }
    Ok(out)
}

fn no_profiles_help(inputs: &[PathBuf]) -> String {
    let mut s = format!(
        "no profile files found in {}.\nMake some first, for example:\n",
        inputs
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    for m in ZOO_TRAINING_SET {
        let _ = writeln!(s, "  eali profile --gpu sim:v100 --model {m}");
    }
    s.push_str("or run `eali fit --profile-zoo` to profile them on the simulated V100 and fit.");
    s
}

/// Keeps the profiles of one GPU: the one matching `filter`, or the only one present.
fn select_gpu(profiles: Vec<Profile>, filter: Option<&str>) -> anyhow::Result<Vec<Profile>> {
    let kept: Vec<Profile> = match filter {
        Some(f) => {
            let f = f.to_lowercase();
            profiles
                .into_iter()
                .filter(|p| {
                    p.gpu.name.to_lowercase().contains(&f)
                        || p.gpu.backend.to_lowercase().contains(&f)
                })
                .collect()
        }
        None => profiles,
    };
    let mut gpus: Vec<&str> = kept.iter().map(|p| p.gpu.name.as_str()).collect();
    gpus.sort_unstable();
    gpus.dedup();
    match gpus.len() {
        0 => bail!("no profiles match --gpu {}", filter.unwrap_or("")),
        1 => Ok(kept),
        _ => bail!(
            "profiles of several GPUs ({}): a power model is per GPU, choose one with --gpu",
            gpus.join(", ")
        ),
    }
}

/// The comparison table `eali fit` prints.
pub fn render_report(r: &FitReport) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "power model for {}: {} models ({}), {} records -> {} distinct rows, {} used; {}-fold CV, seed {}",
        r.gpu,
        r.models.len(),
        r.models.join(", "),
        r.records,
        r.distinct,
        r.rows,
        r.folds,
        r.seed
    );
    s.push('\n');
    let _ = writeln!(
        s,
        "{:<20} {:>11} {:>10} {:>13} {:>10}",
        "regressor",
        format!("{}-fold R²", r.folds),
        "RMSE (W)",
        "held-out R²",
        "RMSE (W)"
    );
    for c in &r.candidates {
        let (lr2, lrmse) = c
            .leave_one_model_out_mean
            .map_or(("-".to_string(), "-".to_string()), |m| {
                (format!("{:.4}", m.r2), format!("{:.2}", m.rmse))
            });
        let mark = if c.kind() == r.chosen { " *" } else { "" };
        let _ = writeln!(
            s,
            "{:<20} {:>11.4} {:>10.2} {:>13} {:>10}{mark}",
            c.kind().name(),
            c.cv.r2,
            c.cv.rmse,
            lr2,
            lrmse
        );
    }
    if r.candidates
        .iter()
        .any(|c| !c.leave_one_model_out.is_empty())
    {
        s.push('\n');
        let _ = write!(
            s,
            "leave-one-model-out, R² / RMSE (W):\n{:<16}",
            "held-out model"
        );
        for c in &r.candidates {
            let _ = write!(s, " {:>20}", c.kind().name());
        }
        s.push('\n');
        for (i, model) in r.models.iter().enumerate() {
            let _ = write!(s, "{model:<16}");
            for c in &r.candidates {
                let cell = c
                    .leave_one_model_out
                    .get(i)
                    .map_or("-".to_string(), |(_, sc)| {
                        format!("{:.4} / {:.2}", sc.r2, sc.rmse)
                    });
                let _ = write!(s, " {cell:>20}");
            }
            s.push('\n');
        }
        let _ = write!(s, "{:<16}", "mean");
        for c in &r.candidates {
            let cell = c
                .leave_one_model_out_mean
                .map_or("-".to_string(), |m| format!("{:.4} / {:.2}", m.r2, m.rmse));
            let _ = write!(s, " {cell:>20}");
        }
        s.push('\n');
    }
    let _ = writeln!(
        s,
        "\nchosen: {} (lowest {}-fold RMSE)",
        r.chosen.name(),
        r.folds
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_profiles_explain_how_to_make_them() {
        let dir = std::env::temp_dir().join("eali-fit-no-profiles-here");
        let files = profile_files(std::slice::from_ref(&dir)).unwrap();
        assert!(files.is_empty());
        let help = no_profiles_help(&[dir]);
        assert!(help.contains("eali profile --gpu sim:v100 --model resnet50"));
        assert!(help.contains("--profile-zoo"));
    }

    #[test]
    fn profile_files_are_found_sorted() {
        let dir = std::env::temp_dir().join(format!("eali-fit-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["b.json", "a.json", "notes.txt"] {
            std::fs::write(dir.join(f), "{}").unwrap();
        }
        let files = profile_files(std::slice::from_ref(&dir)).unwrap();
        let names: Vec<_> = files
            .iter()
            .map(|f| f.file_name().unwrap().to_owned())
            .collect();
        assert_eq!(names, ["a.json", "b.json"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
