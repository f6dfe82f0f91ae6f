//! The backup infrastructure: proxies, the pools they share work in (and their message bus),
//! repositories, and the Microsoft 365 organizations the proxies process.

use serde::{Deserialize, Serialize};

/// How a backup proxy is connected to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProxyKind {
    /// The proxy role on the backup server itself.
    Local,
    /// A machine in the server's domain or a trusted domain (credentials).
    Domain,
    /// A machine in a workgroup (SSL certificate).
    Workgroup,
}

/// Whether a proxy takes work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProxyState {
    /// Reachable and taking tasks.
    Online,
    /// Not reachable.
    Offline,
    /// Put aside by an operator; takes no tasks.
    Maintenance,
}

/// A backup proxy server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Proxy {
    /// Stable id (`proxy-N`).
    pub id: String,
    pub name: String,
    /// Host name or address.
    pub host: String,
    /// Local, domain or workgroup.
    pub kind: ProxyKind,
    /// SHA-1 thumbprint (40 hex digits) of the proxy's SSL certificate; required for workgroup proxies.
    pub certificate_thumbprint: Option<String>,
    /// Online, offline or in maintenance.
    pub state: ProxyState,
    /// How many tasks it runs at once.
    pub max_concurrent_tasks: u32,
    /// Organization ids it processes (derived from the jobs that use it).
    pub organizations: Vec<String>,
    /// The pool it belongs to, if any (derived from the pools' members).
    pub pool: Option<String>,
}

/// A group of proxies that balance the work of a job between them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProxyPool {
    /// Stable id (`pool-N`).
    pub id: String,
    pub name: String,
    /// Proxy ids in the pool.
    pub members: Vec<String>,
    /// The message bus the members talk over.
    pub bus: MessageBus,
}

/// The NATS server (with JetStream) that a pool's members use to exchange work.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageBus {
    /// `nats://host:port` of the bus server.
    pub url: String,
    /// JetStream streams the pool uses.
    pub streams: Vec<BusStream>,
}

/// One JetStream stream and its counters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BusStream {
    pub name: String,
    /// Subjects bound to the stream.
    pub subjects: Vec<String>,
    /// Messages stored.
    pub messages: u64,
    /// Bytes stored.
    pub bytes: u64,
    /// Consumers attached (one per member).
    pub consumers: u32,
}

/// Where a repository keeps its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RepositoryKind {
    /// A folder on a proxy or the server (`path`).
    Local,
    /// An object storage bucket (`bucket`).
    ObjectStorage,
}

/// A backup repository.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Repository {
    /// Stable id (`repo-N`).
    pub id: String,
    pub name: String,
    /// Local folder or object storage.
    pub kind: RepositoryKind,
    /// Folder, for `local`.
    pub path: Option<String>,
    /// Bucket (and prefix), for `object_storage`.
    pub bucket: Option<String>,
    /// Total capacity.
    pub capacity_bytes: u64,
    /// Space in use.
    pub used_bytes: u64,
    /// How long restore points are kept.
    pub retention_days: u32,
}

/// A Microsoft 365 organization.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Organization {
    /// Stable id (`org-N`).
    pub id: String,
    /// Tenant domain, e.g. `contoso.onmicrosoft.com`.
    pub name: String,
    /// Microsoft 365 region.
    pub region: String,
    /// Mailboxes to protect.
    pub mailboxes: u32,
    /// SharePoint sites.
    pub sites: u32,
    pub teams: u32,
    /// Proxy ids that process it (derived from the jobs).
    pub proxies: Vec<String>,
}
