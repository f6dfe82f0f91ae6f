//! The cloud gateway end to end: real TCP on loopback, every socket on port 0.
//!
//! Timeouts here are hang guards only; no test measures speed.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::gateway::{
    TestBackend, TestGateway, assert_closed, assert_echo, bind, guard, spawn_backend,
};
use common::{PATIENCE, eventually};
use rac::net::gateway::GatewayConfig;
use rac::net::proxy_protocol::{self, ProxyError, ProxyHeader, SIGNATURE, read_proxy_header};
use rand::RngCore;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

fn random_bytes(len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    rand::rng().fill_bytes(&mut bytes);
    bytes
}

/// Test settings: fast health checks, no idle, first-data or drain limit getting in the way
/// (several tests here let the backend speak first).
fn config(backends: Vec<SocketAddr>) -> GatewayConfig {
    GatewayConfig {
        health_interval: Duration::from_millis(50),
        connect_timeout: Duration::from_secs(5),
        idle_timeout: PATIENCE * 4,
        first_data_timeout: PATIENCE * 4,
        drain_timeout: PATIENCE * 4,
        ..GatewayConfig::new(backends)
    }
}

/// Sends `tag` first, then echoes until EOF and half-closes.
async fn tagged_echo(mut stream: TcpStream, tag: u8) {
    if stream.write_all(&[tag]).await.is_err() {
        return;
    }
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if stream.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    }
    let _ = stream.shutdown().await;
}

async fn tagged_backend(tag: u8) -> TestBackend {
    spawn_backend(bind().await, move |s| tagged_echo(s, tag))
}

/// Connects through the gateway and reads the backend's tag; `None` if the gateway closed the
/// connection instead.
async fn connect_tagged(gateway: SocketAddr) -> (TcpStream, Option<u8>) {
    let mut stream = guard("connect", TcpStream::connect(gateway))
        .await
        .expect("connect to the gateway");
    let mut tag = [0u8; 1];
    let got = match guard("read tag", stream.read(&mut tag)).await {
        Ok(1) => Some(tag[0]),
        _ => None,
    };
    (stream, got)
}

#[tokio::test]
async fn forwards_megabytes_intact_both_ways() {
    const LEN: usize = 4 * 1024 * 1024;
    let to_backend = random_bytes(LEN);
    let to_client = random_bytes(LEN + 12_345);
    let (got_tx, mut got_rx) = mpsc::unbounded_channel();
    let backend_sends = Arc::new(to_client.clone());
    let backend = spawn_backend(bind().await, move |mut stream| {
        let reply = backend_sends.clone();
        let tx = got_tx.clone();
        async move {
            let (mut rd, mut wr) = stream.split();
            let read = async {
                let mut got = Vec::new();
                let _ = rd.read_to_end(&mut got).await;
                got
            };
            let write = async {
                // Health-check probes hang up at once; their write errors do not matter.
                let _ = wr.write_all(&reply).await;
                let _ = wr.shutdown().await;
            };
            let (got, ()) = tokio::join!(read, write);
            if !got.is_empty() {
                let _ = tx.send(got);
            }
        }
    });
    let gw = TestGateway::start(config(vec![backend.addr])).await;

    let mut client = TcpStream::connect(gw.addr).await.expect("connect");
    let (mut rd, mut wr) = client.split();
    let write = async {
        wr.write_all(&to_backend).await.expect("client writes");
        wr.shutdown().await.expect("client half-closes");
    };
    let read = async {
        let mut got = Vec::new();
        rd.read_to_end(&mut got).await.expect("client reads");
        got
    };
    let ((), client_got) = guard("transfer", async { tokio::join!(write, read) }).await;
    let backend_got = guard("backend result", got_rx.recv())
        .await
        .expect("backend reports");

    assert_eq!(client_got.len(), to_client.len());
    assert_eq!(Sha256::digest(&client_got), Sha256::digest(&to_client));
    assert_eq!(backend_got.len(), to_backend.len());
    assert_eq!(Sha256::digest(&backend_got), Sha256::digest(&to_backend));
}

#[tokio::test]
async fn client_half_close_reaches_backend_and_reply_still_flows() {
    let backend = spawn_backend(bind().await, |mut stream| async move {
        let mut request = Vec::new();
        if stream.read_to_end(&mut request).await.is_err() || request.is_empty() {
            return;
        }
        // Only after the client's EOF: answer, then close our side.
        let reply = format!(
            "got {} bytes: {}",
            request.len(),
            String::from_utf8_lossy(&request)
        );
        let _ = stream.write_all(reply.as_bytes()).await;
        let _ = stream.shutdown().await;
    });
    let gw = TestGateway::start(config(vec![backend.addr])).await;

    let mut client = TcpStream::connect(gw.addr).await.expect("connect");
    client.write_all(b"hello").await.expect("write");
    client.shutdown().await.expect("half-close");
    let mut reply = String::new();
    guard("reply after half-close", client.read_to_string(&mut reply))
        .await
        .expect("read reply");
    assert_eq!(reply, "got 5 bytes: hello");
}

#[tokio::test]
async fn backend_half_close_reaches_client_and_requests_still_flow() {
    let (got_tx, mut got_rx) = mpsc::unbounded_channel();
    let backend = spawn_backend(bind().await, move |mut stream| {
        let tx = got_tx.clone();
        async move {
            // The client speaks first (as every client of the SP does): a backend that ends
            // before the client said anything has both sides closed by the gateway.
            let mut hello = [0u8; 5];
            if stream.read_exact(&mut hello).await.is_err() {
                return;
            }
            let _ = stream.write_all(b"greeting").await;
            let _ = stream.shutdown().await;
            let mut request = Vec::new();
            let _ = stream.read_to_end(&mut request).await;
            if !request.is_empty() {
                let _ = tx.send(request);
            }
        }
    });
    let gw = TestGateway::start(config(vec![backend.addr])).await;

    let mut client = TcpStream::connect(gw.addr).await.expect("connect");
    client.write_all(b"hello").await.expect("write hello");
    let mut greeting = Vec::new();
    guard("EOF from backend", client.read_to_end(&mut greeting))
        .await
        .expect("read greeting");
    assert_eq!(greeting, b"greeting");
    // The backend has closed its sending side; ours is still open.
    client.write_all(b"still flowing").await.expect("write");
    client.shutdown().await.expect("half-close");
    let got = guard("backend receives", got_rx.recv())
        .await
        .expect("backend reports");
    assert_eq!(got, b"still flowing");
}

#[tokio::test]
async fn dead_backend_is_skipped_and_used_again_once_back() {
    let first = tagged_backend(1).await;
    let second = tagged_backend(2).await;
    let first_addr = first.addr;
    let gw = TestGateway::start(config(vec![first.addr, second.addr])).await;

    // Both are used while both are up.
    let mut seen = [false; 3];
    guard("both backends used", async {
        while !(seen[1] && seen[2]) {
            let (_stream, tag) = connect_tagged(gw.addr).await;
            seen[usize::from(tag.expect("forwarded"))] = true;
        }
    })
    .await;

    drop(first);
    for _ in 0..10 {
        let (mut stream, tag) = connect_tagged(gw.addr).await;
        assert_eq!(tag, Some(2), "a new connection went to the dead backend");
        assert_echo(&mut stream, b"via the live backend").await;
    }
    assert_eq!(gw.stats.no_backend(), 0);

    // The first backend comes back on its old address.
    let listener = eventually(PATIENCE, "rebind the first backend", async || {
        TcpListener::bind(first_addr).await.ok()
    })
    .await;
    let _first = spawn_backend(listener, |s| tagged_echo(s, 1));
    eventually(PATIENCE, "the first backend is used again", async || {
        let (_stream, tag) = connect_tagged(gw.addr).await;
        (tag == Some(1)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn client_is_closed_when_no_backend_is_up() {
    let backend = tagged_backend(1).await;
    let addr = backend.addr;
    drop(backend);
    let gw = TestGateway::start(config(vec![addr])).await;
    let (mut stream, tag) = connect_tagged(gw.addr).await;
    assert_eq!(tag, None);
    assert_closed(&mut stream, "client closed").await;
    assert!(gw.stats.no_backend() >= 1);
}

#[tokio::test]
async fn proxy_header_carries_the_real_client_address() {
    let (header_tx, mut header_rx) = mpsc::unbounded_channel();
    let backend = spawn_backend(bind().await, move |mut stream| {
        let tx = header_tx.clone();
        async move {
            // Health-check probes send nothing and close: Ok(None).
            if let Ok(Some(header)) = read_proxy_header(&mut stream, PATIENCE).await {
                let _ = tx.send(header);
                tagged_echo(stream, 7).await;
            }
        }
    });
    let gw = TestGateway::start(GatewayConfig {
        proxy_protocol: true,
        ..config(vec![backend.addr])
    })
    .await;

    let (mut client, tag) = connect_tagged(gw.addr).await;
    assert_eq!(tag, Some(7));
    let header = guard("header", header_rx.recv())
        .await
        .expect("backend saw a header");
    assert_eq!(
        header,
        ProxyHeader {
            source: Some(client.local_addr().expect("client address")),
            destination: Some(gw.addr),
        }
    );
    // What follows the header is the client's stream, untouched.
    assert_echo(&mut client, b"\x16\x03\x01 after the header").await;
}

/// Whether a refusal is the one a malformed-header case expects.
type IsExpected = fn(&ProxyError) -> bool;

/// What the SP-side code made of one connection.
#[derive(Debug)]
enum Outcome {
    Header(ProxyHeader),
    Plain,
    Refused(ProxyError),
}

/// Listener-side code as the SP runs it: read an optional PROXY header, refuse bad ones, then
/// echo. Reports each connection's outcome with its peer address.
fn sp_like_backend(
    listener: TcpListener,
    header_timeout: Duration,
) -> (TestBackend, mpsc::UnboundedReceiver<(SocketAddr, Outcome)>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let backend = spawn_backend(listener, move |mut stream| {
        let tx = tx.clone();
        async move {
            let peer = stream.peer_addr().expect("peer address");
            let outcome = match read_proxy_header(&mut stream, header_timeout).await {
                Ok(Some(header)) => Outcome::Header(header),
                Ok(None) => Outcome::Plain,
                Err(e) => Outcome::Refused(e),
            };
            let refused = matches!(outcome, Outcome::Refused(_));
            let _ = tx.send((peer, outcome));
            if !refused {
                tagged_echo(stream, 9).await;
            }
        }
    });
    (backend, rx)
}

async fn outcome_for(
    rx: &mut mpsc::UnboundedReceiver<(SocketAddr, Outcome)>,
    peer: SocketAddr,
) -> Outcome {
    guard("outcome", async {
        loop {
            let (from, outcome) = rx.recv().await.expect("backend reports");
            if from == peer {
                return outcome;
            }
        }
    })
    .await
}

#[tokio::test]
async fn malformed_proxy_headers_are_refused_without_harming_others() {
    let header_timeout = Duration::from_secs(2);
    let (backend, mut outcomes) = sp_like_backend(bind().await, header_timeout);
    let gw = TestGateway::start(GatewayConfig {
        proxy_protocol: true,
        ..config(vec![backend.addr])
    })
    .await;

    // A good connection through the gateway, kept open throughout.
    let (mut good, tag) = connect_tagged(gw.addr).await;
    assert_eq!(tag, Some(9));
    assert_echo(&mut good, b"before").await;
    let good_addr = good.local_addr().expect("address");
    guard("the good connection's header", async {
        loop {
            let (_, outcome) = outcomes.recv().await.expect("backend reports");
            if let Outcome::Header(header) = outcome {
                assert_eq!(header.source, Some(good_addr));
                break;
            }
        }
    })
    .await;

    let with_fixed = |ver_cmd: u8, fam: u8, len: u16, rest: &[u8]| {
        let mut bytes = SIGNATURE.to_vec();
        bytes.extend_from_slice(&[ver_cmd, fam]);
        bytes.extend_from_slice(&len.to_be_bytes());
        bytes.extend_from_slice(rest);
        bytes
    };
    let mut garbage_after_signature = SIGNATURE.to_vec();
    garbage_after_signature.extend_from_slice(b"GET / HTTP/1.1\r\n");
    let cases: Vec<(&str, Vec<u8>, IsExpected)> = vec![
        (
            "garbage after the signature",
            garbage_after_signature,
            |e| matches!(e, ProxyError::BadVersion(_)),
        ),
        ("bad command", with_fixed(0x2F, 0x11, 12, &[0; 12]), |e| {
            matches!(e, ProxyError::BadCommand(0xF))
        }),
        (
            "too long",
            with_fixed(0x21, 0x11, u16::MAX, &[0; 64]),
            |e| matches!(e, ProxyError::LengthTooLarge { .. }),
        ),
        (
            "short address block",
            with_fixed(0x21, 0x21, 12, &[0; 12]),
            |e| matches!(e, ProxyError::AddressBlockTooShort { len: 12, need: 36 }),
        ),
        (
            "stalls inside the signature",
            SIGNATURE[..5].to_vec(),
            |e| matches!(e, ProxyError::Timeout),
        ),
        (
            "stalls inside the header",
            with_fixed(0x21, 0x11, 12, &[0; 4]),
            |e| matches!(e, ProxyError::Timeout),
        ),
    ];
    for (name, bytes, expected) in cases {
        let mut bad = TcpStream::connect(backend.addr).await.expect("connect");
        bad.write_all(&bytes).await.expect("send malformed header");
        let peer = bad.local_addr().expect("address");
        match outcome_for(&mut outcomes, peer).await {
            Outcome::Refused(e) => assert!(expected(&e), "{name}: refused with {e}"),
            other => panic!("{name}: not refused: {other:?}"),
        }
        assert_closed(&mut bad, name).await;
        // The good connection is unharmed.
        assert_echo(&mut good, name.as_bytes()).await;
    }

    // No header at all (a direct TLS client): nothing is consumed.
    let mut plain = TcpStream::connect(backend.addr).await.expect("connect");
    plain
        .write_all(b"\x16\x03\x01 client hello")
        .await
        .expect("write");
    let peer = plain.local_addr().expect("address");
    assert!(matches!(
        outcome_for(&mut outcomes, peer).await,
        Outcome::Plain
    ));
    let mut echoed = [0u8; 1 + 16];
    guard("plain echo", plain.read_exact(&mut echoed))
        .await
        .expect("read echo");
    assert_eq!(&echoed, b"\x09\x16\x03\x01 client hello");

    assert_echo(&mut good, b"after").await;
    assert_eq!(gw.stats.no_backend(), 0);
}

#[tokio::test]
async fn drain_lets_open_connections_finish_and_refuses_new_ones() {
    let backend = tagged_backend(1).await;
    let mut gw = TestGateway::start(config(vec![backend.addr])).await;
    let (mut open, tag) = connect_tagged(gw.addr).await;
    assert_eq!(tag, Some(1));

    gw.shutdown.cancel();
    eventually(PATIENCE, "new connects are refused", async || {
        TcpStream::connect(gw.addr).await.err()
    })
    .await;
    assert_echo(&mut open, b"still flowing after shutdown").await;
    assert!(
        !gw.task.is_finished(),
        "run returned with a connection open"
    );

    drop(open);
    gw.join().await;
}

#[tokio::test]
async fn drain_timeout_cuts_what_is_left() {
    let backend = tagged_backend(1).await;
    let mut gw = TestGateway::start(GatewayConfig {
        drain_timeout: Duration::from_millis(200),
        ..config(vec![backend.addr])
    })
    .await;
    let (mut open, tag) = connect_tagged(gw.addr).await;
    assert_eq!(tag, Some(1));

    gw.shutdown.cancel();
    gw.join().await;
    assert_closed(&mut open, "connection cut after the drain timeout").await;
}

#[tokio::test]
async fn connection_cap_is_enforced() {
    let backend = tagged_backend(1).await;
    let gw = TestGateway::start(GatewayConfig {
        max_connections: 2,
        ..config(vec![backend.addr])
    })
    .await;
    let (first, tag) = connect_tagged(gw.addr).await;
    assert_eq!(tag, Some(1));
    let (mut second, tag) = connect_tagged(gw.addr).await;
    assert_eq!(tag, Some(1));

    let (mut third, tag) = connect_tagged(gw.addr).await;
    assert_eq!(tag, None, "a third connection was forwarded");
    assert_closed(&mut third, "over-cap connection closed").await;
    assert!(gw.stats.refused_over_cap() >= 1);

    // Once one ends, there is room again.
    drop(first);
    eventually(PATIENCE, "room after a connection ends", async || {
        let (_stream, tag) = connect_tagged(gw.addr).await;
        (tag == Some(1)).then_some(())
    })
    .await;
    assert_echo(&mut second, b"unaffected").await;
}

#[tokio::test]
async fn idle_connections_are_closed_busy_ones_are_not() {
    let idle_timeout = Duration::from_secs(1);
    // Streams a byte every 20 ms, never reading: one direction busy, the other silent.
    let talker = spawn_backend(bind().await, |mut stream| async move {
        loop {
            if stream.write_all(b".").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let silent = tagged_backend(1).await;
    let gw_busy = TestGateway::start(GatewayConfig {
        idle_timeout,
        ..config(vec![talker.addr])
    })
    .await;
    let gw_idle = TestGateway::start(GatewayConfig {
        idle_timeout,
        ..config(vec![silent.addr])
    })
    .await;

    let (mut quiet, tag) = connect_tagged(gw_idle.addr).await;
    assert_eq!(tag, Some(1));
    let mut busy = TcpStream::connect(gw_busy.addr).await.expect("connect");

    // Read from the busy one for well over the idle timeout.
    let mut received = 0usize;
    let until = tokio::time::Instant::now() + idle_timeout * 3;
    let mut buf = [0u8; 64];
    while tokio::time::Instant::now() < until {
        let n = guard("busy read", busy.read(&mut buf))
            .await
            .expect("busy connection stays open");
        assert!(n > 0, "busy connection was closed");
        received += n;
    }
    assert!(received > 0);
    assert_closed(&mut quiet, "idle connection closed").await;
}

#[tokio::test]
async fn proxy_header_encoding_is_what_read_proxy_header_reads() {
    // The codec's two halves meet over a real socket, with payload right behind the header.
    let listener = bind().await;
    let addr = listener.local_addr().expect("address");
    let client = tokio::spawn(async move {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let src: SocketAddr = "198.51.100.7:40000".parse().expect("address");
        let mut bytes = proxy_protocol::encode_v2(src, addr);
        bytes.extend_from_slice(b"payload");
        stream.write_all(&bytes).await.expect("write");
        stream
    });
    let (mut server, _) = listener.accept().await.expect("accept");
    let header = read_proxy_header(&mut server, PATIENCE)
        .await
        .expect("valid header")
        .expect("a header");
    assert_eq!(
        header.source,
        Some("198.51.100.7:40000".parse().expect("address"))
    );
    assert_eq!(header.destination, Some(addr));
    let mut rest = [0u8; 7];
    server.read_exact(&mut rest).await.expect("payload");
    assert_eq!(&rest, b"payload");
    drop(client.await.expect("client task"));
}
