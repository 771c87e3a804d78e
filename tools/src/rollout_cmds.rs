//! `edgeinfer rollout`: the operator's side of a fleet rollout. `set` writes the signed
//! rollout directive (`rollout/<name>.json`, a TUF target) into the release repository and
//! signs it; `show` prints the directive and where given devices land.
//!
//! The directive type, its validation and the bucketing are the rollout crate's; the
//! repository editing and signing are the release tooling's (`edgeinfer_registry::release`).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use edgeinfer_registry::release::{DirDestination, NoProgress, Repo, SigningKey};
use edgeinfer_rollout::bucket::bucket;
use edgeinfer_rollout::{Canary, Candidate, InDeviceSplit, RolloutDirective};

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
    let path = target_path(&d.model);
    repo.put_target(&path, &d.to_bytes(), None)?;
    println!("{path} staged: {}", describe(&d));
    if let Some(p) = &previous {
        println!("  was: {}", describe(p));
    }
    if !a.keys.is_empty() {
        let keys = a
            .keys
            .iter()
            .map(|p| SigningKey::load(p))
            .collect::<Result<Vec<_>, _>>()?;
        let refs: Vec<&SigningKey> = keys.iter().collect();
        repo.sign_with(&refs)?;
    }
    for s in repo.status()? {
        println!("  {s}");
    }
    if let Some(dir) = &a.publish {
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
