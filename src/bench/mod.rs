//! `rac bench`: the relay's speed, cost and scale, each beside the direct loopback figure.
//!
//! The SP (and the cloud gateways) run as their own `rac` processes, so their CPU time and
//! memory are read from `/proc`; the tenant services, one full tenant redirector, thousands
//! of lean idle tenants and the load generators run in this process. `docs/BENCHMARKS.md`
//! describes the method and the results.
//!
//! This file holds the options and runs the sections in order; `relay.rs` measures bytes
//! through the relay, `tenants.rs` the idle tenants at scale, `admin.rs` the admin
//! listener (metrics' cost, a scrape at scale, audit queries).

mod admin;
mod cluster;
mod desktop;
mod load;
mod machine;
mod procs;
mod relay;
mod report;
mod swarm;
mod tenants;
mod world;

pub use procs::open_files_limit;

use std::process::ExitCode;

use anyhow::{Context, Result, anyhow};
use clap::{Args, ValueEnum};

use crate::net::dial::Route;
use machine::Machine;
use relay::{gateway_section, open_section, slow_section, throughput_section};
use report::Report;
use tenants::swarm_section;
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
    /// Session rows written to the audit log before the SP starts, for the audit figure
    /// [default: 1000000, quick: 10000].
    #[arg(long)]
    pub audit_rows: Option<u64>,
    /// Also run the cluster section with this many SP nodes (at least 2) on a PostgreSQL and
    /// a nats-server the bench starts: session opens and one stream across nodes beside the
    /// same on one node. Needs PostgreSQL's server programs and nats-server installed.
    #[arg(long, value_name = "NODES")]
    pub cluster: Option<usize>,
    /// Run only these sections (comma-separated) [default: all but `cluster`].
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
    /// What metrics cost: 1 stream's throughput and the session-open p50 with `/metrics`
    /// scraped every 100 ms vs not, interleaved.
    Metrics,
    /// A `/metrics` scrape (time and size) with every idle tenant online.
    Scrape,
    /// Audit queries over the admin API with `--audit-rows` rows in the registry.
    Audit,
    /// Several SP nodes (`--cluster N`, 3 by default): opens and a stream across nodes,
    /// `--tenants` idle tenants over the nodes, and a node killed with its tenants.
    Cluster,
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
    audit_rows: u64,
    desktop: desktop::DesktopOpts,
    sections: Vec<Section>,
    cluster_nodes: usize,
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
            audit_rows: a
                .audit_rows
                .unwrap_or(if q { 10_000 } else { 1_000_000 })
                .max(1),
            desktop: desktop::DesktopOpts {
                presses: if q { 20 } else { 300 },
                stream_secs: if q { 2 } else { 4 },
                rounds: if q { 1 } else { 5 },
                held: 4,
                idle_secs: if q { 3 } else { 10 },
            },
            sections: {
                let mut sections = if a.only.is_empty() {
                    Section::value_variants()
                        .iter()
                        .copied()
                        .filter(|s| *s != Section::Cluster)
                        .collect()
                } else {
                    a.only.clone()
                };
                if a.cluster.is_some() && !sections.contains(&Section::Cluster) {
                    sections.push(Section::Cluster);
                }
                sections
            },
            cluster_nodes: a.cluster.unwrap_or(3),
        }
    }

    fn has(&self, s: Section) -> bool {
        self.sections.contains(&s)
    }

    /// Whether a section that needs the idle tenants runs.
    fn swarm_needed(&self) -> bool {
        self.has(Section::Idle)
            || self.has(Section::List)
            || self.has(Section::Storm)
            || self.has(Section::Scrape)
    }

    /// Whether the SP serves its admin listener (only for the sections that use it: its
    /// readiness probe is a little work of its own).
    fn admin_needed(&self) -> bool {
        self.has(Section::Metrics) || self.has(Section::Scrape) || self.has(Section::Audit)
    }
}

pub fn run(args: BenchArgs) -> Result<ExitCode> {
    let open_files = procs::open_files_limit()?;
    let opts = Opts::from_args(&args, open_files);
    // One socket per idle tenant here and in the SP; two per held connection in the gateway.
    if opts.swarm_needed() || opts.has(Section::Cluster) {
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
    if !args.quick
        && (opts.swarm_needed() || opts.has(Section::Cluster))
        && args.tenants.is_none()
        && opts.tenants < TENANTS
    {
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
    if o.has(Section::Audit) {
        report.setting("audit_rows", o.audit_rows);
    }

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
            admin: o.admin_needed(),
            audit_rows: if o.has(Section::Audit) {
                o.audit_rows
            } else {
                0
            },
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
    if o.has(Section::Metrics) {
        progress("metrics on vs off");
        admin::metrics_section(&world, &o, &mut report).await?;
    }
    if o.has(Section::Audit) {
        progress("audit queries");
        admin::audit_section(&world, &o, &mut report).await?;
    }
    if swarm_needed {
        swarm_section(&mut world, &o, &mut report, progress).await?;
    }
    if o.has(Section::Cluster) {
        progress(&format!(
            "{} SP nodes on PostgreSQL and NATS",
            o.cluster_nodes.max(2)
        ));
        cluster::cluster_section(&o, &mut report).await?;
    }
    world.stop().await;
    Ok(report)
}
