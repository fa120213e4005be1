//! The cluster's keys: a certificate authority and the certificates it
//! issues to the nodes and the manager (`handoff keys init`, `handoff keys
//! issue`). rcgen generates ECDSA P-256 keys and X.509 certificates (RFC
//! 5280); nothing here is hand-written cryptography.
//!
//! Files in the key directory: `ca.pem`, `ca.key`; `node-<id>.pem`,
//! `node-<id>.key`; `manager.pem`, `manager.key`. Keys are created mode
//! 0600 and never overwritten.

use super::tls::{node_name, TlsPaths, MANAGER_NAME};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use std::{
    fs::OpenOptions,
    io::{self, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

/// Key generation failed.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    /// A file could not be read or written (an existing file is refused).
    #[error("{path}: {source}")]
    File {
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// rcgen failed (a malformed CA file, a bad name).
    #[error("{what}: {source}")]
    Certificate {
        /// What was being done.
        what: String,
        /// Cause.
        #[source]
        source: rcgen::Error,
    },
}

/// Whose certificate to issue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Party {
    /// A node, by member id.
    Node(u16),
    /// The migration manager (the edge daemon).
    Manager,
}

impl Party {
    /// The identity name the certificate carries.
    pub fn name(self) -> String {
        match self {
            Self::Node(id) => node_name(id),
            Self::Manager => MANAGER_NAME.into(),
        }
    }

    fn stem(self) -> String {
        match self {
            Self::Node(id) => format!("node-{id}"),
            Self::Manager => "manager".into(),
        }
    }

    /// Where `handoff keys issue` puts this party's files in `dir`.
    pub fn paths(self, dir: &Path) -> TlsPaths {
        TlsPaths {
            ca: dir.join(CA_CERT),
            cert: dir.join(format!("{}.pem", self.stem())),
            key: dir.join(format!("{}.key", self.stem())),
        }
    }
}

/// The CA certificate's file name in the key directory.
pub const CA_CERT: &str = "ca.pem";
/// The CA key's file name in the key directory.
pub const CA_KEY: &str = "ca.key";

/// Creates `path` (never overwriting) with `mode` and writes `contents`.
fn create(path: &Path, mode: u32, contents: &str) -> Result<(), KeysError> {
    let file_error = |source| KeysError::File {
        path: path.into(),
        source,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(file_error)?;
    file.write_all(contents.as_bytes()).map_err(file_error)
}

fn read(path: &Path) -> Result<String, KeysError> {
    std::fs::read_to_string(path).map_err(|source| KeysError::File {
        path: path.into(),
        source,
    })
}

fn rcgen_error(what: impl Into<String>) -> impl FnOnce(rcgen::Error) -> KeysError {
    let what = what.into();
    move |source| KeysError::Certificate { what, source }
}

/// Creates the cluster CA in `dir` (created if missing): `ca.pem` (0644)
/// and `ca.key` (0600). Returns the certificate's path.
pub fn init(dir: &Path) -> Result<PathBuf, KeysError> {
    std::fs::create_dir_all(dir).map_err(|source| KeysError::File {
        path: dir.into(),
        source,
    })?;
    let key = KeyPair::generate().map_err(rcgen_error("generating the CA key"))?;
    let mut params = CertificateParams::default();
    params.distinguished_name.push(
        DnType::CommonName,
        format!("handoff cluster CA ({})", super::tls::CLUSTER_DOMAIN),
    );
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params.self_signed(&key).map_err(rcgen_error("signing the CA"))?;
    create(&dir.join(CA_KEY), 0o600, &key.serialize_pem())?;
    let ca = dir.join(CA_CERT);
    create(&ca, 0o644, &cert.pem())?;
    Ok(ca)
}

/// Issues `party`'s certificate and key with the CA in `dir`; returns where
/// they are (the paths a `[tls]` section names).
pub fn issue(dir: &Path, party: Party) -> Result<TlsPaths, KeysError> {
    let paths = party.paths(dir);
    let ca_key = KeyPair::from_pem(&read(&dir.join(CA_KEY))?).map_err(rcgen_error("reading the CA key"))?;
    let issuer = Issuer::from_ca_cert_pem(&read(&paths.ca)?, ca_key).map_err(rcgen_error("reading the CA"))?;
    let name = party.name();
    let key = KeyPair::generate().map_err(rcgen_error("generating a key"))?;
    let mut params = CertificateParams::new(vec![name.clone()]).map_err(rcgen_error(format!("the name {name}")))?;
    params.distinguished_name.push(DnType::CommonName, name.clone());
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    // Nodes are servers to their peers and clients of them; the manager is
    // a server. Both usages keep one certificate per party.
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(rcgen_error(format!("signing {name}")))?;
    create(&paths.key, 0o600, &key.serialize_pem())?;
    create(&paths.cert, 0o644, &cert.pem())?;
    Ok(paths)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::control::tls::{TlsError, TlsIdentity};
    use std::os::unix::fs::PermissionsExt;

    /// A fresh directory under the system's temporary directory.
    pub fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "handoff-keys-{tag}-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A fresh CA and the loaded identities of `parties` under it.
    pub fn identities(tag: &str, parties: &[Party]) -> Vec<TlsIdentity> {
        let dir = temp_dir(tag);
        init(&dir).unwrap();
        let loaded = parties
            .iter()
            .map(|&p| TlsIdentity::load(&issue(&dir, p).unwrap(), &p.name()).unwrap())
            .collect();
        std::fs::remove_dir_all(&dir).unwrap();
        loaded
    }

    #[test]
    fn issued_certificates_load_for_their_identity_only_and_keys_are_private() {
        let dir = temp_dir("issue");
        init(&dir).unwrap();
        let node = issue(&dir, Party::Node(3)).unwrap();
        let manager = issue(&dir, Party::Manager).unwrap();
        for key in [dir.join(CA_KEY), node.key.clone(), manager.key.clone()] {
            let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", key.display());
        }
        assert_eq!(
            TlsIdentity::load(&node, &node_name(3)).unwrap().name(),
            "node-3.handoff.cluster"
        );
        TlsIdentity::load(&manager, MANAGER_NAME).unwrap();
        assert!(matches!(
            TlsIdentity::load(&node, &node_name(4)),
            Err(TlsError::NotIssued { .. })
        ));
        // Nothing is overwritten.
        assert!(matches!(init(&dir), Err(KeysError::File { .. })));
        assert!(matches!(issue(&dir, Party::Node(3)), Err(KeysError::File { .. })));

        // A certificate of another CA does not load against this one.
        let other = temp_dir("other");
        init(&other).unwrap();
        let foreign = issue(&other, Party::Node(3)).unwrap();
        let mixed = TlsPaths {
            ca: node.ca.clone(),
            ..foreign
        };
        assert!(matches!(
            TlsIdentity::load(&mixed, &node_name(3)),
            Err(TlsError::NotIssued { .. })
        ));
        // A key that is not the certificate's.
        let wrong_key = TlsPaths {
            key: manager.key.clone(),
            ..node
        };
        assert!(TlsIdentity::load(&wrong_key, &node_name(3)).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
        std::fs::remove_dir_all(&other).unwrap();
    }
}
