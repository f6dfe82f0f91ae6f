//! The picture of one remote desktop, shared by the engine task that decodes it and the
//! window that shows it. The engine copies each painted rectangle in and widens a dirty
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
    /// BGRX as decoded, `width * 4` bytes a row.
    bgrx: Vec<u8>,
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
        inner.bgrx = bgrx.to_vec();
        let len = inner.width * inner.height * 4;
        inner.bgrx.resize(len, 0);
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
            let span = row * width * 4 + x * 4..row * width * 4 + right * 4;
            inner.bgrx[span.clone()].copy_from_slice(&bgrx[span]);
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
            let start = (row * inner.width + region.x) * 4;
            let line = &inner.bgrx[start..start + region.width * 4];
            // Every remote pixel is opaque.
            pixels.extend(
                line.chunks_exact(4)
                    .map(|p| Color32::from_rgb(p[2], p[1], p[0])),
            );
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
        let at = (y * inner.width + x) * 4;
        Some([inner.bgrx[at + 2], inner.bgrx[at + 1], inner.bgrx[at]])
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
