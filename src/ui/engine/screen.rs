//! The picture of one remote desktop, shared by the engine task that decodes it and the
//! window that shows it. The engine converts each painted rectangle in, widens a dirty
//! rectangle, and after each batch of paints builds the image of that rectangle for the
//! texture ([`SharedScreen::publish`]); the window takes the finished image once a frame
//! and moves it into its texture, so no pixel is copied on the window's thread.
//!
//! Two locks, so the window never waits for a conversion: the engine holds `picture` while
//! it converts (tests read pixels there too); the window only touches `slot`, the hand-over
//! place, for as long as an `Option::take`. When the whole screen changed, the picture
//! itself is handed over: the image is an `Arc` the texture upload shares, and the engine
//! paints into it again in place once the upload has let go of it, or into a copy before.

use std::sync::{Arc, Mutex};

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

    fn whole(width: usize, height: usize) -> Region {
        Region {
            x: 0,
            y: 0,
            width,
            height,
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
    /// Built by the engine; for a whole-screen change, the engine's own picture (shared).
    pub pixels: Arc<ColorImage>,
}

/// The engine's side: the whole picture as the texture takes it.
struct Picture {
    width: usize,
    height: usize,
    /// `width * height` pixels. Shared with a [`ScreenChange`] after a whole-screen hand-over.
    image: Arc<ColorImage>,
    /// Painted since the last [`SharedScreen::publish`].
    dirty: Option<Region>,
    /// Rectangles painted so far (the Connection view's frames/s counts them).
    paints: u64,
}

impl Default for Picture {
    fn default() -> Self {
        Picture {
            width: 0,
            height: 0,
            image: Arc::new(ColorImage::new([0, 0], Vec::new())),
            dirty: None,
            paints: 0,
        }
    }
}

impl Picture {
    /// The rows of `region` as an image of its own.
    fn cut(&self, region: Region) -> Arc<ColorImage> {
        if region == Region::whole(self.width, self.height) {
            return self.image.clone();
        }
        let mut pixels = Vec::with_capacity(region.width * region.height);
        for row in region.y..region.y + region.height {
            let start = row * self.width + region.x;
            pixels.extend_from_slice(&self.image.pixels[start..start + region.width]);
        }
        Arc::new(ColorImage::new([region.width, region.height], pixels))
    }
}

/// The window's side: the change waiting to be uploaded.
#[derive(Default)]
struct Slot {
    size: (usize, usize),
    change: Option<ScreenChange>,
}

/// One desktop's picture.
#[derive(Default)]
pub struct SharedScreen {
    picture: Mutex<Picture>,
    slot: Mutex<Slot>,
}

impl SharedScreen {
    /// A new picture of `width` x `height` from `bgrx`, handed over whole at once.
    pub fn reset(&self, width: u16, height: u16, bgrx: &[u8]) {
        let mut picture = lock(&self.picture);
        let (width, height) = (usize::from(width), usize::from(height));
        let len = width * height;
        let mut pixels: Vec<Color32> = bgrx.chunks_exact(4).take(len).map(color).collect();
        pixels.resize(len, Color32::BLACK);
        picture.width = width;
        picture.height = height;
        picture.image = Arc::new(ColorImage::new([width, height], pixels));
        picture.dirty = Some(Region::whole(width, height));
        self.hand_over(&mut picture);
    }

    /// Copies the inclusive rectangle (`left`, `top`)–(`right`, `bottom`) of `bgrx` (the
    /// decoder's whole screen, same size as this one) in. The window sees it after the
    /// next [`Self::publish`].
    pub fn paint(&self, bgrx: &[u8], left: u16, top: u16, right: u16, bottom: u16) {
        let mut picture = lock(&self.picture);
        let (width, height) = (picture.width, picture.height);
        let x = usize::from(left).min(width);
        let y = usize::from(top).min(height);
        let right = (usize::from(right) + 1).min(width);
        let bottom = (usize::from(bottom) + 1).min(height);
        if x >= right || y >= bottom || bgrx.len() < width * height * 4 {
            return;
        }
        let region = Region {
            x,
            y,
            width: right - x,
            height: bottom - y,
        };
        if region == Region::whole(width, height) && Arc::get_mut(&mut picture.image).is_none() {
            // The texture upload still holds the last picture and every pixel is new:
            // convert into a fresh image instead of copying the old one first.
            let pixels = bgrx[..width * height * 4]
                .chunks_exact(4)
                .map(color)
                .collect();
            picture.image = Arc::new(ColorImage::new([width, height], pixels));
        } else {
            // In place once the upload has let go of it, or into a copy before then.
            let image = Arc::make_mut(&mut picture.image);
            for row in y..bottom {
                let (from, to) = (row * width + x, row * width + right);
                let source = bgrx[from * 4..to * 4].chunks_exact(4);
                for (pixel, p) in image.pixels[from..to].iter_mut().zip(source) {
                    *pixel = color(p);
                }
            }
        }
        picture.dirty = Some(picture.dirty.map_or(region, |d| d.union(region)));
        picture.paints += 1;
    }

    /// Builds the image of what was painted since the last call and hands it to the window
    /// (with whatever the window has not taken yet). Call it after a batch of paints.
    pub fn publish(&self) {
        let mut picture = lock(&self.picture);
        self.hand_over(&mut picture);
    }

    fn hand_over(&self, picture: &mut Picture) {
        let size = [picture.width, picture.height];
        if size.contains(&0) {
            return;
        }
        // What the window has not taken yet is part of this change (the picture has it).
        let waiting = lock(&self.slot)
            .change
            .take()
            .filter(|c| c.size == size)
            .map(|c| c.region);
        let region = match (picture.dirty.take(), waiting) {
            (Some(dirty), Some(waiting)) => dirty.union(waiting),
            (Some(region), None) | (None, Some(region)) => region,
            (None, None) => return,
        };
        let change = ScreenChange {
            size,
            region,
            pixels: picture.cut(region),
        };
        let mut slot = lock(&self.slot);
        slot.size = (size[0], size[1]);
        slot.change = Some(change);
    }

    /// The change waiting since the window last looked, ready to move into the texture.
    pub fn take_change(&self) -> Option<ScreenChange> {
        lock(&self.slot).change.take()
    }

    /// Hands the whole picture over again (the window lost its copy). Rare: it waits for
    /// a conversion under way, where the window otherwise never waits.
    pub fn invalidate(&self) {
        let mut picture = lock(&self.picture);
        picture.dirty = Some(Region::whole(picture.width, picture.height));
        self.hand_over(&mut picture);
    }

    /// The size of the picture handed over last.
    pub fn size(&self) -> (usize, usize) {
        lock(&self.slot).size
    }

    /// Rectangles painted since the desktop opened.
    pub fn paints(&self) -> u64 {
        lock(&self.picture).paints
    }

    /// The pixel at (`x`, `y`) as R, G, B (tests read the picture this way).
    pub fn pixel(&self, x: usize, y: usize) -> Option<[u8; 3]> {
        let picture = lock(&self.picture);
        if x >= picture.width || y >= picture.height {
            return None;
        }
        let p = picture.image.pixels[y * picture.width + x];
        Some([p.r(), p.g(), p.b()])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A decoded screen whose every pixel differs from the last one's: B = index + `seed`.
    fn decoded(width: usize, height: usize, seed: u8) -> Vec<u8> {
        let mut bgrx = vec![0u8; width * height * 4];
        for (i, p) in bgrx.chunks_exact_mut(4).enumerate() {
            p.copy_from_slice(&[(i as u8).wrapping_add(seed), seed, 2, 0]);
        }
        bgrx
    }

    /// What the window's texture does with a change.
    fn upload(texture: &mut [Color32], width: usize, change: &ScreenChange) {
        let r = change.region;
        for row in 0..r.height {
            let to = (r.y + row) * width + r.x;
            let from = row * r.width;
            texture[to..to + r.width].copy_from_slice(&change.pixels.pixels[from..from + r.width]);
        }
    }

    fn as_colors(bgrx: &[u8]) -> Vec<Color32> {
        bgrx.chunks_exact(4).map(color).collect()
    }

    #[test]
    fn only_the_painted_union_is_handed_over() {
        let screen = SharedScreen::default();
        screen.reset(8, 4, &[0; 8 * 4 * 4]);
        let first = screen
            .take_change()
            .expect("the whole screen after a reset");
        assert_eq!(first.region.width * first.region.height, 32);
        assert!(screen.take_change().is_none(), "nothing painted since");

        let decoded = decoded(8, 4, 0);
        screen.paint(&decoded, 1, 1, 2, 1);
        assert!(screen.take_change().is_none(), "not published yet");
        screen.paint(&decoded, 5, 2, 5, 3);
        screen.publish();
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
        assert_eq!(screen.pixel(2, 1), Some([2, 0, 10]));
        assert_eq!(screen.pixel(5, 3), Some([2, 0, 29]));
        // Outside the painted rectangles, the old picture stays.
        assert_eq!(screen.pixel(3, 1), Some([0, 0, 0]));
        assert_eq!(change.pixels.pixels[0], Color32::from_rgb(2, 0, 9));
        assert_eq!(screen.paints(), 2);
    }

    #[test]
    fn rectangles_past_the_edge_are_clipped() {
        let screen = SharedScreen::default();
        screen.reset(4, 4, &[0; 64]);
        screen.take_change();
        screen.paint(&[7; 64], 2, 2, 100, 100);
        screen.publish();
        let change = screen.take_change().expect("painted");
        assert_eq!((change.region.width, change.region.height), (2, 2));
        screen.paint(&[7; 64], 9, 9, 10, 10);
        screen.publish();
        assert!(screen.take_change().is_none());
    }

    #[test]
    fn partial_paints_after_a_whole_screen_hand_over_keep_the_picture_right() {
        let (width, height) = (8, 4);
        let screen = SharedScreen::default();
        let mut bgrx = decoded(width, height, 0);
        screen.reset(8, 4, &bgrx);
        let mut texture = vec![Color32::TRANSPARENT; width * height];
        let first = screen.take_change().expect("the reset");
        upload(&mut texture, width, &first);

        // A whole frame is the picture itself, handed over without a copy...
        bgrx = decoded(width, height, 50);
        screen.paint(&bgrx, 0, 0, 7, 3);
        screen.publish();
        let whole = screen.take_change().expect("a whole frame");
        assert_eq!(whole.region, Region::whole(width, height));
        assert!(Arc::ptr_eq(&whole.pixels, &lock(&screen.picture).image));
        upload(&mut texture, width, &whole);
        let handed = whole.pixels.pixels.clone();

        // ...and a partial paint while the upload still holds it goes into a copy, so the
        // image on its way to the texture does not change under it.
        bgrx = decoded(width, height, 100);
        screen.paint(&bgrx, 2, 1, 4, 2);
        screen.publish();
        assert_eq!(
            whole.pixels.pixels, handed,
            "the handed-over image is untouched"
        );
        let part = screen.take_change().expect("a part");
        assert_eq!(
            part.region,
            Region {
                x: 2,
                y: 1,
                width: 3,
                height: 2
            }
        );
        upload(&mut texture, width, &part);
        drop(whole);

        // Once the upload has let go, the next whole frame and the paints after it go into
        // the picture in place; two publishes the window did not look between add up.
        bgrx = decoded(width, height, 150);
        screen.paint(&bgrx, 0, 0, 7, 3);
        screen.publish();
        bgrx = decoded(width, height, 200);
        screen.paint(&bgrx, 6, 3, 7, 3);
        screen.publish();
        bgrx = decoded(width, height, 250);
        screen.paint(&bgrx, 0, 0, 0, 0);
        screen.publish();
        let merged = screen.take_change().expect("merged");
        assert_eq!(merged.region, Region::whole(width, height));
        upload(&mut texture, width, &merged);

        // The texture now holds, pixel by pixel, what each rectangle last had painted.
        let mut expected = as_colors(&decoded(width, height, 150));
        expected[3 * width + 6..3 * width + 8].copy_from_slice(
            &as_colors(&decoded(width, height, 200))[3 * width + 6..3 * width + 8],
        );
        expected[0] = as_colors(&decoded(width, height, 250))[0];
        assert_eq!(texture, expected);
        for (i, p) in expected.iter().enumerate() {
            assert_eq!(
                screen.pixel(i % width, i / width),
                Some([p.r(), p.g(), p.b()])
            );
        }
    }

    #[test]
    fn a_window_that_lost_its_copy_gets_the_whole_picture() {
        let screen = SharedScreen::default();
        screen.reset(4, 2, &decoded(4, 2, 9));
        screen.take_change();
        screen.invalidate();
        let change = screen.take_change().expect("the whole picture again");
        assert_eq!(change.region, Region::whole(4, 2));
        assert_eq!(change.pixels.pixels, as_colors(&decoded(4, 2, 9)));
    }
}
