//! A tab's remote desktop: a session of its own to the tenant's desktop service, RDP over
//! it ([`crate::net::rdp::client`]), the picture painted into the tab's [`SharedScreen`] and
//! the window's input sent on, until the tab closes it or the desktop ends.
//!
//! The desktop's certificate is checked against the pin the window holds for it: the first
//! one is reported for pinning, a different one later is refused before the session is used.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::net::console::ConsoleClient;
use crate::net::rdp::DesktopInput;
use crate::net::rdp::client::{self, DesktopEvent, DesktopOptions};
use crate::net::splice::Counted;
use crate::wire::format_fingerprint;

use super::EventSink;
use super::feed::describe_error;
use super::messages::{DesktopRequest, DesktopStats, DesktopUpdate, SessionEvent, TabId};
use super::session::Meter;

/// How long the RDP handshake may take once the session is open.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long after connecting a desktop may take to open display control before a size
/// asked for is given up (scaled to fit instead).
const DISPLAY_CONTROL_WAIT: Duration = Duration::from_secs(5);

/// What the window passes on to an open desktop, in order.
#[derive(Debug)]
pub(super) enum ToDesktop {
    Input(Vec<DesktopInput>),
    /// Text for the desktop's clipboard.
    Clipboard(String),
    /// A size to ask the desktop for (display control).
    Resize {
        width: u16,
        height: u16,
    },
}

/// Opens the desktop and runs it until `stop`, the input channel closing, or its end.
pub(super) async fn run(
    client: Arc<ConsoleClient>,
    tab: TabId,
    request: DesktopRequest,
    input: mpsc::UnboundedReceiver<ToDesktop>,
    sink: EventSink,
    stop: CancellationToken,
) {
    let say = |update| sink.session(tab, SessionEvent::Desktop(update));
    let reason = tokio::select! {
        reason = open_and_serve(&client, &request, input, &sink, tab) => reason,
        _ = stop.cancelled() => return,
    };
    say(DesktopUpdate::Ended(reason));
}

async fn open_and_serve(
    client: &ConsoleClient,
    request: &DesktopRequest,
    mut input: mpsc::UnboundedReceiver<ToDesktop>,
    sink: &EventSink,
    tab: TabId,
) -> String {
    let say = |update| sink.session(tab, SessionEvent::Desktop(update));
    say(DesktopUpdate::Stage(format!(
        "opening a session to the tenant's {:?} service",
        request.service
    )));
    let session = match client
        .open_session(&request.tenant, &request.service, |_, _| {})
        .await
    {
        Ok(session) => session,
        Err(e) => return describe_error(&e),
    };
    say(DesktopUpdate::Stage(
        "session open; RDP handshake (TLS, then NLA if the desktop asks)".into(),
    ));
    let meter = Meter::default();
    let stream = Counted::both(session.stream, meter.read.clone(), meter.written.clone());
    let options = DesktopOptions {
        width: request.width,
        height: request.height,
        client_name: "rac-console".into(),
    };
    let connected = tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        client::connect(stream, &request.tenant, &request.login, &options),
    )
    .await;
    let mut desktop = match connected {
        Ok(Ok(desktop)) => desktop,
        Ok(Err(e)) => return e.to_string(),
        Err(_) => {
            return format!(
                "the desktop did not finish the RDP handshake within {} s",
                HANDSHAKE_TIMEOUT.as_secs()
            );
        }
    };
    let fingerprint = desktop.certificate.fingerprint;
    if let Some(pinned) = request.pin
        && pinned != fingerprint
    {
        desktop.disconnect().await;
        return format!(
            "REFUSED: the desktop's certificate changed. Pinned SHA-256 {}, presented {}. \
             Someone may be in the middle; if the tenant replaced the certificate, forget the \
             pin in the Desktop view and connect again.",
            format_fingerprint(&pinned),
            format_fingerprint(&fingerprint)
        );
    }
    request
        .screen
        .reset(desktop.width(), desktop.height(), desktop.bgrx());
    say(DesktopUpdate::Connected {
        fingerprint,
        first_use: request.pin.is_none(),
        security: desktop.security,
        width: desktop.width(),
        height: desktop.height(),
        session_id: session.session_id.clone(),
    });
    let session_id = session.session_id.clone();

    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut last = (Instant::now(), 0u64, 0u64, 0u64);
    let mut updates = 0u64;
    // A size asked for before the desktop opened display control waits for it a while.
    let mut wanted_size: Option<(u16, u16)> = None;
    let connected_at = Instant::now();
    let mut said_cannot_resize = false;
    loop {
        tokio::select! {
            frame = desktop.read_frame() => {
                let frame = match frame {
                    Ok(frame) => frame,
                    Err(e) => return cut_reason(client, &session_id, e.to_string()).await,
                };
                let events = match desktop.handle(frame).await {
                    Ok(events) => events,
                    Err(e) => return e.to_string(),
                };
                let mut painted = false;
                for event in events {
                    match event {
                        DesktopEvent::Painted { left, top, right, bottom } => {
                            request.screen.paint(desktop.bgrx(), left, top, right, bottom);
                            painted = true;
                        }
                        DesktopEvent::Resized { width, height } => {
                            request.screen.reset(width, height, desktop.bgrx());
                            say(DesktopUpdate::Resized { width, height });
                        }
                        DesktopEvent::Clipboard(text) => say(DesktopUpdate::Clipboard(text)),
                        DesktopEvent::Ended(why) => return format!("the desktop ended the session: {why}"),
                    }
                }
                if wanted_size.is_some()
                    && let Err(e) = resize(&mut desktop, &mut wanted_size).await
                {
                    return e.to_string();
                }
                if painted {
                    // The window's image is built here, off its thread.
                    request.screen.publish();
                    updates += 1;
                    sink.repaint();
                }
            }
            message = input.recv() => {
                let sent = match message {
                    Some(ToDesktop::Input(batch)) => desktop.send_input(&batch).await,
                    Some(ToDesktop::Clipboard(text)) => desktop.set_clipboard(text).await,
                    Some(ToDesktop::Resize { width, height }) => {
                        wanted_size = Some((width, height));
                        resize(&mut desktop, &mut wanted_size).await
                    }
                    None => {
                        desktop.disconnect().await;
                        return "closed".into();
                    }
                };
                if let Err(e) = sent {
                    return e.to_string();
                }
            }
            _ = tick.tick() => {
                if wanted_size.is_some()
                    && !said_cannot_resize
                    && connected_at.elapsed() > DISPLAY_CONTROL_WAIT
                {
                    said_cannot_resize = true;
                    say(DesktopUpdate::CannotResize);
                }
                let (at, read, written, counted) = last;
                let secs = at.elapsed().as_secs_f64().max(1e-3);
                let now = (
                    Instant::now(),
                    meter.read.load(Ordering::Relaxed),
                    meter.written.load(Ordering::Relaxed),
                    updates,
                );
                say(DesktopUpdate::Stats(DesktopStats {
                    frames_per_sec: (now.3 - counted) as f64 / secs,
                    bytes_in_per_sec: (now.1 - read) as f64 / secs,
                    bytes_out_per_sec: (now.2 - written) as f64 / secs,
                    round_trip_ms: desktop
                        .round_trip()
                        .median()
                        .map(|d| d.as_secs_f64() * 1e3),
                    round_trips: desktop.round_trip().samples(),
                }));
                last = now;
            }
        }
    }
}

/// Asks the desktop for `wanted` if it has display control open; leaves it wanted if not.
async fn resize<S>(
    desktop: &mut client::DesktopSession<S>,
    wanted: &mut Option<(u16, u16)>,
) -> Result<(), crate::net::rdp::client::DesktopError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin,
{
    let Some((width, height)) = *wanted else {
        return Ok(());
    };
    if desktop.request_size(width, height).await? {
        *wanted = None;
    }
    Ok(())
}

/// Why a desktop's session stopped reading: the SP's reason when the SP ended it (an admin;
/// it cannot say so inside the end-to-end channel), else the read error itself.
async fn cut_reason(client: &ConsoleClient, session_id: &str, error: String) -> String {
    let asked = tokio::time::timeout(
        crate::net::console::END_REASON_WAIT,
        client.session_end_reason(session_id),
    );
    match asked.await {
        Ok(Ok(Some(reason))) => reason,
        _ => error,
    }
}
