//! Helpers shared by the window tests: step the real app until a condition holds.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use eframe::egui;
use egui::accesskit::Role;
use egui_kittest::Harness;
use egui_kittest::kittest::Queryable;
use rac::ui::ConsoleApp;

/// Only a guard against hangs: conditions normally hold within a few frames.
pub const HANG_GUARD: Duration = Duration::from_secs(120);

/// Steps the app until `cond` holds, then one frame more so the UI shows what the state says.
pub fn wait_until(
    h: &mut Harness<'static, ConsoleApp>,
    what: &str,
    cond: impl Fn(&Harness<'static, ConsoleApp>) -> bool,
) {
    let deadline = Instant::now() + HANG_GUARD;
    loop {
        h.step();
        if cond(h) {
            h.step();
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// True when some node's label contains `text`.
pub fn shown(h: &Harness<'static, ConsoleApp>, text: &str) -> bool {
    h.query_all_by_label_contains(text).next().is_some()
}

/// Replaces the text of the input labelled `label`.
pub fn fill(h: &mut Harness<'static, ConsoleApp>, role: Role, label: &str, text: &str) {
    h.get_by_role_and_label(role, label).focus();
    h.run_steps(1);
    h.key_press_modifiers(egui::Modifiers::COMMAND, egui::Key::A);
    h.run_steps(1);
    h.get_by_role_and_label(role, label).type_text(text);
    h.run_steps(2);
}
