//! The gRPC listener's connections: a bounded number of slots, each held until its connection closes,
//! and TLS handshakes on tasks of their own within a deadline.

use std::sync::Arc;

use tokio::net::TcpListener;

/// gRPC connections held at once (one per agent, with room for reconnects); further agents wait in
/// the listen queue and retry.
pub const MAX_GRPC_CONNECTIONS: usize = 32_768;
/// A TLS handshake on the gRPC listener must finish within this.
pub const GRPC_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// A TCP connection that holds one of the listener's slots until it is dropped.
pub(super) struct Limited {
    io: tokio::net::TcpStream,
    _slot: tokio::sync::OwnedSemaphorePermit,
}

impl tokio::io::AsyncRead for Limited {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Limited {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for Limited {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

/// The listener's connections, at most `max` open at once: the next is accepted only when a slot is
/// free, so a flood of idle connections cannot take every descriptor the process has.
pub(super) fn limited_incoming(
    listener: TcpListener,
    max: usize,
) -> impl futures_util::Stream<Item = std::io::Result<Limited>> + Send + 'static {
    let slots = Arc::new(tokio::sync::Semaphore::new(max));
    futures_util::stream::unfold((listener, slots), |(listener, slots)| async move {
        let slot = slots.clone().acquire_owned().await.ok()?;
        loop {
            match listener.accept().await {
                Ok((io, _)) => {
                    let _ = io.set_nodelay(true);
                    return Some((Ok(Limited { io, _slot: slot }), (listener, slots)));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "gRPC accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    })
}

/// The listener's TLS connections: TCP slots as [`limited_incoming`], each handshake on a task of
/// its own within [`GRPC_HANDSHAKE_TIMEOUT`] (a slow client holds up nobody else), and every failed
/// handshake logged with the peer's address and the reason.
pub(super) fn tls_incoming(
    listener: TcpListener,
    max: usize,
    acceptor: tokio_rustls::TlsAcceptor,
) -> impl futures_util::Stream<Item = std::io::Result<tokio_rustls::server::TlsStream<Limited>>> + Send + 'static {
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    tokio::spawn(async move {
        let mut tcp = std::pin::pin!(limited_incoming(listener, max));
        loop {
            let next = tokio::select! {
                n = futures_util::StreamExt::next(&mut tcp) => n,
                () = tx.closed() => return,
            };
            let Some(Ok(conn)) = next else { return };
            let peer = conn.io.peer_addr().map(|a| a.to_string()).unwrap_or_else(|_| "unknown".into());
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(GRPC_HANDSHAKE_TIMEOUT, acceptor.accept(conn)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => tracing::warn!(%peer, reason = %e, "TLS handshake failed on the gRPC listener"),
                    Err(_) => {
                        tracing::warn!(%peer, timeout_s = GRPC_HANDSHAKE_TIMEOUT.as_secs(), "TLS handshake timed out on the gRPC listener")
                    }
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
