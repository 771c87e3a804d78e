//! `edgeinfer tuf`: the TUF client, as the conformance suite's client CLI.
//!
//! `init`, `refresh` and `download` exactly as tuf-conformance's CLIENT-CLI.md
//! says (the flags come before the subcommand; exit 0 on success, 1 on any
//! failure), running the same `edgeinfer_registry::tuf` code the daemon uses.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use edgeinfer_registry::tuf::{self, fetch, target_file_name, Updater, UpdaterConfig};

#[derive(Args)]
pub struct TufArgs {
    /// Directory holding the trusted metadata (root.json, timestamp.json, …).
    #[arg(long)]
    metadata_dir: PathBuf,
    /// Repository metadata location: an http:// URL or a directory.
    #[arg(long)]
    metadata_url: Option<String>,
    /// Target path to download; repeat for several (processed in order).
    #[arg(long = "target-name")]
    target_names: Vec<String>,
    /// Repository targets location: an http:// URL or a directory.
    #[arg(long)]
    target_base_url: Option<String>,
    /// Where verified targets are written (flat: the target path percent-encoded).
    #[arg(long)]
    target_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: TufCommand,
}

#[derive(Subcommand)]
enum TufCommand {
    /// Trust ROOT: copy it into the metadata directory (it must verify by itself).
    Init {
        /// Initial trusted root.json.
        trusted_root: PathBuf,
    },
    /// Update top-level metadata from the repository (the TUF client workflow).
    Refresh,
    /// Refresh, then download and verify each --target-name into --target-dir.
    Download,
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn updater(a: &TufArgs) -> Result<Updater> {
    let url = a
        .metadata_url
        .as_deref()
        .context("--metadata-url is required")?;
    Updater::new(
        &a.metadata_dir,
        url,
        fetch::for_location(url),
        None,
        now(),
        UpdaterConfig::default(),
    )
    .with_context(|| {
        format!(
            "cannot load trusted metadata from {}",
            a.metadata_dir.display()
        )
    })
}

pub fn tuf(a: TufArgs) -> Result<()> {
    match &a.command {
        TufCommand::Init { trusted_root } => {
            let bytes = std::fs::read(trusted_root)
                .with_context(|| format!("cannot read {}", trusted_root.display()))?;
            // Check it parses and is signed by itself, so a typo fails here and
            // not at the first refresh.
            tuf::TrustedMetadataSet::new(&bytes, now())
                .with_context(|| format!("{} is not a valid root", trusted_root.display()))?;
            tuf::store::MetadataStore::open(&a.metadata_dir)?.persist("root", &bytes)?;
            eprintln!("edgeinfer tuf: trusting {}", trusted_root.display());
        }
        TufCommand::Refresh => {
            let mut up = updater(&a)?;
            up.refresh().context("refresh failed")?;
            let t = up.trusted();
            eprintln!(
                "edgeinfer tuf: refreshed: root v{}, timestamp v{}, snapshot v{}, targets v{}",
                t.root().common.version,
                t.timestamp().map_or(0, |x| x.common.version),
                t.snapshot().map_or(0, |x| x.common.version),
                t.targets("targets").map_or(0, |x| x.common.version),
            );
        }
        TufCommand::Download => {
            let (Some(base), Some(dir)) = (&a.target_base_url, &a.target_dir) else {
                bail!("download needs --target-base-url and --target-dir");
            };
            if a.target_names.is_empty() {
                bail!("download needs at least one --target-name");
            }
            let mut up = updater(&a)?.with_targets_base(base);
            for name in &a.target_names {
                let info = up
                    .get_targetinfo(name)
                    .with_context(|| format!("looking up {name:?}"))?
                    .with_context(|| format!("{name:?} is not a target of this repository"))?;
                let file = dir.join(target_file_name(name));
                if up.find_cached_target(&info, &file) {
                    eprintln!("edgeinfer tuf: {name} is up to date in {}", file.display());
                    continue;
                }
                up.download_target(&info, &file)
                    .with_context(|| format!("downloading {name:?}"))?;
                eprintln!(
                    "edgeinfer tuf: {name} ({} bytes) verified into {}",
                    info.length,
                    file.display()
                );
            }
        }
    }
    Ok(())
}
