//! The pull agent: follows signed model releases in a TUF repository and installs them.
//!
//! One poll: refresh the TUF metadata with our [`crate::tuf::Updater`] (every trust
//! decision is made there), find the newest `models/<name>/<version>/{model.onnx,bundle.json}`
//! of each followed model (or the versions `rollout/<name>.json` decides for this device,
//! through the [`Deployer::rollout`] seam: stable, and a canary candidate beside it), download both into the staging directory (streamed,
//! capped, hash-checked, resumable), let the daemon validate them ([`Deployer::validate`]:
//! load in the engine, run the golden samples), commit them power-safely
//! ([`crate::install`]), then hand them over ([`Deployer::activate`]: the hot swap).
//!
//! It runs on its own thread ([`Agent::spawn`]), never on a data-path core: an unreachable,
//! slow or hostile registry costs this thread time, never a request. Failed polls retry
//! with exponential backoff and jitter; every refusal is an [`AgentEvent`].

pub mod config;
pub mod download;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::install::{InstallErrorKind, InstallStore, BUNDLE_FILE, MODEL_FILE};
use crate::tuf::{self, ErrorKind, TargetFile, TufError, Updater, UpdaterConfig};
use config::RegistryConfig;
use download::TargetSource;

/// Seconds since the Unix epoch; injected so expiry is testable without sleeping.
pub type Clock = Arc<dyn Fn() -> i64 + Send + Sync>;

pub fn system_clock() -> Clock {
    Arc::new(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0)
    })
}

/// Why something was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectKind {
    /// The TUF metadata failed a check (signature, rollback, expiry, mix-and-match, …).
    Metadata(ErrorKind),
    /// A target failed its length or hash, or exceeds its cap.
    Target(ErrorKind),
    /// A target name that cannot be a model version (traversal, absolute path, …).
    UnsafePath,
    /// The daemon refused it: it does not load, or its golden samples do not match.
    Validation,
    /// The local install state could not be read.
    LocalState,
    /// The rollout directive names a release below its own `min_release_counter`.
    BelowReleaseFloor,
}

/// What a rollout directive asks of the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutChoice {
    /// The version this device should run by default (the directive's stable version).
    pub version: String,
    /// Versions to install and keep active beside it (a canary candidate this device
    /// takes); served as [`Deployer::rollout_ready`] decides.
    pub also: Vec<String>,
    /// Releases with a lower counter are never installed (replayed old releases).
    pub min_release_counter: u64,
}

/// What the agent reports (the daemon logs each and publishes it as telemetry).
#[derive(Debug, Clone, PartialEq)]
pub enum AgentEvent {
    /// `model`@`version` is committed and serving.
    Installed {
        model: String,
        version: String,
        release_counter: u64,
    },
    /// Refused; the daemon keeps serving what it served. `version` is empty when the
    /// refusal is about the repository's metadata, not one version.
    Rejected {
        model: String,
        version: String,
        kind: RejectKind,
        reason: String,
    },
    /// The registry could not be reached or read (not an attack): retried with backoff.
    Unreachable { reason: String },
}

impl AgentEvent {
    /// The telemetry event an operator sees for this (the daemon's and the fleet
    /// simulation's deployers both publish it); none for `Unreachable`, which is retried.
    pub fn telemetry(&self) -> Option<edgeinfer_telemetry::events::Event> {
        use edgeinfer_telemetry::events::Event;
        match self {
            AgentEvent::Installed { model, version, .. } => Some(Event::ModelInstalled {
                model: model.clone(),
                version: version.clone(),
            }),
            AgentEvent::Rejected {
                model,
                version,
                kind,
                reason,
            } => Some(Event::ModelRejected {
                model: model.clone(),
                version: version.clone(),
                reason: format!("{kind:?}: {reason}"),
            }),
            AgentEvent::Unreachable { .. } => None,
        }
    }
}

/// A version downloaded and hash-checked, waiting for validation.
#[derive(Debug, Clone)]
pub struct StagedRelease {
    pub model: String,
    pub version: String,
    pub release_counter: u64,
    pub dir: PathBuf,
    pub model_path: PathBuf,
    pub bundle_path: PathBuf,
}

/// A version committed on disk and made active in the install state.
#[derive(Debug, Clone)]
pub struct InstalledRelease {
    pub model: String,
    pub version: String,
    pub release_counter: u64,
    pub dir: PathBuf,
}

/// The daemon's side of an install. Called on the agent's thread.
pub trait Deployer: Send {
    /// Loads the staged version and checks it (golden samples within tolerance); an error
    /// rejects it and nothing is committed.
    fn validate(&mut self, release: &StagedRelease) -> Result<(), String>;
    /// The version is committed and active on disk: serve it (the hot swap).
    fn activate(&mut self, release: &InstalledRelease) -> Result<(), String>;
    /// The bytes of a trusted, hash-checked `rollout/<model>.json`; returns the version the
    /// directive says this device should run, if any. The rollout work owns the directive's
    /// type; until it lands, the default follows the newest release.
    fn rollout(&mut self, model: &str, directive: &[u8]) -> Option<RolloutChoice> {
        let _ = (model, directive);
        None
    }
    /// Whether `model`@`version`, verified in the install state, is loaded and servable
    /// now; a version that is not is installed again. The default trusts the state.
    fn loaded(&self, model: &str, version: &str) -> bool {
        let _ = (model, version);
        true
    }
    /// A version of [`RolloutChoice::also`] is committed beside the active one: load it
    /// without making it the default. The default treats it like [`Deployer::activate`].
    fn install_beside(&mut self, release: &InstalledRelease) -> Result<(), String> {
        self.activate(release)
    }
    /// A version of a [`RolloutChoice`] is verified in the install area (its files hashed
    /// against the state just now) but not loaded: load it from `release.dir` without a
    /// download, as the default or (`beside`) next to it. An error makes the agent install
    /// it afresh. The default always errs (a deployer without it downloads again).
    fn load_installed(&mut self, release: &InstalledRelease, beside: bool) -> Result<(), String> {
        let _ = (release, beside);
        Err("loading from the install area is not supported".into())
    }
    /// After a poll that followed a rollout directive: `ready` holds the versions of the
    /// [`RolloutChoice`] that are installed and loaded (stable first when it is); serve as
    /// the directive decides. An error is reported; what was served stays.
    fn rollout_ready(&mut self, model: &str, ready: &[String]) -> Result<(), String> {
        let _ = (model, ready);
        Ok(())
    }
    fn event(&mut self, event: &AgentEvent);
}

/// How a poll ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PollOutcome {
    /// Metadata refreshed; each followed model is at its chosen version (or refused).
    Done { installed: Vec<(String, String)> },
    /// The registry could not be read; retry sooner.
    Unreachable,
    /// The metadata was refused; retry sooner (the attacker may go away).
    Refused,
}

/// One model version offered by the trusted targets.
#[derive(Debug, Clone)]
struct Offer {
    version: String,
    counter: u64,
}

pub struct Agent {
    cfg: RegistryConfig,
    dir: PathBuf,
    store: InstallStore,
    root: Vec<u8>,
    clock: Clock,
    targets: TargetSource,
    /// (model, version, model sha256) already refused: not downloaded again.
    refused: BTreeSet<(String, String, String)>,
    /// The last metadata refusal, so a repeated one is not reported every poll.
    last_refusal: Option<String>,
    /// How long the last successful metadata refresh took (for the install log line).
    refreshed_in: Duration,
}

fn base_of(url: &str, sub: &str) -> String {
    if url.starts_with("http://") {
        format!("{}/{sub}/", url.trim_end_matches('/'))
    } else {
        let dir = url.strip_prefix("file://").unwrap_or(url);
        format!("{}/{sub}", dir.trim_end_matches('/'))
    }
}

/// `models/<name>/<version>/<file>` split strictly; anything else is `None`.
fn parse_target(path: &str) -> Option<(&str, &str, &str)> {
    let mut it = path.split('/');
    let (m, name, version, file) = (it.next()?, it.next()?, it.next()?, it.next()?);
    (m == "models" && it.next().is_none() && crate::install::valid_version(version))
        .then_some((name, version, file))
}

/// The monotonic release counter release tooling puts in a target's `custom`.
fn release_counter(t: &TargetFile) -> u64 {
    let c = t.custom.as_ref();
    c.and_then(|c| c.get("release_counter").or_else(|| c.get("counter")))
        .and_then(|v| v.as_u64())
        .unwrap_or(0)
}

/// Numeric versions compare as numbers, others as text, numbers first.
fn version_key(v: &str) -> (u8, u64, String) {
    match v.parse::<u64>() {
        Ok(n) => (0, n, String::new()),
        Err(_) => (1, 0, v.to_owned()),
    }
}

impl Agent {
    /// `state_dir`: the registry's state directory (trusted metadata, staging, installs).
    pub fn new(cfg: RegistryConfig, state_dir: &Path, clock: Clock) -> Result<Agent, String> {
        let url = cfg.url.clone().ok_or("registry.url is not set")?;
        let root_file = cfg
            .root_file
            .clone()
            .ok_or("registry.root_file is not set")?;
        let root = std::fs::read(&root_file)
            .map_err(|e| format!("registry.root_file {}: {e}", root_file.display()))?;
        let store = InstallStore::open(state_dir, cfg.keep_versions).map_err(|e| e.to_string())?;
        let targets = TargetSource::new(
            &base_of(&url, "targets"),
            Duration::from_millis(cfg.connect_timeout_ms),
            Duration::from_millis(cfg.read_timeout_ms),
        );
        Ok(Agent {
            cfg,
            dir: state_dir.to_owned(),
            store,
            root,
            clock,
            targets,
            refused: BTreeSet::new(),
            last_refusal: None,
            refreshed_in: Duration::ZERO,
        })
    }

    pub fn store(&self) -> &InstallStore {
        &self.store
    }

    fn updater(&self) -> tuf::Result<Updater> {
        let url = self.cfg.url.as_deref().unwrap_or_default();
        let fetcher: Box<dyn tuf::Fetcher> = if url.starts_with("http://") {
            Box::new(tuf::HttpFetcher::with_timeouts(
                Duration::from_millis(self.cfg.connect_timeout_ms),
                Duration::from_millis(self.cfg.read_timeout_ms),
            ))
        } else {
            Box::new(tuf::DirFetcher)
        };
        Ok(Updater::new(
            &self.dir.join("metadata"),
            &base_of(url, "metadata"),
            fetcher,
            Some(&self.root),
            (self.clock)(),
            UpdaterConfig::default(),
        )?
        .with_targets_base(&base_of(url, "targets")))
    }

    /// One poll (see the module docs).
    pub fn poll_once(&mut self, deployer: &mut dyn Deployer) -> PollOutcome {
        let started = Instant::now();
        let mut up = match self.updater().and_then(|mut u| u.refresh().map(|_| u)) {
            Ok(u) => u,
            Err(e) => return self.metadata_failure(deployer, e),
        };
        self.last_refusal = None;
        self.refreshed_in = started.elapsed();
        let mut installed = Vec::new();
        for name in self.cfg.models.clone() {
            match self.follow(&mut up, deployer, &name) {
                Ok(Some(v)) => installed.push((name.clone(), v)),
                Ok(None) => {}
                Err(Transient(e)) => {
                    let reason = format!("model {name:?}: {}", e.message);
                    tracing::warn!("registry: {reason}");
                    deployer.event(&AgentEvent::Unreachable { reason });
                    return PollOutcome::Unreachable;
                }
            }
        }
        PollOutcome::Done { installed }
    }

    fn metadata_failure(&mut self, deployer: &mut dyn Deployer, e: TufError) -> PollOutcome {
        let transient = matches!(
            e.kind,
            ErrorKind::Fetch | ErrorKind::NotFound | ErrorKind::Io
        );
        let reason = format!("{:?}: {}", e.kind, e.message);
        if self.last_refusal.as_deref() != Some(reason.as_str()) {
            tracing::warn!("registry: metadata refresh failed: {reason}");
            if transient {
                deployer.event(&AgentEvent::Unreachable {
                    reason: reason.clone(),
                });
            } else {
                for model in &self.cfg.models {
                    deployer.event(&AgentEvent::Rejected {
                        model: model.clone(),
                        version: String::new(),
                        kind: RejectKind::Metadata(e.kind),
                        reason: reason.clone(),
                    });
                }
            }
            self.last_refusal = Some(reason);
        }
        if transient {
            PollOutcome::Unreachable
        } else {
            PollOutcome::Refused
        }
    }

    fn reject(
        &mut self,
        deployer: &mut dyn Deployer,
        model: &str,
        version: &str,
        key: &str,
        kind: RejectKind,
        reason: String,
    ) {
        let id = (model.to_owned(), version.to_owned(), key.to_owned());
        if self.refused.insert(id) {
            report(deployer, model, version, kind, reason);
        }
    }

    /// The install state of `name` could not be read or written (reported once).
    fn reject_state(
        &mut self,
        deployer: &mut dyn Deployer,
        name: &str,
        e: &crate::install::InstallError,
    ) {
        let reason = e.to_string();
        self.reject(deployer, name, "", "state", RejectKind::LocalState, reason);
    }

    /// The versions of `name` the top-level targets offer, and refusals of names that look
    /// like ours but cannot be a version directory.
    fn offers(&mut self, up: &Updater, deployer: &mut dyn Deployer, name: &str) -> Vec<Offer> {
        let Some(targets) = up.trusted().targets("targets") else {
            return Vec::new();
        };
        let mut offers = Vec::new();
        let mut unsafe_paths = Vec::new();
        for (path, t) in &targets.targets {
            match parse_target(path) {
                Some((n, v, MODEL_FILE)) if n == name => {
                    let bundle = format!("models/{name}/{v}/{BUNDLE_FILE}");
                    if targets.targets.contains_key(&bundle) {
                        offers.push(Offer {
                            version: v.to_owned(),
                            counter: release_counter(t),
                        });
                    }
                }
                Some(_) => {}
                None if path.split('/').any(|s| s == name) => unsafe_paths.push(path.clone()),
                None => {}
            }
        }
        for p in unsafe_paths {
            self.reject(
                deployer,
                name,
                "",
                &p,
                RejectKind::UnsafePath,
                format!("target {p:?} is not models/{name}/<version>/<file> and is ignored"),
            );
        }
        offers
    }

    /// Brings `name` to the version the repository says; `Some(version)` if one was installed.
    fn follow(
        &mut self,
        up: &mut Updater,
        deployer: &mut dyn Deployer,
        name: &str,
    ) -> Result<Option<String>, Transient> {
        let offers = self.offers(up, deployer, name);
        let wanted = self.rollout_choice(up, deployer, name)?;
        let state = match self.store.load_state(name) {
            Ok(s) => Some(s),
            Err(e) => {
                self.reject_state(deployer, name, &e);
                None
            }
        };
        if let Some(w) = wanted {
            return self.follow_rollout(up, deployer, name, &offers, &w, state.as_ref());
        }
        let active = state.as_ref().and_then(|s| s.active().cloned());
        let Some(choice) = offers
            .iter()
            .max_by_key(|o| (o.counter, version_key(&o.version)))
            .cloned()
        else {
            return Ok(None);
        };
        if let Some(a) = &active {
            // Without a directive the agent only moves forward; a signed directive may
            // point back (a rollback the operator chose).
            if a.version == choice.version || choice.counter < a.release_counter {
                return Ok(None);
            }
        }
        self.install(up, deployer, name, &choice, false)
    }

    /// Brings every version of a rollout directive's choice in (stable first, then the
    /// candidates beside it), persists them as the active set, and lets the deployer serve
    /// them. A version already verified and loaded is not downloaded again.
    fn follow_rollout(
        &mut self,
        up: &mut Updater,
        deployer: &mut dyn Deployer,
        name: &str,
        offers: &[Offer],
        w: &RolloutChoice,
        state: Option<&crate::install::InstallState>,
    ) -> Result<Option<String>, Transient> {
        let mut installed = None;
        let mut ready = Vec::new();
        for (i, v) in std::iter::once(&w.version).chain(&w.also).enumerate() {
            let beside = i > 0;
            if beside && !ready.contains(&w.version) {
                break; // a candidate is only served beside its stable version
            }
            let Some(offer) = offers.iter().find(|o| &o.version == v).cloned() else {
                continue;
            };
            if offer.counter < w.min_release_counter {
                self.reject(
                    deployer,
                    name,
                    v,
                    &format!("floor {}", w.min_release_counter),
                    RejectKind::BelowReleaseFloor,
                    format!(
                        "release counter {} is below the directive's min_release_counter {}",
                        offer.counter, w.min_release_counter
                    ),
                );
                continue;
            }
            let on_disk = state.and_then(|s| s.verified.iter().find(|x| &x.version == v));
            if let Some(iv) = on_disk {
                if deployer.loaded(name, v) {
                    ready.push(v.clone());
                    continue;
                }
                // Back into a trial, or a candidate after a restart: no download needed.
                let r = self
                    .store
                    .verify_installed(name, iv)
                    .map(|dir| InstalledRelease {
                        model: name.to_owned(),
                        version: v.clone(),
                        release_counter: iv.release_counter,
                        dir,
                    });
                match r.map_err(|e| e.to_string()).and_then(|r| {
                    deployer.load_installed(&r, beside)?;
                    Ok(r)
                }) {
                    Ok(r) => {
                        tracing::info!(model = name, version = %v, beside, "registry: serving from the install area");
                        deployer.event(&AgentEvent::Installed {
                            model: name.to_owned(),
                            version: v.clone(),
                            release_counter: r.release_counter,
                        });
                        installed.get_or_insert(v.clone());
                        ready.push(v.clone());
                        continue;
                    }
                    Err(e) => {
                        tracing::info!(model = name, version = %v, "registry: installing again: {e}")
                    }
                }
            }
            if let Some(done) = self.install(up, deployer, name, &offer, beside)? {
                installed.get_or_insert(done);
                ready.push(v.clone());
            }
        }
        if ready.first() == Some(&w.version) {
            if let Err(e) = self.store.set_active(name, &w.version, &ready[1..]) {
                self.reject_state(deployer, name, &e);
            }
        }
        if let Err(reason) = deployer.rollout_ready(name, &ready) {
            report(deployer, name, "", RejectKind::Validation, reason);
        }
        Ok(installed)
    }

    fn rollout_choice(
        &mut self,
        up: &mut Updater,
        deployer: &mut dyn Deployer,
        name: &str,
    ) -> Result<Option<RolloutChoice>, Transient> {
        let path = format!("rollout/{name}.json");
        let info = match up.get_targetinfo(&path) {
            Ok(Some(i)) => i,
            Ok(None) => return Ok(None),
            Err(e) => {
                self.reject(
                    deployer,
                    name,
                    "",
                    &path,
                    RejectKind::Metadata(e.kind),
                    e.message,
                );
                return Ok(None);
            }
        };
        let dir = self.dir.join("staging").join(name);
        std::fs::create_dir_all(&dir).map_err(|e| {
            Transient(TufError::new(
                ErrorKind::Io,
                format!("{}: {e}", dir.display()),
            ))
        })?;
        let dest = dir.join("rollout.json");
        let cached = up.find_cached_target(&info, &dest);
        let rel = up.target_url_path(&info);
        match self
            .targets
            .download(&rel, &info, self.cfg.max_bundle_bytes, &dest, cached)
        {
            Ok(()) => {}
            Err(e) if is_transient(&e) => return Err(Transient(e)),
            Err(e) => {
                self.reject(
                    deployer,
                    name,
                    "",
                    info.url_hash(),
                    RejectKind::Target(e.kind),
                    e.message,
                );
                return Ok(None);
            }
        }
        let bytes = std::fs::read(&dest).map_err(|e| {
            Transient(TufError::new(
                ErrorKind::Io,
                format!("{}: {e}", dest.display()),
            ))
        })?;
        Ok(deployer.rollout(name, &bytes))
    }

    fn install(
        &mut self,
        up: &mut Updater,
        deployer: &mut dyn Deployer,
        name: &str,
        offer: &Offer,
        beside: bool,
    ) -> Result<Option<String>, Transient> {
        let v = offer.version.as_str();
        let model_path = format!("models/{name}/{v}/{MODEL_FILE}");
        let bundle_path = format!("models/{name}/{v}/{BUNDLE_FILE}");
        // Through the delegation search: the most trusted role's description wins.
        let mut infos = Vec::new();
        for p in [&bundle_path, &model_path] {
            match up.get_targetinfo(p) {
                Ok(Some(i)) => infos.push(i),
                Ok(None) => return Ok(None),
                Err(e) if is_transient(&e) => return Err(Transient(e)),
                Err(e) => {
                    self.reject(
                        deployer,
                        name,
                        v,
                        p,
                        RejectKind::Metadata(e.kind),
                        e.message,
                    );
                    return Ok(None);
                }
            }
        }
        // A version is refused for good only by what its signed hashes name: bytes that
        // failed in transit (a tampering mirror) are fetched again on the next poll.
        let key = format!("{}:{}", infos[0].url_hash(), infos[1].url_hash());
        if self
            .refused
            .contains(&(name.to_owned(), v.to_owned(), key.clone()))
        {
            return Ok(None);
        }
        let staging = match self.store.staging_dir(name, v) {
            Ok(d) => d,
            Err(e) if e.kind == InstallErrorKind::BadName => {
                self.reject(deployer, name, v, &key, RejectKind::UnsafePath, e.message);
                return Ok(None);
            }
            Err(e) => return Err(Transient(TufError::new(ErrorKind::Io, e.message))),
        };
        let fetch_start = Instant::now();
        for (info, file, cap) in [
            (&infos[0], BUNDLE_FILE, self.cfg.max_bundle_bytes),
            (&infos[1], MODEL_FILE, self.cfg.max_model_bytes),
        ] {
            let dest = staging.join(file);
            let cached = up.find_cached_target(info, &dest);
            let rel = up.target_url_path(info);
            match self.targets.download(&rel, info, cap, &dest, cached) {
                Ok(()) => {}
                Err(e) if is_transient(&e) => return Err(Transient(e)),
                Err(e) => {
                    self.store.discard_staging(name, v);
                    report(deployer, name, v, RejectKind::Target(e.kind), e.message);
                    return Ok(None);
                }
            }
        }
        let fetched = Instant::now();
        let staged = StagedRelease {
            model: name.to_owned(),
            version: v.to_owned(),
            release_counter: offer.counter,
            model_path: staging.join(MODEL_FILE),
            bundle_path: staging.join(BUNDLE_FILE),
            dir: staging.clone(),
        };
        if let Err(reason) = deployer.validate(&staged) {
            self.store.discard_staging(name, v);
            self.reject(deployer, name, v, &key, RejectKind::Validation, reason);
            return Ok(None);
        }
        let validated = Instant::now();
        let committed = if beside {
            self.store.commit_beside(name, v, offer.counter, &staging)
        } else {
            self.store.commit(name, v, offer.counter, &staging)
        }
        .map_err(|e| Transient(TufError::new(ErrorKind::Io, e.message)))?;
        let release = InstalledRelease {
            model: name.to_owned(),
            version: v.to_owned(),
            release_counter: committed.release_counter,
            dir: self.store.version_dir(name, v),
        };
        let commit_done = Instant::now();
        let swapped = if beside {
            deployer.install_beside(&release)
        } else {
            deployer.activate(&release)
        };
        if let Err(reason) = swapped {
            // Committed but not swapped in: it will be started on after a restart; say so.
            self.reject(deployer, name, v, &key, RejectKind::Validation, reason);
            return Ok(None);
        }
        // What publishing-to-serving costs besides the poll wait (benches/RESULTS.md).
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        tracing::info!(
            model = name,
            version = v,
            refresh_ms = ms(self.refreshed_in),
            fetch_ms = ms(fetched - fetch_start),
            validate_ms = ms(validated - fetched),
            commit_ms = ms(commit_done - validated),
            swap_ms = ms(commit_done.elapsed()),
            "registry: installed and serving"
        );
        deployer.event(&AgentEvent::Installed {
            model: name.to_owned(),
            version: v.to_owned(),
            release_counter: offer.counter,
        });
        Ok(Some(v.to_owned()))
    }

    /// Runs polls on a new thread until the handle is dropped.
    pub fn spawn(mut self, mut deployer: Box<dyn Deployer>) -> std::io::Result<AgentHandle> {
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("edgeinfer-registry".into())
            .spawn(move || {
                let mut backoff = Backoff::new(
                    Duration::from_millis(self.cfg.retry_initial_ms),
                    self.cfg.poll_interval(),
                );
                loop {
                    let outcome = self.poll_once(deployer.as_mut());
                    let wait = match outcome {
                        PollOutcome::Done { .. } => {
                            backoff.reset();
                            self.cfg.poll_interval()
                                + Duration::from_millis(
                                    random_u64() % (self.cfg.poll_jitter_ms + 1),
                                )
                        }
                        _ => backoff.next_wait(),
                    };
                    s.polls.lock().map(|mut p| *p += 1).ok();
                    s.changed.notify_all();
                    if !s.wait(wait) {
                        return;
                    }
                }
            })?;
        Ok(AgentHandle {
            shared,
            thread: Some(thread),
        })
    }
}

/// Logs and reports a refusal.
fn report(
    deployer: &mut dyn Deployer,
    model: &str,
    version: &str,
    kind: RejectKind,
    reason: String,
) {
    tracing::warn!(model, version, "registry: refused: {reason}");
    deployer.event(&AgentEvent::Rejected {
        model: model.to_owned(),
        version: version.to_owned(),
        kind,
        reason,
    });
}

/// A transport or disk failure: not an attack, retried with backoff.
struct Transient(TufError);

fn is_transient(e: &TufError) -> bool {
    matches!(
        e.kind,
        ErrorKind::Fetch | ErrorKind::NotFound | ErrorKind::Io
    )
}

#[derive(Default)]
struct Shared {
    /// (stop, wake)
    flags: Mutex<(bool, bool)>,
    wake: Condvar,
    polls: Mutex<u64>,
    changed: Condvar,
}

impl Shared {
    /// Sleeps up to `d` or until woken; false when told to stop.
    fn wait(&self, d: Duration) -> bool {
        let Ok(guard) = self.flags.lock() else {
            return false;
        };
        let Ok((mut g, _)) = self.wake.wait_timeout_while(guard, d, |f| !f.0 && !f.1) else {
            return false;
        };
        g.1 = false;
        !g.0
    }
}

/// The running agent; dropping it stops the thread (after the poll in progress).
pub struct AgentHandle {
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl AgentHandle {
    /// Starts the next poll now instead of at the end of the wait.
    pub fn poll_now(&self) {
        if let Ok(mut f) = self.shared.flags.lock() {
            f.1 = true;
        }
        self.shared.wake.notify_all();
    }

    /// Polls completed so far.
    pub fn polls(&self) -> u64 {
        self.shared.polls.lock().map(|p| *p).unwrap_or(0)
    }

    /// Waits up to `timeout` for the poll count to pass `after`; returns the count.
    pub fn wait_polls(&self, after: u64, timeout: Duration) -> u64 {
        let Ok(g) = self.shared.polls.lock() else {
            return 0;
        };
        match self
            .shared
            .changed
            .wait_timeout_while(g, timeout, |p| *p <= after)
        {
            Ok((g, _)) => *g,
            Err(_) => 0,
        }
    }
}

impl Drop for AgentHandle {
    fn drop(&mut self) {
        if let Ok(mut f) = self.shared.flags.lock() {
            f.0 = true;
        }
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Exponential backoff with jitter: `initial`, doubling per failure up to `max`, each wait
/// drawn uniformly from its upper half so a fleet that failed together spreads out.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max: max.max(initial),
            failures: 0,
        }
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// The ceiling of the next wait (before jitter).
    pub fn ceiling(&self) -> Duration {
        self.initial
            .saturating_mul(1u32 << self.failures.min(20))
            .min(self.max)
    }

    pub fn next_wait(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.failures = self.failures.saturating_add(1);
        let half = ceiling / 2;
        let ms = half.as_millis() as u64;
        half + Duration::from_millis(random_u64() % (ms + 1))
    }
}

fn random_u64() -> u64 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    u64::from_le_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_its_cap_with_jitter_in_the_upper_half() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        for ceiling in [100, 200, 400, 800, 1000, 1000] {
            assert_eq!(b.ceiling(), Duration::from_millis(ceiling));
            let w = b.next_wait();
            assert!(
                w >= Duration::from_millis(ceiling / 2) && w <= Duration::from_millis(ceiling),
                "{w:?} for {ceiling}"
            );
        }
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(100));
    }

    #[test]
    fn target_names_parse_strictly() {
        assert_eq!(
            parse_target("models/churn/3/model.onnx"),
            Some(("churn", "3", "model.onnx"))
        );
        for bad in [
            "models/churn/../model.onnx",
            "/models/churn/3/model.onnx",
            "models/churn/3/x/model.onnx",
            "models/churn//model.onnx",
            "other/churn/3/model.onnx",
        ] {
            assert_eq!(parse_target(bad), None, "{bad}");
        }
        assert!(version_key("10") > version_key("9"));
        assert!(version_key("a") > version_key("999"));
    }
}
