//! The window's keyboard as RDP wants it: egui's keys as scan codes (set 1, by physical
//! position, so the remote desktop's own layout decides the character), modifiers kept in
//! step with what the remote side believes is held, and every held key released when the
//! view lets go of the keyboard.

use std::collections::BTreeSet;

use eframe::egui::{Key, Modifiers};

use crate::net::rdp::DesktopInput;
use crate::net::rdp::keys::strokes_for_text;

const LEFT_SHIFT: (u8, bool) = (0x2A, false);
const RIGHT_SHIFT: (u8, bool) = (0x36, false);
const LEFT_CTRL: (u8, bool) = (0x1D, false);
const RIGHT_CTRL: (u8, bool) = (0x1D, true);
const LEFT_ALT: (u8, bool) = (0x38, false);
const RIGHT_ALT: (u8, bool) = (0x38, true);
const DELETE: (u8, bool) = (0x53, true);

/// The scan code of a key and whether it is an extended (0xE0) one.
/// Whether the window follows this key's press with the text it types (letters, digits,
/// punctuation, space), as opposed to keys that type nothing (Enter, arrows, F-keys).
fn makes_text(key: Key) -> bool {
    use Key::*;
    !matches!(key, ArrowDown | ArrowLeft | ArrowRight | ArrowUp)
        && (key == Space || key.symbol_or_name().chars().count() == 1)
}

pub fn scancode(key: Key) -> Option<(u8, bool)> {
    use Key::*;
    let plain = |code| Some((code, false));
    let extended = |code| Some((code, true));
    match key {
        Escape => plain(0x01),
        Num1 | Exclamationmark => plain(0x02),
        Num2 => plain(0x03),
        Num3 => plain(0x04),
        Num4 => plain(0x05),
        Num5 => plain(0x06),
        Num6 => plain(0x07),
        Num7 => plain(0x08),
        Num8 => plain(0x09),
        Num9 => plain(0x0A),
        Num0 => plain(0x0B),
        Minus => plain(0x0C),
        Equals | Plus => plain(0x0D),
        Backspace => plain(0x0E),
        Tab => plain(0x0F),
        Q => plain(0x10),
        W => plain(0x11),
        E => plain(0x12),
        R => plain(0x13),
        T => plain(0x14),
        Y => plain(0x15),
        U => plain(0x16),
        I => plain(0x17),
        O => plain(0x18),
        P => plain(0x19),
        OpenBracket | OpenCurlyBracket => plain(0x1A),
        CloseBracket | CloseCurlyBracket => plain(0x1B),
        Enter => plain(0x1C),
        ControlLeft => Some(LEFT_CTRL),
        A => plain(0x1E),
        S => plain(0x1F),
        D => plain(0x20),
        F => plain(0x21),
        G => plain(0x22),
        H => plain(0x23),
        J => plain(0x24),
        K => plain(0x25),
        L => plain(0x26),
        Semicolon | Colon => plain(0x27),
        Quote => plain(0x28),
        Backtick => plain(0x29),
        ShiftLeft => Some(LEFT_SHIFT),
        Backslash | Pipe => plain(0x2B),
        Z => plain(0x2C),
        X => plain(0x2D),
        C => plain(0x2E),
        V => plain(0x2F),
        B => plain(0x30),
        N => plain(0x31),
        M => plain(0x32),
        Comma => plain(0x33),
        Period => plain(0x34),
        Slash | Questionmark => plain(0x35),
        ShiftRight => Some(RIGHT_SHIFT),
        AltLeft => Some(LEFT_ALT),
        Space => plain(0x39),
        CapsLock => plain(0x3A),
        F1 => plain(0x3B),
        F2 => plain(0x3C),
        F3 => plain(0x3D),
        F4 => plain(0x3E),
        F5 => plain(0x3F),
        F6 => plain(0x40),
        F7 => plain(0x41),
        F8 => plain(0x42),
        F9 => plain(0x43),
        F10 => plain(0x44),
        NumLock => plain(0x45),
        ScrollLock => plain(0x46),
        IntlBackslash => plain(0x56),
        F11 => plain(0x57),
        F12 => plain(0x58),
        ControlRight => Some(RIGHT_CTRL),
        AltRight => Some(RIGHT_ALT),
        PrintScreen => extended(0x37),
        Home => extended(0x47),
        ArrowUp => extended(0x48),
        PageUp => extended(0x49),
        ArrowLeft => extended(0x4B),
        ArrowRight => extended(0x4D),
        End => extended(0x4F),
        ArrowDown => extended(0x50),
        PageDown => extended(0x51),
        Insert => extended(0x52),
        Delete => Some(DELETE),
        SuperLeft => extended(0x5B),
        SuperRight => extended(0x5C),
        Menu => extended(0x5D),
        _ => None,
    }
}

fn is_modifier(code: (u8, bool)) -> bool {
    [
        LEFT_SHIFT,
        RIGHT_SHIFT,
        LEFT_CTRL,
        RIGHT_CTRL,
        LEFT_ALT,
        RIGHT_ALT,
    ]
    .contains(&code)
}

/// What the remote desktop believes is held down, and the input that keeps it true.
#[derive(Debug, Default)]
pub struct Keyboard {
    held: BTreeSet<(u8, bool)>,
    /// A key press this frame will also arrive as text: that text is not sent again.
    swallow_text: bool,
}

impl Keyboard {
    fn key(&mut self, code: (u8, bool), pressed: bool, out: &mut Vec<DesktopInput>) {
        if pressed {
            self.held.insert(code);
        } else if !self.held.remove(&code) {
            // A release of a key the desktop never saw pressed (pressed before the view
            // had the keyboard) is not sent.
            return;
        }
        out.push(DesktopInput::Key {
            scancode: code.0,
            extended: code.1,
            pressed,
        });
    }

    /// Presses or releases the left Shift, Ctrl and Alt so the remote side holds what
    /// `modifiers` says (for windows that report modifiers only as flags on other keys).
    pub fn sync_modifiers(&mut self, modifiers: Modifiers, out: &mut Vec<DesktopInput>) {
        for (wanted, left, right) in [
            (modifiers.shift, LEFT_SHIFT, RIGHT_SHIFT),
            (modifiers.ctrl, LEFT_CTRL, RIGHT_CTRL),
            (modifiers.alt, LEFT_ALT, RIGHT_ALT),
        ] {
            let held = [left, right].into_iter().filter(|k| self.held.contains(k));
            let held: Vec<_> = held.collect();
            if wanted && held.is_empty() {
                self.key(left, true, out);
            } else if !wanted {
                for key in held {
                    self.key(key, false, out);
                }
            }
        }
    }

    /// A key event of the window. Returns `false` for a key with no scan code (nothing
    /// sent).
    pub fn on_key(
        &mut self,
        key: Key,
        pressed: bool,
        modifiers: Modifiers,
        out: &mut Vec<DesktopInput>,
    ) -> bool {
        let Some(code) = scancode(key) else {
            return false;
        };
        if is_modifier(code) {
            self.key(code, pressed, out);
            return true;
        }
        self.sync_modifiers(modifiers, out);
        if pressed {
            // The text a character key makes is this key's, already sent; Ctrl or Alt
            // chords and keys such as Enter or the arrows make none.
            self.swallow_text =
                makes_text(key) && !(modifiers.ctrl || modifiers.alt || modifiers.command);
            // A repeat is a second press without a release, as a keyboard sends it.
            self.held.remove(&code);
        }
        self.key(code, pressed, out);
        true
    }

    /// Text the window typed. Text that follows a key press already sent is dropped; text
    /// with no key (an input method, a test typing) goes as US key strokes or Unicode.
    pub fn on_text(&mut self, text: &str, out: &mut Vec<DesktopInput>) {
        if std::mem::take(&mut self.swallow_text) {
            return;
        }
        out.extend(strokes_for_text(text).into_iter().map(|s| s.input()));
    }

    /// The window's copy, cut and paste shortcuts arrive without their key: send the chord
    /// (Ctrl is already held), so the desktop copies or pastes its own clipboard.
    pub fn on_shortcut(&mut self, key: Key, out: &mut Vec<DesktopInput>) {
        self.sync_modifiers(
            Modifiers {
                ctrl: true,
                ..Modifiers::NONE
            },
            out,
        );
        if let Some(code) = scancode(key) {
            self.key(code, true, out);
            self.key(code, false, out);
        }
    }

    /// Releases every held key (the view lost the keyboard or the window its focus).
    pub fn release_all(&mut self, out: &mut Vec<DesktopInput>) {
        for code in std::mem::take(&mut self.held) {
            out.push(DesktopInput::Key {
                scancode: code.0,
                extended: code.1,
                pressed: false,
            });
        }
        self.swallow_text = false;
    }

    #[cfg(test)]
    fn holds_any(&self) -> bool {
        !self.held.is_empty()
    }
}

/// Ctrl+Alt+Del, which no window can pass on by itself (the local system takes it).
pub fn ctrl_alt_del() -> Vec<DesktopInput> {
    let key = |code: (u8, bool), pressed| DesktopInput::Key {
        scancode: code.0,
        extended: code.1,
        pressed,
    };
    vec![
        key(LEFT_CTRL, true),
        key(LEFT_ALT, true),
        key(DELETE, true),
        key(DELETE, false),
        key(LEFT_ALT, false),
        key(LEFT_CTRL, false),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(scancode: u8, extended: bool, pressed: bool) -> DesktopInput {
        DesktopInput::Key {
            scancode,
            extended,
            pressed,
        }
    }

    #[test]
    fn every_key_a_desktop_needs_has_a_scan_code() {
        let letters = [
            Key::A,
            Key::Z,
            Key::Num0,
            Key::F1,
            Key::F12,
            Key::Escape,
            Key::Tab,
            Key::Enter,
            Key::Backspace,
            Key::Space,
            Key::ArrowLeft,
            Key::Delete,
            Key::Home,
            Key::SuperLeft,
        ];
        for k in letters {
            assert!(scancode(k).is_some(), "{k:?}");
        }
        assert_eq!(scancode(Key::ArrowUp), Some((0x48, true)));
        assert_eq!(scancode(Key::Num8), Some((0x09, false)));
    }

    #[test]
    fn modifiers_given_as_flags_are_pressed_and_released_around_keys() {
        let mut keyboard = Keyboard::default();
        let mut out = Vec::new();
        let shift = Modifiers {
            shift: true,
            ..Modifiers::NONE
        };
        keyboard.on_key(Key::A, true, shift, &mut out);
        keyboard.on_key(Key::A, false, shift, &mut out);
        keyboard.on_key(Key::B, true, Modifiers::NONE, &mut out);
        assert_eq!(
            out,
            vec![
                key(0x2A, false, true),
                key(0x1E, false, true),
                key(0x1E, false, false),
                key(0x2A, false, false),
                key(0x30, false, true),
            ]
        );
    }

    #[test]
    fn text_after_its_key_is_not_sent_twice_and_text_alone_is_typed() {
        let mut keyboard = Keyboard::default();
        let mut out = Vec::new();
        keyboard.on_key(Key::A, true, Modifiers::NONE, &mut out);
        keyboard.on_text("a", &mut out);
        keyboard.on_key(Key::A, false, Modifiers::NONE, &mut out);
        assert_eq!(out.len(), 2, "{out:?}");
        out.clear();
        keyboard.on_text("é", &mut out);
        assert_eq!(
            out,
            vec![
                DesktopInput::Unicode {
                    ch: 'é',
                    pressed: true
                },
                DesktopInput::Unicode {
                    ch: 'é',
                    pressed: false
                }
            ]
        );
        // Enter types no text of its own, so text that follows it is not dropped.
        out.clear();
        keyboard.on_key(Key::Enter, true, Modifiers::NONE, &mut out);
        keyboard.on_key(Key::Enter, false, Modifiers::NONE, &mut out);
        keyboard.on_text("b", &mut out);
        assert_eq!(out.len(), 4, "{out:?}");
    }

    #[test]
    fn losing_the_keyboard_releases_what_is_held() {
        let mut keyboard = Keyboard::default();
        let mut out = Vec::new();
        keyboard.on_key(Key::ControlLeft, true, Modifiers::NONE, &mut out);
        keyboard.on_key(Key::ArrowRight, true, Modifiers::CTRL, &mut out);
        out.clear();
        keyboard.release_all(&mut out);
        assert_eq!(out, vec![key(0x1D, false, false), key(0x4D, true, false)]);
        assert!(!keyboard.holds_any());
        // A release the desktop never saw pressed is not sent.
        out.clear();
        keyboard.on_key(Key::Q, false, Modifiers::NONE, &mut out);
        assert!(out.is_empty());
    }
}
