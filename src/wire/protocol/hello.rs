//! The first frame of every connection ([`Hello`], naming its role and credentials), the
//! rules its names and strings must keep, and the SP's first answer ([`HelloReply`]).

use super::error::Malformed;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::{ErrorMsg, PROTOCOL_VERSION, escape_untrusted};

/// The first frame on every connection to the SP port.
///
/// Parsing checks the strings a peer chooses before anyone logs or stores them (see
/// [`Hello::validate`]): a hello that breaks a rule does not parse, and the SP answers
/// `bad_request` with the rule it broke.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(try_from = "HelloWire")]
pub struct Hello {
    pub version: u32,
    #[serde(flatten)]
    pub role: Role,
}

impl Hello {
    pub fn new(role: Role) -> Self {
        Hello {
            version: PROTOCOL_VERSION,
            role,
        }
    }
}

/// [`Hello`] as it is on the wire, before [`Hello::validate`].
#[derive(Deserialize)]
struct HelloWire {
    version: u32,
    #[serde(flatten)]
    role: Role,
}

impl TryFrom<HelloWire> for Hello {
    type Error = Malformed;

    fn try_from(wire: HelloWire) -> Result<Self, Malformed> {
        let hello = Hello {
            version: wire.version,
            role: wire.role,
        };
        hello.validate()?;
        Ok(hello)
    }
}

/// Most services a tenant may offer, in its hello or a `status` frame.
pub const MAX_SERVICES: usize = 32;
/// Longest agent string a tenant may send.
pub const MAX_AGENT_LEN: usize = 64;

impl Hello {
    /// Checks the names and strings a peer chose, naming the field that breaks a rule.
    ///
    /// Tenant and service names follow the registry's name rule
    /// ([`crate::wire::validate_name`]: 1 to 64 ASCII letters, digits, `.`, `_`, `-`,
    /// starting with a letter or digit), so a name can carry no terminal escape, newline or
    /// formula into a log line, the tenant list or a CSV export. Secrets, nonces and tokens
    /// are compared, never shown, and are not checked here.
    pub fn validate(&self) -> Result<(), Malformed> {
        match &self.role {
            Role::TenantControl {
                tenant,
                agent,
                services,
                tenant_key,
                ..
            } => {
                check_name("tenant", tenant)?;
                check_agent(agent)?;
                check_key("tenant_key", tenant_key)?;
                validate_services(services)
            }
            Role::TenantData {
                tenant, session_id, ..
            } => {
                check_name("tenant", tenant)?;
                check_name("session_id", session_id)
            }
            Role::ConsoleSession {
                tenant,
                service,
                client_hello,
                ..
            } => {
                check_name("tenant", tenant)?;
                check_name("service", service)?;
                match client_hello {
                    Some(records) => check_client_hello(records),
                    None => Ok(()),
                }
            }
            Role::Operator { console_key, .. } => match console_key {
                Some(key) => check_key("console_key", key),
                None => Ok(()),
            },
        }
    }
}

/// A key fingerprint: 32 bytes as `AB:CD:..` or plain hex ([`crate::wire::parse_fingerprint`]).
fn check_key(field: &str, value: &str) -> Result<(), Malformed> {
    crate::wire::parse_fingerprint(value)
        .map(|_| ())
        .map_err(|_| {
            Malformed(format!(
                "{field}: \"{}\" is not a SHA-256 fingerprint (32 bytes in hex)",
                escape_untrusted(value, 100)
            ))
        })
}

/// Longest ClientHello (in bytes, before hex) a console may send ahead in its hello.
pub const MAX_CLIENT_HELLO: usize = 4096;

/// A ClientHello sent ahead: hex of at most [`MAX_CLIENT_HELLO`] bytes that start like a TLS
/// handshake record. The SP passes it on unread otherwise; the tenant's TLS checks the rest.
pub fn check_client_hello(records: &str) -> Result<(), Malformed> {
    if records.len() > 2 * MAX_CLIENT_HELLO {
        return Err(Malformed(format!(
            "client_hello: {} hex digits, at most {} allowed",
            records.len(),
            2 * MAX_CLIENT_HELLO
        )));
    }
    match hex::decode(records) {
        Ok(bytes) if bytes.len() >= 5 && bytes[0] == 22 => Ok(()),
        Ok(_) => Err(Malformed(
            "client_hello: not a TLS handshake record (the first byte must be 22)".into(),
        )),
        Err(_) => Err(Malformed("client_hello: not hex".into())),
    }
}

/// Checks a tenant's list of offered services (hello and `status`): at most
/// [`MAX_SERVICES`] names, each by the name rule.
pub fn validate_services(services: &[String]) -> Result<(), Malformed> {
    if services.len() > MAX_SERVICES {
        return Err(Malformed(format!(
            "services: {} entries, at most {MAX_SERVICES} allowed",
            services.len()
        )));
    }
    services
        .iter()
        .try_for_each(|service| check_name("services", service))
}

fn check_name(field: &str, value: &str) -> Result<(), Malformed> {
    crate::wire::validate_name(value).map_err(|_| {
        Malformed(format!(
            "{field}: \"{}\" is not a valid name (1 to 64 ASCII letters, digits, '.', '_' or '-', \
             starting with a letter or digit)",
            escape_untrusted(value, 80)
        ))
    })
}

fn check_agent(agent: &str) -> Result<(), Malformed> {
    let printable = agent.bytes().all(|b| (0x20..=0x7e).contains(&b));
    if agent.len() > MAX_AGENT_LEN || !printable {
        return Err(Malformed(format!(
            "agent: \"{}\" is not valid (at most {MAX_AGENT_LEN} printable ASCII characters)",
            escape_untrusted(agent, 80)
        )));
    }
    Ok(())
}

impl fmt::Debug for Hello {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hello(v{}, {:?})", self.version, self.role)
    }
}

/// Who is connecting, with that role's credentials.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "role", rename_all = "snake_case")]
pub enum Role {
    /// A tenant redirector's long-lived control connection (step 2).
    TenantControl {
        tenant: String,
        /// The tenant's 256-bit secret, hex; the SP compares its SHA-256 with the stored hash.
        secret: String,
        agent: String,
        services: Vec<String>,
        provider_access: bool,
        /// SHA-256 of the tenant redirector's public key (its SubjectPublicKeyInfo), `AB:CD:..`:
        /// the key that ends every session's end-to-end channel on the tenant's side. The SP
        /// records it on first sight and refuses another one afterwards.
        tenant_key: String,
        /// True: this tenant takes the console's end-to-end ClientHello inside `open_data`
        /// (its `client_hello`) and answers it on its data connection right after its hello,
        /// without waiting for `ready`. Absent (false): the console sends it after `ready`.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        early_client_hello: bool,
    },
    /// A tenant redirector's data connection for one session (step 7).
    TenantData {
        tenant: String,
        session_id: String,
        nonce: String,
    },
    /// A console asking for a session to one tenant service (step 5).
    ConsoleSession {
        token: String,
        tenant: String,
        service: String,
        /// The first TLS records of the console's end-to-end handshake (its ClientHello), in
        /// hex, sent ahead so the tenant can answer while its data connection opens. `ready`
        /// says whether the SP passed them on; if not, the console sends them after `ready`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_hello: Option<String>,
    },
    /// A console logging in and reading the tenant list (step 4). Either `password` or
    /// `token` (a token from an earlier login) is given.
    Operator {
        user: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        password: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
        /// SHA-256 of this console's public key (`AB:CD:..`). A password login binds it to
        /// the token it gets: every grant for a session opened with that token names this
        /// key, and the tenant accepts no other in the end-to-end handshake.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        console_key: Option<String>,
    },
}

impl Role {
    pub fn name(&self) -> &'static str {
        match self {
            Role::TenantControl { .. } => "tenant_control",
            Role::TenantData { .. } => "tenant_data",
            Role::ConsoleSession { .. } => "console_session",
            Role::Operator { .. } => "operator",
        }
    }
}

// Secrets, nonces, tokens and passwords never reach Debug output or logs.
impl fmt::Debug for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Role::TenantControl {
                tenant,
                agent,
                services,
                provider_access,
                tenant_key,
                ..
            } => f
                .debug_struct("TenantControl")
                .field("tenant", tenant)
                .field("secret", &"***")
                .field("agent", agent)
                .field("services", services)
                .field("provider_access", provider_access)
                .field("tenant_key", tenant_key)
                .finish(),
            Role::TenantData {
                tenant, session_id, ..
            } => f
                .debug_struct("TenantData")
                .field("tenant", tenant)
                .field("session_id", session_id)
                .field("nonce", &"***")
                .finish(),
            Role::ConsoleSession {
                tenant, service, ..
            } => f
                .debug_struct("ConsoleSession")
                .field("tenant", tenant)
                .field("service", service)
                .field("token", &"***")
                .finish(),
            Role::Operator { user, .. } => f
                .debug_struct("Operator")
                .field("user", user)
                .field("credentials", &"***")
                .finish(),
        }
    }
}

/// The SP's answer to an accepted tenant control or operator `Hello`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Welcome {
    /// The SP's software version.
    pub server: String,
    /// Tenant control: how often each side sends a ping. Operator: unused (0).
    pub heartbeat_secs: u64,
    /// Tenant control: silence after which the peer is considered dead.
    pub dead_after_secs: u64,
    /// Tenant control: the SP's cloud gateway pool, for the tenant's failover list.
    #[serde(default)]
    pub gateways: Vec<String>,
    /// Operator: the session token to present in `ConsoleSession` hellos.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Operator: seconds until the token expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_expires_in_secs: Option<u64>,
    /// Tenant control: the SP's grant-signing key (Ed25519 public key, hex), which the
    /// tenant pins on first sight and checks every session's grant against.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant_key: Option<String>,
    /// Tenant control: the SP's clock (seconds since the Unix epoch) when it answered, so a
    /// tenant whose clock is off judges a grant's expiry by the SP's clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub now: Option<u64>,
}

/// The first answer to a tenant-control or operator hello.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum HelloReply {
    Welcome(Welcome),
    Error(ErrorMsg),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::protocol::ErrorCode;

    #[test]
    fn hello_wire_shape_is_flat() {
        let hello = Hello::new(Role::ConsoleSession {
            token: "t".into(),
            tenant: "acme".into(),
            service: "backup".into(),
            client_hello: None,
        });
        let json = serde_json::to_value(&hello).expect("serialize");
        assert_eq!(
            json,
            serde_json::json!({"version": 2, "role": "console_session", "token": "t",
                "tenant": "acme", "service": "backup"})
        );
        let back: Hello = serde_json::from_value(json).expect("parse");
        assert_eq!(back, hello);
    }

    #[test]
    fn debug_never_shows_secrets() {
        let hello = Hello::new(Role::TenantControl {
            tenant: "acme".into(),
            secret: "s3cr3t-value".into(),
            agent: "x".into(),
            services: vec![],
            provider_access: true,
            tenant_key: "00".repeat(32),
            early_client_hello: false,
        });
        let op = Role::Operator {
            user: "root".into(),
            password: Some("hunter2".into()),
            token: None,
            console_key: None,
        };
        let text = format!("{hello:?} {op:?}");
        assert!(
            !text.contains("s3cr3t") && !text.contains("hunter2"),
            "{text}"
        );
    }

    #[test]
    fn hello_reply_distinguishes_welcome_and_error() {
        let err = ErrorMsg {
            code: ErrorCode::TenantDisabled,
            message: "x".into(),
        };
        let text = serde_json::to_string(&HelloReply::Error(err.clone())).expect("serialize");
        assert!(
            text.starts_with(r#"{"type":"error","code":"tenant_disabled""#),
            "{text}"
        );
        let back: HelloReply = serde_json::from_str(&text).expect("parse");
        assert_eq!(back, HelloReply::Error(err));
    }

    fn tenant_control(tenant: &str, agent: &str, services: &[&str]) -> Hello {
        Hello::new(Role::TenantControl {
            tenant: tenant.into(),
            secret: "s".into(),
            agent: agent.into(),
            services: services.iter().map(|s| s.to_string()).collect(),
            provider_access: true,
            tenant_key: "00".repeat(32),
            early_client_hello: false,
        })
    }

    #[test]
    fn parsing_a_hello_checks_names_and_names_the_field() {
        let parse = |hello: &Hello| {
            let text = serde_json::to_string(hello).expect("serialize");
            serde_json::from_str::<Hello>(&text).map_err(|e| e.to_string())
        };
        let too_many: Vec<String> = (0..=MAX_SERVICES).map(|i| format!("s{i}")).collect();
        let too_many: Vec<&str> = too_many.iter().map(String::as_str).collect();
        let long_service = "s".repeat(65);
        let cases = [
            (tenant_control("acme\u{1b}[31m", "a", &[]), "tenant:"),
            (tenant_control("", "a", &[]), "tenant:"),
            (tenant_control("-acme", "a", &[]), "tenant:"),
            (tenant_control("acme", "a\n", &[]), "agent:"),
            (tenant_control("acme", "é", &[]), "agent:"),
            (tenant_control("acme", &"a".repeat(65), &[]), "agent:"),
            (tenant_control("acme", "a", &["ok", "no way"]), "services:"),
            (tenant_control("acme", "a", &[&long_service]), "services:"),
            (tenant_control("acme", "a", &too_many), "services:"),
        ];
        for (hello, field) in cases {
            let err = parse(&hello).expect_err("invalid hello");
            assert!(err.starts_with(field), "{err} does not start with {field}");
            assert!(!err.contains('\u{1b}') && !err.contains('\n'), "{err:?}");
        }
        let ok = tenant_control("acme.eu-1", &"~".repeat(MAX_AGENT_LEN), &["backup", "rdp"]);
        assert_eq!(parse(&ok).expect("valid"), ok);
    }
}
