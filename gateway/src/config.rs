//! Command-line flags, each with an environment variable.

use clap::{Parser, ValueEnum};
use std::net::SocketAddr;
use std::time::Duration;

/// How log lines are written (to stderr).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable text.
    Text,
}

/// The gateway's configuration.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "dunetrace-gateway",
    version,
    about = "HTTP ingest gateway for dunetrace: accepts the original Python SDK's POST /v1/ingest \
             and stores each batch with dunetrace.ingest()"
)]
pub struct Config {
    /// PostgreSQL connection string (URL or key=value form) of the database that has the
    /// dunetrace extension. Connect as a role that is a member of dunetrace_ingest.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,

    /// Address to listen on (port 0 picks a free port; the log line "listening" names it).
    #[arg(long, env = "DUNETRACE_GATEWAY_BIND", default_value = "127.0.0.1:8001")]
    pub bind: SocketAddr,

    /// Most database connections the gateway keeps open.
    #[arg(long, env = "DUNETRACE_GATEWAY_POOL_SIZE", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub pool_size: u32,

    /// How long a request waits for a free database connection (and for a new connection to
    /// be made) before it is answered 503.
    #[arg(
        long,
        env = "DUNETRACE_GATEWAY_POOL_TIMEOUT_MS",
        default_value_t = 5000
    )]
    pub pool_timeout_ms: u64,

    /// Largest request body accepted, in bytes; larger requests are answered 413.
    #[arg(long, env = "DUNETRACE_GATEWAY_MAX_BODY_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Seconds sent in the Retry-After header of 503 answers.
    #[arg(long, env = "DUNETRACE_GATEWAY_RETRY_AFTER_SECS", default_value_t = 5)]
    pub retry_after_secs: u64,

    /// After SIGTERM or SIGINT, how long in-flight requests may take before the gateway exits
    /// anyway.
    #[arg(
        long,
        env = "DUNETRACE_GATEWAY_SHUTDOWN_TIMEOUT_SECS",
        default_value_t = 30
    )]
    pub shutdown_timeout_secs: u64,

    /// Log format; the level filter comes from RUST_LOG (default "info").
    #[arg(
        long,
        env = "DUNETRACE_GATEWAY_LOG_FORMAT",
        value_enum,
        default_value = "json"
    )]
    pub log_format: LogFormat,
}

impl Config {
    pub fn pool_timeout(&self) -> Duration {
        Duration::from_millis(self.pool_timeout_ms)
    }

    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.shutdown_timeout_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults() {
        let c = Config::try_parse_from(["gw", "--database-url", "host=x dbname=y"]).unwrap();
        assert_eq!(c.bind, "127.0.0.1:8001".parse().unwrap());
        assert_eq!(c.pool_size, 10);
        assert_eq!(c.max_body_bytes, 4 * 1024 * 1024);
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.pool_timeout(), Duration::from_secs(5));
    }

    #[test]
    fn flags_override() {
        let c = Config::try_parse_from([
            "gw",
            "--database-url",
            "postgres://u@h/db",
            "--bind",
            "0.0.0.0:9000",
            "--pool-size",
            "3",
            "--max-body-bytes",
            "1024",
            "--log-format",
            "text",
        ])
        .unwrap();
        assert_eq!(c.bind.port(), 9000);
        assert_eq!(c.pool_size, 3);
        assert_eq!(c.max_body_bytes, 1024);
        assert_eq!(c.log_format, LogFormat::Text);
        assert!(Config::try_parse_from(["gw", "--database-url", "x", "--pool-size", "0"]).is_err());
    }
}
