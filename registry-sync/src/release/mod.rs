//! Release tooling: what a signed model version is ([`bundle`]) and how a TUF repository
//! of them is created, signed and published.

pub mod bundle;

pub use bundle::{Bundle, BundleError, BundleErrorKind, TargetCustom, BUNDLE_SCHEMA_VERSION};
