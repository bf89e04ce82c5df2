//! The command line: the root parser, the kubectl-style option groups every subcommand shares,
//! the resolution of raw flags into a checked [`Options`], and the dispatch to the subcommand.
//!
//! This is the top of the plugin: it depends on every subcommand (each owns its `Args` next to
//! its code) and nothing depends on it. Adding a subcommand is a module, a variant of
//! [`Command`] and a match arm in [`run`].

use clap::{Args, CommandFactory, Parser, Subcommand};

use crate::ctx::Ctx;
use crate::error::{Error, Result};
use crate::options::{ColorChoice, Format, Options, Terminal, parse_timeout};
use crate::{completion, defrag, settings, status, sweep, toggle, version};

/// Exit codes, shown at the end of `--help`.
pub const EXIT_CODES: &str = "\
Exit codes:
  0  success (also when the output pipe is closed early, e.g. `| head`)
  1  other failure, e.g. an unexpected API error
  2  bad usage or invalid value (unknown flag, bad duration or rate limit)
  3  refused: valid but unsafe or pointless; --force may override
  4  no usable cluster: kubeconfig/context unusable, server unreachable, credentials rejected
  5  s2z not installed: the orgs.s2z.dev CRD is missing
  6  forbidden by RBAC: the message names the missing verb and resource
  7  unknown org
  8  timed out waiting for the s2z controller";

/// See and steer s2z, org-level scale to zero for Knative and KServe.
///
/// An org is the set of namespaces labelled s2z.dev/org=<org>. When it has had no activity for
/// the dormancy period, the s2z controller scales its pynodes and models to zero; activity wakes
/// it. This plugin shows where every org stands and changes it, without a second step: the
/// controller acts on every change within seconds.
#[derive(Debug, Parser)]
#[command(
    name = "kubectl-s2z",
    bin_name = "kubectl s2z",
    version,
    disable_help_subcommand = true,
    after_long_help = EXIT_CODES,
    max_term_width = 100
)]
pub struct Cli {
    /// Options shared by every subcommand.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show the settings and, per org, its state, activity, workloads, pods and GPUs held
    Status(status::Args),
    /// Allow orgs to scale to zero again
    Enable(toggle::Args),
    /// Exempt orgs from scale to zero; the controller wakes their workloads at once
    Disable(toggle::Args),
    /// Record activity for orgs now, which wakes dormant ones
    Wake(toggle::Args),
    /// Make orgs dormant now, until their next activity
    Sleep(toggle::Args),
    /// Show or change the dormancy period and the warm-up rate limit
    Settings(settings::Args),
    /// Run dormancy detection now: flip every org that is due
    Sweep(sweep::Args),
    /// Show the client's and the cluster webhook's versions
    Version(version::Args),
    /// Print a shell completion script
    Completion(completion::Args),
    /// Empty a GPU node safely: replacements start elsewhere before a human drains it
    Defrag(defrag::DefragArgs),
}

/// kubectl's connection flags and the output flags, accepted by every subcommand.
#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// Path to the kubeconfig file [default: $KUBECONFIG, else ~/.kube/config]
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        help_heading = "Kubernetes options"
    )]
    pub kubeconfig: Option<std::path::PathBuf>,
    /// The kubeconfig context to use [default: the current context]
    #[arg(
        long,
        global = true,
        value_name = "NAME",
        help_heading = "Kubernetes options"
    )]
    pub context: Option<String>,
    /// How long to wait for each API request; 0 waits forever (e.g. 30s, 2m)
    #[arg(
        long,
        global = true,
        value_name = "DURATION",
        default_value = "0",
        help_heading = "Kubernetes options"
    )]
    pub request_timeout: String,
    /// Return large lists in chunks of this many objects rather than all at once; 0 disables
    #[arg(
        long,
        global = true,
        value_name = "N",
        default_value_t = crate::client::DEFAULT_CHUNK_SIZE,
        help_heading = "Kubernetes options"
    )]
    pub chunk_size: u32,
    /// Namespace where s2z is installed (settings ConfigMap, controller Lease)
    #[arg(
        short = 'n',
        long,
        global = true,
        value_name = "NAMESPACE",
        env = "S2Z_NAMESPACE",
        hide_env_values = true,
        default_value = "s2z-system",
        help_heading = "Kubernetes options"
    )]
    pub namespace: String,
    /// Output format: a table, a wider table, or the documented JSON/YAML schema
    #[arg(
        short = 'o',
        long,
        global = true,
        value_enum,
        default_value_t = Format::Table,
        help_heading = "Output options"
    )]
    pub output: Format,
    /// When to use colours; NO_COLOR in the environment means never unless --color=always
    #[arg(
        long,
        global = true,
        value_enum,
        value_name = "WHEN",
        default_value_t = ColorChoice::Auto,
        help_heading = "Output options"
    )]
    pub color: ColorChoice,
}

impl GlobalArgs {
    /// Checks the raw flags.
    pub fn resolve(&self, terminal: &Terminal) -> Result<Options> {
        let request_timeout = parse_timeout("--request-timeout", &self.request_timeout)?;
        let namespace = self.namespace.trim().to_string();
        if namespace.is_empty() {
            return Err(Error::usage(
                "read --namespace",
                "it is empty",
                Some("name the namespace s2z is installed in, e.g. -n s2z-system".into()),
            ));
        }
        let no_color = terminal.no_color.as_deref();
        Ok(Options {
            kubeconfig: self.kubeconfig.clone(),
            context: self.context.clone().filter(|c| !c.is_empty()),
            request_timeout,
            chunk_size: (self.chunk_size > 0).then_some(self.chunk_size),
            namespace,
            format: self.output,
            color_stdout: self.color.enabled(terminal.stdout, no_color),
            color_stderr: self.color.enabled(terminal.stderr, no_color),
        })
    }
}

/// Runs the parsed command line.
pub async fn run(cli: Cli, terminal: &Terminal) -> Result<()> {
    let ctx = Ctx::new(cli.global.resolve(terminal)?);
    match cli.command {
        Command::Status(args) => status::run(&ctx, args).await,
        Command::Enable(args) => toggle::run(&ctx, toggle::Toggle::Enable, args).await,
        Command::Disable(args) => toggle::run(&ctx, toggle::Toggle::Disable, args).await,
        Command::Wake(args) => toggle::run(&ctx, toggle::Toggle::Wake, args).await,
        Command::Sleep(args) => toggle::run(&ctx, toggle::Toggle::Sleep, args).await,
        Command::Settings(args) => settings::run(&ctx, args).await,
        Command::Sweep(args) => sweep::run(&ctx, args).await,
        Command::Version(args) => version::run(&ctx, args).await,
        // Completion describes the whole command line, which only this module knows.
        Command::Completion(args) => completion::run(&ctx, args, Cli::command()),
        Command::Defrag(args) => defrag::run_cli(&ctx, args)
            .await
            .map(drop)
            .map_err(Error::from),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn parse(args: &[&str]) -> std::result::Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("kubectl-s2z").chain(args.iter().copied()))
    }

    fn options(args: &[&str], terminal: &Terminal) -> Options {
        match parse(args).map(|cli| cli.global.resolve(terminal)) {
            Ok(Ok(options)) => options,
            Ok(Err(e)) => panic!("{e}"),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn the_parser_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn defaults_follow_kubectl() {
        let o = options(&["status"], &Terminal::default());
        assert_eq!(o.kubeconfig, None);
        assert_eq!(o.context, None);
        assert_eq!(o.request_timeout, None, "0 means no timeout, as in kubectl");
        assert_eq!(o.chunk_size, Some(500), "kubectl's --chunk-size default");
        assert_eq!(o.format, Format::Table);
        assert!(!o.color_stdout);
    }

    #[test]
    fn chunk_size_zero_lists_at_once() {
        let terminal = Terminal::default();
        assert_eq!(
            options(&["status", "--chunk-size", "0"], &terminal).chunk_size,
            None
        );
        assert_eq!(
            options(&["--chunk-size=50", "status"], &terminal).chunk_size,
            Some(50)
        );
        let negative = parse(&["status", "--chunk-size", "-1"]).map(|_| ());
        assert!(negative.is_err(), "a negative chunk size is a usage error");
    }

    #[test]
    fn global_flags_go_before_or_after_the_subcommand() {
        let terminal = Terminal::default();
        let before = options(
            &[
                "--kubeconfig",
                "/tmp/kc",
                "--context",
                "prod",
                "--request-timeout",
                "5s",
                "-n",
                "ops",
                "-o",
                "json",
                "status",
            ],
            &terminal,
        );
        let after = options(
            &[
                "status",
                "--kubeconfig=/tmp/kc",
                "--context=prod",
                "--request-timeout=5",
                "--namespace=ops",
                "--output=json",
            ],
            &terminal,
        );
        assert_eq!(before, after);
        assert_eq!(before.request_timeout, Some(Duration::from_secs(5)));
        assert_eq!(before.namespace, "ops");
        assert_eq!(before.context.as_deref(), Some("prod"));
    }

    #[test]
    fn bad_request_timeout_is_a_usage_error() {
        let cli = parse(&["status", "--request-timeout", "soon"]);
        let err = cli.map(|c| c.global.resolve(&Terminal::default()));
        match err {
            Ok(Err(e)) => {
                assert_eq!(e.exit_code(), crate::error::exit::USAGE);
                assert!(
                    e.to_string()
                        .starts_with("failed to read --request-timeout: "),
                    "{e}"
                );
            }
            other => panic!("expected a usage error, got {other:?}"),
        }
    }

    #[test]
    fn color_honours_no_color_unless_forced() {
        let tty = |no_color: Option<&str>| Terminal {
            stdout: true,
            stderr: false,
            no_color: no_color.map(String::from),
        };
        assert!(options(&["status"], &tty(None)).color_stdout);
        assert!(
            !options(&["status"], &tty(None)).color_stderr,
            "stderr is not a tty"
        );
        assert!(!options(&["status"], &tty(Some("1"))).color_stdout);
        assert!(
            options(&["status"], &tty(Some(""))).color_stdout,
            "empty NO_COLOR is unset"
        );
        assert!(options(&["status", "--color=always"], &tty(Some("1"))).color_stdout);
        assert!(!options(&["status", "--color", "never"], &tty(None)).color_stdout);
        let pipe = Terminal::default();
        assert!(!options(&["status"], &pipe).color_stdout);
        assert!(options(&["status", "--color=always"], &pipe).color_stdout);
    }

    #[test]
    fn unknown_output_format_is_refused_by_the_parser() {
        let err = parse(&["status", "-o", "xml"]).err().map(|e| e.exit_code());
        assert_eq!(err, Some(2));
    }

    #[test]
    fn toggles_need_an_org() {
        for cmd in ["enable", "disable", "wake", "sleep"] {
            assert!(parse(&[cmd]).is_err(), "{cmd} without an org");
            assert!(parse(&[cmd, "acme"]).is_ok(), "{cmd} acme");
        }
    }
}
