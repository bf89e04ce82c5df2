//! `s2z-webhook`: parses flags, sets up logging and hands off to [`s2z_webhook::run`].

use std::process::ExitCode;

use clap::Parser;
use s2z_webhook::config::Args;

// mimalloc: an admission allocates a few dozen small objects (the parsed review, the patch, the
// response); with glibc's allocator, malloc and free were ~7% of the server's CPU under load
// (perf on `make bench-webhook`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    // Dropped when this returns, before `main` prints an error: queued log lines come first.
    let _log_writer = s2z_webhook::logging::init(config.log_format);
    s2z_webhook::run(config).await?;
    Ok(())
}
