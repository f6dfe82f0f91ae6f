//! Remote Access Console: an SP operator opens a tenant's backup server, which sits behind
//! NAT, through the SP's cloud redirector. See `docs/ARCHITECTURE.md` for the map.

pub mod net;
pub mod sp;
pub mod tenant;
