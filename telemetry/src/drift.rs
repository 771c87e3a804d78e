//! Drift of a model version's inputs and outputs against its reference statistics, from
//! bin counters only (never stored samples): numeric values fall into the reference's
//! decile bins plus a missing bin, categories into the top-K plus OTHER. Per tumbling
//! window: PSI (ε = 1e-4 for empty bins), Jensen–Shannon distance, KS D at the bin edges,
//! and L∞ over categories. [`calibrate`] derives thresholds (mean + 3σ over bootstrapped
//! reference windows) for the release tooling.

use serde::{Deserialize, Serialize};

/// Probability floor for empty bins in PSI and JS.
pub const EPS: f64 = 1e-4;

/// Reference statistics of one model version (from its signed bundle; until the registry
/// lands, from the model's config). Versioned with the model, never learnt online.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ReferenceStats {
    #[serde(default)]
    pub features: Vec<FeatureRef>,
    /// The same for the model's output (prediction drift).
    #[serde(default)]
    pub outputs: Vec<FeatureRef>,
}

/// One feature (an input column, or an output) and its reference distribution.
/// (No `deny_unknown_fields` here: serde cannot combine it with the flattened `dist`;
/// [`Distribution::validate`] checks the shape instead.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureRef {
    pub name: String,
    /// Column of the model's first input tensor (or output) this feature is.
    #[serde(default)]
    pub column: usize,
    #[serde(flatten)]
    pub dist: Distribution,
    /// Per-feature thresholds; absent = [`Thresholds::default`].
    #[serde(default)]
    pub thresholds: Option<Thresholds>,
}

/// How a feature's values are binned, and the reference share of each bin.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Distribution {
    /// `edges` ascending (the reference deciles: 9 edges, 10 bins); `probs` has one share per
    /// bin plus a last one for missing (NaN) values.
    Numeric { edges: Vec<f64>, probs: Vec<f64> },
    /// `categories` are the top K; `probs` has one share each plus a last one for OTHER.
    Categorical {
        categories: Vec<i64>,
        probs: Vec<f64>,
    },
}

/// When a feature's window warns or alerts.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Thresholds {
    pub psi_warn: f64,
    pub psi_alert: f64,
    pub js_alert: f64,
    /// L∞ over categories (categorical features only).
    pub linf_alert: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            psi_warn: 0.1,
            psi_alert: 0.25,
            js_alert: 0.1,
            linf_alert: 0.1,
        }
    }
}

/// A window's verdict on one feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    Ok,
    Warn,
    Alert,
}

/// The statistics of one feature over one window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FeatureDrift {
    pub name: String,
    pub kind: &'static str,
    pub rows: u64,
    pub missing_share: f64,
    pub psi: f64,
    pub js: f64,
    /// KS D at the bin edges (numeric only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ks: Option<f64>,
    /// L∞ over top-K + OTHER (categorical only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub linf: Option<f64>,
    pub level: Level,
}

// === impl FeatureRef ===

impl FeatureRef {
    /// Reference for a numeric feature from reference samples: decile edges and shares.
    pub fn numeric_from_samples(name: &str, column: usize, samples: &[f64]) -> FeatureRef {
        let mut v: Vec<f64> = samples.iter().copied().filter(|x| !x.is_nan()).collect();
        v.sort_by(f64::total_cmp);
        let mut edges: Vec<f64> = (1..10)
            .filter_map(|d| {
                v.get((v.len() * d / 10).min(v.len().saturating_sub(1)))
                    .copied()
            })
            .collect();
        edges.dedup();
        let mut dist = Distribution::Numeric {
            probs: vec![0.0; edges.len() + 2],
            edges,
        };
        let mut counts = vec![0u64; dist.bins()];
        for &x in samples {
            counts[dist.bin_of(x)] += 1;
        }
        let n = samples.len().max(1) as f64;
        if let Distribution::Numeric { probs, .. } = &mut dist {
            *probs = counts.iter().map(|&c| c as f64 / n).collect();
        }
        FeatureRef {
            name: name.into(),
            column,
            dist,
            thresholds: None,
        }
    }

    /// Reference for a categorical feature: the `k` most frequent values and OTHER.
    pub fn categorical_from_samples(
        name: &str,
        column: usize,
        samples: &[i64],
        k: usize,
    ) -> FeatureRef {
        let mut freq = std::collections::BTreeMap::<i64, u64>::new();
        for &s in samples {
            *freq.entry(s).or_default() += 1;
        }
        let mut by: Vec<(i64, u64)> = freq.into_iter().collect();
        by.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        by.truncate(k);
        let n = samples.len().max(1) as f64;
        let top: u64 = by.iter().map(|c| c.1).sum();
        let mut probs: Vec<f64> = by.iter().map(|c| c.1 as f64 / n).collect();
        probs.push((samples.len() as u64 - top) as f64 / n);
        FeatureRef {
            name: name.into(),
            column,
            dist: Distribution::Categorical {
                categories: by.into_iter().map(|c| c.0).collect(),
                probs,
            },
            thresholds: None,
        }
    }

    pub fn thresholds(&self) -> Thresholds {
        self.thresholds.unwrap_or_default()
    }

    /// This window's statistics from its bin counts.
    pub fn evaluate(&self, counts: &[u64]) -> FeatureDrift {
        let probs = self.dist.probs();
        let n: u64 = counts.iter().sum();
        let q: Vec<f64> = counts.iter().map(|&c| c as f64 / n.max(1) as f64).collect();
        let psi = psi(&q, probs);
        let js = js_distance(&q, probs);
        let t = self.thresholds();
        let (kind, ks, linf, missing_share) = match &self.dist {
            Distribution::Numeric { .. } => {
                let last = q.len() - 1;
                (
                    "numeric",
                    Some(ks_at_edges(&counts[..last], &probs[..last])),
                    None,
                    q[last],
                )
            }
            Distribution::Categorical { .. } => ("categorical", None, Some(linf(&q, probs)), 0.0),
        };
        let alert =
            psi >= t.psi_alert || js >= t.js_alert || linf.is_some_and(|l| l >= t.linf_alert);
        let level = if alert {
            Level::Alert
        } else if psi >= t.psi_warn {
            Level::Warn
        } else {
            Level::Ok
        };
        FeatureDrift {
            name: self.name.clone(),
            kind,
            rows: n,
            missing_share,
            psi,
            js,
            ks,
            linf,
            level,
        }
    }
}

// === impl Distribution ===

impl Distribution {
    /// Number of counters (bins plus missing / OTHER).
    pub fn bins(&self) -> usize {
        self.probs().len()
    }

    pub fn probs(&self) -> &[f64] {
        match self {
            Distribution::Numeric { probs, .. } | Distribution::Categorical { probs, .. } => probs,
        }
    }

    /// The counter a value goes to. Categorical values arrive as f64 (tensor data) and are
    /// compared as integers.
    pub fn bin_of(&self, x: f64) -> usize {
        match self {
            Distribution::Numeric { edges, .. } => {
                if x.is_nan() {
                    edges.len() + 1
                } else {
                    // A binary search: a branch-free count of the edges ≤ x was measured
                    // slower (benches/costs.rs, "bin lookup").
                    edges.partition_point(|&e| e <= x)
                }
            }
            Distribution::Categorical { categories, .. } => {
                let v = x as i64;
                categories
                    .iter()
                    .position(|&c| c == v && x.fract() == 0.0)
                    .unwrap_or(categories.len())
            }
        }
    }

    /// Checks a reference read from a bundle or config: shapes and shares.
    pub fn validate(&self) -> Result<(), String> {
        match self {
            Distribution::Numeric { edges, probs } => {
                if probs.len() != edges.len() + 2 {
                    return Err(format!(
                        "{} edges need {} shares (bins + missing), got {}",
                        edges.len(),
                        edges.len() + 2,
                        probs.len()
                    ));
                }
                if edges.iter().any(|e| !e.is_finite()) || edges.windows(2).any(|w| w[0] >= w[1]) {
                    return Err("edges must be finite and strictly ascending".into());
                }
            }
            Distribution::Categorical { categories, probs } => {
                if probs.len() != categories.len() + 1 {
                    return Err(format!(
                        "{} categories need {} shares (+ OTHER), got {}",
                        categories.len(),
                        categories.len() + 1,
                        probs.len()
                    ));
                }
            }
        }
        let sum: f64 = self.probs().iter().sum();
        if self.probs().iter().any(|p| !(0.0..=1.0).contains(p)) || (sum - 1.0).abs() > 1e-3 {
            return Err(format!("shares must be in [0, 1] and sum to 1 (sum {sum})"));
        }
        Ok(())
    }
}

// === statistics ===

/// Population stability index, with empty bins floored at [`EPS`].
pub fn psi(q: &[f64], p: &[f64]) -> f64 {
    q.iter()
        .zip(p)
        .map(|(&q, &p)| {
            let (q, p) = (q.max(EPS), p.max(EPS));
            (q - p) * (q / p).ln()
        })
        .sum()
}

/// Jensen–Shannon distance (square root of the divergence, log base 2: in [0, 1]).
pub fn js_distance(q: &[f64], p: &[f64]) -> f64 {
    let kl = |a: f64, m: f64| if a > 0.0 { a * (a / m).log2() } else { 0.0 };
    let d: f64 = q
        .iter()
        .zip(p)
        .map(|(&q, &p)| {
            let m = (q + p) / 2.0;
            if m == 0.0 {
                0.0
            } else {
                0.5 * kl(q, m) + 0.5 * kl(p, m)
            }
        })
        .sum();
    d.max(0.0).sqrt()
}

/// Kolmogorov–Smirnov D evaluated at the bin edges: the largest gap between the window's
/// and the reference's cumulative shares, each over non-missing values.
pub fn ks_at_edges(counts: &[u64], p: &[f64]) -> f64 {
    let n: u64 = counts.iter().sum();
    let pt: f64 = p.iter().sum();
    if n == 0 || pt == 0.0 {
        return 0.0;
    }
    let (mut cq, mut cp, mut d) = (0.0f64, 0.0f64, 0.0f64);
    for (&c, &p) in counts.iter().zip(p) {
        cq += c as f64 / n as f64;
        cp += p / pt;
        d = d.max((cq - cp).abs());
    }
    d
}

/// Largest absolute difference of shares.
pub fn linf(q: &[f64], p: &[f64]) -> f64 {
    q.iter()
        .zip(p)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max)
}

// === window ===

/// Bin counters for every feature and output of one model version. Cores keep one each
/// and hand it over; the control thread merges them into the open window.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DriftCounts {
    pub rows: u64,
    pub features: Vec<Vec<u64>>,
    pub outputs: Vec<Vec<u64>>,
}

impl DriftCounts {
    pub fn for_reference(r: &ReferenceStats) -> DriftCounts {
        DriftCounts {
            rows: 0,
            features: r.features.iter().map(|f| vec![0; f.dist.bins()]).collect(),
            outputs: r.outputs.iter().map(|f| vec![0; f.dist.bins()]).collect(),
        }
    }

    /// Counts one row: `input` is the row of the first input tensor, `output` of the output.
    pub fn observe_row(&mut self, r: &ReferenceStats, input: &[f64], output: &[f64]) {
        self.rows += 1;
        for (f, c) in r.features.iter().zip(&mut self.features) {
            c[f.dist
                .bin_of(input.get(f.column).copied().unwrap_or(f64::NAN))] += 1;
        }
        for (f, c) in r.outputs.iter().zip(&mut self.outputs) {
            c[f.dist
                .bin_of(output.get(f.column).copied().unwrap_or(f64::NAN))] += 1;
        }
    }

    /// Counts one row read through accessors (column → value; NaN = missing), so a caller
    /// can count straight from tensor bytes without building a row.
    pub fn observe_with(
        &mut self,
        r: &ReferenceStats,
        input: impl Fn(usize) -> f64,
        output: impl Fn(usize) -> f64,
    ) {
        self.rows += 1;
        for (f, c) in r.features.iter().zip(&mut self.features) {
            c[f.dist.bin_of(input(f.column))] += 1;
        }
        for (f, c) in r.outputs.iter().zip(&mut self.outputs) {
            c[f.dist.bin_of(output(f.column))] += 1;
        }
    }

    /// Whether nothing was counted.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Zeroes every counter, keeping the allocation.
    pub fn clear(&mut self) {
        self.rows = 0;
        for c in self.features.iter_mut().chain(self.outputs.iter_mut()) {
            c.iter_mut().for_each(|x| *x = 0);
        }
    }

    /// Adds `other` (same reference) into `self`.
    pub fn merge(&mut self, other: &DriftCounts) {
        self.rows += other.rows;
        for (a, b) in self.features.iter_mut().zip(&other.features) {
            a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
        }
        for (a, b) in self.outputs.iter_mut().zip(&other.outputs) {
            a.iter_mut().zip(b).for_each(|(x, y)| *x += y);
        }
    }

    /// Bytes this state takes (the figure in benches/RESULTS.md).
    pub fn heap_bytes(&self) -> usize {
        let v = |x: &Vec<Vec<u64>>| x.iter().map(|c| c.capacity() * 8 + 24).sum::<usize>();
        v(&self.features) + v(&self.outputs)
    }
}

/// Widest numeric feature [`CoreCounts`] bins without a fallback: deciles have 9 edges.
/// Two 64-byte lines of edges.
const FAST_EDGES: usize = 16;

/// How one feature is binned on a core.
#[derive(Debug, Clone)]
enum Lookup {
    /// Edges padded with NaN to [`FAST_EDGES`] (a NaN edge is never ≤ anything, so the
    /// padding is never counted): a fixed-length count the compiler vectorises, no branch
    /// on the value, no pointer to chase. `missing` is the NaN bin.
    Fast {
        edges: [f64; FAST_EDGES],
        missing: u32,
    },
    /// Anything else (categorical, more edges): [`Distribution::bin_of`].
    Slow(Distribution),
}

/// [`DriftCounts`] as a data-path core keeps them: every feature's lookup and counters in
/// two flat arrays, compiled once from the reference, so counting a row walks memory in
/// order instead of chasing a pointer per feature and per bin vector (the nested layout's
/// bin lookup was 1.7 % of a serving core's time with 20 features). Handed over as plain
/// [`DriftCounts`].
#[derive(Debug, Clone)]
pub struct CoreCounts {
    rows: u64,
    /// Per feature then per output: its column, lookup and first counter in `counts`.
    cols: Vec<(usize, Lookup, usize)>,
    features: usize,
    counts: Vec<u64>,
}

impl CoreCounts {
    pub fn for_reference(r: &ReferenceStats) -> CoreCounts {
        let mut cols = Vec::new();
        let mut at = 0;
        for f in r.features.iter().chain(&r.outputs) {
            let lookup = match &f.dist {
                Distribution::Numeric { edges, .. } if edges.len() <= FAST_EDGES => {
                    let mut e = [f64::NAN; FAST_EDGES];
                    e[..edges.len()].copy_from_slice(edges);
                    Lookup::Fast {
                        edges: e,
                        missing: edges.len() as u32 + 1,
                    }
                }
                d => Lookup::Slow(d.clone()),
            };
            cols.push((f.column, lookup, at));
            at += f.dist.bins();
        }
        CoreCounts {
            rows: 0,
            cols,
            features: r.features.len(),
            counts: vec![0; at],
        }
    }

    /// The bin of `x`: the number of edges ≤ `x` (counted over all the padded edges, which
    /// measured faster than a branch-free binary search over them in `benches/costs.rs`),
    /// or the missing bin for NaN. Equal to [`Distribution::bin_of`].
    #[inline]
    fn bin(lookup: &Lookup, x: f64) -> usize {
        match lookup {
            Lookup::Fast { edges, missing } => {
                let b: usize = edges.iter().map(|&e| (e <= x) as usize).sum();
                if x.is_nan() {
                    *missing as usize
                } else {
                    b
                }
            }
            Lookup::Slow(d) => d.bin_of(x),
        }
    }

    /// Counts one row read through accessors (column → value; NaN = missing), as
    /// [`DriftCounts::observe_with`] does.
    #[inline]
    pub fn observe_with(&mut self, input: impl Fn(usize) -> f64, output: impl Fn(usize) -> f64) {
        self.rows += 1;
        let (feat, outs) = self.cols.split_at(self.features);
        for (col, lookup, at) in feat {
            self.counts[at + Self::bin(lookup, input(*col))] += 1;
        }
        for (col, lookup, at) in outs {
            self.counts[at + Self::bin(lookup, output(*col))] += 1;
        }
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// The counts so far as [`DriftCounts`] (for the reference this was compiled from),
    /// and zero again.
    pub fn take(&mut self) -> DriftCounts {
        let (mut features, mut outputs) = (Vec::with_capacity(self.features), Vec::new());
        for (i, (_, _, at)) in self.cols.iter().enumerate() {
            let end = self.cols.get(i + 1).map_or(self.counts.len(), |c| c.2);
            let bins = self.counts[*at..end].to_vec();
            if i < self.features {
                features.push(bins);
            } else {
                outputs.push(bins);
            }
        }
        let out = DriftCounts {
            rows: self.rows,
            features,
            outputs,
        };
        self.rows = 0;
        self.counts.iter_mut().for_each(|c| *c = 0);
        out
    }
}

/// One closed window's report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DriftReport {
    pub start_ms: u64,
    pub end_ms: u64,
    pub rows: u64,
    pub features: Vec<FeatureDrift>,
    pub outputs: Vec<FeatureDrift>,
}

impl DriftReport {
    /// Names of features and outputs at alert level.
    pub fn alerts(&self) -> Vec<&str> {
        self.features
            .iter()
            .chain(&self.outputs)
            .filter(|f| f.level == Level::Alert)
            .map(|f| f.name.as_str())
            .collect()
    }
}

/// The tumbling window of one model version: closes at ≥ `min_rows` rows and at least
/// `min_ms` after it opened.
#[derive(Debug)]
pub struct DriftWindow {
    reference: ReferenceStats,
    counts: DriftCounts,
    opened_ms: u64,
    min_rows: u64,
    min_ms: u64,
}

impl DriftWindow {
    pub fn new(reference: ReferenceStats, min_rows: u64, min_ms: u64, now_ms: u64) -> DriftWindow {
        DriftWindow {
            counts: DriftCounts::for_reference(&reference),
            reference,
            opened_ms: now_ms,
            min_rows,
            min_ms,
        }
    }

    pub fn reference(&self) -> &ReferenceStats {
        &self.reference
    }

    pub fn add(&mut self, c: &DriftCounts) {
        self.counts.merge(c);
    }

    pub fn rows(&self) -> u64 {
        self.counts.rows
    }

    /// The report if the window is due, and a fresh window opened.
    pub fn close_if_due(&mut self, now_ms: u64) -> Option<DriftReport> {
        if self.counts.rows < self.min_rows || now_ms.saturating_sub(self.opened_ms) < self.min_ms {
            return None;
        }
        let c = std::mem::replace(
            &mut self.counts,
            DriftCounts::for_reference(&self.reference),
        );
        let report = DriftReport {
            start_ms: self.opened_ms,
            end_ms: now_ms,
            rows: c.rows,
            features: self
                .reference
                .features
                .iter()
                .zip(&c.features)
                .map(|(f, c)| f.evaluate(c))
                .collect(),
            outputs: self
                .reference
                .outputs
                .iter()
                .zip(&c.outputs)
                .map(|(f, c)| f.evaluate(c))
                .collect(),
        };
        self.opened_ms = now_ms;
        Some(report)
    }

    pub fn heap_bytes(&self) -> usize {
        self.counts.heap_bytes()
    }
}

// === calibration ===

/// Thresholds for one numeric or categorical feature: mean + 3σ of PSI, JS (and L∞) over
/// `rounds` windows of `window_rows` rows drawn with replacement from the reference samples.
/// Never below the defaults' warn level, so a very stable feature still has a sane bound.
/// Deterministic for a given `seed` (release tooling records it).
pub fn calibrate(
    feature: &FeatureRef,
    samples: &[f64],
    window_rows: usize,
    rounds: usize,
    seed: u64,
) -> Thresholds {
    let mut rng = SplitMix64(seed);
    let (mut psis, mut jss, mut linfs) = (Vec::new(), Vec::new(), Vec::new());
    let bins = feature.dist.bins();
    for _ in 0..rounds.max(2) {
        let mut counts = vec![0u64; bins];
        for _ in 0..window_rows {
            let x = samples[(rng.next() % samples.len().max(1) as u64) as usize];
            counts[feature.dist.bin_of(x)] += 1;
        }
        let d = feature.evaluate(&counts);
        psis.push(d.psi);
        jss.push(d.js);
        linfs.push(d.linf.unwrap_or(0.0));
    }
    let bound = |v: &[f64]| {
        let n = v.len() as f64;
        let m = v.iter().sum::<f64>() / n;
        let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0);
        m + 3.0 * var.sqrt()
    };
    let d = Thresholds::default();
    let psi_alert = bound(&psis);
    Thresholds {
        psi_warn: (psi_alert * 0.5).max(0.02),
        psi_alert: psi_alert.max(0.02),
        js_alert: bound(&jss).max(0.02),
        linf_alert: match feature.dist {
            Distribution::Categorical { .. } => bound(&linfs).max(0.02),
            Distribution::Numeric { .. } => d.linf_alert,
        },
    }
}

/// splitmix64: a tiny, well-known generator; calibration only needs reproducible draws,
/// not cryptographic ones, and this keeps a random-number crate out of the daemon.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Standard normal draws for tests and benches (Box–Muller over splitmix64).
pub fn normal_samples(n: usize, mean: f64, sd: f64, seed: u64) -> Vec<f64> {
    let mut r = SplitMix64(seed);
    let mut u = || ((r.next() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    (0..n)
        .map(|_| {
            let (a, b) = (u(), u());
            mean + sd * (-2.0 * a.ln()).sqrt() * (std::f64::consts::TAU * b).cos()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_counts_bin_as_the_reference_does_on_every_path() {
        // Deciles (the fast path), one edge, 20 edges and a categorical (the fallback),
        // and values on, between and beyond the edges, infinities and NaN.
        let numeric = |edges: Vec<f64>| Distribution::Numeric {
            probs: vec![0.0; edges.len() + 2],
            edges,
        };
        let f = |column, dist| FeatureRef {
            name: format!("f{column}"),
            column,
            dist,
            thresholds: None,
        };
        let r = ReferenceStats {
            features: vec![
                f(0, numeric((1..=9).map(|d| d as f64 / 10.0).collect())),
                f(1, numeric(vec![0.5])),
                f(2, numeric((0..20).map(f64::from).collect())),
                f(
                    3,
                    Distribution::Categorical {
                        categories: vec![2, 7],
                        probs: vec![0.0; 3],
                    },
                ),
                f(9, numeric(vec![-1.0, -1.0, 3.0])),
            ],
            outputs: vec![f(0, numeric(vec![0.0, 1.0]))],
        };
        let values = [
            -f64::INFINITY,
            -1.0,
            -0.5,
            0.0,
            0.1,
            0.15,
            0.5,
            0.9,
            0.95,
            1.0,
            2.0,
            3.0,
            7.0,
            19.0,
            19.5,
            f64::INFINITY,
            f64::NAN,
        ];
        let mut want = DriftCounts::for_reference(&r);
        let mut core = CoreCounts::for_reference(&r);
        for (k, &x) in values.iter().enumerate() {
            let y = values[(k * 7 + 3) % values.len()];
            // Column 9 is past this 5-column row: missing on both sides.
            let row = [x, x, x * 10.0, x, y];
            want.observe_row(&r, &row, &[y]);
            core.observe_with(
                |c| row.get(c).copied().unwrap_or(f64::NAN),
                |c| [y].get(c).copied().unwrap_or(f64::NAN),
            );
        }
        assert!(!core.is_empty());
        assert_eq!(core.take(), want);
        assert!(core.is_empty());
        assert_eq!(core.take(), DriftCounts::for_reference(&r), "zero again");
    }

    #[test]
    fn numeric_bins_count_the_edges_at_or_below_the_value() {
        let edges = vec![-1.0, 0.0, 0.0, 2.5];
        let d = Distribution::Numeric {
            probs: vec![0.2; edges.len() + 2],
            edges: edges.clone(),
        };
        for x in [
            -3.0,
            -1.0,
            -0.5,
            0.0,
            1.0,
            2.5,
            9.0,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ] {
            assert_eq!(d.bin_of(x), edges.partition_point(|&e| e <= x), "{x}");
        }
        assert_eq!(
            d.bin_of(f64::NAN),
            edges.len() + 1,
            "missing values have their own bin"
        );
    }

    #[test]
    fn statistics_match_hand_computed_values() {
        let p = [0.5, 0.5];
        assert_eq!(psi(&p, &p), 0.0);
        let q = [0.9, 0.1];
        let want = (0.9 - 0.5) * (0.9f64 / 0.5).ln() + (0.1 - 0.5) * (0.1f64 / 0.5).ln();
        assert!((psi(&q, &p) - want).abs() < 1e-12);
        // Disjoint supports: JS distance is exactly 1 (base 2), PSI uses the ε floor.
        assert!((js_distance(&[1.0, 0.0], &[0.0, 1.0]) - 1.0).abs() < 1e-12);
        let floored = (1.0 - EPS) * (1.0 / EPS).ln() * 2.0;
        assert!((psi(&[1.0, 0.0], &[0.0, 1.0]) - floored).abs() < 1e-9);
        assert!((ks_at_edges(&[10, 0], &[0.5, 0.5]) - 0.5).abs() < 1e-12);
        assert!((linf(&[0.2, 0.8], &[0.5, 0.5]) - 0.3).abs() < 1e-12);
    }

    #[test]
    fn numeric_reference_has_deciles_and_missing_bin() {
        let s: Vec<f64> = (0..1000).map(|i| i as f64).collect();
        let f = FeatureRef::numeric_from_samples("x", 0, &s);
        let Distribution::Numeric { edges, probs } = &f.dist else {
            panic!()
        };
        assert_eq!(edges.len(), 9);
        assert_eq!(probs.len(), 11);
        assert!(
            probs[..10].iter().all(|p| (p - 0.1).abs() < 1e-9),
            "{probs:?}"
        );
        assert_eq!(f.dist.bin_of(f64::NAN), 10);
        assert_eq!(f.dist.bin_of(-5.0), 0);
        assert_eq!(f.dist.bin_of(1e9), 9);
        f.dist.validate().unwrap();
        let bad = Distribution::Numeric {
            edges: vec![1.0, 0.0],
            probs: vec![0.5, 0.5, 0.0, 0.0],
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn categorical_counts_top_k_and_other() {
        let s: Vec<i64> = (0..100)
            .map(|i| {
                if i < 60 {
                    1
                } else if i < 90 {
                    2
                } else {
                    3 + i
                }
            })
            .collect();
        let f = FeatureRef::categorical_from_samples("c", 0, &s, 2);
        assert_eq!(f.dist.bin_of(1.0), 0);
        assert_eq!(f.dist.bin_of(2.0), 1);
        assert_eq!(f.dist.bin_of(7.0), 2);
        assert_eq!(f.dist.bin_of(1.5), 2);
        let d = f.evaluate(&[30, 30, 40]);
        assert!((d.linf.unwrap() - 0.3).abs() < 1e-9);
        assert_eq!(d.level, Level::Alert);
    }

    fn reference() -> (ReferenceStats, Vec<Vec<f64>>) {
        let cols: Vec<Vec<f64>> = (0..3)
            .map(|c| normal_samples(20_000, 0.0, 1.0, 7 + c))
            .collect();
        let r = ReferenceStats {
            features: (0..3)
                .map(|c| FeatureRef::numeric_from_samples(&format!("f{c}"), c, &cols[c]))
                .collect(),
            outputs: vec![],
        };
        (r, cols)
    }

    #[test]
    fn reference_inputs_raise_no_alert_over_twenty_windows() {
        let (r, _) = reference();
        let mut w = DriftWindow::new(r.clone(), 1000, 10_000, 0);
        let fresh: Vec<Vec<f64>> = (0..3)
            .map(|c| normal_samples(20_000, 0.0, 1.0, 100 + c))
            .collect();
        let mut now = 0;
        for win in 0..20 {
            let mut c = DriftCounts::for_reference(&r);
            for i in 0..1000 {
                let row: Vec<f64> = (0..3).map(|f| fresh[f][win * 1000 + i]).collect();
                c.observe_row(&r, &row, &[]);
            }
            w.add(&c);
            assert!(
                w.close_if_due(now + 5_000).is_none(),
                "not before one interval"
            );
            now += 10_000;
            let rep = w.close_if_due(now).expect("due");
            assert_eq!(rep.rows, 1000);
            assert!(rep.alerts().is_empty(), "window {win}: {:?}", rep.features);
        }
    }

    #[test]
    fn half_sigma_shift_alerts_on_that_feature_only() {
        let (r, _) = reference();
        let fresh: Vec<Vec<f64>> = (0..3)
            .map(|c| normal_samples(1000, if c == 1 { 0.5 } else { 0.0 }, 1.0, 300 + c))
            .collect();
        let mut w = DriftWindow::new(r.clone(), 1000, 0, 0);
        let mut c = DriftCounts::for_reference(&r);
        for i in 0..1000 {
            let row: Vec<f64> = fresh.iter().map(|f| f[i]).collect();
            c.observe_row(&r, &row, &[]);
        }
        w.add(&c);
        let rep = w.close_if_due(1).unwrap();
        assert_eq!(rep.alerts(), ["f1"], "{:?}", rep.features);
        assert!(rep.features[1].ks.unwrap() > 0.1);
    }

    #[test]
    fn calibration_lands_between_noise_and_a_real_shift() {
        let (r, cols) = reference();
        let t = calibrate(&r.features[0], &cols[0], 1000, 200, 42);
        // Reference noise at n = 1000 over 11 bins is PSI ≈ 0.01; a 0.5σ shift is ≈ 0.25.
        assert!(t.psi_alert > 0.01 && t.psi_alert < 0.1, "{t:?}");
        assert!(t.js_alert > 0.02 && t.js_alert < 0.1, "{t:?}");
        assert_eq!(
            t,
            calibrate(&r.features[0], &cols[0], 1000, 200, 42),
            "deterministic"
        );
    }

    #[test]
    fn prediction_drift_counts_outputs_through_accessors() {
        // The model said 1 for 25% of the reference rows; live it says 1 for 60%.
        let labels: Vec<i64> = (0..1000).map(|i| (i % 4 == 0) as i64).collect();
        let r = ReferenceStats {
            features: vec![],
            outputs: vec![FeatureRef::categorical_from_samples("label", 0, &labels, 2)],
        };
        let mut w = DriftWindow::new(r.clone(), 100, 0, 0);
        let mut c = DriftCounts::for_reference(&r);
        for i in 0..100 {
            let y = if i < 60 { 1.0 } else { 0.0 };
            c.observe_with(&r, |_| f64::NAN, |col| if col == 0 { y } else { f64::NAN });
        }
        assert_eq!(c.outputs[0].iter().sum::<u64>(), 100);
        w.add(&c);
        c.clear();
        assert!(c.is_empty() && c.outputs[0].iter().all(|&n| n == 0));
        let rep = w.close_if_due(1).unwrap();
        assert_eq!(rep.alerts(), ["label"], "{:?}", rep.outputs);
        assert!((rep.outputs[0].linf.unwrap() - 0.35).abs() < 1e-9);
    }

    #[test]
    fn reference_round_trips_through_json() {
        let (r, _) = reference();
        let j = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<ReferenceStats>(&j).unwrap(), r);
    }
}
