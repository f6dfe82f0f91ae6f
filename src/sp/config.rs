//! The SP's settings (`sp.toml` in its state dir) and the state dir's layout. Defaults live
//! here and only here.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

/// Default SP port: every role connects here.
pub const DEFAULT_PORT: u16 = 6180;

/// `sp.toml`. Every key is optional.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpConfig {
    /// Seconds between heartbeats on a control connection, each way.
    pub heartbeat_secs: u64,
    /// Silence on a control connection after which the peer is taken for dead.
    pub dead_after_secs: u64,
    /// How long a console waits for the tenant's data connection.
    pub session_open_timeout_secs: u64,
    /// TLS handshake plus first frame, per connection.
    pub handshake_timeout_secs: u64,
    /// A connection that sends nothing for this long after connecting is closed.
    pub first_byte_timeout_secs: u64,
    /// Connections still in their handshake, over all sources. Past it the oldest silent
    /// one is given up (`net::admission`); with none to give up, the accept loop waits for a place.
    pub max_pending_handshakes: usize,
    /// Connections that have sent nothing yet, from one source (an IPv4 address, an IPv6 /64;
    /// behind a trusted gateway, the client the PROXY header names). Past it a new one
    /// displaces the source's oldest silent one; connections that talk are not counted.
    pub max_pending_per_source: usize,
    /// Lifetime of an operator's session token.
    pub token_ttl_secs: u64,
    /// Failed logins per source address within `login_window_secs` before refusing.
    pub login_max_failures: u32,
    pub login_window_secs: u64,
    /// The cloud gateway pool handed to tenants (`host:port`), in preference order.
    pub gateways: Vec<String>,
    /// Addresses (of cloud gateways) whose PROXY protocol v2 header is believed.
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// Milliseconds between checks of the registry file for changes by other processes.
    pub registry_poll_millis: u64,
    /// `[admin]`: the admin listener (REST API, `/metrics`, `/healthz`, `/readyz`); off
    /// unless set here or with `rac sp run --admin`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin: Option<AdminConfig>,
    /// `[cluster]`: this SP is one node of several sharing a PostgreSQL registry (docs/CLUSTER.md);
    /// without it the registry is `registry.sqlite` in the state dir.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterConfig>,
}

/// `[cluster]` in `sp.toml`. Credentials come from files or the environment, never from the
/// command line or this file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// This node's name, unique in the cluster (a name like `sp-a`).
    pub node: String,
    /// The shared registry, `postgres://USER@HOST:PORT/DATABASE`, without a password.
    pub postgres_url: String,
    /// A file holding the database password (readable by the SP's user only). Without it,
    /// the password is taken from `RAC_POSTGRES_PASSWORD`, else none is sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres_password_file: Option<PathBuf>,
    /// Connections this node keeps to PostgreSQL.
    #[serde(default = "default_postgres_pool")]
    pub postgres_pool: usize,
    /// The NATS servers of the cluster bus (`nats://host:4222`): which node holds which
    /// tenant, and consoles on any node reaching tenants held by any other. Without them
    /// the nodes share only the registry (each serves the tenants connected to it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nats_urls: Vec<String>,
    /// A file holding the NATS token, if the servers want one (else `RAC_NATS_TOKEN`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nats_token_file: Option<PathBuf>,
    /// `host:port` at which the other nodes reach this node's SP port (they forward a
    /// session's data channel there). Default: the address `rac sp run` listens on, when
    /// that is not a wildcard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise: Option<String>,
    /// When the node is stopped (SIGTERM), the tenants it sends to other nodes per second,
    /// so that they do not all reconnect at once.
    #[serde(default = "default_drain_rate")]
    pub drain_rate: u32,
    /// When the node is stopped, how long its sessions may go on before they are ended.
    #[serde(default = "default_drain_secs")]
    pub drain_secs: u64,
}

fn default_drain_rate() -> u32 {
    ClusterConfig::DEFAULT_DRAIN_RATE
}

fn default_drain_secs() -> u64 {
    ClusterConfig::DEFAULT_DRAIN_SECS
}

fn default_postgres_pool() -> usize {
    ClusterConfig::DEFAULT_POOL
}

/// Where the database password may come from besides a file.
pub const POSTGRES_PASSWORD_ENV: &str = "RAC_POSTGRES_PASSWORD";
/// Where the NATS token may come from besides a file.
pub const NATS_TOKEN_ENV: &str = "RAC_NATS_TOKEN";

impl ClusterConfig {
    pub const DEFAULT_POOL: usize = 4;
    pub const DEFAULT_DRAIN_RATE: u32 = 500;
    pub const DEFAULT_DRAIN_SECS: u64 = 60;

    /// The database to open: the URL, and the password from the file or the environment.
    pub fn postgres_target(&self) -> Result<crate::sp::registry::PgTarget> {
        let password = match &self.postgres_password_file {
            Some(file) => Some(
                std::fs::read_to_string(file)
                    .with_context(|| format!("reading postgres_password_file {}", file.display()))?
                    .trim_end_matches(['\n', '\r'])
                    .to_string(),
            ),
            None => std::env::var(POSTGRES_PASSWORD_ENV).ok(),
        };
        let mut target =
            crate::sp::registry::PgTarget::new(&self.postgres_url, password.as_deref())?;
        target.pool_size = self.postgres_pool;
        Ok(target)
    }

    /// The NATS token from the file or the environment, if there is one.
    pub fn nats_token(&self) -> Result<Option<String>> {
        Ok(match &self.nats_token_file {
            Some(file) => Some(
                std::fs::read_to_string(file)
                    .with_context(|| format!("reading nats_token_file {}", file.display()))?
                    .trim()
                    .to_string(),
            ),
            None => std::env::var(NATS_TOKEN_ENV).ok(),
        })
    }

    /// The address other nodes reach this one at: `advertise`, else `listening` unless it
    /// is a wildcard address.
    pub fn advertised(&self, listening: std::net::SocketAddr) -> Result<String> {
        match &self.advertise {
            Some(addr) => Ok(addr.clone()),
            None if listening.ip().is_unspecified() => bail!(
                "[cluster] advertise is needed: the SP listens on {listening}, which other \
                 nodes cannot dial; set advertise = \"HOST:{}\"",
                listening.port()
            ),
            None => Ok(listening.to_string()),
        }
    }

    fn validate(&self) -> Result<()> {
        crate::wire::validate_name(&self.node).context("[cluster] node")?;
        for url in &self.nats_urls {
            if !(url.starts_with("nats://") || url.starts_with("tls://")) {
                bail!("[cluster] nats_urls: {url:?} is not a nats:// or tls:// URL");
            }
        }
        if self.postgres_pool == 0 {
            bail!("[cluster] postgres_pool must be greater than 0");
        }
        if self.drain_rate == 0 {
            bail!("[cluster] drain_rate must be greater than 0 (tenants per second)");
        }
        // Parsed now, so a bad URL is named when the file is read, not at the first query.
        crate::sp::registry::PgTarget::new(&self.postgres_url, None)
            .context("[cluster] postgres_url")?;
        Ok(())
    }
}

/// `[admin]` in `sp.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// `host:port`, or a bare port on the loopback address (`6181` = `127.0.0.1:6181`).
    pub listen: String,
    /// Serve HTTPS with the SP's server certificate and take only clients that show a
    /// certificate signed by the SP's CA (`rac sp admin-cert create`), bearer token still
    /// required. Off by default (plain HTTP).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mutual_tls: bool,
}

/// Parses an admin listener's address: `host:port`, or a bare port on the loopback address
/// (the admin API is local unless asked otherwise).
pub fn parse_admin_listen(text: &str) -> Result<SocketAddr> {
    if let Ok(port) = text.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    text.parse()
        .with_context(|| format!("{text:?} is not an address like 127.0.0.1:6181"))
}

impl Default for SpConfig {
    fn default() -> Self {
        SpConfig {
            // 30 s keeps 15,000 idle tenants under 2% of a core (docs/BENCHMARKS.md); a
            // vanished peer is noticed after dead_after_secs, a closed one at once.
            heartbeat_secs: 30,
            dead_after_secs: 95,
            session_open_timeout_secs: 10,
            handshake_timeout_secs: 10,
            first_byte_timeout_secs: 3,
            max_pending_handshakes: 4096,
            // An honest peer is silent for a round trip; 64 idle sockets from one address
            // is already a flood, and keeps it to 1/64 of the table.
            max_pending_per_source: 64,
            token_ttl_secs: 12 * 3600,
            login_max_failures: 5,
            login_window_secs: 60,
            gateways: Vec::new(),
            trusted_proxies: Vec::new(),
            registry_poll_millis: 500,
            admin: None,
            cluster: None,
        }
    }
}

impl SpConfig {
    pub fn load(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Ok(SpConfig::default());
        }
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let config: SpConfig =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        config
            .validate()
            .with_context(|| format!("checking {}", path.display()))?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<()> {
        if self.heartbeat_secs == 0 {
            bail!("heartbeat_secs must be at least 1");
        }
        if self.dead_after_secs <= self.heartbeat_secs {
            bail!(
                "dead_after_secs ({}) must be longer than heartbeat_secs ({})",
                self.dead_after_secs,
                self.heartbeat_secs
            );
        }
        for (name, value) in [
            ("session_open_timeout_secs", self.session_open_timeout_secs),
            ("handshake_timeout_secs", self.handshake_timeout_secs),
            ("first_byte_timeout_secs", self.first_byte_timeout_secs),
            ("token_ttl_secs", self.token_ttl_secs),
            ("login_window_secs", self.login_window_secs),
            ("max_pending_handshakes", self.max_pending_handshakes as u64),
            ("max_pending_per_source", self.max_pending_per_source as u64),
            ("registry_poll_millis", self.registry_poll_millis),
        ] {
            if value == 0 {
                bail!("{name} must be greater than 0");
            }
        }
        if let Some(admin) = &self.admin {
            parse_admin_listen(&admin.listen).context("[admin] listen")?;
        }
        if let Some(cluster) = &self.cluster {
            cluster.validate()?;
        }
        for gateway in &self.gateways {
            if !gateway.contains(':') {
                bail!("gateway {gateway:?} must be host:port");
            }
        }
        Ok(())
    }

    pub fn heartbeat(&self) -> Duration {
        Duration::from_secs(self.heartbeat_secs)
    }
    pub fn dead_after(&self) -> Duration {
        Duration::from_secs(self.dead_after_secs)
    }
    pub fn session_open_timeout(&self) -> Duration {
        Duration::from_secs(self.session_open_timeout_secs)
    }
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_secs(self.handshake_timeout_secs)
    }
    pub fn first_byte_timeout(&self) -> Duration {
        Duration::from_secs(self.first_byte_timeout_secs)
    }
}

/// Where an SP keeps its files.
#[derive(Debug, Clone)]
pub struct StateDir {
    pub root: PathBuf,
}

impl StateDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        StateDir { root: root.into() }
    }
    /// The CA certificate that clients trust (`--ca`).
    pub fn ca_cert(&self) -> PathBuf {
        self.root.join("ca.pem")
    }
    pub fn ca_key(&self) -> PathBuf {
        self.root.join("ca.key")
    }
    /// The server certificate followed by the CA: the chain the SP presents.
    pub fn server_chain(&self) -> PathBuf {
        self.root.join("server.pem")
    }
    pub fn server_key(&self) -> PathBuf {
        self.root.join("server.key")
    }
    pub fn registry(&self) -> PathBuf {
        self.root.join("registry.sqlite")
    }
    pub fn config(&self) -> PathBuf {
        self.root.join("sp.toml")
    }
    /// The key the SP signs session grants with (Ed25519, PKCS#8 DER, 0600).
    pub fn grant_key(&self) -> PathBuf {
        self.root.join("grant.key")
    }
    /// The key the SP seals its TLS session tickets with (hex, 0600; `net::tls::tickets`).
    pub fn ticket_key(&self) -> PathBuf {
        self.root.join("ticket.key")
    }

    /// Fails with a hint when `rac sp init` has not been run here. Also makes the dir
    /// private (0700) if it is not, with a warning: it holds the CA key and the registry.
    pub fn ensure_initialized(&self) -> Result<()> {
        // A cluster node's registry is in PostgreSQL: its sp.toml says where.
        let registry = self.registry().exists() || self.config().exists();
        if !registry || !self.server_chain().exists() {
            bail!(
                "{} is not an SP state dir (run `rac sp init --state-dir {}` first)",
                self.root.display(),
                self.root.display()
            );
        }
        super::registry::tighten(&self.root, 0o700)?;
        Ok(())
    }

    /// Creates the state dir (and missing parents) with mode 0700, or tightens an existing
    /// one to it.
    pub fn create_private(&self) -> Result<()> {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            builder.mode(0o700);
        }
        builder
            .create(&self.root)
            .with_context(|| format!("creating {}", self.root.display()))?;
        super::registry::tighten(&self.root, 0o700)?;
        Ok(())
    }
}

/// Parses `host:port`, or a bare port meaning all interfaces.
pub fn parse_listen(text: &str) -> Result<SocketAddr> {
    if let Ok(port) = text.parse::<u16>() {
        return Ok(SocketAddr::from(([0, 0, 0, 0], port)));
    }
    text.parse()
        .with_context(|| format!("{text:?} is not an address like 127.0.0.1:6180"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_unknown_keys_refused() {
        SpConfig::default().validate().expect("defaults valid");
        let err = toml::from_str::<SpConfig>("heartbeat_sec = 3").expect_err("typo refused");
        assert!(err.to_string().contains("unknown field"), "{err}");
        let config: SpConfig =
            toml::from_str("heartbeat_secs = 2\ndead_after_secs = 5\ngateways = [\"gw:443\"]")
                .expect("parse");
        config.validate().expect("valid");
        let bad: SpConfig =
            toml::from_str("heartbeat_secs = 5\ndead_after_secs = 5").expect("parse");
        assert!(bad.validate().is_err());
        let admin: SpConfig = toml::from_str("[admin]\nlisten = \"6181\"").expect("parse");
        admin.validate().expect("valid");
        assert_eq!(
            parse_admin_listen(&admin.admin.expect("admin").listen).expect("addr"),
            "127.0.0.1:6181".parse::<SocketAddr>().expect("addr")
        );
        let text = toml::to_string(&SpConfig::default()).expect("toml");
        assert!(!text.contains("admin"), "{text}");
    }

    #[test]
    fn example_config_parses() {
        let text =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/sp.toml"))
                .expect("examples/sp.toml exists");
        let config: SpConfig = toml::from_str(&text).expect("parse example");
        config.validate().expect("example valid");
        assert!(config.cluster.is_none(), "a single SP by default");
        // The commented [cluster] section, as an admin would uncomment it.
        let uncommented: String = text
            .lines()
            .map(|line| match line.strip_prefix("# ") {
                Some(rest) if rest.starts_with("[cluster]") || rest.contains(" = ") => rest,
                _ => line,
            })
            .collect::<Vec<_>>()
            .join("\n");
        let config: SpConfig = toml::from_str(&uncommented).expect("parse [cluster]");
        config.validate().expect("[cluster] valid");
        let cluster = config.cluster.expect("[cluster]");
        assert_eq!(cluster.nats_urls, ["nats://nats.internal:4222"]);
        let wildcard = "0.0.0.0:6180".parse().expect("addr");
        assert_eq!(
            cluster.advertised(wildcard).expect("advertised"),
            "10.0.0.1:6180"
        );
        let without = ClusterConfig {
            advertise: None,
            ..cluster
        };
        let refused = without
            .advertised(wildcard)
            .expect_err("a wildcard is not an address");
        assert!(refused.to_string().contains("advertise"), "{refused}");
        assert_eq!(
            without
                .advertised("10.0.0.2:6180".parse().expect("addr"))
                .expect("advertised"),
            "10.0.0.2:6180"
        );
    }
}
