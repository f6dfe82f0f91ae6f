//! The Desktop view: the tenant server's screen over RDP. First the login (user, domain,
//! password; the user is remembered per tenant, the password only while the tab is open),
//! then the picture, scaled to fit the tab or (display control) the desktop resized to the
//! tab once its size settles, taking the keyboard when clicked (Right Ctrl gives it back)
//! and the pointer while over it. Only the changed part of the picture is uploaded to the
//! texture each frame, as an image the engine built. Clipboard text goes both ways: a paste into the
//! picture puts the window's text on the desktop's clipboard, and what is copied on the
//! desktop lands on the window's. A desktop that ends says why and offers Reconnect.

use eframe::egui;
use std::sync::Arc;

use egui::{Color32, Event, Key, Modifiers, PointerButton, Rect, RichText, Sense, Ui, Vec2};

use super::SessionTab;
use super::desktop_keys::{Keyboard, ctrl_alt_del};
use crate::net::rdp::client::DesktopSecurity;
use crate::net::rdp::{DesktopInput, MouseButton};
use crate::ui::action::Action;
use crate::ui::engine::{Command, DesktopStats, DesktopUpdate, SharedScreen};
use crate::wire::format_fingerprint;

/// The key that gives the keyboard back to the window (as in Remmina and VirtualBox).
pub const RELEASE_KEY: Key = Key::ControlRight;
pub const RELEASE_KEY_NAME: &str = "Right Ctrl";

/// How long the tab's size must stay put before the desktop is asked to follow it.
const RESIZE_SETTLE_SECS: f64 = 0.3;

/// How the picture meets the tab.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fit {
    /// The desktop keeps its size; the picture is scaled to fit the tab.
    #[default]
    Scale,
    /// The desktop is asked for the tab's size (display control) once the tab's size has
    /// settled, and shown pixel for pixel.
    Resize,
}

/// Where a desktop is in its life.
#[derive(Debug, Clone, PartialEq)]
pub enum DesktopState {
    /// Waiting for the operator's credentials.
    Login,
    Connecting(String),
    Live,
    Ended(String),
}

/// A tab's desktop: plain state, the picture shared with the engine.
pub struct DesktopPane {
    pub service: String,
    pub user: String,
    pub domain: String,
    /// Kept while the tab is open, for Reconnect; never written anywhere.
    pub password: String,
    pub state: DesktopState,
    pub screen: Arc<SharedScreen>,
    texture: Option<egui::TextureHandle>,
    /// The certificate pinned for this tenant's desktop, if any (the app fills it in).
    pub pinned: Option<[u8; 32]>,
    pub presented: Option<[u8; 32]>,
    pub security: Option<DesktopSecurity>,
    pub size: (u16, u16),
    pub session_id: Option<String>,
    pub stats: DesktopStats,
    keyboard: Keyboard,
    /// The view holds the keyboard.
    pub grabbed: bool,
    pointer: Option<(u16, u16)>,
    buttons_down: Vec<MouseButton>,
    /// The size the view had when last drawn: what a new connection asks for.
    pub view_size: (u16, u16),
    /// The text last copied on the desktop (the window's clipboard has it too).
    pub copied: Option<String>,
    pub fit: Fit,
    /// False once the desktop said it offers no display control.
    pub can_resize: bool,
    /// The view's size and since when (egui's clock) it has been that, while it settles.
    settling: Option<((u16, u16), f64)>,
    /// The size last asked of the desktop.
    asked: Option<(u16, u16)>,
}

impl DesktopPane {
    pub fn new(service: String, user: String, domain: String) -> Self {
        DesktopPane {
            service,
            user,
            domain,
            password: String::new(),
            state: DesktopState::Login,
            screen: Arc::new(SharedScreen::default()),
            texture: None,
            pinned: None,
            presented: None,
            security: None,
            size: (0, 0),
            session_id: None,
            stats: DesktopStats::default(),
            keyboard: Keyboard::default(),
            grabbed: false,
            pointer: None,
            buttons_down: Vec::new(),
            view_size: (1024, 768),
            copied: None,
            fit: Fit::default(),
            can_resize: true,
            settling: None,
            asked: None,
        }
    }

    /// Applies what the engine says about the desktop.
    pub fn apply(&mut self, update: DesktopUpdate) -> Option<String> {
        match update {
            DesktopUpdate::Stage(stage) => {
                self.state = DesktopState::Connecting(stage.clone());
                Some(stage)
            }
            DesktopUpdate::Connected {
                fingerprint,
                first_use,
                security,
                width,
                height,
                session_id,
            } => {
                self.presented = Some(fingerprint);
                if first_use {
                    self.pinned = Some(fingerprint);
                }
                self.security = Some(security);
                self.size = (width, height);
                self.state = DesktopState::Live;
                self.can_resize = true;
                self.asked = None;
                let note = format!(
                    "desktop {width}x{height} open ({security:?}, session {session_id}){}",
                    if first_use {
                        format!(
                            "; its certificate {} is pinned from now on",
                            format_fingerprint(&fingerprint)
                        )
                    } else {
                        String::new()
                    }
                );
                self.session_id = Some(session_id);
                Some(note)
            }
            DesktopUpdate::Stats(stats) => {
                self.stats = stats;
                None
            }
            DesktopUpdate::Resized { width, height } => {
                self.size = (width, height);
                Some(format!("desktop resized to {width}x{height}"))
            }
            DesktopUpdate::CannotResize => {
                self.can_resize = false;
                Some(
                    "the desktop offers no display control: it keeps its size, scaled to fit"
                        .into(),
                )
            }
            DesktopUpdate::Clipboard(text) => {
                let note = format!(
                    "copied on the desktop: {} characters, now on this computer's clipboard",
                    text.chars().count()
                );
                self.copied = Some(text);
                Some(note)
            }
            DesktopUpdate::Ended(reason) => {
                self.state = DesktopState::Ended(reason.clone());
                self.grabbed = false;
                self.stats = DesktopStats::default();
                Some(format!("desktop ended: {reason}"))
            }
        }
    }

    pub fn is_live(&self) -> bool {
        self.state == DesktopState::Live
    }

    /// Moves what changed into the texture (all of it the first time or after a resize).
    /// The engine built the image; nothing is copied here.
    fn upload(&mut self, ctx: &egui::Context) {
        let Some(change) = self.screen.take_change() else {
            return;
        };
        let options = egui::TextureOptions::LINEAR;
        match &mut self.texture {
            Some(texture) if texture.size() == change.size => {
                texture.set_partial([change.region.x, change.region.y], change.pixels, options);
            }
            _ if change.region.width == change.size[0]
                && change.region.height == change.size[1] =>
            {
                self.texture = Some(ctx.load_texture("remote-desktop", change.pixels, options));
            }
            // A part of a screen the texture does not match: ask for the whole again.
            _ => {
                self.screen.invalidate();
                ctx.request_repaint();
            }
        }
    }
}

pub(super) fn desktop_ui(ui: &mut Ui, tab: &mut SessionTab, actions: &mut Vec<Action>) {
    let id = tab.id;
    let Some(pane) = tab.desktop.as_mut() else {
        return;
    };
    match pane.state.clone() {
        DesktopState::Login => login_ui(ui, id, pane, actions),
        DesktopState::Connecting(stage) => {
            ui.add_space(24.0);
            ui.horizontal(|ui| {
                ui.spinner();
                ui.label(format!("Opening the desktop: {stage}"));
            });
            if ui.button("Cancel").clicked() {
                actions.push(Action::Engine(Command::CloseDesktop { tab: id }));
                pane.state = DesktopState::Login;
            }
        }
        DesktopState::Live => live_ui(ui, id, pane, actions),
        DesktopState::Ended(reason) => {
            ui.add_space(16.0);
            let refused = reason.starts_with("REFUSED");
            ui.colored_label(
                if refused {
                    ui.visuals().error_fg_color
                } else {
                    ui.visuals().warn_fg_color
                },
                RichText::new(format!("The desktop is not connected: {reason}")).strong(),
            );
            ui.add_space(8.0);
            ui.horizontal(|ui| {
                if !refused && ui.button("Reconnect").clicked() {
                    actions.push(Action::OpenDesktop(id));
                }
                if ui.button("Change login").clicked() {
                    pane.state = DesktopState::Login;
                }
                if refused && ui.button("Forget the pin").clicked() {
                    actions.push(Action::ForgetDesktopPin(id));
                    pane.state = DesktopState::Login;
                }
            });
        }
    }
}

fn login_ui(ui: &mut Ui, id: u64, pane: &mut DesktopPane, actions: &mut Vec<Action>) {
    ui.add_space(12.0);
    ui.heading("Log in to the tenant's desktop");
    ui.label(
        RichText::new(format!(
            "RDP to the tenant's \"{}\" service, end to end inside the session. The user name is \
             remembered for this tenant; the password is kept only while this tab is open.",
            pane.service
        ))
        .weak(),
    );
    ui.add_space(8.0);
    let mut submit = false;
    egui::Grid::new(("desktop-login", id))
        .num_columns(2)
        .show(ui, |ui| {
            let label = ui.label("User");
            ui.add(egui::TextEdit::singleline(&mut pane.user).desired_width(240.0))
                .labelled_by(label.id);
            ui.end_row();
            let label = ui.label("Domain");
            ui.add(
                egui::TextEdit::singleline(&mut pane.domain)
                    .hint_text("optional")
                    .desired_width(240.0),
            )
            .labelled_by(label.id);
            ui.end_row();
            let label = ui.label("Desktop password");
            let field = ui
                .add(
                    egui::TextEdit::singleline(&mut pane.password)
                        .password(true)
                        .desired_width(240.0),
                )
                .labelled_by(label.id);
            submit |= field.lost_focus() && ui.input(|i| i.key_pressed(Key::Enter));
            ui.end_row();
        });
    if let Some(pin) = pane.pinned {
        ui.horizontal(|ui| {
            ui.label(
                RichText::new(format!(
                    "Pinned desktop certificate (SHA-256): {}",
                    format_fingerprint(&pin)
                ))
                .small()
                .monospace(),
            );
            if ui
                .small_button("Forget")
                .on_hover_text(
                    "Accept whatever certificate the desktop presents next, and pin that",
                )
                .clicked()
            {
                actions.push(Action::ForgetDesktopPin(id));
            }
        });
    } else {
        ui.label(
            RichText::new(
                "The desktop's certificate is pinned the first time you connect; a different one later is refused.",
            )
            .weak()
            .small(),
        );
    }
    ui.add_space(6.0);
    let ready = !pane.user.trim().is_empty();
    if ui
        .add_enabled(ready, egui::Button::new("Connect to the desktop"))
        .clicked()
        || (submit && ready)
    {
        actions.push(Action::OpenDesktop(id));
    }
}

fn live_ui(ui: &mut Ui, id: u64, pane: &mut DesktopPane, actions: &mut Vec<Action>) {
    let mut input = Vec::new();
    ui.horizontal(|ui| {
        if ui
            .button("Send Ctrl+Alt+Del")
            .on_hover_text(
                "The local system keeps Ctrl+Alt+Del for itself; this sends it to the desktop",
            )
            .clicked()
        {
            input.extend(ctrl_alt_del());
        }
        if ui
            .button("Full screen")
            .on_hover_text("Ctrl+Alt+Enter toggles full screen while the desktop has the keyboard")
            .clicked()
        {
            actions.push(Action::ToggleFullscreen(id));
        }
        ui.selectable_value(&mut pane.fit, Fit::Scale, "Scale to fit")
            .on_hover_text("The desktop keeps its size; the picture is scaled to the tab");
        ui.add_enabled_ui(pane.can_resize, |ui| {
            ui.selectable_value(&mut pane.fit, Fit::Resize, "Resize desktop to window")
                .on_hover_text(
                    "The desktop takes the tab's size (display control) once the tab's size \
                     settles",
                )
                .on_disabled_hover_text("This desktop offers no display control");
        });
        if ui.button("Disconnect").clicked() {
            actions.push(Action::Engine(Command::CloseDesktop { tab: id }));
            pane.state = DesktopState::Ended("disconnected by you".into());
        }
        let (w, h) = pane.size;
        ui.label(
            RichText::new(format!(
                "{w}x{h} · {:.0} frames/s · {}",
                pane.stats.frames_per_sec,
                if pane.grabbed {
                    format!("keyboard captured ({RELEASE_KEY_NAME} releases it)")
                } else {
                    "click the picture to type into the desktop".to_string()
                }
            ))
            .weak(),
        );
    });
    picture_ui(ui, id, pane, actions, &mut input);
    if !input.is_empty() {
        actions.push(Action::Engine(Command::DesktopInput { tab: id, input }));
    }
}

/// The picture, fitted to the space left, and the input it takes.
pub fn picture_ui(
    ui: &mut Ui,
    id: u64,
    pane: &mut DesktopPane,
    actions: &mut Vec<Action>,
    input: &mut Vec<DesktopInput>,
) {
    pane.upload(ui.ctx());
    let available = ui.available_size();
    // Remote pixels are the screen's pixels, not egui's points.
    let ppp = ui.ctx().pixels_per_point();
    pane.view_size = (
        ((available.x * ppp).clamp(640.0, 8192.0) as u16) & !1,
        ((available.y * ppp).clamp(480.0, 8192.0) as u16) & !1,
    );
    follow_the_tab(ui, id, pane, actions);
    let (w, h) = pane.screen.size();
    if w == 0 || h == 0 {
        ui.spinner();
        return;
    }
    let mut scale = (available.x / w as f32)
        .min(available.y / h as f32)
        .max(0.05);
    if pane.fit == Fit::Resize {
        // Pixel for pixel once the desktop has the tab's size; smaller while it is larger.
        scale = scale.min(1.0 / ppp);
    }
    let size = Vec2::new(w as f32 * scale, h as f32 * scale);
    let (rect, response) = ui.allocate_exact_size(size, Sense::click_and_drag());
    let label = format!("Remote desktop ({w}x{h})");
    response.widget_info(|| egui::WidgetInfo::labeled(egui::Role::Image, true, &label));
    match &pane.texture {
        Some(texture) => {
            ui.painter().image(
                texture.id(),
                rect,
                Rect::from_min_max(egui::pos2(0.0, 0.0), egui::pos2(1.0, 1.0)),
                Color32::WHITE,
            );
        }
        None => {
            ui.painter().rect_filled(rect, 0.0, Color32::BLACK);
        }
    }
    if response.clicked() || response.drag_started() {
        response.request_focus();
    }
    let focused = response.has_focus() && ui.input(|i| i.focused);
    if focused {
        // Tab, arrows and Escape go to the desktop, not to egui's focus moves.
        ui.memory_mut(|m| {
            m.set_focus_lock_filter(
                response.id,
                egui::EventFilter {
                    tab: true,
                    horizontal_arrows: true,
                    vertical_arrows: true,
                    escape: true,
                },
            )
        });
    }
    if pane.grabbed && !focused {
        pane.keyboard.release_all(input);
    }
    pane.grabbed = focused;

    let to_remote = |pos: egui::Pos2| -> (u16, u16) {
        let x = ((pos.x - rect.min.x) / scale).clamp(0.0, (w - 1) as f32);
        let y = ((pos.y - rect.min.y) / scale).clamp(0.0, (h - 1) as f32);
        (x as u16, y as u16)
    };
    let (events, modifiers) = ui.input(|i| (i.events.clone(), i.modifiers));
    if focused {
        // Modifiers let go of since the last frame (Ctrl after a paste chord, which comes
        // as a paste and not as keys) are let go of on the desktop too.
        pane.keyboard.sync_modifiers(modifiers, input);
    }
    for event in events {
        match event {
            Event::Key {
                key,
                physical_key,
                pressed,
                modifiers,
                ..
            } if focused => {
                let key = physical_key.unwrap_or(key);
                if key == RELEASE_KEY {
                    if pressed {
                        ui.memory_mut(|m| m.surrender_focus(response.id));
                        pane.keyboard.release_all(input);
                        pane.grabbed = false;
                    }
                    continue;
                }
                if key == Key::Enter && pressed && modifiers.ctrl && modifiers.alt {
                    actions.push(Action::ToggleFullscreen(id));
                    continue;
                }
                pane.keyboard.on_key(key, pressed, modifiers, input);
            }
            Event::Text(text) if focused => pane.keyboard.on_text(&text, input),
            Event::Copy if focused => pane.keyboard.on_shortcut(Key::C, input),
            Event::Cut if focused => pane.keyboard.on_shortcut(Key::X, input),
            // The window's text goes to the desktop's clipboard first, then Ctrl+V pastes it
            // there (egui sees a paste, not the keys, so the clipboard is current).
            Event::Paste(text) if focused => {
                actions.push(Action::Engine(Command::DesktopClipboard { tab: id, text }));
                pane.keyboard.on_shortcut(Key::V, input);
            }
            Event::PointerMoved(pos) if rect.contains(pos) => {
                let at = to_remote(pos);
                if pane.pointer != Some(at) {
                    pane.pointer = Some(at);
                    input.push(DesktopInput::PointerMoved { x: at.0, y: at.1 });
                }
            }
            Event::PointerButton {
                pos,
                button,
                pressed,
                ..
            } => {
                let Some(button) = remote_button(button) else {
                    continue;
                };
                let held = pane.buttons_down.contains(&button);
                if pressed && rect.contains(pos) {
                    let at = to_remote(pos);
                    if pane.pointer != Some(at) {
                        pane.pointer = Some(at);
                        input.push(DesktopInput::PointerMoved { x: at.0, y: at.1 });
                    }
                    pane.buttons_down.push(button);
                    input.push(DesktopInput::Button {
                        button,
                        pressed: true,
                    });
                } else if !pressed && held {
                    pane.buttons_down.retain(|b| *b != button);
                    input.push(DesktopInput::Button {
                        button,
                        pressed: false,
                    });
                }
            }
            Event::MouseWheel { unit, delta, .. } if response.hovered() => {
                let lines = match unit {
                    egui::MouseWheelUnit::Line => delta.y,
                    egui::MouseWheelUnit::Point => delta.y / 40.0,
                    egui::MouseWheelUnit::Page => delta.y * 10.0,
                };
                // Windows' notch is 120 units; positive turns the wheel away from the user.
                let units = (lines * 120.0).round().clamp(-256.0, 255.0) as i16;
                if units != 0 {
                    input.push(DesktopInput::Wheel { delta: units });
                }
            }
            _ => {}
        }
    }
    if focused {
        // Egui's own shortcuts must not act while the desktop has the keyboard.
        ui.input_mut(|i| {
            i.events
                .retain(|e| !matches!(e, Event::Key { .. } | Event::Text(_)))
        });
        ui.input_mut(|i| i.modifiers = Modifiers::NONE);
    }
}

/// In [`Fit::Resize`], asks the desktop for the tab's size once it has stayed put for
/// [`RESIZE_SETTLE_SECS`] (a window being dragged asks once, at the end).
fn follow_the_tab(ui: &Ui, id: u64, pane: &mut DesktopPane, actions: &mut Vec<Action>) {
    if pane.fit != Fit::Resize || !pane.can_resize || !pane.is_live() {
        pane.settling = None;
        return;
    }
    let now = ui.input(|i| i.time);
    let size = pane.view_size;
    match pane.settling {
        Some((settling, _)) if settling == size => {}
        _ => pane.settling = Some((size, now)),
    }
    let since = pane.settling.map_or(now, |(_, since)| since);
    if pane.size == size || pane.asked == Some(size) {
        return;
    }
    let waited = now - since;
    if waited >= RESIZE_SETTLE_SECS {
        pane.asked = Some(size);
        actions.push(Action::Engine(Command::DesktopResize {
            tab: id,
            width: size.0,
            height: size.1,
        }));
    } else {
        ui.ctx()
            .request_repaint_after(std::time::Duration::from_secs_f64(
                RESIZE_SETTLE_SECS - waited,
            ));
    }
}

fn remote_button(button: PointerButton) -> Option<MouseButton> {
    match button {
        PointerButton::Primary => Some(MouseButton::Left),
        PointerButton::Secondary => Some(MouseButton::Right),
        PointerButton::Middle => Some(MouseButton::Middle),
        _ => None,
    }
}

/// The desktop part of the Connection view.
pub(super) fn desktop_facts_ui(ui: &mut Ui, pane: &DesktopPane) {
    ui.label("Desktop");
    ui.label(match &pane.state {
        DesktopState::Live => format!(
            "{}x{} over {} · {:.1} frames/s · {}/s in, {}/s out",
            pane.size.0,
            pane.size.1,
            match pane.security {
                Some(DesktopSecurity::Nla) => "TLS + NLA",
                _ => "TLS",
            },
            pane.stats.frames_per_sec,
            crate::util::format::bytes(pane.stats.bytes_in_per_sec as u64),
            crate::util::format::bytes(pane.stats.bytes_out_per_sec as u64),
        ),
        DesktopState::Login => "not connected".into(),
        DesktopState::Connecting(stage) => format!("opening: {stage}"),
        DesktopState::Ended(reason) => format!("ended: {reason}"),
    });
    ui.end_row();
    if pane.is_live() {
        ui.label("Desktop round trip");
        ui.label(desktop_round_trip(&pane.stats)).on_hover_text(
            "From a key or click sent until the desktop's picture next changes: the relay \
                 both ways, the desktop's reaction and its drawing. The median of the recent \
                 ones, measured here.",
        );
        ui.end_row();
    }
    if let Some(fp) = pane.presented {
        ui.label("Desktop certificate (SHA-256)");
        ui.label(RichText::new(format_fingerprint(&fp)).monospace().small());
        ui.end_row();
    }
}

/// The desktop's round trip as the Connection view words it.
pub fn desktop_round_trip(stats: &DesktopStats) -> String {
    match stats.round_trip_ms {
        Some(ms) => format!(
            "{} (key or click to the next picture change, median of {})",
            crate::util::format::round_trip(Some(ms)),
            stats.round_trips
        ),
        None => "— (measured from the next key or click)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_round_trip_reads_as_measured() {
        let mut stats = DesktopStats::default();
        assert_eq!(
            desktop_round_trip(&stats),
            "— (measured from the next key or click)"
        );
        stats.round_trip_ms = Some(3.26);
        stats.round_trips = 7;
        assert_eq!(
            desktop_round_trip(&stats),
            "3.3 ms (key or click to the next picture change, median of 7)"
        );
    }
}
