//! One tab's session (steps 5–9): open it and report each stage, then talk over it (the
//! backup link, or a ping for services the window cannot render) and sample its bytes and
//! round trip once a second, until the tab closes or the tenant hangs up.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::net::console::ConsoleClient;
use crate::net::splice::Counted;

use super::EventSink;
use super::backup_link;
use super::feed::describe_error;
use super::messages::{BackupRequest, BackupUpdate, Sample, SessionEvent, SessionFacts, TabId};

/// Opens the session, reports stages, then serves backup requests and measures.
pub(super) async fn run_session(
    client: Arc<ConsoleClient>,
    tab: TabId,
    tenant: String,
    service: String,
    sink: EventSink,
    requests: mpsc::UnboundedReceiver<BackupRequest>,
    stop: CancellationToken,
) {
    let stage_sink = sink.clone();
    let opened = tokio::select! {
        opened = client.open_session(&tenant, &service, move |stage, at| {
            stage_sink.session(tab, SessionEvent::Stage(stage, at));
        }) => opened,
        _ = stop.cancelled() => return,
    };
    let session = match opened {
        Ok(session) => session,
        Err(e) => {
            sink.session(
                tab,
                SessionEvent::Failed {
                    code: e.code(),
                    reason: describe_error(&e),
                },
            );
            return;
        }
    };
    sink.session(
        tab,
        SessionEvent::Opened(SessionFacts {
            session_id: session.session_id.clone(),
            endpoint: session.endpoint.clone(),
            via_gateway: session.via_gateway,
            tls: session.tls.clone(),
            e2e: session.e2e.clone(),
        }),
    );
    let meter = Meter::default();
    let stream = Counted::both(session.stream, meter.read.clone(), meter.written.clone());
    let rtt = Arc::new(AtomicU64::new(u64::MAX));
    let sampler = sample_loop(tab, meter, rtt.clone(), sink.clone());
    let talk = async {
        if service == crate::tenant::backup::SERVICE_NAME {
            backup_link::run(stream, requests, rtt, tab_sink(&sink, tab)).await
        } else {
            echo_pings(stream, rtt).await
        }
    };
    let end = tokio::select! {
        end = talk => end,
        _ = sampler => Ok(()),
        _ = stop.cancelled() => return,
    };
    let reason = match end {
        Ok(()) => "the tenant closed the session".to_string(),
        // A cut channel: the SP may have ended the session (an admin), and says why on an
        // operator connection, since it cannot inside the end-to-end channel.
        Err(e) => {
            let error = format!("{e:#}");
            tokio::select! {
                why = client.describe_session_end(&session.session_id, &error) => why,
                _ = stop.cancelled() => return,
            }
        }
    };
    sink.session(tab, SessionEvent::Closed(reason));
}

/// Sends backup updates to one tab.
fn tab_sink(sink: &EventSink, tab: TabId) -> impl Fn(BackupUpdate) + Send + Sync + 'static {
    let sink = sink.clone();
    move |update| sink.session(tab, SessionEvent::Backup(update))
}

/// Reports bytes and round trip once a second.
async fn sample_loop(tab: TabId, meter: Meter, rtt: Arc<AtomicU64>, sink: EventSink) {
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let rtt_us = rtt.load(Ordering::Relaxed);
        sink.session(
            tab,
            SessionEvent::Sample(Sample {
                at_secs: started.elapsed().as_secs_f64(),
                bytes_sent: meter.written.load(Ordering::Relaxed),
                bytes_received: meter.read.load(Ordering::Relaxed),
                rtt_ms: (rtt_us != u64::MAX).then(|| rtt_us as f64 / 1000.0),
            }),
        );
    }
}

/// For services the window cannot render (e.g. `echo`): a small ping each second, so the
/// Connection tab still shows a round trip.
async fn echo_pings<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    rtt: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let mut buf = [0u8; 8];
    let mut seq = 0u64;
    loop {
        seq += 1;
        let sent = Instant::now();
        stream.write_all(&seq.to_be_bytes()).await?;
        stream.flush().await?;
        stream.read_exact(&mut buf).await?;
        rtt.store(sent.elapsed().as_micros() as u64, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Bytes each way through a session.
#[derive(Clone, Default)]
pub struct Meter {
    pub read: Arc<AtomicU64>,
    pub written: Arc<AtomicU64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn metered_counts_both_ways() {
        let (a, mut b) = tokio::io::duplex(64);
        let meter = Meter::default();
        let mut a = Counted::both(a, meter.read.clone(), meter.written.clone());
        a.write_all(b"hello").await.expect("write");
        let mut buf = [0u8; 5];
        b.read_exact(&mut buf).await.expect("read");
        b.write_all(b"hi").await.expect("write back");
        let mut back = [0u8; 2];
        a.read_exact(&mut back).await.expect("read back");
        assert_eq!(meter.written.load(Ordering::Relaxed), 5);
        assert_eq!(meter.read.load(Ordering::Relaxed), 2);
    }
}
