//! Child processes of the benchmark (the SP and the cloud gateways, each its own `rac`), and
//! what `/proc` says about their CPU time and memory.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

/// Clock ticks per second of `/proc/<pid>/stat` times (`getconf CLK_TCK`; 100 on Linux).
const CLK_TCK: f64 = 100.0;

/// A `rac` child process that prints `<marker> ADDR` on stderr once it listens.
pub struct RacProcess {
    child: Child,
    pub addr: SocketAddr,
    /// When the listening line was seen.
    pub listening_at: Instant,
}

impl RacProcess {
    /// Starts `rac <args>`; waits for the line that starts with `marker` and parses the
    /// address after it. The rest of stderr goes to `log`.
    pub fn spawn(
        args: &[String],
        env: &[(String, String)],
        marker: &str,
        log: &Path,
    ) -> Result<Self> {
        let exe = executable()?;
        let mut child = Command::new(&exe)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {} {}", exe.display(), args.join(" ")))?;
        let stderr = child.stderr.take().context("child stderr")?;
        let (tx, rx) = std::sync::mpsc::channel();
        let wanted = marker.to_string();
        let log_file = log.to_path_buf();
        // Drains stderr for the child's whole life (a full pipe would stall it) into `log`.
        std::thread::spawn(move || {
            use std::io::Write;
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_file)
                .ok();
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.strip_prefix(&wanted)
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send((rest.trim().to_string(), Instant::now()));
                }
                if let Some(f) = file.as_mut() {
                    let _ = writeln!(f, "{line}");
                }
            }
        });
        let (addr, listening_at) = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(pair) => pair,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "{} did not start (no {marker:?} line); see {}",
                    args.join(" "),
                    log.display()
                );
            }
        };
        let addr = addr
            .parse()
            .with_context(|| format!("parsing the listening address {addr:?}"))?;
        Ok(RacProcess {
            child,
            addr,
            listening_at,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, as a crash would; waits for the process to be gone.
    pub fn kill(&mut self) -> Result<()> {
        self.child.kill().context("killing the child")?;
        self.child.wait().context("waiting for the killed child")?;
        Ok(())
    }

    pub fn cpu_secs(&self) -> Result<f64> {
        cpu_secs(self.pid())
    }

    pub fn rss_kib(&self) -> Result<u64> {
        rss_kib(self.pid())
    }
}

impl Drop for RacProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `rac` binary the children run: a copy of this one made at the first spawn, so that a
/// rebuild of the target dir during a run cannot pull it away (or change it) between the SP's
/// first start and its restart. The copy lives in a fresh temp dir with an unpredictable name,
/// created exclusively and private to this user (0700): a fixed `/tmp/rac-bench-<pid>` could
/// be made in advance by another local user, who could then swap the binary we execute.
fn executable() -> Result<PathBuf> {
    let mut copy = crate::util::lock(&COPY);
    if let Some((_, path)) = copy.as_ref() {
        return Ok(path.clone());
    }
    let exe = std::env::current_exe().context("finding the rac executable")?;
    let dir = tempfile::Builder::new()
        // The pid keeps the dir findable (tests/bench_smoke.rs finds the children by it);
        // the random suffix makes it unpredictable.
        .prefix(&format!("rac-bench-{}-", std::process::id()))
        .tempdir()
        .context("making a private temp dir for the rac copy")?;
    let path = dir.path().join("rac");
    std::fs::copy(&exe, &path)
        .with_context(|| format!("copying {} to {}", exe.display(), path.display()))?;
    *copy = Some((dir, path.clone()));
    Ok(path)
}

/// The temp dir holding the copy made by [`executable`], and the copy's path.
static COPY: std::sync::Mutex<Option<(tempfile::TempDir, PathBuf)>> = std::sync::Mutex::new(None);

/// `KEY=VALUE` pairs (separated by spaces) from the environment variable `name`: extra
/// environment for one kind of child, e.g. a heap profiler's preload library for the SP.
pub fn extra_env(name: &str) -> Result<Vec<(String, String)>> {
    let Ok(text) = std::env::var(name) else {
        return Ok(Vec::new());
    };
    text.split_whitespace()
        .map(|pair| {
            pair.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| anyhow!("{name}: {pair:?} is not KEY=VALUE"))
        })
        .collect()
}

/// Removes the copy made by [`executable`] and its temp dir.
pub fn remove_executable_copy() {
    // Dropping the TempDir removes it.
    drop(crate::util::lock(&COPY).take());
}

/// User plus system CPU seconds of a process, all its threads, dead ones included.
pub fn cpu_secs(pid: u32) -> Result<f64> {
    stat_cpu_secs(&format!("/proc/{pid}/stat"))
}

/// User plus system CPU seconds of the calling thread.
pub fn thread_cpu_secs() -> Result<f64> {
    stat_cpu_secs("/proc/thread-self/stat")
}

/// The user and system times of a `stat` file of /proc.
fn stat_cpu_secs(path: &str) -> Result<f64> {
    let stat = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    // The command name may hold spaces: fields are counted after its closing parenthesis.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| anyhow!("unexpected {path}"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Field 3 (state) is fields[0]; utime is field 14, stime field 15.
    let tick = |i: usize| -> Result<f64> {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .map(|t| t as f64 / CLK_TCK)
            .ok_or_else(|| anyhow!("no field {} in {path}", i + 3))
    };
    Ok(tick(11)? + tick(12)?)
}

/// Resident set size of a process.
pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS in /proc/{pid}/status"))
}

/// This process's own CPU seconds.
pub fn own_cpu_secs() -> Result<f64> {
    cpu_secs(std::process::id())
}

/// This process's soft limit on open files (children inherit it), from `/proc/self/limits`.
pub fn open_files_limit() -> Result<u64> {
    let limits =
        std::fs::read_to_string("/proc/self/limits").context("reading /proc/self/limits")?;
    parse_open_files_limit(&limits)
        .ok_or_else(|| anyhow!("no open-files line in /proc/self/limits"))
}

fn parse_open_files_limit(limits: &str) -> Option<u64> {
    let rest = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))?;
    match rest.split_whitespace().next()? {
        "unlimited" => Some(u64::MAX),
        soft => soft.parse().ok(),
    }
}

/// Fails at once, with the fix, when `needed` sockets would not fit under the open-files
/// `limit`, rather than minutes later with tenants that never come online.
pub fn check_open_files(needed: u64, limit: u64, what: &str) -> Result<()> {
    if needed > limit {
        bail!(
            "{what} need about {needed} open files in one process, but the limit here is \
             {limit}: raise it first (`ulimit -n 20000`) or ask for less"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_open_files_limit;

    #[test]
    fn the_soft_open_files_limit_is_read() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max cpu time              unlimited            unlimited            seconds\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(parse_open_files_limit(limits), Some(1024));
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(parse_open_files_limit(unlimited), Some(u64::MAX));
        assert_eq!(
            parse_open_files_limit("Max processes 10 10 processes\n"),
            None
        );
        assert!(super::open_files_limit().expect("this process's limit") > 0);
    }
}
