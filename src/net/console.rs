//! The console's side of the wire, without a window: log in, read the tenant list, open a
//! session to a tenant service (steps 4, 5 and 8 from the console's seat) and end it in an
//! end-to-end channel with the tenant, and forward a local port through sessions
//! (`rac connect`). The CLI and the egui console both use it.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::acceptor::Acceptor;
use super::dial::{DialError, Dialer, Route};
use super::known_tenants::KnownTenants;
use super::splice::{Counters, Side, SpliceEnd, Strict, splice};
use super::tls::e2e::{self, E2eError, Identity};
use super::tls::{ClientStream, TlsClient, TlsInfo, Trust};
use crate::wire::frame::{self, FrameError, MAX_FRAME_LEN};
use crate::wire::protocol::{
    ApiRequest, ApiResponse, ErrorCode, Hello, HelloReply, Role, SessionMsg, Stage, TenantInfo,
    TenantPage,
};

/// Why a console request failed, in a form a UI can branch on; [`ConsoleError::retryable`]
/// says whether trying again later may help.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error(transparent)]
    Dial(#[from] DialError),
    /// The SP (or the tenant through it) said no.
    #[error("{message}")]
    Refused { code: ErrorCode, message: String },
    /// The connection to the SP broke: reset, cut mid-frame, or closed before it answered.
    #[error("connection to the SP lost: {0}")]
    ConnectionLost(String),
    /// The SP sent something this console does not understand.
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("not logged in")]
    NotLoggedIn,
    /// The end-to-end channel with the tenant could not be set up (a key that is not the
    /// pinned one, a failed handshake).
    #[error(transparent)]
    EndToEnd(#[from] E2eError),
}

impl ConsoleError {
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ConsoleError::Refused { code, .. } => Some(*code),
            // The console's own finding, with the SP's word for it.
            ConsoleError::EndToEnd(E2eError::TenantKeyChanged { .. }) => {
                Some(ErrorCode::TenantKeyChanged)
            }
            _ => None,
        }
    }

    /// True when the same request may succeed later unchanged: the SP was unreachable or the
    /// connection broke, or a refusal names a passing state (offline, busy, an expired
    /// token). False for wrong credentials, no access, another protocol version, a
    /// certificate this console does not trust, answers it cannot read, and no login yet.
    pub fn retryable(&self) -> bool {
        match self {
            ConsoleError::Dial(d) => !d.is_untrusted(),
            ConsoleError::Refused { code, .. } => !matches!(
                code,
                ErrorCode::AuthFailed | ErrorCode::AccessDenied | ErrorCode::VersionMismatch
            ),
            ConsoleError::ConnectionLost(_) => true,
            ConsoleError::Protocol(_) | ConsoleError::NotLoggedIn => false,
            ConsoleError::EndToEnd(e) => matches!(e, E2eError::Handshake(_)),
        }
    }
}

impl From<FrameError> for ConsoleError {
    fn from(e: FrameError) -> Self {
        if e.is_connection_lost() {
            ConsoleError::ConnectionLost(e.to_string())
        } else {
            ConsoleError::Protocol(e.to_string())
        }
    }
}

/// Where a console connects and as whom.
#[derive(Clone)]
pub struct ConsoleConfig {
    pub route: Route,
    pub trust: Trust,
    /// The name on the SP's certificate.
    pub server_name: String,
    pub user: String,
    /// This console's key and the tenant keys it has pinned.
    pub keys: ConsoleKeys,
}

/// A console's end-to-end identity: its key pair (one per operator and machine) and the
/// tenant keys it has pinned.
#[derive(Clone, Debug)]
pub struct ConsoleKeys {
    pub identity: Arc<Identity>,
    pub known: Arc<KnownTenants>,
}

impl ConsoleKeys {
    /// A key and pins for this run only (the lab's window, tests, benches).
    pub fn in_memory() -> Result<Self, E2eError> {
        Ok(ConsoleKeys {
            identity: Arc::new(Identity::generate()?),
            known: Arc::new(KnownTenants::in_memory()),
        })
    }

    /// The key of `user` in `dir` (`keys/console-USER.pem`, made on first use, 0600) and the
    /// pins in `dir/known_tenants.json`.
    pub fn in_dir(dir: &std::path::Path, user: &str) -> Result<Self, E2eError> {
        let identity =
            Identity::load_or_create(&dir.join("keys").join(format!("console-{user}.pem")))?;
        let known_path = dir.join("known_tenants.json");
        let known =
            KnownTenants::in_file(known_path.clone()).map_err(|source| E2eError::KeyFile {
                path: known_path.display().to_string(),
                source,
            })?;
        Ok(ConsoleKeys {
            identity: Arc::new(identity),
            known: Arc::new(known),
        })
    }

    /// In the platform config dir ([`crate::util::config_dir`]), or in memory when there is
    /// none (no home directory).
    pub fn for_user(user: &str) -> Result<Self, E2eError> {
        match crate::util::config_dir() {
            Some(dir) => Self::in_dir(&dir, user),
            None => Self::in_memory(),
        }
    }
}

impl fmt::Debug for ConsoleConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsoleConfig")
            .field("route", &self.route)
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// How long a console waits for the SP to say why it ended a session before it shows the
/// bare error.
pub const END_REASON_WAIT: Duration = Duration::from_secs(5);

/// The stages of opening a session, as the console shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenStage {
    /// TCP + TLS to the SP (or a gateway) done; the request is sent (step 5).
    RequestSent,
    /// The SP holds the request and asked the tenant (step 6).
    WaitingForTenant,
    /// The tenant's data connection arrived and the two are spliced (step 8).
    Spliced,
}

impl OpenStage {
    pub fn label(self) -> &'static str {
        match self {
            OpenStage::RequestSent => "request sent to the SP",
            OpenStage::WaitingForTenant => "waiting for the tenant",
            OpenStage::Spliced => "data connection spliced",
        }
    }
}

/// An open session: from here the stream carries the tenant service's own bytes.
pub struct Session {
    pub stream: ClientStream,
    pub session_id: String,
    /// The SP address or gateway that carried it.
    pub endpoint: String,
    pub via_gateway: bool,
    /// The console's TLS to the SP, up to `ready`.
    pub tls: TlsInfo,
    /// The end-to-end channel with the tenant that carries the session.
    pub e2e: EndToEnd,
    /// Each stage with the time since `connect()` began.
    pub stages: Vec<(OpenStage, Duration)>,
}

/// The end-to-end channel of a session, as the Connection view shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndToEnd {
    pub version: String,
    pub cipher: String,
    /// SHA-256 of the tenant's key, `AB:CD:..`.
    pub tenant_key: String,
    /// The key was pinned by this session (first use); else it matched an earlier pin.
    pub pinned_now: bool,
}

/// A logged-in console. Cheap to share: every request opens its own connection.
pub struct ConsoleClient {
    config: ConsoleConfig,
    dialer: Arc<Dialer>,
    token: Mutex<Option<String>>,
    /// Names this SP among the console's tenant pins: the SHA-256 of the CA or certificate
    /// it is trusted by.
    sp_id: String,
    /// Sends the end-to-end ClientHello ahead in the session hello (the default); off, it
    /// goes after `ready`, as to an SP or tenant that does not take it ahead.
    client_hello_ahead: std::sync::atomic::AtomicBool,
}

impl fmt::Debug for ConsoleClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ConsoleClient({:?})", self.config)
    }
}

/// A live tenant list: the snapshot, then changes as they happen.
pub struct TenantFeed {
    stream: ClientStream,
}

/// A compact page's tenants; a page that names what it does not hold is the SP's fault.
pub fn page_rows(page: TenantPage) -> Result<Vec<TenantInfo>, ConsoleError> {
    page.into_tenants()
        .map_err(|e| ConsoleError::Protocol(format!("a malformed tenant list page: {e}")))
}

impl TenantFeed {
    /// The next snapshot or change; `None` when the SP closed the feed.
    pub async fn next(&mut self) -> Result<Option<ApiResponse>, ConsoleError> {
        Ok(frame::read_frame(&mut self.stream, MAX_FRAME_LEN).await?)
    }
}

impl ConsoleClient {
    pub fn new(config: ConsoleConfig) -> Result<Arc<Self>, super::tls::TlsError> {
        let tls = TlsClient::new(&config.trust, &config.server_name)?;
        let sp_id = match &config.trust {
            Trust::CaFile(path) => super::tls::pem_fingerprint(path)?,
            Trust::Pinned(fp) => crate::wire::format_fingerprint(fp),
        };
        Ok(Arc::new(ConsoleClient {
            dialer: Dialer::new(&config.route, tls),
            config,
            token: Mutex::new(None),
            sp_id,
            client_hello_ahead: std::sync::atomic::AtomicBool::new(true),
        }))
    }

    /// Whether later sessions send their ClientHello ahead (see PROTOCOL.md, "The ClientHello
    /// sent ahead"); on by default. `rac bench` turns it off on a second console to measure
    /// what it saves.
    pub fn set_client_hello_ahead(&self, ahead: bool) {
        self.client_hello_ahead
            .store(ahead, std::sync::atomic::Ordering::Relaxed);
    }

    /// Forgets the key pinned for `tenant` of this SP, so the next session pins the key the
    /// tenant presents then. Returns whether one was pinned.
    pub fn forget_tenant_key(&self, tenant: &str) -> std::io::Result<bool> {
        self.config.keys.known.forget(&self.sp_id, tenant)
    }

    /// The key pinned for `tenant` of this SP, if any.
    pub fn pinned_tenant_key(&self, tenant: &str) -> Option<[u8; 32]> {
        self.config.keys.known.get(&self.sp_id, tenant)
    }

    pub fn config(&self) -> &ConsoleConfig {
        &self.config
    }

    /// Uses a token obtained elsewhere (an earlier login) instead of logging in.
    pub fn set_token(&self, token: String) {
        *crate::util::lock(&self.token) = Some(token);
    }

    fn token(&self) -> Result<String, ConsoleError> {
        crate::util::lock(&self.token)
            .clone()
            .ok_or(ConsoleError::NotLoggedIn)
    }

    /// Logs in with a password (step 4); keeps the session token for later requests.
    /// Returns the token's lifetime in seconds.
    pub async fn login(&self, password: &str) -> Result<u64, ConsoleError> {
        let (_, welcome) = self
            .operator_connection(Role::Operator {
                user: self.config.user.clone(),
                password: Some(password.to_string()),
                token: None,
                console_key: Some(self.config.keys.identity.fingerprint_text()),
            })
            .await?;
        let token = welcome
            .token
            .ok_or_else(|| ConsoleError::Protocol("welcome without a token".into()))?;
        *crate::util::lock(&self.token) = Some(token);
        Ok(welcome.token_expires_in_secs.unwrap_or(0))
    }

    async fn operator_connection(
        &self,
        role: Role,
    ) -> Result<(ClientStream, crate::wire::protocol::Welcome), ConsoleError> {
        let mut stream = self.dialer.dial().await?.stream;
        frame::write_frame(&mut stream, &Hello::new(role)).await?;
        match frame::read_frame::<HelloReply, _>(&mut stream, MAX_FRAME_LEN).await? {
            Some(HelloReply::Welcome(w)) => Ok((stream, w)),
            Some(HelloReply::Error(e)) => Err(ConsoleError::Refused {
                code: e.code,
                message: e.message,
            }),
            None => Err(ConsoleError::ConnectionLost(
                "the SP closed the connection before answering".into(),
            )),
        }
    }

    async fn token_connection(&self) -> Result<ClientStream, ConsoleError> {
        let role = Role::Operator {
            user: self.config.user.clone(),
            password: None,
            token: Some(self.token()?),
            console_key: None,
        };
        Ok(self.operator_connection(role).await?.0)
    }

    /// The tenant list once, in compact pages (without the tenants' keys).
    pub async fn tenants(&self) -> Result<Vec<TenantInfo>, ConsoleError> {
        self.tenants_in(true).await
    }

    /// The tenant list once, every field (each tenant's key fingerprint too): `rac tenants`.
    pub async fn tenants_in_full(&self) -> Result<Vec<TenantInfo>, ConsoleError> {
        self.tenants_in(false).await
    }

    async fn tenants_in(&self, compact: bool) -> Result<Vec<TenantInfo>, ConsoleError> {
        let mut feed = self.request_tenants(false, compact).await?;
        let mut all = Vec::new();
        loop {
            match feed.next().await? {
                // An SP that does not know the compact form answers with the whole list.
                Some(ApiResponse::Tenants { tenants }) => return Ok(tenants),
                Some(ApiResponse::TenantPage(page)) => {
                    let more = page.more;
                    all.extend(page_rows(page)?);
                    if !more {
                        return Ok(all);
                    }
                }
                Some(ApiResponse::Error { code, message }) => {
                    return Err(ConsoleError::Refused { code, message });
                }
                other => {
                    return Err(ConsoleError::Protocol(format!(
                        "unexpected answer {other:?}"
                    )));
                }
            }
        }
    }

    /// The tenant list, then its changes, until dropped.
    pub async fn subscribe(&self) -> Result<TenantFeed, ConsoleError> {
        self.request_tenants(true, true).await
    }

    async fn request_tenants(
        &self,
        subscribe: bool,
        compact: bool,
    ) -> Result<TenantFeed, ConsoleError> {
        let mut stream = self.token_connection().await?;
        let request = ApiRequest::ListTenants { subscribe, compact };
        frame::write_frame(&mut stream, &request).await?;
        Ok(TenantFeed { stream })
    }

    /// Ends the session token at the SP.
    pub async fn logout(&self) -> Result<(), ConsoleError> {
        let mut stream = self.token_connection().await?;
        frame::write_frame(&mut stream, &ApiRequest::Logout).await?;
        let _ = frame::read_frame::<ApiResponse, _>(&mut stream, MAX_FRAME_LEN).await?;
        *crate::util::lock(&self.token) = None;
        Ok(())
    }

    /// Why the SP ended `session_id`, one of this operator's sessions, asked on an operator
    /// connection after its end-to-end channel was cut (the SP cannot write into that
    /// channel). `None` when the SP did not end it (the tenant or the network did) or no
    /// longer remembers; an SP older than this question refuses it (`bad_request`).
    pub async fn session_end_reason(
        &self,
        session_id: &str,
    ) -> Result<Option<String>, ConsoleError> {
        let mut stream = self.token_connection().await?;
        let request = ApiRequest::SessionEnd {
            session_id: session_id.to_string(),
        };
        frame::write_frame(&mut stream, &request).await?;
        let answer = frame::read_frame::<ApiResponse, _>(&mut stream, MAX_FRAME_LEN).await?;
        // close_notify, so the SP reads a clean end.
        let _ = tokio::io::AsyncWriteExt::shutdown(&mut stream).await;
        match answer {
            Some(ApiResponse::SessionEnded { reason, .. }) => Ok(reason),
            Some(ApiResponse::Error { code, message }) => {
                Err(ConsoleError::Refused { code, message })
            }
            Some(other) => Err(ConsoleError::Protocol(format!(
                "unexpected answer {other:?}"
            ))),
            None => Err(ConsoleError::ConnectionLost(
                "the SP closed the connection before answering".into(),
            )),
        }
    }

    /// The words for a session that ended with `error` (its channel cut): the SP's reason
    /// when the SP ended it, else the error itself. Waits for the SP's answer at most
    /// [`END_REASON_WAIT`]; the window's tab and `rac connect` both say it.
    pub async fn describe_session_end(&self, session_id: &str, error: &str) -> String {
        match tokio::time::timeout(END_REASON_WAIT, self.session_end_reason(session_id)).await {
            Ok(Ok(Some(reason))) => reason,
            Ok(Ok(None)) => format!("session ended: {error}"),
            Ok(Err(e)) => {
                tracing::debug!(?session_id, "asking the SP why the session ended: {e}");
                format!("session ended: {error}")
            }
            Err(_) => format!("session ended: {error}"),
        }
    }

    /// Opens a session to `service` on `tenant` (steps 5 to 8). `on_stage` hears each stage
    /// as it is reached.
    pub async fn open_session(
        &self,
        tenant: &str,
        service: &str,
        mut on_stage: impl FnMut(OpenStage, Duration),
    ) -> Result<Session, ConsoleError> {
        let started = Instant::now();
        let mut stages = Vec::new();
        let mut stage = |s: OpenStage, stages: &mut Vec<(OpenStage, Duration)>| {
            let at = started.elapsed();
            stages.push((s, at));
            on_stage(s, at);
        };
        let token = self.token()?;
        // The end-to-end handshake starts here: its ClientHello goes ahead in the hello.
        let inner = e2e::Dialing::start(&self.config.keys.identity)?;
        let dialed = self.dialer.dial().await?;
        let mut stream = dialed.stream;
        let hello = Hello::new(Role::ConsoleSession {
            token,
            tenant: tenant.to_string(),
            service: service.to_string(),
            client_hello: self
                .client_hello_ahead
                .load(std::sync::atomic::Ordering::Relaxed)
                .then(|| hex::encode(inner.client_hello())),
        });
        frame::write_frame(&mut stream, &hello).await?;
        stage(OpenStage::RequestSent, &mut stages);
        loop {
            match frame::read_frame::<SessionMsg, _>(&mut stream, MAX_FRAME_LEN).await? {
                Some(SessionMsg::Progress {
                    stage: Stage::WaitingForTenant,
                }) => stage(OpenStage::WaitingForTenant, &mut stages),
                // A later version's stage: nothing to show, keep waiting.
                Some(SessionMsg::Progress {
                    stage: Stage::Other,
                }) => {}
                Some(SessionMsg::Ready {
                    session_id,
                    tenant_key,
                    client_hello_sent,
                }) => {
                    stage(OpenStage::Spliced, &mut stages);
                    let tls = super::tls::client_info(&stream);
                    let (stream, e2e) = self
                        .end_to_end(stream, tenant, tenant_key, inner, client_hello_sent)
                        .await?;
                    return Ok(Session {
                        stream,
                        session_id,
                        endpoint: dialed.endpoint,
                        via_gateway: dialed.via_gateway,
                        tls,
                        e2e,
                        stages,
                    });
                }
                Some(SessionMsg::Error { code, message }) => {
                    return Err(ConsoleError::Refused { code, message });
                }
                None => {
                    return Err(ConsoleError::ConnectionLost(
                        "the SP closed the connection before the session opened".into(),
                    ));
                }
            }
        }
    }
}

impl ConsoleClient {
    /// After `ready`: leaves the SP's TLS and completes the end-to-end handshake with the
    /// tenant (`hello_sent`: the tenant got its ClientHello ahead). The tenant's key must be
    /// the one pinned for it; the first time, the one the SP has on record (if it says), and
    /// it is pinned then.
    async fn end_to_end(
        &self,
        stream: ClientStream,
        tenant: &str,
        on_record: Option<String>,
        inner: e2e::Dialing,
        hello_sent: bool,
    ) -> Result<(ClientStream, EndToEnd), ConsoleError> {
        let raw = e2e::leave_client(stream)?;
        let pinned = self.pinned_tenant_key(tenant);
        let on_record = match on_record {
            Some(text) => Some(crate::wire::parse_fingerprint(&text).map_err(|_| {
                ConsoleError::Protocol("ready: tenant_key is not a fingerprint".into())
            })?),
            None => None,
        };
        let expected = match (pinned, on_record) {
            (Some(pin), _) => Some((pin, true)),
            (None, Some(record)) => Some((record, false)),
            (None, None) => None,
        };
        let (stream, presented) = inner.finish(raw, expected, hello_sent).await?;
        if pinned.is_none() {
            tracing::info!(?tenant, key = %crate::wire::format_fingerprint(&presented), "pinned the tenant's key (first use)");
            if let Err(e) = self.config.keys.known.pin(&self.sp_id, tenant, &presented) {
                tracing::warn!(?tenant, "could not keep the tenant's key pin: {e}");
            }
        }
        let info = super::tls::client_info(&stream);
        Ok((
            stream,
            EndToEnd {
                version: info.version,
                cipher: info.cipher,
                tenant_key: crate::wire::format_fingerprint(&presented),
                pinned_now: pinned.is_none(),
            },
        ))
    }
}

/// `rac connect`: every connection to `listener` gets its own session to `service` on
/// `tenant`, until `shutdown` fires.
pub async fn forward(
    client: Arc<ConsoleClient>,
    tenant: String,
    service: String,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let tracker = TaskTracker::new();
    let mut acceptor = Acceptor::new("rac connect", listener);
    while let Some((local, peer)) = acceptor.next(&shutdown).await {
        let _ = local.set_nodelay(true);
        let (client, tenant, service, shutdown) = (
            client.clone(),
            tenant.clone(),
            service.clone(),
            shutdown.clone(),
        );
        tracker.spawn(async move {
            match client.open_session(&tenant, &service, |_, _| {}).await {
                Ok(session) => {
                    tracing::info!(%peer, ?tenant, ?service, via = %session.endpoint, "forwarding");
                    let report = splice(local, Strict(session.stream), &Counters::default(), &shutdown).await;
                    match &report.end {
                        // The end-to-end channel was cut (`Strict`: no close_notify is an
                        // error): the SP may have ended the session, and can say why.
                        SpliceEnd::Failed { side: Side::B, error } => {
                            let why = client.describe_session_end(&session.session_id, error).await;
                            tracing::warn!(%peer, sent = report.a_to_b, received = report.b_to_a, "connection closed: {why}");
                        }
                        _ => tracing::info!(%peer, sent = report.a_to_b, received = report.b_to_a, "connection closed"),
                    }
                }
                Err(e) => tracing::warn!(%peer, ?tenant, ?service, "session failed: {e}"),
            }
        });
    }
    tracker.close();
    tracker.wait().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::dial::{Attempt, DialFailure};

    fn refused(code: ErrorCode) -> ConsoleError {
        ConsoleError::Refused {
            code,
            message: String::new(),
        }
    }

    #[test]
    fn only_passing_failures_are_retryable() {
        let unreachable = DialError {
            attempts: vec![Attempt {
                endpoint: "127.0.0.1:1".into(),
                failure: DialFailure::ConnectTimeout(Duration::from_secs(5)),
            }],
        };
        assert!(ConsoleError::Dial(unreachable).retryable());
        let untrusted = DialError {
            attempts: vec![Attempt {
                endpoint: "127.0.0.1:1".into(),
                failure: DialFailure::Untrusted("certificate not trusted".into()),
            }],
        };
        assert!(!ConsoleError::Dial(untrusted).retryable());
        for code in [
            ErrorCode::TenantOffline,
            ErrorCode::Busy,
            ErrorCode::TokenExpired,
        ] {
            assert!(refused(code).retryable(), "{code:?}");
        }
        for code in [
            ErrorCode::AuthFailed,
            ErrorCode::AccessDenied,
            ErrorCode::VersionMismatch,
        ] {
            assert!(!refused(code).retryable(), "{code:?}");
        }
        // A cut connection is worth another try; an answer this console cannot read is not.
        assert!(ConsoleError::from(FrameError::Truncated).retryable());
        let garbage = serde_json::from_slice::<ApiResponse>(b"{").expect_err("not JSON");
        assert!(!ConsoleError::from(FrameError::Malformed(garbage)).retryable());
        assert!(!ConsoleError::NotLoggedIn.retryable());
    }
}
