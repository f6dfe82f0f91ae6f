//! Everything that touches a socket: TLS, the redirectors, the gateway and the dialers.

pub mod acceptor;
pub mod admin;
pub mod admission;
pub mod backoff;
pub mod backup_host;
pub mod cloud_redirector;
pub mod console;
pub mod dial;
pub mod gateway;
pub mod known_tenants;
pub mod proxy_protocol;
pub mod pushed_pool;
pub mod rdp;
pub mod socket_splice;
pub mod splice;
pub mod tenant_redirector;
pub mod tls;

/// Aborts a helper task (a connection's reader) when its owner ends.
pub(crate) struct AbortOnDrop<T>(pub tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Pending connections the kernel may queue for a listener. The default of `bind` (128 here)
/// overflows when thousands of tenants reconnect at once after an SP restart.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds a TCP listener with [`LISTEN_BACKLOG`]; what the SP and the gateways listen with.
pub fn listen(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}
