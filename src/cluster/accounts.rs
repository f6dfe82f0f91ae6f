//! Account changes broadcast to every node: the node that changed an account (CLI, admin
//! API) publishes which account changed on `rac.accounts`; every node, itself included,
//! receives it within milliseconds and re-reads that account from the registry, then ends
//! what the change forbids. The event names the account, not its new rights: the registry
//! stays the only truth, so a late or repeated event is harmless.
//!
//! Core NATS delivers at most once: a node cut off from NATS misses what was sent meanwhile.
//! That is why [`super::Connection::reconnects`] exists: on each reconnect the SP re-reads
//! every account, as it does at start.

use serde::{Deserialize, Serialize};

use super::{BusError, Cluster, Messages, publish_json, subscribe_json};

/// The subject account changes travel on.
pub const ACCOUNTS_SUBJECT: &str = "rac.accounts";

/// Which account changed; the receiver re-reads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AccountChange {
    /// Disabled, enabled, removed, secret rotated, key reset, …
    Tenant {
        name: String,
    },
    /// Disabled, removed, tokens revoked, scope changed, …
    Operator {
        name: String,
    },
    AdminToken {
        name: String,
    },
    /// Many at once (an import, a restore): re-read everything.
    All,
}

/// An account change as it travels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountEvent {
    /// The node that made the change.
    pub origin: String,
    /// When it was published, Unix milliseconds by the origin's clock (for the log).
    pub sent_unix_ms: u64,
    pub change: AccountChange,
}

/// The account changes reaching this node, in the order published.
pub type AccountChanges = Messages<AccountEvent>;

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Cluster {
    /// Tells every node that an account changed. Returns once the message has left for the
    /// server (flushed), not when every node has acted.
    pub async fn publish_account_change(&self, change: AccountChange) -> Result<(), BusError> {
        let event = AccountEvent {
            origin: self.node().to_string(),
            sent_unix_ms: unix_ms(),
            change,
        };
        let client = &self.shared().client;
        publish_json(client, ACCOUNTS_SUBJECT, &event).await?;
        client
            .flush()
            .await
            .map_err(|e| BusError::Nats(e.to_string()))
    }

    /// Subscribes to account changes, this node's own included. The subscription is in
    /// place at the server when this returns.
    pub async fn account_changes(&self) -> Result<AccountChanges, BusError> {
        subscribe_json(&self.shared().client, ACCOUNTS_SUBJECT).await
    }
}
