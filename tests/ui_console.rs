//! `rac console`: the window against an SP it knows nothing about, set up the way an operator
//! does it — a gateway pool, the SP's fingerprint fetched on first contact and confirmed, the
//! password typed — over a real lab on loopback.

mod ui_support;

use eframe::egui;
use egui::accesskit::Role;
use egui_kittest::Harness;
use egui_kittest::kittest::Queryable;

use rac::lab::{Lab, LabOptions};
use rac::ui::ConsoleApp;
use ui_support::{fill, wait_until};

#[test]
fn an_operator_connects_through_gateways_with_a_confirmed_fingerprint() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let lab = runtime
        .block_on(Lab::start(LabOptions {
            tenants: 3,
            ..LabOptions::default()
        }))
        .expect("lab");
    let handle = runtime.handle().clone();
    let mut h = Harness::builder()
        .with_size(egui::vec2(1280.0, 800.0))
        .build_eframe(move |cc| ConsoleApp::console(cc, &handle));
    h.run_steps(2);

    h.get_by_label("Through cloud gateways").click();
    h.run_steps(2);
    let gateways: Vec<String> = lab.gateways.iter().map(|g| g.to_string()).collect();
    fill(
        &mut h,
        Role::MultilineTextInput,
        "Gateways (one per line)",
        &gateways.join("\n"),
    );
    h.get_by_label("Pinned fingerprint").click();
    h.run_steps(2);
    h.get_by_label("Fetch from the SP").click();
    wait_until(&mut h, "the SP's fingerprint", |h| {
        h.query_by_label_contains("I compared this fingerprint")
            .is_some()
    });
    let shown = h
        .get_by_role_and_label(Role::TextInput, "SHA-256 fingerprint")
        .value()
        .expect("fingerprint text");
    assert_eq!(
        shown, lab.ca_fingerprint,
        "the fingerprint shown is the SP's CA"
    );
    h.get_by_label_contains("I compared this fingerprint")
        .click();
    h.run_steps(2);
    fill(&mut h, Role::TextInput, "Operator", &lab.operator);
    fill(&mut h, Role::PasswordInput, "Password", &lab.password);
    h.get_by_label("Connect").click();

    wait_until(&mut h, "the tenant list", |h| {
        h.state().tenants.received && h.state().tenants.all().len() >= 3
    });
    for name in &lab.tenants {
        assert!(
            h.query_by_label_contains(name).is_some(),
            "{name} is listed"
        );
    }
    drop(h);
    runtime.block_on(lab.stop());
}
