//! What comes before SMTP on a gateway connection: the PROXY protocol header from a
//! configured load balancer (`gateway::proxy`), the bytes read past it, and the listener's
//! TLS certificate, read again on SIGHUP.

use super::*;
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite};

/// A listener's certificate chain and key, read again on SIGHUP: every shard's TLS
/// configuration asks it at each handshake, so a renewed certificate is served from the
/// next connection on, with no restart.
#[derive(Debug)]
pub struct Certificates {
    pub(super) cert: std::path::PathBuf,
    key: std::path::PathBuf,
    current: std::sync::RwLock<Arc<rustls::sign::CertifiedKey>>,
}

impl Certificates {
    /// Reads `l`'s files; `None` for a listener without TLS.
    pub fn load(l: &Listener) -> Result<Option<Certificates>, String> {
        let (Some(cert), Some(key)) = (&l.cert, &l.key) else {
            return Ok(None);
        };
        Certificates::from_files(cert, key).map(Some)
    }

    /// Reads a chain and key from PEM files (the admin API's and the one-click endpoint's).
    pub fn from_files(
        cert: &std::path::Path,
        key: &std::path::Path,
    ) -> Result<Certificates, String> {
        let current = certified_key(cert, key)?;
        Ok(Certificates {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: std::sync::RwLock::new(Arc::new(current)),
        })
    }

    /// Reads the files again; on any error the certificate in use stays.
    pub fn reload(&self) -> Result<(), String> {
        let fresh = certified_key(&self.cert, &self.key)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(fresh);
        Ok(())
    }
}

impl rustls::server::ResolvesServerCert for Certificates {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(Arc::clone(
            &self.current.read().unwrap_or_else(|e| e.into_inner()),
        ))
    }
}

/// A chain and its key from PEM files, checked to belong together.
fn certified_key(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<rustls::sign::CertifiedKey, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in it", cert.display()));
    }
    let key_der =
        PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    rustls::sign::CertifiedKey::from_der(certs, key_der, &provider())
        .map_err(|e| format!("{}: {e}", key.display()))
}

fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// The TLS settings of a listener, serving whatever `certificates` holds now.
pub(in crate::engine) fn server_tls(
    certificates: Arc<Certificates>,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(certificates);
    Ok(Arc::new(config))
}

/// Reads a PROXY protocol header (`gateway::proxy`) within `PROXY_HEADER_TIMEOUT`: the
/// client it names (none for the balancer's own connections), and any bytes read past it.
pub(super) async fn read_proxy_header(stream: &mut TcpStream) -> Result<(Source, Vec<u8>), String> {
    stream
        .set_read_timeout(Some(PROXY_HEADER_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let started = std::time::Instant::now();
    let mut input = Vec::new();
    let mut read = [0u8; 512];
    loop {
        if let Some(h) = crate::gateway::proxy::parse(&input)? {
            return Ok((h.source, input.split_off(h.used)));
        }
        if started.elapsed() > PROXY_HEADER_TIMEOUT {
            return Err("PROXY header too slow".into());
        }
        match stream.read(&mut read).await {
            Ok(0) => return Err("closed before its PROXY header".into()),
            Ok(n) => input.extend_from_slice(&read[..n]),
            Err(e) => return Err(format!("PROXY header: {e}")),
        }
    }
}

/// A stream whose first bytes were read already (behind a PROXY header): they come first.
pub(super) struct Prefixed<S> {
    pub(super) early: Vec<u8>,
    pub(super) inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if !self.early.is_empty() {
            let n = buf.len().min(self.early.len());
            buf[..n].copy_from_slice(&self.early[..n]);
            self.early.drain(..n);
            return std::task::Poll::Ready(Ok(n));
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_close(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_close(cx)
    }
}
