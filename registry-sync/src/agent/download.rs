//! Target downloads for the pull agent: streamed to a `.part` file in the staging directory
//! while hashed, never past the target's signed length (nor the configured cap), resumed
//! with an HTTP `Range` request (or a seek, for a directory repository) after an
//! interrupted transfer, and renamed to their final name only once length and every hash
//! match. Nothing reads a staged file before that rename.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::tuf::fetch::{copy_capped, open_repository_file, percent_decode, HttpFetcher};
use crate::tuf::metadata::{check_length, Hasher};
use crate::tuf::updater::HashingSink;
use crate::tuf::{ErrorKind, Result, TargetFile, TufError};

fn io_err(what: &str, path: &Path, e: std::io::Error) -> TufError {
    TufError::new(ErrorKind::Io, format!("{what} {}: {e}", path.display()))
}

/// Where targets come from: `http://…/targets/` or a directory.
pub enum TargetSource {
    Http { base: String, http: HttpFetcher },
    Dir(PathBuf),
}

impl TargetSource {
    /// `base` ends in `/` for HTTP.
    pub fn new(location: &str, connect: Duration, read: Duration) -> TargetSource {
        if location.starts_with("http://") {
            let http = HttpFetcher::with_timeouts(connect, read);
            let base = if location.ends_with('/') {
                location.to_owned()
            } else {
                format!("{location}/")
            };
            TargetSource::Http { base, http }
        } else {
            TargetSource::Dir(PathBuf::from(
                location.strip_prefix("file://").unwrap_or(location),
            ))
        }
    }

    /// Appends the bytes of `rel` from `offset` on to `sink`, at most `max` of them.
    /// Returns whether the source honoured the offset (false: it sent the whole file from
    /// the start, and the caller must start over).
    fn fetch_from(
        &self,
        rel: &str,
        offset: u64,
        max: u64,
        sink: &mut dyn Write,
    ) -> Result<(bool, u64)> {
        match self {
            TargetSource::Dir(base) => {
                let rel = decode_rel(rel).ok_or_else(|| {
                    TufError::new(ErrorKind::NotFound, format!("bad path {rel:?}"))
                })?;
                let path = base.join(&rel);
                let mut f = open_repository_file(&path)?;
                f.seek(SeekFrom::Start(offset))
                    .map_err(|e| io_err("cannot seek", &path, e))?;
                let n = copy_capped(&mut f, max, sink, &path.display().to_string())?;
                Ok((true, n))
            }
            TargetSource::Http { base, http } => {
                let url = format!("{base}{rel}");
                let mut req = http.agent().get(&url);
                if offset > 0 {
                    req = req.header("Range", &format!("bytes={offset}-"));
                }
                let resp = req
                    .call()
                    .map_err(|e| TufError::new(ErrorKind::Fetch, format!("GET {url}: {e}")))?;
                let status = resp.status().as_u16();
                let resumed = match status {
                    200 => false,
                    206 => {
                        let range = resp
                            .headers()
                            .get("content-range")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("");
                        if !range.starts_with(&format!("bytes {offset}-")) {
                            return Err(TufError::new(
                                ErrorKind::Fetch,
                                format!("GET {url}: asked from byte {offset}, got range {range:?}"),
                            ));
                        }
                        true
                    }
                    416 => return Ok((false, 0)),
                    403 | 404 => {
                        return Err(TufError::new(
                            ErrorKind::NotFound,
                            format!("GET {url}: HTTP {status}"),
                        ))
                    }
                    _ => {
                        return Err(TufError::new(
                            ErrorKind::Fetch,
                            format!("GET {url}: HTTP {status}"),
                        ))
                    }
                };
                if offset > 0 && !resumed {
                    return Ok((false, 0));
                }
                let mut body = resp.into_body();
                if let Some(len) = body.content_length() {
                    if len > max {
                        return Err(TufError::new(
                            ErrorKind::TooLarge,
                            format!("{url} sends {len} bytes; at most {max} are expected"),
                        ));
                    }
                }
                let mut reader = body.with_config().limit(max.saturating_add(1)).reader();
                let n = copy_capped(&mut reader, max, sink, &url)?;
                Ok((resumed, n))
            }
        }
    }

    /// Downloads `target` (fetched as `rel`, see `Updater::target_url_path`) to `dest`,
    /// unless `cached` (the caller checked `dest` with `Updater::find_cached_target`).
    /// A partial `.part` of the same content is
    /// resumed. On a length or hash mismatch the partial file is deleted (it can never
    /// become right); on a transport error it is kept for the next try.
    pub fn download(
        &self,
        rel: &str,
        target: &TargetFile,
        cap: u64,
        dest: &Path,
        cached: bool,
    ) -> Result<()> {
        if target.length > cap {
            return Err(TufError::new(
                ErrorKind::TooLarge,
                format!(
                    "target {:?} is signed as {} bytes; the cap is {cap}",
                    target.path, target.length
                ),
            ));
        }
        if cached {
            return Ok(());
        }
        let mut hasher = Hasher::new(&target.hashes)?;
        let name = dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let part = dest.with_file_name(format!(".{name}.{}.part", short(target.url_hash())));
        let mut have = fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
        if have > target.length {
            have = 0;
        }
        let mut f = OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(false)
            .open(&part)
            .map_err(|e| io_err("cannot open", &part, e))?;
        if have > 0 {
            // Hash what is already there; the rest is appended.
            let mut prefix = (&mut f).take(have);
            let mut sink = HashingSink {
                hasher: &mut hasher,
                out: std::io::sink(),
            };
            copy_capped(&mut prefix, have, &mut sink, "partial download")?;
        }
        let (resumed, _) = {
            f.set_len(have)
                .map_err(|e| io_err("cannot truncate", &part, e))?;
            f.seek(SeekFrom::Start(have))
                .map_err(|e| io_err("cannot seek", &part, e))?;
            let mut sink = HashingSink {
                hasher: &mut hasher,
                out: std::io::BufWriter::new(&mut f),
            };
            let r = self.fetch_from(rel, have, target.length - have, &mut sink);
            sink.out
                .flush()
                .map_err(|e| io_err("cannot write", &part, e))?;
            match r {
                Err(e) if e.kind == ErrorKind::TooLarge || e.kind == ErrorKind::LengthOrHash => {
                    drop(sink);
                    let _ = fs::remove_file(&part);
                    return Err(with_path(e, target));
                }
                Err(e) => return Err(with_path(e, target)),
                Ok(r) => r,
            }
        };
        if have > 0 && !resumed {
            // The source ignored the range: start over from byte 0.
            tracing::info!(target = %target.path, "the registry does not resume; starting over");
            drop(f);
            let _ = fs::remove_file(&part);
            return self.download(rel, target, cap, dest, false);
        }
        let checked =
            check_length(hasher.len(), target.length).and_then(|_| hasher.finish_and_check());
        if let Err(e) = checked {
            if hasher_len_short(&f, target.length) {
                // Fewer bytes than signed: an interrupted transfer, resumable.
                return Err(TufError::new(
                    ErrorKind::Fetch,
                    format!("target {:?}: transfer ended early ({e})", target.path),
                ));
            }
            drop(f);
            let _ = fs::remove_file(&part);
            return Err(with_path(e, target));
        }
        f.sync_all().map_err(|e| io_err("cannot fsync", &part, e))?;
        drop(f);
        fs::rename(&part, dest).map_err(|e| io_err("cannot rename into", dest, e))?;
        Ok(())
    }
}

fn hasher_len_short(f: &File, length: u64) -> bool {
    f.metadata().map(|m| m.len() < length).unwrap_or(false)
}

fn with_path(e: TufError, target: &TargetFile) -> TufError {
    TufError::new(e.kind, format!("target {:?}: {}", target.path, e.message))
}

fn short(h: &str) -> &str {
    h.get(..16).unwrap_or(h)
}

/// Decodes a checked target URL path into a relative file path; refuses escapes anyway.
fn decode_rel(s: &str) -> Option<String> {
    let s = percent_decode(s)?;
    (!s.starts_with('/') && !s.split('/').any(|p| p.is_empty() || p == "." || p == ".."))
        .then_some(s)
}
