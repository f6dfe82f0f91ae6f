//! Saving a file: a typed path field with a "Browse…" button beside it. Desktops without a
//! file-dialog portal get no dialog at all, so the typed path always works on its own.

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
