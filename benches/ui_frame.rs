//! Frame time of the console window with 10,000 tenants in the list: the egui pass
//! (layout of the visible rows, view rebuilds after sorting and live changes) and its
//! tessellation, timed over many frames; then with a 1920x1080 remote desktop open whose
//! every pixel changes each frame (the texture upload included). `cargo bench --bench
//! ui_frame`.

use std::time::{Duration, Instant};

use eframe::egui;
use egui_kittest::Harness;

use rac::ui::ConsoleApp;
use rac::ui::engine::ConnState;
use rac::ui::session_tab::SessionTab;
use rac::ui::session_tab::desktop::{DesktopPane, DesktopState};
use rac::ui::tenant_list::SortKey;
use rac::wire::protocol::{TenantInfo, TenantStatus};

const TENANTS: usize = 10_000;
const FRAMES: usize = 600;

fn tenants(now: u64) -> Vec<TenantInfo> {
    (0..TENANTS)
        .map(|i| TenantInfo {
            name: rac::lab::tenant_name(i),
            status: match i % 17 {
                0 => TenantStatus::Offline,
                1 => TenantStatus::Disabled,
                _ => TenantStatus::Online,
            },
            description: format!("Bench tenant {i}"),
            connected_since: Some(now - (i as u64 * 37) % 86_400),
            last_seen: Some(now - (i as u64 * 53) % 86_400),
            remote_addr: Some(format!(
                "198.51.{}.{}:{}",
                i / 250,
                i % 250,
                40_000 + i % 20_000
            )),
            agent_version: Some("0.1.0".into()),
            services: vec!["backup".into(), "echo".into()],
            provider_access: i % 23 != 0,
            heartbeat_rtt_ms: Some((i % 97) as f64 / 10.0),
            open_sessions: (i % 11 == 0) as u32,
            tenant_key: None,
        })
        .collect()
}

fn stats(name: &str, mut times: Vec<Duration>) {
    times.sort();
    let mean = times.iter().sum::<Duration>() / times.len() as u32;
    let p99 = times[(times.len() * 99 / 100).min(times.len() - 1)];
    let max = times[times.len() - 1];
    println!(
        "{name:<44} frames {:>4}  mean {:>7.3} ms  p99 {:>7.3} ms  max {:>7.3} ms",
        times.len(),
        mean.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3
    );
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let handle = runtime.handle().clone();
    let mut harness = Harness::builder()
        .with_size(egui::vec2(1600.0, 1000.0))
        .with_accessibility_check(false)
        .build_eframe(move |cc| ConsoleApp::console(cc, &handle));
    let now = rac::util::now_unix_secs();
    let rows = tenants(now);
    {
        let app = harness.state_mut();
        app.conn = ConnState::Live {
            user: "bench".into(),
            endpoint: "127.0.0.1:6180".into(),
        };
        app.tenants.set_all(rows.clone());
    }
    harness.run_steps(5);

    let ctx = harness.ctx.clone();
    let time_frames =
        |harness: &mut Harness<'_, ConsoleApp>,
         frames: usize,
         each: &mut dyn FnMut(&mut Harness<'_, ConsoleApp>, usize)| {
            let mut pass = Vec::with_capacity(frames);
            let mut tess = Vec::with_capacity(frames);
            for i in 0..frames {
                each(harness, i);
                let started = Instant::now();
                harness.step();
                pass.push(started.elapsed());
                let shapes = harness.output().shapes.clone();
                let started = Instant::now();
                let _ = ctx.tessellate(shapes, harness.output().pixels_per_point);
                tess.push(started.elapsed());
            }
            (pass, tess)
        };

    println!("console window, {TENANTS} tenants in the list (egui pass and tessellation, no GPU)");
    let (pass, tess) = time_frames(&mut harness, FRAMES, &mut |_, _| {});
    stats("idle list: egui pass", pass);
    stats("idle list: tessellation", tess);

    // Scrolling: a wheel event every frame.
    let (pass, _) = time_frames(&mut harness, FRAMES, &mut |h, i| {
        let dy = if (i / 100) % 2 == 0 { -120.0 } else { 120.0 };
        h.hover_at(egui::pos2(600.0, 500.0));
        h.event(egui::Event::MouseWheel {
            unit: egui::MouseWheelUnit::Point,
            delta: egui::vec2(0.0, dy),
            modifiers: egui::Modifiers::NONE,
            phase: egui::TouchPhase::Move,
            source: egui::MouseWheelSource::Wheel,
        });
    });
    stats("scrolling: egui pass", pass);

    // Live changes: 50 tenants change every frame (the view rebuilds at most 5 times a second).
    let mut k = 0usize;
    let (pass, _) = time_frames(&mut harness, FRAMES, &mut |h, _| {
        for _ in 0..50 {
            let mut t = rows[k % TENANTS].clone();
            t.heartbeat_rtt_ms = Some((k % 50) as f64 / 7.0);
            h.state_mut().tenants.upsert(t);
            k += 1;
        }
    });
    stats("50 live changes per frame: egui pass", pass);

    // Sorting by another column every frame: a full rebuild (filter + sort of 10,000) each time.
    let keys = [
        SortKey::Status,
        SortKey::Rtt,
        SortKey::Remote,
        SortKey::Name,
        SortKey::Since,
    ];
    let (pass, _) = time_frames(&mut harness, 100, &mut |h, i| {
        h.state_mut().settings.list.sort = keys[i % keys.len()];
    });
    stats("re-sort every frame: egui pass", pass);

    // Searching: a different query every frame.
    let (pass, _) = time_frames(&mut harness, 100, &mut |h, i| {
        h.state_mut().tenants.search = format!("{}", i % 10);
    });
    stats("new search every frame: egui pass", pass);

    // A desktop tab streaming: every frame, the whole 1920x1080 screen changes, as the
    // engine paints it after decoding; the window uploads it and draws it scaled to fit.
    let (w, h) = (1920u16, 1080u16);
    let mut pane = DesktopPane::new("rdp".into(), "bench".into(), String::new());
    pane.state = DesktopState::Live;
    pane.size = (w, h);
    let screen = pane.screen.clone();
    let mut bgrx = vec![0xffu8; usize::from(w) * usize::from(h) * 4];
    screen.reset(w, h, &bgrx);
    {
        let app = harness.state_mut();
        app.tabs
            .push(SessionTab::desktop_only(1, "bench-tenant".into(), pane));
        app.active = Some(1);
    }
    harness.run_steps(3);
    let (pass, tess) = time_frames(&mut harness, FRAMES, &mut |_, i| {
        let shade = (i % 200) as u8;
        for (j, pixel) in bgrx.chunks_exact_mut(4).enumerate() {
            pixel[0] = shade.wrapping_add(j as u8);
            pixel[1] = shade;
        }
        screen.paint(&bgrx, 0, 0, w - 1, h - 1);
        screen.publish();
    });
    stats("1080p desktop, all pixels every frame: pass", pass);
    stats("1080p desktop: tessellation", tess);
}
