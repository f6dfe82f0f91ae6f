//! The tenant redirector's configuration file (`rac tenant --config FILE`), as DESIGN.md fixes
//! its key names. Parsed strictly: an unknown key is an error, so a typo is never ignored.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// The tenant's account name at the SP.
    pub name: String,
    /// Printed once by `rac sp tenant add`.
    pub secret: String,
    /// The SP's CA certificate (PEM). Relative paths are relative to the config file.
    #[serde(default)]
    pub ca_cert: Option<PathBuf>,
    /// Alternatively, the SHA-256 fingerprint of the SP's CA or server certificate.
    #[serde(default)]
    pub ca_fingerprint: Option<String>,
    /// The SP directly, or its cloud gateways; tried in order, with failover.
    pub endpoints: Vec<String>,
    /// The tenant's consent to provider sessions.
    #[serde(default = "default_true")]
    pub allow_provider_access: bool,
    /// The name on the SP's certificate; default: the host of the first endpoint.
    #[serde(default)]
    pub server_name: Option<String>,
    /// What a console may reach on this side, by name: `name = "host:port"`.
    #[serde(default)]
    pub services: BTreeMap<String, String>,
    /// Run the tenant backup service in this process and offer it as `backup`.
    #[serde(default)]
    pub backup_service: Option<BackupServiceConfig>,
    /// Sessions open at once through this redirector; the SP's requests beyond it are
    /// answered `reject` with `busy`, so an SP cannot make the tenant open unbounded
    /// connections to its own services.
    #[serde(default = "default_max_sessions")]
    pub max_sessions: usize,
    /// Also dial the cloud gateways the SP pushes (remembered beside this file, each
    /// forgotten after a day unreachable); false: only `endpoints` are ever dialled.
    #[serde(default = "default_true")]
    pub follow_gateway_pool: bool,
    /// The tenant's own key, which ends every session's end-to-end channel on this side
    /// (made on first start, 0600). Default: `<this file>.key.pem`. Relative to this file.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// The tenant lock: if not empty, only consoles holding one of these keys (SHA-256
    /// fingerprints, as the console shows its own) may open a session, whatever the SP
    /// grants.
    #[serde(default)]
    pub operator_keys: Vec<String>,
    /// `[admin]`: serve `/metrics` and `/healthz` (off unless set).
    #[serde(default)]
    pub admin: Option<AdminListen>,
}

/// `[admin]` in a tenant's config.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminListen {
    /// `host:port`, or a bare port on the loopback address.
    pub listen: String,
}

/// `path` with `suffix` added to its file name (`tenant.toml` → `tenant.toml.key.pem`).
pub fn beside(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Default of [`TenantConfig::max_sessions`].
pub const DEFAULT_MAX_SESSIONS: usize = 64;

fn default_max_sessions() -> usize {
    DEFAULT_MAX_SESSIONS
}

/// `[backup_service]`: the tenant backup service run by `rac tenant` itself.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupServiceConfig {
    /// Where the service keeps its state (written atomically). Relative to the config file.
    pub state_file: PathBuf,
    /// Seed for a generated demo server when the state file does not exist yet.
    #[serde(default)]
    pub demo_seed: Option<u64>,
}

fn default_true() -> bool {
    true
}

impl fmt::Debug for TenantConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TenantConfig")
            .field("name", &self.name)
            .field("secret", &"***")
            .field("ca_cert", &self.ca_cert)
            .field("endpoints", &self.endpoints)
            .field("allow_provider_access", &self.allow_provider_access)
            .field("services", &self.services)
            .field("max_sessions", &self.max_sessions)
            .field("follow_gateway_pool", &self.follow_gateway_pool)
            .finish()
    }
}

impl TenantConfig {
    /// Reads, parses and validates a config file; relative paths become relative to it.
    pub fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut config: TenantConfig =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        if let Some(ca) = &config.ca_cert
            && ca.is_relative()
        {
            config.ca_cert = Some(base.join(ca));
        }
        if let Some(backup) = &mut config.backup_service
            && backup.state_file.is_relative()
        {
            backup.state_file = base.join(&backup.state_file);
        }
        config.key_file = Some(match config.key_file.take() {
            Some(file) if file.is_relative() => base.join(file),
            Some(file) => file,
            None => beside(path, ".key.pem"),
        });
        config
            .validate()
            .with_context(|| format!("checking {}", path.display()))?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<()> {
        crate::wire::validate_name(&self.name)?;
        if self.secret.len() != 64 || hex::decode(&self.secret).is_err() {
            bail!("secret must be the 64 hex digits printed by `rac sp tenant add`");
        }
        match (&self.ca_cert, &self.ca_fingerprint) {
            (None, None) => bail!("set ca_cert (the SP's CA file) or ca_fingerprint"),
            (Some(_), Some(_)) => bail!("set only one of ca_cert and ca_fingerprint"),
            (None, Some(fp)) => {
                crate::wire::parse_fingerprint(fp)?;
            }
            (Some(_), None) => {}
        }
        if self.endpoints.is_empty() {
            bail!("endpoints is empty: list the SP address or its cloud gateways");
        }
        for endpoint in &self.endpoints {
            if host_of(endpoint).is_none() {
                bail!("endpoint {endpoint:?} must be host:port");
            }
        }
        for (name, addr) in &self.services {
            crate::wire::validate_name(name).with_context(|| format!("service name {name:?}"))?;
            if host_of(addr).is_none() {
                bail!("service {name} = {addr:?} must be host:port");
            }
        }
        for key in &self.operator_keys {
            crate::wire::parse_fingerprint(key)
                .with_context(|| format!("operator_keys: {key:?} is not a SHA-256 fingerprint"))?;
        }
        if self.max_sessions == 0 {
            bail!("max_sessions must be at least 1 (it caps the sessions open at once)");
        }
        if self.backup_service.is_some() && self.services.contains_key("backup") {
            bail!(
                "[backup_service] offers the service `backup` itself; remove backup from [services]"
            );
        }
        Ok(())
    }

    /// The tenant lock's keys, parsed (validated already).
    pub fn operator_keys(&self) -> Vec<[u8; 32]> {
        self.operator_keys
            .iter()
            .filter_map(|k| crate::wire::parse_fingerprint(k).ok())
            .collect()
    }

    /// The TLS server name to expect on the SP's certificate.
    pub fn server_name(&self) -> String {
        self.server_name.clone().unwrap_or_else(|| {
            self.endpoints
                .first()
                .and_then(|e| host_of(e))
                .unwrap_or("localhost")
                .to_string()
        })
    }
}

/// The host part of `host:port` (`[v6]:port` too), if the port is valid.
pub fn host_of(addr: &str) -> Option<&str> {
    let (host, port) = addr.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (!host.is_empty()).then_some(host)
}

/// Most entries a gateway pool pushed by the SP may have.
pub const MAX_GATEWAY_POOL: usize = 16;
/// Longest `host:port` entry of a pushed gateway pool.
pub const MAX_GATEWAY_LEN: usize = 255;

/// Checks a gateway pool the SP pushed (in its welcome or a `gateways` frame) before the
/// tenant dials or remembers any of it: at most [`MAX_GATEWAY_POOL`] entries, each a plain
/// `host:port` (a DNS name, an IPv4 address or a bracketed IPv6 address; port 1-65535; at
/// most [`MAX_GATEWAY_LEN`] bytes; no path, user, space or control character). The SP is
/// trusted to route the tenant, not to make it dial URLs or an unbounded list. Says what is
/// wrong with the first bad entry.
pub fn check_gateway_pool(pool: &[String]) -> Result<(), BadPool> {
    if pool.len() > MAX_GATEWAY_POOL {
        return Err(BadPool::TooLong(pool.len()));
    }
    for entry in pool {
        check_gateway(entry).map_err(|why| BadPool::Entry {
            entry: entry.clone(),
            why,
        })?;
    }
    Ok(())
}

/// Why a pushed gateway pool is refused (whole).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadPool {
    #[error("{0} entries, more than the {MAX_GATEWAY_POOL} allowed")]
    TooLong(usize),
    #[error("entry {entry:?}: {why}")]
    Entry { entry: String, why: &'static str },
}

fn check_gateway(entry: &str) -> Result<(), &'static str> {
    if entry.len() > MAX_GATEWAY_LEN {
        return Err("longer than 255 bytes");
    }
    let (host, port) = entry.rsplit_once(':').ok_or("not host:port")?;
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err("the port is not a number");
    }
    match port.parse::<u16>() {
        Ok(1..) => {}
        _ => return Err("the port is not in 1-65535"),
    }
    if let Some(inner) = host.strip_prefix('[') {
        let v6 = inner.strip_suffix(']').ok_or("unbalanced [")?;
        return v6
            .parse::<std::net::Ipv6Addr>()
            .map(|_| ())
            .map_err(|_| "not an IPv6 address inside [ ]");
    }
    let name_ok = !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    if name_ok {
        Ok(())
    } else {
        Err("the host is not a DNS name or an IP address")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses_and_validates() {
        let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/tenant.toml"));
        let config = TenantConfig::load(path).expect("example tenant config loads");
        assert_eq!(config.name, "acme");
        assert_eq!(config.services["backup"], "127.0.0.1:9401");
        assert!(config.ca_cert.as_ref().expect("ca").is_absolute());
        assert_eq!(config.server_name(), "sp.example.net");
    }

    #[test]
    fn example_with_backup_service_parses() {
        let path = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/examples/tenant-backup-service.toml"
        ));
        let config = TenantConfig::load(path).expect("example loads");
        let backup = config.backup_service.as_ref().expect("backup service");
        assert!(backup.state_file.is_absolute());
        assert_eq!(backup.demo_seed, Some(42));
        assert_eq!(config.server_name(), "sp.example.net");
    }

    #[test]
    fn mistakes_are_explained() {
        let good = r#"name = "acme"
secret = "0000000000000000000000000000000000000000000000000000000000000000"
ca_cert = "/ca.pem"
endpoints = ["sp:6180"]
"#;
        toml::from_str::<TenantConfig>(good)
            .expect("parse")
            .validate()
            .expect("valid");
        let typo = format!("{good}alow_provider_access = false\n");
        let err = toml::from_str::<TenantConfig>(&typo).expect_err("typo refused");
        assert!(err.to_string().contains("unknown field"), "{err}");
        let short = good.replace("0000000000000000", "");
        let err = toml::from_str::<TenantConfig>(&short)
            .expect("parse")
            .validate()
            .expect_err("short secret");
        assert!(err.to_string().contains("64 hex"), "{err}");
        let no_port = good.replace("sp:6180", "sp");
        assert!(
            toml::from_str::<TenantConfig>(&no_port)
                .expect("parse")
                .validate()
                .is_err()
        );
    }

    #[test]
    fn debug_hides_the_secret() {
        let config: TenantConfig = toml::from_str(
            r#"name = "acme"
secret = "abababababababababababababababababababababababababababababababab"
ca_cert = "/ca.pem"
endpoints = ["sp:6180"]"#,
        )
        .expect("parse");
        assert!(!format!("{config:?}").contains("abab"));
    }

    #[test]
    fn gateway_pools_hold_only_host_port_entries() {
        let good: Vec<String> = [
            "gw1.example.net:6180",
            "127.0.0.1:443",
            "[::1]:6180",
            "[2001:db8::7]:1",
            "localhost:65535",
        ]
        .map(String::from)
        .to_vec();
        check_gateway_pool(&good).expect("plain host:port entries pass");
        check_gateway_pool(&[]).expect("an empty pool passes");
        for bad in [
            "gw.example.net",
            "gw.example.net:0",
            "gw.example.net:65536",
            "gw.example.net:+80",
            "https://gw.example.net:443",
            "gw.example.net/path:443",
            "user@gw.example.net:443",
            "gw example.net:443",
            "gw.example.net :443",
            "gw.example.net:443\n",
            "gw\u{1b}[31m.net:443",
            ":443",
            "[::1:443",
            "[not-v6]:443",
            "-gw.example.net:443",
            "a..b:443",
        ] {
            let err = check_gateway_pool(&[bad.to_string()]).expect_err(bad);
            assert!(
                matches!(&err, BadPool::Entry { entry, .. } if entry == bad),
                "{bad}: {err}"
            );
        }
        let long = format!("{}.net:443", "a.".repeat(130));
        assert!(long.len() > MAX_GATEWAY_LEN);
        assert!(check_gateway_pool(&[long]).is_err());
        let at_limit: Vec<String> = (0..16).map(|i| format!("gw{i}.example.net:6180")).collect();
        check_gateway_pool(&at_limit).expect("16 entries pass");
        let over: Vec<String> = (0..17).map(|i| format!("gw{i}.example.net:6180")).collect();
        let err = check_gateway_pool(&over).expect_err("17 entries");
        assert_eq!(err, BadPool::TooLong(17));
        assert!(err.to_string().contains("17 entries"), "{err}");
    }

    #[test]
    fn max_sessions_defaults_to_64_and_must_be_positive() {
        let good = r#"name = "acme"
secret = "0000000000000000000000000000000000000000000000000000000000000000"
ca_cert = "/ca.pem"
endpoints = ["sp:6180"]
"#;
        let config: TenantConfig = toml::from_str(good).expect("parse");
        assert_eq!(config.max_sessions, 64);
        let zero: TenantConfig =
            toml::from_str(&format!("{good}max_sessions = 0\n")).expect("parse");
        let err = zero.validate().expect_err("zero refused");
        assert!(err.to_string().contains("max_sessions"), "{err}");
    }
}
