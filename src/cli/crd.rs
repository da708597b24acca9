//! `eali crd`: prints the InferenceService CustomResourceDefinition generated from the Rust types.

use std::io::Write;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print JSON instead of YAML.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let text = if args.json {
        serde_json::to_string_pretty(&crate::k8s::crd::crd())? + "\n"
    } else {
        crate::k8s::crd::crd_yaml()?
    };
    std::io::stdout().lock().write_all(text.as_bytes())?;
    Ok(())
}
