//! `rac bench --cluster N`: SP nodes sharing a PostgreSQL registry and a NATS bus, each a
//! `rac sp run` process, against a PostgreSQL and a nats-server the bench starts in a temp
//! dir. The bench tenant is held by node 1; a console on node 1 opens it on the same node,
//! a console on node 0 across nodes (node 1 sends `open_data` and forwards the data channel
//! to node 0). The figures: what crossing nodes adds to a session open, and one stream
//! across nodes against one on the same node, measured interleaved in the same run; then
//! `--tenants` lean idle tenants spread over every node (memory and CPU per node), and the
//! last node killed (`kill -9`): how long until its tenants are online on the others.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::Opts;
use super::load::{self, Path};
use super::procs::RacProcess;
use super::report::{Check, Report};
use super::swarm::Swarm;
use super::world::{BENCH_TENANT, ECHO, OPERATOR, SOURCE};
use crate::cluster::testing::NatsServer;
use crate::net::console::ConsoleClient;
use crate::net::dial::Route;
use crate::net::tenant_redirector::{self, AgentState, RedirectorConfig, ServiceTarget};
use crate::net::tls::{TlsClient, Trust};
use crate::sp::config::{ClusterConfig, StateDir};
use crate::sp::registry::Registry;
use crate::sp::registry::local_server::{self, LocalPostgres};

/// The nodes, the database and the bus of one cluster run; everything stops when dropped.
struct Cluster {
    nodes: Vec<RacProcess>,
    /// The shared registry, for adding the idle tenants.
    registry: Registry,
    ca: std::path::PathBuf,
    password: String,
    _nats: NatsServer,
    _postgres: LocalPostgres,
    _dir: tempfile::TempDir,
}

impl Cluster {
    async fn start(nodes: usize, secret_out: &mut String) -> Result<Cluster> {
        if !local_server::available() {
            bail!("the cluster bench needs PostgreSQL's server programs (initdb, postgres)");
        }
        let postgres = LocalPostgres::start().context("starting PostgreSQL")?;
        postgres.create_database("rac")?;
        let nats = NatsServer::start().await.ok_or_else(|| {
            anyhow!("the cluster bench needs nats-server (apt-get install nats-server)")
        })?;
        let dir = tempfile::Builder::new()
            .prefix("rac-bench-cluster-")
            .tempdir()
            .context("making a temporary dir")?;
        let password_file = dir.path().join("pg-password");
        std::fs::write(&password_file, postgres.password())?;
        let config = |node: String| ClusterConfig {
            node,
            postgres_url: postgres.url("rac"),
            postgres_password_file: Some(password_file.clone()),
            postgres_pool: ClusterConfig::DEFAULT_POOL,
            nats_urls: vec![nats.url()],
            nats_token_file: None,
            advertise: None,
            drain_rate: ClusterConfig::DEFAULT_DRAIN_RATE,
            drain_secs: ClusterConfig::DEFAULT_DRAIN_SECS,
        };
        let first = StateDir::new(dir.path().join("sp-0"));
        let init = crate::sp::init_state_dir(&first, OPERATOR, &[], Some(config("sp-0".into())))?;
        let registry = Registry::open_postgres(config("sp-0".into()).postgres_target()?)?;
        *secret_out = registry.add_tenant(BENCH_TENANT, "benchmark sessions")?;
        let mut running = Vec::with_capacity(nodes);
        for i in 0..nodes {
            let state = StateDir::new(dir.path().join(format!("sp-{i}")));
            if i > 0 {
                // What an admin does for a further node: the first node's keys, its own name.
                let copied = std::process::Command::new("cp")
                    .arg("-a")
                    .arg(&first.root)
                    .arg(&state.root)
                    .status()?;
                if !copied.success() {
                    bail!("copying the state dir for node {i}");
                }
                let sp_toml = toml::to_string(&crate::sp::config::SpConfig {
                    cluster: Some(config(format!("sp-{i}"))),
                    ..crate::sp::config::SpConfig::default()
                })?;
                std::fs::write(state.config(), sp_toml)?;
            }
            let args = [
                "sp",
                "run",
                "--state-dir",
                &state.root.display().to_string(),
                "--listen",
                "127.0.0.1:0",
            ]
            .map(String::from);
            running.push(RacProcess::spawn(
                &args,
                &super::procs::extra_env("RAC_BENCH_SP_ENV")?,
                "SP listening on",
                &dir.path().join(format!("sp-{i}.log")),
            )?);
        }
        Ok(Cluster {
            nodes: running,
            registry,
            ca: init.ca_cert,
            password: init.password,
            _nats: nats,
            _postgres: postgres,
            _dir: dir,
        })
    }

    async fn console_on(&self, node: usize) -> Result<Arc<ConsoleClient>> {
        let route = Route::Direct(self.nodes[node].addr.to_string());
        super::world::logged_in_console(route, &self.ca, &self.password).await
    }
}

pub(super) async fn cluster_section(o: &Opts, report: &mut Report) -> Result<()> {
    let nodes = o.cluster_nodes.max(2);
    report.setting("cluster_nodes", nodes);
    let mut secret = String::new();
    let mut cluster = Cluster::start(nodes, &mut secret).await?;

    // The bench tenant, held by node 1, with the echo and source services.
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    let mut services = BTreeMap::new();
    services.insert(
        ECHO.to_string(),
        ServiceTarget::Local(crate::lab::echo_service()),
    );
    services.insert(SOURCE.to_string(), super::world::source_service());
    let config = RedirectorConfig {
        tenant: BENCH_TENANT.into(),
        secret,
        endpoints: vec![cluster.nodes[1].addr.to_string()],
        trust: Trust::CaFile(cluster.ca.clone()),
        server_name: "localhost".into(),
        services,
        ..RedirectorConfig::defaults()
    };
    let (state_tx, mut state_rx) = watch::channel(AgentState::Connecting);
    tokio::spawn(tenant_redirector::run_with_state(
        config,
        shutdown.clone(),
        state_tx,
    ));
    tokio::time::timeout(
        Duration::from_secs(30),
        state_rx.wait_for(|s| matches!(s, AgentState::Online { .. })),
    )
    .await
    .context("the bench tenant did not come online on node 1")??;

    let same = Path::Session(cluster.console_on(1).await?);
    let across = Path::Session(cluster.console_on(0).await?);
    // Node 0 learns from the bus that node 1 holds the tenant.
    let listed = async {
        loop {
            if let Path::Session(console) = &across
                && console.tenants().await.is_ok_and(|list| {
                    list.iter().any(|t| {
                        t.name == BENCH_TENANT
                            && t.status == crate::wire::protocol::TenantStatus::Online
                    })
                })
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), listed)
        .await
        .context("node 0 never listed the tenant node 1 holds")?;

    // Warm up both paths, then interleave.
    for _ in 0..10 {
        load::open_once(&same).await?;
        load::open_once(&across).await?;
    }
    let (mut t_same, mut t_across) = (Vec::new(), Vec::new());
    for _ in 0..o.opens {
        t_same.push(load::open_once(&same).await?);
        t_across.push(load::open_once(&across).await?);
    }
    t_same.sort();
    t_across.sort();
    let (p50_same, p50_across) = (
        load::quantile_ms(&t_same, 0.5),
        load::quantile_ms(&t_across, 0.5),
    );
    report.note(
        "cluster_open_ms",
        format!(
            "same node p50 {p50_same:.2} p99 {:.2}; across nodes p50 {p50_across:.2} p99 {:.2}",
            load::quantile_ms(&t_same, 0.99),
            load::quantile_ms(&t_across, 0.99)
        ),
    );
    report.add(
        "cluster_open_added_p50_ms",
        "session open across nodes, p50 added to the same-node p50",
        "ms",
        p50_across - p50_same,
        Some((p50_same, "same-node p50")),
        Some(("≤ 1 ms", Check::AtMost(1.0))),
    );

    for path in [&same, &across] {
        load::throughput(path, SOURCE, 1, 8 << 20).await?;
    }
    let (mut g_same, mut g_across) = (Vec::new(), Vec::new());
    for _ in 0..o.repeat {
        g_same.push(load::throughput(&same, SOURCE, 1, o.stream_bytes).await?);
        g_across.push(load::throughput(&across, SOURCE, 1, o.stream_bytes).await?);
    }
    let (m_same, m_across) = (
        super::relay::median(&mut g_same),
        super::relay::median(&mut g_across),
    );
    report.add(
        "cluster_stream1_gbps",
        "1 stream across nodes (median)",
        "Gbit/s",
        m_across,
        Some((m_same, "the same stream on one node")),
        Some(("≥ 80% of same-node", Check::RatioAtLeast(0.8))),
    );
    idle_and_failover(&mut cluster, o, report).await
}

/// Lean idle tenants over every node (tenant `i` prefers node `i % nodes`, then the next):
/// each node's memory per tenant it holds and its CPU while they idle; then the last node is
/// killed and its tenants, reconnecting to the next node, are timed until all are online.
async fn idle_and_failover(cluster: &mut Cluster, o: &Opts, report: &mut Report) -> Result<()> {
    let n = o.tenants;
    let nodes = cluster.nodes.len();
    eprintln!("bench: {n} idle tenants over {nodes} nodes");
    let mut idle = Vec::with_capacity(n);
    for i in 0..n {
        let name = format!("idle-{i:05}");
        let secret = cluster.registry.add_tenant(&name, "")?;
        idle.push((name, secret));
    }
    let rss_before = cluster
        .nodes
        .iter()
        .map(RacProcess::rss_kib)
        .collect::<Result<Vec<_>>>()?;
    let tls = TlsClient::new(&Trust::CaFile(cluster.ca.clone()), "localhost")?;
    let addrs: Vec<_> = cluster.nodes.iter().map(|p| p.addr).collect();
    let swarm = Swarm::start(&idle, &addrs, tls, 256);
    let ramp = swarm.wait_online(n, Duration::from_secs(600)).await?;
    report.note(
        "cluster_idle_ramp_secs",
        format!("{:.1}", ramp.as_secs_f64()),
    );
    // Settled: the bus's presence of every tenant reached every node.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let per_node = n.div_ceil(nodes).max(1);
    let mut worst_kib = 0.0f64;
    for (node, before) in cluster.nodes.iter().zip(&rss_before) {
        let grown = node.rss_kib()?.saturating_sub(*before) as f64;
        worst_kib = worst_kib.max(grown / per_node as f64);
    }
    report.add(
        "cluster_idle_kib_per_tenant",
        &format!("node memory per tenant it holds ({per_node} each, the cluster's presence of all {n} included; worst node)"),
        "KiB",
        worst_kib,
        None,
        Some(("≤ 8 KiB", Check::AtMost(8.0))),
    );
    // Over `--idle-secs` (one heartbeat interval by default, so every tenant pings once),
    // in three windows: the figure is the worst node's average over the whole interval; the
    // windows (a note) show how the pings fall: in a burst, as the tenants came in one.
    let window = Duration::from_secs(o.idle_secs).div_f64(3.0);
    let cpu = |c: &Cluster| {
        c.nodes
            .iter()
            .map(RacProcess::cpu_secs)
            .collect::<Result<Vec<_>>>()
    };
    let start = cpu(cluster)?;
    let mut before = start.clone();
    let mut windows = Vec::new();
    for _ in 0..3 {
        tokio::time::sleep(window).await;
        let after = cpu(cluster)?;
        let pcts: Vec<String> = after
            .iter()
            .zip(&before)
            .map(|(a, b)| format!("{:.2}", (a - b) / window.as_secs_f64() * 100.0))
            .collect();
        windows.push(pcts.join("/"));
        before = after;
    }
    report.note(
        "cluster_idle_cpu_pct_by_window_and_node",
        windows.join(", "),
    );
    let worst_pct = before
        .iter()
        .zip(&start)
        .map(|(end, begin)| (end - begin) / (window.as_secs_f64() * 3.0) * 100.0)
        .fold(0.0f64, f64::max);
    report.add(
        "cluster_idle_cpu_pct",
        "a node's CPU with its tenants idle over --idle-secs: heartbeats, the bus, the registry poll (worst node)",
        "% of a core",
        worst_pct,
        None,
        Some(("≤ 2%", Check::AtMost(2.0))),
    );

    let victim = nodes - 1;
    let held = (0..n).filter(|i| i % nodes == victim).count();
    let killed = std::time::Instant::now();
    cluster.nodes[victim].kill()?;
    // Until the tenants notice, then until every one is back on another node.
    let noticed = async {
        while swarm.online() >= n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), noticed)
        .await
        .context("no tenant noticed the killed node")?;
    swarm.wait_online(n, Duration::from_secs(120)).await?;
    let moved = killed.elapsed().as_secs_f64();
    report.add(
        "cluster_failover_secs",
        &format!("node holding {held} tenants killed (-9): all online on the others"),
        "s",
        moved,
        None,
        Some(("≤ 15 s", Check::AtMost(15.0))),
    );
    swarm.stop().await;
    Ok(())
}
