//! Command-line flags, resolved into a checked [`Config`] before anything starts.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Parser, ValueEnum};

use crate::controller::target::KnativeVersion;

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

    /// Run the dormancy controller on the replica that holds the `s2z-controller` Lease. With
    /// `false` this replica only serves the webhook and the activity endpoint.
    #[arg(long, env = "S2Z_CONTROLLER", default_value_t = true, action = ArgAction::Set)]
    pub controller: bool,

    /// Only Orgs matching this label selector are served: watched, reconciled, mutated for and
    /// accepted activity for (sharding, or isolating tests). Default: every Org.
    #[arg(long, env = "S2Z_ORG_SELECTOR")]
    pub org_selector: Option<String>,

    /// How long a Lease is honoured after its holder's last renewal: the longest a failover
    /// takes.
    #[arg(long, env = "S2Z_LEASE_DURATION", default_value = "15s", value_parser = humantime::parse_duration)]
    pub lease_duration: Duration,

    /// How long the leader keeps leading while renewals fail; shorter than --lease-duration.
    #[arg(long, env = "S2Z_RENEW_DEADLINE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub renew_deadline: Duration,

    /// How often candidates try to take the Lease and the leader renews it.
    #[arg(long, env = "S2Z_RETRY_PERIOD", default_value = "2s", value_parser = humantime::parse_duration)]
    pub retry_period: Duration,

    /// This replica's identity in the Lease. Default: $POD_NAME, else <hostname>_<pid>.
    #[arg(long, env = "POD_NAME")]
    pub leader_id: Option<String>,

    /// Knative Serving release (e.g. 1.20): <= 1.20 patches PodAutoscalers, >= 1.21 Revisions.
    /// Default: read from the Knative namespace's labels; when unknown, Revisions.
    #[arg(long, env = "S2Z_KNATIVE_VERSION")]
    pub knative_version: Option<KnativeVersion>,

    /// Count a dormant org's PodAutoscaler going from 0 to more desired pods (traffic through
    /// the activator) as activity, which wakes the org.
    #[arg(long, env = "S2Z_WAKE_ON_TRAFFIC", default_value_t = false, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub wake_on_traffic: bool,

    /// How long TokenReview and SubjectAccessReview answers of the activity endpoint are reused.
    #[arg(long, env = "S2Z_AUTH_CACHE_TTL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub auth_cache_ttl: Duration,

    /// At shutdown, how long pending activity gets to be written.
    #[arg(long, env = "S2Z_ACTIVITY_FLUSH_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub activity_flush_timeout: Duration,
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
    /// Whether this replica campaigns for the controller Lease.
    pub controller: bool,
    /// Label selector restricting the Orgs served.
    pub org_selector: Option<String>,
    /// Lease duration.
    pub lease_duration: Duration,
    /// Renew deadline.
    pub renew_deadline: Duration,
    /// Retry period.
    pub retry_period: Duration,
    /// Identity in the Lease.
    pub leader_id: String,
    /// Knative release, when given.
    pub knative_version: Option<KnativeVersion>,
    /// Wake-on-traffic.
    pub wake_on_traffic: bool,
    /// Auth cache lifetime.
    pub auth_cache_ttl: Duration,
    /// Shutdown flush budget for pending activity.
    pub activity_flush_timeout: Duration,
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
    /// The leader-election durations cannot work together.
    #[error(
        "failed to use --lease-duration {lease:?}, --renew-deadline {renew:?} and --retry-period {retry:?}: they must satisfy lease-duration > renew-deadline > retry-period > 0"
    )]
    LeaseTiming {
        /// --lease-duration.
        lease: Duration,
        /// --renew-deadline.
        renew: Duration,
        /// --retry-period.
        retry: Duration,
    },
    /// The org selector is empty.
    #[error(
        "failed to use --org-selector {0:?}: give a label selector such as team=ml, or omit the flag"
    )]
    OrgSelector(String),
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
        if !(self.lease_duration > self.renew_deadline
            && self.renew_deadline > self.retry_period
            && !self.retry_period.is_zero())
        {
            return Err(ConfigError::LeaseTiming {
                lease: self.lease_duration,
                renew: self.renew_deadline,
                retry: self.retry_period,
            });
        }
        if let Some(selector) = &self.org_selector
            && selector.trim().is_empty()
        {
            return Err(ConfigError::OrgSelector(selector.clone()));
        }
        let leader_id = self
            .leader_id
            .filter(|id| !id.trim().is_empty())
            .unwrap_or_else(default_identity);
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
            controller: self.controller,
            org_selector: self.org_selector,
            lease_duration: self.lease_duration,
            renew_deadline: self.renew_deadline,
            retry_period: self.retry_period,
            leader_id,
            knative_version: self.knative_version,
            wake_on_traffic: self.wake_on_traffic,
            auth_cache_ttl: self.auth_cache_ttl,
            activity_flush_timeout: self.activity_flush_timeout,
        })
    }
}

/// `<hostname>_<pid>`: unique among replicas on one host, readable in the Lease.
fn default_identity() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "s2z-webhook".to_string());
    format!("{host}_{}", std::process::id())
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
    fn controller_flags() {
        let config = parse(&[]).expect("valid");
        assert!(config.controller);
        assert_eq!(config.lease_duration, Duration::from_secs(15));
        assert_eq!(config.renew_deadline, Duration::from_secs(10));
        assert_eq!(config.retry_period, Duration::from_secs(2));
        assert!(!config.wake_on_traffic);
        assert!(config.org_selector.is_none());
        assert!(!config.leader_id.is_empty());
        let config = parse(&[
            "--controller=false",
            "--wake-on-traffic",
            "--knative-version",
            "v1.20.2",
            "--org-selector",
            "s2z.dev/test=a",
            "--leader-id",
            "pod-1",
            "--lease-duration=3s",
            "--renew-deadline=2s",
            "--retry-period=500ms",
        ])
        .expect("valid");
        assert!(!config.controller);
        assert!(config.wake_on_traffic);
        assert_eq!(
            config.knative_version.map(|v| v.to_string()).as_deref(),
            Some("1.20")
        );
        assert_eq!(config.org_selector.as_deref(), Some("s2z.dev/test=a"));
        assert_eq!(config.leader_id, "pod-1");
        let err = parse(&["--renew-deadline=20s"]).expect_err("renew > lease");
        assert!(err.contains("lease-duration > renew-deadline"), "{err}");
        assert!(parse(&["--knative-version", "latest"]).is_err());
        assert!(parse(&["--org-selector", " "]).is_err());
    }

    #[test]
    fn cert_flags_are_required() {
        assert!(Args::try_parse_from(["s2z-webhook"]).is_err());
    }
}
