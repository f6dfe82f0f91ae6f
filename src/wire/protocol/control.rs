//! The tenant control connection after its welcome: [`ControlMsg`] frames both ways, how a
//! bad one is reported, and the heartbeat rule each side keeps ([`HeartbeatClock`]).

use super::error::Malformed;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{ErrorCode, escape_untrusted};

/// Messages on an established control connection, in both directions.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ControlMsg {
    /// Either side, every `heartbeat_secs`. The peer answers `Pong` with the same `seq`.
    Ping {
        seq: u64,
        /// The round trip of the sender's previous ping (until its pong came), in
        /// microseconds, when it measured one: the SP shows a tenant's, and then needs no
        /// ping of its own to measure it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rtt_us: Option<u64>,
    },
    Pong {
        seq: u64,
    },
    /// SP → tenant: a console waits for a data connection (step 6).
    OpenData {
        session_id: String,
        nonce: String,
        service: String,
        /// The SP's signed permission for this one session (see [`Grant`](super::Grant)):
        /// the tenant opens nothing without a valid one.
        grant: super::Grant,
        /// The console's end-to-end ClientHello (hex), sent only to a tenant whose hello said
        /// `early_client_hello`: the first bytes of the end-to-end channel, which the tenant
        /// answers on its data connection right after its hello.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_hello: Option<String>,
    },
    /// Tenant → SP: the tenant will not open that session (step 7). The SP passes on only
    /// the codes of [`TENANT_REJECT_CODES`]; a code this build does not know parses as
    /// [`ErrorCode::TenantRejected`], so the frame (and the control connection) survives and
    /// the console hears at once.
    Reject {
        session_id: String,
        #[serde(deserialize_with = "reject_code")]
        code: ErrorCode,
        reason: String,
    },
    /// Tenant → SP: the offered services or the consent changed.
    Status {
        services: Vec<String>,
        provider_access: bool,
    },
    /// SP → tenant: the current cloud gateway pool.
    Gateways {
        gateways: Vec<String>,
    },
    /// SP → tenant: the SP ends the control connection (tenant disabled, SP shutting down).
    Goodbye {
        code: ErrorCode,
        reason: String,
    },
}

/// Decodes a control frame's body, or says in one escaped line what is wrong with it, naming
/// the frame's `type` when it has one (`"ping" frame: invalid type: string "x", expected
/// u64`), for the `goodbye` that answers it and the log.
///
/// The body must be a JSON object: serde would also take the tag-first array form
/// (`["ping", 1]`), which PROTOCOL.md does not define.
pub fn parse_control(body: &[u8]) -> Result<ControlMsg, Malformed> {
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Err(Malformed("not a JSON object".to_string()));
    }
    serde_json::from_slice(body).map_err(|e| {
        let problem = escape_untrusted(&e.to_string(), 200);
        let kind = serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v.get("type")?.as_str().map(|t| escape_untrusted(t, 40)));
        Malformed(match kind {
            Some(kind) => format!("\"{kind}\" frame: {problem}"),
            None => problem,
        })
    })
}

/// The codes a tenant may give in `reject`, each about the tenant's own side. Any other code
/// (`token_expired`, `auth_failed`, an unknown word) would let a tenant put words in the SP's
/// mouth; the SP replaces it with [`ErrorCode::TenantRejected`].
pub const TENANT_REJECT_CODES: [ErrorCode; 6] = [
    ErrorCode::ServiceUnavailable,
    ErrorCode::ServiceNotOffered,
    ErrorCode::ProviderAccessDisabled,
    ErrorCode::Busy,
    ErrorCode::Overloaded,
    ErrorCode::GrantRefused,
];

/// Reads a `reject` code leniently: any JSON value that is not a known code is
/// [`ErrorCode::TenantRejected`].
fn reject_code<'de, D: serde::Deserializer<'de>>(d: D) -> Result<ErrorCode, D::Error> {
    let value = serde_json::Value::deserialize(d)?;
    Ok(match serde_json::from_value(value) {
        Ok(ErrorCode::Other) | Err(_) => ErrorCode::TenantRejected,
        Ok(code) => code,
    })
}

/// The heartbeat rule of a control connection, as a clock each side keeps: a tick every
/// `heartbeat` (when a ping may be due), and the peer taken for dead once it has been silent
/// for `dead_after`. One timer set to [`next_wake`](Self::next_wake) serves both, so the
/// dead-peer check fires on time instead of at the first tick after the deadline (up to a
/// heartbeat late), and a frame that arrives needs no timer reset: a wake-up whose deadline
/// the peer has since moved is a [`Beat::Nothing`].
#[derive(Debug, Clone)]
pub struct HeartbeatClock {
    heartbeat: Duration,
    dead_after: Duration,
    last_heard: Instant,
    next_tick: Instant,
}

/// What a wake-up of a [`HeartbeatClock`] calls for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Beat {
    /// Nothing heard for `dead_after`: close the connection.
    Dead,
    /// A heartbeat tick: send a ping if one is due.
    Tick,
    /// Woken for a dead-peer deadline the peer has moved by speaking since.
    Nothing,
}

impl HeartbeatClock {
    /// A clock whose peer was last heard `now` (its hello or welcome).
    pub fn new(now: Instant, heartbeat: Duration, dead_after: Duration) -> Self {
        HeartbeatClock {
            heartbeat,
            dead_after,
            last_heard: now,
            next_tick: now + heartbeat,
        }
    }

    /// The peer sent a frame (any frame) at `now`.
    pub fn heard(&mut self, now: Instant) {
        self.last_heard = self.last_heard.max(now);
    }

    pub fn last_heard(&self) -> Instant {
        self.last_heard
    }

    /// The peer sent a frame at `now`, and a peer that speaks needs no ping: the next tick
    /// moves to `quiet` after it. For the side that pings only a quiet peer (the SP): with
    /// its timer moved along (an extended deadline is a compare-and-swap in tokio), a peer
    /// that keeps speaking never wakes it, and a quiet one is pinged every heartbeat from
    /// `quiet` on.
    pub fn heard_postponing_tick(&mut self, now: Instant, quiet: Duration) {
        self.heard(now);
        self.next_tick = self.next_tick.max(self.last_heard + quiet);
    }

    /// When the peer is dead unless it speaks first.
    pub fn dead_at(&self) -> Instant {
        self.last_heard + self.dead_after
    }

    /// When to wake next: the next tick or the dead-peer deadline, whichever comes first.
    pub fn next_wake(&self) -> Instant {
        self.next_tick.min(self.dead_at())
    }

    /// At a wake-up at `now`: dead, a tick (the next is scheduled a heartbeat from now), or
    /// nothing yet.
    pub fn wake(&mut self, now: Instant) -> Beat {
        if now >= self.dead_at() {
            Beat::Dead
        } else if now >= self.next_tick {
            self.next_tick = now + self.heartbeat;
            Beat::Tick
        } else {
            Beat::Nothing
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_reject_code_parses_as_tenant_rejected() {
        for code in [r#""no_such_code""#, "42", "null", r#""token_expired""#] {
            let text =
                format!(r#"{{"type":"reject","session_id":"s","code":{code},"reason":"r"}}"#);
            let msg: ControlMsg = serde_json::from_str(&text).expect("parses");
            let ControlMsg::Reject { code: got, .. } = msg else {
                panic!("{msg:?}");
            };
            let expected = if code.contains("token_expired") {
                ErrorCode::TokenExpired
            } else {
                ErrorCode::TenantRejected
            };
            assert_eq!(got, expected, "{code}");
        }
    }

    #[test]
    fn a_dead_peer_is_due_at_dead_after_not_at_the_next_tick() {
        let t0 = Instant::now();
        let secs = Duration::from_secs;
        // Heartbeat 30 s, dead after 95 s: ticks at 30, 60, 90, 120 s.
        let mut clock = HeartbeatClock::new(t0, secs(30), secs(95));
        let mut wakes = Vec::new();
        loop {
            let at = clock.next_wake();
            let beat = clock.wake(at);
            wakes.push((at - t0, beat));
            if beat == Beat::Dead {
                break;
            }
        }
        assert_eq!(
            wakes,
            [
                (secs(30), Beat::Tick),
                (secs(60), Beat::Tick),
                (secs(90), Beat::Tick),
                (secs(95), Beat::Dead),
            ]
        );
        // A frame moves the deadline; a wake-up for the old one does nothing.
        let mut clock = HeartbeatClock::new(t0, secs(10), secs(11));
        assert_eq!(clock.wake(t0 + secs(10)), Beat::Tick);
        clock.heard(t0 + secs(10));
        assert_eq!(clock.next_wake(), t0 + secs(20));
        assert_eq!(clock.dead_at(), t0 + secs(21));
        assert_eq!(clock.wake(t0 + secs(11)), Beat::Nothing);
        assert_eq!(clock.wake(t0 + secs(20)), Beat::Tick);
        assert_eq!(clock.next_wake(), t0 + secs(21));
        assert_eq!(
            clock.wake(t0 + secs(21) - Duration::from_millis(1)),
            Beat::Nothing
        );
        assert_eq!(clock.wake(t0 + secs(21)), Beat::Dead);
        // Never later than the deadline, whatever the heartbeat.
        let clock = HeartbeatClock::new(t0, secs(600), secs(5));
        assert_eq!(clock.next_wake(), t0 + secs(5));
    }

    #[test]
    fn a_peer_that_speaks_postpones_the_tick_and_a_quiet_one_is_ticked_every_heartbeat() {
        let t0 = Instant::now();
        let secs = Duration::from_secs;
        let quiet = secs(25);
        let mut clock = HeartbeatClock::new(t0, secs(20), secs(65));
        clock.heard_postponing_tick(t0, quiet);
        // A frame every 20 s: the wake-up is always 25 s after the latest one.
        for n in 1..=5 {
            clock.heard_postponing_tick(t0 + secs(20 * n), quiet);
            assert_eq!(clock.next_wake(), t0 + secs(20 * n + 25), "{n}");
        }
        // Then silence: a tick 25 s after the last frame, then every 20 s, until dead.
        let last = t0 + secs(100);
        let mut wakes = Vec::new();
        loop {
            let at = clock.next_wake();
            let beat = clock.wake(at);
            wakes.push((at - last, beat));
            if beat == Beat::Dead {
                break;
            }
        }
        assert_eq!(
            wakes,
            [
                (secs(25), Beat::Tick),
                (secs(45), Beat::Tick),
                (secs(65), Beat::Dead),
            ]
        );
        // A frame never brings the tick forward.
        let mut clock = HeartbeatClock::new(t0, secs(20), secs(65));
        clock.heard_postponing_tick(t0, secs(60));
        clock.heard_postponing_tick(t0 + secs(1), secs(5));
        assert_eq!(clock.next_wake(), t0 + secs(60));
    }
}
