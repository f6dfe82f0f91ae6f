//! Keys as RDP sends them: scan codes (set 1) of a US keyboard, which is what a remote desktop
//! gets unless it is told another layout. The client turns text into key strokes here; the lab
//! desktop turns strokes back into text with the same table.

/// Scan codes of the keys text typing needs beyond the printable ones.
pub const ENTER: u8 = 0x1C;
pub const BACKSPACE: u8 = 0x0E;
pub const TAB: u8 = 0x0F;
pub const LEFT_SHIFT: u8 = 0x2A;
pub const RIGHT_SHIFT: u8 = 0x36;
pub const LEFT_CTRL: u8 = 0x1D;
pub const LEFT_ALT: u8 = 0x38;
/// Delete is an extended key (0xE0 prefix).
pub const DELETE: u8 = 0x53;

/// The printable keys of a US keyboard: scan code, character, character with Shift.
const US_KEYS: &[(u8, char, char)] = &[
    (0x02, '1', '!'),
    (0x03, '2', '@'),
    (0x04, '3', '#'),
    (0x05, '4', '$'),
    (0x06, '5', '%'),
    (0x07, '6', '^'),
    (0x08, '7', '&'),
    (0x09, '8', '*'),
    (0x0A, '9', '('),
    (0x0B, '0', ')'),
    (0x0C, '-', '_'),
    (0x0D, '=', '+'),
    (0x10, 'q', 'Q'),
    (0x11, 'w', 'W'),
    (0x12, 'e', 'E'),
    (0x13, 'r', 'R'),
    (0x14, 't', 'T'),
    (0x15, 'y', 'Y'),
    (0x16, 'u', 'U'),
    (0x17, 'i', 'I'),
    (0x18, 'o', 'O'),
    (0x19, 'p', 'P'),
    (0x1A, '[', '{'),
    (0x1B, ']', '}'),
    (0x1E, 'a', 'A'),
    (0x1F, 's', 'S'),
    (0x20, 'd', 'D'),
    (0x21, 'f', 'F'),
    (0x22, 'g', 'G'),
    (0x23, 'h', 'H'),
    (0x24, 'j', 'J'),
    (0x25, 'k', 'K'),
    (0x26, 'l', 'L'),
    (0x27, ';', ':'),
    (0x28, '\'', '"'),
    (0x29, '`', '~'),
    (0x2B, '\\', '|'),
    (0x2C, 'z', 'Z'),
    (0x2D, 'x', 'X'),
    (0x2E, 'c', 'C'),
    (0x2F, 'v', 'V'),
    (0x30, 'b', 'B'),
    (0x31, 'n', 'N'),
    (0x32, 'm', 'M'),
    (0x33, ',', '<'),
    (0x34, '.', '>'),
    (0x35, '/', '?'),
    (0x39, ' ', ' '),
];

/// One key going down or up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyStroke {
    /// A key by scan code (set 1); `extended` is the 0xE0 prefix (arrows, right Ctrl, Delete).
    Key {
        scancode: u8,
        extended: bool,
        pressed: bool,
    },
    /// A character no US key makes, sent as Unicode (RDP's Unicode keyboard event).
    Unicode { ch: char, pressed: bool },
}

impl KeyStroke {
    /// The same stroke as desktop input.
    pub fn input(self) -> super::DesktopInput {
        match self {
            KeyStroke::Key {
                scancode,
                extended,
                pressed,
            } => super::DesktopInput::Key {
                scancode,
                extended,
                pressed,
            },
            KeyStroke::Unicode { ch, pressed } => super::DesktopInput::Unicode { ch, pressed },
        }
    }

    fn key(scancode: u8, pressed: bool) -> Self {
        KeyStroke::Key {
            scancode,
            extended: false,
            pressed,
        }
    }
}

/// The strokes that type `text` on a US keyboard: each character pressed and released, with
/// Shift around the ones that need it; `\n` is Enter, `\t` Tab. Other characters go as
/// Unicode events.
pub fn strokes_for_text(text: &str) -> Vec<KeyStroke> {
    let mut strokes = Vec::new();
    for c in text.chars() {
        let (scancode, shift) = match c {
            '\n' => (ENTER, false),
            '\t' => (TAB, false),
            _ => match US_KEYS
                .iter()
                .find(|(_, plain, shifted)| c == *plain || c == *shifted)
            {
                Some((code, plain, _)) => (*code, c != *plain),
                None => {
                    strokes.push(KeyStroke::Unicode {
                        ch: c,
                        pressed: true,
                    });
                    strokes.push(KeyStroke::Unicode {
                        ch: c,
                        pressed: false,
                    });
                    continue;
                }
            },
        };
        if shift {
            strokes.push(KeyStroke::key(LEFT_SHIFT, true));
        }
        strokes.push(KeyStroke::key(scancode, true));
        strokes.push(KeyStroke::key(scancode, false));
        if shift {
            strokes.push(KeyStroke::key(LEFT_SHIFT, false));
        }
    }
    strokes
}

/// Reads the `\n`, `\t` and `\\` escapes a shell leaves in an argument (`--type 'ls\n'`).
pub fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('\\') => out.push('\\'),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}

/// The character a printable US key makes, with or without Shift.
pub fn char_for_key(scancode: u8, shift: bool) -> Option<char> {
    US_KEYS
        .iter()
        .find(|(code, _, _)| *code == scancode)
        .map(|(_, plain, shifted)| if shift { *shifted } else { *plain })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a US keyboard produces from `strokes`, as the lab desktop reads them.
    fn typed(strokes: &[KeyStroke]) -> String {
        let mut shift = false;
        let mut out = String::new();
        for stroke in strokes {
            match *stroke {
                KeyStroke::Key {
                    scancode: LEFT_SHIFT,
                    pressed,
                    ..
                } => shift = pressed,
                KeyStroke::Key {
                    scancode: ENTER,
                    pressed: true,
                    ..
                } => out.push('\n'),
                KeyStroke::Key {
                    scancode: TAB,
                    pressed: true,
                    ..
                } => out.push('\t'),
                KeyStroke::Key {
                    scancode,
                    pressed: true,
                    ..
                } => out.extend(char_for_key(scancode, shift)),
                KeyStroke::Unicode { ch, pressed: true } => out.push(ch),
                _ => {}
            }
        }
        out
    }

    #[test]
    fn text_round_trips_through_us_key_strokes() {
        let text = "Hello, World! 1+1=2 {ok} ~/a_b|c:\"d\"?\n\tend";
        assert_eq!(typed(&strokes_for_text(text)), text);
        let every: String = (' '..='~').collect();
        assert_eq!(typed(&strokes_for_text(&every)), every);
    }

    #[test]
    fn shift_wraps_only_the_characters_that_need_it() {
        assert_eq!(
            strokes_for_text("aA"),
            vec![
                KeyStroke::key(0x1E, true),
                KeyStroke::key(0x1E, false),
                KeyStroke::key(LEFT_SHIFT, true),
                KeyStroke::key(0x1E, true),
                KeyStroke::key(0x1E, false),
                KeyStroke::key(LEFT_SHIFT, false),
            ]
        );
    }

    #[test]
    fn characters_without_a_us_key_go_as_unicode() {
        assert_eq!(
            strokes_for_text("\u{e9}"),
            vec![
                KeyStroke::Unicode {
                    ch: '\u{e9}',
                    pressed: true
                },
                KeyStroke::Unicode {
                    ch: '\u{e9}',
                    pressed: false
                },
            ]
        );
    }

    #[test]
    fn shell_escapes_are_read() {
        assert_eq!(unescape(r"echo hi\n"), "echo hi\n");
        assert_eq!(unescape(r"a\tb\\n\q\"), "a\tb\\n\\q\\");
        assert_eq!(unescape("real\nnewline"), "real\nnewline");
    }
}
