//! Every message of the relay protocol, in one versioned place. `docs/PROTOCOL.md` describes
//! the same messages for someone writing a peer in another language.
//!
//! A connection to the SP port starts with one [`Hello`] frame that names its role. What
//! follows depends on the role:
//! - tenant control: [`Welcome`] or [`ErrorMsg`], then [`ControlMsg`] frames both ways;
//! - tenant data and console session: zero or more [`SessionMsg::Progress`] then
//!   [`SessionMsg::Ready`] (after which the TCP connection carries the end-to-end channel
//!   between console and tenant, which the SP only copies) or [`SessionMsg::Error`];
//! - operator: [`Welcome`] or [`ErrorMsg`], then [`ApiRequest`] / [`ApiResponse`] frames.
//!
//! One file per part of the conversation: `hello.rs` (the first frame and its answer),
//! `control.rs` (the tenant control connection), `session.rs` (sessions and data connections
//! before the splice), `operator.rs` (the operator API and the tenant list), `error.rs` (the
//! refusal codes), `grant.rs` (the SP's signed permission for one session). Everything is re-exported here: callers name `wire::protocol::X`.

mod control;
mod error;
mod grant;
mod hello;
mod operator;
mod session;
mod tenant_page;

pub use control::{Beat, ControlMsg, HeartbeatClock, TENANT_REJECT_CODES, parse_control};
pub use error::{ErrorCode, ErrorMsg, Malformed};
pub use grant::{GRANT_MAX_SECS, Grant, GrantBody, GrantError, GrantKey, parse_grant_key};
pub use hello::{Hello, HelloReply, MAX_AGENT_LEN, MAX_SERVICES, Role, Welcome, validate_services};
pub use operator::{ApiRequest, ApiResponse, TenantInfo, TenantStatus};
pub use session::{SessionMsg, Stage};
pub use tenant_page::{PageError, ROWS_PER_PAGE, TenantPage, TenantRow};

/// The protocol version this build speaks. A `Hello` with another version is refused with
/// [`ErrorCode::VersionMismatch`].
pub const PROTOCOL_VERSION: u32 = 2;

/// A peer's string made safe to show to an operator or write to a log: everything but
/// printable ASCII is escaped (`\n`, `\u{1b}`, `\u{202e}`; a backslash as `\\`), and the
/// text is cut after `max_chars` characters with `...`. The result is one line of plain ASCII:
/// no terminal escape, no line break, no look-alike or right-to-left character.
pub fn escape_untrusted(value: &str, max_chars: usize) -> String {
    let mut out = String::with_capacity(value.len().min(max_chars));
    for (i, c) in value.chars().enumerate() {
        if i == max_chars {
            out.push_str("...");
            break;
        }
        match c {
            '\\' => out.push_str("\\\\"),
            ' '..='~' => out.push(c),
            _ => out.extend(c.escape_default()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_untrusted_leaves_one_line_of_plain_ascii() {
        assert_eq!(escape_untrusted("plain text: ok", 80), "plain text: ok");
        assert_eq!(
            escape_untrusted("a\u{1b}[31mred\nnext\r\\\u{202e}", 80),
            "a\\u{1b}[31mred\\nnext\\r\\\\\\u{202e}"
        );
        assert_eq!(escape_untrusted("abcdef", 3), "abc...");
        let nasty: String = (0u8..=255).map(char::from).collect();
        let escaped = escape_untrusted(&nasty, 1000);
        assert!(
            escaped.bytes().all(|b| (0x20..=0x7e).contains(&b)),
            "{escaped}"
        );
    }
}
