//! The local CA that signs per-host leaf certificates for TLS interception.
//!
//! `<home>/ca/ca.pem` and `ca.key` (0600); `ca/public/ca.pem` and
//! `ca/public/bundle.pem` (the system roots plus this CA) are what children
//! are told to trust.

use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
};
use rustls::ServerConfig;
use rustls::sign::CertifiedKey;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// Leaf certificates kept in memory at most.
const LEAF_CACHE: usize = 10_000;
/// TLS sessions intercepted tunnels may resume, all hosts together (rustls
/// checks that a resumed session's SNI is the one it began with).
const TLS_SESSIONS: usize = 4_096;

/// Why the CA cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// A file step failed.
    #[error("{what}: {source}")]
    Io {
        /// The step, naming the file.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Generating or parsing a certificate failed.
    #[error("{0}")]
    Cert(String),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> CaError {
    let what = what.into();
    move |source| CaError::Io { what, source }
}

/// The CA and its leaf cache.
pub struct CertificateAuthority {
    dir: PathBuf,
    signer: std::sync::RwLock<Arc<Signer>>,
    /// Leaves by host: the certificate chain and the shared key, about
    /// 1 KB each.
    leaves: Mutex<HashMap<String, Arc<CertifiedKey>>>,
    /// What the TLS server of every intercepted tunnel shares, its leaf
    /// aside: ALPN and one session cache. A server config per cached leaf
    /// would carry a session cache of its own (rustls allocates room for
    /// 256 sessions up front, ~12 KB), which was most of the cache's memory.
    tls: ServerConfig,
    public_dir: PathBuf,
}

/// The CA key material in use; replaced whole by a rotation.
struct Signer {
    issuer: Issuer<'static, KeyPair>,
    ca_der: CertificateDer<'static>,
    /// Made on first use (or by the warm-up thread): the first random
    /// numbers of the process seed aws-lc's entropy pool, which takes tens
    /// of milliseconds that start-up should not wait for.
    leaf: std::sync::OnceLock<Result<LeafKey, String>>,
}

/// The in-memory key every leaf certificate shares.
struct LeafKey {
    key: KeyPair,
    signing: Arc<dyn rustls::sign::SigningKey>,
}

impl Signer {
    fn leaf(&self) -> Result<&LeafKey, CaError> {
        self.leaf
            .get_or_init(|| {
                let key =
                    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| e.to_string())?;
                let signing = rustls::crypto::aws_lc_rs::sign::any_supported_type(
                    &PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
                )
                .map_err(|e| e.to_string())?;
                Ok(LeafKey { key, signing })
            })
            .as_ref()
            .map_err(|e| CaError::Cert(e.clone()))
    }

    /// Makes the leaf key on its own thread.
    fn warm(self: &Arc<Self>) {
        let signer = self.clone();
        std::thread::spawn(move || {
            let _ = signer.leaf();
        });
    }
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("public_dir", &self.public_dir)
            .finish_non_exhaustive()
    }
}

fn cert_err(e: impl std::fmt::Display) -> CaError {
    CaError::Cert(e.to_string())
}

impl CertificateAuthority {
    /// Loads the CA in `dir`, creating it (ECDSA P-256, 10 years) on first use.
    pub fn load_or_create(dir: &Path) -> Result<Self, CaError> {
        let (signer, cert_pem) = load_signer(dir)?;
        let public_dir = dir.join("public");
        let previous = previous_pem(dir);
        let tail = format!("{cert_pem}{}", previous.as_deref().unwrap_or(""));
        let current = fs::read_to_string(public_dir.join("bundle.pem"))
            .is_ok_and(|b| b.ends_with(&tail))
            && fs::read_to_string(public_dir.join("ca.pem")).is_ok_and(|c| c == cert_pem);
        if current {
            // The bundle children trust is already there: refresh its
            // system roots in the background, off the start-up path.
            let (dir, public_dir) = (dir.to_owned(), public_dir.clone());
            std::thread::spawn(move || {
                let cert_pem = fs::read_to_string(dir.join("ca.pem")).unwrap_or(cert_pem);
                if let Err(e) = write_public(&public_dir, &cert_pem, previous_pem(&dir).as_deref())
                {
                    tracing::warn!("cannot refresh the trust bundle: {e}");
                }
            });
        } else {
            write_public(&public_dir, &cert_pem, previous.as_deref())?;
        }
        let signer = Arc::new(signer);
        signer.warm();
        Ok(Self {
            dir: dir.to_owned(),
            signer: std::sync::RwLock::new(signer),
            leaves: Mutex::new(HashMap::new()),
            tls: tunnel_tls(),
            public_dir,
        })
    }

    /// Replaces the CA with a new one and flushes the leaf cache. The old
    /// certificate is kept as `ca.previous.pem` and stays in the trust
    /// bundle, so running children keep working until they restart.
    pub fn rotate(&self) -> Result<(), CaError> {
        let cert = self.dir.join("ca.pem");
        let key = self.dir.join("ca.key");
        fs::rename(&cert, self.dir.join("ca.previous.pem"))
            .map_err(io_err(format!("cannot move {} aside", cert.display())))?;
        fs::remove_file(&key).map_err(io_err(format!("cannot remove {}", key.display())))?;
        let (signer, cert_pem) = load_signer(&self.dir)?;
        write_public(
            &self.public_dir,
            &cert_pem,
            previous_pem(&self.dir).as_deref(),
        )?;
        let signer = Arc::new(signer);
        signer.warm();
        *self.signer.write().unwrap_or_else(|p| p.into_inner()) = signer;
        self.leaves
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        Ok(())
    }

    /// `ca/public/ca.pem`.
    pub fn public_cert_path(&self) -> PathBuf {
        self.public_dir.join("ca.pem")
    }

    /// `ca/public/bundle.pem`: system roots plus this CA.
    pub fn bundle_path(&self) -> PathBuf {
        self.public_dir.join("bundle.pem")
    }

    /// The TLS server config of one tunnel to `host`: it presents the leaf
    /// for `host` (minted on first use and cached) whatever name the client
    /// sends in SNI, or without one. The tunnel's requests go to `host`,
    /// so that is the name its certificate must carry; a client cannot get
    /// a leaf for a name it did not CONNECT to (and the network rules
    /// passed).
    pub fn server_config(&self, host: &str) -> Result<Arc<ServerConfig>, CaError> {
        let mut cfg = self.tls.clone();
        cfg.cert_resolver = Arc::new(FixedCert(self.leaf(host)?));
        Ok(Arc::new(cfg))
    }

    fn leaf(&self, host: &str) -> Result<Arc<CertifiedKey>, CaError> {
        let host = host.to_ascii_lowercase();
        if let Some(leaf) = self
            .leaves
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&host)
        {
            return Ok(leaf.clone());
        }
        let leaf = Arc::new(self.mint(&host)?);
        let mut leaves = self.leaves.lock().unwrap_or_else(|p| p.into_inner());
        if leaves.len() >= LEAF_CACHE {
            leaves.clear();
        }
        leaves.insert(host, leaf.clone());
        Ok(leaf)
    }

    fn mint(&self, host: &str) -> Result<CertifiedKey, CaError> {
        let signer = self
            .signer
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut params = CertificateParams::default();
        // An IPv6 authority comes bracketed (`[::1]`).
        let ip = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        params.subject_alt_names = vec![match ip.parse::<std::net::IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(host.try_into().map_err(cert_err)?),
        }];
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, host);
        params.distinguished_name = dn;
        let now = SystemTime::now();
        params.not_before = (now - Duration::from_secs(86_400)).into();
        params.not_after = (now + Duration::from_secs(30 * 86_400)).into();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let leaf_key = signer.leaf()?;
        let leaf = params
            .signed_by(&leaf_key.key, &signer.issuer)
            .map_err(cert_err)?;
        let chain = vec![leaf.der().clone(), signer.ca_der.clone()];
        Ok(CertifiedKey::new(chain, leaf_key.signing.clone()))
    }
}

/// The TLS server config intercepted tunnels share; each tunnel's copy
/// gets its leaf (copying it costs a few reference counts and the ALPN
/// list, not a session cache).
fn tunnel_tls() -> ServerConfig {
    // No certificate of its own (an empty resolver presents none): every
    // copy gets its tunnel's leaf.
    let mut cfg = ServerConfig::builder()
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(rustls::server::ResolvesServerCertUsingSni::new()));
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    cfg.session_storage = rustls::server::ServerSessionMemoryCache::new(TLS_SESSIONS);
    cfg
}

/// Reads (creating if absent) the CA in `dir`; the in-memory key for the
/// leaves is made on first use.
fn load_signer(dir: &Path) -> Result<(Signer, String), CaError> {
    let cert_path = dir.join("ca.pem");
    let key_path = dir.join("ca.key");
    if !cert_path.exists() {
        create(dir)?;
    }
    let cert_pem = fs::read_to_string(&cert_path)
        .map_err(io_err(format!("cannot read {}", cert_path.display())))?;
    let key_pem = fs::read_to_string(&key_path)
        .map_err(io_err(format!("cannot read {}", key_path.display())))?;
    let key = KeyPair::from_pem(&key_pem)
        .map_err(|e| CaError::Cert(format!("{} is not a usable key: {e}", key_path.display())))?;
    let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|e| {
        CaError::Cert(format!(
            "{} is not a usable CA certificate: {e}",
            cert_path.display()
        ))
    })?;
    let ca_der = rustls_pki_types::pem::PemObject::from_pem_slice(cert_pem.as_bytes())
        .map_err(|e| CaError::Cert(format!("{}: {e}", cert_path.display())))?;
    Ok((
        Signer {
            issuer,
            ca_der,
            leaf: std::sync::OnceLock::new(),
        },
        cert_pem,
    ))
}

/// The system's trusted roots, loaded once per process: reading them can
/// take tens of milliseconds (more where `SSL_CERT_DIR` names a directory of
/// many files).
pub fn system_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: std::sync::OnceLock<Vec<CertificateDer<'static>>> = std::sync::OnceLock::new();
    ROOTS.get_or_init(|| rustls_native_certs::load_native_certs().certs)
}

fn previous_pem(dir: &Path) -> Option<String> {
    fs::read_to_string(dir.join("ca.previous.pem")).ok()
}

/// A throwaway CA and a leaf for one host signed by it, all PEM: the
/// identity of a local HTTPS service (the demo's, tests', benches').
#[derive(Clone)]
pub struct ServiceIdentity {
    /// The CA certificate to trust.
    pub ca_pem: String,
    /// The leaf certificate.
    pub cert_pem: String,
    /// The leaf's private key (PKCS#8).
    pub key_pem: String,
}

impl std::fmt::Debug for ServiceIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceIdentity").finish_non_exhaustive()
    }
}

impl ServiceIdentity {
    /// Mints a CA and a leaf for `host`.
    pub fn new(host: &str) -> Result<Self, CaError> {
        Self::for_names(&[host])
    }

    /// Like [`ServiceIdentity::new`], with a leaf valid for several names
    /// (host names or IP addresses).
    pub fn for_names(names: &[&str]) -> Result<Self, CaError> {
        let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(cert_err)?;
        let mut ca_params = CertificateParams::default();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "local service test CA");
        ca_params.distinguished_name = dn;
        let ca_cert = ca_params.self_signed(&ca_key).map_err(cert_err)?;
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(cert_err)?;
        let leaf =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .map_err(cert_err)?
                .signed_by(&leaf_key, &issuer)
                .map_err(cert_err)?;
        Ok(Self {
            ca_pem: ca_cert.pem(),
            cert_pem: leaf.pem(),
            key_pem: leaf_key.serialize_pem(),
        })
    }

    /// A rustls server config presenting the leaf, offering `alpn`.
    pub fn server_config(&self, alpn: &[&[u8]]) -> Result<ServerConfig, CaError> {
        let cert: CertificateDer<'static> =
            rustls_pki_types::pem::PemObject::from_pem_slice(self.cert_pem.as_bytes())
                .map_err(cert_err)?;
        let key: PrivateKeyDer<'static> =
            rustls_pki_types::pem::PemObject::from_pem_slice(self.key_pem.as_bytes())
                .map_err(cert_err)?;
        let mut cfg = ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .map_err(cert_err)?;
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(cfg)
    }
}

/// Presents one certificate whatever the SNI: the leaf is minted for the
/// CONNECT target, which is where the tunnel's requests go.
#[derive(Debug)]
struct FixedCert(Arc<CertifiedKey>);

impl rustls::server::ResolvesServerCert for FixedCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

fn create(dir: &Path) -> Result<(), CaError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err(format!("cannot create {}", dir.display())))?;
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(cert_err)?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "keyward local CA");
    dn.push(DnType::OrganizationName, "keyward");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = SystemTime::now();
    params.not_before = (now - Duration::from_secs(86_400)).into();
    params.not_after = (now + Duration::from_secs(10 * 365 * 86_400)).into();
    let cert = params.self_signed(&key).map_err(cert_err)?;
    write_new(&dir.join("ca.key"), key.serialize_pem().as_bytes())?;
    write_new(&dir.join("ca.pem"), cert.pem().as_bytes())?;
    Ok(())
}

fn write_new(path: &Path, bytes: &[u8]) -> Result<(), CaError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(format!("cannot create {}", path.display())))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(io_err(format!("cannot write {}", path.display())))
}

/// Writes the files children trust: the CA alone and a bundle of the
/// system roots plus the CA (and the previous CA after a rotation).
fn write_public(dir: &Path, ca_pem: &str, previous: Option<&str>) -> Result<(), CaError> {
    // A background refresh and a rotation must not interleave: whichever
    // writes last writes a complete bundle.
    static WRITING: Mutex<()> = Mutex::new(());
    let _writing = WRITING.lock().unwrap_or_else(|p| p.into_inner());
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err(format!("cannot create {}", dir.display())))?;
    let mut bundle = String::new();
    for cert in system_roots() {
        bundle.push_str(&pem("CERTIFICATE", cert.as_ref()));
    }
    bundle.push_str(ca_pem);
    if let Some(previous) = previous {
        bundle.push_str(previous);
    }
    keyward_write(&dir.join("ca.pem"), ca_pem.as_bytes())?;
    keyward_write(&dir.join("bundle.pem"), bundle.as_bytes())
}

fn keyward_write(path: &Path, bytes: &[u8]) -> Result<(), CaError> {
    if fs::read(path).is_ok_and(|old| old == bytes) {
        return Ok(());
    }
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, bytes)
        .and_then(|()| fs::rename(&tmp, path))
        .map_err(io_err(format!("cannot write {}", path.display())))
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}
