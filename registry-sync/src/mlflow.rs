//! MLflow's REST API, as far as releases need it: resolve a registered model's alias to
//! a version, check it is `READY`, read its artifacts and its run (metrics as the
//! baseline, run id as lineage), and use the artifact store as a publish destination.
//!
//! Blocking HTTP/1.1 with `ureq` (no TLS: MLflow runs on the site network or loopback;
//! what is published there is TUF-signed, and what is read from it is signed by us
//! before any box trusts it). The artifact store accepts a PUT from anyone, so it is
//! untrusted storage: only signatures decide.
//!
//! Repository locations: `mlflow+http://HOST:PORT/PREFIX` is the TUF repository under
//! artifact path `PREFIX`; [`repo_urls`] gives the plain HTTP metadata and targets URLs
//! a TUF client (the daemon's `[registry] url`, `edgeinfer tuf`) reads it from.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::release::publish::{Destination, Progress, ProgressReader};
use crate::release::{ReleaseError, ReleaseErrorKind as K};

/// Artifact API path prefix (the MLflow tracking server's artifact proxy).
pub const ARTIFACTS_API: &str = "/api/2.0/mlflow-artifacts/artifacts";

/// A client for one MLflow tracking server, `http://HOST:PORT`.
pub struct MlflowClient {
    base: String,
    agent: ureq::Agent,
}

/// A registered model version, as `registered-models/alias` gives it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ModelVersion {
    pub name: String,
    /// A string in MLflow's API ("1", "2", …).
    pub version: String,
    /// `models:/m-<id>` for models logged with MLflow 3.
    #[serde(default)]
    pub source: String,
    #[serde(default)]
    pub run_id: String,
    /// `READY`, `PENDING_REGISTRATION` or `FAILED_REGISTRATION`.
    #[serde(default)]
    pub status: String,
}

/// One file or directory of an artifact listing.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct FileInfo {
    pub path: String,
    #[serde(default)]
    pub is_dir: bool,
    #[serde(default)]
    pub file_size: Option<u64>,
}

/// What a release takes from a run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunData {
    pub run_id: String,
    /// Latest value of each metric (non-finite values dropped: JSON cannot hold them).
    pub metrics: BTreeMap<String, f64>,
    pub params: BTreeMap<String, String>,
    pub tags: BTreeMap<String, String>,
}

fn transport(what: &str, e: impl std::fmt::Display) -> ReleaseError {
    ReleaseError::new(K::Transport, format!("{what}: {e}"))
}

/// Percent-encode a query value.
fn q(s: &str) -> String {
    crate::tuf::fetch::quote_segment(s)
}

impl MlflowClient {
    /// `base` is `http://HOST:PORT` (a trailing `/` is dropped).
    pub fn new(base: &str) -> Result<Self, ReleaseError> {
        if !base.starts_with("http://") {
            return Err(ReleaseError::new(
                K::Invalid,
                format!("MLflow URL {base:?} must be http://HOST:PORT"),
            ));
        }
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .proxy(None)
            .timeout_connect(Some(Duration::from_secs(10)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            .user_agent(concat!("edgeinfer-release/", env!("CARGO_PKG_VERSION")))
            .build();
        Ok(MlflowClient {
            base: base.trim_end_matches('/').to_owned(),
            agent: config.into(),
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// GET a JSON API endpoint; MLflow's error body becomes the message.
    fn get_json(&self, path_and_query: &str) -> Result<Value, ReleaseError> {
        let url = format!("{}{path_and_query}", self.base);
        let resp = self
            .agent
            .get(&url)
            .call()
            .map_err(|e| transport(&format!("GET {url}"), e))?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .with_config()
            .limit(16 << 20)
            .read_to_string()
            .map_err(|e| transport(&format!("GET {url}"), e))?;
        let v: Value = serde_json::from_str(&body).map_err(|e| {
            ReleaseError::new(
                K::Mlflow,
                format!("GET {url}: HTTP {status}, not JSON: {e}"),
            )
        })?;
        if status != 200 {
            let msg = v["message"].as_str().unwrap_or(&body);
            let kind = if status == 404 {
                K::Mlflow
            } else {
                K::Transport
            };
            return Err(ReleaseError::new(
                kind,
                format!("GET {url}: HTTP {status}: {msg}"),
            ));
        }
        Ok(v)
    }

    /// The version `alias` points at (`GET registered-models/alias`).
    pub fn version_by_alias(&self, name: &str, alias: &str) -> Result<ModelVersion, ReleaseError> {
        let v = self.get_json(&format!(
            "/api/2.0/mlflow/registered-models/alias?name={}&alias={}",
            q(name),
            q(alias)
        ))?;
        serde_json::from_value(v["model_version"].clone())
            .map_err(|e| ReleaseError::new(K::Mlflow, format!("alias {alias:?} of {name:?}: {e}")))
    }

    /// [`version_by_alias`](Self::version_by_alias), refusing anything but `READY`.
    pub fn ready_version_by_alias(
        &self,
        name: &str,
        alias: &str,
    ) -> Result<ModelVersion, ReleaseError> {
        let mv = self.version_by_alias(name, alias)?;
        if mv.status != "READY" {
            return Err(ReleaseError::new(
                K::Mlflow,
                format!(
                    "{name:?} version {} (alias {alias:?}) is {}, not READY",
                    mv.version, mv.status
                ),
            ));
        }
        Ok(mv)
    }

    /// The artifact URI of a version's files (`mlflow-artifacts:/…`).
    pub fn download_uri(&self, name: &str, version: &str) -> Result<String, ReleaseError> {
        let v = self.get_json(&format!(
            "/api/2.0/mlflow/model-versions/get-download-uri?name={}&version={}",
            q(name),
            q(version)
        ))?;
        v["artifact_uri"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| ReleaseError::new(K::Mlflow, "get-download-uri gave no artifact_uri"))
    }

    /// A run's metrics, params and tags.
    pub fn run(&self, run_id: &str) -> Result<RunData, ReleaseError> {
        let v = self.get_json(&format!("/api/2.0/mlflow/runs/get?run_id={}", q(run_id)))?;
        let data = &v["run"]["data"];
        let pairs = |key: &str| -> BTreeMap<String, String> {
            data[key]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|p| Some((p["key"].as_str()?.into(), p["value"].as_str()?.into())))
                .collect()
        };
        let metrics = data["metrics"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| Some((m["key"].as_str()?.to_owned(), m["value"].as_f64()?)))
            .filter(|(_, v)| v.is_finite())
            .collect();
        Ok(RunData {
            run_id: run_id.to_owned(),
            metrics,
            params: pairs("params"),
            tags: pairs("tags"),
        })
    }

    /// The files directly under artifact path `path`.
    pub fn list(&self, path: &str) -> Result<Vec<FileInfo>, ReleaseError> {
        let v = self.get_json(&format!("{ARTIFACTS_API}?path={}", q(path)))?;
        match v.get("files") {
            None => Ok(Vec::new()),
            Some(f) => serde_json::from_value(f.clone())
                .map_err(|e| ReleaseError::new(K::Mlflow, format!("listing {path:?}: {e}"))),
        }
    }

    fn artifact_url(&self, path: &str) -> String {
        format!(
            "{}{ARTIFACTS_API}/{}",
            self.base,
            crate::tuf::fetch::quote_path(path.trim_start_matches('/'))
        )
    }

    /// Stream artifact `path` into `sink`, at most `max_len` bytes. Returns the length.
    pub fn download(
        &self,
        path: &str,
        max_len: u64,
        sink: &mut dyn Write,
        progress: &mut dyn Progress,
    ) -> Result<u64, ReleaseError> {
        let url = self.artifact_url(path);
        let resp = self
            .agent
            .get(&url)
            .call()
            .map_err(|e| transport(&format!("GET {url}"), e))?;
        let status = resp.status().as_u16();
        if status != 200 {
            return Err(ReleaseError::new(
                if status == 404 {
                    K::Mlflow
                } else {
                    K::Transport
                },
                format!("GET {url}: HTTP {status}"),
            ));
        }
        let mut body = resp.into_body();
        let len = body.content_length().unwrap_or(0);
        if len > max_len {
            return Err(ReleaseError::new(
                K::Mlflow,
                format!("{path} is {len} bytes; the limit is {max_len}"),
            ));
        }
        progress.start(path, len);
        let mut reader = ProgressReader {
            inner: body.with_config().limit(max_len.saturating_add(1)).reader(),
            progress: &mut *progress,
        };
        let n = crate::tuf::fetch::copy_capped(&mut reader, max_len, sink, path)
            .map_err(|e| ReleaseError::new(K::Transport, e.message));
        progress.finish();
        n
    }

    /// PUT `reader` as artifact `path` (streamed, chunked).
    pub fn upload(
        &self,
        path: &str,
        reader: &mut dyn Read,
        len: u64,
        progress: &mut dyn Progress,
    ) -> Result<(), ReleaseError> {
        let url = self.artifact_url(path);
        progress.start(path, len);
        let mut reader = ProgressReader {
            inner: reader,
            progress: &mut *progress,
        };
        let result = self
            .agent
            .put(&url)
            .header("Content-Type", "application/octet-stream")
            .send(ureq::SendBody::from_reader(&mut reader));
        progress.finish();
        let resp = result.map_err(|e| transport(&format!("PUT {url}"), e))?;
        let status = resp.status().as_u16();
        if status != 200 {
            return Err(ReleaseError::new(
                K::Transport,
                format!("PUT {url}: HTTP {status}"),
            ));
        }
        Ok(())
    }
}

/// The artifact path of an `mlflow-artifacts:` URI (`mlflow-artifacts:/1/models/m-x/artifacts`
/// or `mlflow-artifacts://host:port/1/…`).
pub fn artifact_path(uri: &str) -> Result<String, ReleaseError> {
    let rest = uri.strip_prefix("mlflow-artifacts:").ok_or_else(|| {
        ReleaseError::new(
            K::Mlflow,
            format!("{uri:?} is not an mlflow-artifacts: URI (is the server started with --artifacts-destination?)"),
        )
    })?;
    let path = match rest.strip_prefix("//") {
        // With an authority: drop it.
        Some(r) => r.split_once('/').map_or("", |(_, p)| p),
        None => rest.trim_start_matches('/'),
    };
    if path.split('/').any(|s| s == "..") {
        return Err(ReleaseError::new(
            K::Mlflow,
            format!("{uri:?} escapes the store"),
        ));
    }
    Ok(path.to_owned())
}

/// A parsed `mlflow+http://HOST:PORT/PREFIX` location.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MlflowLocation {
    /// `http://HOST:PORT`.
    pub server: String,
    /// The artifact path the repository lives under (no leading or trailing `/`).
    pub prefix: String,
}

impl MlflowLocation {
    pub fn parse(location: &str) -> Result<MlflowLocation, ReleaseError> {
        let rest = location.strip_prefix("mlflow+http://").ok_or_else(|| {
            ReleaseError::new(
                K::Invalid,
                format!("{location:?} is not mlflow+http://HOST:PORT/PREFIX"),
            )
        })?;
        let (host, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let prefix = prefix.trim_matches('/');
        if host.is_empty()
            || prefix.is_empty()
            || prefix
                .split('/')
                .any(|s| s.is_empty() || s == "." || s == "..")
        {
            return Err(ReleaseError::new(
                K::Invalid,
                format!("{location:?}: needs a host and a PREFIX without empty, . or .. parts"),
            ));
        }
        Ok(MlflowLocation {
            server: format!("http://{host}"),
            prefix: prefix.to_owned(),
        })
    }

    /// The HTTP base a TUF client fetches `rel` (`metadata/…`, `targets/…`) under.
    pub fn http_base(&self, rel: &str) -> String {
        format!("{}{ARTIFACTS_API}/{}/{rel}", self.server, self.prefix)
    }
}

/// `(metadata URL, targets URL)` for a repository location a TUF client reads: an
/// `mlflow+http://` location, a plain `http://` base, or a directory. Both end in `/`.
pub fn repo_urls(location: &str) -> Result<(String, String), ReleaseError> {
    if location.starts_with("mlflow+") {
        let l = MlflowLocation::parse(location)?;
        return Ok((l.http_base("metadata/"), l.http_base("targets/")));
    }
    let base = location.trim_end_matches('/');
    Ok((format!("{base}/metadata/"), format!("{base}/targets/")))
}

/// MLflow's artifact store as a publish destination (untrusted storage).
pub struct MlflowDestination {
    pub client: MlflowClient,
    pub location: MlflowLocation,
    /// Directory listings already fetched during this publish (one request per
    /// directory, not per file). Files put since are not in them, and are never asked
    /// about again.
    listings: std::cell::RefCell<BTreeMap<String, Vec<FileInfo>>>,
}

impl MlflowDestination {
    pub fn new(location: &str) -> Result<Self, ReleaseError> {
        let location = MlflowLocation::parse(location)?;
        Ok(MlflowDestination {
            client: MlflowClient::new(&location.server)?,
            location,
            listings: Default::default(),
        })
    }

    fn path(&self, rel: &str) -> String {
        format!("{}/{rel}", self.location.prefix)
    }
}

impl Destination for MlflowDestination {
    fn describe(&self) -> String {
        format!("mlflow+{}/{}", self.location.server, self.location.prefix)
    }

    fn has(&self, rel: &str, len: u64) -> Result<bool, ReleaseError> {
        let full = self.path(rel);
        let (dir, name) = full.rsplit_once('/').unwrap_or(("", &full));
        if !self.listings.borrow().contains_key(dir) {
            let files = match self.client.list(dir) {
                Ok(f) => f,
                // A directory that does not exist yet holds nothing.
                Err(e) if e.kind == K::Mlflow => Vec::new(),
                Err(e) => return Err(e),
            };
            self.listings.borrow_mut().insert(dir.to_owned(), files);
        }
        let listings = self.listings.borrow();
        let files = &listings[dir];
        Ok(files.iter().any(|f| {
            !f.is_dir && f.path.rsplit('/').next() == Some(name) && f.file_size == Some(len)
        }))
    }

    fn put(&self, rel: &str, src: &Path, progress: &mut dyn Progress) -> Result<(), ReleaseError> {
        let mut f = std::fs::File::open(src)
            .map_err(|e| ReleaseError::new(K::Io, format!("{}: {e}", src.display())))?;
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        self.client.upload(&self.path(rel), &mut f, len, progress)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_and_artifact_uris_parse() {
        let l = MlflowLocation::parse("mlflow+http://127.0.0.1:5000/edge/tuf/").unwrap();
        assert_eq!(l.server, "http://127.0.0.1:5000");
        assert_eq!(l.prefix, "edge/tuf");
        assert_eq!(
            repo_urls("mlflow+http://127.0.0.1:5000/edge").unwrap().0,
            "http://127.0.0.1:5000/api/2.0/mlflow-artifacts/artifacts/edge/metadata/"
        );
        assert_eq!(
            repo_urls("/srv/tuf/").unwrap(),
            ("/srv/tuf/metadata/".into(), "/srv/tuf/targets/".into())
        );
        for bad in [
            "http://h:1/x",
            "mlflow+http://h:1",
            "mlflow+http://h:1/",
            "mlflow+http://h:1/a/../b",
            "mlflow+http:///x",
        ] {
            assert_eq!(
                MlflowLocation::parse(bad).unwrap_err().kind,
                K::Invalid,
                "{bad}"
            );
        }
        assert_eq!(
            artifact_path("mlflow-artifacts:/1/models/m-1/artifacts").unwrap(),
            "1/models/m-1/artifacts"
        );
        assert_eq!(
            artifact_path("mlflow-artifacts://h:5000/1/models/m-1/artifacts").unwrap(),
            "1/models/m-1/artifacts"
        );
        assert!(artifact_path("s3://bucket/x").is_err());
        assert!(artifact_path("mlflow-artifacts:/1/../../etc").is_err());
        assert!(MlflowClient::new("https://h").is_err());
    }

    /// A loopback server answering each connection with the next canned (status, body),
    /// recording the request lines. (The real MLflow is in tools/tests/release_mlflow.rs;
    /// a version that is not READY cannot be made on demand there.)
    fn canned(answers: Vec<(u16, &'static str)>) -> (String, std::thread::JoinHandle<Vec<String>>) {
        use std::io::{BufRead, BufReader};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", l.local_addr().unwrap());
        let h = std::thread::spawn(move || {
            let mut seen = Vec::new();
            for (status, body) in answers {
                let (s, _) = l.accept().unwrap();
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                seen.push(line.trim_end().to_owned());
                loop {
                    let mut h = String::new();
                    r.read_line(&mut h).unwrap();
                    if h == "\r\n" || h.is_empty() {
                        break;
                    }
                }
                let mut s = s;
                write!(
                    s,
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
                .unwrap();
            }
            seen
        });
        (base, h)
    }

    #[test]
    fn only_ready_versions_are_accepted_and_errors_say_why() {
        let pending = r#"{"model_version": {"name": "churn", "version": "4",
            "source": "models:/m-1", "run_id": "r", "status": "PENDING_REGISTRATION"}}"#;
        let ready = r#"{"model_version": {"name": "churn", "version": "4",
            "source": "models:/m-1", "run_id": "r", "status": "READY"}}"#;
        let missing = r#"{"error_code": "RESOURCE_DOES_NOT_EXIST",
            "message": "Registered model alias nosuch not found."}"#;
        let (base, server) = canned(vec![(200, pending), (200, ready), (404, missing)]);
        let c = MlflowClient::new(&base).unwrap();
        let e = c.ready_version_by_alias("churn", "champion").unwrap_err();
        assert_eq!(e.kind, K::Mlflow);
        assert!(e.message.contains("PENDING_REGISTRATION, not READY"), "{e}");
        let mv = c.ready_version_by_alias("churn", "champion").unwrap();
        assert_eq!(
            (mv.version.as_str(), mv.source.as_str()),
            ("4", "models:/m-1")
        );
        let e = c.version_by_alias("churn", "no such").unwrap_err();
        assert_eq!(e.kind, K::Mlflow);
        assert!(e.message.contains("alias nosuch not found"), "{e}");
        let seen = server.join().unwrap();
        assert_eq!(
            seen[2],
            "GET /api/2.0/mlflow/registered-models/alias?name=churn&alias=no%20such HTTP/1.1"
        );
    }
}
