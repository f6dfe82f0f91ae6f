//! Tiny painted widgets. The bundled font has no symbol glyphs (dots, checks, arrows), so
//! the few the console needs are drawn.

use eframe::egui;
use egui::{Color32, Ui, Vec2};

/// A status dot, filled or hollow.
pub fn dot_ui(ui: &mut Ui, color: Color32, filled: bool) {
    let size = ui.text_style_height(&egui::TextStyle::Body) * 0.6;
    let (rect, _) = ui.allocate_exact_size(Vec2::splat(size), egui::Sense::hover());
    let radius = size * 0.45;
    if filled {
        ui.painter().circle_filled(rect.center(), radius, color);
    } else {
        ui.painter()
            .circle_stroke(rect.center(), radius - 0.5, egui::Stroke::new(1.2, color));
    }
}

/// A small triangle pointing up (ascending) or down (descending).
pub fn sort_arrow_ui(ui: &mut Ui, descending: bool) {
    let size = ui.text_style_height(&egui::TextStyle::Body) * 0.55;
    let (rect, _) = ui.allocate_exact_size(Vec2::splat(size), egui::Sense::hover());
    let c = rect.center();
    let h = size * 0.4;
    let points = if descending {
        vec![
            c + Vec2::new(-h, -h * 0.6),
            c + Vec2::new(h, -h * 0.6),
            c + Vec2::new(0.0, h * 0.8),
        ]
    } else {
        vec![
            c + Vec2::new(-h, h * 0.6),
            c + Vec2::new(h, h * 0.6),
            c + Vec2::new(0.0, -h * 0.8),
        ]
    };
    let color = ui.visuals().strong_text_color();
    ui.painter().add(egui::Shape::convex_polygon(
        points,
        color,
        egui::Stroke::NONE,
    ));
}
