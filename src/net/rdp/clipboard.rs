//! Clipboard text both ways (RDP's `cliprdr` channel, with IronRDP's state machine). Only
//! Unicode text is offered and taken: files and pictures are not shared.
//!
//! IronRDP calls a backend from inside its channel processing, where nothing can be sent;
//! so the client's backend only notes what happened ([`Note`]) and the session acts on the
//! notes after each PDU. The server's backend answers at once through the server's event
//! channel, which IronRDP's server drains itself.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use ironrdp_cliprdr::backend::{ClipboardMessage, CliprdrBackend, CliprdrBackendFactory};
use ironrdp_cliprdr::pdu::{
    ClipboardFormat, ClipboardFormatId, ClipboardGeneralCapabilityFlags, FileContentsRequest,
    FileContentsResponse, FormatDataRequest, FormatDataResponse, LockDataId,
    OwnedFormatDataResponse,
};
use ironrdp_server::{CliprdrServerFactory, ServerEvent, ServerEventSender};
use tokio::sync::{mpsc, watch};

use super::server::Desktop;
use crate::util::lock;

/// The most clipboard text taken from a peer; longer text is refused whole (a clipboard is
/// for a command line or a path, and a peer should not make the other side hold megabytes).
pub const MAX_TEXT_BYTES: usize = 1 << 20;

/// The one format offered: text as UTF-16.
pub(super) const TEXT: ClipboardFormatId = ClipboardFormatId::CF_UNICODETEXT;

pub(super) fn text_formats() -> Vec<ClipboardFormat> {
    vec![ClipboardFormat::new(TEXT)]
}

/// Decodes a peer's text, or says why not.
fn received_text(response: &FormatDataResponse<'_>) -> Option<String> {
    if response.is_error() || response.data().len() > MAX_TEXT_BYTES * 2 {
        tracing::debug!("clipboard text refused (an error answer, or over the size limit)");
        return None;
    }
    response.to_unicode_string().ok()
}

/// What the client's clipboard channel asked for while a PDU was processed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Note {
    /// The channel wants this side's clipboard formats (the start of the channel).
    FormatsWanted,
    /// The channel is ready for copies and pastes.
    Ready,
    /// The peer copied; `text` says whether text is among its formats.
    PeerCopied { text: bool },
    /// The peer pastes and wants this side's text.
    TextWanted,
    /// The peer's text, asked for after [`Note::PeerCopied`].
    Text(String),
}

/// The client side's backend: it keeps notes for the session.
#[derive(Debug, Default)]
pub(super) struct ClientBackend {
    notes: Arc<Mutex<Vec<Note>>>,
}

impl ClientBackend {
    pub(super) fn new() -> (Self, Arc<Mutex<Vec<Note>>>) {
        let notes = Arc::new(Mutex::new(Vec::new()));
        (
            ClientBackend {
                notes: notes.clone(),
            },
            notes,
        )
    }

    fn note(&self, note: Note) {
        lock(&self.notes).push(note);
    }
}

ironrdp_core::impl_as_any!(ClientBackend);

impl CliprdrBackend for ClientBackend {
    fn temporary_directory(&self) -> &str {
        // Files are not shared; the field must still name a directory.
        ".cliprdr"
    }

    fn client_capabilities(&self) -> ClipboardGeneralCapabilityFlags {
        ClipboardGeneralCapabilityFlags::USE_LONG_FORMAT_NAMES
    }

    fn on_ready(&mut self) {
        self.note(Note::Ready);
    }

    fn on_request_format_list(&mut self) {
        self.note(Note::FormatsWanted);
    }

    fn on_process_negotiated_capabilities(&mut self, _: ClipboardGeneralCapabilityFlags) {}

    fn on_remote_copy(&mut self, available_formats: &[ClipboardFormat]) {
        let text = available_formats.iter().any(|f| f.id == TEXT);
        self.note(Note::PeerCopied { text });
    }

    fn on_format_data_request(&mut self, request: FormatDataRequest) {
        if request.format == TEXT {
            self.note(Note::TextWanted);
        }
    }

    fn on_format_data_response(&mut self, response: FormatDataResponse<'_>) {
        if let Some(text) = received_text(&response) {
            self.note(Note::Text(text));
        }
    }

    fn on_file_contents_request(&mut self, _: FileContentsRequest) {}

    fn on_file_contents_response(&mut self, _: FileContentsResponse<'_>) {}

    fn on_lock(&mut self, _: LockDataId) {}

    fn on_unlock(&mut self, _: LockDataId) {}
}

/// The answer to a peer asking for this side's text: the text, or an error answer when there
/// is none.
pub(super) fn text_answer(text: Option<&str>) -> OwnedFormatDataResponse {
    match text {
        Some(text) => OwnedFormatDataResponse::new_unicode_string(text),
        None => OwnedFormatDataResponse::new_error(),
    }
}

/// The server side: a served [`Desktop`]'s clipboard, for each connection IronRDP's server
/// accepts. Text a client copies is fetched at once and handed to the desktop; the desktop's
/// own clipboard is offered whenever it changes.
pub(super) struct ServerClipboard {
    desktop: Arc<dyn Desktop>,
    events: Option<mpsc::UnboundedSender<ServerEvent>>,
}

impl ServerClipboard {
    pub(super) fn new(desktop: Arc<dyn Desktop>) -> Self {
        ServerClipboard {
            desktop,
            events: None,
        }
    }
}

impl ServerEventSender for ServerClipboard {
    fn set_sender(&mut self, sender: mpsc::UnboundedSender<ServerEvent>) {
        self.events = Some(sender);
    }
}

impl CliprdrBackendFactory for ServerClipboard {
    fn build_cliprdr_backend(&self) -> Box<dyn CliprdrBackend> {
        let ready = Arc::new(AtomicBool::new(false));
        let own = self.desktop.clipboard();
        if let (Some(mut own), Some(events)) = (own.clone(), self.events.clone()) {
            let ready = ready.clone();
            // Offers the desktop's clipboard each time it changes, once the channel is up.
            // Ends with the connection (its event channel closes).
            tokio::spawn(async move {
                while own.changed().await.is_ok() {
                    let offer =
                        ServerEvent::Clipboard(ClipboardMessage::SendInitiateCopy(text_formats()));
                    if ready.load(Ordering::Acquire) && events.send(offer).is_err() {
                        break;
                    }
                }
            });
        }
        Box::new(ServerBackend {
            desktop: self.desktop.clone(),
            events: self.events.clone(),
            own,
            ready,
        })
    }
}

impl CliprdrServerFactory for ServerClipboard {}

struct ServerBackend {
    desktop: Arc<dyn Desktop>,
    events: Option<mpsc::UnboundedSender<ServerEvent>>,
    own: Option<watch::Receiver<String>>,
    ready: Arc<AtomicBool>,
}

ironrdp_core::impl_as_any!(ServerBackend);

impl std::fmt::Debug for ServerBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerBackend")
            .field("ready", &self.ready)
            .finish_non_exhaustive()
    }
}

impl ServerBackend {
    fn send(&self, message: ClipboardMessage) {
        if let Some(events) = &self.events {
            // A closed channel means the connection is ending; nothing is left to answer.
            let _ = events.send(ServerEvent::Clipboard(message));
        }
    }

    fn own_text(&self) -> Option<String> {
        let text = self.own.as_ref()?.borrow().clone();
        (!text.is_empty()).then_some(text)
    }
}

impl CliprdrBackend for ServerBackend {
    fn temporary_directory(&self) -> &str {
        ".cliprdr"
    }

    fn client_capabilities(&self) -> ClipboardGeneralCapabilityFlags {
        ClipboardGeneralCapabilityFlags::USE_LONG_FORMAT_NAMES
    }

    fn on_ready(&mut self) {
        self.ready.store(true, Ordering::Release);
        if self.own_text().is_some() {
            self.send(ClipboardMessage::SendInitiateCopy(text_formats()));
        }
    }

    fn on_request_format_list(&mut self) {}

    fn on_process_negotiated_capabilities(&mut self, _: ClipboardGeneralCapabilityFlags) {}

    fn on_remote_copy(&mut self, available_formats: &[ClipboardFormat]) {
        if available_formats.iter().any(|f| f.id == TEXT) {
            self.desktop.clipboard_offered();
            self.send(ClipboardMessage::SendInitiatePaste(TEXT));
        }
    }

    fn on_format_data_request(&mut self, request: FormatDataRequest) {
        let text = (request.format == TEXT).then(|| self.own_text()).flatten();
        self.send(ClipboardMessage::SendFormatData(text_answer(
            text.as_deref(),
        )));
    }

    fn on_format_data_response(&mut self, response: FormatDataResponse<'_>) {
        if let Some(text) = received_text(&response) {
            self.desktop.clipboard_received(text);
        }
    }

    fn on_file_contents_request(&mut self, _: FileContentsRequest) {}

    fn on_file_contents_response(&mut self, _: FileContentsResponse<'_>) {}

    fn on_lock(&mut self, _: LockDataId) {}

    fn on_unlock(&mut self, _: LockDataId) {}
}
