//! The tenant backup service: the backup server a console session shows (proxies, pools,
//! repositories, Microsoft 365 organizations, Azure VM backup, jobs and their sessions),
//! its actions, its simulated job runs, its state file and its wire protocol.

pub mod client;
pub mod generator;
pub mod model;
pub mod ops;
pub mod protocol;
pub mod service;
pub mod sim;
pub mod store;

pub use client::{BackupClient, ClientError, summary_text};
pub use generator::{Shape, generate, generate_for_index, generate_with_shape};
pub use model::Inventory;
pub use ops::{
    ActionError, ActionOutcome, BackupAction, JobSpec, PoolSpec, ProxySpec, RepositorySpec,
};
pub use protocol::{BACKUP_PROTOCOL_VERSION, BackupEvent};
pub use service::{BackupService, ServiceConfig, ServiceError, serve_connection, simulate};
pub use store::{Store, StoreError, Written};

/// The name under which the tenant redirector offers this service.
pub const SERVICE_NAME: &str = "backup";
