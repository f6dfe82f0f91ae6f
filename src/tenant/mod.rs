//! The tenant side: its configuration and its backup server. Knows no sockets.
pub mod backup;
pub mod config;
