//! Makes an upstream that dies mid-body visible as an error.
//!
//! awc's HTTP/1 client ends a response body cleanly when the connection closes before a sized
//! or chunked body is complete (actix-codec's `Framed` reports the socket's EOF as the end of
//! the stream, and awc's payload stream passes that on as `None`). Relayed as is, a client
//! would receive a truncated stream with a proper terminating chunk: it would look complete.
//! Plain-TCP upstream connections are therefore wrapped so that EOF is an error; the forwarder
//! maps it back to a clean end only for the one framing where EOF *is* the end (an HTTP/1.0
//! body without `Content-Length`; awc reads an HTTP/1.1 response without length or chunking
//! as having no body at all). TLS connections need no wrapper:
//! rustls already reports EOF without `close_notify` as `UnexpectedEof`, and HTTP/2 reports a
//! reset stream.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use actix_rt::net::{ActixStream, Ready, TcpStream};
use actix_service::Service;
use actix_tls::connect::{ConnectError, ConnectInfo, Connection, ConnectorService};
use actix_web::http::Uri;
use futures_util::future::LocalBoxFuture;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const UPSTREAM_EOF: &str = "upstream closed the connection";

/// Whether `err` is the EOF this module turned into an error.
pub fn is_upstream_eof(err: &io::Error) -> bool {
    err.kind() == io::ErrorKind::UnexpectedEof && err.to_string() == UPSTREAM_EOF
}

pub struct StrictEofStream {
    inner: TcpStream,
    strict: bool,
}

impl fmt::Debug for StrictEofStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StrictEofStream")
            .field("strict", &self.strict)
            .finish()
    }
}

impl AsyncRead for StrictEofStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        if self.strict && buf.remaining() > 0 && buf.filled().len() == before {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                UPSTREAM_EOF,
            )));
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for StrictEofStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl ActixStream for StrictEofStream {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<Ready>> {
        ActixStream::poll_read_ready(&self.inner, cx)
    }

    fn poll_write_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<Ready>> {
        ActixStream::poll_write_ready(&self.inner, cx)
    }
}

/// actix-tls' TCP connector, handing out [`StrictEofStream`]s (strict for `http://` only).
#[derive(Clone)]
pub struct StrictEofConnector {
    tcp: ConnectorService,
}

impl Default for StrictEofConnector {
    fn default() -> Self {
        Self {
            tcp: actix_tls::connect::Connector::default().service(),
        }
    }
}

impl Service<ConnectInfo<Uri>> for StrictEofConnector {
    type Response = Connection<Uri, StrictEofStream>;
    type Error = ConnectError;
    type Future = LocalBoxFuture<'static, Result<Self::Response, Self::Error>>;

    actix_service::always_ready!();

    fn call(&self, req: ConnectInfo<Uri>) -> Self::Future {
        let strict = req.request().scheme_str() == Some("http");
        let connecting = self.tcp.call(req);
        Box::pin(async move {
            let (tcp, conn) = connecting.await?.replace_io(());
            // See `nodelay`: events must leave as soon as they arrive, in both directions.
            let _ = tcp.set_nodelay(true);
            let (_, conn) = conn.replace_io(StrictEofStream { inner: tcp, strict });
            Ok(conn)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_rt::test]
    async fn upstream_connections_get_nodelay() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let uri: Uri = format!("http://{}/v1", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        let conn = StrictEofConnector::default()
            .call(ConnectInfo::new(uri))
            .await
            .unwrap();
        assert!(conn.io_ref().inner.nodelay().unwrap());
        assert!(conn.io_ref().strict);
    }
}
