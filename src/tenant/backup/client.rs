//! A console's side of the backup service protocol, over any byte stream (a relay session,
//! a TCP connection, an in-memory pipe): requests and answers, then live events. Used by
//! `rac inspect`, `rac job start|stop` and the console window. Also the text summary that
//! `rac inspect` prints without `--json`.

use std::collections::VecDeque;
use std::fmt::Write as _;

use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncWrite};

use super::model::*;
use super::ops::{ActionOutcome, BackupAction};
use super::protocol::{
    BACKUP_PROTOCOL_VERSION, BackupEvent, BackupHello, ErrorCode, Request, RequestBody,
    ServerFrame, WireError,
};
use crate::util::format;
use crate::wire::frame::{Connection, FrameError, MAX_FRAME_LEN};

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error (a refused action, a bad request, …).
    #[error("{message} ({code})")]
    Server {
        /// Stable code, e.g. `job_running`.
        code: ErrorCode,
        /// The server's message.
        message: String,
    },
    /// The connection closed before the answer came.
    #[error("the backup service closed the connection")]
    Closed,
    /// The bytes on the wire were not valid frames.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// The server answered something this client does not understand.
    #[error("unexpected answer from the backup service: {0}")]
    Protocol(String),
}

impl ClientError {
    /// The server's error code, when the server refused.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server { code, .. } => Some(*code),
            _ => None,
        }
    }
}

impl From<WireError> for ClientError {
    fn from(e: WireError) -> Self {
        ClientError::Server {
            code: e.code,
            message: e.message,
        }
    }
}

/// A connection to a tenant backup service. Requests are sent one at a time; events that
/// arrive while waiting for an answer are kept for [`BackupClient::next_event`].
pub struct BackupClient<S> {
    /// Its buffer keeps a partly read frame, so an interrupted read loses nothing.
    conn: Connection<S>,
    next_id: u64,
    events: VecDeque<BackupEvent>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> BackupClient<S> {
    /// A client over an open stream to the service (nothing is sent yet).
    pub fn new(stream: S) -> Self {
        BackupClient {
            conn: Connection::new(stream, MAX_FRAME_LEN),
            next_id: 1,
            events: VecDeque::new(),
        }
    }

    /// Gives the stream back.
    pub fn into_inner(self) -> S {
        self.conn.into_parts().0
    }

    async fn request<T: DeserializeOwned>(&mut self, body: RequestBody) -> Result<T, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        self.conn.send(&Request { id, body }).await?;
        loop {
            let frame = self.read_server_frame().await?.ok_or(ClientError::Closed)?;
            match frame {
                ServerFrame::Event { event } => self.events.push_back(event),
                ServerFrame::Response {
                    id: Some(got),
                    result,
                    error,
                } if got == id => {
                    return match (result, error) {
                        (_, Some(error)) => Err(error.into()),
                        (Some(value), None) => serde_json::from_value(value)
                            .map_err(|e| ClientError::Protocol(e.to_string())),
                        (None, None) => Err(ClientError::Protocol(
                            "an answer with neither result nor error".into(),
                        )),
                    };
                }
                ServerFrame::Response {
                    id: other, error, ..
                } => {
                    return Err(match error {
                        Some(error) if other.is_none() => error.into(),
                        _ => ClientError::Protocol(format!(
                            "answer to request {other:?} while waiting for {id}"
                        )),
                    });
                }
            }
        }
    }

    /// Checks the protocol version and returns the server info.
    pub async fn hello(&mut self, client: &str) -> Result<BackupHello, ClientError> {
        self.request(RequestBody::Hello {
            protocol_version: BACKUP_PROTOCOL_VERSION,
            client: client.to_owned(),
        })
        .await
    }

    /// The server info.
    pub async fn info(&mut self) -> Result<ServerInfo, ClientError> {
        self.request(RequestBody::Info).await
    }

    /// The whole inventory.
    pub async fn inventory(&mut self) -> Result<Inventory, ClientError> {
        self.request(RequestBody::Inventory).await
    }

    /// The whole inventory as raw JSON (the eight top-level keys), for `--json` output.
    pub async fn inventory_json(&mut self) -> Result<serde_json::Value, ClientError> {
        self.request(RequestBody::Inventory).await
    }

    /// Does an action; a refusal is [`ClientError::Server`] with the server's code and message.
    pub async fn action(&mut self, action: BackupAction) -> Result<ActionOutcome, ClientError> {
        self.request(RequestBody::Action { action }).await
    }

    /// Starts receiving events; read them with [`BackupClient::next_event`].
    pub async fn subscribe(&mut self) -> Result<(), ClientError> {
        let _: serde_json::Value = self.request(RequestBody::Subscribe).await?;
        Ok(())
    }

    /// Stops receiving events (events already sent may still arrive).
    pub async fn unsubscribe(&mut self) -> Result<(), ClientError> {
        let _: serde_json::Value = self.request(RequestBody::Unsubscribe).await?;
        Ok(())
    }

    /// Reads one frame from the server. Cancel-safe (see [`Connection::next`]).
    async fn read_server_frame(&mut self) -> Result<Option<ServerFrame>, ClientError> {
        Ok(self.conn.next().await?)
    }

    /// The next event; `Ok(None)` when the server closed the connection. Cancel-safe: it
    /// may race other work in `select!` and the client stays usable.
    pub async fn next_event(&mut self) -> Result<Option<BackupEvent>, ClientError> {
        if let Some(event) = self.events.pop_front() {
            return Ok(Some(event));
        }
        loop {
            match self.read_server_frame().await? {
                None => return Ok(None),
                Some(ServerFrame::Event { event }) => return Ok(Some(event)),
                Some(ServerFrame::Response { id, .. }) => {
                    tracing::debug!(
                        ?id,
                        "backup client: unexpected response while waiting for events"
                    );
                }
            }
        }
    }
}

/// A readable multi-line summary of an inventory, for `rac inspect` without `--json`.
pub fn summary_text(inv: &Inventory) -> String {
    let mut out = String::new();
    let s = &inv.server;
    let _ = writeln!(
        out,
        "Backup server {} (version {}, {}), up {}",
        s.name,
        s.version,
        s.os,
        format::span(s.uptime_secs)
    );
    let n = &s.notifications;
    if n.enabled {
        let _ = writeln!(
            out,
            "Email notifications: on, via {}:{} to {}",
            n.smtp_server,
            n.smtp_port,
            n.to.join(", ")
        );
    } else {
        let _ = writeln!(out, "Email notifications: off");
    }

    let _ = writeln!(out, "\nProxies ({}):", inv.proxies.len());
    for p in &inv.proxies {
        let _ = writeln!(
            out,
            "  {:<10} {:<22} {:<9} {:<11} {:>3} tasks  {}{}",
            p.id,
            p.name,
            kebab(&p.kind),
            kebab(&p.state),
            p.max_concurrent_tasks,
            p.host,
            p.pool
                .as_ref()
                .map(|pool| format!("  [{pool}]"))
                .unwrap_or_default()
        );
    }
    if !inv.proxy_pools.is_empty() {
        let _ = writeln!(out, "\nProxy pools ({}):", inv.proxy_pools.len());
        for pool in &inv.proxy_pools {
            let _ = writeln!(
                out,
                "  {:<10} {:<22} members {}; bus {} ({} streams)",
                pool.id,
                pool.name,
                pool.members.join(", "),
                pool.bus.url,
                pool.bus.streams.len()
            );
        }
    }
    let _ = writeln!(out, "\nRepositories ({}):", inv.repositories.len());
    for r in &inv.repositories {
        let place = r.path.as_deref().or(r.bucket.as_deref()).unwrap_or("");
        let _ = writeln!(
            out,
            "  {:<10} {:<22} {:<14} {} of {} used, {} days  {}",
            r.id,
            r.name,
            kebab(&r.kind),
            format::bytes(r.used_bytes),
            format::bytes(r.capacity_bytes),
            r.retention_days,
            place
        );
    }
    if !inv.organizations.is_empty() {
        let _ = writeln!(
            out,
            "\nMicrosoft 365 organizations ({}):",
            inv.organizations.len()
        );
        for o in inv.organizations.iter().take(20) {
            let _ = writeln!(
                out,
                "  {:<10} {:<34} {:<14} {} mailboxes, {} sites, {} teams; proxies {}",
                o.id,
                o.name,
                o.region,
                o.mailboxes,
                o.sites,
                o.teams,
                if o.proxies.is_empty() {
                    "-".into()
                } else {
                    o.proxies.join(", ")
                }
            );
        }
        more(&mut out, inv.organizations.len(), 20);
    }
    if !inv.azure.vms.is_empty() || !inv.azure.regions.is_empty() {
        let workers: Vec<&Worker> = inv.azure.regions.iter().flat_map(|r| &r.workers).collect();
        let busy = workers
            .iter()
            .filter(|w| w.state != WorkerState::Deallocated)
            .count();
        let _ = writeln!(
            out,
            "\nAzure: {} protected VMs in {} regions ({}); {} workers, {} active",
            inv.azure.vms.len(),
            inv.azure.regions.len(),
            inv.azure
                .regions
                .iter()
                .map(|r| r.name.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            workers.len(),
            busy
        );
    }

    let enabled = inv.jobs.iter().filter(|j| j.enabled).count();
    let running: Vec<&JobRun> = inv
        .sessions
        .iter()
        .filter(|s| s.state == RunState::Running)
        .collect();
    let count = |r: JobResult| inv.jobs.iter().filter(|j| j.last_result == Some(r)).count();
    let _ = writeln!(
        out,
        "\nJobs ({}): {} enabled, {} running; last results: {} success, {} warning, {} failed, {} stopped",
        inv.jobs.len(),
        enabled,
        running.len(),
        count(JobResult::Success),
        count(JobResult::Warning),
        count(JobResult::Failed),
        count(JobResult::Stopped)
    );
    for j in inv.jobs.iter().take(30) {
        let state = if inv.running_session(&j.id).is_some() {
            "running"
        } else if j.enabled {
            "enabled"
        } else {
            "disabled"
        };
        let _ = writeln!(
            out,
            "  {:<10} {:<30} {:<8} {:<8} last {:<8} next {}",
            j.id,
            j.name,
            kebab(&j.kind),
            state,
            j.last_result
                .as_ref()
                .map(kebab)
                .unwrap_or_else(|| "-".into()),
            j.next_run_unix_secs
                .map(format::date_time)
                .unwrap_or_else(|| "-".into())
        );
    }
    more(&mut out, inv.jobs.len(), 30);

    if !running.is_empty() {
        let _ = writeln!(out, "\nRunning sessions ({}):", running.len());
        for s in &running {
            let _ = writeln!(
                out,
                "  {:<12} {:<30} {:<24} {:>3.0}%  {} read, {} written, {}/s{}",
                s.id,
                s.job_name,
                kebab(&s.stage),
                s.progress * 100.0,
                format::bytes(s.bytes_read),
                format::bytes(s.bytes_transferred),
                format::bytes(s.rate_bytes_per_sec),
                if s.simulated { "  (simulated)" } else { "" }
            );
        }
    }
    if !s.alarms.is_empty() {
        let _ = writeln!(out, "\nAlarms ({}), newest first:", s.alarms.len());
        for a in s.alarms.iter().rev().take(5) {
            let _ = writeln!(
                out,
                "  {} {:<7} {}",
                format::date_time(a.time_unix_secs),
                kebab(&a.severity),
                a.text
            );
        }
    }
    out
}

fn more(out: &mut String, total: usize, shown: usize) {
    if total > shown {
        let _ = writeln!(out, "  … and {} more", total - shown);
    }
}

/// The serde name of a unit enum value (`object_storage`, `m365`, …).
fn kebab<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tenant::backup::generator::{Shape, generate_with_shape};

    #[test]
    fn summary_mentions_every_section() {
        let inv = generate_with_shape(1, Shape::Mixed, "acme", 1_780_000_000);
        let text = summary_text(&inv);
        for needle in [
            "Backup server",
            "Proxies (",
            "Proxy pools (",
            "Repositories (",
            "organizations (",
            "Azure:",
            "Jobs (",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
        let large = summary_text(&generate_with_shape(1, Shape::Large, "big", 1_780_000_000));
        assert!(large.contains("more"), "{large}");
    }
}
