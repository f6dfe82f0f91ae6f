//! A lab tenant's desktop: the screen of its backup server as an RDP client sees it. The
//! picture is a plain drawing into a pixel buffer: the tenant's name and a clock in the title
//! bar, its backup jobs as the backup service has them now, and what input left behind (typed
//! text, a mark where the left button was clicked). The marks stay between sessions, as on a
//! real console. Its clipboard works as a text editor's would: Ctrl+C copies the last line
//! typed, Ctrl+V types what the clipboard holds, and what a client copies becomes the
//! clipboard. `net::rdp::server` serves it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::font::{self, CELL_HEIGHT, CELL_WIDTH, GLYPH_HEIGHT};
pub use super::scribbles::Scribbles;
use crate::net::rdp::server::{BYTES_PER_PIXEL, Desktop, DesktopInput};
use crate::tenant::backup::BackupService;
use crate::tenant::backup::model::{JobResult, RunState};
use crate::util::lock;

pub const WIDTH: u16 = 1024;
pub const HEIGHT: u16 = 768;

/// Colours as R, G, B.
pub const BACKGROUND: [u8; 3] = [0x1d, 0x4e, 0x63];
pub const TITLE_BAR: [u8; 3] = [0x0f, 0x2a, 0x36];
pub const PANEL: [u8; 3] = [0x16, 0x3b, 0x4b];
pub const TYPING_PANEL: [u8; 3] = [0x0b, 0x1f, 0x28];
pub const TEXT: [u8; 3] = [0xf2, 0xf2, 0xf2];
pub const DIM_TEXT: [u8; 3] = [0xa8, 0xc4, 0xcf];
pub const MARK: [u8; 3] = [0xff, 0xb0, 0x00];

pub use crate::net::rdp::Region;

const TITLE_SCALE: usize = 4;
const CLOCK_SCALE: usize = 3;
const TEXT_SCALE: usize = 2;
const MARGIN: usize = 16;
const BAR_HEIGHT: usize = 56;
const JOBS: Region = Region {
    x: MARGIN,
    y: 100,
    width: WIDTH as usize - 2 * MARGIN,
    height: 420,
};
/// Where typed text is shown.
pub const TYPING: Region = Region {
    x: MARGIN,
    y: 536,
    width: WIDTH as usize - 2 * MARGIN,
    height: 216,
};
const LINE_HEIGHT: usize = CELL_HEIGHT * TEXT_SCALE + 4;
const TYPED_LINES: usize = 7;
const TYPED_COLUMNS: usize = (TYPING.width - 2 * MARGIN) / (CELL_WIDTH * TEXT_SCALE);
/// The longest title drawn; longer names are cut with `~`.
const TITLE_CHARS: usize = 23;

/// The title bar's text (the tenant's name), for comparing screenshots.
pub fn title_region(tenant: &str) -> Region {
    let chars = tenant.chars().count().min(TITLE_CHARS);
    Region {
        x: MARGIN,
        y: (BAR_HEIGHT - GLYPH_HEIGHT * TITLE_SCALE) / 2,
        width: chars * CELL_WIDTH * TITLE_SCALE,
        height: GLYPH_HEIGHT * TITLE_SCALE,
    }
}

/// One job as the desktop lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobLine {
    pub name: String,
    pub status: String,
}

/// What the desktop shows besides the scribbles.
#[derive(Debug, Clone)]
pub struct ScreenView {
    pub tenant: String,
    /// The backup server's host name and operating system.
    pub host: String,
    pub jobs: Vec<JobLine>,
}

/// Draws the whole screen into `pixels` (BGRA, `WIDTH` x `HEIGHT`).
pub fn draw_screen(
    pixels: &mut [u8],
    view: &ScreenView,
    scribbles: &Scribbles,
    now_unix_secs: u64,
) {
    let mut canvas = Canvas { pixels };
    canvas.fill(
        Region {
            x: 0,
            y: 0,
            width: WIDTH.into(),
            height: HEIGHT.into(),
        },
        BACKGROUND,
    );
    canvas.fill(
        Region {
            x: 0,
            y: 0,
            width: WIDTH.into(),
            height: BAR_HEIGHT,
        },
        TITLE_BAR,
    );
    let title = title_region(&view.tenant);
    canvas.text(
        title.x,
        title.y,
        TITLE_SCALE,
        TEXT,
        &fit(&view.tenant, TITLE_CHARS),
    );
    let date = crate::util::format::date_time(now_unix_secs);
    let clock = format!(
        "{} {} UTC",
        date.get(..10).unwrap_or_default(),
        crate::util::format::clock(now_unix_secs)
    );
    let clock_width = clock.len() * CELL_WIDTH * CLOCK_SCALE;
    canvas.text(
        usize::from(WIDTH) - MARGIN - clock_width,
        (BAR_HEIGHT - GLYPH_HEIGHT * CLOCK_SCALE) / 2,
        CLOCK_SCALE,
        DIM_TEXT,
        &clock,
    );
    canvas.text(
        MARGIN,
        BAR_HEIGHT + 16,
        TEXT_SCALE,
        DIM_TEXT,
        &fit(&format!("Backup server {}", view.host), 80),
    );

    canvas.fill(JOBS, PANEL);
    let inner_x = JOBS.x + MARGIN;
    canvas.text(inner_x, JOBS.y + 12, TEXT_SCALE, TEXT, "Backup jobs");
    let rows = (JOBS.height - 44) / LINE_HEIGHT;
    for (i, job) in view.jobs.iter().take(rows).enumerate() {
        let y = JOBS.y + 44 + i * LINE_HEIGHT;
        canvas.text(inner_x, y, TEXT_SCALE, TEXT, &fit(&job.name, 48));
        canvas.text(
            inner_x + 620,
            y,
            TEXT_SCALE,
            DIM_TEXT,
            &fit(&job.status, 28),
        );
    }
    if view.jobs.len() > rows {
        let more = format!("and {} more", view.jobs.len() - rows);
        canvas.text(
            inner_x,
            JOBS.y + 44 + rows * LINE_HEIGHT,
            TEXT_SCALE,
            DIM_TEXT,
            &more,
        );
    }
    if view.jobs.is_empty() {
        canvas.text(inner_x, JOBS.y + 44, TEXT_SCALE, DIM_TEXT, "no jobs");
    }

    canvas.fill(TYPING, TYPING_PANEL);
    canvas.text(
        TYPING.x + MARGIN,
        TYPING.y + 12,
        TEXT_SCALE,
        DIM_TEXT,
        "Typed on this desktop:",
    );
    if !scribbles.clipboard().is_empty() {
        let clip = scribbles.clipboard().replace(['\n', '\r', '\t'], " ");
        canvas.text(
            TYPING.x + MARGIN + 24 * CELL_WIDTH * TEXT_SCALE,
            TYPING.y + 12,
            TEXT_SCALE,
            DIM_TEXT,
            &fit(&format!("Clipboard: {clip}"), TYPED_COLUMNS - 24),
        );
    }
    let lines = wrap(&format!("{}_", scribbles.typed()), TYPED_COLUMNS);
    let shown = &lines[lines.len().saturating_sub(TYPED_LINES)..];
    for (i, line) in shown.iter().enumerate() {
        canvas.text(
            TYPING.x + MARGIN,
            TYPING.y + 40 + i * LINE_HEIGHT,
            TEXT_SCALE,
            TEXT,
            line,
        );
    }

    for (x, y) in scribbles.marks() {
        let (x, y) = (usize::from(x), usize::from(y));
        canvas.fill(
            Region {
                x: x.saturating_sub(5),
                y: y.saturating_sub(5),
                width: 11,
                height: 11,
            },
            MARK,
        );
    }
}

/// `text` cut to `max` characters, the last one a `~` when cut.
fn fit(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
    cut.push('~');
    cut
}

/// Lines of at most `columns` characters: breaks at newlines, and hard breaks in long lines.
fn wrap(text: &str, columns: usize) -> Vec<String> {
    let mut lines = Vec::new();
    for line in text.split('\n') {
        let chars: Vec<char> = line.chars().collect();
        if chars.is_empty() {
            lines.push(String::new());
        }
        for piece in chars.chunks(columns.max(1)) {
            lines.push(piece.iter().collect());
        }
    }
    lines
}

/// A BGRA pixel buffer of the desktop's size, with clipping.
struct Canvas<'a> {
    pixels: &'a mut [u8],
}

impl Canvas<'_> {
    fn fill(&mut self, region: Region, [r, g, b]: [u8; 3]) {
        let (width, height) = (usize::from(WIDTH), usize::from(HEIGHT));
        let right = (region.x + region.width).min(width);
        let bottom = (region.y + region.height).min(height);
        for y in region.y.min(bottom)..bottom {
            let row = y * width * BYTES_PER_PIXEL;
            let start = row + region.x.min(right) * BYTES_PER_PIXEL;
            let end = row + right * BYTES_PER_PIXEL;
            if let Some(span) = self.pixels.get_mut(start..end) {
                for pixel in span.chunks_exact_mut(BYTES_PER_PIXEL) {
                    pixel.copy_from_slice(&[b, g, r, 0xff]);
                }
            }
        }
    }

    /// Draws `text` with its top left at (`x`, `y`), each font pixel `scale` pixels square.
    fn text(&mut self, x: usize, y: usize, scale: usize, color: [u8; 3], text: &str) {
        for (i, c) in text.chars().enumerate() {
            let left = x + i * CELL_WIDTH * scale;
            for row in 0..GLYPH_HEIGHT {
                for column in 0..font::GLYPH_WIDTH {
                    if font::ink(c, column, row) {
                        self.fill(
                            Region {
                                x: left + column * scale,
                                y: y + row * scale,
                                width: scale,
                                height: scale,
                            },
                            color,
                        );
                    }
                }
            }
        }
    }
}

/// A lab tenant's desktop, served by `net::rdp::server` as the tenant's `rdp` service.
pub struct LabDesktop {
    tenant: String,
    service: Arc<BackupService>,
    scribbles: Mutex<Scribbles>,
    changes: watch::Sender<u64>,
    /// What Ctrl+C copied last, offered to clients.
    copies: watch::Sender<String>,
    /// The job list, read from the backup service at most every [`JOBS_EVERY`].
    jobs: Mutex<Option<(Instant, ScreenView)>>,
}

/// How old the job list on screen may get.
const JOBS_EVERY: Duration = Duration::from_secs(5);

impl LabDesktop {
    pub fn new(tenant: &str, service: Arc<BackupService>) -> Arc<Self> {
        Arc::new(LabDesktop {
            tenant: tenant.to_string(),
            service,
            scribbles: Mutex::new(Scribbles::default()),
            changes: watch::channel(0).0,
            copies: watch::channel(String::new()).0,
            jobs: Mutex::new(None),
        })
    }

    /// What input has left on the screen so far.
    pub fn scribbles(&self) -> Scribbles {
        lock(&self.scribbles).clone()
    }

    fn view(&self) -> ScreenView {
        let mut cached = lock(&self.jobs);
        if let Some((at, view)) = cached.as_ref()
            && at.elapsed() < JOBS_EVERY
        {
            return view.clone();
        }
        let view = screen_view(&self.tenant, &self.service.inventory());
        *cached = Some((Instant::now(), view.clone()));
        view
    }
}

/// The title, host line and job list of `inventory`.
pub fn screen_view(tenant: &str, inventory: &crate::tenant::backup::Inventory) -> ScreenView {
    let jobs = inventory
        .jobs
        .iter()
        .map(|job| {
            let running = inventory
                .sessions
                .iter()
                .rev()
                .find(|run| run.job == job.id && run.state == RunState::Running);
            let status = match (running, job.last_result, job.enabled) {
                (Some(run), _, _) => format!("running {:.0}%", run.progress * 100.0),
                (None, _, false) => "disabled".to_string(),
                (None, None, true) => "never run".to_string(),
                (None, Some(result), true) => format!(
                    "last run: {}",
                    match result {
                        JobResult::Success => "success",
                        JobResult::Warning => "warning",
                        JobResult::Failed => "failed",
                        JobResult::Stopped => "stopped",
                    }
                ),
            };
            JobLine {
                name: job.name.clone(),
                status,
            }
        })
        .collect();
    ScreenView {
        tenant: tenant.to_string(),
        host: format!("{} ({})", inventory.server.name, inventory.server.os),
        jobs,
    }
}

impl Desktop for LabDesktop {
    fn size(&self) -> (u16, u16) {
        (WIDTH, HEIGHT)
    }

    fn draw(&self, now_unix_secs: u64, pixels: &mut [u8]) {
        let view = self.view();
        let scribbles = self.scribbles();
        draw_screen(pixels, &view, &scribbles, now_unix_secs);
    }

    fn input(&self, event: DesktopInput) {
        let mut scribbles = lock(&self.scribbles);
        let changed = scribbles.apply(event);
        if scribbles.take_copied() {
            self.copies.send_replace(scribbles.clipboard().to_string());
        }
        drop(scribbles);
        if changed {
            self.changes.send_modify(|n| *n += 1);
        }
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn clipboard_offered(&self) {
        lock(&self.scribbles).clipboard_offered();
    }

    fn clipboard_received(&self, text: String) {
        lock(&self.scribbles).receive_clipboard(&text);
        self.changes.send_modify(|n| *n += 1);
    }

    fn clipboard(&self) -> Option<watch::Receiver<String>> {
        Some(self.copies.subscribe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::scribbles::MAX_TYPED;
    use crate::net::rdp::keys::{KeyStroke, strokes_for_text};
    use crate::net::rdp::server::MouseButton;

    fn blank() -> Vec<u8> {
        vec![0; usize::from(WIDTH) * usize::from(HEIGHT) * BYTES_PER_PIXEL]
    }

    fn pixel(pixels: &[u8], x: usize, y: usize) -> [u8; 3] {
        let i = (y * usize::from(WIDTH) + x) * BYTES_PER_PIXEL;
        [pixels[i + 2], pixels[i + 1], pixels[i]]
    }

    fn view() -> ScreenView {
        ScreenView {
            tenant: "acme".into(),
            host: "vbo-acme (Windows Server 2022)".into(),
            jobs: vec![JobLine {
                name: "Exchange daily".into(),
                status: "never run".into(),
            }],
        }
    }

    #[test]
    fn the_screen_has_its_title_bar_panels_and_name() {
        let mut pixels = blank();
        draw_screen(&mut pixels, &view(), &Scribbles::default(), 1_700_000_000);
        assert_eq!(pixel(&pixels, 600, 90), BACKGROUND);
        assert_eq!(pixel(&pixels, 5, 5), TITLE_BAR);
        assert_eq!(pixel(&pixels, 900, 500), PANEL);
        assert_eq!(pixel(&pixels, 900, 740), TYPING_PANEL);
        // The A of "acme" (lower-case a: ink in its bottom row) in the title.
        let title = title_region("acme");
        let inked = (title.y..title.y + title.height)
            .flat_map(|y| (title.x..title.x + title.width).map(move |x| (x, y)))
            .filter(|(x, y)| pixel(&pixels, *x, *y) == TEXT)
            .count();
        assert!(inked > 100, "{inked} title pixels");
    }

    #[test]
    fn typed_keys_and_clicks_change_the_picture() {
        let mut scribbles = Scribbles::default();
        for stroke in strokes_for_text("Hi!\nok") {
            let input = match stroke {
                KeyStroke::Key {
                    scancode,
                    extended,
                    pressed,
                } => DesktopInput::Key {
                    scancode,
                    extended,
                    pressed,
                },
                KeyStroke::Unicode { ch, pressed } => DesktopInput::Unicode { ch, pressed },
            };
            scribbles.apply(input);
        }
        assert_eq!(scribbles.typed(), "Hi!\nok");
        assert!(!scribbles.apply(DesktopInput::PointerMoved { x: 700, y: 300 }));
        assert!(scribbles.apply(DesktopInput::Button {
            button: MouseButton::Left,
            pressed: true
        }));
        assert_eq!(scribbles.marks().collect::<Vec<_>>(), vec![(700, 300)]);

        let (mut before, mut after) = (blank(), blank());
        draw_screen(&mut before, &view(), &Scribbles::default(), 0);
        draw_screen(&mut after, &view(), &scribbles, 0);
        assert_eq!(pixel(&after, 700, 300), MARK);
        assert_eq!(pixel(&before, 700, 300), PANEL);
        let typing_differs = (TYPING.y..TYPING.y + TYPING.height).any(|y| {
            (TYPING.x..TYPING.x + TYPING.width).any(|x| pixel(&before, x, y) != pixel(&after, x, y))
        });
        assert!(typing_differs);
        // The same scribbles draw the same picture.
        let mut again = blank();
        draw_screen(&mut again, &view(), &scribbles, 0);
        assert!(again == after);
    }

    #[test]
    fn backspace_erases_and_long_text_is_bounded() {
        let mut scribbles = Scribbles::default();
        scribbles.type_text("abc\u{8}");
        assert_eq!(scribbles.typed(), "ab");
        scribbles.type_text(&"x".repeat(MAX_TYPED + 10));
        assert_eq!(scribbles.typed().len(), MAX_TYPED);
        assert_eq!(wrap("abcdef\n\nxy", 4), vec!["abcd", "ef", "", "xy"]);
        assert_eq!(fit("pied-piper", 5), "pied~");
    }
}
