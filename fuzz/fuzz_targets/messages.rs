//! Every message type a peer can send or receive after the hello: control messages, session
//! messages, operator API requests and responses, and the hello reply. What parses must
//! re-encode to something that parses back equal.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rac::wire::protocol::{ApiRequest, ApiResponse, ControlMsg, HelloReply, SessionMsg, TenantInfo};
use serde::Serialize;
use serde::de::DeserializeOwned;

fn round_trip<T: Serialize + DeserializeOwned + std::fmt::Debug>(data: &[u8]) -> Option<(T, T)> {
    let msg = serde_json::from_slice::<T>(data).ok()?;
    let text = serde_json::to_vec(&msg).expect("a parsed message encodes");
    let again: T = serde_json::from_slice(&text).expect("an encoded message parses");
    Some((msg, again))
}

fn exact<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(data: &[u8]) {
    if let Some((msg, again)) = round_trip::<T>(data) {
        assert_eq!(again, msg);
    }
}

/// serde_json's default float parser may be one unit in the last place off, so the one float
/// on the wire (`heartbeat_rtt_ms`) is compared with a relative tolerance.
fn rtt_free(info: &mut TenantInfo, other: &mut TenantInfo) {
    match (info.heartbeat_rtt_ms.take(), other.heartbeat_rtt_ms.take()) {
        (Some(a), Some(b)) => assert!((a - b).abs() <= a.abs().max(b.abs()) * 1e-12, "{a} {b}"),
        (a, b) => assert_eq!(a.is_some(), b.is_some()),
    }
}

fuzz_target!(|data: &[u8]| {
    exact::<ControlMsg>(data);
    exact::<SessionMsg>(data);
    exact::<ApiRequest>(data);
    exact::<HelloReply>(data);
    if let Some((mut msg, mut again)) = round_trip::<ApiResponse>(data) {
        match (&mut msg, &mut again) {
            (ApiResponse::Tenants { tenants: a }, ApiResponse::Tenants { tenants: b }) => {
                assert_eq!(a.len(), b.len());
                a.iter_mut()
                    .zip(b.iter_mut())
                    .for_each(|(x, y)| rtt_free(x, y));
            }
            (
                ApiResponse::TenantChanged { tenant: a },
                ApiResponse::TenantChanged { tenant: b },
            ) => rtt_free(a, b),
            _ => {}
        }
        assert_eq!(again, msg);
    }
});
