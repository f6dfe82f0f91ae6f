//! `rac bench`: the relay's speed, cost and scale, each beside the direct loopback figure.
//!
//! The SP (and the cloud gateways) run as their own `rac` processes, so their CPU time and
//! memory are read from `/proc`; the tenant services, one full tenant redirector, thousands
//! of lean idle tenants and the load generators run in this process. `docs/BENCHMARKS.md`
//! describes the method and the results.

mod desktop;
mod load;
mod machine;
mod procs;

pub use procs::open_files_limit;
mod report;
mod swarm;
mod world;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use clap::{Args, ValueEnum};

use crate::net::dial::Route;
use crate::net::tls::{TlsClient, Trust};
use crate::wire::protocol::{ApiResponse, TenantStatus};
use load::Path;
use machine::Machine;
use report::{Check, Report};
use world::{SpSettings, World};

/// Options of `rac bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Print the results as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// A short smoke run: few tenants, small transfers, short idle interval.
    #[arg(long)]
    pub quick: bool,
    /// Idle tenants for the memory, heartbeat, storm and tenant-list figures; each is a socket
    /// in this process and in the SP, so the open-files limit (`ulimit -n`) bounds it
    /// [default: 3000 or what the limit allows, quick: 100].
    #[arg(long)]
    pub tenants: Option<usize>,
    /// `heartbeat_secs` written to the SP's `sp.toml` [default: 30 (the SP default), quick: 1].
    #[arg(long)]
    pub heartbeat_secs: Option<u64>,
    /// Seconds over which the idle tenants' heartbeat CPU is measured [default: 30, quick: 3].
    #[arg(long)]
    pub idle_secs: Option<u64>,
    /// MiB moved per throughput measurement [default: 512, quick: 16].
    #[arg(long)]
    pub stream_mib: Option<u64>,
    /// Throughput measurements per figure, interleaved; the median counts [default: 5, quick: 1].
    #[arg(long)]
    pub repeat: Option<usize>,
    /// Fresh sessions opened per route for the latency figures [default: 500, quick: 20].
    #[arg(long)]
    pub opens: Option<usize>,
    /// Connections held through a gateway for its memory figure (two sockets each in the
    /// gateway) [default: 1000 or what the open-files limit allows, quick: 20].
    #[arg(long)]
    pub gateway_conns: Option<usize>,
    /// Sessions whose console stops reading, for the slow-reader memory figure
    /// [default: 16, quick: 2].
    #[arg(long)]
    pub slow_sessions: Option<usize>,
    /// Run only these sections (comma-separated) [default: all].
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<Section>,
}

/// The parts of the benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Section {
    /// Bulk streams (1 and 8) through a session, direct and via a gateway; SP CPU per GB.
    Throughput,
    /// Session open latency, direct and via a gateway.
    Open,
    /// SP memory per session whose console reads nothing.
    Slow,
    /// Gateway memory per forwarded connection.
    Gateway,
    /// SP memory and heartbeat CPU per idle tenant.
    Idle,
    /// Tenant list fetch time and size with every idle tenant online.
    List,
    /// Time for every tenant to come back after the SP is killed and restarted.
    Storm,
    /// Remote desktops: key-to-pixel latency, a 1080p full-screen stream, and the console's
    /// memory and idle CPU per desktop.
    Desktop,
}

/// The options with their defaults filled in.
#[derive(Debug, Clone)]
struct Opts {
    tenants: usize,
    heartbeat_secs: u64,
    idle_secs: u64,
    stream_bytes: u64,
    repeat: usize,
    opens: usize,
    gateway_conns: usize,
    slow_sessions: usize,
    desktop: desktop::DesktopOpts,
    sections: Vec<Section>,
}

/// Sockets the bench needs besides the idle tenants' and the gateway connections'.
const SPARE_FILES: usize = 256;
/// Default idle tenants and gateway connections, where the open-files limit allows.
const TENANTS: usize = 3000;
const GATEWAY_CONNS: usize = 1000;

impl Opts {
    /// Defaults that would not fit under `open_files` are scaled down to fit; values given
    /// on the command line are kept (and checked before anything starts).
    fn from_args(a: &BenchArgs, open_files: u64) -> Opts {
        let q = a.quick;
        let room = usize::try_from(open_files)
            .unwrap_or(usize::MAX)
            .saturating_sub(SPARE_FILES)
            .max(2);
        Opts {
            tenants: a
                .tenants
                .unwrap_or((if q { 100 } else { TENANTS }).min(room)),
            heartbeat_secs: a.heartbeat_secs.unwrap_or(if q { 1 } else { 30 }).max(1),
            idle_secs: a.idle_secs.unwrap_or(if q { 3 } else { 30 }).max(1),
            stream_bytes: a.stream_mib.unwrap_or(if q { 16 } else { 512 }).max(1) << 20,
            repeat: a.repeat.unwrap_or(if q { 1 } else { 5 }).max(1),
            opens: a.opens.unwrap_or(if q { 20 } else { 500 }).max(2),
            gateway_conns: a
                .gateway_conns
                .unwrap_or((if q { 20 } else { GATEWAY_CONNS }).min(room / 2))
                .max(1),
            slow_sessions: a.slow_sessions.unwrap_or(if q { 2 } else { 16 }).max(1),
            desktop: desktop::DesktopOpts {
                presses: if q { 20 } else { 300 },
                stream_secs: if q { 2 } else { 10 },
                held: 4,
                idle_secs: if q { 3 } else { 10 },
            },
            sections: if a.only.is_empty() {
                Section::value_variants().to_vec()
            } else {
                a.only.clone()
            },
        }
    }

    fn has(&self, s: Section) -> bool {
        self.sections.contains(&s)
    }

    /// Whether a section that needs the idle tenants runs.
    fn swarm_needed(&self) -> bool {
        self.has(Section::Idle) || self.has(Section::List) || self.has(Section::Storm)
    }
}

/// The idle-tenant targets are stated for this many tenants.
const TARGET_TENANTS: usize = 15_000;

pub fn run(args: BenchArgs) -> Result<ExitCode> {
    let open_files = procs::open_files_limit()?;
    let opts = Opts::from_args(&args, open_files);
    // One socket per idle tenant here and in the SP; two per held connection in the gateway.
    if opts.swarm_needed() {
        let n = opts.tenants;
        let needed = (n + SPARE_FILES) as u64;
        procs::check_open_files(needed, open_files, &format!("{n} idle tenants"))?;
    }
    if opts.has(Section::Gateway) {
        let n = opts.gateway_conns;
        let needed = (2 * n + SPARE_FILES) as u64;
        procs::check_open_files(needed, open_files, &format!("{n} gateway connections"))?;
    }
    // Say so when a default was scaled down to fit the open-files limit.
    let mut scaled = Vec::new();
    if !args.quick && opts.swarm_needed() && args.tenants.is_none() && opts.tenants < TENANTS {
        scaled.push(format!("{} idle tenants", opts.tenants));
    }
    if !args.quick
        && opts.has(Section::Gateway)
        && args.gateway_conns.is_none()
        && opts.gateway_conns < GATEWAY_CONNS
    {
        scaled.push(format!("{} gateway connections", opts.gateway_conns));
    }
    if !scaled.is_empty() {
        eprintln!(
            "bench: the open-files limit is {open_files}, so {} by default \
             (`ulimit -n 20000` first for the full run)",
            scaled.join(" and ")
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let report = runtime.block_on(async {
        let stop = crate::signal::shutdown_on_signal();
        tokio::select! {
            report = bench(opts) => report,
            // Dropping the bench stops the SP and gateways it started (see `RacProcess`).
            () = stop.cancelled() => Err(anyhow!("interrupted; the SP and gateways it started are stopped")),
        }
    });
    procs::remove_executable_copy();
    let report = report?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.table());
        for (key, value) in &report.notes {
            println!("  {key}: {value}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn bench(o: Opts) -> Result<Report> {
    let mut report = Report::on(Machine::this());
    report.setting("tenants", o.tenants);
    report.setting("heartbeat_secs", o.heartbeat_secs);
    report.setting("idle_secs", o.idle_secs);
    report.setting("stream_mib", o.stream_bytes >> 20);
    report.setting("repeat", o.repeat);
    report.setting("opens", o.opens);
    report.setting("gateway_conns", o.gateway_conns);
    report.setting("slow_sessions", o.slow_sessions);

    let swarm_needed = o.swarm_needed();
    let idle = if swarm_needed { o.tenants } else { 0 };
    let progress = |what: &str| eprintln!("bench: {what}");
    progress(&format!(
        "setting up the SP with {} tenant accounts",
        idle + 1
    ));
    let mut world = World::start(
        idle,
        &SpSettings {
            heartbeat_secs: o.heartbeat_secs,
        },
    )
    .await?;

    // First in this process, so that no memory freed by other sections hides what the
    // console's desktops take.
    if o.has(Section::Desktop) {
        desktop::desktop_section(&world, &o.desktop, &mut report, progress).await?;
    }
    // First on a fresh SP, so no memory freed by earlier sessions hides what it takes.
    if o.has(Section::Slow) {
        progress("slow readers");
        slow_section(&world, &o, &mut report).await?;
    }
    if o.has(Section::Throughput) || o.has(Section::Open) {
        let gateway = world.spawn_gateway(world.sp_addr, "gateway")?;
        let via_gateway = world
            .console_via(Route::Gateways(vec![gateway.addr.to_string()]))
            .await?;
        if o.has(Section::Throughput) {
            progress("throughput");
            throughput_section(&world, &via_gateway, &gateway, &o, &mut report).await?;
        }
        if o.has(Section::Open) {
            progress("session opens");
            open_section(&world, &via_gateway, &o, &mut report).await?;
        }
    }
    if o.has(Section::Gateway) {
        progress("gateway memory");
        gateway_section(&world, &o, &mut report).await?;
    }
    if swarm_needed {
        swarm_section(&mut world, &o, &mut report, progress).await?;
    }
    world.stop().await;
    Ok(report)
}

async fn throughput_section(
    world: &World,
    via_gateway: &std::sync::Arc<crate::net::console::ConsoleClient>,
    gateway: &procs::RacProcess,
    o: &Opts,
    report: &mut Report,
) -> Result<()> {
    use world::{SOURCE, SOURCE_TCP};
    let direct = Path::Direct(world.source_addr);
    let session = Path::Session(world.console.clone());
    let gw = Path::Session(via_gateway.clone());
    // Direct, the session, the session through the gateway, and the session to the tenant's
    // TCP service (one hop more; 1 stream only).
    let paths = [
        (&direct, SOURCE_TCP),
        (&session, SOURCE),
        (&gw, SOURCE),
        (&session, SOURCE_TCP),
    ];
    // Warm up: TLS tickets, buffers, the gateway's backend choice.
    for (path, service) in paths {
        load::throughput(path, service, 1, 8 << 20).await?;
    }
    // Every run of every figure, interleaved; the median counts (see BENCHMARKS.md: the
    // direct loopback figure is bimodal on this VM, the best of a few runs is an outlier).
    let mut runs: [[Vec<f64>; 4]; 2] = Default::default();
    let (mut sp_cpu, mut sp_bytes, mut own_cpu, mut own_bytes) = (0.0, 0u64, 0.0, 0u64);
    let gw_cpu_before = gateway.cpu_secs()?;
    let mut gw_bytes = 0u64;
    for _ in 0..o.repeat {
        for (si, streams) in [1usize, 8].into_iter().enumerate() {
            for (pi, (path, service)) in paths.into_iter().enumerate() {
                if pi == 3 && streams > 1 {
                    continue;
                }
                let (own0, sp0) = (procs::own_cpu_secs()?, world.sp.cpu_secs()?);
                let gbps = load::throughput(path, service, streams, o.stream_bytes).await?;
                tracing::debug!(streams, path = pi, gbps, "throughput");
                runs[si][pi].push(gbps);
                let (own1, sp1) = (procs::own_cpu_secs()?, world.sp.cpu_secs()?);
                if pi == 0 {
                    own_cpu += own1 - own0;
                    own_bytes += o.stream_bytes;
                } else {
                    sp_cpu += sp1 - sp0;
                    sp_bytes += o.stream_bytes;
                }
                if pi == 2 {
                    gw_bytes += o.stream_bytes;
                }
            }
        }
    }
    let gw_cpu = gateway.cpu_secs()? - gw_cpu_before;
    let twenty = Some(("≥ 20% of direct", Check::RatioAtLeast(0.2)));
    let gw_hop = Some(("≥ 80% of SP alone", Check::RatioAtLeast(0.8)));
    let direct_runs = &runs[0][0];
    report.note(
        "direct_stream1_gbps_runs",
        direct_runs
            .iter()
            .map(|g| format!("{g:.1}"))
            .collect::<Vec<_>>(),
    );
    let [one, eight] = runs.map(|figure| figure.map(|mut r| median(&mut r)));
    report.add(
        "stream1_session_gbps",
        "1 stream, console→SP→tenant (TLS both hops)",
        "Gbit/s",
        one[1],
        Some((one[0], "loopback")),
        twenty,
    );
    report.add(
        "stream8_session_gbps",
        "8 streams, console→SP→tenant",
        "Gbit/s",
        eight[1],
        Some((eight[0], "loopback")),
        None,
    );
    report.add(
        "stream1_gateway_gbps",
        "1 stream, via gateway + SP",
        "Gbit/s",
        one[2],
        Some((one[0], "loopback")),
        twenty,
    );
    report.add(
        "stream8_gateway_gbps",
        "8 streams, via gateway + SP",
        "Gbit/s",
        eight[2],
        Some((eight[0], "loopback")),
        None,
    );
    report.add(
        "stream1_session_tcp_service_gbps",
        "1 stream, console→SP→tenant→its TCP service",
        "Gbit/s",
        one[3],
        Some((one[0], "loopback")),
        None,
    );
    report.add(
        "gateway_hop_stream1",
        "gateway hop, 1 stream",
        "Gbit/s",
        one[2],
        Some((one[1], "SP alone")),
        gw_hop,
    );
    report.add(
        "gateway_hop_stream8",
        "gateway hop, 8 streams",
        "Gbit/s",
        eight[2],
        Some((eight[1], "SP alone")),
        gw_hop,
    );
    let gb = |bytes: u64| bytes as f64 / 1e9;
    report.add(
        "sp_cpu_secs_per_gb",
        "SP CPU per GB relayed",
        "s/GB",
        sp_cpu / gb(sp_bytes),
        Some((own_cpu / gb(own_bytes), "loopback, both ends")),
        None,
    );
    report.note(
        "gateway_cpu_secs_per_gb",
        format!("{:.3}", gw_cpu / gb(gw_bytes)),
    );
    Ok(())
}

/// The median of some measurements (the mean of the middle two for an even count).
fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

async fn open_section(
    world: &World,
    via_gateway: &std::sync::Arc<crate::net::console::ConsoleClient>,
    o: &Opts,
    report: &mut Report,
) -> Result<()> {
    let paths = [
        Path::Direct(world.echo_addr),
        Path::Session(world.console.clone()),
        Path::Session(via_gateway.clone()),
    ];
    for path in &paths {
        for _ in 0..10 {
            load::open_once(path).await?;
        }
    }
    let mut times: [Vec<Duration>; 3] = Default::default();
    for _ in 0..o.opens {
        for (path, times) in paths.iter().zip(times.iter_mut()) {
            times.push(load::open_once(path).await?);
        }
    }
    for t in &mut times {
        t.sort();
    }
    let q = |i: usize, q: f64| load::quantile_ms(&times[i], q);
    let p50 = Some(("≤ 1.5 ms", Check::AtMost(1.5)));
    let p99 = Some(("≤ 4 ms", Check::AtMost(4.0)));
    let direct = "TCP connect + first byte";
    report.add(
        "open_p50_ms",
        "session open p50 (connect→first byte)",
        "ms",
        q(1, 0.5),
        Some((q(0, 0.5), direct)),
        p50,
    );
    report.add(
        "open_p99_ms",
        "session open p99",
        "ms",
        q(1, 0.99),
        Some((q(0, 0.99), direct)),
        p99,
    );
    report.add(
        "open_gateway_p50_ms",
        "session open p50 via gateway",
        "ms",
        q(2, 0.5),
        Some((q(1, 0.5), "SP alone")),
        p50,
    );
    report.add(
        "open_gateway_p99_ms",
        "session open p99 via gateway",
        "ms",
        q(2, 0.99),
        Some((q(1, 0.99), "SP alone")),
        p99,
    );
    Ok(())
}

async fn slow_section(world: &World, o: &Opts, report: &mut Report) -> Result<()> {
    let session = Path::Session(world.console.clone());
    let before = world.sp.rss_kib()?;
    let held = load::slow_readers(&session, o.slow_sessions).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let early = world.sp.rss_kib()?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let late = world.sp.rss_kib()?;
    drop(held);
    let per_session = late.saturating_sub(before) as f64 / o.slow_sessions as f64;
    report.add(
        "slow_reader_kib_per_session",
        "SP memory per session, console not reading",
        "KiB",
        per_session,
        None,
        Some(("≤ 512 KiB, not growing", Check::AtMost(512.0))),
    );
    report.note(
        "slow_reader_growth_kib_1s_to_3s",
        late as i64 - early as i64,
    );
    Ok(())
}

async fn gateway_section(world: &World, o: &Opts, report: &mut Report) -> Result<()> {
    let gateway = world.spawn_gateway(world.echo_addr, "gateway-memory")?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = gateway.rss_kib()?;
    // Interactive connections: one 4 KiB exchange each way (under a full read, so the small
    // buffers stay), then held open.
    let held = load::forwarded_connections(gateway.addr, o.gateway_conns, 4 << 10).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = gateway.rss_kib()?;
    // Streaming ones: 1 MiB each way, measured while their bulk buffers are still held.
    let streamers = (o.gateway_conns / 10).max(1);
    let streamed = load::forwarded_connections(gateway.addr, streamers, 1 << 20).await?;
    let after_streaming = gateway.rss_kib()?;
    drop((held, streamed));
    report.note(
        "gateway_kib_per_streaming_conn",
        format!(
            "{:.1}",
            after_streaming.saturating_sub(after) as f64 / streamers as f64
        ),
    );
    report.add(
        "gateway_kib_per_conn",
        "gateway memory per held connection (4 KiB each way)",
        "KiB",
        after.saturating_sub(before) as f64 / o.gateway_conns as f64,
        None,
        Some(("≤ 51 KiB (1/10 of 512 KB)", Check::AtMost(51.0))),
    );
    Ok(())
}

async fn swarm_section(
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
    let swarm = swarm::Swarm::start(&world.idle_tenants, world.sp_addr, tls, 256);
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
            Some(("< 2%", Check::AtMost(2.0))),
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
/// over a plain loopback connection.
async fn list_figures(world: &World, n: usize, report: &mut Report) -> Result<()> {
    let mut times = Vec::new();
    let mut size = 0;
    for _ in 0..5 {
        let started = Instant::now();
        let tenants = world.console.tenants().await?;
        times.push(started.elapsed());
        size = crate::wire::frame::encode_frame(&ApiResponse::Tenants { tenants })?.len();
    }
    times.sort();
    let direct = plain_transfer_ms(size).await?;
    report.add(
        "list_fetch_ms",
        &format!("tenant list fetch ({} tenants)", n + 1),
        "ms",
        times[times.len() / 2].as_secs_f64() * 1000.0,
        Some((direct, "same bytes, plain TCP")),
        None,
    );
    report.add(
        "list_wire_kib",
        "tenant list size on the wire (JSON frame)",
        "KiB",
        size as f64 / 1024.0,
        None,
        None,
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

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&mut [26.0, 60.0, 25.0]), 26.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&mut []).is_nan());
    }
}
