//! Reaching the SP port: directly, or through a pool of cloud gateways with failover. The
//! dialer remembers which endpoint worked last and starts there next time; on a connect error
//! or a handshake timeout it moves to the next one. It also remembers since when each endpoint
//! has failed every try, so the tenant redirector can forget a pushed gateway that stays dead.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use tokio::net::TcpStream;

use super::tls::{ClientStream, HandshakeError, TlsClient};

/// How a client reaches the SP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// The SP's own address.
    Direct(String),
    /// One or more cloud gateways in front of the SP, tried in order with failover.
    Gateways(Vec<String>),
}

impl Route {
    pub fn endpoints(&self) -> Vec<String> {
        match self {
            Route::Direct(addr) => vec![addr.clone()],
            Route::Gateways(list) => list.clone(),
        }
    }
}

/// Why one endpoint could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DialFailure {
    #[error("no answer within {0:?}")]
    ConnectTimeout(Duration),
    #[error("{0}")]
    Connect(std::io::Error),
    #[error("TLS handshake timed out after {0:?}")]
    HandshakeTimeout(Duration),
    /// The endpoint answered, but its certificate was refused: retrying will not help.
    #[error("{0}")]
    Untrusted(String),
    /// The TLS handshake failed for another reason (a reset, a protocol error).
    #[error("{0}")]
    Tls(std::io::Error),
}

impl DialFailure {
    fn from_handshake(err: std::io::Error) -> DialFailure {
        match err
            .get_ref()
            .and_then(|e| e.downcast_ref::<HandshakeError>())
        {
            Some(HandshakeError::Untrusted(_)) => DialFailure::Untrusted(err.to_string()),
            _ => DialFailure::Tls(err),
        }
    }
}

/// One endpoint tried, and why it failed.
#[derive(Debug)]
pub struct Attempt {
    pub endpoint: String,
    pub failure: DialFailure,
}

impl std::fmt::Display for Attempt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.endpoint, self.failure)
    }
}

/// Why no endpoint could be reached: one [`Attempt`] per endpoint tried, none when the route
/// has no endpoint at all.
#[derive(Debug, thiserror::Error)]
pub struct DialError {
    pub attempts: Vec<Attempt>,
}

impl std::fmt::Display for DialError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.attempts.is_empty() {
            return f.write_str("could not reach the SP: no endpoint configured");
        }
        f.write_str("could not reach the SP: ")?;
        for (i, attempt) in self.attempts.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{attempt}")?;
        }
        Ok(())
    }
}

impl DialError {
    /// True when some endpoint answered but its certificate was refused.
    pub fn is_untrusted(&self) -> bool {
        self.attempts
            .iter()
            .any(|a| matches!(a.failure, DialFailure::Untrusted(_)))
    }
}

/// A connected, TLS-secured stream to the SP, and which way it went.
pub struct Dialed {
    pub stream: ClientStream,
    /// The address actually used (the SP or a gateway).
    pub endpoint: String,
    /// True when the endpoint is a gateway.
    pub via_gateway: bool,
}

/// Dials the SP along a route, sharing one TLS client (so sessions are resumed).
pub struct Dialer {
    endpoints: Mutex<Vec<String>>,
    /// Since when each endpoint has failed every try (absent: it worked last, or was not tried).
    failing_since: Mutex<HashMap<String, SystemTime>>,
    via_gateway: bool,
    tls: TlsClient,
    preferred: AtomicUsize,
    pub connect_timeout: Duration,
    pub handshake_timeout: Duration,
}

impl std::fmt::Debug for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Dialer({:?})", self.endpoints())
    }
}

impl Dialer {
    pub fn new(route: &Route, tls: TlsClient) -> Arc<Self> {
        Arc::new(Dialer {
            endpoints: Mutex::new(route.endpoints()),
            failing_since: Mutex::new(HashMap::new()),
            via_gateway: matches!(route, Route::Gateways(_)),
            tls,
            preferred: AtomicUsize::new(0),
            connect_timeout: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(10),
        })
    }

    pub fn endpoints(&self) -> Vec<String> {
        crate::util::lock(&self.endpoints).clone()
    }

    /// Adds endpoints learned later (the SP's gateway pool) after the configured ones.
    pub fn add_endpoints(&self, extra: &[String]) {
        let mut endpoints = crate::util::lock(&self.endpoints);
        for e in extra {
            if !endpoints.contains(e) {
                endpoints.push(e.clone());
            }
        }
    }

    /// Stops trying `endpoint` (a learned gateway that stayed unreachable).
    pub fn remove_endpoint(&self, endpoint: &str) {
        crate::util::lock(&self.endpoints).retain(|e| e != endpoint);
        self.failing().remove(endpoint);
    }

    /// Since when `endpoint` has failed every try, if it has.
    pub fn failing_since(&self, endpoint: &str) -> Option<SystemTime> {
        self.failing().get(endpoint).copied()
    }

    /// Carries a failure clock over from an earlier run (the tenant's pool file).
    pub fn note_failing_since(&self, endpoint: &str, since: SystemTime) {
        self.failing().insert(endpoint.to_string(), since);
    }

    fn failing(&self) -> std::sync::MutexGuard<'_, HashMap<String, SystemTime>> {
        crate::util::lock(&self.failing_since)
    }

    /// Connects to the first endpoint that answers, starting with the one that worked last.
    pub async fn dial(&self) -> Result<Dialed, DialError> {
        let endpoints = self.endpoints();
        let start = self.preferred.load(Ordering::Relaxed);
        let mut attempts = Vec::new();
        for i in 0..endpoints.len() {
            let index = (start + i) % endpoints.len();
            let endpoint = &endpoints[index];
            match self.dial_one(endpoint).await {
                Ok(stream) => {
                    self.preferred.store(index, Ordering::Relaxed);
                    self.failing().remove(endpoint);
                    return Ok(Dialed {
                        stream,
                        endpoint: endpoint.clone(),
                        via_gateway: self.via_gateway,
                    });
                }
                Err(failure) => {
                    tracing::debug!(endpoint, %failure, "endpoint failed");
                    self.failing()
                        .entry(endpoint.clone())
                        .or_insert_with(SystemTime::now);
                    attempts.push(Attempt {
                        endpoint: endpoint.clone(),
                        failure,
                    });
                    // Start with the next endpoint next time too.
                    self.preferred
                        .store((index + 1) % endpoints.len(), Ordering::Relaxed);
                }
            }
        }
        Err(DialError { attempts })
    }

    /// `endpoint` went silent under a live connection (no heartbeat within the dead-peer
    /// timeout, or a write not taken): a host that is stopped still completes TCP handshakes
    /// in its kernel, so dialling it first again would cost a whole TLS handshake timeout.
    /// The next dial starts with the endpoint after it.
    pub fn went_silent(&self, endpoint: &str) {
        let endpoints = self.endpoints();
        if let Some(index) = endpoints.iter().position(|e| e == endpoint) {
            let _ = self.preferred.compare_exchange(
                index,
                (index + 1) % endpoints.len(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    async fn dial_one(&self, endpoint: &str) -> Result<ClientStream, DialFailure> {
        let tcp = tokio::time::timeout(self.connect_timeout, TcpStream::connect(endpoint))
            .await
            .map_err(|_| DialFailure::ConnectTimeout(self.connect_timeout))?
            .map_err(DialFailure::Connect)?;
        tokio::time::timeout(self.handshake_timeout, self.tls.handshake(tcp))
            .await
            .map_err(|_| DialFailure::HandshakeTimeout(self.handshake_timeout))?
            .map_err(DialFailure::from_handshake)
    }
}
