//! `eali` command-line entry point: parses the subcommand and hands over to `eali::cli`.

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let cli = eali::cli::Cli::parse();
    eali::cli::run(cli)
}
