//! A real `nats-server -js` for the tests (the crate's own and tests/cluster.rs): on 127.0.0.1, a port the server picks (learned from
//! its ports file), a store in a temp dir, killed on drop. When the binary is missing the
//! tests skip with a printed reason, except under CI, where they fail.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::BusConfig;

pub struct NatsServer {
    bin: PathBuf,
    child: Option<Child>,
    dir: tempfile::TempDir,
    pub port: u16,
}

fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

fn find_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/usr/local/bin"].map(PathBuf::from))
        .map(|dir| dir.join("nats-server"))
        .find(|p| p.is_file())
}

impl NatsServer {
    /// Starts a server, or returns `None` (having said why) when there is none to start and
    /// CI is not set. Under CI a missing server is a failure.
    pub async fn start() -> Option<NatsServer> {
        // `RUST_LOG=rac=debug` shows the bus's own log beside the test's output.
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .try_init();
        let Some(bin) = find_binary() else {
            if under_ci() {
                panic!("CI is set and nats-server is not installed (apt-get install nats-server)");
            }
            eprintln!("skipping: nats-server is not installed (apt-get install nats-server)");
            return None;
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let mut server = NatsServer {
            bin,
            child: None,
            dir,
            port: 0,
        };
        server.spawn(None).await;
        Some(server)
    }

    async fn spawn(&mut self, port: Option<u16>) {
        let ports_dir = self.dir.path().join("ports");
        let _ = std::fs::remove_dir_all(&ports_dir);
        std::fs::create_dir_all(&ports_dir).expect("ports dir");
        let port_arg = port.map_or("-1".to_string(), |p| p.to_string());
        let child = Command::new(&self.bin)
            .args(["-js", "-a", "127.0.0.1", "-p", &port_arg])
            .arg("-sd")
            .arg(self.dir.path().join("store"))
            .arg("--ports_file_dir")
            .arg(&ports_dir)
            .arg("-l")
            .arg(self.dir.path().join("nats-server.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        let file = ports_dir.join(format!("nats-server_{}.ports", child.id()));
        self.child = Some(child);
        // The server writes the file once it listens.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(text) = std::fs::read_to_string(&file)
                && let Some(port) = parse_port(&text)
            {
                self.port = port;
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "nats-server did not start; its log: {}",
                std::fs::read_to_string(self.dir.path().join("nats-server.log"))
                    .unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// A node's config on this server, with short but not hasty timings.
    pub fn node_config(&self, node: &str) -> BusConfig {
        let mut config = BusConfig::new(node, &format!("127.0.0.1:{}", 7000), vec![self.url()]);
        config.heartbeat_every = Duration::from_millis(300);
        config.dead_after = Duration::from_secs(2);
        config
    }

    /// Kills the server at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port with the same store.
    pub async fn restart(&mut self) {
        self.kill();
        let port = self.port;
        self.spawn(Some(port)).await;
    }
}

fn parse_port(text: &str) -> Option<u16> {
    // {"nats":["nats://127.0.0.1:41197"]}
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    let url = v.get("nats")?.get(0)?.as_str()?;
    url.rsplit(':').next()?.parse().ok()
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.dir.path().join("nats-server.log"));
            let log = log.unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            eprintln!("the test failed; nats-server's log ends:");
            for line in tail.iter().rev() {
                eprintln!("  {line}");
            }
        }
    }
}
