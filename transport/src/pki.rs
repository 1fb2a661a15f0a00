//! Identities the server's CA issues at run time: short-lived client certificates for
//! agents that joined (bound to the agent's identity, for its own key pair), and new server
//! certificates for rotation without a restart ([`ServerCert`] swaps them under live
//! endpoints).
//!
//! An agent never sends a certificate request to parse: it sends its raw P-256 public key
//! (65 bytes, uncompressed point), and the server signs a certificate for it. The TLS
//! handshake later proves the agent holds the private key; nothing here has to.

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyPair,
    KeyUsagePurpose, PublicKeyData, SignatureAlgorithm,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::error::TransportError;
use crate::tls::{self, ORGANIZATION, provider};

/// Length of an uncompressed P-256 public key.
pub const AGENT_KEY_LEN: usize = 65;

/// A raw P-256 public key, as an agent sends it.
struct RawP256<'a>(&'a [u8]);

impl PublicKeyData for RawP256<'_> {
    fn der_bytes(&self) -> &[u8] {
        self.0
    }
    fn algorithm(&self) -> &SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

/// Checks the shape of an agent's public key (never panics; a fuzz target calls it).
///
/// # Errors
/// If it is not 65 bytes starting with 0x04.
pub fn check_agent_key(raw: &[u8]) -> Result<(), TransportError> {
    if raw.len() != AGENT_KEY_LEN || raw.first() != Some(&4) {
        return Err(TransportError::Config(format!(
            "an agent key must be an uncompressed P-256 point ({AGENT_KEY_LEN} bytes starting with 0x04), got {} bytes",
            raw.len()
        )));
    }
    Ok(())
}

/// A new key pair for an agent: (private key PEM, raw public key).
///
/// # Errors
/// If no key can be generated.
pub fn new_agent_key() -> Result<(String, Vec<u8>), TransportError> {
    let key = KeyPair::generate().map_err(|source| TransportError::Generate {
        what: "agent key pair",
        source,
    })?;
    Ok((key.serialize_pem(), key.public_key_raw().to_vec()))
}

/// The CA's signing half, loaded from `ca.key` in the data dir.
pub struct Authority {
    issuer: rcgen::Certificate,
    key: KeyPair,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Authority(<ca key>)")
    }
}

impl Authority {
    /// Loads the CA key of a data dir set up by [`tls::ensure_server_tls`].
    ///
    /// # Errors
    /// If `ca.key` is missing or does not parse.
    pub fn load(data_dir: &Path) -> Result<Self, TransportError> {
        let key = tls::load_rcgen_key(&data_dir.join(tls::CA_KEY))?;
        let issuer =
            tls::ca_params()
                .self_signed(&key)
                .map_err(|source| TransportError::Generate {
                    what: "CA certificate",
                    source,
                })?;
        Ok(Self { issuer, key })
    }

    /// A client certificate for `identity`'s key, valid for `ttl`: (PEM, DER).
    ///
    /// # Errors
    /// If the key is malformed or signing fails.
    pub fn issue_agent(
        &self,
        public_key: &[u8],
        identity: &str,
        ttl: Duration,
    ) -> Result<(String, Vec<u8>), TransportError> {
        check_agent_key(public_key)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, identity);
        dn.push(DnType::OrganizationName, ORGANIZATION);
        params.distinguished_name = dn;
        // A minute of slack for clocks that disagree a little.
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(1);
        params.not_after = now + time::Duration::try_from(ttl).unwrap_or(time::Duration::DAY);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&RawP256(public_key), &self.issuer, &self.key)
            .map_err(|source| TransportError::Generate {
                what: "agent certificate",
                source,
            })?;
        Ok((cert.pem(), cert.der().to_vec()))
    }

    /// A new server certificate and key (for rotation), as PEM and as rustls wants them.
    ///
    /// # Errors
    /// If generating or signing fails.
    pub fn issue_server(&self) -> Result<IssuedServerCert, TransportError> {
        let key = KeyPair::generate().map_err(|source| TransportError::Generate {
            what: "server key pair",
            source,
        })?;
        let cert = tls::server_params()?
            .signed_by(&key, &self.issuer, &self.key)
            .map_err(|source| TransportError::Generate {
                what: "server certificate",
                source,
            })?;
        Ok(IssuedServerCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            chain: vec![cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        })
    }
}

/// A freshly issued server certificate.
pub struct IssuedServerCert {
    /// `server.pem` contents.
    pub cert_pem: String,
    /// `server.key` contents.
    pub key_pem: String,
    /// The chain for rustls.
    pub chain: Vec<CertificateDer<'static>>,
    /// The key for rustls.
    pub key: PrivateKeyDer<'static>,
}

/// The server certificate every endpoint presents; [`ServerCert::replace`] swaps it for new
/// handshakes while established connections go on.
#[derive(Debug)]
pub struct ServerCert(RwLock<Arc<CertifiedKey>>);

impl ServerCert {
    /// From a chain and its key.
    ///
    /// # Errors
    /// If rustls refuses the key.
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: &PrivateKeyDer<'static>,
    ) -> Result<Arc<Self>, TransportError> {
        let ck = CertifiedKey::from_der(chain, key.clone_key(), &provider())?;
        Ok(Arc::new(Self(RwLock::new(Arc::new(ck)))))
    }

    /// Swaps in a new certificate.
    ///
    /// # Errors
    /// If rustls refuses the key.
    pub fn replace(
        &self,
        chain: Vec<CertificateDer<'static>>,
        key: &PrivateKeyDer<'static>,
    ) -> Result<(), TransportError> {
        let ck = CertifiedKey::from_der(chain, key.clone_key(), &provider())?;
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(ck);
        Ok(())
    }
}

impl ResolvesServerCert for ServerCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(
            &self
                .0
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        ))
    }
}

/// The DER of the first certificate a QUIC peer presented (already verified against the CA
/// by rustls during the handshake), if it presented one.
#[must_use]
pub fn peer_cert(conn: &quinn::Connection) -> Option<Vec<u8>> {
    let chain = conn
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?;
    chain.first().map(|c| c.to_vec())
}
