//! A throwaway PostgreSQL 15 cluster with `ssl = on`, for the TLS tests of the client and the
//! gateway (the gateway's tests include this file by path). No extension is needed: a TLS
//! handshake and `pg_stat_ssl` are all these tests look at.
//!
//! At start it makes, in a fresh temporary directory owned by the `postgres` OS user: a CA
//! (`ca.crt`), a server certificate for `localhost` only (DNS name, no IP address) signed by
//! it, and a second, unrelated CA (`other-ca.crt`); then `initdb`, and starts the server on a
//! free TCP port (from 54371 up) on 127.0.0.1 with its Unix socket in the directory. The
//! cluster is stopped and the directory removed when the guard is dropped, also when a test
//! fails. Runs the PostgreSQL binaries with `runuser -u postgres --` when the tests run as
//! root, directly otherwise.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Debian's PostgreSQL 15 binaries (override with `DUNETRACE_TEST_PG_BIN`).
fn pg_bin() -> PathBuf {
    std::env::var_os("DUNETRACE_TEST_PG_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A running cluster; stopped and removed on drop.
pub struct TlsCluster {
    pub dir: PathBuf,
    pub port: u16,
    as_postgres: bool,
    started: bool,
}

impl TlsCluster {
    /// Creates and starts the cluster; panics with the reason (and the server log) if it
    /// cannot.
    pub fn start() -> TlsCluster {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let dir =
            std::env::temp_dir().join(format!("dunetrace-tls-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the cluster directory");
        let mut cluster = TlsCluster {
            dir,
            port: 0,
            as_postgres: is_root(),
            started: false,
        };
        cluster.make_certificates();
        if cluster.as_postgres {
            run(Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&cluster.dir));
        }
        cluster.initdb();
        cluster.port = free_port();
        cluster.configure();
        cluster.pg_ctl_start();
        cluster.wait_ready();
        cluster
    }

    /// Path of a file in the cluster directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The CA that signed the server certificate.
    pub fn ca(&self) -> PathBuf {
        self.path("ca.crt")
    }

    /// A CA that did not sign it.
    pub fn other_ca(&self) -> PathBuf {
        self.path("other-ca.crt")
    }

    /// A key=value connection string to `host` over TCP, plus `extra`.
    pub fn dsn(&self, host: &str, extra: &str) -> String {
        format!(
            "host={host} port={} user=postgres dbname=postgres connect_timeout=10 {extra}",
            self.port
        )
    }

    fn pg_command(&self, bin: &str) -> Command {
        let path = pg_bin().join(bin);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    fn openssl(&self, args: &[&str]) {
        run(Command::new("openssl").args(args).current_dir(&self.dir));
    }

    fn make_certificates(&self) {
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        for (name, cn) in [
            ("ca", "dunetrace test CA"),
            ("other-ca", "unrelated test CA"),
        ] {
            let key = format!("{name}.key");
            let crt = format!("{name}.crt");
            let subj = format!("/CN={cn}");
            let mut args = vec!["req", "-x509"];
            args.extend(ec);
            args.extend([
                "-keyout",
                &key,
                "-out",
                &crt,
                "-days",
                "2",
                "-subj",
                &subj,
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ]);
            self.openssl(&args);
        }
        let mut args = vec!["req", "-new"];
        args.extend(ec);
        args.extend([
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ]);
        self.openssl(&args);
        std::fs::write(
            self.path("server.ext"),
            "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n\
             keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ]);
        // The server refuses a key readable by others.
        set_mode(&self.path("server.key"), 0o600);
    }

    fn initdb(&self) {
        let data = self.path("data");
        run(self.pg_command("initdb").arg("-D").arg(&data).args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
        ]));
    }

    fn configure(&self) {
        use std::io::Write;
        let conf = format!(
            "port = {port}\n\
             listen_addresses = '127.0.0.1'\n\
             unix_socket_directories = '{dir}'\n\
             ssl = on\n\
             ssl_cert_file = '{dir}/server.crt'\n\
             ssl_key_file = '{dir}/server.key'\n\
             fsync = off\n\
             max_connections = 20\n\
             shared_buffers = '16MB'\n",
            port = self.port,
            dir = self.dir.display()
        );
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(self.path("data/postgresql.conf"))
            .expect("open postgresql.conf");
        f.write_all(conf.as_bytes()).unwrap();
    }

    fn pg_ctl_start(&mut self) {
        let status = self
            .pg_command("pg_ctl")
            .arg("-D")
            .arg(self.path("data"))
            .arg("-l")
            .arg(self.path("log"))
            .args(["-w", "-t", "60", "start"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run pg_ctl start");
        // Stop it on drop even if pg_ctl gave up waiting.
        self.started = true;
        assert!(status.success(), "pg_ctl start failed:\n{}", self.log());
    }

    /// Waits (at most 60 s) until the server accepts TCP connections.
    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = self
                .pg_command("pg_isready")
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-t", "5"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the TLS test cluster never became ready:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The server log, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path("log")).unwrap_or_default()
    }
}

impl Drop for TlsCluster {
    fn drop(&mut self) {
        if self.started {
            let _ = self
                .pg_command("pg_ctl")
                .arg("-D")
                .arg(self.path("data"))
                .args(["-w", "-t", "60", "-m", "fast", "stop"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A TCP port on 127.0.0.1 nothing listens on, from 54371 up.
fn free_port() -> u16 {
    (54371..54471)
        .find(|p| TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("no free port in 54371..54471")
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn run(cmd: &mut Command) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
