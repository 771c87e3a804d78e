//! Feature schemas: which features a model wants, in which order, of which dtype, with
//! which defaults and how old a value may be. The one type [`FeatureSchema`] is read from
//! the model's config today and from the signed bundle once the registry lands.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::row::{ROW_F32, ROW_F64};
use crate::FeatureError;

/// Most features one schema (and so one stored row) may hold.
pub const MAX_FEATURES: usize = 4096;

/// The dtype a feature's values must have. Every value is stored as an f64, which holds
/// each of these exactly (integers up to 2^53).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FeatureDType {
    F32,
    F64,
    I32,
    I64,
    Bool,
}

/// What assembly does with a value older than its max age (Feast's `OUTSIDE_MAX_AGE`).
/// Counted and flagged either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StalePolicy {
    /// Serve the field's default, as if the value were missing.
    #[default]
    Default,
    /// Serve the stale value anyway.
    Value,
}

/// One feature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldSpec {
    pub name: String,
    pub dtype: FeatureDType,
    /// Served when the entity or this feature is missing (and when stale, by policy).
    #[serde(default)]
    pub default: f64,
    /// Overrides the schema's `max_age_s` for this feature; 0 = never stale.
    #[serde(default)]
    pub max_age_s: Option<u64>,
    /// NaN and ±Inf are rejected unless allowed (then only for float dtypes).
    #[serde(default)]
    pub allow_non_finite: bool,
}

/// A model's feature schema: the `features` table of a `[[models]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureSchema {
    /// Rows written under another version are never served to this model (skew protection).
    pub version: u32,
    /// The model input the assembled `[rows, features]` f32 tensor feeds; unset = the first.
    #[serde(default)]
    pub input: Option<String>,
    /// Default max age for every feature, seconds; 0 = never stale.
    #[serde(default)]
    pub max_age_s: u64,
    #[serde(default)]
    pub stale: StalePolicy,
    /// The features, in the order the model's input wants them.
    pub fields: Vec<FieldSpec>,
}

// === impl FeatureDType ===

impl FeatureDType {
    pub fn name(self) -> &'static str {
        match self {
            FeatureDType::F32 => "f32",
            FeatureDType::F64 => "f64",
            FeatureDType::I32 => "i32",
            FeatureDType::I64 => "i64",
            FeatureDType::Bool => "bool",
        }
    }

    fn is_float(self) -> bool {
        matches!(self, FeatureDType::F32 | FeatureDType::F64)
    }
}

// === impl FieldSpec ===

impl FieldSpec {
    /// Checks one value against this field's dtype and finiteness rule.
    pub fn check(&self, v: f64) -> Result<(), FeatureError> {
        let bad = |why: &str| {
            Err(FeatureError::InvalidValue(format!(
                "feature {:?} ({}): {v} {why}",
                self.name,
                self.dtype.name()
            )))
        };
        if !v.is_finite() {
            if self.dtype.is_float() && self.allow_non_finite {
                return Ok(());
            }
            return bad(if self.dtype.is_float() {
                "is not finite and the schema forbids NaN/Inf here"
            } else {
                "is not an integer"
            });
        }
        match self.dtype {
            FeatureDType::F64 => Ok(()),
            FeatureDType::F32 if v.abs() > f64::from(f32::MAX) => bad("is out of f32 range"),
            FeatureDType::F32 => Ok(()),
            FeatureDType::I32 | FeatureDType::I64 if v.fract() != 0.0 => bad("is not an integer"),
            FeatureDType::I32 if v < f64::from(i32::MIN) || v > f64::from(i32::MAX) => {
                bad("is out of i32 range")
            }
            // Beyond 2^53 an f64 no longer holds every integer.
            FeatureDType::I64 if v.abs() > 9_007_199_254_740_992.0 => {
                bad("is beyond ±2^53, which the store cannot hold exactly")
            }
            FeatureDType::I32 | FeatureDType::I64 => Ok(()),
            FeatureDType::Bool if v == 0.0 || v == 1.0 => Ok(()),
            FeatureDType::Bool => bad("is not a bool (0 or 1)"),
        }
    }

    /// Parses a text cell (CSV) as this field's dtype, then [`check`](Self::check)s it.
    pub fn parse(&self, cell: &str) -> Result<f64, FeatureError> {
        let t = cell.trim();
        let wrong = || {
            FeatureError::InvalidValue(format!(
                "feature {:?}: {t:?} is not a valid {}",
                self.name,
                self.dtype.name()
            ))
        };
        let v = match self.dtype {
            FeatureDType::F32 | FeatureDType::F64 => t.parse::<f64>().map_err(|_| wrong())?,
            FeatureDType::I32 | FeatureDType::I64 => t.parse::<i64>().map_err(|_| wrong())? as f64,
            FeatureDType::Bool => match t {
                "1" | "true" | "True" | "TRUE" => 1.0,
                "0" | "false" | "False" | "FALSE" => 0.0,
                _ => return Err(wrong()),
            },
        };
        self.check(v)?;
        Ok(v)
    }
}

// === impl FeatureSchema ===

impl FeatureSchema {
    /// Checks the schema itself: names unique and non-empty, defaults valid for their dtype.
    pub fn validate(&self) -> Result<(), FeatureError> {
        let bad = |m: String| Err(FeatureError::Schema(m));
        if self.fields.is_empty() {
            return bad("a feature schema needs at least one field".into());
        }
        if self.fields.len() > MAX_FEATURES {
            return bad(format!(
                "{} fields; at most {MAX_FEATURES} are allowed",
                self.fields.len()
            ));
        }
        let mut seen = HashMap::new();
        for (i, f) in self.fields.iter().enumerate() {
            if f.name.is_empty() {
                return bad(format!("field {i} has an empty name"));
            }
            if let Some(j) = seen.insert(f.name.as_str(), i) {
                return bad(format!("field {:?} is listed twice ({j} and {i})", f.name));
            }
            if f.allow_non_finite && !f.dtype.is_float() {
                return bad(format!(
                    "field {:?}: allow_non_finite needs a float dtype, not {}",
                    f.name,
                    f.dtype.name()
                ));
            }
            f.check(f.default)
                .map_err(|e| FeatureError::Schema(format!("default: {e}")))?;
        }
        Ok(())
    }

    /// The index of a feature by name.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.fields.iter().position(|f| f.name == name)
    }

    /// The effective max age of field `i` in milliseconds; `None` = never stale.
    pub fn max_age_ms(&self, i: usize) -> Option<i64> {
        let s = self.fields[i].max_age_s.unwrap_or(self.max_age_s);
        (s > 0).then(|| i64::try_from(s.saturating_mul(1000)).unwrap_or(i64::MAX))
    }

    /// The storage format of rows written under this schema: [`ROW_F32`] when every
    /// feature is `f32` or `bool` (an f32 holds each exactly, and assembly serves f32
    /// anyway), else [`ROW_F64`]. GET_FEATURES then returns the stored f32 widened.
    pub fn row_format(&self) -> u16 {
        let f32_enough = self
            .fields
            .iter()
            .all(|f| matches!(f.dtype, FeatureDType::F32 | FeatureDType::Bool));
        if f32_enough {
            ROW_F32
        } else {
            ROW_F64
        }
    }

    /// Whether two schemas store the same row layout (names and dtypes, in order): rows of
    /// one version can only be read with a schema of the same layout.
    pub fn same_layout(&self, other: &FeatureSchema) -> bool {
        self.version == other.version
            && self.fields.len() == other.fields.len()
            && self
                .fields
                .iter()
                .zip(&other.fields)
                .all(|(a, b)| a.name == b.name && a.dtype == b.dtype)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn field(name: &str, dtype: FeatureDType) -> FieldSpec {
        FieldSpec {
            name: name.into(),
            dtype,
            default: 0.0,
            max_age_s: None,
            allow_non_finite: false,
        }
    }

    #[test]
    fn dtype_checks_reject_what_the_dtype_cannot_hold() {
        let i = field("n", FeatureDType::I32);
        assert!(i.check(3.0).is_ok());
        assert!(i.check(3.5).is_err());
        assert!(i.check(3e10).is_err());
        assert!(i.parse("1.5").is_err());
        assert_eq!(i.parse(" 7 ").unwrap(), 7.0);
        let b = field("b", FeatureDType::Bool);
        assert_eq!(b.parse("true").unwrap(), 1.0);
        assert!(b.check(2.0).is_err());
        let f = field("x", FeatureDType::F32);
        assert!(f.parse("abc").is_err());
        assert!(f.parse("NaN").is_err());
        assert!(f.parse("inf").is_err());
        assert!(f.check(1e300).is_err());
        let mut g = field("y", FeatureDType::F64);
        g.allow_non_finite = true;
        assert!(g.parse("NaN").unwrap().is_nan());
    }

    #[test]
    fn validate_rejects_duplicates_bad_defaults_and_non_finite_ints() {
        let mut s = FeatureSchema {
            version: 1,
            input: None,
            max_age_s: 0,
            stale: StalePolicy::Default,
            fields: vec![field("a", FeatureDType::F32), field("a", FeatureDType::F32)],
        };
        assert!(s.validate().unwrap_err().to_string().contains("twice"));
        s.fields[1].name = "b".into();
        s.validate().unwrap();
        s.fields[1].dtype = FeatureDType::Bool;
        s.fields[1].default = 5.0;
        assert!(s.validate().unwrap_err().to_string().contains("default"));
        s.fields[1].default = 0.0;
        s.fields[1].allow_non_finite = true;
        assert!(s.validate().is_err());
    }

    #[test]
    fn parses_from_toml() {
        let s: FeatureSchema = toml::from_str(
            r#"
            version = 2
            max_age_s = 60
            stale = "value"
            [[fields]]
            name = "age"
            dtype = "i32"
            default = 30
            [[fields]]
            name = "score"
            dtype = "f32"
            max_age_s = 0
            "#,
        )
        .unwrap();
        s.validate().unwrap();
        assert_eq!(s.stale, StalePolicy::Value);
        assert_eq!(s.max_age_ms(0), Some(60_000));
        assert_eq!(s.max_age_ms(1), None);
        assert!(toml::from_str::<FeatureSchema>("version = 1\nfields = []\nbogus = 1").is_err());
    }
}
