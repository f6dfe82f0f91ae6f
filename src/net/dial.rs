//! Reaching the SP port: directly, or through a pool of cloud gateways with failover. The
//! dialer remembers which endpoint worked last and starts there next time; on a connect error
//! or a handshake timeout it moves to the next one.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::TcpStream;

use super::tls::{ClientStream, TlsClient};

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

/// Why no endpoint could be reached.
#[derive(Debug, thiserror::Error)]
#[error("could not reach the SP: {}", .attempts.join("; "))]
pub struct DialError {
    /// One line per endpoint tried: `address: reason`.
    pub attempts: Vec<String>,
}

impl DialError {
    /// True when some endpoint answered but its certificate was refused.
    pub fn is_untrusted(&self) -> bool {
        self.attempts
            .iter()
            .any(|a| a.contains("certificate not trusted"))
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
            via_gateway: matches!(route, Route::Gateways(_)),
            tls,
            preferred: AtomicUsize::new(0),
            connect_timeout: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(10),
        })
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.endpoints
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Adds endpoints learned later (the SP's gateway pool) after the configured ones.
    pub fn add_endpoints(&self, extra: &[String]) {
        let mut endpoints = self.endpoints.lock().unwrap_or_else(|p| p.into_inner());
        for e in extra {
            if !endpoints.contains(e) {
                endpoints.push(e.clone());
            }
        }
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
                    return Ok(Dialed {
                        stream,
                        endpoint: endpoint.clone(),
                        via_gateway: self.via_gateway,
                    });
                }
                Err(reason) => {
                    tracing::debug!(endpoint, %reason, "endpoint failed");
                    attempts.push(format!("{endpoint}: {reason}"));
                    // Start with the next endpoint next time too.
                    self.preferred
                        .store((index + 1) % endpoints.len(), Ordering::Relaxed);
                }
            }
        }
        if attempts.is_empty() {
            attempts.push("no endpoint configured".into());
        }
        Err(DialError { attempts })
    }

    async fn dial_one(&self, endpoint: &str) -> Result<ClientStream, String> {
        let tcp = tokio::time::timeout(self.connect_timeout, TcpStream::connect(endpoint))
            .await
            .map_err(|_| format!("no answer within {:?}", self.connect_timeout))?
            .map_err(|e| e.to_string())?;
        tokio::time::timeout(self.handshake_timeout, self.tls.handshake(tcp))
            .await
            .map_err(|_| format!("TLS handshake timed out after {:?}", self.handshake_timeout))?
            .map_err(|e| e.to_string())
    }
}
