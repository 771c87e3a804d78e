//! Release tooling: what a signed model version is ([`bundle`]), the signing keys
//! ([`keys`]), the TUF repository a release engineer edits, signs and publishes
//! ([`repo`]), and where it is published to ([`publish`]: a directory, or MLflow's
//! artifact store through [`crate::mlflow`]).
//!
//! Architecture invariant: nothing here decides trust for a box. The repository is
//! checked by the same client the daemon runs (`tuf::TrustedMetadataSet`) before it is
//! published, and the destination is untrusted storage: only signatures decide.

pub mod bundle;
pub mod keys;
pub mod publish;
pub mod repo;

pub use bundle::{Bundle, BundleError, BundleErrorKind, TargetCustom, BUNDLE_SCHEMA_VERSION};
pub use keys::SigningKey;
pub use publish::{Destination, DirDestination, NoProgress, Progress};
pub use repo::{Repo, RoleStatus};

/// What went wrong in the release tooling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseErrorKind {
    /// Local disk.
    Io,
    /// A key file that cannot be read or used.
    Key,
    /// The working repository is missing, corrupt, or already initialised.
    Repo,
    /// A request that does not fit the repository (unknown role, bad threshold, a key
    /// that may not sign anything staged, an unsafe target path).
    Invalid,
    /// Staged metadata lacks signatures: publishing waits for more key holders.
    Threshold,
    /// The repository does not verify with our own TUF client (a bug, or tampering with
    /// the working directory).
    Verify,
    /// The publish destination or MLflow failed.
    Transport,
    /// MLflow answered, but not what a release needs (no such alias, not READY, no ONNX file).
    Mlflow,
}

/// A release tooling error: a kind to match on and a message for people.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ReleaseError {
    pub kind: ReleaseErrorKind,
    pub message: String,
}

impl ReleaseError {
    pub fn new(kind: ReleaseErrorKind, message: impl Into<String>) -> Self {
        ReleaseError {
            kind,
            message: message.into(),
        }
    }
}

impl From<crate::tuf::TufError> for ReleaseError {
    fn from(e: crate::tuf::TufError) -> Self {
        ReleaseError::new(ReleaseErrorKind::Verify, e.message)
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` for seconds since the Unix epoch (TUF's `expires` form).
pub fn format_time(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // H. Hinnant's civil_from_days, the inverse of tuf::metadata's days_from_civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Seconds since the Unix epoch by the system clock.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_time_inverts_the_clients_parser() {
        for t in [
            0,
            951_868_800,
            1 << 31,
            1_709_208_000,
            4_102_444_800,
            1_796_125_589,
        ] {
            let s = format_time(t);
            assert_eq!(crate::tuf::metadata::parse_time(&s).unwrap(), t, "{s}");
        }
        assert_eq!(format_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_time(1_709_208_000), "2024-02-29T12:00:00Z");
    }
}
