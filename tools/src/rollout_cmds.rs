//! `edgeinfer rollout`: the operator's side of a fleet rollout. `set` writes the signed
//! rollout directive (`rollout/<name>.json`, a TUF target) into the release repository and
//! signs it; `show` prints the directive and where given devices land; `status` listens to
//! the fleet's telemetry on the broker and summarises it; `advance` checks the documented
//! gates on that summary before it signs the next canary step.
//!
//! The directive type, its validation, the bucketing and the gates are the rollout crate's;
//! the repository editing and signing are the release tooling's
//! (`edgeinfer_registry::release`); this file only wires them to flags, files and MQTT.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use edgeinfer_registry::release::{DirDestination, NoProgress, Repo, SigningKey};
use edgeinfer_rollout::bucket::bucket;
use edgeinfer_rollout::fleet::{check_gates, FleetSummary, FleetView, Gates};
use edgeinfer_rollout::{Canary, Candidate, InDeviceSplit, RolloutConfig, RolloutDirective};
use edgeinfer_telemetry::config::BrokerAddr;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{Client, Event, MqttOptions};

#[derive(Args)]
pub struct RolloutArgs {
    #[command(subcommand)]
    command: RolloutCommand,
}

#[derive(Subcommand)]
enum RolloutCommand {
    /// Write rollout/<model>.json into the release repository, sign it with the keys given
    /// and, with --publish, publish once every staged role meets its threshold.
    Set(SetArgs),
    /// Print the directive in the repository, and which devices it puts in the canary.
    Show(ShowArgs),
    /// Listen to the fleet's telemetry and summarise it: devices per version, per-version
    /// requests, errors, p99 and accuracy, and rollbacks.
    Status(StatusArgs),
    /// Check the gates (no rollback, canary devices reporting, the candidate judged against
    /// stable across the fleet), then raise the canary percent and sign; refuses otherwise.
    Advance(AdvanceArgs),
}

/// Where the fleet's telemetry is heard.
#[derive(Args)]
struct BrokerArgs {
    /// The MQTT broker the devices publish to: mqtt://HOST[:PORT] (plain TCP).
    #[arg(long)]
    broker: String,
    /// The devices' `[telemetry] topic_prefix`.
    #[arg(long, default_value = "edgeinfer")]
    prefix: String,
    /// How long to listen. Status is retained and arrives at once (with each device's arms
    /// and recorded rollbacks); latency, accuracy and events count only if published while
    /// listening, so listen at least one interval.
    #[arg(long, default_value_t = 10)]
    listen_s: u64,
}

#[derive(Args)]
struct StatusArgs {
    #[arg(long)]
    model: String,
    #[command(flatten)]
    broker: BrokerArgs,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct AdvanceArgs {
    #[arg(long, env = "EDGEINFER_RELEASE_DIR", default_value = ".")]
    dir: PathBuf,
    #[arg(long)]
    model: String,
    /// The next canary percent; must be above the current one.
    #[arg(long)]
    to: f64,
    #[command(flatten)]
    broker: BrokerArgs,
    /// Devices that must report serving the candidate.
    #[arg(long, default_value_t = 1)]
    min_canary_devices: u64,
    /// A TOML file whose `[rollout]` section sets the judge's thresholds (the devices'
    /// config works); default: the documented defaults.
    #[arg(long)]
    thresholds: Option<PathBuf>,
    #[arg(long = "key")]
    keys: Vec<PathBuf>,
    #[arg(long)]
    publish: Option<PathBuf>,
}

#[derive(Args)]
struct SetArgs {
    /// The release repository's working directory (`edgeinfer repo init`), as for
    /// `edgeinfer release`.
    #[arg(long, env = "EDGEINFER_RELEASE_DIR", default_value = ".")]
    dir: PathBuf,
    #[arg(long)]
    model: String,
    /// The version every device outside the canary serves.
    #[arg(long)]
    stable: String,
    /// The version under trial; omit to end a trial (every device back on stable).
    #[arg(long, requires_all = ["percent", "salt"])]
    candidate: Option<String>,
    /// Share of the fleet in the canary, 0..=100 in steps of 0.01.
    #[arg(long)]
    percent: Option<f64>,
    /// Draws the canary set; keep it to grow a trial, change it to start a new one.
    #[arg(long)]
    salt: Option<String>,
    /// Share of a canary device's traffic for the candidate (sticky by routing key);
    /// omitted = the device's `[rollout] split_percent`, else the candidate alone.
    #[arg(long, requires = "candidate")]
    split: Option<f64>,
    /// Devices refuse releases below this counter; default: the current directive's.
    #[arg(long)]
    min_release_counter: Option<u64>,
    /// A private key file to sign the staged roles with; repeat for several.
    #[arg(long = "key")]
    keys: Vec<PathBuf>,
    /// Publish to this directory after signing (fails while signatures are missing).
    #[arg(long)]
    publish: Option<PathBuf>,
}

#[derive(Args)]
struct ShowArgs {
    #[arg(long, env = "EDGEINFER_RELEASE_DIR", default_value = ".")]
    dir: PathBuf,
    #[arg(long)]
    model: String,
    /// Device ids to place: prints each one's bucket and whether it is in the canary.
    #[arg(long = "device")]
    devices: Vec<String>,
}

pub fn rollout(a: RolloutArgs) -> Result<()> {
    match a.command {
        RolloutCommand::Set(a) => set(a),
        RolloutCommand::Show(a) => show(a),
        RolloutCommand::Status(a) => status(a),
        RolloutCommand::Advance(a) => advance(a),
    }
}

fn target_path(model: &str) -> String {
    format!("rollout/{model}.json")
}

/// The directive currently in the repository (staged edits included), if any.
fn current(repo: &Repo, model: &str) -> Result<Option<RolloutDirective>> {
    let path = target_path(model);
    if !repo.targets()?.contains_key(&path) {
        return Ok(None);
    }
    let bytes = repo.read_target(&path)?;
    let d = RolloutDirective::parse_for(model, &bytes)
        .with_context(|| format!("the repository's {path} does not parse"))?;
    Ok(Some(d))
}

fn set(a: SetArgs) -> Result<()> {
    let mut repo = Repo::open(&a.dir)?;
    let previous = current(&repo, &a.model)?;
    let candidate = match (&a.candidate, a.percent, &a.salt) {
        (Some(version), Some(percent), Some(salt)) => Some(Candidate {
            version: version.clone(),
            canary: Canary {
                percent,
                salt: salt.clone(),
            },
            split: a.split.map(|percent| InDeviceSplit { percent }),
        }),
        (None, None, None) => None,
        _ => bail!("--candidate, --percent and --salt go together"),
    };
    let d = RolloutDirective {
        model: a.model.clone(),
        stable: a.stable.clone(),
        candidate,
        min_release_counter: a
            .min_release_counter
            .or(previous.as_ref().map(|p| p.min_release_counter))
            .unwrap_or(0),
    };
    d.validate()
        .map_err(edgeinfer_rollout::Error::from)
        .context("the directive is refused")?;
    // A directive naming a version the repository never released would send devices
    // looking for a target that is not there.
    let targets = repo.targets()?;
    let versions = std::iter::once(&d.stable).chain(d.candidate.as_ref().map(|c| &c.version));
    for v in versions {
        let model_target = format!("models/{}/{v}/model.onnx", d.model);
        if !targets.contains_key(&model_target) {
            bail!(
                "version {v:?} of {:?} is not released in {} (no target {model_target})",
                d.model,
                a.dir.display()
            );
        }
    }
    write_directive(
        &mut repo,
        &d,
        previous.as_ref(),
        &a.keys,
        a.publish.as_ref(),
    )
}

/// Stages `d` as `rollout/<model>.json`, signs with `keys`, publishes to `publish`.
fn write_directive(
    repo: &mut Repo,
    d: &RolloutDirective,
    previous: Option<&RolloutDirective>,
    keys: &[PathBuf],
    publish: Option<&PathBuf>,
) -> Result<()> {
    let path = target_path(&d.model);
    repo.put_target(&path, &d.to_bytes(), None)?;
    println!("{path} staged: {}", describe(d));
    if let Some(p) = previous {
        println!("  was: {}", describe(p));
    }
    if !keys.is_empty() {
        let keys = keys
            .iter()
            .map(|p| SigningKey::load(p))
            .collect::<Result<Vec<_>, _>>()?;
        let refs: Vec<&SigningKey> = keys.iter().collect();
        repo.sign_with(&refs)?;
    }
    for s in repo.status()? {
        println!("  {s}");
    }
    if let Some(dir) = publish {
        let report = repo.publish(&DirDestination::new(dir.clone()), &mut NoProgress)?;
        println!(
            "published to {}: {} files, {} bytes",
            dir.display(),
            report.sent.len(),
            report.bytes
        );
    }
    Ok(())
}

fn describe(d: &RolloutDirective) -> String {
    match &d.candidate {
        None => format!("stable {} on every device", d.stable),
        Some(c) => {
            let split = match &c.split {
                Some(s) => format!(", {}% of a canary device's traffic", s.percent),
                None => String::new(),
            };
            format!(
                "stable {}, candidate {} on {}% of devices (salt {:?}){split}",
                d.stable, c.version, c.canary.percent, c.canary.salt
            )
        }
    }
}

fn show(a: ShowArgs) -> Result<()> {
    let repo = Repo::open(&a.dir)?;
    let Some(d) = current(&repo, &a.model)? else {
        bail!("{} has no {}", a.dir.display(), target_path(&a.model));
    };
    print!("{}", String::from_utf8_lossy(&d.to_bytes()));
    println!("{}", describe(&d));
    for id in &a.devices {
        match &d.candidate {
            None => println!("{id}: stable {}", d.stable),
            Some(c) => {
                let b = bucket(c.canary.salt.as_bytes(), id.as_bytes());
                let (serves, rule) = if b < c.canary_bp() {
                    (&c.version, "<")
                } else {
                    (&d.stable, ">=")
                };
                println!("{id}: bucket {b} {rule} {}: {serves}", c.canary_bp());
            }
        }
    }
    Ok(())
}

// === status and advance ===

/// Subscribes to the fleet's status, latency, accuracy and events for `listen_s` seconds.
fn listen(b: &BrokerArgs, model: &str) -> Result<FleetView> {
    let addr = BrokerAddr::parse(&b.broker).map_err(anyhow::Error::msg)?;
    if addr.tls {
        bail!(
            "{}: mqtts:// is not supported by this command yet",
            b.broker
        );
    }
    let id = format!("edgeinfer-rollout-{}", std::process::id());
    let mut opts = MqttOptions::new(id, addr.host, addr.port);
    opts.set_keep_alive(Duration::from_secs(10));
    opts.set_clean_start(true);
    let (client, mut conn) = Client::new(opts, 256);
    for level in ["status", "latency", "accuracy", "events"] {
        client
            .subscribe(format!("{}/+/{level}", b.prefix), QoS::AtLeastOnce)
            .context("queueing a subscription")?;
    }
    let mut view = FleetView::new(model);
    let (mut subscribed, mut heard) = (0, 0u64);
    let end = Instant::now() + Duration::from_secs(b.listen_s);
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        match conn.recv_timeout(left) {
            Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => subscribed += 1,
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                heard += view.ingest(&String::from_utf8_lossy(&p.topic), &p.payload) as u64;
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => bail!("broker {}: {e}", b.broker),
            Err(_) => break,
        }
    }
    let _ = client.disconnect();
    if subscribed < 4 {
        bail!(
            "broker {} did not confirm the subscriptions within {} s",
            b.broker,
            b.listen_s
        );
    }
    eprintln!("heard {heard} messages about {model:?} in {} s", b.listen_s);
    Ok(view)
}

fn print_summary(s: &FleetSummary) {
    println!(
        "model {}: {} devices ({} offline)",
        s.model, s.devices, s.offline
    );
    println!("version  devices  requests  error_rate  p99_us  accuracy  labels  arms");
    for (v, e) in &s.versions {
        let rate = if e.requests > 0 {
            format!("{:.4}", e.errors as f64 / e.requests as f64)
        } else {
            "-".into()
        };
        let p99 = e.p99_us.map_or("-".into(), |p| p.to_string());
        let acc = e.accuracy.map_or("-".into(), |a| format!("{a:.4}"));
        let arms: Vec<String> = e.arms.iter().map(|(a, n)| format!("{a}:{n}")).collect();
        println!(
            "{v:<8} {:>7} {:>9} {rate:>11} {p99:>7} {acc:>9} {:>7}  {}",
            e.devices,
            e.requests,
            e.labels,
            if arms.is_empty() {
                "-".into()
            } else {
                arms.join(",")
            }
        );
    }
    println!("rollbacks: {}", s.rollbacks.len());
    for r in &s.rollbacks {
        // Salt and time come from the device's retained status (its bad-version record).
        let trial = match (&r.salt, r.at_unix_s) {
            (Some(salt), Some(at)) => format!(" (trial salt {salt:?}, at {at})"),
            _ => String::new(),
        };
        println!(
            "  {}: {} -> {}{trial}: {}",
            r.device, r.from, r.to, r.reason
        );
    }
}

fn status(a: StatusArgs) -> Result<()> {
    let summary = listen(&a.broker, &a.model)?.summary();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print_summary(&summary);
    }
    Ok(())
}

/// The `[rollout]` section of a TOML file (other sections are ignored), validated.
fn thresholds(path: Option<&PathBuf>) -> Result<RolloutConfig> {
    let Some(path) = path else {
        return Ok(RolloutConfig::default());
    };
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut file: toml::Table =
        toml::from_str(&text).with_context(|| format!("{}", path.display()))?;
    let cfg: RolloutConfig = match file.remove("rollout") {
        Some(section) => section
            .try_into()
            .with_context(|| format!("{}: [rollout]", path.display()))?,
        None => RolloutConfig::default(),
    };
    if let Some(p) = cfg.validate().first() {
        bail!("{}: {}: {}", path.display(), p.key, p.message);
    }
    Ok(cfg)
}

fn advance(a: AdvanceArgs) -> Result<()> {
    let cfg = thresholds(a.thresholds.as_ref())?;
    let mut repo = Repo::open(&a.dir)?;
    let Some(current) = current(&repo, &a.model)? else {
        bail!("{} has no {}", a.dir.display(), target_path(&a.model));
    };
    let Some(c) = &current.candidate else {
        bail!(
            "the directive has no candidate to advance: {}",
            describe(&current)
        );
    };
    if a.to <= c.canary.percent {
        bail!(
            "--to {} is not above the current {}% (use `rollout set` to lower it)",
            a.to,
            c.canary.percent
        );
    }
    let summary = listen(&a.broker, &a.model)?.summary();
    print_summary(&summary);
    let gates = Gates {
        min_canary_devices: a.min_canary_devices,
    };
    let refusals = check_gates(&summary, &current, &cfg, &gates);
    if !refusals.is_empty() {
        bail!(
            "refusing to advance {} beyond {}%:\n  {}",
            a.model,
            c.canary.percent,
            refusals.join("\n  ")
        );
    }
    let mut next = current.clone();
    if let Some(nc) = next.candidate.as_mut() {
        nc.canary.percent = a.to;
    }
    next.validate()
        .map_err(edgeinfer_rollout::Error::from)
        .context("the next step is refused")?;
    println!("gates passed");
    write_directive(
        &mut repo,
        &next,
        Some(&current),
        &a.keys,
        a.publish.as_ref(),
    )
}
