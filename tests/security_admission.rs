//! Admission under a flood of silent sockets (docs/SECURITY.md, "Exhaust the SP for others"):
//! a few sources, directly or through a trusted gateway, keep hundreds of idle connections
//! open, re-opening each one as soon as the SP closes it. The handshake table is small here
//! (256 in all, 32 per source) so the flood fills it many times over; an honest console from
//! another address must still open its session within a second, every time.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{PATIENCE, TestSp, eventually, loopback, quick_config, tcp_from};
use rac::net::console::ConsoleClient;
use rac::net::dial::Route;
use rac::net::gateway::{self, GatewayConfig};
use rac::sp::config::SpConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Flooding sources, and idle connections each keeps open.
const SOURCES: u8 = 10;
const PER_SOURCE: usize = 50;
/// What an honest session open may take while the flood is on.
const HONEST_OPEN: Duration = Duration::from_secs(1);

fn small_table() -> SpConfig {
    SpConfig {
        max_pending_handshakes: 256,
        max_pending_per_source: 32,
        ..quick_config()
    }
}

/// Keeps `PER_SOURCE` silent connections open from each of `sources` to `to`: each one, once
/// the far end closes it, is opened again. Returns how many connections were made in all.
fn flood(sources: Vec<IpAddr>, to: SocketAddr, stop: CancellationToken) -> Arc<AtomicUsize> {
    let made = Arc::new(AtomicUsize::new(0));
    for source in sources {
        for _ in 0..PER_SOURCE {
            let (stop, made) = (stop.clone(), made.clone());
            tokio::spawn(async move {
                while !stop.is_cancelled() {
                    let Ok(mut tcp) = tcp_from(source, to).await else {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    };
                    made.fetch_add(1, Ordering::Relaxed);
                    let mut sink = [0u8; 64];
                    tokio::select! {
                        // Silent: read until the far end gives up on us.
                        _ = async { while matches!(tcp.read(&mut sink).await, Ok(n) if n > 0) {} } => {}
                        _ = stop.cancelled() => return,
                    }
                    // A breath before the next one: the test is about whom the SP gives up,
                    // not about whether a busy loop of 500 reconnects can starve two cores.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            });
        }
    }
    made
}

/// Opens and uses a session `rounds` times; the slowest open.
async fn honest_opens(console: &ConsoleClient, rounds: usize) -> Duration {
    let mut slowest = Duration::ZERO;
    for _ in 0..rounds {
        let started = Instant::now();
        let mut session =
            tokio::time::timeout(PATIENCE, console.open_session("acme", "echo", |_, _| {}))
                .await
                .expect("open in time")
                .expect("session opens during the flood");
        slowest = slowest.max(started.elapsed());
        session.stream.write_all(b"ping").await.expect("write");
        let mut buf = [0u8; 4];
        session.stream.read_exact(&mut buf).await.expect("echo");
        assert_eq!(&buf, b"ping");
    }
    slowest
}

/// Waits until the flood has been shed and re-made at least `n` times, so the table has been
/// full and the SP has been choosing whom to give up.
async fn flood_going(made: &AtomicUsize, n: usize) {
    eventually(PATIENCE, "the flood got going", async || {
        (made.load(Ordering::Relaxed) >= n).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_sockets_from_a_few_sources_do_not_delay_an_honest_open() {
    let sp = TestSp::start(small_table()).await;
    let _tenant = sp.online_tenant("acme").await;
    // Logged in before the flood: the login's password check is not what this measures.
    let console = sp.console().await;

    let stop = CancellationToken::new();
    let sources = (0..SOURCES).map(|i| loopback(100 + i)).collect();
    let made = flood(sources, sp.addr, stop.clone());
    // More than the table holds: displacing has begun.
    flood_going(&made, SOURCES as usize * PER_SOURCE + 100).await;

    let slowest = honest_opens(&console, 5).await;
    eprintln!(
        "direct: slowest honest open {slowest:?} under a flood of {} connections",
        made.load(Ordering::Relaxed)
    );
    assert!(
        slowest < HONEST_OPEN,
        "an honest open took {slowest:?} under the flood"
    );
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_sockets_through_a_gateway_are_capped_per_client_not_per_gateway() {
    let sp = TestSp::start(SpConfig {
        // The gateway below reaches the SP from 127.0.0.1.
        trusted_proxies: vec![loopback(1)],
        ..small_table()
    })
    .await;
    let _tenant = sp.online_tenant("acme").await;

    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let gateway_addr = listener.local_addr().expect("addr");
    let gateway_stop = CancellationToken::new();
    tokio::spawn(gateway::run(
        GatewayConfig {
            proxy_protocol: true,
            ..GatewayConfig::new(vec![sp.addr])
        },
        listener,
        gateway_stop.clone(),
    ));

    let mut config = sp.console_config();
    config.route = Route::Direct(gateway_addr.to_string());
    let console = ConsoleClient::new(config).expect("client");
    console
        .login(&sp.password)
        .await
        .expect("login through the gateway");

    let stop = CancellationToken::new();
    let sources = (0..SOURCES).map(|i| loopback(150 + i)).collect();
    let made = flood(sources, gateway_addr, stop.clone());
    flood_going(&made, SOURCES as usize * PER_SOURCE + 100).await;

    let slowest = honest_opens(&console, 5).await;
    eprintln!(
        "through a gateway: slowest honest open {slowest:?} under a flood of {} connections",
        made.load(Ordering::Relaxed)
    );
    assert!(
        slowest < HONEST_OPEN,
        "an honest open through the gateway took {slowest:?} under the flood"
    );
    stop.cancel();
    gateway_stop.cancel();
}
