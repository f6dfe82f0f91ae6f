//! Serving a [`Desktop`] over RDP (IronRDP's server) on a session's stream: the lab's tenants
//! offer their desktops this way, as a local `rdp` service of the tenant redirector. Security
//! is TLS with a self-signed certificate made the first time the desktop is opened; any user
//! name and password are let in (the lab has no accounts on its desktops). Pictures go out as
//! lossless bitmaps (RemoteFX is off), so what a client shows is exactly what was drawn.
//! Clipboard text goes both ways (`clipboard.rs`). A client may ask for another screen size
//! (display control): the desktop keeps drawing at its own size, at the top left of a
//! screen of the size asked for, the rest filled with [`SURROUND`].

use std::num::{NonZeroU16, NonZeroUsize};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use ironrdp_server::{
    BitmapUpdate, DesktopSize, DisplayUpdate, KeyboardEvent, MouseEvent, PixelFormat, RdpServer,
    RdpServerDisplay, RdpServerDisplayUpdates, RdpServerInputHandler,
};
use tokio::sync::watch;

use super::clipboard::ServerClipboard;
use super::stream::SyncStream;
use crate::net::tenant_redirector::LocalHandler;
use crate::net::tls::{DesktopCertificate, Stream, TlsAcceptor, desktop_server_acceptor};
use crate::util::now_unix_secs;

/// Bytes per pixel of a [`Desktop`]'s frame: B, G, R, A.
pub const BYTES_PER_PIXEL: usize = 4;

/// What a screen larger than its desktop shows beyond it, as R, G, B.
pub const SURROUND: [u8; 3] = [0x30, 0x30, 0x30];

pub use super::{DesktopInput, MouseButton};

/// A screen to serve: it draws itself on request and takes input.
pub trait Desktop: Send + Sync + 'static {
    /// Width and height in pixels; fixed for the desktop's life (a client asking for another
    /// size gets this picture inside a screen of that size).
    fn size(&self) -> (u16, u16);
    /// Draws the whole screen as it is at `now_unix_secs` into `pixels` (BGRA, rows of
    /// `width * 4` bytes).
    fn draw(&self, now_unix_secs: u64, pixels: &mut [u8]);
    /// The whole screen at `now_unix_secs` as a new buffer. A desktop that can build it
    /// without drawing over zeroes first (a stream of whole frames) may say how.
    fn frame(&self, now_unix_secs: u64) -> Vec<u8> {
        let (width, height) = self.size();
        let mut pixels = vec![0; usize::from(width) * BYTES_PER_PIXEL * usize::from(height)];
        self.draw(now_unix_secs, &mut pixels);
        pixels
    }
    /// Input from a client.
    fn input(&self, event: DesktopInput);
    /// Changes whenever the picture changed for a reason other than time passing.
    fn changes(&self) -> watch::Receiver<u64>;
    /// How often the picture changes by itself (a clock on it).
    fn refresh(&self) -> Duration {
        Duration::from_secs(1)
    }
    /// A client copied something with text in it; the text follows (as
    /// [`Desktop::clipboard_received`]) once fetched. A paste meanwhile should wait for it.
    fn clipboard_offered(&self) {}
    /// Whether pictures may go out with RemoteFX (wavelet-coded, for screens that change
    /// all over, like video) rather than only as lossless bitmaps.
    fn remotefx(&self) -> bool {
        false
    }
    /// Text a client copied, now this desktop's clipboard.
    fn clipboard_received(&self, _text: String) {}
    /// This desktop's own clipboard text, if it has a clipboard: clients are offered it
    /// whenever it changes.
    fn clipboard(&self) -> Option<watch::Receiver<String>> {
        None
    }
}

/// The tenant redirector's handler that serves `desktop` to each session. The TLS
/// certificate (self-signed, for `names`) is made when the desktop is first opened.
///
/// IronRDP's server futures are not `Send` (they hold `Rc`s), so each connection runs on a
/// thread of its own with a single-threaded runtime; the session's task waits for it, and
/// dropping that task (the redirector cutting the session) stops the connection.
pub fn desktop_handler(desktop: Arc<dyn Desktop>, names: Vec<String>) -> LocalHandler {
    let tls: Arc<OnceLock<Result<(TlsAcceptor, DesktopCertificate), String>>> =
        Arc::new(OnceLock::new());
    Arc::new(move |stream| {
        let (desktop, names, tls) = (desktop.clone(), names.clone(), tls.clone());
        Box::pin(async move {
            let acceptor = tls.get_or_init(|| {
                desktop_server_acceptor(&names).map_err(|e| format!("desktop certificate: {e}"))
            });
            let acceptor = match acceptor {
                Ok((acceptor, _)) => acceptor.clone(),
                Err(e) => {
                    tracing::warn!("{e}");
                    return;
                }
            };
            // Dropped with this task: the connection's thread sees it and ends.
            let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let (done, finished) = tokio::sync::oneshot::channel();
            let spawned = std::thread::Builder::new()
                .name("rdp-desktop".into())
                .spawn(move || {
                    let result = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .context("starting the desktop's runtime")
                        .and_then(|runtime| {
                            runtime.block_on(async move {
                                tokio::select! {
                                    result = serve_desktop(desktop, acceptor, stream) => result,
                                    _ = stopped => Ok(()),
                                }
                            })
                        });
                    let _ = done.send(result);
                });
            let result = match spawned {
                Ok(_) => finished
                    .await
                    .unwrap_or_else(|_| Err(anyhow!("the desktop's thread ended early"))),
                Err(e) => Err(anyhow!("starting the desktop's thread: {e}")),
            };
            if let Err(e) = result {
                tracing::debug!("desktop session ended: {e:#}");
            }
        })
    })
}

/// Serves one RDP connection on `stream` until the client leaves.
pub async fn serve_desktop(
    desktop: Arc<dyn Desktop>,
    tls: TlsAcceptor,
    stream: impl Stream + 'static,
) -> Result<()> {
    let remotefx = if desktop.remotefx() {
        "remotefx:on"
    } else {
        "remotefx:off"
    };
    let codecs = ironrdp_pdu::rdp::capability_sets::server_codecs_capabilities(&[remotefx])
        .map_err(|e| anyhow!("bitmap codecs: {e}"))?;
    let mut server = RdpServer::builder()
        // Only `run` listens on this address; one connection is served here.
        .with_addr(([127, 0, 0, 1], 0))
        .with_tls(tls)
        .with_input_handler(Input(desktop.clone()))
        .with_display_handler(Display {
            size: watch::Sender::new(desktop.size()),
            desktop: desktop.clone(),
        })
        .with_bitmap_codecs(codecs)
        .with_cliprdr_factory(Some(Box::new(ServerClipboard::new(desktop))))
        .build();
    server
        .run_connection(SyncStream::new(stream))
        .await
        .context("RDP connection")
}

struct Input(Arc<dyn Desktop>);

impl RdpServerInputHandler for Input {
    fn keyboard(&mut self, event: KeyboardEvent) {
        let input = match event {
            KeyboardEvent::Pressed { code, extended } => DesktopInput::Key {
                scancode: code,
                extended,
                pressed: true,
            },
            KeyboardEvent::Released { code, extended } => DesktopInput::Key {
                scancode: code,
                extended,
                pressed: false,
            },
            KeyboardEvent::UnicodePressed(unit) | KeyboardEvent::UnicodeReleased(unit) => {
                // Characters beyond the BMP come as surrogate pairs, which are dropped.
                let Some(ch) = char::from_u32(u32::from(unit)) else {
                    return;
                };
                DesktopInput::Unicode {
                    ch,
                    pressed: matches!(event, KeyboardEvent::UnicodePressed(_)),
                }
            }
            KeyboardEvent::Synchronize(_) => return,
        };
        self.0.input(input);
    }

    fn mouse(&mut self, event: MouseEvent) {
        let button = |button, pressed| DesktopInput::Button { button, pressed };
        let input = match event {
            MouseEvent::Move { x, y } => DesktopInput::PointerMoved { x, y },
            MouseEvent::LeftPressed => button(MouseButton::Left, true),
            MouseEvent::LeftReleased => button(MouseButton::Left, false),
            MouseEvent::RightPressed => button(MouseButton::Right, true),
            MouseEvent::RightReleased => button(MouseButton::Right, false),
            MouseEvent::MiddlePressed => button(MouseButton::Middle, true),
            MouseEvent::MiddleReleased => button(MouseButton::Middle, false),
            MouseEvent::VerticalScroll { value } => DesktopInput::Wheel { delta: value },
            _ => return,
        };
        self.0.input(input);
    }
}

/// One connection's screen: the desktop's own size until the client asks for another.
struct Display {
    desktop: Arc<dyn Desktop>,
    /// The size served; display control changes it, the updates follow.
    size: watch::Sender<(u16, u16)>,
}

#[async_trait::async_trait]
impl RdpServerDisplay for Display {
    async fn size(&mut self) -> DesktopSize {
        let (width, height) = *self.size.borrow();
        DesktopSize { width, height }
    }

    async fn updates(&mut self) -> Result<Box<dyn RdpServerDisplayUpdates>> {
        let mut tick = tokio::time::interval(self.desktop.refresh());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut size = self.size.subscribe();
        let serving = *size.borrow_and_update();
        Ok(Box::new(Updates {
            changes: self.desktop.changes(),
            announcing: true,
            desktop: self.desktop.clone(),
            tick,
            size,
            serving,
        }))
    }

    /// Display control: the client's primary monitor is the new size (the server then
    /// resizes by a reactivation, and a new [`Updates`] serves it).
    fn request_layout(&mut self, layout: ironrdp_displaycontrol::pdu::DisplayControlMonitorLayout) {
        let Some(primary) = layout.monitors().iter().find(|m| m.is_primary()) else {
            return;
        };
        let (width, height) = primary.dimensions();
        let (width, height) =
            ironrdp_displaycontrol::pdu::MonitorLayoutEntry::adjust_display_size(width, height);
        let wanted = (
            u16::try_from(width).unwrap_or(u16::MAX),
            u16::try_from(height).unwrap_or(u16::MAX),
        );
        self.size.send_if_modified(|size| {
            let changed = *size != wanted;
            *size = wanted;
            changed
        });
    }
}

/// Whole frames, drawn when the desktop changed or its refresh came round; the server sends
/// only the parts that differ from the last frame.
struct Updates {
    desktop: Arc<dyn Desktop>,
    changes: watch::Receiver<u64>,
    announcing: bool,
    tick: tokio::time::Interval,
    size: watch::Receiver<(u16, u16)>,
    /// The size these updates draw at.
    serving: (u16, u16),
}

/// The desktop's frame at the top left of a `width` x `height` screen.
fn placed(desktop: &dyn Desktop, width: u16, height: u16, now_unix_secs: u64) -> Vec<u8> {
    let frame = desktop.frame(now_unix_secs);
    let (own_width, own_height) = desktop.size();
    if (own_width, own_height) == (width, height) {
        return frame;
    }
    let [r, g, b] = SURROUND;
    let (width, height) = (usize::from(width), usize::from(height));
    let own_width = usize::from(own_width);
    let mut pixels = [b, g, r, 0xff].repeat(width * height);
    let (columns, rows) = (own_width.min(width), usize::from(own_height).min(height));
    for row in 0..rows {
        let from = row * own_width * BYTES_PER_PIXEL;
        let to = row * width * BYTES_PER_PIXEL;
        let Some(source) = frame.get(from..from + columns * BYTES_PER_PIXEL) else {
            break;
        };
        pixels[to..to + columns * BYTES_PER_PIXEL].copy_from_slice(source);
    }
    pixels
}

#[async_trait::async_trait]
impl RdpServerDisplayUpdates for Updates {
    async fn next_update(&mut self) -> Result<Option<DisplayUpdate>> {
        // Both branches are cancel safe, as the server's `select!` needs: a change seen is
        // drawn on the next call, since the picture is drawn from the desktop's state then.
        tokio::select! {
            _ = self.tick.tick() => {}
            changed = self.changes.changed(), if self.announcing => {
                // A desktop that stopped announcing changes still has its clock.
                self.announcing = changed.is_ok();
            }
            // The display lives as long as the connection, so the sender does too.
            Ok(()) = self.size.changed() => {
                let wanted = *self.size.borrow_and_update();
                if wanted != self.serving {
                    self.serving = wanted;
                    let (width, height) = wanted;
                    return Ok(Some(DisplayUpdate::Resize(DesktopSize { width, height })));
                }
            }
        }
        let (width, height) = self.serving;
        let stride = usize::from(width) * BYTES_PER_PIXEL;
        let pixels = placed(self.desktop.as_ref(), width, height, now_unix_secs());
        if pixels.len() != stride * usize::from(height) {
            return Ok(None);
        }
        let (Some(width), Some(height), Some(stride)) = (
            NonZeroU16::new(width),
            NonZeroU16::new(height),
            NonZeroUsize::new(stride),
        ) else {
            return Ok(None);
        };
        Ok(Some(DisplayUpdate::Bitmap(BitmapUpdate {
            x: 0,
            y: 0,
            width,
            height,
            format: PixelFormat::BgrA32,
            data: pixels.into(),
            stride,
        })))
    }
}
