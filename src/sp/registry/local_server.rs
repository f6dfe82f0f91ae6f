//! A PostgreSQL server of its own, in a temporary dir on a loopback port: for the tests, the
//! bench, and trying several SP nodes on one machine. It is Debian's (or the image's)
//! PostgreSQL, started the way an admin would: `initdb` with SCRAM passwords, then `postgres`
//! listening on 127.0.0.1 only.
//!
//! `initdb` and `postgres` refuse to run as root; as root the server runs as the `postgres`
//! user (`setpriv`). It stops, and its dir is removed, when this value is dropped, and also
//! when the process that started it dies however it dies: a small shell keeps the server and
//! stops it when its standard input (a pipe from this process) closes.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::postgres::PgTarget;

/// The database user the throwaway server is made with, and its password.
pub const USER: &str = "rac";

pub struct LocalPostgres {
    /// The keeper shell (its stdin is the pipe whose closing stops the server).
    keeper: Child,
    /// Keepers of servers that could not bind their port (exited; their pipes stay open).
    spent: Vec<Child>,
    port: u16,
    password: String,
    data: PathBuf,
    _dir: tempfile::TempDir,
}

/// Where PostgreSQL's server programs are: on `PATH`, or Debian's versioned directory.
fn server_bin(name: &str) -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").into_iter().flat_map(|p| {
        std::env::split_paths(&p)
            .map(|dir| dir.join(name))
            .collect::<Vec<_>>()
    });
    let debian = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|version| version.path().join("bin").join(name));
    on_path.chain(debian).find(|p| p.is_file())
}

/// Whether this machine can start one (PostgreSQL's server programs are installed).
pub fn available() -> bool {
    server_bin("initdb").is_some() && server_bin("postgres").is_some()
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

/// `program` as the `postgres` user when this process is root.
fn as_server_user(program: &Path, root: bool) -> Command {
    if root {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=postgres", "--regid=postgres", "--init-groups"])
            .arg(program);
        c
    } else {
        Command::new(program)
    }
}

impl LocalPostgres {
    /// Makes a new cluster and starts it; waits until it takes connections.
    pub fn start() -> Result<Self> {
        let initdb = server_bin("initdb").context(
            "PostgreSQL's initdb is not installed (Debian: apt-get install postgresql-15)",
        )?;
        let postgres = server_bin("postgres").context("PostgreSQL's server is not installed")?;
        let root = running_as_root();
        let dir = tempfile::Builder::new().prefix("rac-pg-").tempdir()?;
        let data = dir.path().join("data");
        let password = crate::sp::auth::random_hex_32();
        let pwfile = dir.path().join("pwfile");
        std::fs::File::create(&pwfile)?.write_all(password.as_bytes())?;
        if root {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()?;
            if !status.success() {
                bail!("chown of {} to postgres failed", dir.path().display());
            }
        }
        let out = as_server_user(&initdb, root)
            .args(["--auth=scram-sha-256", "--encoding=UTF8", "--no-sync"])
            .arg(format!("--username={USER}"))
            .arg(format!("--pwfile={}", pwfile.display()))
            .arg("-D")
            .arg(&data)
            .output()
            .context("running initdb")?;
        if !out.status.success() {
            bail!(
                "initdb failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        // PostgreSQL cannot be given port 0: try ports below Linux's ephemeral range (so no
        // socket bound to port 0 takes one meanwhile) until one binds. A keeper whose server
        // could not bind is kept, its pipe open, so that it does not remove the dir.
        let mut spent = Vec::new();
        let mut last_error = None;
        for _ in 0..8 {
            let port = rand::random_range(20_000..32_000);
            let mut keeper = keep(&postgres, &data, dir.path(), port, root)?;
            match wait_ready(&mut keeper, port, &password, dir.path()) {
                Ok(()) => {
                    return Ok(LocalPostgres {
                        keeper,
                        spent,
                        port,
                        password,
                        data,
                        _dir: dir,
                    });
                }
                Err(e) => {
                    last_error = Some(e);
                    spent.push(keeper);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("PostgreSQL did not start")))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn password(&self) -> &str {
        &self.password
    }

    /// The URL of database `db` (no password in it: see [`password`](Self::password)).
    pub fn url(&self, db: &str) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{db}", self.port)
    }

    /// A target for database `db`, with the password.
    pub fn target(&self, db: &str) -> PgTarget {
        PgTarget::new(&self.url(db), Some(&self.password)).expect("a URL of our own making")
    }

    /// Runs `sql` on the `postgres` database as the server's superuser.
    fn admin(&self, sql: &str) -> Result<()> {
        admin_sql(self.port, &self.password, sql)
    }

    /// Stops the server (PostgreSQL's fast shutdown), keeping its data: what a node sees
    /// when its database goes away. [`restart`](Self::restart) brings it back on the same port.
    pub fn stop(&mut self) -> Result<()> {
        let pid_file = std::fs::read_to_string(self.data.join("postmaster.pid"))
            .context("the server is not running")?;
        let pid = pid_file
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_string();
        let status = Command::new("kill").args(["-INT", &pid]).status()?;
        if !status.success() {
            bail!("kill -INT {pid} failed");
        }
        // The keeper exits with the server. (Not `wait()`: it closes the keeper's pipe
        // first, which would remove the data.)
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.keeper.try_wait()?.is_none() {
            if Instant::now() > deadline {
                bail!("PostgreSQL did not stop within a minute");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Starts a stopped server again on its port (the data kept).
    pub fn restart(&mut self) -> Result<()> {
        let postgres = server_bin("postgres").context("PostgreSQL's server is not installed")?;
        let keeper = keep(
            &postgres,
            &self.data,
            self._dir.path(),
            self.port,
            running_as_root(),
        )?;
        // The old keeper keeps its pipe until the end, so it does not remove the dir now.
        self.spent.push(std::mem::replace(&mut self.keeper, keeper));
        wait_ready(
            &mut self.keeper,
            self.port,
            &self.password,
            self._dir.path(),
        )
    }

    /// Creates an empty database named `db`.
    pub fn create_database(&self, db: &str) -> Result<()> {
        crate::wire::validate_name(db)?;
        self.admin(&format!("CREATE DATABASE \"{db}\""))
            .with_context(|| format!("creating database {db}"))
    }
}

impl Drop for LocalPostgres {
    fn drop(&mut self) {
        drop(self.keeper.stdin.take());
        let _ = self.keeper.wait();
        for spent in &mut self.spent {
            let _ = spent.wait();
        }
    }
}

/// Runs `sql` on the `postgres` database of the server on `port`, as its superuser. On a
/// thread of its own: the blocking client must not run on an async runtime's thread (a test's).
fn admin_sql(port: u16, password: &str, sql: &str) -> Result<()> {
    let url = format!("postgres://{USER}@127.0.0.1:{port}/postgres");
    let config = PgTarget::new(&url, Some(password))?.config;
    std::thread::scope(|s| {
        s.spawn(|| -> Result<()> {
            let mut client = config.connect(postgres::NoTls)?;
            client.batch_execute(sql)?;
            Ok(())
        })
        .join()
        .unwrap_or_else(|_| bail!("the PostgreSQL client thread panicked"))
    })
}

/// Waits until the server on `port` takes connections; fails at once if its keeper exited
/// (the server could not bind its port), with what the server logged.
fn wait_ready(keeper: &mut Child, port: u16, password: &str, dir: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = keeper.try_wait()? {
            let log = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
            bail!(
                "PostgreSQL on port {port} exited ({status}): {}",
                log.trim()
            );
        }
        match admin_sql(port, password, "SELECT 1") {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() > deadline => {
                bail!("PostgreSQL on port {port} did not start: {e:#}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Starts the server under a keeper shell, which stops it (fast shutdown: SIGINT, without
/// waiting for clients) and removes `dir` when its standard input, a pipe from this process,
/// closes: when the `LocalPostgres` is dropped, or this process exits however it exits (a
/// server kept for a whole test process is never dropped). The keeper itself exits when the
/// server does, so a server that could not bind its port is seen at once.
fn keep(postgres: &Path, data: &Path, dir: &Path, port: u16, root: bool) -> Result<Child> {
    // (A background list's standard input is /dev/null unless redirected: hence fd 3.)
    let script = r#"dir="$1"; server="$2"; shift 2; exec 3<&0
"$server" "$@" 2>"$dir/log" & pid=$!
( read _ <&3; kill -INT $pid; while kill -0 $pid 2>/dev/null; do sleep 0.1; done; rm -rf "$dir" ) &
wait $pid"#;
    as_server_user(Path::new("/bin/sh"), root)
        .args(["-c", script, "keeper"])
        .arg(dir)
        .arg(postgres)
        .arg("-D")
        .arg(data)
        .args(["-p", &port.to_string(), "-k"])
        .arg(dir)
        .args([
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "max_connections=200",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting postgres")
}
