//! PROXY protocol version 2 (the binary form from HAProxy's `proxy-protocol.txt`).
//!
//! A cloud gateway may prefix each forwarded connection with a v2 header so the SP learns the
//! real client address; the SP reads it with [`read_proxy_header`] before its TLS handshake.
//!
//! Layout of a header: the 12-byte [`SIGNATURE`], one byte of version (high nibble, always 2)
//! and command (low nibble: LOCAL or PROXY), one byte of address family (high nibble) and
//! transport protocol (low nibble), a 2-byte big-endian length of what follows, then the address
//! block (12 bytes for IPv4: source, destination, source port, destination port; 36 bytes for
//! IPv6) and optional TLVs, which this codec skips.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The 12 bytes every v2 header starts with. They cannot begin a TLS record or an HTTP request.
pub const SIGNATURE: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];

/// Signature, version/command, family/protocol and the 2-byte length.
pub const FIXED_LEN: usize = 16;

/// Largest whole header (fixed part, addresses and TLVs) this codec accepts.
///
/// The spec suggests v2 receivers be ready for 536 bytes; anything longer is refused before a
/// byte of it is buffered, so a peer cannot make the reader allocate more than this.
pub const MAX_HEADER_LEN: usize = 536;

const VERSION_2: u8 = 0x20;
const CMD_LOCAL: u8 = 0x0;
const CMD_PROXY: u8 = 0x1;
const FAMILY_INET: u8 = 0x1;
const FAMILY_INET6: u8 = 0x2;
const FAMILY_UNIX: u8 = 0x3;
const PROTO_STREAM: u8 = 0x1;
const PROTO_DGRAM: u8 = 0x2;
const INET_ADDR_LEN: usize = 12;
const INET6_ADDR_LEN: usize = 36;

/// What a v2 header says about the connection.
///
/// Both addresses are `None` for the LOCAL command (a health check or the proxy's own
/// connection: use the socket's real peer) and for families that carry no IP address
/// (UNSPEC, UNIX) or transports other than TCP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyHeader {
    /// The client that connected to the proxy.
    pub source: Option<SocketAddr>,
    /// The address the client connected to (the proxy's listening address).
    pub destination: Option<SocketAddr>,
}

/// Why a PROXY v2 header was refused.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("not a PROXY protocol v2 signature")]
    BadSignature,
    #[error("unsupported PROXY protocol version {0} (only 2 is supported)")]
    BadVersion(u8),
    #[error("unknown PROXY protocol command {0:#x}")]
    BadCommand(u8),
    #[error("undefined PROXY protocol address family/protocol byte {0:#04x}")]
    BadFamily(u8),
    #[error("PROXY header of {len} bytes exceeds the limit of {max} bytes")]
    LengthTooLarge { len: usize, max: usize },
    #[error("PROXY address block of {len} bytes is shorter than the {need} bytes its family needs")]
    AddressBlockTooShort { len: usize, need: usize },
    #[error("timed out waiting for the PROXY header")]
    Timeout,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Encodes a PROXY command header for a TCP connection from `src` to `dst`, without TLVs.
///
/// If the two addresses are of different families, the IPv4 one is written as an IPv4-mapped
/// IPv6 address (the header has one family for both).
pub fn encode_v2(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let mut out = Vec::with_capacity(FIXED_LEN + INET6_ADDR_LEN);
    out.extend_from_slice(&SIGNATURE);
    out.push(VERSION_2 | CMD_PROXY);
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.push(FAMILY_INET << 4 | PROTO_STREAM);
            out.extend_from_slice(&(INET_ADDR_LEN as u16).to_be_bytes());
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        (s, d) => {
            out.push(FAMILY_INET6 << 4 | PROTO_STREAM);
            out.extend_from_slice(&(INET6_ADDR_LEN as u16).to_be_bytes());
            out.extend_from_slice(&to_v6(s).octets());
            out.extend_from_slice(&to_v6(d).octets());
        }
    }
    out.extend_from_slice(&src.port().to_be_bytes());
    out.extend_from_slice(&dst.port().to_be_bytes());
    out
}

fn to_v6(ip: IpAddr) -> Ipv6Addr {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    }
}

/// Checks the fixed part that is present in `buf` (which may be shorter than [`FIXED_LEN`]).
/// Returns the whole header length once the length field is known.
fn check_fixed(buf: &[u8]) -> Result<Option<usize>, ProxyError> {
    let sig_len = buf.len().min(SIGNATURE.len());
    if buf[..sig_len] != SIGNATURE[..sig_len] {
        return Err(ProxyError::BadSignature);
    }
    if let Some(&ver_cmd) = buf.get(12) {
        if ver_cmd & 0xF0 != VERSION_2 {
            return Err(ProxyError::BadVersion(ver_cmd >> 4));
        }
        let command = ver_cmd & 0x0F;
        if command != CMD_LOCAL && command != CMD_PROXY {
            return Err(ProxyError::BadCommand(command));
        }
        // The spec tells receivers to reject undefined family/protocol values, except that a
        // LOCAL header's address block is to be ignored whatever it says.
        if let Some(&fam_proto) = buf.get(13)
            && command == CMD_PROXY
            && (fam_proto >> 4 > FAMILY_UNIX || fam_proto & 0x0F > PROTO_DGRAM)
        {
            return Err(ProxyError::BadFamily(fam_proto));
        }
    }
    if buf.len() < FIXED_LEN {
        return Ok(None);
    }
    let len = FIXED_LEN + usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if len > MAX_HEADER_LEN {
        return Err(ProxyError::LengthTooLarge {
            len,
            max: MAX_HEADER_LEN,
        });
    }
    Ok(Some(len))
}

/// Parses a v2 header at the start of `buf`.
///
/// Returns `Ok(None)` while `buf` holds a valid but incomplete prefix of a header, and
/// `Ok(Some((header, consumed)))` once it is whole; `consumed` is the header length, and any
/// bytes after it belong to the proxied stream.
pub fn parse_v2(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>, ProxyError> {
    let Some(total) = check_fixed(buf)? else {
        return Ok(None);
    };
    if buf.len() < total {
        return Ok(None);
    }
    let command = buf[12] & 0x0F;
    let family = buf[13] >> 4;
    let protocol = buf[13] & 0x0F;
    let block = &buf[FIXED_LEN..total];
    let none = ProxyHeader {
        source: None,
        destination: None,
    };
    if command == CMD_LOCAL || protocol != PROTO_STREAM {
        return Ok(Some((none, total)));
    }
    let header = match family {
        FAMILY_INET => {
            need(block, INET_ADDR_LEN)?;
            let ip =
                |at: usize| Ipv4Addr::new(block[at], block[at + 1], block[at + 2], block[at + 3]);
            let port = |at: usize| u16::from_be_bytes([block[at], block[at + 1]]);
            ProxyHeader {
                source: Some(SocketAddr::new(ip(0).into(), port(8))),
                destination: Some(SocketAddr::new(ip(4).into(), port(10))),
            }
        }
        FAMILY_INET6 => {
            need(block, INET6_ADDR_LEN)?;
            let ip = |at: usize| {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&block[at..at + 16]);
                Ipv6Addr::from(octets)
            };
            let port = |at: usize| u16::from_be_bytes([block[at], block[at + 1]]);
            ProxyHeader {
                source: Some(SocketAddr::new(ip(0).into(), port(32))),
                destination: Some(SocketAddr::new(ip(16).into(), port(34))),
            }
        }
        // UNSPEC or UNIX (`check_fixed` refused anything else): no IP address to report.
        _ => none,
    };
    Ok(Some((header, total)))
}

fn need(block: &[u8], need: usize) -> Result<(), ProxyError> {
    if block.len() < need {
        return Err(ProxyError::AddressBlockTooShort {
            len: block.len(),
            need,
        });
    }
    Ok(())
}

/// Reads a v2 header from the start of `stream`, if there is one.
///
/// Decides by peeking: when the first bytes are not the v2 signature, returns `Ok(None)` having
/// consumed nothing, so the caller can go on with its TLS handshake on the same stream. When they
/// are, reads exactly the header (never a byte past it) and returns it. The whole call is bounded
/// by `timeout`; a peer that stops in the middle of a header gets [`ProxyError::Timeout`].
///
/// The caller decides whether to trust the header (only from configured gateway addresses).
pub async fn read_proxy_header(
    stream: &mut TcpStream,
    timeout: Duration,
) -> Result<Option<ProxyHeader>, ProxyError> {
    tokio::time::timeout(timeout, read_proxy_header_inner(stream))
        .await
        .map_err(|_| ProxyError::Timeout)?
}

async fn read_proxy_header_inner(
    stream: &mut TcpStream,
) -> Result<Option<ProxyHeader>, ProxyError> {
    // Peek until the signature is confirmed or refuted. `peek` returns at once while earlier
    // bytes are still queued, so a peer that sent a partial signature is polled with a short,
    // growing pause instead of a busy loop (real senders write the header in one segment).
    let mut sig = [0u8; SIGNATURE.len()];
    let mut pause = Duration::from_millis(1);
    loop {
        let n = stream.peek(&mut sig).await?;
        if n == 0 || sig[..n] != SIGNATURE[..n] {
            return Ok(None);
        }
        if n == SIGNATURE.len() {
            break;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }

    let mut header = [0u8; MAX_HEADER_LEN];
    stream.read_exact(&mut header[..FIXED_LEN]).await?;
    let total = check_fixed(&header[..FIXED_LEN])?.ok_or(ProxyError::BadSignature)?;
    stream.read_exact(&mut header[FIXED_LEN..total]).await?;
    match parse_v2(&header[..total])? {
        Some((parsed, _)) => Ok(Some(parsed)),
        // `total` bytes are exactly what `check_fixed` asked for, so this cannot happen.
        None => Err(ProxyError::BadSignature),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v4(s: &str) -> SocketAddr {
        s.parse().expect("test address")
    }

    #[test]
    fn round_trip_ipv4() {
        let (src, dst) = (v4("203.0.113.7:51234"), v4("192.0.2.1:6180"));
        let bytes = encode_v2(src, dst);
        assert_eq!(bytes.len(), FIXED_LEN + INET_ADDR_LEN);
        assert_eq!(bytes[12], 0x21);
        assert_eq!(bytes[13], 0x11);
        let (header, used) = parse_v2(&bytes).expect("valid").expect("complete");
        assert_eq!(used, bytes.len());
        assert_eq!(header.source, Some(src));
        assert_eq!(header.destination, Some(dst));
    }

    #[test]
    fn round_trip_ipv6() {
        let (src, dst) = (v4("[2001:db8::7]:51234"), v4("[2001:db8::1]:6180"));
        let bytes = encode_v2(src, dst);
        assert_eq!(bytes.len(), FIXED_LEN + INET6_ADDR_LEN);
        assert_eq!(bytes[13], 0x21);
        let (header, used) = parse_v2(&bytes).expect("valid").expect("complete");
        assert_eq!(used, bytes.len());
        assert_eq!(header.source, Some(src));
        assert_eq!(header.destination, Some(dst));
    }

    #[test]
    fn mixed_families_are_written_as_ipv6() {
        let (src, dst) = (v4("203.0.113.7:1"), v4("[2001:db8::1]:2"));
        let (header, _) = parse_v2(&encode_v2(src, dst))
            .expect("valid")
            .expect("complete");
        assert_eq!(header.source, Some(v4("[::ffff:203.0.113.7]:1")));
        assert_eq!(header.destination, Some(dst));
    }

    #[test]
    fn trailing_bytes_are_not_consumed() {
        let mut bytes = encode_v2(v4("10.0.0.1:1"), v4("10.0.0.2:2"));
        let header_len = bytes.len();
        bytes.extend_from_slice(b"\x16\x03\x01payload");
        let (_, used) = parse_v2(&bytes).expect("valid").expect("complete");
        assert_eq!(used, header_len);
    }

    #[test]
    fn tlvs_are_skipped() {
        let mut bytes = encode_v2(v4("10.0.0.1:1"), v4("10.0.0.2:2"));
        let tlv = [0x04, 0x00, 0x03, b'a', b'b', b'c']; // PP2_TYPE_NOOP, 3 bytes
        bytes.extend_from_slice(&tlv);
        let len = (INET_ADDR_LEN + tlv.len()) as u16;
        bytes[14..16].copy_from_slice(&len.to_be_bytes());
        let (header, used) = parse_v2(&bytes).expect("valid").expect("complete");
        assert_eq!(used, bytes.len());
        assert_eq!(header.source, Some(v4("10.0.0.1:1")));
    }

    #[test]
    fn local_command_has_no_addresses() {
        let mut bytes = SIGNATURE.to_vec();
        bytes.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
        let (header, used) = parse_v2(&bytes).expect("valid").expect("complete");
        assert_eq!(used, FIXED_LEN);
        assert_eq!(header.source, None);
        assert_eq!(header.destination, None);

        // LOCAL with an address block: the block is skipped, not read.
        let mut bytes = encode_v2(v4("10.0.0.1:1"), v4("10.0.0.2:2"));
        bytes[12] = 0x20;
        let (header, used) = parse_v2(&bytes).expect("valid").expect("complete");
        assert_eq!(used, bytes.len());
        assert_eq!(header.source, None);
    }

    #[test]
    fn unspec_and_unix_families_have_no_addresses() {
        for fam_proto in [0x00u8, 0x31, 0x01, 0x12] {
            let mut bytes = SIGNATURE.to_vec();
            bytes.extend_from_slice(&[0x21, fam_proto, 0x00, 0x00]);
            let mut block = vec![0u8; 216];
            if fam_proto == 0x12 {
                block.truncate(INET_ADDR_LEN);
            }
            bytes[14..16].copy_from_slice(&(block.len() as u16).to_be_bytes());
            bytes.extend_from_slice(&block);
            let (header, used) = parse_v2(&bytes).expect("valid").expect("complete");
            assert_eq!(used, bytes.len(), "fam/proto {fam_proto:#x}");
            assert_eq!(header.source, None, "fam/proto {fam_proto:#x}");
        }
    }

    #[test]
    fn every_truncation_asks_for_more() {
        let bytes = encode_v2(v4("[2001:db8::7]:1"), v4("[2001:db8::1]:2"));
        for cut in 0..bytes.len() {
            assert!(
                matches!(parse_v2(&bytes[..cut]), Ok(None)),
                "prefix of {cut} bytes"
            );
        }
    }

    #[test]
    fn bad_signature() {
        assert!(matches!(
            parse_v2(b"\x16\x03\x01"),
            Err(ProxyError::BadSignature)
        ));
        assert!(matches!(
            parse_v2(b"PROXY TCP4 "),
            Err(ProxyError::BadSignature)
        ));
        let mut bytes = encode_v2(v4("10.0.0.1:1"), v4("10.0.0.2:2"));
        bytes[11] = 0x0B;
        assert!(matches!(parse_v2(&bytes), Err(ProxyError::BadSignature)));
    }

    #[test]
    fn bad_version() {
        let mut bytes = encode_v2(v4("10.0.0.1:1"), v4("10.0.0.2:2"));
        bytes[12] = 0x11;
        assert!(matches!(parse_v2(&bytes), Err(ProxyError::BadVersion(1))));
        // Refused as soon as the byte arrives, not after the whole header.
        assert!(matches!(
            parse_v2(&bytes[..13]),
            Err(ProxyError::BadVersion(1))
        ));
    }

    #[test]
    fn bad_command() {
        let mut bytes = encode_v2(v4("10.0.0.1:1"), v4("10.0.0.2:2"));
        bytes[12] = 0x22;
        assert!(matches!(parse_v2(&bytes), Err(ProxyError::BadCommand(2))));
    }

    #[test]
    fn bad_family_or_protocol() {
        for fam_proto in [0x41u8, 0xF1, 0x13] {
            let mut bytes = encode_v2(v4("10.0.0.1:1"), v4("10.0.0.2:2"));
            bytes[13] = fam_proto;
            assert!(
                matches!(parse_v2(&bytes), Err(ProxyError::BadFamily(b)) if b == fam_proto),
                "fam/proto {fam_proto:#x}"
            );
        }
    }

    #[test]
    fn length_too_large() {
        let mut bytes = SIGNATURE.to_vec();
        bytes.extend_from_slice(&[0x21, 0x11, 0xFF, 0xFF]);
        assert!(matches!(
            parse_v2(&bytes),
            Err(ProxyError::LengthTooLarge {
                len: 65551,
                max: MAX_HEADER_LEN
            })
        ));
        // The largest allowed length is fine; one more byte is not.
        let allowed = (MAX_HEADER_LEN - FIXED_LEN) as u16;
        bytes[14..16].copy_from_slice(&allowed.to_be_bytes());
        assert!(matches!(parse_v2(&bytes), Ok(None)));
        bytes[14..16].copy_from_slice(&(allowed + 1).to_be_bytes());
        assert!(matches!(
            parse_v2(&bytes),
            Err(ProxyError::LengthTooLarge { .. })
        ));
    }

    #[test]
    fn address_block_too_short() {
        let mut bytes = encode_v2(v4("10.0.0.1:1"), v4("10.0.0.2:2"));
        bytes.truncate(FIXED_LEN + 8);
        bytes[14..16].copy_from_slice(&8u16.to_be_bytes());
        assert!(matches!(
            parse_v2(&bytes),
            Err(ProxyError::AddressBlockTooShort { len: 8, need: 12 })
        ));
        let mut bytes = encode_v2(v4("[::1]:1"), v4("[::2]:2"));
        bytes.truncate(FIXED_LEN + 12);
        bytes[14..16].copy_from_slice(&12u16.to_be_bytes());
        assert!(matches!(
            parse_v2(&bytes),
            Err(ProxyError::AddressBlockTooShort { len: 12, need: 36 })
        ));
    }

    fn addr_pair() -> impl Strategy<Value = (SocketAddr, SocketAddr)> {
        prop_oneof![
            (
                any::<Ipv4Addr>(),
                any::<u16>(),
                any::<Ipv4Addr>(),
                any::<u16>()
            )
                .prop_map(|(a, p, b, q)| (
                    SocketAddr::new(a.into(), p),
                    SocketAddr::new(b.into(), q)
                )),
            (
                any::<Ipv6Addr>(),
                any::<u16>(),
                any::<Ipv6Addr>(),
                any::<u16>()
            )
                .prop_map(|(a, p, b, q)| (
                    SocketAddr::new(a.into(), p),
                    SocketAddr::new(b.into(), q)
                )),
        ]
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..700)) {
            let _ = parse_v2(&bytes);
        }

        #[test]
        fn parse_never_panics_after_signature(
            rest in proptest::collection::vec(any::<u8>(), 0..600)
        ) {
            let mut bytes = SIGNATURE.to_vec();
            bytes.extend_from_slice(&rest);
            if let Ok(Some((_, used))) = parse_v2(&bytes) {
                prop_assert!(used <= bytes.len() && used <= MAX_HEADER_LEN);
            }
        }

        #[test]
        fn addresses_round_trip((src, dst) in addr_pair()) {
            let bytes = encode_v2(src, dst);
            let (header, used) = parse_v2(&bytes)
                .expect("encoded header parses")
                .expect("encoded header is complete");
            prop_assert_eq!(used, bytes.len());
            prop_assert_eq!(header.source, Some(src));
            prop_assert_eq!(header.destination, Some(dst));
        }
    }
}
