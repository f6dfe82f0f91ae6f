//! Everything that touches a socket: frames, TLS, the redirectors, the gateway and the dialers.

pub mod frame;
