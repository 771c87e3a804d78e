//! Who may talk to the daemon: the rule that a listener off loopback needs TLS or a token,
//! bearer tokens read from files and compared in constant time, and Unix-socket peer
//! credentials (`SO_PEERCRED`) checked against allow-lists.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::config::{Config, ConfigErrorKind, Problem, ServerConfig};

/// Shortest token accepted: long enough that guessing is hopeless.
pub const MIN_TOKEN_LEN: usize = 16;

/// The binary-protocol server checks `server.auth_token_file` (the token in HELLO,
/// docs/protocol.md §7.4). Kept as a constant for the config tests that branch on it.
pub const BINARY_TOKEN_ENFORCED: bool = true;

/// The binary-protocol server calls [`peer_allowed`] at accept on the Unix socket.
pub const PEER_CRED_ENFORCED: bool = true;

/// A shared secret clients must present: in HTTP as `Authorization: Bearer <token>`, in the
/// binary protocol in HELLO (see docs/config.md).
#[derive(Clone)]
pub struct Token(Vec<u8>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// Why a token file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} is readable or writable by other users (mode {mode:04o}); chmod 0600 or 0640 it"
    )]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("{path} holds {len} bytes of token; at least {MIN_TOKEN_LEN} are required")]
    TooShort { path: PathBuf, len: usize },
    #[error("{path}: the token must be one line of printable ASCII")]
    NotPrintable { path: PathBuf },
}

impl Token {
    /// Reads a token file: one line of printable ASCII (surrounding whitespace trimmed), at
    /// least [`MIN_TOKEN_LEN`] bytes, in a file other users can neither read nor write.
    pub fn from_file(path: &Path) -> Result<Token, TokenError> {
        let io = |source| TokenError::Io {
            path: path.to_owned(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(io)?;
        let mode = meta.mode() & 0o777;
        if mode & 0o007 != 0 || mode & 0o020 != 0 {
            return Err(TokenError::TooOpen {
                path: path.to_owned(),
                mode,
            });
        }
        let raw = std::fs::read(path).map_err(io)?;
        let text = raw.trim_ascii();
        if !text.iter().all(|b| b.is_ascii_graphic()) {
            return Err(TokenError::NotPrintable {
                path: path.to_owned(),
            });
        }
        if text.len() < MIN_TOKEN_LEN {
            return Err(TokenError::TooShort {
                path: path.to_owned(),
                len: text.len(),
            });
        }
        Ok(Token(text.to_vec()))
    }

    /// Compares in constant time (`subtle`), so the token cannot be guessed byte by byte
    /// from response times. A length mismatch is a mismatch whatever the lengths (only the
    /// lengths themselves can show in the timing).
    pub fn matches(&self, presented: &[u8]) -> bool {
        use subtle::ConstantTimeEq;
        bool::from(self.0.as_slice().ct_eq(presented))
    }

    /// Checks an HTTP `Authorization` header value.
    pub fn matches_bearer(&self, header: Option<&[u8]>) -> bool {
        match header {
            Some(h) if h.len() > 7 && h[..7].eq_ignore_ascii_case(b"bearer ") => {
                self.matches(h[7..].trim_ascii())
            }
            _ => false,
        }
    }
}

/// True for addresses only this box can reach.
pub fn is_loopback(addr: &SocketAddr) -> bool {
    match addr {
        SocketAddr::V4(a) => a.ip().is_loopback(),
        SocketAddr::V6(a) => {
            a.ip().is_loopback() || a.ip().to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// The security half of [`Config::validate`].
pub(crate) fn validate(c: &Config, out: &mut Vec<Problem>) {
    let mut push = |kind, key: &str, message: String| {
        out.push(Problem {
            kind,
            key: key.to_owned(),
            message,
        })
    };

    // Files named at all must be usable, on loopback too: a typo should not wait for the
    // day the listener moves.
    let token_ok =
        |key: &str, file: &Option<PathBuf>, push: &mut dyn FnMut(ConfigErrorKind, &str, String)| {
            match file {
                Some(f) => match Token::from_file(f) {
                    Ok(_) => true,
                    Err(e) => {
                        push(ConfigErrorKind::Invalid, key, e.to_string());
                        false
                    }
                },
                None => false,
            }
        };

    // Binary protocol.
    let s = &c.server;
    let server_token = token_ok("server.auth_token_file", &s.auth_token_file, &mut push);
    if s.tls_cert.is_some() || s.tls_key.is_some() {
        push(
            ConfigErrorKind::Invalid,
            if s.tls_cert.is_some() { "server.tls_cert" } else { "server.tls_key" },
            "TLS on the binary protocol is not implemented: use server.auth_token_file, and a Unix socket or a \
             secured network for confidentiality"
                .into(),
        );
    }
    if let Some(addr) = s.tcp.filter(|a| !is_loopback(a)) {
        if !server_token && s.auth_token_file.is_none() {
            push(
                ConfigErrorKind::Insecure,
                "server.tcp",
                format!(
                    "{addr} is reachable from other machines; refusing to serve it without server.auth_token_file \
                     (or bind 127.0.0.1)"
                ),
            );
        }
    }

    // HTTP.
    let h = &c.http;
    let http_token = token_ok("http.auth_token_file", &h.auth_token_file, &mut push);
    let tls = match (&h.tls_cert, &h.tls_key) {
        (None, None) => false,
        (Some(_), None) => {
            push(
                ConfigErrorKind::Invalid,
                "http.tls_key",
                "is required with http.tls_cert".into(),
            );
            false
        }
        (None, Some(_)) => {
            push(
                ConfigErrorKind::Invalid,
                "http.tls_cert",
                "is required with http.tls_key".into(),
            );
            false
        }
        (Some(cert), Some(key)) => match tls_server_config(cert, key) {
            Ok(_) => true,
            Err(e) => {
                push(ConfigErrorKind::Invalid, e.key(), e.to_string());
                false
            }
        },
    };
    if let Some(addr) = h.listen.filter(|a| !is_loopback(a)) {
        if !tls && !http_token && h.auth_token_file.is_none() {
            push(
                ConfigErrorKind::Insecure,
                "http.listen",
                format!(
                    "{addr} is reachable from other machines; refusing to serve it without http.auth_token_file or \
                     http.tls_cert/http.tls_key (or bind 127.0.0.1)"
                ),
            );
        }
    }
}

// === TLS ===

/// Why a certificate or key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {message}")]
    Cert { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Key { path: PathBuf, message: String },
    #[error("the certificate and key do not go together: {0}")]
    Mismatch(String),
}

impl TlsError {
    /// The config key to blame.
    pub fn key(&self) -> &'static str {
        match self {
            TlsError::Cert { .. } | TlsError::Mismatch(_) => "http.tls_cert",
            TlsError::Key { .. } => "http.tls_key",
        }
    }
}

/// A rustls server configuration from PEM files: the certificate chain (leaf first) and its
/// private key (PKCS#8, PKCS#1 or SEC1). TLS 1.2 and 1.3 with rustls' safe defaults; HTTP/1.1
/// by ALPN.
pub fn tls_server_config(
    cert: &Path,
    key: &Path,
) -> Result<std::sync::Arc<tokio_rustls::rustls::ServerConfig>, TlsError> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let cert_err = |message: String| TlsError::Cert {
        path: cert.to_owned(),
        message,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| cert_err(format!("cannot read certificates: {e}")))?
        .collect::<Result<_, _>>()
        .map_err(|e| cert_err(format!("not a PEM certificate chain: {e}")))?;
    if certs.is_empty() {
        return Err(cert_err("holds no PEM certificate".into()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.to_owned(),
        message: format!("not a PEM private key: {e}"),
    })?;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Mismatch(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Mismatch(e.to_string()))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(std::sync::Arc::new(cfg))
}

// === Peer credentials ===

/// Credentials of the process at the other end of a Unix socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCred {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
}

/// `SO_PEERCRED` of a connected Unix socket.
pub fn peer_cred(fd: &impl AsRawFd) -> std::io::Result<PeerCred> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are live, correctly sized out-parameters for SO_PEERCRED.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(PeerCred {
        pid: cred.pid,
        uid: cred.uid,
        gid: cred.gid,
    })
}

/// Whether a peer's credentials pass the allow-lists: with both lists empty everyone the
/// socket's file permissions let in passes; otherwise the uid must be in `allowed_uids` or
/// the (primary) gid in `allowed_gids`. Root is not special.
pub fn cred_allowed(cred: PeerCred, cfg: &ServerConfig) -> bool {
    (cfg.allowed_uids.is_empty() && cfg.allowed_gids.is_empty())
        || cfg.allowed_uids.contains(&cred.uid)
        || cfg.allowed_gids.contains(&cred.gid)
}

/// The check the server runs at accept on a Unix connection (when either list is
/// non-empty): the uid in `uids` or the primary gid in `gids`. Unreadable credentials fail.
pub fn peer_in_lists(fd: &impl AsRawFd, uids: &[u32], gids: &[u32]) -> bool {
    match peer_cred(fd) {
        Ok(c) => uids.contains(&c.uid) || gids.contains(&c.gid),
        Err(_) => false,
    }
}

/// The config-level form of the accept check. A socket whose credentials
/// cannot be read is refused when allow-lists are configured.
pub fn peer_allowed(fd: &impl AsRawFd, cfg: &ServerConfig) -> bool {
    if cfg.allowed_uids.is_empty() && cfg.allowed_gids.is_empty() {
        return true;
    }
    match peer_cred(fd) {
        Ok(c) => cred_allowed(c, cfg),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn token_file(dir: &Path, text: &str, mode: u32) -> PathBuf {
        let p = dir.join(format!("token-{mode:o}-{}", text.len()));
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn token_files_are_checked() {
        let d = tempfile::tempdir().unwrap();
        let good = token_file(d.path(), "s3cret-token-0123456789\n", 0o600);
        let t = Token::from_file(&good).unwrap();
        assert!(t.matches(b"s3cret-token-0123456789"));
        assert!(!t.matches(b"s3cret-token-012345678"));
        assert!(!t.matches(b"s3cret-token-01234567890"));
        assert!(!t.matches(b""));
        assert!(t.matches_bearer(Some(b"Bearer s3cret-token-0123456789")));
        assert!(t.matches_bearer(Some(b"bearer s3cret-token-0123456789 ")));
        assert!(!t.matches_bearer(Some(b"Basic s3cret-token-0123456789")));
        assert!(!t.matches_bearer(None));
        assert!(matches!(
            Token::from_file(&token_file(d.path(), "s3cret-token-0123456789", 0o644)),
            Err(TokenError::TooOpen { mode: 0o644, .. })
        ));
        assert!(matches!(
            Token::from_file(&token_file(d.path(), "short", 0o600)),
            Err(TokenError::TooShort { .. })
        ));
        assert!(matches!(
            Token::from_file(&token_file(d.path(), "two words in one token", 0o600)),
            Err(TokenError::NotPrintable { .. })
        ));
        assert!(matches!(
            Token::from_file(&d.path().join("missing")),
            Err(TokenError::Io { .. })
        ));
        assert_eq!(format!("{t:?}"), "Token(<redacted>)");
    }

    #[test]
    fn a_longer_presentation_never_matches() {
        // The old compare folded the length difference into 16 bits: the token followed by
        // 65,536 extra bytes matched.
        let t = Token(b"s3cret-token-0123456789".to_vec());
        let mut long = t.0.clone();
        long.resize(t.0.len() + 65_536, 0);
        assert!(!t.matches(&long));
        long.truncate(t.0.len() + 256);
        assert!(!t.matches(&long));
        let mut shifted = t.0.clone();
        shifted.extend(std::iter::repeat_n(b'x', 1 << 16));
        assert!(!t.matches(&shifted));
        assert!(t.matches(&t.0.clone()));
        // One wrong byte anywhere.
        for i in 0..t.0.len() {
            let mut w = t.0.clone();
            w[i] ^= 1;
            assert!(!t.matches(&w), "byte {i}");
        }
    }

    #[test]
    fn loopback_addresses() {
        for a in [
            "127.0.0.1:1",
            "127.9.9.9:1",
            "[::1]:1",
            "[::ffff:127.0.0.1]:1",
        ] {
            assert!(is_loopback(&a.parse().unwrap()), "{a}");
        }
        for a in ["0.0.0.0:1", "10.0.0.1:1", "[::]:1", "[fe80::1]:1"] {
            assert!(!is_loopback(&a.parse().unwrap()), "{a}");
        }
    }

    #[test]
    fn peer_credentials_against_allow_lists() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let me = peer_cred(&a).unwrap();
        // SAFETY: plain getters.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        assert_eq!(
            (me.uid, me.gid, me.pid),
            (uid, gid, std::process::id() as i32)
        );

        let mut cfg = ServerConfig::default();
        assert!(
            peer_allowed(&a, &cfg),
            "no allow-lists: permissions alone decide"
        );
        cfg.allowed_uids = vec![uid.wrapping_add(1)];
        assert!(!peer_allowed(&a, &cfg));
        cfg.allowed_gids = vec![gid];
        assert!(peer_allowed(&a, &cfg), "gid listed");
        cfg.allowed_gids = vec![];
        cfg.allowed_uids.push(uid);
        assert!(peer_allowed(&a, &cfg), "uid listed");

        // Not a Unix socket: credentials unreadable, refused when lists are set.
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(!peer_allowed(&tcp, &cfg));
    }
}
