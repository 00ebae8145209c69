//! The listener's TLS: the server's certificate and key, and with a client
//! CA, mutual TLS whose client certificate subject is recorded with each
//! call.

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, Identity, ServerTlsConfig};

/// Where the listener's TLS material is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The server's certificate chain (PEM).
    pub cert_file: PathBuf,
    /// Its private key (PEM).
    pub key_file: PathBuf,
    /// With mutual TLS: the CA that signs client certificates (PEM).
    pub client_ca_file: Option<PathBuf>,
}

/// A TLS file that cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read {}: {source}", path.display())]
pub struct TlsFileError {
    /// The file.
    pub path: PathBuf,
    /// The OS error.
    pub source: std::io::Error,
}

fn read(path: &Path) -> Result<Vec<u8>, TlsFileError> {
    std::fs::read(path).map_err(|source| TlsFileError {
        path: path.to_owned(),
        source,
    })
}

impl TlsFiles {
    /// The server's TLS settings (the files are checked by the TLS
    /// library when the server is built).
    pub fn server_config(&self) -> Result<ServerTlsConfig, TlsFileError> {
        let identity = Identity::from_pem(read(&self.cert_file)?, read(&self.key_file)?);
        // A peer that never finishes its handshake gives its connection
        // slot back after this.
        let mut config = ServerTlsConfig::new()
            .identity(identity)
            .timeout(std::time::Duration::from_secs(10));
        if let Some(ca) = &self.client_ca_file {
            config = config.client_ca_root(Certificate::from_pem(read(ca)?));
        }
        Ok(config)
    }
}

/// Builds the server's TLS from `files` as serving would (the certificate
/// and key parsed, the client CA read), so bad files are found before the
/// listener starts; the error names the cause.
pub fn check_tls(files: &TlsFiles) -> Result<(), crate::ServeError> {
    tonic::transport::Server::builder().tls_config(files.server_config()?)?;
    Ok(())
}

/// The client certificate a call came with (mutual TLS): its subject, with
/// control and bidi characters escaped, and its SHA-256 fingerprint (a
/// subject alone can be made to read like another: the fingerprint cannot).
pub fn client_subject<T>(req: &tonic::Request<T>) -> Option<String> {
    use sha2::Digest as _;
    let certs = req.peer_certs()?;
    let leaf = certs.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    Some(format!(
        "{} (sha256 {})",
        keyward_api::printable(&cert.subject().to_string()),
        hex::encode(sha2::Sha256::digest(leaf.as_ref()))
    ))
}
