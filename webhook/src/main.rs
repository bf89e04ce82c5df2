//! `s2z-webhook`: parses flags, sets up logging and hands off to [`s2z_webhook::run`].

use std::process::ExitCode;

use clap::Parser;
use s2z_webhook::config::Args;

#[tokio::main]
async fn main() -> ExitCode {
    match try_main().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // Every error of the library says what failed and why; its sources would repeat it.
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn try_main() -> anyhow::Result<()> {
    let config = Args::parse().resolve()?;
    s2z_webhook::logging::init(config.log_format);
    s2z_webhook::run(config).await?;
    Ok(())
}
