//! The SP backup service: accounts, presence, audit. Knows no sockets.
