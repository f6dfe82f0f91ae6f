//! Every message of the relay protocol, in one versioned place. `docs/PROTOCOL.md` describes
//! the same messages for someone writing a peer in another language.
//!
//! A connection to the SP port starts with one [`Hello`] frame that names its role. What
//! follows depends on the role:
//! - tenant control: [`Welcome`] or [`ErrorMsg`], then [`ControlMsg`] frames both ways;
//! - tenant data and console session: zero or more [`SessionMsg::Progress`] then
//!   [`SessionMsg::Ready`] (after which the stream is raw bytes) or [`SessionMsg::Error`];
//! - operator: [`Welcome`] or [`ErrorMsg`], then [`ApiRequest`] / [`ApiResponse`] frames.

use std::fmt;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The protocol version this build speaks. A `Hello` with another version is refused with
/// [`ErrorCode::VersionMismatch`].
pub const PROTOCOL_VERSION: u32 = 1;

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
    type Error = String;

    fn try_from(wire: HelloWire) -> Result<Self, String> {
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
    pub fn validate(&self) -> Result<(), String> {
        match &self.role {
            Role::TenantControl {
                tenant,
                agent,
                services,
                ..
            } => {
                check_name("tenant", tenant)?;
                check_agent(agent)?;
                validate_services(services)
            }
            Role::TenantData {
                tenant, session_id, ..
            } => {
                check_name("tenant", tenant)?;
                check_name("session_id", session_id)
            }
            Role::ConsoleSession {
                tenant, service, ..
            } => {
                check_name("tenant", tenant)?;
                check_name("service", service)
            }
            Role::Operator { .. } => Ok(()),
        }
    }
}

/// Checks a tenant's list of offered services (hello and `status`): at most
/// [`MAX_SERVICES`] names, each by the name rule.
pub fn validate_services(services: &[String]) -> Result<(), String> {
    if services.len() > MAX_SERVICES {
        return Err(format!(
            "services: {} entries, at most {MAX_SERVICES} allowed",
            services.len()
        ));
    }
    services
        .iter()
        .try_for_each(|service| check_name("services", service))
}

fn check_name(field: &str, value: &str) -> Result<(), String> {
    crate::wire::validate_name(value).map_err(|_| {
        format!(
            "{field}: \"{}\" is not a valid name (1 to 64 ASCII letters, digits, '.', '_' or '-', \
             starting with a letter or digit)",
            escape_untrusted(value, 80)
        )
    })
}

fn check_agent(agent: &str) -> Result<(), String> {
    let printable = agent.bytes().all(|b| (0x20..=0x7e).contains(&b));
    if agent.len() > MAX_AGENT_LEN || !printable {
        return Err(format!(
            "agent: \"{}\" is not valid (at most {MAX_AGENT_LEN} printable ASCII characters)",
            escape_untrusted(agent, 80)
        ));
    }
    Ok(())
}

/// A peer's string made safe to show to an operator or write to a log: everything but
/// printable ASCII is escaped (`\n`, `\u{1b}`, `\u{202e}`; a backslash as `\\`), and the
/// text is cut after `max_chars` characters with `...`. The result is one line of plain ASCII:
/// no terminal escape, no line break, no look-alike or right-to-left character.
pub fn escape_untrusted(value: &str, max_chars: usize) -> String {
    let mut out = String::with_capacity(value.len().min(max_chars));
    for (i, c) in value.chars().enumerate() {
        if i == max_chars {
            out.push_str("...");
            break;
        }
        match c {
            '\\' => out.push_str("\\\\"),
            ' '..='~' => out.push(c),
            _ => out.extend(c.escape_default()),
        }
    }
    out
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
    },
    /// A console logging in and reading the tenant list (step 4). Either `password` or
    /// `token` (a token from an earlier login) is given.
    Operator {
        user: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        password: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
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
                ..
            } => f
                .debug_struct("TenantControl")
                .field("tenant", tenant)
                .field("secret", &"***")
                .field("agent", agent)
                .field("services", services)
                .field("provider_access", provider_access)
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
}

/// A refusal. The connection is closed after it is sent.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ErrorMsg {
    pub code: ErrorCode,
    pub message: String,
}

/// Why the SP refused something: stable codes a client can branch on. A code this build does
/// not know (from a newer SP) reads as [`ErrorCode::Other`], so the frame that carries it
/// (an `error`, a `goodbye`) still parses and its message is still shown.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    VersionMismatch,
    BadRequest,
    AuthFailed,
    RateLimited,
    TokenExpired,
    AccessDenied,
    UnknownTenant,
    TenantDisabled,
    TenantOffline,
    ProviderAccessDisabled,
    ServiceNotOffered,
    ServiceUnavailable,
    TenantTimeout,
    TenantRejected,
    BadNonce,
    AlreadyConnected,
    /// Every password-check slot of the SP is taken: try the login again in a moment.
    Busy,
    Overloaded,
    ShuttingDown,
    Internal,
    /// `goodbye` only: a newer control connection with the same tenant's credentials took
    /// this one's place. The tenant should not reconnect at once (it would replace the
    /// newcomer in turn): two redirectors run with one tenant's secret.
    Replaced,
    /// A code this build does not know. Never sent.
    #[serde(other)]
    Other,
}

impl ErrorCode {
    /// The reason in words, as a console shows it.
    pub fn describe(self) -> &'static str {
        match self {
            ErrorCode::VersionMismatch => "protocol version mismatch",
            ErrorCode::BadRequest => "malformed request",
            ErrorCode::AuthFailed => "login failed",
            ErrorCode::RateLimited => "too many failed attempts; try again later",
            ErrorCode::TokenExpired => "session token expired; log in again",
            ErrorCode::AccessDenied => "access denied",
            ErrorCode::UnknownTenant => "unknown tenant",
            ErrorCode::TenantDisabled => "tenant is disabled",
            ErrorCode::TenantOffline => "tenant is offline",
            ErrorCode::ProviderAccessDisabled => "remote access disabled by the tenant",
            ErrorCode::ServiceNotOffered => "service not offered by the tenant",
            ErrorCode::ServiceUnavailable => "the tenant could not reach its local service",
            ErrorCode::TenantTimeout => "tenant did not answer in time",
            ErrorCode::TenantRejected => "tenant refused the session",
            ErrorCode::BadNonce => "unknown, expired or already used nonce",
            ErrorCode::AlreadyConnected => "tenant is already connected from elsewhere",
            ErrorCode::Busy => "the SP is busy checking other logins; try again in a moment",
            ErrorCode::Overloaded => "server busy; try again",
            ErrorCode::ShuttingDown => "server is shutting down",
            ErrorCode::Internal => "internal server error",
            ErrorCode::Replaced => "replaced by a newer connection of the same tenant",
            ErrorCode::Other => "refused (a reason this version does not know)",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// The first answer to a tenant-control or operator hello.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum HelloReply {
    Welcome(Welcome),
    Error(ErrorMsg),
}

/// Messages on an established control connection, in both directions.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ControlMsg {
    /// Either side, every `heartbeat_secs`. The peer answers `Pong` with the same `seq`.
    Ping {
        seq: u64,
    },
    Pong {
        seq: u64,
    },
    /// SP → tenant: a console waits for a data connection (step 6).
    OpenData {
        session_id: String,
        nonce: String,
        service: String,
    },
    /// Tenant → SP: the tenant will not open that session (step 7). The SP passes on only
    /// the codes of [`TENANT_REJECT_CODES`]; a code this build does not know parses as
    /// [`ErrorCode::TenantRejected`], so the frame (and the control connection) survives and
    /// the console hears at once.
    Reject {
        session_id: String,
        #[serde(deserialize_with = "reject_code")]
        code: ErrorCode,
        reason: String,
    },
    /// Tenant → SP: the offered services or the consent changed.
    Status {
        services: Vec<String>,
        provider_access: bool,
    },
    /// SP → tenant: the current cloud gateway pool.
    Gateways {
        gateways: Vec<String>,
    },
    /// SP → tenant: the SP ends the control connection (tenant disabled, SP shutting down).
    Goodbye {
        code: ErrorCode,
        reason: String,
    },
}

/// Decodes a control frame's body, or says in one escaped line what is wrong with it, naming
/// the frame's `type` when it has one (`"ping" frame: invalid type: string "x", expected
/// u64`), for the `goodbye` that answers it and the log.
///
/// The body must be a JSON object: serde would also take the tag-first array form
/// (`["ping", 1]`), which PROTOCOL.md does not define.
pub fn parse_control(body: &[u8]) -> Result<ControlMsg, String> {
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Err("not a JSON object".to_string());
    }
    serde_json::from_slice(body).map_err(|e| {
        let problem = escape_untrusted(&e.to_string(), 200);
        let kind = serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v.get("type")?.as_str().map(|t| escape_untrusted(t, 40)));
        match kind {
            Some(kind) => format!("\"{kind}\" frame: {problem}"),
            None => problem,
        }
    })
}

/// The codes a tenant may give in `reject`, each about the tenant's own side. Any other code
/// (`token_expired`, `auth_failed`, an unknown word) would let a tenant put words in the SP's
/// mouth; the SP replaces it with [`ErrorCode::TenantRejected`].
pub const TENANT_REJECT_CODES: [ErrorCode; 5] = [
    ErrorCode::ServiceUnavailable,
    ErrorCode::ServiceNotOffered,
    ErrorCode::ProviderAccessDisabled,
    ErrorCode::Busy,
    ErrorCode::Overloaded,
];

/// Reads a `reject` code leniently: any JSON value that is not a known code is
/// [`ErrorCode::TenantRejected`].
fn reject_code<'de, D: serde::Deserializer<'de>>(d: D) -> Result<ErrorCode, D::Error> {
    let value = serde_json::Value::deserialize(d)?;
    Ok(match serde_json::from_value(value) {
        Ok(ErrorCode::Other) | Err(_) => ErrorCode::TenantRejected,
        Ok(code) => code,
    })
}

/// The heartbeat rule of a control connection, as a clock each side keeps: a tick every
/// `heartbeat` (when a ping may be due), and the peer taken for dead once it has been silent
/// for `dead_after`. One timer set to [`next_wake`](Self::next_wake) serves both, so the
/// dead-peer check fires on time instead of at the first tick after the deadline (up to a
/// heartbeat late), and a frame that arrives needs no timer reset: a wake-up whose deadline
/// the peer has since moved is a [`Beat::Nothing`].
#[derive(Debug, Clone)]
pub struct HeartbeatClock {
    heartbeat: Duration,
    dead_after: Duration,
    last_heard: Instant,
    next_tick: Instant,
}

/// What a wake-up of a [`HeartbeatClock`] calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Beat {
    /// Nothing heard for `dead_after`: close the connection.
    Dead,
    /// A heartbeat tick: send a ping if one is due.
    Tick,
    /// Woken for a dead-peer deadline the peer has moved by speaking since.
    Nothing,
}

impl HeartbeatClock {
    /// A clock whose peer was last heard `now` (its hello or welcome).
    pub fn new(now: Instant, heartbeat: Duration, dead_after: Duration) -> Self {
        HeartbeatClock {
            heartbeat,
            dead_after,
            last_heard: now,
            next_tick: now + heartbeat,
        }
    }

    /// The peer sent a frame (any frame) at `now`.
    pub fn heard(&mut self, now: Instant) {
        self.last_heard = self.last_heard.max(now);
    }

    pub fn last_heard(&self) -> Instant {
        self.last_heard
    }

    /// When the peer is dead unless it speaks first.
    pub fn dead_at(&self) -> Instant {
        self.last_heard + self.dead_after
    }

    /// When to wake next: the next tick or the dead-peer deadline, whichever comes first.
    pub fn next_wake(&self) -> Instant {
        self.next_tick.min(self.dead_at())
    }

    /// At a wake-up at `now`: dead, a tick (the next is scheduled a heartbeat from now), or
    /// nothing yet.
    pub fn wake(&mut self, now: Instant) -> Beat {
        if now >= self.dead_at() {
            Beat::Dead
        } else if now >= self.next_tick {
            self.next_tick = now + self.heartbeat;
            Beat::Tick
        } else {
            Beat::Nothing
        }
    }
}

/// What a console session or tenant data connection hears before the splice.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SessionMsg {
    /// A stage of the flow was reached (console only).
    Progress {
        stage: Stage,
    },
    /// Spliced: from the next byte on, the stream is the tenant service's raw bytes.
    Ready {
        session_id: String,
    },
    Error {
        code: ErrorCode,
        message: String,
    },
}

/// The stages a console sees while a session opens.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// The SP accepted the request and sent `OpenData` to the tenant.
    WaitingForTenant,
}

/// Operator API requests, after a successful operator hello.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ApiRequest {
    /// The tenant list once; with `subscribe`, followed by live `TenantChanged` /
    /// `TenantRemoved` frames until the connection closes.
    ListTenants {
        #[serde(default)]
        subscribe: bool,
    },
    /// Ends the token now.
    Logout,
}

/// Operator API responses and events.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ApiResponse {
    Tenants { tenants: Vec<TenantInfo> },
    TenantChanged { tenant: TenantInfo },
    TenantRemoved { name: String },
    LoggedOut,
    Error { code: ErrorCode, message: String },
}

/// Whether a tenant can be reached now.
#[derive(
    Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash, PartialOrd, Ord, Default,
)]
#[serde(rename_all = "snake_case")]
pub enum TenantStatus {
    Online,
    #[default]
    Offline,
    Disabled,
}

impl TenantStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TenantStatus::Online => "online",
            TenantStatus::Offline => "offline",
            TenantStatus::Disabled => "disabled",
        }
    }
}

/// One row of the tenant list: the registry's account joined with live presence.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct TenantInfo {
    pub name: String,
    pub status: TenantStatus,
    #[serde(default)]
    pub description: String,
    /// Unix seconds when the current control connection was accepted.
    pub connected_since: Option<u64>,
    /// Unix seconds of the last control connection's end (or of now, while online).
    pub last_seen: Option<u64>,
    pub remote_addr: Option<String>,
    pub agent_version: Option<String>,
    #[serde(default)]
    pub services: Vec<String>,
    pub provider_access: bool,
    /// Round trip of the last heartbeat, in milliseconds.
    pub heartbeat_rtt_ms: Option<f64>,
    #[serde(default)]
    pub open_sessions: u32,
}

impl TenantInfo {
    /// May a session to `service` be opened on this tenant now? The rule the SP enforces
    /// (after the operator's scope), and that `rac connect` checks first so its message is the
    /// SP's: disabled, offline, provider access off, or the service not offered.
    pub fn check_open(&self, service: &str) -> Result<(), ErrorMsg> {
        let tenant = &self.name;
        let refuse = |code, message: String| Err(ErrorMsg { code, message });
        match self.status {
            TenantStatus::Disabled => refuse(
                ErrorCode::TenantDisabled,
                format!("tenant {tenant} is disabled"),
            ),
            TenantStatus::Offline => refuse(
                ErrorCode::TenantOffline,
                format!("tenant {tenant} is offline (its redirector is not connected)"),
            ),
            TenantStatus::Online if !self.provider_access => refuse(
                ErrorCode::ProviderAccessDisabled,
                format!("tenant {tenant} has disabled remote access by the provider"),
            ),
            TenantStatus::Online if !self.services.iter().any(|s| s == service) => refuse(
                ErrorCode::ServiceNotOffered,
                format!(
                    "tenant {tenant} does not offer the service {service:?} (it offers: {})",
                    if self.services.is_empty() {
                        "none".to_string()
                    } else {
                        self.services.join(", ")
                    }
                ),
            ),
            TenantStatus::Online => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_wire_shape_is_flat() {
        let hello = Hello::new(Role::ConsoleSession {
            token: "t".into(),
            tenant: "acme".into(),
            service: "backup".into(),
        });
        let json = serde_json::to_value(&hello).expect("serialize");
        assert_eq!(
            json,
            serde_json::json!({"version": 1, "role": "console_session", "token": "t",
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
        });
        let op = Role::Operator {
            user: "root".into(),
            password: Some("hunter2".into()),
            token: None,
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

    #[test]
    fn escape_untrusted_leaves_one_line_of_plain_ascii() {
        assert_eq!(escape_untrusted("plain text: ok", 80), "plain text: ok");
        assert_eq!(
            escape_untrusted("a\u{1b}[31mred\nnext\r\\\u{202e}", 80),
            "a\\u{1b}[31mred\\nnext\\r\\\\\\u{202e}"
        );
        assert_eq!(escape_untrusted("abcdef", 3), "abc...");
        let nasty: String = (0u8..=255).map(char::from).collect();
        let escaped = escape_untrusted(&nasty, 1000);
        assert!(
            escaped.bytes().all(|b| (0x20..=0x7e).contains(&b)),
            "{escaped}"
        );
    }

    #[test]
    fn an_unknown_reject_code_parses_as_tenant_rejected() {
        for code in [r#""no_such_code""#, "42", "null", r#""token_expired""#] {
            let text =
                format!(r#"{{"type":"reject","session_id":"s","code":{code},"reason":"r"}}"#);
            let msg: ControlMsg = serde_json::from_str(&text).expect("parses");
            let ControlMsg::Reject { code: got, .. } = msg else {
                panic!("{msg:?}");
            };
            let expected = if code.contains("token_expired") {
                ErrorCode::TokenExpired
            } else {
                ErrorCode::TenantRejected
            };
            assert_eq!(got, expected, "{code}");
        }
    }

    #[test]
    fn a_dead_peer_is_due_at_dead_after_not_at_the_next_tick() {
        let t0 = Instant::now();
        let secs = Duration::from_secs;
        // Heartbeat 30 s, dead after 95 s: ticks at 30, 60, 90, 120 s.
        let mut clock = HeartbeatClock::new(t0, secs(30), secs(95));
        let mut wakes = Vec::new();
        loop {
            let at = clock.next_wake();
            let beat = clock.wake(at);
            wakes.push((at - t0, beat));
            if beat == Beat::Dead {
                break;
            }
        }
        assert_eq!(
            wakes,
            [
                (secs(30), Beat::Tick),
                (secs(60), Beat::Tick),
                (secs(90), Beat::Tick),
                (secs(95), Beat::Dead),
            ]
        );
        // A frame moves the deadline; a wake-up for the old one does nothing.
        let mut clock = HeartbeatClock::new(t0, secs(10), secs(11));
        assert_eq!(clock.wake(t0 + secs(10)), Beat::Tick);
        clock.heard(t0 + secs(10));
        assert_eq!(clock.next_wake(), t0 + secs(20));
        assert_eq!(clock.dead_at(), t0 + secs(21));
        assert_eq!(clock.wake(t0 + secs(11)), Beat::Nothing);
        assert_eq!(clock.wake(t0 + secs(20)), Beat::Tick);
        assert_eq!(clock.next_wake(), t0 + secs(21));
        assert_eq!(
            clock.wake(t0 + secs(21) - Duration::from_millis(1)),
            Beat::Nothing
        );
        assert_eq!(clock.wake(t0 + secs(21)), Beat::Dead);
        // Never later than the deadline, whatever the heartbeat.
        let clock = HeartbeatClock::new(t0, secs(600), secs(5));
        assert_eq!(clock.next_wake(), t0 + secs(5));
    }

    #[test]
    fn an_unknown_error_code_parses_as_other() {
        let reply: HelloReply =
            serde_json::from_str(r#"{"type":"error","code":"new_in_v2","message":"m"}"#)
                .expect("parses");
        assert_eq!(
            reply,
            HelloReply::Error(ErrorMsg {
                code: ErrorCode::Other,
                message: "m".into()
            })
        );
        let text = serde_json::to_string(&ErrorCode::Replaced).expect("serialize");
        assert_eq!(text, r#""replaced""#);
    }
}
