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
        config
            .validate()
            .with_context(|| format!("checking {}", path.display()))?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<()> {
        crate::sp::registry::validate_name(&self.name)?;
        if self.secret.len() != 64 || hex::decode(&self.secret).is_err() {
            bail!("secret must be the 64 hex digits printed by `rac sp tenant add`");
        }
        match (&self.ca_cert, &self.ca_fingerprint) {
            (None, None) => bail!("set ca_cert (the SP's CA file) or ca_fingerprint"),
            (Some(_), Some(_)) => bail!("set only one of ca_cert and ca_fingerprint"),
            (None, Some(fp)) => {
                crate::net::tls::parse_fingerprint(fp)?;
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
            crate::sp::registry::validate_name(name)
                .with_context(|| format!("service name {name:?}"))?;
            if host_of(addr).is_none() {
                bail!("service {name} = {addr:?} must be host:port");
            }
        }
        if self.backup_service.is_some() && self.services.contains_key("backup") {
            bail!(
                "[backup_service] offers the service `backup` itself; remove backup from [services]"
            );
        }
        Ok(())
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
}
