//! Outbound TLS (STARTTLS) with rustls.
//!
//! Policies, per provider (`tls` key) or `[delivery] tls` for everything else:
//! - `opportunistic` (default): encrypt when offered, accept any certificate, and record
//!   whether it would have verified. A failed handshake is retried in plaintext, and the host
//!   is remembered as TLS-broken for `TLS_BROKEN_FOR`.
//! - `required`: encrypt or do not send; any certificate.
//! - `verify`: encrypt with a certificate valid for the MX host name (Mozilla's roots).
//! - `disabled`: never STARTTLS.

use crate::smtp::session::TlsPolicy;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::sync::Arc;
use std::time::Duration;

/// A host whose opportunistic handshake failed gets plaintext for this long.
pub const TLS_BROKEN_FOR: Duration = Duration::from_secs(3600);

pub fn parse_policy(s: &str) -> Result<TlsPolicy, String> {
    match s {
        "opportunistic" => Ok(TlsPolicy::Opportunistic),
        "required" => Ok(TlsPolicy::Required),
        "verify" => Ok(TlsPolicy::Verify),
        "disabled" => Ok(TlsPolicy::Disabled),
        other => Err(format!(
            "expected \"opportunistic\", \"required\", \"verify\" or \"disabled\", got {other:?}"
        )),
    }
}

/// The client configurations a shard connects with, built once.
pub struct TlsClients {
    /// Any certificate (opportunistic, required).
    pub lenient: Arc<ClientConfig>,
    /// Certificates must verify (verify).
    pub strict: Arc<ClientConfig>,
    verifier: Arc<WebPkiServerVerifier>,
}

impl TlsClients {
    pub fn new() -> TlsClients {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = Arc::new(RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        });
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::clone(&roots), Arc::clone(&provider))
                .build()
                .expect("Mozilla roots make a valid verifier");
        let strict = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .expect("ring supports the default versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let lenient = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .expect("ring supports the default versions")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate {
                provider: Arc::clone(&provider),
            }))
            .with_no_client_auth();
        TlsClients {
            lenient: Arc::new(lenient),
            strict: Arc::new(strict),
            verifier,
        }
    }

    pub fn config_for(&self, policy: TlsPolicy) -> Arc<ClientConfig> {
        match policy {
            TlsPolicy::Verify => Arc::clone(&self.strict),
            TlsPolicy::Opportunistic | TlsPolicy::Required | TlsPolicy::Disabled => {
                Arc::clone(&self.lenient)
            }
        }
    }

    /// Whether the certificates a server presented verify for `host`: what opportunistic
    /// TLS logs, since it sends either way.
    pub fn verification(&self, host: &str, certs: &[CertificateDer<'_>]) -> Result<(), String> {
        let (end_entity, intermediates) = certs.split_first().ok_or("no certificate")?;
        let name = ServerName::try_from(host.to_string()).map_err(|e| e.to_string())?;
        self.verifier
            .verify_server_cert(end_entity, intermediates, &name, &[], UnixTime::now())
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

impl Default for TlsClients {
    fn default() -> Self {
        Self::new()
    }
}

/// Accepts any certificate but still checks the handshake signatures, so the session is
/// encrypted to whoever holds the presented key (opportunistic TLS, RFC 3207 practice).
#[derive(Debug)]
struct AnyCertificate {
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_parse_and_configs_build() {
        assert_eq!(parse_policy("verify").unwrap(), TlsPolicy::Verify);
        assert!(parse_policy("yes").is_err());
        let c = TlsClients::new();
        let cert = rcgen::generate_simple_self_signed(vec!["mx.test".into()]).unwrap();
        let der = CertificateDer::from(cert.cert.der().to_vec());
        let why = c.verification("mx.test", &[der]).unwrap_err();
        assert!(why.contains("UnknownIssuer"), "{why}");
    }
}
