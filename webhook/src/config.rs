//! Command-line flags, resolved into a checked [`Config`] before anything starts.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// The s2z webhook: mutates new Knative Revisions to match their org's scale-to-zero state.
#[derive(Debug, Parser)]
#[command(name = "s2z-webhook", version)]
pub struct Args {
    /// Address of the TLS port (/mutate, /noop, /version).
    #[arg(long, env = "S2Z_TLS_ADDR", default_value = "0.0.0.0:8443")]
    pub tls_addr: SocketAddr,

    /// Address of the plain-HTTP port (/healthz, /readyz, /metrics).
    #[arg(long, env = "S2Z_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,

    /// PEM certificate chain served on the TLS port; re-read when it changes.
    #[arg(long, env = "S2Z_TLS_CERT_FILE")]
    pub tls_cert_file: PathBuf,

    /// PEM private key of the certificate; re-read when it changes.
    #[arg(long, env = "S2Z_TLS_KEY_FILE")]
    pub tls_key_file: PathBuf,

    /// Install namespace, where the `s2z-settings` ConfigMap lives.
    #[arg(long, env = "S2Z_NAMESPACE", default_value = "s2z-system")]
    pub namespace: String,

    /// Namespace of Knative Serving, where `config-autoscaler` lives.
    #[arg(long, env = "S2Z_KNATIVE_NAMESPACE", default_value = "knative-serving")]
    pub knative_namespace: String,

    /// Log format.
    #[arg(long, env = "S2Z_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// After SIGTERM, how long to keep serving while reporting not-ready, so load balancers
    /// stop sending traffic before the listeners close (e.g. "5s").
    #[arg(long, env = "S2Z_SHUTDOWN_DELAY", default_value = "0s", value_parser = humantime::parse_duration)]
    pub shutdown_delay: Duration,

    /// After the listeners close, how long in-flight requests get to finish.
    #[arg(long, env = "S2Z_DRAIN_TIMEOUT", default_value = "20s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
}

/// How logs are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable lines.
    Text,
}

/// A checked configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Address of the TLS port.
    pub tls_addr: SocketAddr,
    /// Address of the plain-HTTP port.
    pub metrics_addr: SocketAddr,
    /// Certificate file.
    pub tls_cert_file: PathBuf,
    /// Key file.
    pub tls_key_file: PathBuf,
    /// Install namespace.
    pub namespace: String,
    /// Knative Serving namespace.
    pub knative_namespace: String,
    /// Log format.
    pub log_format: LogFormat,
    /// Not-ready period before the listeners close.
    pub shutdown_delay: Duration,
    /// Time given to in-flight requests.
    pub drain_timeout: Duration,
}

/// A flag value that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A namespace flag is not a valid namespace name.
    #[error("failed to use --{flag} {value:?}: not a valid namespace name (RFC 1123 label)")]
    Namespace {
        /// The flag.
        flag: &'static str,
        /// Its value.
        value: String,
    },
    /// Both ports are the same.
    #[error("failed to use --tls-addr and --metrics-addr: both are {0}")]
    SameAddr(SocketAddr),
}

impl Args {
    /// Checks the flags.
    pub fn resolve(self) -> Result<Config, ConfigError> {
        for (flag, value) in [
            ("namespace", &self.namespace),
            ("knative-namespace", &self.knative_namespace),
        ] {
            if !is_dns_label(value) {
                return Err(ConfigError::Namespace {
                    flag,
                    value: value.clone(),
                });
            }
        }
        if self.tls_addr == self.metrics_addr {
            return Err(ConfigError::SameAddr(self.tls_addr));
        }
        Ok(Config {
            tls_addr: self.tls_addr,
            metrics_addr: self.metrics_addr,
            tls_cert_file: self.tls_cert_file,
            tls_key_file: self.tls_key_file,
            namespace: self.namespace,
            knative_namespace: self.knative_namespace,
            log_format: self.log_format,
            shutdown_delay: self.shutdown_delay,
            drain_timeout: self.drain_timeout,
        })
    }
}

fn is_dns_label(s: &str) -> bool {
    let bytes = s.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(extra: &[&str]) -> Result<Config, String> {
        let base = [
            "s2z-webhook",
            "--tls-cert-file",
            "c.pem",
            "--tls-key-file",
            "k.pem",
        ];
        let args = Args::try_parse_from(base.iter().chain(extra)).map_err(|e| e.to_string())?;
        args.resolve().map_err(|e| e.to_string())
    }

    #[test]
    fn defaults() {
        let config = parse(&[]).expect("valid");
        assert_eq!(config.namespace, "s2z-system");
        assert_eq!(config.knative_namespace, "knative-serving");
        assert_eq!(config.metrics_addr.port(), 8080);
        assert_eq!(config.tls_addr.port(), 8443);
        assert_eq!(config.log_format, LogFormat::Text);
    }

    #[test]
    fn rejects_bad_values() {
        assert!(parse(&["--namespace", "Bad_NS"]).is_err());
        assert!(parse(&["--log-format", "xml"]).is_err());
        let err = parse(&[
            "--tls-addr",
            "0.0.0.0:9000",
            "--metrics-addr",
            "0.0.0.0:9000",
        ])
        .expect_err("same");
        assert!(err.contains("both are"), "{err}");
        assert!(parse(&["--drain-timeout", "3s", "--log-format", "json"]).is_ok());
    }

    #[test]
    fn cert_flags_are_required() {
        assert!(Args::try_parse_from(["s2z-webhook"]).is_err());
    }
}
