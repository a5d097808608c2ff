//! Connection strings with libpq's TLS options, shared by the client and the HTTP gateway.
//!
//! The Rust driver (`postgres`/`tokio-postgres`) understands `sslmode=disable|prefer|require`
//! only, and never checks a server certificate by itself. [`PgConfig::parse`] accepts libpq's
//! options instead, removes the ones the driver does not know from the connection string
//! (both the `key=value` and the `postgres://` URL form), hands the rest to the driver, and
//! builds the TLS connector (OpenSSL, through `native-tls`) that enforces them:
//!
//! | `sslmode` | encrypted | server certificate checked |
//! |---|---|---|
//! | absent, `disable` | no | – |
//! | `prefer` | if the server supports TLS | against the root certificate, if there is one |
//! | `require` | yes | against the root certificate, if there is one (as libpq) |
//! | `verify-ca` | yes | chain against the root certificate (required) |
//! | `verify-full` | yes | chain against the root certificate (required), and the certificate must name the host |
//!
//! The root certificate is `sslrootcert=/path/to/ca.crt` (a PEM file, which may hold several
//! certificates), else `~/.postgresql/root.crt` when it exists, as libpq does.
//! `sslrootcert=system` uses the system's trusted roots and implies `verify-full` (libpq 16).
//! As with libpq, `sslmode` does not apply to Unix-socket connections. Unlike libpq, the
//! `PGSSLMODE`/`PGSSLROOTCERT` environment variables are not read, `sslmode=allow` and client
//! certificates (`sslcert`, `sslkey`) are not supported, and an absent `sslmode` means no TLS
//! (libpq's default is `prefer`).

use native_tls::{Certificate, Protocol, TlsConnector};
use postgres_native_tls::MakeTlsConnector;
use std::path::{Path, PathBuf};
use tokio_postgres::config::{Config, Host, SslMode as DriverSslMode};

/// libpq's `sslmode` values that are supported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// No TLS.
    Disable,
    /// TLS when the server supports it, else plain.
    Prefer,
    /// TLS; the certificate is checked only when a root certificate is available.
    Require,
    /// TLS, and the server's certificate chain must lead to the root certificate.
    VerifyCa,
    /// [`VerifyCa`](Self::VerifyCa), and the certificate must name the host connected to.
    VerifyFull,
}

impl SslMode {
    /// The value as written in a connection string.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    fn parse(value: &str) -> Result<SslMode, crate::Error> {
        Ok(match value {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            "allow" => {
                return Err(crate::Error::InvalidDsn(
                    "sslmode=allow is not supported; use disable, prefer, require, verify-ca \
                     or verify-full"
                        .into(),
                ))
            }
            _ => {
                return Err(crate::Error::InvalidDsn(
                    "invalid sslmode: use disable, prefer, require, verify-ca or verify-full"
                        .into(),
                ))
            }
        })
    }
}

/// Where the trusted root certificates come from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum RootCert {
    File(PathBuf),
    System,
}

/// A connection string with its TLS options resolved: the driver's configuration, and the TLS
/// connector to open connections with (none: plain connections, as with `NoTls`).
///
/// ```no_run
/// use dunetrace_client::tls::PgConfig;
/// let pg = PgConfig::parse(
///     "host=db.internal dbname=app user=agent sslmode=verify-full sslrootcert=/etc/ssl/db-ca.crt",
/// )?;
/// let mut client = pg.connect().expect("connect");
/// // The API key and the batch are bind parameters, never part of the SQL text.
/// let events = r#"[{"event_type": "run.started"}]"#;
/// client.query_one(
///     "SELECT dunetrace.ingest($1::text, $2::text::jsonb)::text",
///     &[&"dt_...", &events],
/// ).ok();
/// # Ok::<(), dunetrace_client::Error>(())
/// ```
#[derive(Clone)]
pub struct PgConfig {
    config: Config,
    ssl_mode: Option<SslMode>,
    tls: Option<MakeTlsConnector>,
}

impl std::fmt::Debug for PgConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The driver's Debug redacts the password.
        f.debug_struct("PgConfig")
            .field("config", &self.config)
            .field("ssl_mode", &self.ssl_mode)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl PgConfig {
    /// Parses a connection string (`key=value …` or `postgres://…`) with libpq's `sslmode`
    /// and `sslrootcert`; see the [module documentation](self). Reads the root certificate
    /// file now. Errors never repeat the connection string (it may hold a password).
    pub fn parse(dsn: &str) -> Result<PgConfig, crate::Error> {
        let (rest, opts) = extract(dsn);
        let mut config: Config = rest
            .parse()
            .map_err(|e: tokio_postgres::Error| crate::Error::InvalidDsn(e.to_string()))?;
        let explicit_root = opts.sslrootcert.as_deref().filter(|s| !s.is_empty());
        let mode = match opts.sslmode.as_deref() {
            Some(m) => Some(SslMode::parse(m)?),
            None if explicit_root == Some("system") => Some(SslMode::VerifyFull),
            None if explicit_root.is_some() => Some(SslMode::Prefer),
            None => None,
        };
        let Some(mode) = mode else {
            // No TLS options: exactly what NoTls did before.
            return Ok(PgConfig {
                config,
                ssl_mode: None,
                tls: None,
            });
        };
        let sockets_only = !config.get_hosts().is_empty()
            && config.get_hostaddrs().is_empty()
            && config
                .get_hosts()
                .iter()
                .all(|h| !matches!(h, Host::Tcp(_)));
        if mode == SslMode::Disable || sockets_only {
            // libpq ignores sslmode for Unix sockets (the server offers no TLS there).
            config.ssl_mode(DriverSslMode::Disable);
            return Ok(PgConfig {
                config,
                ssl_mode: Some(mode),
                tls: None,
            });
        }
        let root = resolve_root(mode, explicit_root, default_root_cert())?;
        let connector = build_connector(mode, root.as_ref())?;
        config.ssl_mode(match mode {
            SslMode::Prefer => DriverSslMode::Prefer,
            _ => DriverSslMode::Require,
        });
        Ok(PgConfig {
            config,
            ssl_mode: Some(mode),
            tls: Some(MakeTlsConnector::new(connector)),
        })
    }

    /// The driver's configuration (its `sslmode` is `disable`, `prefer` or `require`).
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The driver's configuration, e.g. to set timeouts.
    pub fn config_mut(&mut self) -> &mut Config {
        &mut self.config
    }

    /// The `sslmode` asked for; `None` when the connection string has none (no TLS).
    pub fn ssl_mode(&self) -> Option<SslMode> {
        self.ssl_mode
    }

    /// The TLS connector; `None` means plain connections (use `NoTls`).
    pub fn tls(&self) -> Option<&MakeTlsConnector> {
        self.tls.as_ref()
    }

    /// Opens one blocking connection, with TLS as configured.
    pub fn connect(&self) -> Result<postgres::Client, postgres::Error> {
        self.connect_with(&postgres::Config::from(self.config.clone()))
    }

    /// Opens one blocking connection with `config` (this configuration's, adjusted) and this
    /// configuration's TLS.
    pub(crate) fn connect_with(
        &self,
        config: &postgres::Config,
    ) -> Result<postgres::Client, postgres::Error> {
        match &self.tls {
            Some(tls) => config.connect(tls.clone()),
            None => config.connect(postgres::NoTls),
        }
    }
}

/// The root certificate for `mode`: `sslrootcert` if given, else `default` when it exists.
fn resolve_root(
    mode: SslMode,
    explicit: Option<&str>,
    default: Option<PathBuf>,
) -> Result<Option<RootCert>, crate::Error> {
    match explicit {
        Some("system") if mode != SslMode::VerifyFull => Err(crate::Error::Tls(format!(
            "sslmode={} may not be used with sslrootcert=system (use verify-full)",
            mode.as_str()
        ))),
        Some("system") => Ok(Some(RootCert::System)),
        Some(path) => Ok(Some(RootCert::File(PathBuf::from(path)))),
        None => match default {
            Some(p) if p.exists() => Ok(Some(RootCert::File(p))),
            _ if matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull) => {
                let looked = default
                    .map(|p| format!("; {} does not exist", p.display()))
                    .unwrap_or_default();
                Err(crate::Error::Tls(format!(
                    "sslmode={} checks the server's certificate against a root certificate: \
                     set sslrootcert=/path/to/ca.crt (or sslrootcert=system for the system's \
                     trusted roots){looked}",
                    mode.as_str()
                )))
            }
            _ => Ok(None),
        },
    }
}

fn default_root_cert() -> Option<PathBuf> {
    let home = std::env::var_os("HOME").filter(|h| !h.is_empty())?;
    Some(Path::new(&home).join(".postgresql").join("root.crt"))
}

fn build_connector(mode: SslMode, root: Option<&RootCert>) -> Result<TlsConnector, crate::Error> {
    let mut b = TlsConnector::builder();
    // libpq's default ssl_min_protocol_version.
    b.min_protocol_version(Some(Protocol::Tlsv12));
    match root {
        Some(RootCert::File(path)) => {
            let pem = std::fs::read(path).map_err(|e| {
                crate::Error::Tls(format!("cannot read sslrootcert {}: {e}", path.display()))
            })?;
            let certs = Certificate::stack_from_pem(&pem).map_err(|e| {
                crate::Error::Tls(format!(
                    "sslrootcert {} holds no PEM certificate: {e}",
                    path.display()
                ))
            })?;
            if certs.is_empty() {
                return Err(crate::Error::Tls(format!(
                    "sslrootcert {} holds no PEM certificate",
                    path.display()
                )));
            }
            // Only these roots, as libpq: not the system's.
            b.disable_built_in_roots(true);
            for c in certs {
                b.add_root_certificate(c);
            }
        }
        Some(RootCert::System) => {}
        None => {
            b.danger_accept_invalid_certs(true);
        }
    }
    if mode != SslMode::VerifyFull {
        b.danger_accept_invalid_hostnames(true);
    }
    b.build()
        .map_err(|e| crate::Error::Tls(format!("cannot set up TLS: {e}")))
}

/// A driver error for logs and [`Stats::last_error`](crate::Stats::last_error): the SQLSTATE
/// and message of a server error, and a plain explanation of a failed TLS handshake. Never
/// holds the connection string or its password.
pub fn describe_error(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        return format!("{} {}", db.code().code(), db.message());
    }
    match tls_cause(e) {
        Some(t) => {
            let t = t.to_string();
            let hint = if t.contains("certificate verify failed") {
                let lower = t.to_ascii_lowercase();
                if lower.contains("hostname mismatch") || lower.contains("ip address mismatch") {
                    "the server's certificate does not name the host connected to \
                     (sslmode=verify-full)"
                } else {
                    "the server's certificate could not be verified against sslrootcert"
                }
            } else {
                "the TLS handshake with the server failed"
            };
            format!("{hint}: {t}")
        }
        None => e.to_string(),
    }
}

/// Whether `e` is a failed TLS handshake (e.g. a certificate that failed verification).
pub fn is_tls_error(e: &tokio_postgres::Error) -> bool {
    tls_cause(e).is_some()
}

fn tls_cause(e: &tokio_postgres::Error) -> Option<&native_tls::Error> {
    std::iter::successors(std::error::Error::source(e), |s| s.source())
        .find_map(|s| s.downcast_ref::<native_tls::Error>())
}

/// The TLS options taken out of a connection string.
#[derive(Debug, Default, PartialEq, Eq)]
struct TlsOptions {
    sslmode: Option<String>,
    sslrootcert: Option<String>,
}

fn is_ours(key: &str) -> bool {
    key == "sslmode" || key == "sslrootcert"
}

/// Removes `sslmode` and `sslrootcert` from a connection string, as the driver would split it;
/// the last occurrence wins. A string the driver cannot parse is returned unchanged, for the
/// driver to report.
fn extract(dsn: &str) -> (String, TlsOptions) {
    let parsed = ["postgres://", "postgresql://"]
        .iter()
        .find_map(|p| dsn.strip_prefix(p).map(|rest| dsn.len() - rest.len()))
        .map_or_else(|| extract_kv(dsn), |start| extract_url(dsn, start));
    parsed.unwrap_or_else(|| (dsn.to_string(), TlsOptions::default()))
}

/// The `key=value` form, tokenized as `tokio_postgres::Config`'s parser does.
fn extract_kv(dsn: &str) -> Option<(String, TlsOptions)> {
    let b: Vec<(usize, char)> = dsn.char_indices().collect();
    let at = |i: usize| b.get(i).map(|&(_, c)| c);
    let pos = |i: usize| b.get(i).map_or(dsn.len(), |&(p, _)| p);
    let mut opts = TlsOptions::default();
    let mut out = String::with_capacity(dsn.len());
    let mut copied = 0; // byte offset up to which `dsn` has been copied to `out`
    let mut i = 0;
    loop {
        while at(i).is_some_and(char::is_whitespace) {
            i += 1;
        }
        let start = i;
        while at(i).is_some_and(|c| !c.is_whitespace() && c != '=') {
            i += 1;
        }
        if i == start {
            break;
        }
        let key = &dsn[pos(start)..pos(i)];
        while at(i).is_some_and(char::is_whitespace) {
            i += 1;
        }
        if at(i) != Some('=') {
            return None;
        }
        i += 1;
        while at(i).is_some_and(char::is_whitespace) {
            i += 1;
        }
        let mut value = String::new();
        if at(i) == Some('\'') {
            i += 1;
            loop {
                match at(i)? {
                    '\'' => break,
                    '\\' => {
                        i += 1;
                        if let Some(c) = at(i) {
                            value.push(c);
                            i += 1;
                        }
                    }
                    c => {
                        value.push(c);
                        i += 1;
                    }
                }
            }
            i += 1; // the closing quote
        } else {
            while let Some(c) = at(i).filter(|c| !c.is_whitespace()) {
                i += 1;
                if c == '\\' {
                    if let Some(c2) = at(i) {
                        value.push(c2);
                        i += 1;
                    }
                } else {
                    value.push(c);
                }
            }
            if value.is_empty() {
                return None;
            }
        }
        if is_ours(key) {
            out.push_str(&dsn[copied..pos(start)]);
            copied = pos(i);
            if key == "sslmode" {
                opts.sslmode = Some(value);
            } else {
                opts.sslrootcert = Some(value);
            }
        }
    }
    out.push_str(&dsn[copied..]);
    Some((out, opts))
}

/// The URL form: parameters after the `?` (the first one after the credentials, as the
/// driver splits it), percent-encoded, separated by `&`.
fn extract_url(dsn: &str, body: usize) -> Option<(String, TlsOptions)> {
    let rest = &dsn[body..];
    let after_creds = rest.find('@').map_or(0, |p| p + 1);
    let Some(q) = rest[after_creds..].find('?') else {
        return Some((dsn.to_string(), TlsOptions::default()));
    };
    let q = body + after_creds + q;
    let mut opts = TlsOptions::default();
    let mut kept: Vec<&str> = Vec::new();
    let mut s = &dsn[q + 1..];
    while !s.is_empty() {
        let eq = s.find('=')?;
        let key = percent_decode(&s[..eq])?;
        let after = &s[eq + 1..];
        let (value, next) = match after.find('&') {
            Some(amp) => (&after[..amp], &after[amp + 1..]),
            None => (after, ""),
        };
        let param = &s[..s.len() - next.len()];
        let param = param.strip_suffix('&').unwrap_or(param);
        if is_ours(&key) {
            let value = percent_decode(value)?;
            if key == "sslmode" {
                opts.sslmode = Some(value);
            } else {
                opts.sslrootcert = Some(value);
            }
        } else {
            kept.push(param);
        }
        s = next;
    }
    let mut out = dsn[..q].to_string();
    if !kept.is_empty() {
        out.push('?');
        out.push_str(&kept.join("&"));
    }
    Some((out, opts))
}

/// `%XX` decoding into UTF-8; `None` for invalid UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(s: &str) -> (String, Option<String>, Option<String>) {
        let (rest, o) = extract(s);
        (rest, o.sslmode, o.sslrootcert)
    }

    #[test]
    fn key_value_form() {
        assert_eq!(
            ex("host=db sslmode=verify-full sslrootcert=/etc/ca.crt dbname=app"),
            (
                "host=db   dbname=app".into(),
                Some("verify-full".into()),
                Some("/etc/ca.crt".into())
            )
        );
        assert_eq!(
            ex("sslrootcert = '/path with space/it\\'s.crt'  password='a b' sslmode=require"),
            (
                "  password='a b' ".into(),
                Some("require".into()),
                Some("/path with space/it's.crt".into())
            )
        );
        // The last one wins, as in the driver; other keys are left exactly as they were.
        assert_eq!(
            ex("sslmode=disable host=x sslmode=prefer"),
            (" host=x ".into(), Some("prefer".into()), None)
        );
        assert_eq!(ex("host=x"), ("host=x".into(), None, None));
        // Keys that merely contain the word are not ours.
        assert_eq!(
            ex("host=x xsslmode=y"),
            ("host=x xsslmode=y".into(), None, None)
        );
        // Unparseable: unchanged, for the driver to report.
        assert_eq!(
            ex("host=x sslmode='unterminated"),
            ("host=x sslmode='unterminated".into(), None, None)
        );
    }

    #[test]
    fn url_form() {
        assert_eq!(
            ex("postgres://u:p%40ss@db:5432/app?sslmode=verify-ca&sslrootcert=%2Fetc%2Fca.crt"),
            (
                "postgres://u:p%40ss@db:5432/app".into(),
                Some("verify-ca".into()),
                Some("/etc/ca.crt".into())
            )
        );
        assert_eq!(
            ex("postgresql://db/app?application_name=x&sslmode=require&connect_timeout=3"),
            (
                "postgresql://db/app?application_name=x&connect_timeout=3".into(),
                Some("require".into()),
                None
            )
        );
        // A '?' in the password is not the start of the parameters.
        assert_eq!(
            ex("postgres://u:a?b@db/app?sslmode=require"),
            (
                "postgres://u:a?b@db/app".into(),
                Some("require".into()),
                None
            )
        );
        assert_eq!(
            ex("postgres://db/app"),
            ("postgres://db/app".into(), None, None)
        );
        assert_eq!(
            ex("postgres://db/app?sslmode=prefer&"),
            ("postgres://db/app".into(), Some("prefer".into()), None)
        );
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("%2Fa%20b%").as_deref(), Some("/a b%"));
        assert_eq!(percent_decode("%zz%4").as_deref(), Some("%zz%4"));
        assert_eq!(percent_decode("%ff"), None);
    }

    #[test]
    fn modes_without_a_server() {
        let p = PgConfig::parse("host=db dbname=app").unwrap();
        assert_eq!(p.ssl_mode(), None);
        assert!(p.tls().is_none());

        let p = PgConfig::parse("host=db sslmode=disable").unwrap();
        assert_eq!(p.ssl_mode(), Some(SslMode::Disable));
        assert!(p.tls().is_none());
        assert_eq!(p.config().get_ssl_mode(), DriverSslMode::Disable);

        let p = PgConfig::parse("postgres://db/app?sslmode=require").unwrap();
        assert_eq!(p.ssl_mode(), Some(SslMode::Require));
        assert!(p.tls().is_some());
        assert_eq!(p.config().get_ssl_mode(), DriverSslMode::Require);

        let p = PgConfig::parse("host=db sslmode=prefer").unwrap();
        assert_eq!(p.config().get_ssl_mode(), DriverSslMode::Prefer);
        assert!(p.tls().is_some());

        // Unix sockets: sslmode does not apply (libpq).
        let p = PgConfig::parse("host=/var/run/postgresql sslmode=verify-full").unwrap();
        assert_eq!(p.config().get_ssl_mode(), DriverSslMode::Disable);
        assert!(p.tls().is_none());

        let p = PgConfig::parse("host=db sslrootcert=system").unwrap();
        assert_eq!(p.ssl_mode(), Some(SslMode::VerifyFull));
        assert!(PgConfig::parse("host=db sslmode=verify-ca sslrootcert=system").is_err());
    }

    #[test]
    fn errors_are_clear_and_never_echo_the_password() {
        let err = |s: &str| PgConfig::parse(s).unwrap_err().to_string();
        let e = err("host=db password=hunter2 sslmode=verify-fully");
        assert!(e.contains("verify-full"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        let e = err("host=db password=hunter2 sslmode=allow");
        assert!(e.contains("allow"), "{e}");
        let e =
            err("postgres://u:hunter2@db/app?sslmode=verify-ca&sslrootcert=/nonexistent/ca.crt");
        assert!(e.contains("/nonexistent/ca.crt"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        let e = err("host=db password=hunter2 sslfoo=1");
        assert!(!e.contains("hunter2"), "{e}");

        let dir = std::env::temp_dir().join(format!("dunetrace-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bad = dir.join("not-a-cert.pem");
        std::fs::write(&bad, "hello").unwrap();
        let e = err(&format!(
            "host=db sslmode=verify-full sslrootcert={}",
            bad.display()
        ));
        assert!(e.contains("no PEM certificate"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn root_certificates() {
        let missing = Some(PathBuf::from("/nonexistent/.postgresql/root.crt"));
        for mode in [SslMode::VerifyCa, SslMode::VerifyFull] {
            let e = resolve_root(mode, None, missing.clone())
                .unwrap_err()
                .to_string();
            assert!(e.contains("set sslrootcert="), "{e}");
            assert!(
                e.contains("/nonexistent/.postgresql/root.crt does not exist"),
                "{e}"
            );
            assert!(resolve_root(mode, None, None).is_err());
        }
        for mode in [SslMode::Prefer, SslMode::Require] {
            assert_eq!(resolve_root(mode, None, missing.clone()).unwrap(), None);
            assert!(resolve_root(mode, Some("system"), None).is_err());
        }
        let here = std::env::current_exe().unwrap();
        assert_eq!(
            resolve_root(SslMode::Require, None, Some(here.clone())).unwrap(),
            Some(RootCert::File(here))
        );
        assert_eq!(
            resolve_root(SslMode::VerifyCa, Some("/a/ca.crt"), None).unwrap(),
            Some(RootCert::File("/a/ca.crt".into()))
        );
        assert_eq!(
            resolve_root(SslMode::VerifyFull, Some("system"), None).unwrap(),
            Some(RootCert::System)
        );
    }
}
