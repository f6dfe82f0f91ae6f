//! Logging in and following the tenant list (step 4): a snapshot, then live changes, each
//! passed to the window as an event. A dropped feed logs in again after a jittered backoff
//! ([`Backoff`], as the tenant redirector reconnects), which starts over once a feed has
//! stayed live for [`HEALTHY_AFTER`]; refusals that retrying cannot fix end the attempt.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::lab::{Lab, LabOptions};
use crate::net::backoff::Backoff;
use crate::net::console::{ConsoleClient, ConsoleError, page_rows};
use crate::wire::protocol::ApiResponse;

use super::EventSink;
use super::messages::{ConnState, Event, LabFacts};

/// The first retry comes after at most this long.
const RETRY_FIRST: Duration = Duration::from_millis(500);
/// Retries never wait longer than this.
const RETRY_MAX: Duration = Duration::from_secs(15);
/// A feed live this long was healthy: the next retry starts again from [`RETRY_FIRST`].
const HEALTHY_AFTER: Duration = Duration::from_secs(30);

/// Starts the embedded lab, hands its client and the lab to the dispatcher, then follows
/// the lab's tenant list.
pub(super) async fn start_lab_and_follow(
    options: LabOptions,
    sink: EventSink,
    ready: mpsc::UnboundedSender<(Arc<ConsoleClient>, Option<Lab>)>,
    cancel: CancellationToken,
) {
    sink.send(Event::Conn(ConnState::StartingLab));
    let lab = match Lab::start(options).await {
        Ok(lab) => lab,
        Err(e) => {
            tracing::error!("lab failed to start: {e:#}");
            sink.send(Event::Conn(ConnState::Failed(format!(
                "the lab did not start: {e:#}"
            ))));
            return;
        }
    };
    sink.send(Event::LabReady(LabFacts {
        sp: lab.sp_addr.to_string(),
        gateways: lab.gateways.iter().map(|g| g.to_string()).collect(),
        operator: lab.operator.clone(),
        ca_fingerprint: lab.ca_fingerprint.clone(),
        tenants: lab.tenants.len(),
    }));
    let config = lab.console_config();
    let password = lab.password.clone();
    let client = match ConsoleClient::new(config) {
        Ok(client) => client,
        Err(e) => {
            sink.send(Event::Conn(ConnState::Failed(format!(
                "lab TLS setup: {e}"
            ))));
            return;
        }
    };
    // The dispatcher keeps the lab alive from here on.
    if ready.send((client.clone(), Some(lab))).is_err() {
        return;
    }
    follow_tenants(client, password, sink, cancel).await;
}

/// Logs in, then follows the tenant list; on a dropped feed it logs in again with backoff.
pub(super) async fn follow_tenants(
    client: Arc<ConsoleClient>,
    password: String,
    sink: EventSink,
    cancel: CancellationToken,
) {
    let mut backoff = Backoff::new(RETRY_FIRST, RETRY_MAX);
    loop {
        sink.send(Event::Conn(ConnState::Connecting));
        let mut live_since = None;
        let outcome = tokio::select! {
            outcome = login_and_follow(&client, &password, &sink, &mut live_since) => outcome,
            _ = cancel.cancelled() => return,
        };
        let (reason, retry) = match outcome {
            Ok(()) => ("the SP closed the tenant feed".to_string(), true),
            Err(e) => (describe_error(&e), e.retryable()),
        };
        if !retry {
            sink.send(Event::Conn(ConnState::Failed(reason)));
            return;
        }
        if live_since.is_some_and(|at: Instant| at.elapsed() >= HEALTHY_AFTER) {
            backoff.reset();
        }
        sink.send(Event::Conn(ConnState::Reconnecting(reason)));
        tokio::select! {
            _ = tokio::time::sleep(backoff.next_delay()) => {}
            _ = cancel.cancelled() => return,
        }
    }
}

/// One login and its feed, until the feed ends; `live_since` is set when the snapshot came.
async fn login_and_follow(
    client: &ConsoleClient,
    password: &str,
    sink: &EventSink,
    live_since: &mut Option<Instant>,
) -> Result<(), ConsoleError> {
    client.login(password).await?;
    let mut feed = client.subscribe().await?;
    let endpoint = client.config().route.endpoints().join(", ");
    let went_live = |live_since: &mut Option<Instant>| {
        if live_since.is_none() {
            *live_since = Some(Instant::now());
            sink.send(Event::Conn(ConnState::Live {
                user: client.config().user.clone(),
                endpoint: endpoint.clone(),
            }));
        }
    };
    while let Some(message) = feed.next().await? {
        match message {
            ApiResponse::Tenants { tenants } => {
                went_live(live_since);
                sink.send(Event::Tenants(tenants));
            }
            // The first page replaces the list and is shown at once; the rest add to it.
            ApiResponse::TenantPage(page) => {
                went_live(live_since);
                let first = page.first;
                let rows = page_rows(page)?;
                sink.send(if first {
                    Event::Tenants(rows)
                } else {
                    Event::MoreTenants(rows)
                });
            }
            ApiResponse::TenantChanged { tenant } => sink.send(Event::TenantChanged(tenant)),
            ApiResponse::TenantRemoved { name } => sink.send(Event::TenantRemoved(name)),
            ApiResponse::Error { code, message } => {
                return Err(ConsoleError::Refused { code, message });
            }
            ApiResponse::LoggedOut => return Ok(()),
            // Only ever an answer to a question this feed does not ask.
            ApiResponse::SessionEnded { .. } => {}
        }
    }
    Ok(())
}

/// A console error in the words a tab shows.
pub fn describe_error(e: &ConsoleError) -> String {
    match e {
        ConsoleError::Refused { code, message } if message.is_empty() => {
            code.describe().to_string()
        }
        ConsoleError::Refused { message, .. } => message.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::protocol::ErrorCode;

    #[test]
    fn refusals_read_as_words() {
        let e = ConsoleError::Refused {
            code: ErrorCode::TenantOffline,
            message: String::new(),
        };
        assert_eq!(describe_error(&e), "tenant is offline");
    }
}
