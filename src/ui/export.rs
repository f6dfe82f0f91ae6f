//! Saving a file: a typed path field with a "Browse…" button beside it. Desktops without a
//! file-dialog portal get no dialog at all, so the typed path always works on its own. Also the
//! one CSV cell encoder of every export.

use eframe::egui;
use std::path::PathBuf;

use egui::Ui;

use super::engine::PathPurpose;

/// The state of one save form.
#[derive(Debug, Clone)]
pub struct ExportForm {
    pub purpose: PathPurpose,
    pub path: String,
    pub suggested_name: String,
    /// The result of the last save, in words (and whether it failed).
    pub status: Option<(bool, String)>,
    /// Set when the dialog answered: the form saves on its next frame.
    pub save_requested: bool,
}

/// What the operator asked for.
#[derive(Debug, Clone)]
pub enum ExportClick {
    Browse {
        purpose: PathPurpose,
        suggested_name: String,
    },
    Save {
        purpose: PathPurpose,
        path: PathBuf,
    },
}

impl ExportForm {
    pub fn new(purpose: PathPurpose, suggested_name: String) -> Self {
        let path = directories::UserDirs::new()
            .and_then(|d| d.document_dir().map(|p| p.to_path_buf()))
            .unwrap_or_else(|| PathBuf::from("."))
            .join(&suggested_name)
            .display()
            .to_string();
        ExportForm {
            purpose,
            path,
            suggested_name,
            status: None,
            save_requested: false,
        }
    }

    /// The dialog picked a path: take it and save.
    pub fn picked(&mut self, path: PathBuf) {
        self.path = path.display().to_string();
        self.save_requested = true;
    }
}

/// One CSV cell, safe to open in a spreadsheet. Text that starts with `=`, `+`, `-`, `@`, a
/// tab or a carriage return gets a leading `'`, so a spreadsheet shows it as text instead of
/// running it as a formula: tenant descriptions, agent strings and services come from tenants
/// and operators, not from whoever opens the file. Then the cell is quoted if it holds a comma,
/// a quote or a line break (RFC 4180).
pub fn csv_cell(text: &str) -> String {
    let neutral = if text.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{text}")
    } else {
        text.to_string()
    };
    if neutral.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", neutral.replace('"', "\"\""))
    } else {
        neutral
    }
}

/// Draws the path field, Browse and Save; returns the click, if any.
pub fn export_form_ui(ui: &mut Ui, form: &mut ExportForm) -> Option<ExportClick> {
    let mut click = None;
    ui.horizontal(|ui| {
        let label = ui.label("Save to");
        ui.add(egui::TextEdit::singleline(&mut form.path).desired_width(360.0))
            .labelled_by(label.id);
        if ui
            .button("Browse…")
            .on_hover_text("Choose the file with the desktop's dialog (where one is available)")
            .clicked()
        {
            click = Some(ExportClick::Browse {
                purpose: form.purpose.clone(),
                suggested_name: form.suggested_name.clone(),
            });
        }
        let save = ui
            .button("Save")
            .on_hover_text("Write the file at the typed path")
            .clicked();
        if (save || form.save_requested) && !form.path.trim().is_empty() {
            form.save_requested = false;
            click = Some(ExportClick::Save {
                purpose: form.purpose.clone(),
                path: PathBuf::from(form.path.trim()),
            });
        }
    });
    if let Some((failed, text)) = &form.status {
        let color = if *failed {
            ui.visuals().error_fg_color
        } else {
            ui.visuals().weak_text_color()
        };
        ui.colored_label(color, text);
    }
    click
}

#[cfg(test)]
mod tests {
    use super::csv_cell;

    #[test]
    fn formula_cells_are_neutralised() {
        assert_eq!(
            csv_cell("=HYPERLINK(\"http://x\")"),
            "\"'=HYPERLINK(\"\"http://x\"\")\""
        );
        assert_eq!(csv_cell("+1+1"), "'+1+1");
        assert_eq!(csv_cell("-2+3"), "'-2+3");
        assert_eq!(csv_cell("@SUM(A1:A9)"), "'@SUM(A1:A9)");
        assert_eq!(csv_cell("\tcmd"), "'\tcmd");
        assert_eq!(csv_cell("\rcmd"), "\"'\rcmd\"");
        assert_eq!(csv_cell("=1,2"), "\"'=1,2\"");
    }

    #[test]
    fn plain_cells_are_unchanged_or_only_quoted() {
        assert_eq!(csv_cell("acme"), "acme");
        assert_eq!(csv_cell(""), "");
        assert_eq!(csv_cell("12.5"), "12.5");
        assert_eq!(csv_cell("a=b"), "a=b");
        assert_eq!(csv_cell("north, \"big\""), "\"north, \"\"big\"\"\"");
        assert_eq!(csv_cell("two\nlines"), "\"two\nlines\"");
    }
}
