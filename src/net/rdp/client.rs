//! A remote desktop client (IronRDP) over any stream: in the console, the stream is a session
//! to a tenant's `rdp` service, so RDP, with its own TLS upgrade and NLA, runs end to end
//! inside the relay's TLS. It keeps the remote screen as BGRX pixels, sends keys and pointer
//! events, and says how the session ends. `rac desktop` drives it headless; the console's
//! window can drive the same type.

use std::fmt;
use std::time::Duration;

use std::sync::{Arc, Mutex};

use ironrdp_cliprdr::CliprdrClient;
use ironrdp_connector::sspi::generator::NetworkRequest;
use ironrdp_connector::{ClientConnector, ConnectorResult, Credentials, DesktopSize, Sequence};
use ironrdp_displaycontrol::client::DisplayControlClient;
use ironrdp_displaycontrol::pdu::MonitorLayoutEntry;
use ironrdp_dvc::DrdynvcClient;
use ironrdp_pdu::geometry::InclusiveRectangle;
use ironrdp_pdu::input::MousePdu;
use ironrdp_pdu::input::fast_path::{FastPathInputEvent, KeyboardFlags};
use ironrdp_pdu::input::mouse::PointerFlags;
use ironrdp_session::image::DecodedImage;
use ironrdp_session::{ActiveStage, ActiveStageBuilder, ActiveStageOutput};
use ironrdp_tokio::{FramedWrite as _, TokioFramed};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use super::clipboard::{self, ClientBackend, Note};
pub use super::error::DesktopError;
use super::error::{connector_error, io_error, session_error};
use super::keys::KeyStroke;
use super::round_trip::InputRoundTrip;
use super::stream::{ExpectRdp, SyncStream};
use super::{DesktopInput, MouseButton};
use crate::net::tls::{DesktopCertificate, RdpTlsStream, desktop_client_upgrade};
use crate::util::lock;

/// Who logs in to the desktop. The password never reaches `Debug`.
#[derive(Clone)]
pub struct DesktopLogin {
    pub user: String,
    pub domain: Option<String>,
    pub password: String,
}

impl fmt::Debug for DesktopLogin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DesktopLogin")
            .field("user", &self.user)
            .field("domain", &self.domain)
            .finish_non_exhaustive()
    }
}

/// The screen a client asks for; the server may answer with another size.
#[derive(Debug, Clone)]
pub struct DesktopOptions {
    pub width: u16,
    pub height: u16,
    /// The computer name the server sees (at most 15 characters are sent).
    pub client_name: String,
}

impl Default for DesktopOptions {
    fn default() -> Self {
        DesktopOptions {
            width: 1024,
            height: 768,
            client_name: "rac".into(),
        }
    }
}

/// How the connection is secured, as negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DesktopSecurity {
    /// TLS; the server checks the password itself, after the session opens.
    Tls,
    /// TLS and Network Level Authentication (CredSSP) before the session opens.
    Nla,
}

/// Something the desktop did that a viewer shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DesktopEvent {
    /// These pixels changed (inclusive bounds).
    Painted {
        left: u16,
        top: u16,
        right: u16,
        bottom: u16,
    },
    /// The desktop has a new size; every pixel is stale until repainted.
    Resized { width: u16, height: u16 },
    /// Something was copied on the desktop: its clipboard text.
    Clipboard(String),
    /// The desktop ended the session, and why.
    Ended(String),
}

/// One PDU read off the stream, not yet processed (reading it is cancel safe).
pub struct Frame {
    action: ironrdp_pdu::Action,
    payload: ironrdp_tokio::bytes::BytesMut,
}

type Framed<S> = TokioFramed<SyncStream<RdpTlsStream<S>>>;

/// An open desktop session.
pub struct DesktopSession<S> {
    framed: Framed<S>,
    stage: ActiveStage,
    image: DecodedImage,
    /// What a Deactivation-Reactivation sequence needs again.
    activation: ironrdp_connector::connection_activation::ConnectionActivationFactory,
    channels: Channels,
    /// The desktop's TLS certificate (SHA-256 and key).
    pub certificate: DesktopCertificate,
    pub security: DesktopSecurity,
    /// Where the pointer was last moved to: RDP puts a position on every pointer event.
    pointer: (u16, u16),
    clipboard: Clipboard,
    round_trip: InputRoundTrip,
}

/// This side of the shared clipboard.
struct Clipboard {
    /// What the channel asked for while PDUs were processed, acted on after each one.
    notes: Arc<Mutex<Vec<Note>>>,
    /// This side's text, offered to the desktop.
    local: Option<String>,
    /// The channel is up: copies can be announced.
    ready: bool,
}

impl<S> fmt::Debug for DesktopSession<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DesktopSession")
            .field("width", &self.image.width())
            .field("height", &self.image.height())
            .field("security", &self.security)
            .finish_non_exhaustive()
    }
}

/// Opens an RDP session over `stream`: X.224 negotiation (TLS or NLA, whichever the server
/// takes), RDP's TLS upgrade, NLA when chosen, then the connection sequence. `server_name`
/// is what TLS and NLA call the desktop (the tenant's name will do).
pub async fn connect<S>(
    stream: S,
    server_name: &str,
    login: &DesktopLogin,
    options: &DesktopOptions,
) -> Result<DesktopSession<S>, DesktopError>
where
    S: AsyncRead + AsyncWrite + Send + Unpin,
{
    let mut framed = TokioFramed::new(SyncStream::new(ExpectRdp::new(stream)));
    // The client address only fills a field of the Client Info PDU; inside the relay there is
    // no meaningful one.
    let client_addr = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let (backend, notes) = ClientBackend::new();
    let mut connector = ClientConnector::new(config(login, options), client_addr)
        .with_static_channel(CliprdrClient::new(Box::new(backend)))
        // Display control (MS-RDPEDISP), on which a client asks for another desktop size.
        .with_static_channel(
            DrdynvcClient::new()
                .with_dynamic_channel(DisplayControlClient::new(|_| Ok(Vec::new()))),
        );
    let should_upgrade = ironrdp_tokio::connect_begin(&mut framed, &mut connector)
        .await
        .map_err(|e| connector_error(e, false))?;
    let plain = framed.into_inner_no_leftover().into_inner().into_inner();
    let (tls, certificate) = desktop_client_upgrade(plain, server_name)
        .await
        .map_err(|e| DesktopError::Tls(e.to_string()))?;
    let upgraded = ironrdp_tokio::mark_as_upgraded(should_upgrade, &mut connector);
    let nla = connector.should_perform_credssp();
    let mut framed = TokioFramed::new(SyncStream::new(tls));
    let connection = ironrdp_tokio::connect_finalize(
        upgraded,
        connector,
        &mut framed,
        &mut NoNetwork,
        server_name.into(),
        certificate.public_key.clone(),
        None,
    )
    .await
    .map_err(|e| connector_error(e, nla))?;
    // BGRX is what RDP's 32-bit bitmaps carry: IronRDP copies them in as they are instead of
    // converting every pixel (the conversion was 40% of a 1080p stream's decoding).
    let image = DecodedImage::new(
        ironrdp_graphics::image_processing::PixelFormat::BgrX32,
        connection.desktop_size.width,
        connection.desktop_size.height,
    );
    let channels = Channels {
        io_channel_id: connection.io_channel_id,
        user_channel_id: connection.user_channel_id,
        enable_server_pointer: connection.enable_server_pointer,
        pointer_software_rendering: connection.pointer_software_rendering,
    };
    let activation = connection.activation_factory;
    let stage = ActiveStageBuilder {
        static_channels: connection.static_channels,
        user_channel_id: connection.user_channel_id,
        io_channel_id: connection.io_channel_id,
        message_channel_id: connection.message_channel_id,
        share_id: connection.share_id,
        compression_type: connection.compression_type,
        enable_server_pointer: connection.enable_server_pointer,
        pointer_software_rendering: connection.pointer_software_rendering,
    }
    .build();
    Ok(DesktopSession {
        framed,
        stage,
        image,
        activation,
        channels,
        certificate,
        pointer: (0, 0),
        round_trip: InputRoundTrip::default(),
        clipboard: Clipboard {
            notes,
            local: None,
            ready: false,
        },
        security: if nla {
            DesktopSecurity::Nla
        } else {
            DesktopSecurity::Tls
        },
    })
}

fn config(login: &DesktopLogin, options: &DesktopOptions) -> ironrdp_connector::Config {
    use ironrdp_pdu::gcc::KeyboardType;
    use ironrdp_pdu::rdp::capability_sets::MajorPlatformType;
    use ironrdp_pdu::rdp::client_info::{PerformanceFlags, TimezoneInfo};
    ironrdp_connector::Config {
        desktop_size: DesktopSize {
            width: options.width,
            height: options.height,
        },
        desktop_scale_factor: 0,
        // Offer both; the server picks. Plain TLS is what FreeRDP and the lab serve without
        // accounts; NLA is what Windows asks for.
        enable_tls: true,
        enable_credssp: true,
        credentials: Credentials::UsernamePassword {
            username: login.user.clone(),
            password: login.password.clone(),
        },
        domain: login.domain.clone(),
        client_build: 0,
        client_name: options.client_name.clone(),
        keyboard_type: KeyboardType::IbmEnhanced,
        keyboard_subtype: 0,
        keyboard_functional_keys_count: 12,
        // US English: the layout `keys` types with.
        keyboard_layout: 0x409,
        ime_file_name: String::new(),
        // The client's default codecs (RemoteFX and the bitmap codecs it decodes).
        bitmap: None,
        dig_product_id: String::new(),
        client_dir: "C:\\Windows\\System32\\mstscax.dll".into(),
        alternate_shell: String::new(),
        work_dir: String::new(),
        platform: MajorPlatformType::UNIX,
        hardware_id: None,
        request_data: None,
        autologon: true,
        enable_audio_playback: false,
        performance_flags: PerformanceFlags::default(),
        license_cache: None,
        timezone_info: TimezoneInfo::default(),
        compression_type: None,
        // The pointer is not part of the picture a screenshot or a viewer keeps.
        enable_server_pointer: false,
        pointer_software_rendering: true,
        multitransport_flags: None,
    }
}

/// The parts of the connection a new share (after reactivation) is built from again.
struct Channels {
    io_channel_id: u16,
    user_channel_id: u16,
    enable_server_pointer: bool,
    pointer_software_rendering: bool,
}

/// CredSSP asks for the network only for Kerberos (to reach a KDC), which a console behind
/// the relay cannot reach: NTLM is used, and a Kerberos request is refused with that reason.
struct NoNetwork;

impl ironrdp_tokio::NetworkClient for NoNetwork {
    async fn send(&mut self, request: &NetworkRequest) -> ConnectorResult<Vec<u8>> {
        Err(ironrdp_connector::reason_err!(
            "CredSSP",
            "Kerberos needs the KDC at {}, which is not reachable through the relay",
            request.url
        ))
    }
}

/// How waiting for the screen to settle ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// Nothing was painted for the quiet period.
    Quiet,
    /// The screen was still changing when the time ran out.
    StillChanging,
    /// The desktop ended the session, and why.
    Ended(String),
}

impl<S> DesktopSession<S>
where
    S: AsyncRead + AsyncWrite + Send + Unpin,
{
    pub fn width(&self) -> u16 {
        self.image.width()
    }

    pub fn height(&self) -> u16 {
        self.image.height()
    }

    /// Round trips from a key or click to the picture's next change (the median of the
    /// recent ones is the desktop's round trip).
    pub fn round_trip(&self) -> &InputRoundTrip {
        &self.round_trip
    }

    /// The screen as decoded: B, G, R and an unused byte per pixel, row by row, `width * 4`
    /// bytes a row.
    pub fn bgrx(&self) -> &[u8] {
        self.image.data()
    }

    /// The pixel at (`x`, `y`) as R, G, B.
    pub fn rgb_at(&self, x: usize, y: usize) -> Option<[u8; 3]> {
        if x >= usize::from(self.width()) {
            return None;
        }
        let at = (y * usize::from(self.width()) + x) * 4;
        let p = self.image.data().get(at..at + 4)?;
        Some([p[2], p[1], p[0]])
    }

    /// The screen as opaque RGBA, `width * 4` bytes a row (for a PNG).
    pub fn to_rgba(&self) -> Vec<u8> {
        self.image
            .data()
            .chunks_exact(4)
            .flat_map(|p| [p[2], p[1], p[0], 0xff])
            .collect()
    }

    /// Reads the next PDU. Cancel safe: a `select!` or a timeout may drop it, and nothing is
    /// lost.
    pub async fn read_frame(&mut self) -> Result<Frame, DesktopError> {
        let (action, payload) = self.framed.read_pdu().await.map_err(io_error)?;
        Ok(Frame { action, payload })
    }

    /// Processes a PDU read by [`Self::read_frame`]: updates the screen, answers the server.
    /// Not cancel safe (it may be writing an answer).
    pub async fn handle(&mut self, frame: Frame) -> Result<Vec<DesktopEvent>, DesktopError> {
        let outputs = self
            .stage
            .process(&mut self.image, frame.action, &frame.payload)
            .map_err(session_error)?;
        let mut events = Vec::new();
        for output in outputs {
            match output {
                ActiveStageOutput::ResponseFrame(bytes) => self.write(&bytes).await?,
                ActiveStageOutput::GraphicsUpdate(InclusiveRectangle {
                    left,
                    top,
                    right,
                    bottom,
                }) => {
                    self.round_trip.painted(std::time::Instant::now());
                    events.push(DesktopEvent::Painted {
                        left,
                        top,
                        right,
                        bottom,
                    })
                }
                ActiveStageOutput::Terminate(reason) => {
                    events.push(DesktopEvent::Ended(reason.to_string()));
                }
                ActiveStageOutput::DeactivateAll => {
                    if let Some(resized) = self.reactivate().await? {
                        events.push(resized);
                    }
                }
                // Pointer shapes are not drawn (see `config`); multitransport and network
                // auto-detection are optional for a client.
                _ => {}
            }
        }
        self.serve_clipboard(&mut events).await?;
        Ok(events)
    }

    /// Whether the desktop has opened display control, so that [`Self::request_size`] can
    /// ask it for another size.
    pub fn can_resize(&mut self) -> bool {
        self.stage
            .get_dvc::<DisplayControlClient>()
            .and_then(|dvc| dvc.channel_processor_downcast_ref::<DisplayControlClient>())
            .is_some_and(DisplayControlClient::ready)
    }

    /// Asks the desktop to change its size to about `width` x `height` (made even and kept
    /// within 200..=8192, as display control requires). False if the desktop has not opened
    /// display control (yet). A desktop that follows answers with a reactivation: a
    /// [`DesktopEvent::Resized`] out of [`Self::handle`].
    pub async fn request_size(&mut self, width: u16, height: u16) -> Result<bool, DesktopError> {
        if !self.can_resize() {
            return Ok(false);
        }
        let (width, height) =
            MonitorLayoutEntry::adjust_display_size(u32::from(width), u32::from(height));
        match self.stage.encode_resize(width, height, None, None) {
            Some(Ok(bytes)) => {
                self.write(&bytes).await?;
                Ok(true)
            }
            Some(Err(e)) => Err(session_error(e)),
            None => Ok(false),
        }
    }

    /// Puts `text` on the shared clipboard: the desktop is offered it (now, or once the
    /// clipboard channel is up) and fetches it when something on it pastes.
    pub async fn set_clipboard(&mut self, text: String) -> Result<(), DesktopError> {
        self.clipboard.local = Some(text);
        if !self.clipboard.ready {
            return Ok(());
        }
        self.clipboard_send(|c| c.initiate_copy(&clipboard::text_formats()))
            .await
    }

    /// Acts on what the clipboard channel asked for while the last PDU was processed.
    async fn serve_clipboard(
        &mut self,
        events: &mut Vec<DesktopEvent>,
    ) -> Result<(), DesktopError> {
        let notes = std::mem::take(&mut *lock(&self.clipboard.notes));
        for note in notes {
            match note {
                // The channel's start: this side's formats (none, until something is copied).
                Note::FormatsWanted => {
                    let formats = match self.clipboard.local {
                        Some(_) => clipboard::text_formats(),
                        None => Vec::new(),
                    };
                    self.clipboard_send(|c| c.initiate_copy(&formats)).await?;
                }
                Note::Ready => self.clipboard.ready = true,
                // Fetched at once, as other clients do, so that the console's clipboard
                // holds what was copied on the desktop.
                Note::PeerCopied { text: true } => {
                    self.clipboard_send(|c| c.initiate_paste(clipboard::TEXT))
                        .await?;
                }
                Note::PeerCopied { text: false } => {}
                Note::TextWanted => {
                    let answer = clipboard::text_answer(self.clipboard.local.as_deref());
                    self.clipboard_send(|c| c.submit_format_data(answer))
                        .await?;
                }
                Note::Text(text) => events.push(DesktopEvent::Clipboard(text)),
            }
        }
        Ok(())
    }

    /// Sends what `make` builds on the clipboard channel (if the desktop opened one).
    async fn clipboard_send(
        &mut self,
        make: impl FnOnce(
            &mut CliprdrClient,
        ) -> ironrdp_pdu::PduResult<
            ironrdp_cliprdr::CliprdrSvcMessages<ironrdp_cliprdr::Client>,
        >,
    ) -> Result<(), DesktopError> {
        let Some(channel) = self.stage.get_svc_processor_mut::<CliprdrClient>() else {
            return Ok(());
        };
        let messages =
            make(channel).map_err(|e| DesktopError::Protocol(format!("clipboard: {e}")))?;
        let bytes = self
            .stage
            .process_svc_processor_messages(messages)
            .map_err(session_error)?;
        self.write(&bytes).await
    }

    /// The Deactivation-Reactivation sequence (a server changing the desktop size, or
    /// Windows' log-on screen handing over to the user's session): capabilities again, then
    /// a new share. Returns the new size if it changed.
    async fn reactivate(&mut self) -> Result<Option<DesktopEvent>, DesktopError> {
        use ironrdp_connector::connection_activation::ConnectionActivationState;
        let mut sequence = self.activation.create();
        let mut buf = ironrdp_core::WriteBuf::new();
        loop {
            ironrdp_tokio::single_sequence_step(&mut self.framed, &mut sequence, &mut buf)
                .await
                .map_err(|e| connector_error(e, false))?;
            if sequence.state().is_terminal() {
                break;
            }
        }
        let Some(ConnectionActivationState::Finalized {
            desktop_size,
            share_id,
            ..
        }) = ironrdp_connector::state_downcast::<ConnectionActivationState>(sequence.state())
        else {
            return Err(DesktopError::Protocol(
                "the reactivation sequence ended unfinished".into(),
            ));
        };
        self.stage.set_share_id(*share_id);
        self.stage.set_fastpath_processor(
            ironrdp_session::fast_path::ProcessorBuilder {
                io_channel_id: self.channels.io_channel_id,
                user_channel_id: self.channels.user_channel_id,
                share_id: *share_id,
                enable_server_pointer: self.channels.enable_server_pointer,
                pointer_software_rendering: self.channels.pointer_software_rendering,
                // No bulk compression is negotiated (`config`).
                bulk_decompressor: None,
            }
            .build(),
        );
        if (desktop_size.width, desktop_size.height) == (self.width(), self.height()) {
            return Ok(None);
        }
        self.image = DecodedImage::new(
            self.image.pixel_format(),
            desktop_size.width,
            desktop_size.height,
        );
        Ok(Some(DesktopEvent::Resized {
            width: desktop_size.width,
            height: desktop_size.height,
        }))
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), DesktopError> {
        if bytes.is_empty() {
            return Ok(());
        }
        self.framed.write_all(bytes).await.map_err(io_error)
    }

    async fn send(&mut self, events: Vec<FastPathInputEvent>) -> Result<(), DesktopError> {
        // At most 255 events fit in one input PDU.
        for chunk in events.chunks(255) {
            let outputs = self
                .stage
                .process_fastpath_input(&mut self.image, chunk)
                .map_err(session_error)?;
            for output in outputs {
                if let ActiveStageOutput::ResponseFrame(bytes) = output {
                    self.write(&bytes).await?;
                }
            }
        }
        Ok(())
    }

    /// Sends key strokes (see [`super::keys::strokes_for_text`]).
    pub async fn send_keys(&mut self, strokes: &[KeyStroke]) -> Result<(), DesktopError> {
        let input: Vec<DesktopInput> = strokes.iter().map(|s| s.input()).collect();
        self.send_input(&input).await
    }

    /// Moves the pointer to (`x`, `y`) and clicks the left button there.
    pub async fn click(&mut self, x: u16, y: u16) -> Result<(), DesktopError> {
        let button = |pressed| DesktopInput::Button {
            button: MouseButton::Left,
            pressed,
        };
        self.send_input(&[
            DesktopInput::PointerMoved { x, y },
            button(true),
            button(false),
        ])
        .await
    }

    /// Sends keyboard and pointer input in order. Buttons and the wheel act where the pointer
    /// last moved to.
    pub async fn send_input(&mut self, input: &[DesktopInput]) -> Result<(), DesktopError> {
        self.round_trip.sent(input, std::time::Instant::now());
        let mut events = Vec::with_capacity(input.len());
        for event in input {
            match *event {
                DesktopInput::Key {
                    scancode,
                    extended,
                    pressed,
                } => {
                    let mut flags = KeyboardFlags::empty();
                    flags.set(KeyboardFlags::RELEASE, !pressed);
                    flags.set(KeyboardFlags::EXTENDED, extended);
                    events.push(FastPathInputEvent::KeyboardEvent(flags, scancode));
                }
                DesktopInput::Unicode { ch, pressed } => {
                    let flags = if pressed {
                        KeyboardFlags::empty()
                    } else {
                        KeyboardFlags::RELEASE
                    };
                    let mut units = [0; 2];
                    for unit in ch.encode_utf16(&mut units) {
                        events.push(FastPathInputEvent::UnicodeKeyboardEvent(flags, *unit));
                    }
                }
                DesktopInput::PointerMoved { x, y } => {
                    self.pointer = (x, y);
                    events.push(self.mouse(PointerFlags::MOVE, 0));
                }
                DesktopInput::Button { button, pressed } => {
                    let mut flags = match button {
                        MouseButton::Left => PointerFlags::LEFT_BUTTON,
                        MouseButton::Right => PointerFlags::RIGHT_BUTTON,
                        MouseButton::Middle => PointerFlags::MIDDLE_BUTTON_OR_WHEEL,
                    };
                    flags.set(PointerFlags::DOWN, pressed);
                    events.push(self.mouse(flags, 0));
                }
                DesktopInput::Wheel { delta } => {
                    // The wire holds 9 bits, two's complement.
                    let units = delta.clamp(-256, 255);
                    events.push(self.mouse(PointerFlags::VERTICAL_WHEEL, units));
                }
            }
        }
        self.send(events).await
    }

    fn mouse(&self, flags: PointerFlags, wheel: i16) -> FastPathInputEvent {
        FastPathInputEvent::MouseEvent(MousePdu {
            flags,
            number_of_wheel_rotation_units: wheel,
            x_position: self.pointer.0,
            y_position: self.pointer.1,
        })
    }

    /// Processes what the desktop sends until nothing has been painted for `quiet` (after at
    /// least one paint, or `quiet` from the start if `painted_already`), or until `limit`.
    pub async fn settle(
        &mut self,
        quiet: Duration,
        limit: Duration,
        painted_already: bool,
    ) -> Result<Settled, DesktopError> {
        let deadline = Instant::now() + limit;
        let mut painted = painted_already;
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Ok(Settled::StillChanging);
            }
            // Before the first paint there is nothing to settle: wait for it, up to the limit.
            let wait = if painted { quiet } else { deadline - now };
            let frame =
                match tokio::time::timeout(wait.min(deadline - now), self.read_frame()).await {
                    Ok(frame) => frame?,
                    Err(_) if painted => return Ok(Settled::Quiet),
                    Err(_) => return Ok(Settled::StillChanging),
                };
            for event in self.handle(frame).await? {
                match event {
                    DesktopEvent::Painted { .. } | DesktopEvent::Resized { .. } => painted = true,
                    DesktopEvent::Ended(why) => return Ok(Settled::Ended(why)),
                    DesktopEvent::Clipboard(_) => {}
                }
            }
        }
    }

    /// Ends the session politely (a shutdown request, then closing the stream).
    pub async fn disconnect(mut self) {
        if let Ok(outputs) = self.stage.graceful_shutdown() {
            for output in outputs {
                if let ActiveStageOutput::ResponseFrame(bytes) = output {
                    let _ = self.write(&bytes).await;
                }
            }
        }
        let (mut stream, _) = self.framed.into_inner();
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            tokio::io::AsyncWriteExt::shutdown(&mut stream),
        )
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The window's engine will run sessions on tokio tasks.
    #[allow(dead_code)]
    fn sessions_can_run_on_tokio_tasks(stream: tokio::io::DuplexStream, login: DesktopLogin) {
        fn send<T: Send>(_: T) {}
        send(async move {
            let mut session = connect(stream, "acme", &login, &DesktopOptions::default()).await?;
            let frame = session.read_frame().await?;
            session.handle(frame).await?;
            session.settle(Duration::ZERO, Duration::ZERO, true).await?;
            session.click(1, 1).await?;
            session.disconnect().await;
            Ok::<_, DesktopError>(())
        });
    }

    #[test]
    fn debug_hides_the_password() {
        let login = DesktopLogin {
            user: "administrator".into(),
            domain: Some("ACME".into()),
            password: "hunter2-secret".into(),
        };
        let shown = format!("{login:?}");
        assert!(shown.contains("administrator") && !shown.contains("hunter2"));
    }
}
