//! Secrets and how they are checked: random keys, hashes, the slow password hash, the
//! per-source limit on failed logins, and the cap on password checks running at once.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use rand::RngCore;
use sha2::{Digest, Sha256};

/// 256 random bits as 64 hex digits: tenant secrets, tokens, nonces.
pub fn random_hex_32() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// 128 random bits as 32 hex digits: session ids.
pub fn random_hex_16() -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

pub fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// Compares two strings in time independent of where they differ.
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    constant_time_eq_bytes(a.as_bytes(), b.as_bytes())
}

/// Argon2id with its default cost, as a PHC string.
pub fn hash_password(password: &str) -> Result<String, argon2::password_hash::Error> {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt)?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
}

pub fn verify_password(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc)
        .map(|hash| {
            Argon2::default()
                .verify_password(password.as_bytes(), &hash)
                .is_ok()
        })
        .unwrap_or(false)
}

/// Spends the time of one password check, so an unknown user is not told apart by timing.
pub fn burn_password_time(password: &str) {
    let _ = hash_password(password);
}

/// The key a source address is counted under: an IPv4 address itself (also when it arrives
/// IPv4-mapped), an IPv6 address by its /64, the block one subscriber usually holds whole.
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// Limits login attempts per source (see [`source_key`]): at most `max_failures` attempts
/// that did not succeed inside `window`, after which the source is refused until the window
/// has passed.
///
/// An attempt is counted when it *begins*, before its password is checked, and taken back
/// only when it succeeds: so attempts running at the same time cannot all slip past a check
/// made before any of them failed.
///
/// It also remembers, for [`KNOWN_SOURCE_FOR`], the sources that logged in successfully: the
/// password checker keeps a lane for them that a flood from unknown addresses cannot fill.
pub struct LoginLimiter {
    max_failures: u32,
    window: Duration,
    attempts: Mutex<HashMap<IpAddr, (u32, Instant)>>,
    /// Sources with a successful login, and when it was.
    known: Mutex<HashMap<IpAddr, Instant>>,
}

/// How long a source that logged in successfully counts as known.
pub const KNOWN_SOURCE_FOR: Duration = Duration::from_secs(24 * 3600);

impl LoginLimiter {
    pub fn new(max_failures: u32, window: Duration) -> Self {
        LoginLimiter {
            // Zero would refuse every login; one attempt per window is the strictest limit.
            max_failures: max_failures.max(1),
            window,
            attempts: Mutex::new(HashMap::new()),
            known: Mutex::new(HashMap::new()),
        }
    }

    /// Counts one attempt from `source`, or `Err(retry_after)` when the source has used up
    /// its attempts for this window (nothing is counted then).
    pub fn begin(&self, source: IpAddr) -> Result<(), Duration> {
        let key = source_key(source);
        let mut attempts = crate::util::lock(&self.attempts);
        let now = Instant::now();
        if attempts.len() > 100_000 {
            attempts.retain(|_, (_, since)| now.duration_since(*since) < self.window);
        }
        let entry = attempts.entry(key).or_insert((0, now));
        let elapsed = now.duration_since(entry.1);
        if elapsed >= self.window {
            *entry = (0, now);
        } else if entry.0 >= self.max_failures {
            return Err(self.window - elapsed);
        }
        entry.0 += 1;
        Ok(())
    }

    /// Takes back an attempt counted by [`begin`](Self::begin): its password was right, or
    /// it was never checked (the SP was busy, or failed itself). A success does not clear
    /// the source's other failures.
    pub fn forgive(&self, source: IpAddr) {
        let mut attempts = crate::util::lock(&self.attempts);
        if let Some(entry) = attempts.get_mut(&source_key(source)) {
            entry.0 = entry.0.saturating_sub(1);
        }
    }

    /// A login from `source` succeeded: its attempt is taken back and the source is known.
    pub fn succeeded(&self, source: IpAddr) {
        self.forgive(source);
        let mut known = crate::util::lock(&self.known);
        let now = Instant::now();
        if known.len() > 100_000 {
            known.retain(|_, at| now.duration_since(*at) < KNOWN_SOURCE_FOR);
        }
        known.insert(source_key(source), now);
    }

    /// Whether `source` logged in successfully within [`KNOWN_SOURCE_FOR`].
    pub fn is_known(&self, source: IpAddr) -> bool {
        let known = crate::util::lock(&self.known);
        known
            .get(&source_key(source))
            .is_some_and(|at| at.elapsed() < KNOWN_SOURCE_FOR)
    }
}

/// The most password checks that run at once: about two per core, and never more than
/// [`MAX_CONCURRENT_CHECKS`], so the Argon2id memory stays within a known budget.
pub fn default_concurrent_checks() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (2 * cores).clamp(2, MAX_CONCURRENT_CHECKS)
}

/// The ceiling of [`default_concurrent_checks`]: with the lane for known sources, 7 × 19 MiB
/// of Argon2id memory at most.
pub const MAX_CONCURRENT_CHECKS: usize = 6;

/// Runs Argon2id password checks, at most `max_concurrent` at a time plus one more for a
/// known source (one that logged in successfully lately), each in working memory the checker
/// keeps and reuses (19 MiB per check with the default cost). Memory for password checks is
/// therefore bounded by (`max_concurrent` + 1) × 19 MiB however many logins arrive: a login
/// past the cap is told at once that the SP is busy, instead of queueing a thread and
/// allocating memory of its own.
///
/// The extra lane is why an operator who logged in from their address before still gets in
/// while a flood from unknown addresses keeps every other slot taken.
pub struct PasswordChecker {
    max_concurrent: usize,
    state: Mutex<CheckerState>,
}

struct CheckerState {
    in_use: usize,
    /// The one check of a known source that runs past `max_concurrent`, if any.
    known_lane_in_use: bool,
    /// Working memory of checks that ended, kept for the next ones.
    free: Vec<Vec<Block>>,
}

/// One admitted password check and its working memory; the slot frees when it drops.
pub struct CheckPermit {
    checker: Arc<PasswordChecker>,
    memory: Vec<Block>,
    known_lane: bool,
}

impl PasswordChecker {
    pub fn new(max_concurrent: usize) -> Arc<Self> {
        Arc::new(PasswordChecker {
            max_concurrent: max_concurrent.max(1),
            state: Mutex::new(CheckerState {
                in_use: 0,
                known_lane_in_use: false,
                free: Vec::new(),
            }),
        })
    }

    pub fn max_concurrent(&self) -> usize {
        self.max_concurrent
    }

    /// A slot for one check, or `None` when `max_concurrent` checks are running (and, for a
    /// `known_source`, its extra lane is taken too).
    pub fn try_acquire(self: &Arc<Self>, known_source: bool) -> Option<CheckPermit> {
        let mut state = crate::util::lock(&self.state);
        let known_lane = if state.in_use < self.max_concurrent {
            state.in_use += 1;
            false
        } else if known_source && !state.known_lane_in_use {
            state.known_lane_in_use = true;
            true
        } else {
            return None;
        };
        let memory = state.free.pop().unwrap_or_default();
        Some(CheckPermit {
            checker: self.clone(),
            memory,
            known_lane,
        })
    }
}

impl Drop for CheckPermit {
    fn drop(&mut self) {
        let memory = std::mem::take(&mut self.memory);
        let mut state = crate::util::lock(&self.checker.state);
        if self.known_lane {
            state.known_lane_in_use = false;
        } else {
            state.in_use -= 1;
        }
        // Only memory of the default size is kept; an odd hash's larger memory is freed.
        if memory.len() == Params::DEFAULT.block_count() {
            state.free.push(memory);
        }
    }
}

impl CheckPermit {
    /// Checks `password` against a PHC string. Slow by design: call from a blocking thread.
    pub fn verify(&mut self, password: &str, phc: &str) -> bool {
        verify_in(password, phc, &mut self.memory).unwrap_or(false)
    }

    /// Spends the time of one password check, so an unknown user is not told apart by timing.
    pub fn burn(&mut self, password: &str) {
        let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
        let memory = working_memory(&mut self.memory, Params::DEFAULT.block_count());
        let _ = Argon2::default().hash_password_into_with_memory(
            password.as_bytes(),
            b"an unknown user's salt",
            &mut out,
            memory,
        );
    }
}

/// `memory` grown to at least `blocks` blocks (allocated once, then reused).
fn working_memory(memory: &mut Vec<Block>, blocks: usize) -> &mut [Block] {
    if memory.len() < blocks {
        memory.resize(blocks, Block::new());
    }
    &mut memory[..]
}

/// What `PasswordVerifier::verify_password` does for Argon2, but in the caller's memory.
fn verify_in(password: &str, phc: &str, memory: &mut Vec<Block>) -> Option<bool> {
    let hash = PasswordHash::new(phc).ok()?;
    let expected = hash.hash?;
    let algorithm = Algorithm::try_from(hash.algorithm).ok()?;
    let version = match hash.version {
        Some(v) => Version::try_from(v).ok()?,
        None => Version::default(),
    };
    let params = Params::try_from(&hash).ok()?;
    let mut salt = [0u8; 64];
    let salt = hash.salt?.decode_b64(&mut salt).ok()?;
    let mut out = vec![0u8; expected.len()];
    let blocks = params.block_count();
    Argon2::new(algorithm, version, params)
        .hash_password_into_with_memory(
            password.as_bytes(),
            salt,
            &mut out,
            working_memory(memory, blocks),
        )
        .ok()?;
    Some(constant_time_eq_bytes(&out, expected.as_bytes()))
}

fn constant_time_eq_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_hash_round_trip() {
        let hash = hash_password("pw").expect("hash");
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password("pw", &hash));
        assert!(!verify_password("pW", &hash));
        assert!(!verify_password("pw", "not a hash"));
    }

    #[test]
    fn limiter_blocks_after_failures_and_only_that_source() {
        let limiter = LoginLimiter::new(3, Duration::from_secs(60));
        let bad: IpAddr = "10.0.0.1".parse().expect("ip");
        let good: IpAddr = "10.0.0.2".parse().expect("ip");
        for _ in 0..3 {
            assert!(limiter.begin(bad).is_ok());
        }
        assert!(limiter.begin(bad).is_err());
        assert!(limiter.begin(good).is_ok());
        // A success takes back only its own attempt.
        limiter.forgive(bad);
        assert!(limiter.begin(bad).is_ok());
        assert!(limiter.begin(bad).is_err());
    }

    #[test]
    fn attempts_count_before_they_finish() {
        // Many attempts begun at once, none finished yet: only `max_failures` get through.
        let limiter = Arc::new(LoginLimiter::new(5, Duration::from_secs(60)));
        let source: IpAddr = "10.0.0.9".parse().expect("ip");
        let admitted: usize = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..40)
                .map(|_| scope.spawn(|| limiter.begin(source).is_ok()))
                .collect();
            handles
                .into_iter()
                .map(|h| usize::from(h.join().expect("thread")))
                .sum()
        });
        assert_eq!(admitted, 5);
    }

    #[test]
    fn ipv6_sources_are_counted_by_their_64() {
        let limiter = LoginLimiter::new(2, Duration::from_secs(60));
        let a: IpAddr = "2001:db8:1:2::1".parse().expect("ip");
        let b: IpAddr = "2001:db8:1:2:ffff:1:2:3".parse().expect("ip");
        let other: IpAddr = "2001:db8:1:3::1".parse().expect("ip");
        assert!(limiter.begin(a).is_ok());
        assert!(limiter.begin(b).is_ok());
        assert!(limiter.begin(a).is_err(), "the same /64 shares one count");
        assert!(limiter.begin(other).is_ok(), "another /64 does not");
        let mapped: IpAddr = "::ffff:10.1.2.3".parse().expect("ip");
        assert_eq!(
            source_key(mapped),
            "10.1.2.3".parse::<IpAddr>().expect("ip")
        );
    }

    #[test]
    fn the_checker_verifies_like_argon2_and_caps_concurrent_checks() {
        let hash = hash_password("pw").expect("hash");
        let checker = PasswordChecker::new(2);
        let mut one = checker.try_acquire(false).expect("first slot");
        let two = checker.try_acquire(false).expect("second slot");
        assert!(
            checker.try_acquire(false).is_none(),
            "a third check waits for none"
        );
        // A known source has one lane more, and only one.
        let known = checker.try_acquire(true).expect("the known sources' lane");
        assert!(checker.try_acquire(true).is_none());
        drop(known);
        assert!(one.verify("pw", &hash));
        assert!(!one.verify("pW", &hash));
        assert!(!one.verify("pw", "not a hash"));
        one.burn("whatever");
        drop(two);
        let mut again = checker.try_acquire(false).expect("a slot freed");
        assert!(again.verify("pw", &hash));
        drop((one, again));
        // The working memory of ended checks is kept for reuse, not allocated again.
        let state = checker.state.lock().expect("state");
        assert_eq!(state.in_use, 0);
        assert!(!state.known_lane_in_use);
        assert!(state.free.len() <= 3);
    }

    #[test]
    fn a_successful_source_is_known() {
        let limiter = LoginLimiter::new(3, Duration::from_secs(60));
        let source: IpAddr = "2001:db8::1".parse().expect("ip");
        assert!(!limiter.is_known(source));
        limiter.begin(source).expect("attempt");
        limiter.succeeded(source);
        assert!(
            limiter.is_known("2001:db8::2".parse().expect("ip")),
            "by its /64"
        );
        assert!(!limiter.is_known("10.0.0.1".parse().expect("ip")));
    }

    #[test]
    fn constant_time_eq_compares() {
        assert!(constant_time_eq("abc", "abc"));
        assert!(!constant_time_eq("abc", "abd"));
        assert!(!constant_time_eq("abc", "ab"));
    }
}
