//! The picture of one remote desktop, shared by the engine task that decodes it and the
//! window that shows it. The engine converts each painted rectangle in and widens a dirty
//! rectangle; the window takes that rectangle once a frame and uploads only it to its
//! texture. Plain std: a short lock on each side, no waiting.

use std::sync::Mutex;

use eframe::egui::{Color32, ColorImage};

use crate::util::lock;

pub use crate::net::rdp::Region;

impl Region {
    fn union(self, other: Region) -> Region {
        let (x, y) = (self.x.min(other.x), self.y.min(other.y));
        let right = (self.x + self.width).max(other.x + other.width);
        let bottom = (self.y + self.height).max(other.y + other.height);
        Region {
            x,
            y,
            width: right - x,
            height: bottom - y,
        }
    }
}

/// One decoded B, G, R, X pixel as the texture's colour (every remote pixel is opaque).
fn color(p: &[u8]) -> Color32 {
    Color32::from_rgb(p[2], p[1], p[0])
}

/// What changed since the window last looked.
pub struct ScreenChange {
    /// The screen's size now; a size the texture does not have means "make a new one".
    pub size: [usize; 2],
    /// Where `pixels` go.
    pub region: Region,
    pub pixels: ColorImage,
}

#[derive(Default)]
struct Inner {
    width: usize,
    height: usize,
    /// The picture as the texture takes it, `width` a row: the engine converts the decoder's
    /// BGRX as it paints, so the window only copies rows.
    pixels: Vec<Color32>,
    dirty: Option<Region>,
    /// Rectangles painted so far (the Connection view's frames/s counts them).
    paints: u64,
}

/// One desktop's picture.
#[derive(Default)]
pub struct SharedScreen {
    inner: Mutex<Inner>,
}

impl SharedScreen {
    /// A new picture of `width` x `height` from `bgrx` (the whole screen is dirty).
    pub fn reset(&self, width: u16, height: u16, bgrx: &[u8]) {
        let mut inner = lock(&self.inner);
        inner.width = usize::from(width);
        inner.height = usize::from(height);
        let len = inner.width * inner.height;
        inner.pixels = bgrx.chunks_exact(4).take(len).map(color).collect();
        inner.pixels.resize(len, Color32::BLACK);
        inner.dirty = Some(Region {
            x: 0,
            y: 0,
            width: inner.width,
            height: inner.height,
        });
    }

    /// Copies the inclusive rectangle (`left`, `top`)–(`right`, `bottom`) of `bgrx` (the
    /// decoder's whole screen, same size as this one) in.
    pub fn paint(&self, bgrx: &[u8], left: u16, top: u16, right: u16, bottom: u16) {
        let mut inner = lock(&self.inner);
        let (width, height) = (inner.width, inner.height);
        let x = usize::from(left).min(width);
        let y = usize::from(top).min(height);
        let right = (usize::from(right) + 1).min(width);
        let bottom = (usize::from(bottom) + 1).min(height);
        if x >= right || y >= bottom || bgrx.len() < width * height * 4 {
            return;
        }
        for row in y..bottom {
            let (from, to) = (row * width + x, row * width + right);
            let source = bgrx[from * 4..to * 4].chunks_exact(4);
            for (pixel, p) in inner.pixels[from..to].iter_mut().zip(source) {
                *pixel = color(p);
            }
        }
        let region = Region {
            x,
            y,
            width: right - x,
            height: bottom - y,
        };
        inner.dirty = Some(inner.dirty.map_or(region, |d| d.union(region)));
        inner.paints += 1;
    }

    /// The changed part since the last call, as an image ready to upload.
    pub fn take_change(&self) -> Option<ScreenChange> {
        let mut inner = lock(&self.inner);
        let region = inner.dirty.take()?;
        let mut pixels = Vec::with_capacity(region.width * region.height);
        for row in region.y..region.y + region.height {
            let start = row * inner.width + region.x;
            pixels.extend_from_slice(&inner.pixels[start..start + region.width]);
        }
        Some(ScreenChange {
            size: [inner.width, inner.height],
            region,
            pixels: ColorImage::new([region.width, region.height], pixels),
        })
    }

    /// Marks the whole picture changed (the window lost its copy).
    pub fn invalidate(&self) {
        let mut inner = lock(&self.inner);
        inner.dirty = Some(Region {
            x: 0,
            y: 0,
            width: inner.width,
            height: inner.height,
        });
    }

    pub fn size(&self) -> (usize, usize) {
        let inner = lock(&self.inner);
        (inner.width, inner.height)
    }

    /// Rectangles painted since the desktop opened.
    pub fn paints(&self) -> u64 {
        lock(&self.inner).paints
    }

    /// The pixel at (`x`, `y`) as R, G, B (tests read the picture this way).
    pub fn pixel(&self, x: usize, y: usize) -> Option<[u8; 3]> {
        let inner = lock(&self.inner);
        if x >= inner.width || y >= inner.height {
            return None;
        }
        let p = inner.pixels[y * inner.width + x];
        Some([p.r(), p.g(), p.b()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_painted_union_is_handed_over() {
        let screen = SharedScreen::default();
        screen.reset(8, 4, &[0; 8 * 4 * 4]);
        let first = screen
            .take_change()
            .expect("the whole screen after a reset");
        assert_eq!(first.region.width * first.region.height, 32);
        assert!(screen.take_change().is_none(), "nothing painted since");

        let mut decoded = vec![0u8; 8 * 4 * 4];
        for (i, p) in decoded.chunks_exact_mut(4).enumerate() {
            p.copy_from_slice(&[i as u8, 1, 2, 0]);
        }
        screen.paint(&decoded, 1, 1, 2, 1);
        screen.paint(&decoded, 5, 2, 5, 3);
        let change = screen.take_change().expect("painted");
        assert_eq!(
            change.region,
            Region {
                x: 1,
                y: 1,
                width: 5,
                height: 3
            }
        );
        // Decoded as B, G, R: read back as R, G, B.
        assert_eq!(screen.pixel(2, 1), Some([2, 1, 10]));
        assert_eq!(screen.pixel(5, 3), Some([2, 1, 29]));
        // Outside the painted rectangles, the old picture stays.
        assert_eq!(screen.pixel(3, 1), Some([0, 0, 0]));
        assert_eq!(change.pixels.pixels[0], Color32::from_rgb(2, 1, 9));
        assert_eq!(screen.paints(), 2);
    }

    #[test]
    fn rectangles_past_the_edge_are_clipped() {
        let screen = SharedScreen::default();
        screen.reset(4, 4, &[0; 64]);
        screen.take_change();
        screen.paint(&[7; 64], 2, 2, 100, 100);
        let change = screen.take_change().expect("painted");
        assert_eq!((change.region.width, change.region.height), (2, 2));
        screen.paint(&[7; 64], 9, 9, 10, 10);
        assert!(screen.take_change().is_none());
    }
}
