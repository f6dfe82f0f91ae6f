//! A console's side of the backup service protocol, over any byte stream (a relay session,
//! a TCP connection, an in-memory pipe): requests and answers, then live events. Used by
//! `rac inspect`, `rac job start|stop` and the console window. Also the text summary that
//! `rac inspect` prints without `--json`.

use std::collections::VecDeque;
use std::fmt::Write as _;

use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

use super::model::*;
use super::ops::{Action, ActionOutcome};
use super::protocol::{
    Event, HelloReply, PROTOCOL_VERSION, Request, RequestBody, ServerFrame, WireError,
};
use crate::net::frame::{FrameError, MAX_FRAME_LEN, write_frame};

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error (a refused action, a bad request, …).
    #[error("{message} ({code})")]
    Server {
        /// Stable code, e.g. `job_running`.
        code: String,
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
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Server { code, .. } => Some(code),
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
    stream: S,
    next_id: u64,
    events: VecDeque<Event>,
    /// Bytes read but not yet a whole frame: kept here, so an interrupted read loses nothing.
    incoming: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> BackupClient<S> {
    /// A client over an open stream to the service (nothing is sent yet).
    pub fn new(stream: S) -> Self {
        BackupClient {
            stream,
            next_id: 1,
            events: VecDeque::new(),
            incoming: Vec::new(),
        }
    }

    /// Gives the stream back.
    pub fn into_inner(self) -> S {
        self.stream
    }

    async fn request<T: DeserializeOwned>(&mut self, body: RequestBody) -> Result<T, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        write_frame(&mut self.stream, &Request { id, body }).await?;
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
    pub async fn hello(&mut self, client: &str) -> Result<HelloReply, ClientError> {
        self.request(RequestBody::Hello {
            protocol_version: PROTOCOL_VERSION,
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
    pub async fn action(&mut self, action: Action) -> Result<ActionOutcome, ClientError> {
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

    /// Reads one frame from the server. Cancel-safe: a partly read frame stays in
    /// `incoming` for the next call.
    async fn read_server_frame(&mut self) -> Result<Option<ServerFrame>, ClientError> {
        loop {
            if self.incoming.len() >= 4 {
                let mut prefix = [0u8; 4];
                prefix.copy_from_slice(&self.incoming[..4]);
                let len = u32::from_be_bytes(prefix) as usize;
                if len > MAX_FRAME_LEN {
                    return Err(FrameError::TooLarge {
                        len,
                        max: MAX_FRAME_LEN,
                    }
                    .into());
                }
                if self.incoming.len() >= 4 + len {
                    let frame = serde_json::from_slice(&self.incoming[4..4 + len])
                        .map_err(FrameError::Malformed)?;
                    self.incoming.drain(..4 + len);
                    return Ok(Some(frame));
                }
                self.incoming.reserve(4 + len - self.incoming.len());
            }
            let n = self
                .stream
                .read_buf(&mut self.incoming)
                .await
                .map_err(FrameError::Io)?;
            if n == 0 {
                return if self.incoming.is_empty() {
                    Ok(None)
                } else {
                    Err(FrameError::Truncated.into())
                };
            }
        }
    }

    /// The next event; `Ok(None)` when the server closed the connection. Cancel-safe: it
    /// may race other work in `select!` and the client stays usable.
    pub async fn next_event(&mut self) -> Result<Option<Event>, ClientError> {
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
        duration_text(s.uptime_secs)
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
            bytes_text(r.used_bytes),
            bytes_text(r.capacity_bytes),
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
    let running: Vec<&Session> = inv
        .sessions
        .iter()
        .filter(|s| s.state == SessionState::Running)
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
                .map(time_text)
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
                bytes_text(s.bytes_read),
                bytes_text(s.bytes_transferred),
                bytes_text(s.rate_bytes_per_sec),
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
                time_text(a.time_unix_secs),
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

/// Bytes in binary units, e.g. `1.5 TiB`.
pub fn bytes_text(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn duration_text(secs: u64) -> String {
    let (d, h, m) = (secs / 86_400, secs % 86_400 / 3600, secs % 3600 / 60);
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else {
        format!("{m}m {}s", secs % 60)
    }
}

/// Unix seconds as `YYYY-MM-DD HH:MM UTC`.
pub fn time_text(unix_secs: u64) -> String {
    // Days to civil date (Howard Hinnant's algorithm).
    let days = (unix_secs / 86_400) as i64 + 719_468;
    let era = days.div_euclid(146_097);
    let doe = days - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let rem = unix_secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
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

    #[test]
    fn formatting_helpers() {
        assert_eq!(time_text(0), "1970-01-01 00:00 UTC");
        assert_eq!(time_text(1_700_000_000), "2023-11-14 22:13 UTC");
        assert_eq!(bytes_text(512), "512 B");
        assert_eq!(bytes_text(3 << 30), "3.0 GiB");
        assert_eq!(duration_text(90_061), "1d 1h");
    }
}
