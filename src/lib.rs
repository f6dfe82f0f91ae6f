//! Remote Access Console: an SP operator opens a tenant's backup server, which sits behind
//! NAT, through the SP's cloud redirector. See `docs/ARCHITECTURE.md` for the map.

pub mod bench;
pub mod cli;
pub mod cluster;
pub mod lab;
pub mod metrics;
pub mod net;
pub mod signal;
pub mod sp;
pub mod tenant;
pub mod ui;
pub mod util;
pub mod wire;

/// This build's version, sent in hellos and welcomes.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
