//! What input has left on a lab desktop: typed text, click marks, and its clipboard, kept
//! as plain state that the desktop draws (see `desktop.rs`) and tests can model.

use std::collections::VecDeque;

use crate::net::rdp::keys::{self, BACKSPACE, ENTER, LEFT_CTRL, LEFT_SHIFT, RIGHT_SHIFT, TAB};
use crate::net::rdp::server::{DesktopInput, MouseButton};

/// What input has left on the screen.
#[derive(Debug, Default, Clone)]
pub struct Scribbles {
    typed: String,
    marks: VecDeque<(u16, u16)>,
    shift_down: [bool; 2],
    /// Left and right Ctrl (the right one is Ctrl's scan code, extended).
    ctrl_down: [bool; 2],
    pointer: (u16, u16),
    clipboard: String,
    /// A client's copy is on its way: a Ctrl+V meanwhile pastes it when it arrives.
    clipboard_coming: bool,
    paste_waiting: bool,
    /// Ctrl+C was pressed since [`Scribbles::take_copied`] last looked.
    copied: bool,
}

/// Scan codes of the letters the clipboard keys use.
const KEY_C: u8 = 0x2E;
const KEY_V: u8 = 0x2F;

/// Most characters kept; older ones scroll away for good.
pub(super) const MAX_TYPED: usize = 4096;
/// Most click marks kept; the oldest goes first.
const MAX_MARKS: usize = 256;

impl Scribbles {
    /// The text typed so far.
    pub fn typed(&self) -> &str {
        &self.typed
    }

    /// Where the left button was clicked, oldest first.
    pub fn marks(&self) -> impl Iterator<Item = (u16, u16)> + '_ {
        self.marks.iter().copied()
    }

    /// Types `text` as if it had arrived as keys.
    pub fn type_text(&mut self, text: &str) {
        for c in text.chars() {
            self.push(c);
        }
    }

    fn push(&mut self, c: char) {
        match c {
            '\u{8}' => {
                self.typed.pop();
            }
            '\r' | '\n' => self.typed.push('\n'),
            '\t' => self.typed.push_str("    "),
            c if c.is_control() => {}
            c => self.typed.push(c),
        }
        if self.typed.len() > MAX_TYPED {
            let cut = self.typed.len() - MAX_TYPED;
            let cut = (cut..self.typed.len())
                .find(|i| self.typed.is_char_boundary(*i))
                .unwrap_or(self.typed.len());
            self.typed.drain(..cut);
        }
    }

    /// What the clipboard holds.
    pub fn clipboard(&self) -> &str {
        &self.clipboard
    }

    /// A client's copy is on its way.
    pub fn clipboard_offered(&mut self) {
        self.clipboard_coming = true;
    }

    /// A client's copied text arrives and becomes the clipboard (typed at once if a paste
    /// was waiting for it).
    pub fn receive_clipboard(&mut self, text: &str) {
        self.clipboard = text.to_string();
        self.clipboard_coming = false;
        if std::mem::take(&mut self.paste_waiting) {
            self.type_text(text);
        }
    }

    /// Whether Ctrl+C copied since the last call.
    pub fn take_copied(&mut self) -> bool {
        std::mem::take(&mut self.copied)
    }

    /// Ctrl with a letter: C copies the last line typed, V pastes; others do nothing.
    fn shortcut(&mut self, scancode: u8) -> bool {
        match scancode {
            KEY_C => {
                let line = self.typed.lines().rev().find(|l| !l.trim().is_empty());
                self.clipboard = line.unwrap_or_default().to_string();
                self.copied = true;
                true
            }
            KEY_V if self.clipboard_coming => {
                self.paste_waiting = true;
                false
            }
            KEY_V => {
                let text = self.clipboard.clone();
                self.type_text(&text);
                true
            }
            _ => false,
        }
    }

    /// Leaves a mark at (`x`, `y`).
    pub fn click(&mut self, x: u16, y: u16) {
        if self.marks.len() == MAX_MARKS {
            self.marks.pop_front();
        }
        self.marks.push_back((x, y));
    }

    /// Applies one input event; true if the picture changed.
    pub fn apply(&mut self, input: DesktopInput) -> bool {
        match input {
            DesktopInput::Key {
                scancode: code @ (LEFT_SHIFT | RIGHT_SHIFT),
                extended: false,
                pressed,
            } => {
                self.shift_down[usize::from(code == RIGHT_SHIFT)] = pressed;
                false
            }
            DesktopInput::Key {
                scancode: LEFT_CTRL,
                extended,
                pressed,
            } => {
                self.ctrl_down[usize::from(extended)] = pressed;
                false
            }
            DesktopInput::Key {
                scancode,
                extended: false,
                pressed: true,
            } if self.ctrl_down.iter().any(|down| *down) => self.shortcut(scancode),
            DesktopInput::Key {
                scancode,
                extended: false,
                pressed: true,
            } => {
                let shift = self.shift_down.iter().any(|down| *down);
                let c = match scancode {
                    ENTER => Some('\n'),
                    BACKSPACE => Some('\u{8}'),
                    TAB => Some('\t'),
                    code => keys::char_for_key(code, shift),
                };
                match c {
                    Some(c) => {
                        self.push(c);
                        true
                    }
                    None => false,
                }
            }
            DesktopInput::Unicode { ch, pressed: true } => {
                self.push(ch);
                true
            }
            DesktopInput::PointerMoved { x, y } => {
                self.pointer = (x, y);
                false
            }
            DesktopInput::Button {
                button: MouseButton::Left,
                pressed: true,
            } => {
                self.click(self.pointer.0, self.pointer.1);
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ctrl_c_copies_the_last_line_and_ctrl_v_pastes_the_clipboard() {
        let key = |scancode, extended, pressed| DesktopInput::Key {
            scancode,
            extended,
            pressed,
        };
        let mut s = Scribbles::default();
        s.type_text("first\nsecond\n");
        // The right Ctrl: Ctrl's scan code, extended.
        s.apply(key(LEFT_CTRL, true, true));
        assert!(s.apply(key(KEY_C, false, true)));
        assert!(s.take_copied());
        assert!(!s.take_copied(), "one copy is seen once");
        assert_eq!(s.clipboard(), "second");
        assert_eq!(s.typed(), "first\nsecond\n", "a chord types nothing");
        assert!(s.apply(key(KEY_V, false, true)));
        assert_eq!(s.typed(), "first\nsecond\nsecond");
        // While a client's copy is on its way, a paste waits for it.
        s.clipboard_offered();
        assert!(!s.apply(key(KEY_V, false, true)));
        s.receive_clipboard("theirs");
        assert_eq!(s.typed(), "first\nsecond\nsecondtheirs");
        assert_eq!(s.clipboard(), "theirs");
        // With Ctrl let go of, letters type again.
        s.apply(key(LEFT_CTRL, true, false));
        assert!(s.apply(key(0x1E, false, true)));
        assert!(s.typed().ends_with("theirsa"));
    }
}
