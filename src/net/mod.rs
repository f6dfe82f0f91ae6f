//! Everything that touches a socket: frames, TLS, the redirectors, the gateway and the dialers.

pub mod backoff;
pub mod cloud_redirector;
pub mod console;
pub mod dial;
pub mod frame;
pub mod gateway;
pub mod protocol;
pub mod proxy_protocol;
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
