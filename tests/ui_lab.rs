//! The console window driven by egui_kittest over a real in-process lab: the same app, the
//! same engine, real sockets and TLS. Waits poll the harness until a condition holds; the
//! long timeouts only guard against hangs.

mod ui_support;

use std::time::Duration;

use eframe::egui;
use egui::accesskit::Role;
use egui_kittest::Harness;
use egui_kittest::kittest::Queryable;

use rac::lab::{self, LabOptions};
use rac::ui::ConsoleApp;
use rac::ui::session_tab::TabState;
use ui_support::{HANG_GUARD, shown, wait_until};

struct World {
    // Declared first so the app (and its lab) drops before the runtime.
    harness: Harness<'static, ConsoleApp>,
    _runtime: tokio::runtime::Runtime,
}

fn world(options: LabOptions) -> World {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let handle = runtime.handle().clone();
    let harness = Harness::builder()
        .with_size(egui::vec2(1280.0, 800.0))
        .build_eframe(move |cc| ConsoleApp::lab(cc, &handle, options));
    World {
        harness,
        _runtime: runtime,
    }
}

fn small_lab(demo_faults: bool) -> LabOptions {
    LabOptions {
        tenants: 6,
        demo_faults,
        ..LabOptions::default()
    }
}

fn wait_for_tenants(h: &mut Harness<'static, ConsoleApp>, count: usize) {
    wait_until(h, "the lab's tenants", |h| {
        h.state().tenants.received && h.state().tenants.all().len() >= count
    });
}

fn search(h: &mut Harness<'static, ConsoleApp>, text: &str) {
    h.key_press_modifiers(egui::Modifiers::COMMAND, egui::Key::F);
    h.run_steps(2);
    h.get_by_role_and_label(Role::TextInput, "Search")
        .type_text(text);
    h.run_steps(2);
}

fn open_tenant(h: &mut Harness<'static, ConsoleApp>, name: &str) -> u64 {
    search(h, name);
    h.key_press(egui::Key::Enter);
    wait_until(h, "a session tab", |h| h.state().active.is_some());
    h.state().active.expect("active tab")
}

#[test]
fn lab_tenants_appear_and_search_narrows_the_list() {
    let mut w = world(small_lab(false));
    let h = &mut w.harness;
    wait_for_tenants(h, 6);
    for name in ["acme", "globex", "initech", "hooli", "stark", "wonka"] {
        assert!(
            h.query_all_by_label(name).next().is_some(),
            "{name} is listed"
        );
    }
    assert!(shown(h, "LAB"), "the window says it is a lab");

    search(h, "glob");
    wait_until(h, "the search to apply", |h| {
        h.state().tenants.visible_len() == 1
    });
    assert!(h.query_all_by_label("globex").next().is_some());
    assert!(
        h.query_all_by_label("acme").next().is_none(),
        "acme is filtered out"
    );
    assert!(shown(h, "1 of 6 tenants"));
}

#[test]
fn clicking_a_tenant_name_selects_it_and_connect_opens_it() {
    let mut w = world(small_lab(false));
    let h = &mut w.harness;
    wait_for_tenants(h, 6);
    // On the text itself, where an operator clicks: the cell's label must not take the click.
    h.get_by_label("acme").click();
    h.run_steps(2);
    assert_eq!(h.state().tenants.selected.as_deref(), Some("acme"));
    h.get_by_label("globex").click();
    h.run_steps(2);
    assert_eq!(h.state().tenants.selected.as_deref(), Some("globex"));
    assert!(h.state().tabs.is_empty(), "a click only selects");

    h.get_by_label("Connect").click();
    wait_until(h, "a session tab", |h| h.state().active.is_some());
    let tab = h.state().active.expect("active tab");
    assert_eq!(h.state().tab(tab).expect("tab").tenant, "globex");
}

#[test]
fn opening_a_tenant_shows_the_stages_and_the_session() {
    let mut w = world(small_lab(false));
    let h = &mut w.harness;
    wait_for_tenants(h, 6);
    let tab = open_tenant(h, "acme");
    wait_until(h, "the session to open", |h| {
        h.state()
            .tab(tab)
            .is_some_and(|t| t.state == TabState::Open)
    });
    wait_until(h, "the backup server's inventory", |h| {
        h.state().tab(tab).is_some_and(|t| t.inventory.is_some())
    });
    let t = h.state().tab(tab).expect("tab");
    assert_eq!(t.tenant, "acme");
    assert_eq!(t.service, "backup");
    assert!(t.stages.len() >= 4, "stages recorded: {:?}", t.stages);
    let server = t.inventory.as_ref().expect("inventory").server.name.clone();
    h.step();
    assert!(shown(h, &server), "the server name {server} is shown");

    // Ctrl+W closes the tab and returns to the list.
    h.key_press_modifiers(egui::Modifiers::COMMAND, egui::Key::W);
    wait_until(h, "the tab to close", |h| h.state().tabs.is_empty());
    assert!(h.state().active.is_none());
}

#[test]
fn unreachable_tenants_show_their_reason_and_retry() {
    let mut w = world(small_lab(true));
    let h = &mut w.harness;
    wait_for_tenants(h, 9);
    for (tenant, reason) in [
        (lab::OFFLINE_TENANT, "tenant is offline"),
        (lab::PRIVATE_TENANT, "remote access disabled by the tenant"),
        (lab::DISABLED_TENANT, "tenant is disabled"),
    ] {
        let tab = open_tenant(h, tenant);
        wait_until(h, "the refusal", |h| {
            h.state()
                .tab(tab)
                .is_some_and(|t| matches!(t.state, TabState::Failed { .. }))
        });
        assert!(
            shown(h, reason),
            "{tenant}: the reason '{reason}' is shown; the tab says {:?}",
            h.state().tab(tab).map(|t| &t.state)
        );
        assert!(
            h.query_all_by_label("Retry").next().is_some(),
            "{tenant}: a Retry button"
        );
        // Back to the list for the next one.
        h.key_press_modifiers(egui::Modifiers::COMMAND, egui::Key::W);
        wait_until(h, "the tab to close", |h| h.state().active.is_none());
        h.state_mut().tenants.search.clear();
    }
    // The status column says it in words too.
    wait_until(h, "the full list", |h| h.state().tenants.visible_len() == 9);
    assert!(shown(h, "provider access off"));
    assert!(shown(h, "offline"));
}

#[test]
fn a_job_started_from_the_jobs_view_shows_progress() {
    let mut w = world(small_lab(false));
    let h = &mut w.harness;
    wait_for_tenants(h, 6);
    let tab = open_tenant(h, "globex");
    wait_until(h, "the backup server's inventory", |h| {
        h.state().tab(tab).is_some_and(|t| t.inventory.is_some())
    });
    h.get_by_label("Jobs").click();
    h.run_steps(2);

    // The first enabled job that is not running; its Start button is the n-th "Start".
    let (job, index) = {
        let inv = h
            .state()
            .tab(tab)
            .and_then(|t| t.inventory.as_ref())
            .expect("inventory");
        let idle: Vec<_> = inv
            .jobs
            .iter()
            .filter(|j| inv.running_session(&j.id).is_none())
            .collect();
        let index = idle
            .iter()
            .position(|j| j.enabled)
            .expect("an enabled idle job");
        (idle[index].id.clone(), index)
    };
    h.query_all_by_label("Start")
        .nth(index)
        .expect("a Start button")
        .click();
    wait_until(h, "the job to run with progress", |h| {
        h.state()
            .tab(tab)
            .and_then(|t| t.inventory.as_ref())
            .and_then(|inv| inv.running_session(&job))
            .is_some_and(|run| run.progress > 0.0)
    });
    assert!(
        h.query_all_by_role(Role::ProgressIndicator)
            .next()
            .is_some(),
        "a progress bar is drawn; activity: {:?}",
        h.state().tab(tab).map(|t| &t.activity)
    );
    assert!(
        shown(h, "start job"),
        "the action is in the recent activity"
    );

    // Stop asks first.
    h.query_all_by_label("Stop")
        .next()
        .expect("a Stop button")
        .click();
    h.run_steps(2);
    assert!(
        shown(h, "Interrupt running work?"),
        "stop asks for confirmation"
    );
    h.get_by_label("Stop the job").click();
    wait_until(h, "the job to stop", |h| {
        h.state()
            .tab(tab)
            .and_then(|t| t.inventory.as_ref())
            .is_some_and(|inv| inv.running_session(&job).is_none())
    });
}

/// Pins what changes from run to run (ports, ages, round trips) so snapshots compare.
fn pin_for_snapshot(h: &mut Harness<'static, ConsoleApp>) {
    use rac::ui::engine::ConnState;
    use rac::wire::protocol::TenantStatus;
    let app = h.state_mut();
    app.paused = true;
    app.conn = ConnState::Live {
        user: "operator".into(),
        endpoint: "127.0.0.1:6180".into(),
    };
    if let Some(lab) = &mut app.lab {
        lab.sp = "127.0.0.1:6180".into();
    }
    let now = rac::util::now_unix_secs();
    let rows: Vec<_> = app.tenants.all().to_vec();
    for (i, mut t) in rows.into_iter().enumerate() {
        if t.status == TenantStatus::Online {
            t.remote_addr = Some(format!("203.0.113.{}:40{:03}", 10 + i, i));
            t.connected_since = Some(now - 3600 * (i as u64 + 1) - 30);
            t.heartbeat_rtt_ms = Some(0.4 + i as f64 * 0.1);
        } else {
            t.last_seen = t.last_seen.map(|_| now - 86_400 - 30);
        }
        t.agent_version = Some("0.1.0".into());
        app.tenants.upsert(t);
    }
    for tab in &mut app.tabs {
        tab.stages = tab
            .stages
            .iter()
            .enumerate()
            .map(|(i, (s, _))| (s.clone(), Duration::from_millis(3 + 4 * i as u64)))
            .collect();
        if let Some(inv) = &mut tab.inventory {
            inv.server.uptime_secs = 3 * 86_400 + 7200;
            for (i, alarm) in inv.server.alarms.iter_mut().enumerate() {
                alarm.time_unix_secs = 1_700_000_000 + 600 * i as u64;
            }
        }
    }
}

#[test]
fn snapshots_of_the_tenant_list_and_a_session() {
    let mut w = world(small_lab(true));
    let h = &mut w.harness;
    wait_for_tenants(h, 9);
    pin_for_snapshot(h);
    h.run_steps(3);
    h.snapshot("tenant_list");

    h.state_mut().paused = false;
    let tab = open_tenant(h, "acme");
    wait_until(h, "the backup server's inventory", |h| {
        h.state().tab(tab).is_some_and(|t| t.inventory.is_some())
    });
    pin_for_snapshot(h);
    h.run_steps(3);
    h.snapshot("session_overview");
}

#[test]
fn the_tenant_list_exports_as_csv_to_a_typed_path() {
    let mut w = world(small_lab(false));
    let h = &mut w.harness;
    wait_for_tenants(h, 6);
    h.get_by_label("Export CSV…").click();
    h.run_steps(2);
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("tenants.csv");
    h.state_mut()
        .tenant_export
        .as_mut()
        .expect("the export form is open")
        .path = path.display().to_string();
    h.run_steps(1);
    h.get_by_label("Save").click();
    wait_until(h, "the file to be written", |_| path.exists());
    let csv = std::fs::read_to_string(&path).expect("read csv");
    assert!(csv.starts_with("name,status,"), "{csv}");
    assert!(csv.contains("\nacme,online,"), "{csv}");
    assert_eq!(csv.lines().count(), 7, "header and six tenants: {csv}");
    wait_until(h, "the saved notice", |h| shown(h, "saved "));
}

#[test]
fn a_port_forward_from_a_session_carries_bytes() {
    use std::io::{Read, Write};
    let mut w = world(small_lab(false));
    let h = &mut w.harness;
    wait_for_tenants(h, 6);
    let tab = open_tenant(h, "hooli");
    wait_until(h, "the session to open", |h| {
        h.state()
            .tab(tab)
            .is_some_and(|t| t.state == TabState::Open)
    });
    h.get_by_label("Connection").click();
    h.run_steps(2);
    // Issue 17: the session is end to end, and this first one pinned the tenant's key.
    assert!(
        shown(h, "end-to-end encrypted with the tenant"),
        "the Connection view says the session is end to end"
    );
    assert!(
        shown(h, "pinned now (first use)"),
        "and that it pinned the key"
    );
    h.get_by_role_and_label(Role::TextInput, "Service").focus();
    h.run_steps(1);
    h.key_press_modifiers(egui::Modifiers::COMMAND, egui::Key::A);
    h.run_steps(1);
    h.get_by_role_and_label(Role::TextInput, "Service")
        .type_text("echo");
    h.run_steps(2);
    h.get_by_label("Forward").click();
    wait_until(h, "the forward to listen", |h| {
        h.state().tab(tab).is_some_and(|t| !t.forwards.is_empty())
    });
    let local = h.state().tab(tab).expect("tab").forwards[0].local.clone();
    assert!(shown(h, &local), "the local address {local} is shown");

    let mut conn = std::net::TcpStream::connect(&local).expect("connect to the forward");
    conn.set_read_timeout(Some(HANG_GUARD)).expect("timeout");
    conn.write_all(b"through the tunnel").expect("write");
    let mut back = [0u8; 18];
    conn.read_exact(&mut back).expect("echo");
    assert_eq!(&back, b"through the tunnel");
}

/// Whether the tab's desktop picture shows `region` of what the lab draws for `scribbles`.
fn desktop_shows(
    h: &Harness<'static, ConsoleApp>,
    tab: u64,
    scribbles: &rac::lab::desktop::Scribbles,
    region: rac::lab::desktop::Region,
) -> bool {
    use rac::lab::desktop as lab_desktop;
    let Some(pane) = h.state().tab(tab).and_then(|t| t.desktop.as_ref()) else {
        return false;
    };
    let (width, height) = (
        usize::from(lab_desktop::WIDTH),
        usize::from(lab_desktop::HEIGHT),
    );
    // A desktop resized to the tab shows the lab's picture at its top left.
    let (shown_width, shown_height) = pane.screen.size();
    if shown_width < region.x + region.width || shown_height < region.y + region.height {
        return false;
    }
    let mut bgra = vec![0; width * height * 4];
    let view = lab_desktop::ScreenView {
        tenant: "acme".into(),
        host: String::new(),
        jobs: Vec::new(),
    };
    lab_desktop::draw_screen(&mut bgra, &view, scribbles, 0);
    (region.y..region.y + region.height).all(|y| {
        (region.x..region.x + region.width).all(|x| {
            let at = (y * width + x) * 4;
            pane.screen.pixel(x, y) == Some([bgra[at + 2], bgra[at + 1], bgra[at]])
        })
    })
}

#[test]
fn the_desktop_view_shows_the_lab_screen_takes_input_and_closes_with_the_tab() {
    use rac::lab::desktop::{self as lab_desktop, Scribbles};
    let mut w = world(small_lab(false));
    let h = &mut w.harness;
    wait_for_tenants(h, 6);
    assert!(
        h.state()
            .tenants
            .get("acme")
            .is_some_and(|t| t.services.iter().any(|s| s == "rdp")),
        "lab tenants offer a desktop"
    );
    let tab = open_tenant(h, "acme");
    wait_until(h, "the backup session to open", |h| {
        h.state()
            .tab(tab)
            .is_some_and(|t| t.state == TabState::Open)
    });
    h.get_by_label("Desktop").click();
    h.run_steps(2);
    ui_support::fill(h, Role::TextInput, "User", "operator");
    ui_support::fill(h, Role::PasswordInput, "Desktop password", "pw-never-saved");
    h.get_by_label("Connect to the desktop").click();
    wait_until(h, "the desktop to connect", |h| {
        h.state()
            .tab(tab)
            .and_then(|t| t.desktop.as_ref())
            .is_some_and(|d| d.is_live())
    });
    // The lab server's screen, its title in particular, is what the view holds.
    wait_until(h, "the lab's title on the picture", |h| {
        desktop_shows(
            h,
            tab,
            &Scribbles::default(),
            lab_desktop::title_region("acme"),
        )
    });
    let remembered = h.state().settings.desktop_logins.values().next().cloned();
    assert_eq!(remembered.map(|l| l.user), Some("operator".to_string()));
    let saved = serde_json::to_string(&h.state().settings).expect("settings");
    assert!(
        !saved.contains("pw-never-saved"),
        "the desktop password is not kept in the settings: {saved}"
    );

    // A click leaves a mark where it landed; the picture then takes the keyboard.
    let picture = "Remote desktop (1024x768)";
    h.get_by_label(picture).click();
    h.run_steps(2);
    assert!(
        h.state().tab(tab).is_some_and(|t| t.desktop_has_keyboard()),
        "clicking the picture gives it the keyboard"
    );
    wait_until(h, "a click mark near the middle of the screen", |h| {
        let pane = h.state().tab(tab).and_then(|t| t.desktop.as_ref());
        pane.is_some_and(|pane| {
            (500..524)
                .any(|x| (372..396).any(|y| pane.screen.pixel(x, y) == Some(lab_desktop::MARK)))
        })
    });
    h.get_by_label(picture).type_text("Hi, lab!");
    h.run_steps(1);
    h.key_press(egui::Key::Enter);
    h.run_steps(1);
    let mut typed = Scribbles::default();
    typed.type_text("Hi, lab!\n");
    wait_until(h, "the typed text on the picture", |h| {
        desktop_shows(h, tab, &typed, lab_desktop::TYPING)
    });

    // The clipboard both ways. A paste into the picture puts the window's text on the
    // desktop's clipboard, then pastes it there (the lab types what Ctrl+V pastes)...
    h.event(egui::Event::Paste("from the console".into()));
    h.run_steps(1);
    typed.receive_clipboard("from the console");
    typed.type_text("from the console");
    wait_until(h, "the pasted text on the picture", |h| {
        desktop_shows(h, tab, &typed, lab_desktop::TYPING)
    });
    // ...and what is copied on the desktop (the lab's Ctrl+C copies the last line typed)
    // lands on the window's clipboard.
    h.key_press(egui::Key::Enter);
    h.get_by_label(picture).type_text("copy me");
    h.run_steps(1);
    h.event(egui::Event::Copy);
    wait_until(h, "the desktop's copy on the window's clipboard", |h| {
        h.state()
            .tab(tab)
            .and_then(|t| t.desktop.as_ref())
            .is_some_and(|d| d.copied.as_deref() == Some("copy me"))
    });
    // Right Ctrl gives the keyboard back, and the window's shortcuts work again.
    h.key_press(egui::Key::ControlRight);
    h.run_steps(2);
    assert!(!h.state().tab(tab).is_some_and(|t| t.desktop_has_keyboard()));

    // Resize to the window: once the tab's size settles, the lab desktop takes it (display
    // control), its picture at the top left.
    h.get_by_label("Resize desktop to window").click();
    wait_until(h, "the desktop to take the tab's size", |h| {
        h.state()
            .tab(tab)
            .and_then(|t| t.desktop.as_ref())
            .is_some_and(|d| {
                let (w, h) = d.view_size;
                d.size == d.view_size
                    && d.size != (lab_desktop::WIDTH, lab_desktop::HEIGHT)
                    && d.screen.size() == (usize::from(w), usize::from(h))
            })
    });
    wait_until(h, "the lab's title on the resized picture", |h| {
        desktop_shows(h, tab, &typed, lab_desktop::title_region("acme"))
    });

    // The keys and the click were answered by picture changes: the desktop's own round
    // trip, measured by the client, is in the Connection view.
    wait_until(h, "the desktop's round trip", |h| {
        h.state()
            .tab(tab)
            .and_then(|t| t.desktop.as_ref())
            .is_some_and(|d| d.stats.round_trip_ms.is_some() && d.stats.round_trips > 0)
    });
    h.get_by_label("Connection").click();
    h.run_steps(2);
    assert!(
        h.query_by_label_contains("to the next picture change, median of")
            .is_some(),
        "the Connection view shows the desktop's round trip"
    );

    // Closing the tab ends both of its sessions at the SP.
    wait_until(h, "the SP to count two sessions", |h| {
        h.state()
            .tenants
            .get("acme")
            .is_some_and(|t| t.open_sessions == 2)
    });
    h.key_press_modifiers(egui::Modifiers::COMMAND, egui::Key::W);
    wait_until(h, "the SP to count none", |h| {
        h.state().tab(tab).is_none()
            && h.state()
                .tenants
                .get("acme")
                .is_some_and(|t| t.open_sessions == 0)
    });
}
