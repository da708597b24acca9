//! gRPC over Unix domain sockets: a client channel that dials a socket path, and a listener
//! that replaces a stale socket file. The URI given to tonic is a placeholder: the connector
//! decides where the bytes go.

use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tokio::net::{UnixListener, UnixStream};
use tonic::transport::{Channel, Endpoint, Uri};

use super::DevicePluginError;
use super::authority::AuthorityFix;

/// Connects a gRPC channel to the Unix socket at `path` (connects eagerly, so a missing socket
/// is an error now rather than at the first call).
pub async fn connect(path: &Path) -> Result<Channel, DevicePluginError> {
    let target: PathBuf = path.to_path_buf();
    let endpoint = Endpoint::try_from("http://[::1]:50051").map_err(|source| {
        DevicePluginError::Transport {
            what: path.display().to_string(),
            source,
        }
    })?;
    endpoint
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let target = target.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(target).await?)) }
        }))
        .await
        .map_err(|source| DevicePluginError::Transport {
            what: path.display().to_string(),
            source,
        })
}

/// Binds a listener at `path`, removing a socket file left by an earlier run.
pub fn bind(path: &Path) -> Result<UnixListener, DevicePluginError> {
    let err = |source| DevicePluginError::Socket {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    UnixListener::bind(path).map_err(err)
}

/// Removes a socket file; a file already gone is fine (the kubelet wipes the directory when
/// it restarts).
pub fn remove(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot remove socket"),
    }
}

/// The connections a gRPC server accepts on `listener`, each behind [`AuthorityFix`], so that
/// clients that send the socket path as `:authority` are served (see `authority.rs`).
pub fn incoming(
    listener: UnixListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<AuthorityFix<UnixStream>>> {
    use tokio_stream::StreamExt;
    tokio_stream::wrappers::UnixListenerStream::new(listener).map(|s| s.map(AuthorityFix::new))
}
