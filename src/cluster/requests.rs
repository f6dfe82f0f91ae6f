//! Requests to the node that owns a tenant: a console on node A asks the owner, node B, to
//! send `open_data` on the tenant's control channel. Core NATS request/reply on the owner's
//! own subject, `rac.node.<node>.open`, with a deadline; the request carries the epoch the
//! requester routed by, and the owner answers [`OpenDataReply::NotOwner`] unless it holds
//! the tenant at exactly that epoch, so a request never acts on a stale route.

use std::time::Duration;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::owners::{Epoch, TenantOwner, json_of};
use super::{BusError, Cluster, subject_token};

/// "Open a data channel for this session", from the console's node to the owner's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenData {
    pub tenant: String,
    /// The ownership epoch the requester saw; the owner refuses any other.
    pub epoch: Epoch,
    pub session_id: String,
    pub service: String,
    /// The node the console is on (where the data channel's other half waits).
    pub from_node: String,
    /// What the owner passes on to the tenant in `open_data`: the nonce its data channel
    /// brings back, and the session's grant.
    #[serde(default)]
    pub nonce: String,
    #[serde(default)]
    pub grant: Option<crate::wire::protocol::Grant>,
    /// The console's end-to-end ClientHello sent ahead (hex), for a tenant that takes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_hello: Option<String>,
}

/// The owner's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum OpenDataReply {
    /// The owner sent `open_data` on the tenant's control channel; `client_hello_sent`: with
    /// the console's ClientHello in it (the tenant takes one there).
    Accepted {
        #[serde(default)]
        client_hello_sent: bool,
    },
    /// The node does not hold the tenant at that epoch (it moved): look the owner up again.
    NotOwner,
    /// The owner holds the tenant but will not open it; the reason is for the console.
    Refused { reason: String },
}

/// Why a request got no answer from the owner.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("tenant {0} is not online on any node")]
    TenantOffline(String),
    /// Nobody listens on the node's subject: the node is gone or not serving requests.
    #[error("node {0} does not answer requests (gone or not serving)")]
    NoResponder(String),
    #[error("node {node} did not answer within {after:?}")]
    TimedOut { node: String, after: Duration },
    #[error("node {0} answered something unreadable")]
    BadReply(String),
    #[error("NATS: {0}")]
    Bus(String),
}

/// "The tenant rejected your session", from the owner to the node the console waits on: the
/// console hears the tenant's reason at once instead of waiting out the open timeout.
/// Published on `rac.node.<node>.rejected`; no answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRejected {
    pub tenant: String,
    pub session_id: String,
    /// The code the console shows (already one a tenant may give, checked by the owner).
    pub code: crate::wire::protocol::ErrorCode,
    pub reason: String,
}

/// The subject a node hears its sessions' rejections on.
pub(crate) fn rejected_subject(node: &str) -> String {
    format!("rac.node.{}.rejected", subject_token(node))
}

/// The rejections sent to this node, until it stops or this is dropped.
pub type Rejections = super::Messages<SessionRejected>;

/// The subject a node serves its requests on.
pub(crate) fn open_subject(node: &str) -> String {
    format!("rac.node.{}.open", subject_token(node))
}

/// A request for this node, to be answered with [`IncomingOpen::respond`]. Dropping it
/// unanswered leaves the requester to its timeout.
#[derive(Debug)]
pub struct IncomingOpen {
    pub request: OpenData,
    reply_to: Option<async_nats::Subject>,
    client: async_nats::Client,
}

impl IncomingOpen {
    /// Sends the answer to the requesting node.
    pub async fn respond(self, reply: OpenDataReply) -> Result<(), BusError> {
        let Some(to) = self.reply_to else {
            return Ok(());
        };
        answer(&self.client, to, &reply).await
    }
}

async fn answer(
    client: &async_nats::Client,
    to: async_nats::Subject,
    reply: &OpenDataReply,
) -> Result<(), BusError> {
    super::publish_json(client, to, reply).await
}

/// The requests routed to this node, already checked against its claims. Dropping it stops
/// serving (requesters then get [`RequestError::NoResponder`]).
pub struct OpenRequests {
    rx: mpsc::Receiver<IncomingOpen>,
    _stop: DropGuard,
}

impl OpenRequests {
    /// The next request, or `None` once the node stops.
    pub async fn next(&mut self) -> Option<IncomingOpen> {
        self.rx.recv().await
    }
}

impl Cluster {
    /// Starts answering requests routed to this node. A request for a tenant this node does
    /// not hold at the request's epoch is answered [`OpenDataReply::NotOwner`] here; one that
    /// arrives while `capacity` others wait is refused as busy. Serve once per node.
    pub async fn serve_open_requests(&self, capacity: usize) -> Result<OpenRequests, BusError> {
        let shared = self.shared().clone();
        let mut sub = shared
            .client
            .subscribe(open_subject(&shared.config.node))
            .await
            .map_err(|e| BusError::Nats(e.to_string()))?;
        super::round_trip(&shared.client).await?;
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let stop = CancellationToken::new();
        let task_stop = stop.clone();
        let node_stop = shared.stop.clone();
        tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    _ = task_stop.cancelled() => break,
                    _ = node_stop.cancelled() => break,
                    m = sub.next() => match m { Some(m) => m, None => break },
                };
                let Some(reply_to) = message.reply.clone() else {
                    continue;
                };
                let request = match serde_json::from_slice::<OpenData>(&message.payload) {
                    Ok(r) => r,
                    Err(e) => {
                        let reason = format!("unreadable request: {e}");
                        let _ =
                            answer(&shared.client, reply_to, &OpenDataReply::Refused { reason })
                                .await;
                        continue;
                    }
                };
                let holds = crate::util::lock(&shared.view)
                    .owners
                    .holds(&request.tenant, request.epoch);
                if !holds {
                    let _ = answer(&shared.client, reply_to, &OpenDataReply::NotOwner).await;
                    continue;
                }
                let incoming = IncomingOpen {
                    request,
                    reply_to: Some(reply_to.clone()),
                    client: shared.client.clone(),
                };
                if let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(incoming) {
                    let reason = "the owner node is busy".to_string();
                    let _ =
                        answer(&shared.client, reply_to, &OpenDataReply::Refused { reason }).await;
                }
            }
            let _ = sub.unsubscribe().await;
        });
        Ok(OpenRequests {
            rx,
            _stop: stop.drop_guard(),
        })
    }

    /// Sends `request` to `node` and waits up to `timeout` for its answer.
    pub async fn request_open(
        &self,
        node: &str,
        request: &OpenData,
        timeout: Duration,
    ) -> Result<OpenDataReply, RequestError> {
        let sent = self
            .shared()
            .client
            .send_request(
                open_subject(node),
                async_nats::Request::new()
                    .payload(json_of(request).into())
                    .timeout(Some(timeout)),
            )
            .await;
        let message = match sent {
            Ok(m) => m,
            Err(e) => {
                return Err(match e.kind() {
                    async_nats::RequestErrorKind::NoResponders => {
                        RequestError::NoResponder(node.to_string())
                    }
                    async_nats::RequestErrorKind::TimedOut => RequestError::TimedOut {
                        node: node.to_string(),
                        after: timeout,
                    },
                    _ => RequestError::Bus(e.to_string()),
                });
            }
        };
        serde_json::from_slice(&message.payload)
            .map_err(|_| RequestError::BadReply(node.to_string()))
    }

    /// Tells `node` that the tenant rejected one of the sessions its consoles wait for.
    pub async fn send_rejection(
        &self,
        node: &str,
        rejected: &SessionRejected,
    ) -> Result<(), BusError> {
        super::publish_json(&self.shared().client, rejected_subject(node), rejected).await
    }

    /// Starts hearing the rejections other nodes pass on to this one.
    pub async fn rejections(&self) -> Result<Rejections, BusError> {
        let shared = self.shared();
        super::subscribe_json(&shared.client, rejected_subject(&shared.config.node)).await
    }

    /// Looks up the request's tenant's owner and asks it to open a data channel; the
    /// request's epoch and `from_node` are filled in here.
    pub async fn open_on_owner(
        &self,
        mut request: OpenData,
        timeout: Duration,
    ) -> Result<(TenantOwner, OpenDataReply), RequestError> {
        let owner = self
            .owner(&request.tenant)
            .ok_or_else(|| RequestError::TenantOffline(request.tenant.clone()))?;
        request.epoch = owner.epoch;
        request.from_node = self.node().to_string();
        let reply = self.request_open(&owner.node, &request, timeout).await?;
        Ok((owner, reply))
    }
}
