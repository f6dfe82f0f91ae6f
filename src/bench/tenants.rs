//! The figures that need thousands of idle tenants online: SP memory and heartbeat CPU per
//! idle tenant, the tenant list's fetch time and size, and the reconnect storm after the SP
//! is killed.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::Opts;
use super::Section;
use super::report::{Check, Report};
use super::swarm;
use super::world::World;
use crate::net::console::page_rows;
use crate::net::tls::{TlsClient, Trust};
use crate::wire::frame::encode_frame;
use crate::wire::protocol::{ApiResponse, TenantStatus};

/// The idle-tenant targets are stated for this many tenants.
const TARGET_TENANTS: usize = 15_000;

pub(super) async fn swarm_section(
    world: &mut World,
    o: &Opts,
    report: &mut Report,
    progress: impl Fn(&str),
) -> Result<()> {
    let n = o.tenants;
    progress("restarting the SP for a clean memory baseline");
    world.kill_sp()?;
    world.start_sp_again()?;
    world.wait_bench_tenant_online().await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_empty = world.sp.rss_kib()?;
    let cpu0 = world.sp.cpu_secs()?;
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let background_pct = (world.sp.cpu_secs()? - cpu0) / t0.elapsed().as_secs_f64() * 100.0;

    progress(&format!("connecting {n} idle tenants"));
    let tls = TlsClient::new(&Trust::CaFile(world.ca.clone()), "localhost")?;
    let swarm = swarm::Swarm::start(&world.idle_tenants, &[world.sp_addr], tls, 256);
    let ramp = swarm
        .wait_online(n, Duration::from_secs(300))
        .await
        .context("connecting the idle tenants")?;
    report.note("idle_ramp_secs", format!("{:.2}", ramp.as_secs_f64()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_full = world.sp.rss_kib()?;
    let per_tenant = rss_full.saturating_sub(rss_empty) as f64 / n.max(1) as f64;
    report.note("sp_rss_kib_before_after_idle", [rss_empty, rss_full]);

    if o.has(Section::Idle) {
        report.add(
            "idle_kib_per_tenant",
            &format!("SP memory per idle tenant ({n} tenants)"),
            "KiB",
            per_tenant,
            None,
            Some(("≤ 8 KiB", Check::AtMost(8.0))),
        );
        // Every connection's heartbeat timer has started once a full interval has passed.
        progress("measuring heartbeat CPU");
        tokio::time::sleep(Duration::from_secs(o.heartbeat_secs)).await;
        let cpu1 = world.sp.cpu_secs()?;
        let t1 = Instant::now();
        tokio::time::sleep(Duration::from_secs(o.idle_secs)).await;
        let pct = (world.sp.cpu_secs()? - cpu1) / t1.elapsed().as_secs_f64() * 100.0;
        report.add(
            "heartbeat_cpu_pct_at_15000",
            &format!(
                "SP heartbeat CPU, scaled to 15,000 tenants (measured at {n}, every {} s)",
                o.heartbeat_secs
            ),
            "% of a core",
            pct * TARGET_TENANTS as f64 / n.max(1) as f64,
            None,
            Some(("< 1%", Check::AtMost(1.0))),
        );
        report.note("heartbeat_cpu_pct_measured", format!("{pct:.3}"));
        report.note(
            "sp_background_cpu_pct_without_tenants",
            format!("{background_pct:.3}"),
        );
    }

    if o.has(Section::List) {
        progress("fetching the tenant list");
        list_figures(world, n, report).await?;
    }

    if o.has(Section::Scrape) {
        progress("scraping /metrics");
        super::admin::scrape_figures(world, n, report).await?;
    }

    if o.has(Section::Storm) {
        progress("reconnect storm");
        use std::sync::atomic::Ordering;
        let stats = swarm.stats.clone();
        let refused_before = stats.refused_while_up.load(Ordering::SeqCst);
        stats.sp_up.store(false, Ordering::SeqCst);
        let killed = Instant::now();
        world.kill_sp()?;
        world.start_sp_again()?;
        stats.sp_up.store(true, Ordering::SeqCst);
        let listening = world.sp.listening_at.saturating_duration_since(killed);
        let mut polls = 0;
        let mut reported = Instant::now();
        let back = loop {
            polls += 1;
            let mut online = 0;
            if let Ok(list) = world.console.tenants().await {
                online = list
                    .iter()
                    .filter(|t| t.status == TenantStatus::Online && t.name.starts_with("idle-"))
                    .count();
                if online >= n {
                    break killed.elapsed();
                }
            }
            if killed.elapsed() > Duration::from_secs(300) {
                anyhow::bail!("only {online} of {n} tenants came back within 300 s");
            }
            if reported.elapsed() >= Duration::from_secs(5) {
                progress(&format!("{online} of {n} tenants back"));
                reported = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        // The SP's list is the figure; the tenants' own view must agree before going on.
        swarm.wait_online(n, Duration::from_secs(10)).await?;
        report.add(
            "storm_secs",
            &format!("all {n} tenants online again after SP kill + restart"),
            "s",
            back.as_secs_f64(),
            None,
            Some(("≤ 15 s", Check::AtMost(15.0))),
        );
        report.add(
            "storm_refused",
            "connections refused or dropped by the listening SP",
            "",
            (stats.refused_while_up.load(Ordering::SeqCst) - refused_before) as f64,
            None,
            Some(("0", Check::AtMost(0.0))),
        );
        report.note(
            "storm_sp_listening_after_secs",
            format!("{:.3}", listening.as_secs_f64()),
        );
        report.note(
            "storm_connects_refused_while_sp_down",
            stats.connect_refused.load(Ordering::SeqCst),
        );
        report.note("storm_list_polls", polls);
        report.note("sp_rss_kib_after_storm", world.sp.rss_kib()?);
    }
    swarm.stop().await;
    Ok(())
}

/// Tenant list fetch time and size with every tenant online, beside the same bytes sent
/// over a plain loopback connection, and how soon the window has its first rows.
async fn list_figures(world: &World, n: usize, report: &mut Report) -> Result<()> {
    let mut whole = Vec::new();
    let mut first_rows = Vec::new();
    let mut size = 0;
    for _ in 0..5 {
        let started = Instant::now();
        // The window's request: a subscription, whose snapshot comes in pages.
        let mut feed = world.console.subscribe().await?;
        let mut rows = 0;
        loop {
            let page = match feed.next().await? {
                Some(ApiResponse::TenantPage(page)) => page,
                other => anyhow::bail!("expected a tenant list page, got {other:?}"),
            };
            if page.first {
                first_rows.push(started.elapsed());
            }
            let more = page.more;
            rows += page_rows(page)?.len();
            if !more {
                break;
            }
        }
        whole.push(started.elapsed());
        anyhow::ensure!(rows == n + 1, "the list held {rows} of {} tenants", n + 1);
    }
    // The size, from one more fetch outside the clock (encoding again is not the fetch's).
    let mut feed = world.console.subscribe().await?;
    while let Some(ApiResponse::TenantPage(page)) = feed.next().await? {
        let more = page.more;
        size += encode_frame(&ApiResponse::TenantPage(page))?.len();
        if !more {
            break;
        }
    }
    let median = |times: &mut Vec<Duration>| {
        times.sort();
        times[times.len() / 2].as_secs_f64() * 1000.0
    };
    let direct = plain_transfer_ms(size).await?;
    report.add(
        "list_fetch_ms",
        &format!("tenant list fetch ({} tenants, every row decoded)", n + 1),
        "ms",
        median(&mut whole),
        Some((direct, "same bytes, plain TCP")),
        Some(("≤ 20 ms", Check::AtMost(20.0))),
    );
    report.add(
        "list_first_rows_ms",
        "first page of the list in hand (what the window shows first)",
        "ms",
        median(&mut first_rows),
        None,
        None,
    );
    report.add(
        "list_wire_kib",
        "tenant list size on the wire (compact pages)",
        "KiB",
        size as f64 / 1024.0,
        None,
        Some(("≤ 1024 KiB", Check::AtMost(1024.0))),
    );
    Ok(())
}

/// Median time to connect and receive `size` bytes over plain loopback TCP.
async fn plain_transfer_ms(size: usize) -> Result<f64> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move {
        let data = vec![b'x'; size];
        for _ in 0..5 {
            let (mut tcp, _) = listener.accept().await?;
            tcp.write_all(&data).await?;
            tcp.shutdown().await?;
        }
        Ok::<_, std::io::Error>(())
    });
    let mut times = Vec::new();
    let mut buf = vec![0u8; 256 * 1024];
    for _ in 0..5 {
        let started = Instant::now();
        let mut tcp = tokio::net::TcpStream::connect(addr).await?;
        while tcp.read(&mut buf).await? > 0 {}
        times.push(started.elapsed());
    }
    server.await.context("plain transfer server")??;
    times.sort();
    Ok(times[times.len() / 2].as_secs_f64() * 1000.0)
}
