//! The cloud gateway under abuse, over real TCP on loopback (every socket on port 0): silent
//! connections are capped per source and cut at a first-data deadline, a backend that ends
//! first takes the client side with it, and a client cannot smuggle a PROXY header of its own.
//! `docs/SECURITY.md` ("Gateway, logs and tenant strings") names these tests.
//!
//! Timeouts here are hang guards only; no test measures speed.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::gateway::{
    TestBackend, TestGateway, assert_closed, assert_echo, bind, guard, spawn_backend,
};
use common::{PATIENCE, eventually, loopback, tcp_from};
use rac::net::gateway::GatewayConfig;
use rac::net::proxy_protocol::{self, read_proxy_header};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// Test settings: the limits under test are set by each test; the others stay out of the way.
fn config(backend: SocketAddr) -> GatewayConfig {
    GatewayConfig {
        health_interval: Duration::from_millis(50),
        connect_timeout: Duration::from_secs(5),
        idle_timeout: PATIENCE * 4,
        first_data_timeout: PATIENCE * 4,
        drain_timeout: Duration::from_millis(100),
        ..GatewayConfig::new(vec![backend])
    }
}

/// Echoes until EOF, as a client-speaks-first server (the SP) would answer.
async fn echo_backend() -> TestBackend {
    spawn_backend(bind().await, |mut stream| async move {
        let (mut rd, mut wr) = stream.split();
        let _ = tokio::io::copy(&mut rd, &mut wr).await;
    })
}

#[test]
fn the_defaults_are_the_documented_ones() {
    let config = GatewayConfig::new(vec!["127.0.0.1:6180".parse().expect("address")]);
    assert_eq!(config.first_data_timeout, Duration::from_secs(3));
    assert_eq!(config.max_silent_per_source, 32);
    assert_eq!(config.idle_timeout, Duration::from_secs(600));
}

/// One source opening more silent connections than its cap closes its own oldest ones;
/// another source's silent connections, and the newest ones, are untouched and forward.
#[tokio::test]
async fn silent_connections_over_the_per_source_cap_close_that_sources_oldest() {
    const CAP: usize = 4;
    const FLOOD: usize = 24;
    let backend = echo_backend().await;
    let gw = TestGateway::start(GatewayConfig {
        max_silent_per_source: CAP,
        ..config(backend.addr)
    })
    .await;
    let stats = gw.stats.clone();

    // Another source, at its cap but not over it.
    let mut others = Vec::new();
    for _ in 0..CAP {
        others.push(tcp_from(loopback(2), gw.addr).await.expect("connect"));
    }
    eventually(
        PATIENCE,
        "the other source's connections are counted",
        async || (stats.active() == CAP).then_some(()),
    )
    .await;

    // The flood, one connection at a time so that "oldest" is well defined.
    let mut flood = Vec::new();
    for i in 1..=FLOOD {
        flood.push(tcp_from(loopback(1), gw.addr).await.expect("connect"));
        let evicted = i.saturating_sub(CAP) as u64;
        eventually(
            PATIENCE,
            "the gateway counted the new connection",
            async || {
                (stats.silent_evicted() == evicted && stats.active() == CAP + i.min(CAP))
                    .then_some(())
            },
        )
        .await;
    }

    for (i, stream) in flood[..FLOOD - CAP].iter_mut().enumerate() {
        assert_closed(stream, &format!("flood connection {i} closed")).await;
    }
    for stream in &mut flood[FLOOD - CAP..] {
        assert_echo(stream, b"newest silent connections still forward").await;
    }
    for stream in &mut others {
        assert_echo(stream, b"the other source is untouched").await;
    }
    assert_eq!(stats.silent_evicted(), (FLOOD - CAP) as u64);
    assert_eq!(stats.first_data_timeouts(), 0);
}

/// A client that sends nothing is closed at the first-data deadline; one that spoke at once
/// keeps forwarding after it.
#[tokio::test]
async fn a_client_that_sends_nothing_is_closed_at_the_first_data_deadline() {
    let backend = echo_backend().await;
    let gw = TestGateway::start(GatewayConfig {
        first_data_timeout: Duration::from_millis(300),
        ..config(backend.addr)
    })
    .await;

    let mut talker = TcpStream::connect(gw.addr).await.expect("connect");
    assert_echo(&mut talker, b"hello at once").await;
    let mut silent = TcpStream::connect(gw.addr).await.expect("connect");
    assert_closed(&mut silent, "silent client closed").await;
    assert_eq!(gw.stats.first_data_timeouts(), 1);
    // Well past the deadline now: the talker is not affected by it.
    assert_echo(&mut talker, b"still forwarding").await;
}

/// The SP ends a connection (its handshake timeout, a refusal) before the client said
/// anything: the gateway closes both sides at once, leaving no socket of its own half open
/// (in CLOSE-WAIT) until the client speaks or the idle timeout.
#[tokio::test]
async fn a_backend_that_ends_before_client_data_closes_both_sides_at_once() {
    // Half-closes at once, then keeps its side open until the gateway closes the other.
    let half_closing = spawn_backend(bind().await, |mut stream| async move {
        let _ = stream.shutdown().await;
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest).await;
    });
    // Drops the connection outright.
    let dropping = spawn_backend(bind().await, |stream| async move { drop(stream) });
    for backend in [&half_closing, &dropping] {
        let gw = TestGateway::start(config(backend.addr)).await;
        let mut client = TcpStream::connect(gw.addr).await.expect("connect");
        assert_closed(&mut client, "client side closed").await;
        // The connection's task ends, and with it the gateway's socket to the backend,
        // although the client never sent a byte or closed its side.
        eventually(PATIENCE, "both sides closed", async || {
            (gw.stats.backend_ended_first() == 1 && gw.stats.active() == 0).then_some(())
        })
        .await;
    }
}

/// What the backend behind a PROXY-protocol gateway received on one connection: the
/// gateway's header and every byte after it.
type Received = (Option<SocketAddr>, Vec<u8>);

/// What the backend received from the client at `client` (by the gateway's header).
async fn received_by(client: SocketAddr, rx: &mut mpsc::UnboundedReceiver<Received>) -> Vec<u8> {
    guard("backend report", async {
        loop {
            let (source, rest) = rx.recv().await.expect("backend reports");
            if source == Some(client) {
                return rest;
            }
        }
    })
    .await
}

/// A client stream that begins with a PROXY header of its own (v2 or v1, whole or split over
/// two writes) is closed before a byte of it reaches the SP; streams that merely begin like
/// one pass intact.
#[tokio::test]
async fn client_streams_that_begin_with_a_proxy_header_are_refused() {
    let (got_tx, mut got_rx) = mpsc::unbounded_channel::<Received>();
    let backend = spawn_backend(bind().await, move |mut stream| {
        let tx = got_tx.clone();
        async move {
            // Health probes send no header: ignored.
            if let Ok(Some(header)) = read_proxy_header(&mut stream, PATIENCE).await {
                let mut rest = Vec::new();
                let _ = stream.read_to_end(&mut rest).await;
                let _ = tx.send((header.source, rest));
            }
        }
    });
    let gw = TestGateway::start(GatewayConfig {
        proxy_protocol: true,
        ..config(backend.addr)
    })
    .await;
    let forged: SocketAddr = "203.0.113.9:4444".parse().expect("address");
    let mut v2 = proxy_protocol::encode_v2(forged, gw.addr);
    v2.extend_from_slice(b"\x16\x03\x01 then a ClientHello");
    let v1 = b"PROXY TCP4 203.0.113.9 127.0.0.1 4444 6180\r\n\x16\x03\x01".to_vec();
    let refused: [(&str, Vec<u8>, usize); 3] = [
        ("v2 header", v2.clone(), v2.len()),
        ("v1 header", v1.clone(), v1.len()),
        ("v2 header over two writes", v2.clone(), 5),
    ];
    for (i, (name, bytes, first_write)) in refused.into_iter().enumerate() {
        let mut client = TcpStream::connect(gw.addr).await.expect("connect");
        client.set_nodelay(true).expect("nodelay");
        let me = client.local_addr().expect("address");
        client
            .write_all(&bytes[..first_write])
            .await
            .expect("write");
        // The second write may meet a closed connection: that is the point.
        let _ = client.write_all(&bytes[first_write..]).await;
        assert_closed(&mut client, name).await;
        let rest = received_by(me, &mut got_rx).await;
        assert!(rest.is_empty(), "{name}: the SP received {rest:?}");
        assert_eq!(gw.stats.proxy_header_refused(), i as u64 + 1, "{name}");
    }

    // Streams that only start like a header pass untouched, the bytes held back included.
    for bytes in [
        &b"\r\n\r\nnot a header"[..],
        b"PROXYish",
        b"\x16\x03\x01 hello",
    ] {
        let mut client = TcpStream::connect(gw.addr).await.expect("connect");
        let me = client.local_addr().expect("address");
        client.write_all(bytes).await.expect("write");
        client.shutdown().await.expect("half-close");
        assert_eq!(received_by(me, &mut got_rx).await, bytes);
    }
    assert_eq!(gw.stats.proxy_header_refused(), 3);
}

/// The rule is the gateway's, with or without `--proxy-protocol`: a gateway that adds no
/// header must not pass a client's header on to an SP that trusts the gateway's address.
#[tokio::test]
async fn a_gateway_without_proxy_protocol_refuses_client_headers_too() {
    let backend = echo_backend().await;
    let gw = TestGateway::start(config(backend.addr)).await;
    let forged: SocketAddr = "203.0.113.9:4444".parse().expect("address");
    let mut client = TcpStream::connect(gw.addr).await.expect("connect");
    client
        .write_all(&proxy_protocol::encode_v2(forged, gw.addr))
        .await
        .expect("write");
    // An echo would hand the header back: the connection closes with nothing read.
    let mut got = Vec::new();
    let _ = guard("closed", client.read_to_end(&mut got)).await;
    assert!(got.is_empty(), "the header was forwarded: {got:?}");
    assert_eq!(gw.stats.proxy_header_refused(), 1);
}

/// `rac gateway --help` states the limits and the PROXY rule.
#[test]
fn gateway_help_documents_the_limits_and_the_proxy_rule() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rac"))
        .args(["gateway", "--help"])
        .output()
        .expect("run rac gateway --help");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "--first-data-timeout-secs",
        "--max-silent-per-source",
        "[default: 32]",
        "[default: 3]",
        "PROXY",
        "forge",
    ] {
        assert!(help.contains(needle), "help lacks {needle:?}:\n{help}");
    }
}
