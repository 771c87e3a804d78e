//! Transports for TUF files: a local directory or HTTP. Untrusted: only sizes are
//! enforced here (the caps come from the caller); all trust decisions are made on
//! the bytes afterwards.
//!
//! HTTP is `ureq` with default features off: blocking HTTP/1.1 with chunked
//! bodies, redirects and timeouts, and no TLS or crypto crate of its own (TUF
//! does not need the transport to be trusted; the registry is plain HTTP on the
//! site network). Environment proxies are ignored so a box's `http_proxy` cannot
//! reroute loopback or site traffic.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{err, ErrorKind, Result, TufError};

/// Fetches files named by a base (a URL or directory) and a relative path the
/// updater built (percent-encoded as for a URL).
pub trait Fetcher {
    /// Stream the file into `sink`, failing with [`ErrorKind::TooLarge`] past
    /// `max_len` bytes (nothing beyond the cap is read). Returns the length.
    fn fetch_to(&self, base: &str, rel: &str, max_len: u64, sink: &mut dyn Write) -> Result<u64>;

    /// The whole file in memory (metadata).
    fn fetch(&self, base: &str, rel: &str, max_len: u64) -> Result<Vec<u8>> {
        let mut out = Vec::new();
        self.fetch_to(base, rel, max_len, &mut out)?;
        Ok(out)
    }
}

/// The fetcher for a repository location: `http://…` or a directory path
/// (optionally `file://`).
pub fn for_location(location: &str) -> Box<dyn Fetcher> {
    if location.starts_with("http://") || location.starts_with("https://") {
        Box::new(HttpFetcher::new())
    } else {
        Box::new(DirFetcher)
    }
}

/// Copy at most `max_len` bytes from `src` to `sink`; error if there are more.
pub(crate) fn copy_capped(
    src: &mut dyn Read,
    max_len: u64,
    sink: &mut dyn Write,
    what: &str,
) -> Result<u64> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return err(ErrorKind::Fetch, format!("reading {what}: {e}")),
        };
        total += n as u64;
        if total > max_len {
            return err(
                ErrorKind::TooLarge,
                format!("{what} is larger than the {max_len}-byte limit"),
            );
        }
        sink.write_all(&buf[..n])
            .map_err(|e| TufError::new(ErrorKind::Io, format!("writing {what}: {e}")))?;
    }
}

/// Opens a file of a directory repository: a missing file is [`ErrorKind::NotFound`]
/// (a 404), anything else [`ErrorKind::Fetch`].
pub(crate) fn open_repository_file(path: &Path) -> Result<std::fs::File> {
    std::fs::File::open(path).map_err(|e| {
        let kind = if e.kind() == std::io::ErrorKind::NotFound {
            ErrorKind::NotFound
        } else {
            ErrorKind::Fetch
        };
        TufError::new(kind, format!("{}: {e}", path.display()))
    })
}

/// Files under a local directory (a mounted medium, a repository on disk).
#[derive(Debug, Default, Clone, Copy)]
pub struct DirFetcher;

impl DirFetcher {
    fn path(base: &str, rel: &str) -> Result<PathBuf> {
        let base = base.strip_prefix("file://").unwrap_or(base);
        let decoded = percent_decode(rel)
            .ok_or_else(|| TufError::new(ErrorKind::NotFound, format!("bad path {rel:?}")))?;
        // Role names like "../x" are legal in TUF; as files they must not escape.
        if decoded.starts_with('/')
            || decoded
                .split('/')
                .any(|s| s.is_empty() || s == "." || s == "..")
            || decoded.contains('\0')
        {
            return err(
                ErrorKind::NotFound,
                format!("{decoded:?} cannot be a file under the repository"),
            );
        }
        Ok(Path::new(base).join(decoded))
    }
}

impl Fetcher for DirFetcher {
    fn fetch_to(&self, base: &str, rel: &str, max_len: u64, sink: &mut dyn Write) -> Result<u64> {
        let path = Self::path(base, rel)?;
        let mut f = open_repository_file(&path)?;
        if let Ok(m) = f.metadata() {
            if m.len() > max_len {
                return err(
                    ErrorKind::TooLarge,
                    format!(
                        "{} is {} bytes; the limit is {max_len}",
                        path.display(),
                        m.len()
                    ),
                );
            }
        }
        copy_capped(&mut f, max_len, sink, &path.display().to_string())
    }
}

/// HTTP(S URLs are refused: no TLS is built in) via `ureq`.
pub struct HttpFetcher {
    agent: ureq::Agent,
}

impl Default for HttpFetcher {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpFetcher {
    pub fn new() -> Self {
        Self::with_timeouts(Duration::from_secs(10), Duration::from_secs(30))
    }

    /// `connect`: to establish a connection; `read`: the longest silence while
    /// reading (a slow registry fails instead of hanging a refresh forever).
    pub fn with_timeouts(connect: Duration, read: Duration) -> Self {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .proxy(None)
            .timeout_connect(Some(connect))
            .timeout_recv_response(Some(read))
            .timeout_per_read(Some(read))
            .max_redirects(5)
            .user_agent(concat!("edgeinfer-tuf/", env!("CARGO_PKG_VERSION")))
            .build();
        HttpFetcher {
            agent: config.into(),
        }
    }
}

impl HttpFetcher {
    /// The configured client, for requests the TUF workflow does not make (ranged target
    /// downloads of the pull agent).
    pub(crate) fn agent(&self) -> &ureq::Agent {
        &self.agent
    }
}

impl Fetcher for HttpFetcher {
    fn fetch_to(&self, base: &str, rel: &str, max_len: u64, sink: &mut dyn Write) -> Result<u64> {
        let url = format!("{base}{rel}");
        let resp = self
            .agent
            .get(&url)
            .call()
            .map_err(|e| TufError::new(ErrorKind::Fetch, format!("GET {url}: {e}")))?;
        let status = resp.status().as_u16();
        if status == 403 || status == 404 {
            return err(ErrorKind::NotFound, format!("GET {url}: HTTP {status}"));
        }
        if status != 200 {
            return err(ErrorKind::Fetch, format!("GET {url}: HTTP {status}"));
        }
        let mut body = resp.into_body();
        if let Some(len) = body.content_length() {
            if len > max_len {
                return err(
                    ErrorKind::TooLarge,
                    format!("{url} is {len} bytes; the limit is {max_len}"),
                );
            }
        }
        // ureq's own cap is set one past ours so copy_capped reports TooLarge itself.
        let mut reader = body.with_config().limit(max_len.saturating_add(1)).reader();
        copy_capped(&mut reader, max_len, sink, &url)
    }
}

/// Percent-encode a string as a single URL path segment (python's
/// `urllib.parse.quote(s, safe="")`): everything but ASCII letters, digits
/// and `_.-~`. Used for role names in metadata URLs and local file names.
pub fn quote_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || b"_.-~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Percent-encode a target path for a URL, keeping `/` and RFC 3986 `pchar`s.
pub fn quote_path(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || b"/_.-~!$&'()*+,;=:@".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub(crate) fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_matches_python_urllib() {
        // urllib.parse.quote(x, "") for the suite's unusual role names.
        assert_eq!(quote_segment("?"), "%3F");
        assert_eq!(quote_segment("#"), "%23");
        assert_eq!(quote_segment("/delegatedrole"), "%2Fdelegatedrole");
        assert_eq!(quote_segment("../delegatedrole"), "..%2Fdelegatedrole");
        assert_eq!(quote_segment("a b~é"), "a%20b~%C3%A9");
        assert_eq!(quote_path("path/to/a b.txt"), "path/to/a%20b.txt");
        assert_eq!(percent_decode("..%2Fx").as_deref(), Some("../x"));
        assert_eq!(percent_decode("%zz"), None);
    }

    #[test]
    fn dir_fetcher_caps_and_refuses_escapes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.json"), b"0123456789").unwrap();
        let base = dir.path().to_str().unwrap();
        assert_eq!(DirFetcher.fetch(base, "a.json", 10).unwrap(), b"0123456789");
        assert_eq!(
            DirFetcher.fetch(base, "a.json", 9).unwrap_err().kind,
            ErrorKind::TooLarge
        );
        assert_eq!(
            DirFetcher.fetch(base, "b.json", 9).unwrap_err().kind,
            ErrorKind::NotFound
        );
        let e = DirFetcher.fetch(base, "..%2Fa.json", 10).unwrap_err();
        assert_eq!(e.kind, ErrorKind::NotFound);
        assert!(e.message.contains("cannot be a file"), "{e}");
    }

    #[test]
    fn copy_capped_stops_at_the_cap() {
        let mut src: &[u8] = &[7u8; 1000];
        let mut sink = Vec::new();
        let e = copy_capped(&mut src, 999, &mut sink, "x").unwrap_err();
        assert_eq!(e.kind, ErrorKind::TooLarge);
        let mut src: &[u8] = &[7u8; 1000];
        let mut sink = Vec::new();
        assert_eq!(copy_capped(&mut src, 1000, &mut sink, "x").unwrap(), 1000);
    }
}
