//! The admin listener's figures: what metrics cost the relay (one stream's throughput and
//! the session-open p50, scraped vs not, interleaved in one run), a `/metrics` scrape with
//! every idle tenant online (time and size), and audit queries over the admin API with a
//! million rows in the registry. Requests are plain HTTP/1.1 on loopback, one connection
//! each, as curl or a scraper sends them.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio_util::sync::CancellationToken;

use super::Opts;
use super::load::{self, Path as LoadPath};
use super::relay::median;
use super::report::{Check, Report};
use super::world::{AdminAccess, SOURCE, World};

/// How often the "metrics on" rounds scrape `/metrics`: 150 times Prometheus' usual 15 s,
/// so that a cost, if any, shows.
const SCRAPE_EVERY: Duration = Duration::from_millis(100);
/// Scrapes timed for the scrape figure.
const SCRAPES: usize = 20;
/// Tenants, operators and days the filled audit log spreads its rows over.
const AUDIT_TENANTS: u64 = 15_000;
const AUDIT_OPERATORS: u64 = 50;
const AUDIT_DAYS: u64 = 365;

/// One answer of the admin listener.
pub struct Answer {
    pub status: u16,
    pub body: String,
    /// From the connect to the last byte.
    pub took: Duration,
}

/// `GET path` with a bearer token, on a connection of its own (`Connection: close`).
pub async fn http_get(addr: SocketAddr, path: &str, token: &str) -> Result<Answer> {
    let started = Instant::now();
    let reply = crate::net::admin::client::call(addr, "GET", path, token, Duration::from_secs(60))
        .await
        .with_context(|| format!("GET {path}"))?;
    Ok(Answer {
        status: reply.status,
        body: reply.body,
        took: started.elapsed(),
    })
}

fn admin(world: &World) -> Result<&AdminAccess> {
    world
        .admin
        .as_ref()
        .context("the SP was started without its admin listener")
}

/// Metrics on vs off, in the same run on the same SP and sessions: rounds alternate between
/// a scraper reading `/metrics` every [`SCRAPE_EVERY`] and none, each round one stream's
/// throughput and a batch of session opens. The counters themselves cannot be switched
/// off (a few atomic adds per session, bytes once at its end); the admin listener, with its
/// readiness probe, serves in both.
pub(super) async fn metrics_section(world: &World, o: &Opts, report: &mut Report) -> Result<()> {
    let admin = admin(world)?.clone();
    let session = LoadPath::Session(world.console.clone());
    load::throughput(&session, SOURCE, 1, 8 << 20).await?;
    for _ in 0..10 {
        load::open_once(&session).await?;
    }
    let opens_per_round = (o.opens / o.repeat).max(10);
    let mut gbps: [Vec<f64>; 2] = Default::default();
    let mut opens: [Vec<Duration>; 2] = Default::default();
    let scrapes = Arc::new(AtomicU64::new(0));
    for round in 0..o.repeat {
        // Off first in even rounds, on first in odd ones: neither gets the warmer slot.
        for on in [round % 2 == 1, round % 2 == 0] {
            let stop = CancellationToken::new();
            let scraper = on
                .then(|| tokio::spawn(scrape_until(admin.clone(), stop.clone(), scrapes.clone())));
            let i = usize::from(on);
            gbps[i].push(load::throughput(&session, SOURCE, 1, o.stream_bytes).await?);
            for _ in 0..opens_per_round {
                opens[i].push(load::open_once(&session).await?);
            }
            stop.cancel();
            if let Some(scraper) = scraper {
                scraper.await.context("the scraper")??;
            }
        }
    }
    for times in &mut opens {
        times.sort();
    }
    let [off_gbps, on_gbps] = gbps.clone().map(|mut runs| median(&mut runs));
    report.add(
        "metrics_stream1_gbps",
        &format!(
            "1 stream through a session, /metrics scraped every {} ms",
            SCRAPE_EVERY.as_millis()
        ),
        "Gbit/s",
        on_gbps,
        Some((off_gbps, "not scraped")),
        Some(("≥ 98% (cost ≤ 2%)", Check::RatioAtLeast(0.98))),
    );
    let p50 = |i: usize| load::quantile_ms(&opens[i], 0.5);
    report.add(
        "metrics_open_p50_ms",
        &format!(
            "session open p50, /metrics scraped every {} ms",
            SCRAPE_EVERY.as_millis()
        ),
        "ms",
        p50(1),
        Some((p50(0), "not scraped")),
        Some(("≤ 102% (cost ≤ 2%)", Check::RatioAtMost(1.02))),
    );
    report.note(
        "metrics_ab",
        format!(
            "{} rounds, each 1 stream of {} MiB and {opens_per_round} opens per side; {} scrapes; \
             stream Gbit/s scraped {:?}, not scraped {:?}",
            o.repeat,
            o.stream_bytes >> 20,
            scrapes.load(Ordering::Relaxed),
            gbps[1]
                .iter()
                .map(|g| format!("{g:.2}"))
                .collect::<Vec<_>>(),
            gbps[0]
                .iter()
                .map(|g| format!("{g:.2}"))
                .collect::<Vec<_>>(),
        ),
    );
    Ok(())
}

/// Scrapes `/metrics` every [`SCRAPE_EVERY`] until `stop`, counting the scrapes.
async fn scrape_until(
    admin: AdminAccess,
    stop: CancellationToken,
    scrapes: Arc<AtomicU64>,
) -> Result<()> {
    let mut tick = tokio::time::interval(SCRAPE_EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return Ok(()),
        }
        let answer = http_get(admin.addr, "/metrics", &admin.token).await?;
        if answer.status != 200 {
            bail!("/metrics answered {}", answer.status);
        }
        scrapes.fetch_add(1, Ordering::Relaxed);
    }
}

/// The value of an unlabelled sample in a metrics text.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// `/metrics` with `n` idle tenants (and the bench tenant) online: the slowest of
/// [`SCRAPES`] scrapes and the text's size. Waits first until the SP's gauge counts them
/// (it is read at each registry poll).
pub(super) async fn scrape_figures(world: &World, n: usize, report: &mut Report) -> Result<()> {
    let admin = admin(world)?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = http_get(admin.addr, "/metrics", &admin.token).await?;
        let connected = sample(&answer.body, "rac_sp_tenants_connected").unwrap_or(0.0);
        if connected >= (n + 1) as f64 {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "/metrics counts {connected} tenants connected, not {}",
                n + 1
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut times = Vec::with_capacity(SCRAPES);
    let mut size = 0;
    for _ in 0..SCRAPES {
        let answer = http_get(admin.addr, "/metrics", &admin.token).await?;
        if answer.status != 200 {
            bail!("/metrics answered {}", answer.status);
        }
        size = size.max(answer.body.len());
        times.push(answer.took);
    }
    times.sort();
    report.add(
        "scrape_ms",
        &format!(
            "/metrics scrape, slowest of {SCRAPES} ({} tenants online)",
            n + 1
        ),
        "ms",
        load::quantile_ms(&times, 1.0),
        None,
        Some(("≤ 50 ms", Check::AtMost(50.0))),
    );
    report.note(
        "scrape_p50_ms",
        format!("{:.2}", load::quantile_ms(&times, 0.5)),
    );
    report.add(
        "scrape_kib",
        &format!("/metrics size ({} tenants online)", n + 1),
        "KiB",
        size as f64 / 1024.0,
        None,
        Some(("≤ 64 KiB", Check::AtMost(64.0))),
    );
    Ok(())
}

/// Writes `rows` ended session rows into the audit log of the registry at `path`, before
/// the SP starts: one transaction, ids in time order over [`AUDIT_DAYS`] days up to now,
/// spread over [`AUDIT_TENANTS`] tenants and [`AUDIT_OPERATORS`] operators; 90% closed,
/// 5% failed, 3% without close_notify, 2% ended from outside.
pub fn fill_audit(path: &Path, rows: u64) -> Result<()> {
    let mut conn = rusqlite::Connection::open(path).context("opening the registry")?;
    let tx = conn.transaction()?;
    {
        let mut insert = tx.prepare(
            "INSERT INTO audit (operator, tenant, service, console_addr, started_at, ended_at,
                                bytes_to_tenant, bytes_from_tenant, outcome)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?;
        let now = crate::util::now_unix_secs();
        let first = now - AUDIT_DAYS * 86_400;
        let step = (AUDIT_DAYS * 86_400) as f64 / rows.max(1) as f64;
        for i in 0..rows {
            let started = first + (i as f64 * step) as u64;
            let outcome = match i % 100 {
                0..=89 => "closed",
                90..=94 => "failed: tenant side: connection reset by peer",
                95..=97 => "closed (no close_notify from the console)",
                98 => "ended: operator token revoked",
                _ => "ended: by admin (admin token ops)",
            };
            insert.execute(rusqlite::params![
                format!("op-{:02}", i % AUDIT_OPERATORS),
                format!("idle-{:05}", (i * 7919) % AUDIT_TENANTS),
                if i % 10 == 0 { "rdp" } else { "backup" },
                format!("198.51.100.{}:{}", i % 250, 40_000 + i % 20_000),
                started as i64,
                (started + 60 + i % 3600) as i64,
                (i % 1_000_000) as i64,
                ((i * 31) % 50_000_000) as i64,
                outcome,
            ])?;
        }
    }
    tx.commit().context("writing the audit rows")?;
    Ok(())
}

/// Audit queries through the admin API over the filled log: newest first, a cursor page
/// deep in it, by tenant, by operator, by outcome, by a time window; each `o.opens / 10`
/// times (at least 10), interleaved. p95 over them all is the figure; an outcome that
/// matches no row (the whole table read) is timed apart.
pub(super) async fn audit_section(world: &World, o: &Opts, report: &mut Report) -> Result<()> {
    let admin = admin(world)?;
    let rows = o.audit_rows;
    let newest = http_get(admin.addr, "/v1/audit?limit=1", &admin.token).await?;
    if newest.status != 200 {
        bail!("/v1/audit answered {}: {}", newest.status, newest.body);
    }
    let page: serde_json::Value = serde_json::from_str(&newest.body)?;
    let top = page["entries"][0]["id"]
        .as_i64()
        .context("an audit page without an id")?;
    let now = crate::util::now_unix_secs();
    let day = 86_400;
    let kinds = |i: u64| -> [(&'static str, String); 6] {
        [
            ("newest", "/v1/audit?limit=100".to_string()),
            (
                "cursor",
                format!(
                    "/v1/audit?before={}&limit=100",
                    top - (top / 7) * (1 + (i % 5) as i64)
                ),
            ),
            (
                "tenant",
                format!(
                    "/v1/audit?tenant=idle-{:05}&limit=100",
                    (i * 131) % AUDIT_TENANTS
                ),
            ),
            (
                "operator",
                format!("/v1/audit?operator=op-{:02}&limit=100", i % AUDIT_OPERATORS),
            ),
            ("outcome", "/v1/audit?outcome=failed&limit=100".to_string()),
            (
                "window",
                format!(
                    "/v1/audit?since={}&until={}&limit=100",
                    now - (30 + i % 60) * day,
                    now - (29 + i % 60) * day
                ),
            ),
        ]
    };
    let repeat = (o.opens / 10).max(10) as u64;
    let mut all = Vec::new();
    let mut by_kind: std::collections::BTreeMap<&str, Vec<Duration>> = Default::default();
    for i in 0..repeat {
        for (kind, path) in kinds(i) {
            let answer = http_get(admin.addr, &path, &admin.token).await?;
            if answer.status != 200 {
                bail!("{path} answered {}: {}", answer.status, answer.body);
            }
            all.push(answer.took);
            by_kind.entry(kind).or_default().push(answer.took);
        }
    }
    let mut scans = Vec::new();
    for _ in 0..5 {
        let path = "/v1/audit?outcome=interrupted&limit=100";
        let answer = http_get(admin.addr, path, &admin.token).await?;
        if answer.status != 200 {
            bail!("{path} answered {}: {}", answer.status, answer.body);
        }
        scans.push(answer.took);
    }
    all.sort();
    scans.sort();
    report.add(
        "audit_query_p95_ms",
        &format!("audit query p95 over the admin API, {rows} rows (6 kinds × {repeat})"),
        "ms",
        load::quantile_ms(&all, 0.95),
        None,
        Some(("≤ 200 ms", Check::AtMost(200.0))),
    );
    report.add(
        "audit_full_scan_ms",
        "audit query by an outcome no row has (reads every row), p50 of 5",
        "ms",
        load::quantile_ms(&scans, 0.5),
        None,
        None,
    );
    report.note(
        "audit_p50_p95_ms_by_kind",
        by_kind
            .iter_mut()
            .map(|(kind, times)| {
                times.sort();
                format!(
                    "{kind} {:.1}/{:.1}",
                    load::quantile_ms(times, 0.5),
                    load::quantile_ms(times, 0.95)
                )
            })
            .collect::<Vec<_>>()
            .join(", "),
    );
    Ok(())
}
