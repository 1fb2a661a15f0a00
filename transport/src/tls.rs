//! TLS material and configurations.
//!
//! The server owns a private CA in its data directory, created on first start with rcgen:
//! `ca.pem`/`ca.key` and a server certificate `server.pem`/`server.key` signed by it. Clients
//! (agents, the CLI) trust only that CA and always present [`SERVER_NAME`] as SNI, so the
//! server certificate does not depend on which host or address the server runs on.
//!
//! Key material is precious: a file that exists is never overwritten. One that does not parse
//! is reported by name and left for the operator to inspect.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hodei_core::wire::{ALPN_AGENT, ALPN_CLIENT};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::RootCertStore;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::ServerCertVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::endpoint::TransportOptions;
use crate::error::TransportError;

/// The TLS server name every client asks for (SNI) and verifies; it is among the server
/// certificate's subject alternative names.
pub const SERVER_NAME: &str = "hodei-server";

const CA_CERT: &str = "ca.pem";
pub(crate) const CA_KEY: &str = "ca.key";
const SERVER_CERT: &str = "server.pem";
const SERVER_KEY: &str = "server.key";

/// The CA's subject. Fixed, so that a CA certificate re-derived from `ca.key` (to sign a new
/// server certificate after `server.pem` was removed) names the same issuer as `ca.pem`.
const CA_COMMON_NAME: &str = "Hodei CA";
pub(crate) const ORGANIZATION: &str = "Hodei";

/// The server's TLS identity, as loaded by [`ensure_server_tls`].
pub struct ServerTls {
    /// The CA certificate clients must trust (hand it to agents and the CLI).
    pub ca_cert_path: PathBuf,
    /// The server certificate chain, end-entity first.
    pub cert_chain: Vec<CertificateDer<'static>>,
    /// The server's private key.
    pub key: PrivateKeyDer<'static>,
    /// Key of QUIC stateless resets. Kept across restarts so that an agent whose connection
    /// died with the old server process learns it from the first packet the new process
    /// answers, instead of after its idle timeout.
    pub reset_key: Vec<u8>,
}

impl ServerTls {
    /// The swappable certificate endpoints present, starting with this one.
    ///
    /// # Errors
    /// If rustls refuses the key.
    pub fn cert(&self) -> Result<Arc<crate::pki::ServerCert>, TransportError> {
        crate::pki::ServerCert::new(self.cert_chain.clone(), &self.key)
    }
}

impl Clone for ServerTls {
    // `PrivateKeyDer` is deliberately not `Clone`; each shard thread needs its own copy.
    fn clone(&self) -> Self {
        Self {
            ca_cert_path: self.ca_cert_path.clone(),
            cert_chain: self.cert_chain.clone(),
            key: self.key.clone_key(),
            reset_key: self.reset_key.clone(),
        }
    }
}

impl fmt::Debug for ServerTls {
    // Never print key bytes into logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("ca_cert_path", &self.ca_cert_path)
            .field(
                "cert_chain",
                &format_args!("{} certificate(s)", self.cert_chain.len()),
            )
            .field("key", &"<redacted>")
            .finish()
    }
}

/// The crypto provider, passed explicitly to every config so nothing depends on a
/// process-wide default being installed (or on which one another crate installed).
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Creates the CA and server certificate in `data_dir` on first start; later starts load them.
///
/// Files created: `ca.pem`, `ca.key` (mode 0600), `server.pem`, `server.key` (mode 0600); the
/// server certificate is signed by the CA and valid for [`SERVER_NAME`], `localhost`,
/// `127.0.0.1` and `::1`. If only `server.pem` is missing, a new one is signed with `ca.key`
/// (so clients keep trusting the server). `ca.key` is not needed once `server.pem` exists and
/// may be moved offline.
///
/// # Errors
/// If the directory or a file cannot be created or read, if a file exists but does not parse
/// (the error names it; it is not touched), if a file is missing while files that depend on it
/// exist, or if `server.pem` does not chain to `ca.pem` or does not match `server.key`.
pub fn ensure_server_tls(data_dir: &Path) -> Result<ServerTls, TransportError> {
    fs::create_dir_all(data_dir).map_err(|source| TransportError::File {
        action: "create directory",
        path: data_dir.to_owned(),
        source,
    })?;
    let ca_cert_path = data_dir.join(CA_CERT);
    let ca_key_path = data_dir.join(CA_KEY);
    let server_cert_path = data_dir.join(SERVER_CERT);
    let server_key_path = data_dir.join(SERVER_KEY);

    // The CA key is only needed to sign; it is generated only when no CA exists at all.
    let ca_key = if exists(&ca_key_path)? {
        Some(load_rcgen_key(&ca_key_path)?)
    } else if exists(&ca_cert_path)? {
        None
    } else {
        if exists(&server_cert_path)? || exists(&server_key_path)? {
            return Err(TransportError::MissingFile {
                path: ca_cert_path,
                reason: "server.pem or server.key exist without their CA; move them away to \
                         start over with a new CA (clients will need the new ca.pem)",
            });
        }
        let key = KeyPair::generate().map_err(|source| TransportError::Generate {
            what: "CA key pair",
            source,
        })?;
        write_new(&ca_key_path, key.serialize_pem().as_bytes(), 0o600)?;
        tracing::info!(path = %ca_key_path.display(), "generated a new CA key");
        Some(key)
    };

    if !exists(&ca_cert_path)? {
        // Reached on first start, or after a crash between writing ca.key and ca.pem.
        let key = ca_key.as_ref().ok_or_else(|| TransportError::MissingFile {
            path: ca_key_path.clone(),
            reason: "needed to create ca.pem",
        })?;
        let cert = ca_params()
            .self_signed(key)
            .map_err(|source| TransportError::Generate {
                what: "CA certificate",
                source,
            })?;
        write_new(&ca_cert_path, cert.pem().as_bytes(), 0o644)?;
        tracing::info!(path = %ca_cert_path.display(), "generated a new CA certificate");
    }
    let roots = load_roots(&ca_cert_path)?;

    let server_key_pem = if exists(&server_key_path)? {
        read_string(&server_key_path)?
    } else if exists(&server_cert_path)? {
        return Err(TransportError::MissingFile {
            path: server_key_path,
            reason: "server.pem exists without its key; remove server.pem to issue a new one",
        });
    } else {
        let key = KeyPair::generate().map_err(|source| TransportError::Generate {
            what: "server key pair",
            source,
        })?;
        let pem = key.serialize_pem();
        write_new(&server_key_path, pem.as_bytes(), 0o600)?;
        pem
    };

    if !exists(&server_cert_path)? {
        let ca_key = ca_key.as_ref().ok_or_else(|| TransportError::MissingFile {
            path: ca_key_path.clone(),
            reason: "needed to sign a new server.pem (server.pem is missing)",
        })?;
        let server_key =
            KeyPair::from_pem(&server_key_pem).map_err(|e| TransportError::InvalidFile {
                path: server_key_path.clone(),
                what: "PKCS#8 PEM private key",
                reason: e.to_string(),
            })?;
        // rcgen can only sign with a `Certificate` value; one re-derived from the CA key and
        // the fixed CA subject yields the same issuer name and key identifier as ca.pem.
        let issuer =
            ca_params()
                .self_signed(ca_key)
                .map_err(|source| TransportError::Generate {
                    what: "CA certificate",
                    source,
                })?;
        let cert = server_params()?
            .signed_by(&server_key, &issuer, ca_key)
            .map_err(|source| TransportError::Generate {
                what: "server certificate",
                source,
            })?;
        write_new(&server_cert_path, cert.pem().as_bytes(), 0o644)?;
        tracing::info!(path = %server_cert_path.display(), "issued a new server certificate");
    }

    warn_if_readable_by_others(&ca_key_path);
    warn_if_readable_by_others(&server_key_path);
    let cert_chain = load_certs(&server_cert_path)?;
    let key = parse_private_key(&server_key_path, server_key_pem.as_bytes())?;
    check_server_identity(
        &roots,
        &cert_chain,
        &key,
        &ca_cert_path,
        &server_cert_path,
        &server_key_path,
    )?;
    let reset_key = load_or_create_reset_key(&data_dir.join(RESET_KEY))?;
    Ok(ServerTls {
        ca_cert_path,
        cert_chain,
        key,
        reset_key,
    })
}

/// File of the stateless-reset key (32 random bytes).
const RESET_KEY: &str = "reset.key";

fn load_or_create_reset_key(path: &Path) -> Result<Vec<u8>, TransportError> {
    if exists(path)? {
        let key = read(path)?;
        if key.len() != 32 {
            return Err(TransportError::InvalidFile {
                path: path.to_owned(),
                what: "reset key",
                reason: format!("{} bytes, expected 32", key.len()),
            });
        }
        warn_if_readable_by_others(path);
        return Ok(key);
    }
    let mut key = vec![0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key)
        .map_err(|_| TransportError::Config("no system randomness for the reset key".into()))?;
    write_new(path, &key, 0o600)?;
    Ok(key)
}

/// QUIC server configuration: TLS 1.3 only, ALPN [`ALPN_AGENT`] or [`ALPN_CLIENT`] (the server
/// tells agents from clients by it), rustls with the ring provider, the certificate `cert`
/// presents (swappable while running). A client certificate is verified against the CA when
/// one is presented (expired, or from another CA: the handshake fails); whether one is
/// required is the server's decision per ALPN (agents must present one).
///
/// # Errors
/// If the CA file cannot be loaded, or an option is out of range.
pub fn server_config(
    tls: &ServerTls,
    cert: &Arc<crate::pki::ServerCert>,
    opts: &TransportOptions,
) -> Result<quinn::ServerConfig, TransportError> {
    let roots = load_roots(&tls.ca_cert_path)?;
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
            .allow_unauthenticated()
            .build()
            .map_err(|e| TransportError::Config(e.to_string()))?;
    let mut crypto = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::clone(cert) as Arc<dyn rustls::server::ResolvesServerCert>);
    crypto.alpn_protocols = vec![ALPN_AGENT.to_vec(), ALPN_CLIENT.to_vec()];
    let quic =
        QuicServerConfig::try_from(crypto).map_err(|e| TransportError::Config(e.to_string()))?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(quic));
    cfg.transport_config(Arc::new(opts.transport_config(false)?));
    Ok(cfg)
}

/// Replaces `server.pem`/`server.key` in `data_dir` (each atomically) with a rotated pair.
///
/// # Errors
/// If a file cannot be written.
pub fn write_server_cert(
    data_dir: &Path,
    issued: &crate::pki::IssuedServerCert,
) -> Result<(), TransportError> {
    write_new(&data_dir.join(SERVER_KEY), issued.key_pem.as_bytes(), 0o600)?;
    write_new(
        &data_dir.join(SERVER_CERT),
        issued.cert_pem.as_bytes(),
        0o644,
    )
}

/// An agent's client identity: its certificate (PEM) and private key (PEM).
pub struct ClientIdentity {
    /// Certificate chain, PEM.
    pub cert_pem: String,
    /// Private key, PEM.
    pub key_pem: String,
}

/// QUIC client configuration trusting only the CA in `ca_path` (the server's `ca.pem`),
/// speaking `alpn` ([`ALPN_AGENT`] for agents, [`ALPN_CLIENT`] for the CLI and API clients).
///
/// # Errors
/// If the file is missing, unreadable or holds no valid certificate (the error names it), or
/// an option is out of range.
pub fn client_config(
    ca_path: &Path,
    alpn: &[u8],
    opts: &TransportOptions,
) -> Result<quinn::ClientConfig, TransportError> {
    client_config_with(ca_path, alpn, opts, None)
}

/// Like [`client_config`], presenting `identity` (an agent's certificate) to the server.
///
/// # Errors
/// As [`client_config`], and if the identity's PEM does not parse or the key does not fit.
pub fn client_config_with(
    ca_path: &Path,
    alpn: &[u8],
    opts: &TransportOptions,
    identity: Option<&ClientIdentity>,
) -> Result<quinn::ClientConfig, TransportError> {
    let roots = load_roots(ca_path)?;
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots);
    let mut crypto = match identity {
        None => builder.with_no_client_auth(),
        Some(id) => {
            let invalid = |what: &'static str, reason: String| TransportError::InvalidFile {
                path: PathBuf::from("<agent identity>"),
                what,
                reason,
            };
            let chain = rustls_pemfile::certs(&mut id.cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| invalid("agent certificate", e.to_string()))?;
            let key = rustls_pemfile::private_key(&mut id.key_pem.as_bytes())
                .map_err(|e| invalid("agent key", e.to_string()))?
                .ok_or_else(|| invalid("agent key", "no PRIVATE KEY block".to_owned()))?;
            builder.with_client_auth_cert(chain, key)?
        }
    };
    crypto.alpn_protocols = vec![alpn.to_vec()];
    let quic =
        QuicClientConfig::try_from(crypto).map_err(|e| TransportError::Config(e.to_string()))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
    cfg.transport_config(Arc::new(opts.transport_config(true)?));
    Ok(cfg)
}

pub(crate) fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_COMMON_NAME);
    dn.push(DnType::OrganizationName, ORGANIZATION);
    params.distinguished_name = dn;
    // Path length 0: this CA signs server certificates, never other CAs.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

pub(crate) fn server_params() -> Result<CertificateParams, TransportError> {
    let sans = [SERVER_NAME, "localhost", "127.0.0.1", "::1"].map(str::to_owned);
    let mut params =
        CertificateParams::new(sans.to_vec()).map_err(|source| TransportError::Generate {
            what: "server certificate",
            source,
        })?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, SERVER_NAME);
    dn.push(DnType::OrganizationName, ORGANIZATION);
    params.distinguished_name = dn;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

/// Verifies, at startup rather than at every client's handshake, that the server's files fit
/// together: the chain verifies against `ca.pem` for [`SERVER_NAME`] and the key matches.
fn check_server_identity(
    roots: &RootCertStore,
    chain: &[CertificateDer<'static>],
    key: &PrivateKeyDer<'static>,
    ca_path: &Path,
    cert_path: &Path,
    key_path: &Path,
) -> Result<(), TransportError> {
    let invalid_cert = |reason: String| TransportError::InvalidFile {
        path: cert_path.to_owned(),
        what: "server certificate",
        reason,
    };
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots.clone()), provider())
        .build()
        .map_err(|e| invalid_cert(e.to_string()))?;
    let (end_entity, intermediates) = chain
        .split_first()
        .ok_or_else(|| invalid_cert("no certificate".to_owned()))?;
    let name = ServerName::try_from(SERVER_NAME).map_err(|e| invalid_cert(e.to_string()))?;
    verifier
        .verify_server_cert(end_entity, intermediates, &name, &[], UnixTime::now())
        .map_err(|e| {
            invalid_cert(format!(
                "does not verify against {}: {e}",
                ca_path.display()
            ))
        })?;
    rustls::sign::CertifiedKey::from_der(chain.to_vec(), key.clone_key(), &provider()).map_err(
        |e| TransportError::InvalidFile {
            path: key_path.to_owned(),
            what: "key for server.pem",
            reason: e.to_string(),
        },
    )?;
    Ok(())
}

/// Reads the CA certificate(s) in `path` into a root store, validating each.
pub(crate) fn load_roots(path: &Path) -> Result<RootCertStore, TransportError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|e| TransportError::InvalidFile {
            path: path.to_owned(),
            what: "CA certificate",
            reason: e.to_string(),
        })?;
    }
    Ok(roots)
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TransportError> {
    let bytes = read(path)?;
    let invalid = |reason: String| TransportError::InvalidFile {
        path: path.to_owned(),
        what: "PEM certificate file",
        reason,
    };
    let certs = rustls_pemfile::certs(&mut bytes.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(e.to_string()))?;
    if certs.is_empty() {
        return Err(invalid("no CERTIFICATE block found".to_owned()));
    }
    Ok(certs)
}

fn parse_private_key(path: &Path, pem: &[u8]) -> Result<PrivateKeyDer<'static>, TransportError> {
    let invalid = |reason: String| TransportError::InvalidFile {
        path: path.to_owned(),
        what: "PEM private key",
        reason,
    };
    let key = rustls_pemfile::private_key(&mut &pem[..])
        .map_err(|e| invalid(e.to_string()))?
        .ok_or_else(|| invalid("no PRIVATE KEY block found".to_owned()))?;
    provider()
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| invalid(e.to_string()))?;
    Ok(key)
}

pub(crate) fn load_rcgen_key(path: &Path) -> Result<KeyPair, TransportError> {
    let pem = read_string(path)?;
    KeyPair::from_pem(&pem).map_err(|e| TransportError::InvalidFile {
        path: path.to_owned(),
        what: "PKCS#8 PEM private key",
        reason: e.to_string(),
    })
}

/// Whether `path` exists; an error (e.g. permission denied) is not taken as "absent", since
/// that would lead to generating, and overwriting, key material.
fn exists(path: &Path) -> Result<bool, TransportError> {
    path.try_exists().map_err(|source| TransportError::File {
        action: "inspect",
        path: path.to_owned(),
        source,
    })
}

fn read(path: &Path) -> Result<Vec<u8>, TransportError> {
    fs::read(path).map_err(|source| TransportError::File {
        action: "read",
        path: path.to_owned(),
        source,
    })
}

fn read_string(path: &Path) -> Result<String, TransportError> {
    String::from_utf8(read(path)?).map_err(|_| TransportError::InvalidFile {
        path: path.to_owned(),
        what: "PEM file",
        reason: "not UTF-8 text".to_owned(),
    })
}

/// Writes a new file atomically (temporary file, fsync, rename, fsync of the directory), so
/// a crash never leaves a half-written key that a later start would refuse.
fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), TransportError> {
    let err = |action, path: &Path| {
        let path = path.to_owned();
        move |source| TransportError::File {
            action,
            path,
            source,
        }
    };
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    // A leftover from a crash may carry other permissions; create_new below needs it gone.
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(err("remove", &tmp)(e)),
        _ => {}
    }
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // Set at creation, so the key is never readable by others even for an instant.
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(&tmp).map_err(err("create", &tmp))?;
    file.write_all(contents).map_err(err("write", &tmp))?;
    file.sync_all().map_err(err("sync", &tmp))?;
    drop(file);
    fs::rename(&tmp, path).map_err(err("rename into place", path))?;
    if let Some(dir) = path.parent() {
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(err("sync directory", dir))?;
    }
    Ok(())
}

fn warn_if_readable_by_others(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = fs::metadata(path)
            && meta.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(path = %path.display(), "private key is accessible to other users; chmod 600 it");
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}
