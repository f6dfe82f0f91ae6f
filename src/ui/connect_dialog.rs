//! Connection profiles and the login form (`rac console`): how to reach an SP (directly or
//! through a gateway pool), how to trust it (a CA file, or a pinned SHA-256 fingerprint the
//! operator confirms), and as whom. Profiles persist; passwords are asked each time.

use eframe::egui;
use std::path::PathBuf;

use egui::{RichText, Ui};
use serde::{Deserialize, Serialize};

use crate::net::console::{ConsoleConfig, ConsoleKeys};
use crate::net::dial::Route;
use crate::net::tls::{self, Trust};

use super::action::Action;
use super::engine::{Command, PathPurpose};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum RouteKind {
    #[default]
    Direct,
    Gateways,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum TrustKind {
    #[default]
    CaFile,
    Pinned,
}

/// A saved way to reach an SP. No password, no token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Profile {
    pub name: String,
    pub route: RouteKind,
    /// `host:port` of the SP.
    pub sp_address: String,
    /// Gateway addresses, one per line, tried in order.
    pub gateways: String,
    pub trust: TrustKind,
    pub ca_file: String,
    pub fingerprint: String,
    /// The operator compared the fingerprint with the provider's.
    pub fingerprint_confirmed: bool,
    /// The name on the SP's certificate.
    pub server_name: String,
    pub operator: String,
}

impl Default for Profile {
    fn default() -> Self {
        Profile {
            name: "New profile".into(),
            route: RouteKind::Direct,
            sp_address: "127.0.0.1:6180".into(),
            gateways: String::new(),
            trust: TrustKind::CaFile,
            ca_file: String::new(),
            fingerprint: String::new(),
            fingerprint_confirmed: false,
            server_name: "localhost".into(),
            operator: "operator".into(),
        }
    }
}

impl Profile {
    /// The engine's config, or what is wrong with the profile, in words.
    pub fn to_config(&self) -> Result<ConsoleConfig, String> {
        let route = match self.route {
            RouteKind::Direct => {
                let addr = self.sp_address.trim();
                if addr.is_empty() {
                    return Err("enter the SP's address (host:port)".into());
                }
                Route::Direct(addr.to_string())
            }
            RouteKind::Gateways => {
                let list: Vec<String> = self
                    .gateways
                    .split(['\n', ',', ' '])
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect();
                if list.is_empty() {
                    return Err("enter at least one gateway address".into());
                }
                Route::Gateways(list)
            }
        };
        let trust = match self.trust {
            TrustKind::CaFile => {
                if self.ca_file.trim().is_empty() {
                    return Err("choose the SP's CA certificate file".into());
                }
                Trust::CaFile(PathBuf::from(self.ca_file.trim()))
            }
            TrustKind::Pinned => {
                let fp = crate::wire::parse_fingerprint(&self.fingerprint).map_err(|_| {
                    "the fingerprint must be 64 hex digits (colons allowed)".to_string()
                })?;
                if !self.fingerprint_confirmed {
                    return Err("confirm the fingerprint first".into());
                }
                Trust::Pinned(fp)
            }
        };
        if self.operator.trim().is_empty() {
            return Err("enter the operator name".into());
        }
        let user = self.operator.trim().to_string();
        let keys = ConsoleKeys::for_user(&user)
            .map_err(|e| format!("this console's end-to-end key: {e}"))?;
        Ok(ConsoleConfig {
            route,
            trust,
            server_name: self.server_name.trim().to_string(),
            user,
            keys,
        })
    }
}

/// The login form's transient state (never persisted).
#[derive(Default)]
pub struct ConnectDialog {
    pub password: String,
    pub error: Option<String>,
    /// The CA file's fingerprint, for the path it was read from.
    ca_fingerprint: Option<(String, Result<String, String>)>,
}

/// Draws the profile list and the form. `selected` indexes `profiles`.
pub fn connect_dialog_ui(
    ui: &mut Ui,
    dialog: &mut ConnectDialog,
    profiles: &mut Vec<Profile>,
    selected: &mut usize,
    actions: &mut Vec<Action>,
) {
    if profiles.is_empty() {
        profiles.push(Profile::default());
    }
    *selected = (*selected).min(profiles.len() - 1);
    ui.heading("Connect to a service provider");
    ui.label(RichText::new("Profiles are saved on this computer; passwords never are.").weak());
    ui.add_space(8.0);
    ui.horizontal_top(|ui| {
        ui.vertical(|ui| {
            ui.set_width(180.0);
            ui.label(RichText::new("Profiles").strong());
            for (i, p) in profiles.iter().enumerate() {
                if ui.selectable_label(*selected == i, &p.name).clicked() {
                    *selected = i;
                }
            }
            ui.horizontal(|ui| {
                if ui.button("New").on_hover_text("Add a profile").clicked() {
                    profiles.push(Profile::default());
                    *selected = profiles.len() - 1;
                }
                if profiles.len() > 1
                    && ui
                        .button("Delete")
                        .on_hover_text("Delete this profile")
                        .clicked()
                {
                    profiles.remove(*selected);
                    *selected = selected.saturating_sub(1);
                }
            });
        });
        ui.separator();
        let index = *selected;
        ui.vertical(|ui| form_ui(ui, dialog, &mut profiles[index], actions));
    });
}

fn labelled_edit(ui: &mut Ui, label: &str, text: &mut String, hint: &str) -> egui::Response {
    let l = ui.label(label);
    let r = ui
        .add(
            egui::TextEdit::singleline(text)
                .hint_text(hint)
                .desired_width(320.0),
        )
        .labelled_by(l.id);
    ui.end_row();
    r
}

fn form_ui(ui: &mut Ui, dialog: &mut ConnectDialog, p: &mut Profile, actions: &mut Vec<Action>) {
    let mut submit = false;
    egui::Grid::new("profile-form")
        .num_columns(2)
        .spacing([12.0, 8.0])
        .show(ui, |ui| {
            labelled_edit(ui, "Profile name", &mut p.name, "e.g. Production SP");
            ui.label("Route");
            ui.horizontal(|ui| {
                ui.radio_value(&mut p.route, RouteKind::Direct, "Direct to the SP");
                ui.radio_value(&mut p.route, RouteKind::Gateways, "Through cloud gateways");
            });
            ui.end_row();
            match p.route {
                RouteKind::Direct => {
                    labelled_edit(ui, "SP address", &mut p.sp_address, "sp.example.net:6180");
                }
                RouteKind::Gateways => {
                    let l = ui.label("Gateways (one per line)");
                    ui.add(
                        egui::TextEdit::multiline(&mut p.gateways)
                            .desired_rows(3)
                            .desired_width(320.0)
                            .hint_text("gw1.example.net:6180"),
                    )
                    .labelled_by(l.id);
                    ui.end_row();
                }
            }
            labelled_edit(
                ui,
                "Certificate name",
                &mut p.server_name,
                "the name on the SP's certificate",
            );
            ui.label("Trust");
            ui.horizontal(|ui| {
                ui.radio_value(&mut p.trust, TrustKind::CaFile, "CA certificate file");
                ui.radio_value(&mut p.trust, TrustKind::Pinned, "Pinned fingerprint");
            });
            ui.end_row();
            match p.trust {
                TrustKind::CaFile => {
                    let l = ui.label("CA file");
                    ui.horizontal(|ui| {
                        ui.add(
                            egui::TextEdit::singleline(&mut p.ca_file)
                                .desired_width(250.0)
                                .hint_text("/path/to/sp-ca.pem"),
                        )
                        .labelled_by(l.id);
                        if ui
                            .button("Browse…")
                            .on_hover_text("Choose the CA file with the desktop's dialog")
                            .clicked()
                        {
                            actions.push(Action::Engine(Command::PickPath {
                                purpose: PathPurpose::CaFile,
                                save: false,
                                suggested_name: "ca.pem".into(),
                            }));
                        }
                    });
                    ui.end_row();
                    let path = p.ca_file.trim().to_string();
                    if !path.is_empty() {
                        // Read once per path: a small local file, not the network.
                        if dialog
                            .ca_fingerprint
                            .as_ref()
                            .is_none_or(|(p, _)| *p != path)
                        {
                            let fp = tls::pem_fingerprint(std::path::Path::new(&path))
                                .map_err(|e| e.to_string());
                            dialog.ca_fingerprint = Some((path, fp));
                        }
                        ui.label("CA fingerprint");
                        match dialog.ca_fingerprint.as_ref().map(|(_, fp)| fp) {
                            Some(Ok(fp)) => ui.label(RichText::new(fp).monospace().small()),
                            Some(Err(e)) => ui.colored_label(ui.visuals().error_fg_color, e),
                            None => ui.label(""),
                        };
                        ui.end_row();
                    }
                }
                TrustKind::Pinned => {
                    let before = p.fingerprint.clone();
                    labelled_edit(
                        ui,
                        "SHA-256 fingerprint",
                        &mut p.fingerprint,
                        "AB:CD:… as `rac sp init` printed it",
                    );
                    ui.label("");
                    let first = match p.route {
                        RouteKind::Direct => p.sp_address.trim().to_string(),
                        RouteKind::Gateways => {
                            p.gateways.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("").to_string()
                        }
                    };
                    if ui
                        .add_enabled(!first.is_empty(), egui::Button::new("Fetch from the SP"))
                        .on_hover_text("Read the fingerprint the SP presents now, to compare with the one your provider gave you")
                        .clicked()
                    {
                        let server_name = if p.server_name.trim().is_empty() {
                            crate::tenant::config::host_of(&first).unwrap_or("localhost").to_string()
                        } else {
                            p.server_name.trim().to_string()
                        };
                        actions.push(Action::Engine(Command::ProbeFingerprint {
                            address: first,
                            server_name,
                        }));
                    }
                    ui.end_row();
                    if before != p.fingerprint {
                        p.fingerprint_confirmed = false;
                    }
                    ui.label("");
                    match crate::wire::parse_fingerprint(&p.fingerprint) {
                        Ok(fp) => {
                            ui.vertical(|ui| {
                                ui.label(
                                    RichText::new(crate::wire::format_fingerprint(&fp))
                                        .monospace()
                                        .small(),
                                );
                                ui.checkbox(
                                    &mut p.fingerprint_confirmed,
                                    "I compared this fingerprint with the one my provider gave me",
                                );
                            });
                        }
                        Err(_) if p.fingerprint.trim().is_empty() => {
                            ui.label("");
                        }
                        Err(_) => {
                            ui.colored_label(
                                ui.visuals().error_fg_color,
                                "not a SHA-256 fingerprint (64 hex digits)",
                            );
                        }
                    }
                    ui.end_row();
                }
            }
            labelled_edit(ui, "Operator", &mut p.operator, "operator name");
            let l = ui.label("Password");
            let pw = ui
                .add(
                    egui::TextEdit::singleline(&mut dialog.password)
                        .password(true)
                        .desired_width(320.0),
                )
                .labelled_by(l.id);
            if pw.lost_focus() && ui.input(|i| i.key_pressed(egui::Key::Enter)) {
                submit = true;
            }
            ui.end_row();
        });
    ui.add_space(8.0);
    if ui.button("Connect").clicked() {
        submit = true;
    }
    if submit {
        match p.to_config() {
            Ok(config) => {
                dialog.error = None;
                actions.push(Action::Engine(Command::Connect {
                    config,
                    password: std::mem::take(&mut dialog.password),
                }));
            }
            Err(e) => dialog.error = Some(e),
        }
    }
    if let Some(e) = &dialog.error {
        ui.colored_label(ui.visuals().error_fg_color, e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_check_what_they_need() {
        let mut p = Profile::default();
        assert!(p.to_config().is_err(), "no CA file");
        p.ca_file = "/tmp/ca.pem".into();
        let config = p.to_config().expect("complete profile");
        assert_eq!(config.route, Route::Direct("127.0.0.1:6180".into()));

        p.route = RouteKind::Gateways;
        p.gateways = "a:1\nb:2".into();
        assert_eq!(
            p.to_config().expect("gateways").route,
            Route::Gateways(vec!["a:1".into(), "b:2".into()])
        );

        p.trust = TrustKind::Pinned;
        p.fingerprint = "ab".repeat(32);
        assert!(p.to_config().is_err(), "unconfirmed pin");
        p.fingerprint_confirmed = true;
        assert!(matches!(
            p.to_config().expect("pinned").trust,
            Trust::Pinned(_)
        ));
    }

    #[test]
    fn persisted_profile_has_no_password_field() {
        let text = serde_json::to_string(&Profile::default()).expect("serialize");
        assert!(!text.contains("password"), "{text}");
        let back: Profile = serde_json::from_str("{\"name\":\"x\"}").expect("defaults fill in");
        assert_eq!(back.name, "x");
    }
}
