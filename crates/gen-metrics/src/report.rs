//! The whole evaluation report on two feature sets (what `lensing-diffusion evaluate` prints and
//! writes), plus the real-vs-real noise floor.

use std::collections::BTreeMap;
use std::path::Path;

use ndarray::ArrayView2;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::bootstrap::{fid_interval, kid_interval, BootstrapConfig, Interval};
use crate::error::{MetricsError, Result};
use crate::features::{check_same_dim, select_rows, validate, validate_bandwidths};
use crate::frechet::{fid_infinity, frechet_distance, FidInfinity, FidInfinityConfig, GaussianStats};
use crate::kid::{kid, Kid, KidConfig};
use crate::prdc::prdc;

/// The JSON key of a bandwidth: Python's `repr` of the float (`8.0`, `0.5`), the convention of
/// rke-score's dictionaries and of `expected.json`.
pub fn bandwidth_key(bw: f64) -> String {
    format!("{bw:?}")
}

/// Settings of [`evaluate_features`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalConfig {
    /// Gaussian-kernel bandwidths for RKE, RRKE and Vendi.
    pub bandwidths: Vec<f64>,
    /// `nearest_k` for density and coverage (prdc; 5 by default).
    pub k_density_coverage: usize,
    /// `nearest_k` for precision and recall (3 by default).
    pub k_precision_recall: usize,
    /// Leading rows of each set used by RRKE (rke-score's `x_samples`, 500).
    pub rrke_rows: usize,
    /// Vendi needs all eigenvalues of an `n x n` matrix: at most this many generated rows are
    /// used (a seeded random subset when there are more).
    pub vendi_max_n: usize,
    /// KID subsets.
    pub kid: KidConfig,
    /// Also compute the real-vs-real noise floor (two disjoint random halves of the real set).
    pub noise_floor: bool,
    /// FID-infinity (off by default: it needs a large generated set).
    pub fid_infinity: Option<FidInfinityConfig>,
    /// Bootstrap intervals of FID and KID (off by default: 100 resamples of 1,000 x 512 features
    /// per set add seconds, see [`crate::bootstrap`]).
    #[serde(default)]
    pub bootstrap: Option<BootstrapConfig>,
    /// Seed for every random choice in the report (subsets, halves).
    pub seed: u64,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            bandwidths: vec![8.0, 16.0, 32.0],
            k_density_coverage: 5,
            k_precision_recall: 3,
            rrke_rows: crate::kernel::RRKE_DEFAULT_ROWS,
            vendi_max_n: 2000,
            kid: KidConfig::default(),
            noise_floor: true,
            fid_infinity: None,
            bootstrap: None,
            seed: 0,
        }
    }
}

/// Two-sample metrics (the part that also makes sense real-vs-real).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TwoSample {
    /// Fréchet distance of the Gaussian fits.
    pub fid: f64,
    /// Set when a covariance is singular (`n <= d`).
    pub fid_warning: Option<String>,
    /// RRKE per bandwidth key.
    pub rrke: BTreeMap<String, f64>,
    /// KID mean / std.
    pub kid: Kid,
    /// prdc precision (`k_precision_recall`).
    pub precision: f64,
    /// prdc recall (`k_precision_recall`).
    pub recall: f64,
    /// prdc density (`k_density_coverage`).
    pub density: f64,
    /// prdc coverage (`k_density_coverage`).
    pub coverage: f64,
}

/// Real-vs-real values: the same two-sample metrics between two disjoint random halves of the
/// real set. Values of generated-vs-real near these are as good as the sample size allows
/// (with half the samples, the floor of FID is somewhat higher than at full size).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NoiseFloor {
    /// Rows in the first half.
    pub n_first: usize,
    /// Rows in the second half.
    pub n_second: usize,
    /// The metrics, first half as "real", second as "generated".
    #[serde(flatten)]
    pub metrics: TwoSample,
}

/// Everything `evaluate` reports. JSON field names are the stable interface.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvaluationReport {
    /// Fréchet distance, real vs generated.
    pub fid: f64,
    /// Singular-covariance warning of the FID, if any.
    pub fid_warning: Option<String>,
    /// Exact RKE of the real set, keyed by [`bandwidth_key`].
    pub rke_real: BTreeMap<String, f64>,
    /// Exact RKE of the generated set.
    pub rke_generated: BTreeMap<String, f64>,
    /// RRKE (rke-score `compute_rrke`, real first).
    pub rrke: BTreeMap<String, f64>,
    /// Vendi score of the generated set (on at most `vendi_n` rows).
    pub vendi_generated: BTreeMap<String, f64>,
    /// KID, real vs generated.
    pub kid: Kid,
    /// Precision (k = `k_precision_recall`).
    pub precision: f64,
    /// Recall (k = `k_precision_recall`).
    pub recall: f64,
    /// Density (k = `k_density_coverage`).
    pub density: f64,
    /// Coverage (k = `k_density_coverage`).
    pub coverage: f64,
    /// Real rows.
    pub n_real: usize,
    /// Generated rows.
    pub n_generated: usize,
    /// Feature dimension.
    pub dim: usize,
    /// Rows used for Vendi.
    pub vendi_n: usize,
    /// Bandwidths, in the order given.
    pub bandwidths: Vec<f64>,
    /// k of precision/recall.
    pub k_precision_recall: usize,
    /// k of density/coverage.
    pub k_density_coverage: usize,
    /// Real-vs-real noise floor (when requested and the real set has at least 2 (k+1) rows).
    pub noise_floor: Option<NoiseFloor>,
    /// FID-infinity (when requested).
    pub fid_infinity: Option<FidInfinity>,
    /// Bootstrap interval of the FID (when requested); its `estimate` is `fid`.
    #[serde(default)]
    pub fid_ci: Option<Interval>,
    /// Bootstrap interval of the KID (when requested), around the full-set value (all pairs),
    /// which is `kid.mean` when `kid.whole_sets`, else the value the subsets' mean estimates.
    #[serde(default)]
    pub kid_ci: Option<Interval>,
}

fn keyed(bws: &[f64], vals: Vec<f64>) -> BTreeMap<String, f64> {
    bws.iter().map(|&b| bandwidth_key(b)).zip(vals).collect()
}

fn two_sample(
    real: ArrayView2<'_, f64>,
    gen: ArrayView2<'_, f64>,
    real_stats: Option<&GaussianStats>,
    cfg: &EvalConfig,
) -> Result<TwoSample> {
    let own;
    let rs = match real_stats {
        Some(s) => s,
        None => {
            own = GaussianStats::from_features_named(real, "real features")?;
            &own
        }
    };
    let gs = GaussianStats::from_features_named(gen, "generated features")?;
    let fd = frechet_distance(rs, &gs)?;
    let rr = crate::kernel::rrke(real, gen, &cfg.bandwidths, cfg.rrke_rows)?;
    let k = kid(real, gen, &cfg.kid)?;
    let pr = prdc(real, gen, cfg.k_precision_recall)?;
    let dc = if cfg.k_density_coverage == cfg.k_precision_recall {
        pr.clone()
    } else {
        prdc(real, gen, cfg.k_density_coverage)?
    };
    Ok(TwoSample {
        fid: fd.value,
        fid_warning: fd.warning,
        rrke: keyed(&cfg.bandwidths, rr),
        kid: k,
        precision: pr.precision,
        recall: pr.recall,
        density: dc.density,
        coverage: dc.coverage,
    })
}

/// Real-vs-real noise floor: the two-sample metrics between two disjoint halves of `real`
/// drawn by a seeded shuffle.
pub fn real_vs_real(real: ArrayView2<'_, f64>, cfg: &EvalConfig) -> Result<NoiseFloor> {
    let n = real.nrows();
    let kmax = cfg.k_density_coverage.max(cfg.k_precision_recall);
    if n < kmax.saturating_add(1).saturating_mul(2) {
        return Err(MetricsError::TooFewSamples {
            what: "real features (noise floor halves)".into(),
            needed: kmax.saturating_add(1).saturating_mul(2),
            got: n,
        });
    }
    let mut idx: Vec<usize> = (0..n).collect();
    idx.shuffle(&mut ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x5eed_f100));
    let h = n / 2;
    let a = select_rows(real, &idx[..h]);
    let b = select_rows(real, &idx[h..]);
    Ok(NoiseFloor { n_first: a.nrows(), n_second: b.nrows(), metrics: two_sample(a.view(), b.view(), None, cfg)? })
}

/// Computes the full report on two `[n, d]` feature matrices.
///
/// `real_stats` lets a caller pass cached statistics of the real set (see
/// [`GaussianStats::save`]); they must come from the same `real` features.
pub fn evaluate_features(
    real: ArrayView2<'_, f64>,
    generated: ArrayView2<'_, f64>,
    real_stats: Option<&GaussianStats>,
    cfg: &EvalConfig,
) -> Result<EvaluationReport> {
    let kmax = cfg.k_density_coverage.max(cfg.k_precision_recall);
    validate(real, "real features", kmax.saturating_add(1).max(2))?;
    validate(generated, "generated features", kmax.saturating_add(1).max(2))?;
    check_same_dim(real, "real features", generated, "generated features")?;
    validate_bandwidths(&cfg.bandwidths)?;
    if let Some(b) = &cfg.bootstrap {
        b.validate()?;
    }
    if let Some(s) = real_stats {
        if s.dim() != real.ncols() {
            return Err(MetricsError::DimensionMismatch {
                left: "cached real statistics".into(),
                left_dim: s.dim(),
                right: "real features".into(),
                right_dim: real.ncols(),
            });
        }
    }
    let ts = two_sample(real, generated, real_stats, cfg)?;
    let rke_r = crate::kernel::rke_exact(real, &cfg.bandwidths)?;
    let rke_g = crate::kernel::rke_exact(generated, &cfg.bandwidths)?;
    let ng = generated.nrows();
    let vendi_sub = if ng > cfg.vendi_max_n {
        let mut idx: Vec<usize> = (0..ng).collect();
        idx.shuffle(&mut ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x7e_d1));
        Some(select_rows(generated, &idx[..cfg.vendi_max_n.max(1)]))
    } else {
        None
    };
    let vendi_view = match &vendi_sub {
        Some(v) => v.view(),
        None => generated.view(),
    };
    let vendi_n = vendi_view.nrows();
    let vendi = crate::kernel::vendi(vendi_view, &cfg.bandwidths)?;
    let noise_floor = if cfg.noise_floor && real.nrows() >= kmax.saturating_add(1).saturating_mul(2) {
        Some(real_vs_real(real, cfg)?)
    } else {
        None
    };
    let fid_inf = match &cfg.fid_infinity {
        Some(c) => {
            let own;
            let rs = match real_stats {
                Some(s) => s,
                None => {
                    own = GaussianStats::from_features_named(real, "real features")?;
                    &own
                }
            };
            Some(fid_infinity(rs, generated, c)?)
        }
        None => None,
    };
    let (fid_ci, kid_ci) = match &cfg.bootstrap {
        Some(b) => (Some(fid_interval(real, generated, b)?), Some(kid_interval(real, generated, b)?)),
        None => (None, None),
    };
    Ok(EvaluationReport {
        fid: ts.fid,
        fid_warning: ts.fid_warning,
        rke_real: keyed(&cfg.bandwidths, rke_r),
        rke_generated: keyed(&cfg.bandwidths, rke_g),
        rrke: ts.rrke,
        vendi_generated: keyed(&cfg.bandwidths, vendi),
        kid: ts.kid,
        precision: ts.precision,
        recall: ts.recall,
        density: ts.density,
        coverage: ts.coverage,
        n_real: real.nrows(),
        n_generated: ng,
        dim: real.ncols(),
        vendi_n,
        bandwidths: cfg.bandwidths.clone(),
        k_precision_recall: cfg.k_precision_recall,
        k_density_coverage: cfg.k_density_coverage,
        noise_floor,
        fid_infinity: fid_inf,
        fid_ci,
        kid_ci,
    })
}

impl EvaluationReport {
    /// A readable table: one row per metric, generated-vs-real next to the real-vs-real floor.
    pub fn to_table(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let nf = self.noise_floor.as_ref();
        let _ = writeln!(s, "n_real = {}, n_generated = {}, dim = {}", self.n_real, self.n_generated, self.dim);
        if let Some(f) = nf {
            let _ = writeln!(s, "noise floor: real vs real, two disjoint halves ({} / {} rows)", f.n_first, f.n_second);
        }
        let _ = writeln!(s, "{:<28} {:>16} {:>16}", "metric", "gen vs real", "real vs real");
        let _ = writeln!(s, "{}", "-".repeat(62));
        let mut row = |name: String, v: f64, floor: Option<f64>| {
            let fl = floor.map(|f| format!("{f:>16.6}")).unwrap_or_else(|| format!("{:>16}", "-"));
            let _ = writeln!(s, "{name:<28} {v:>16.6} {fl}");
        };
        row("FID".into(), self.fid, nf.map(|f| f.metrics.fid));
        if let Some(fi) = &self.fid_infinity {
            row("FID-infinity".into(), fi.value, None);
        }
        row("KID mean".into(), self.kid.mean, nf.map(|f| f.metrics.kid.mean));
        // With every subset covering both sets the std is 0 by construction: no row for it.
        if !self.kid.whole_sets {
            let floor = nf.filter(|f| !f.metrics.kid.whole_sets).map(|f| f.metrics.kid.std);
            row("KID std over subsets".into(), self.kid.std, floor);
        }
        row(format!("precision (k={})", self.k_precision_recall), self.precision, nf.map(|f| f.metrics.precision));
        row(format!("recall (k={})", self.k_precision_recall), self.recall, nf.map(|f| f.metrics.recall));
        row(format!("density (k={})", self.k_density_coverage), self.density, nf.map(|f| f.metrics.density));
        row(format!("coverage (k={})", self.k_density_coverage), self.coverage, nf.map(|f| f.metrics.coverage));
        for b in &self.bandwidths {
            let k = bandwidth_key(*b);
            row(format!("RRKE bw={k}"), self.rrke[&k], nf.map(|f| f.metrics.rrke[&k]));
        }
        for b in &self.bandwidths {
            let k = bandwidth_key(*b);
            row(format!("RKE generated bw={k}"), self.rke_generated[&k], Some(self.rke_real[&k]));
        }
        for b in &self.bandwidths {
            let k = bandwidth_key(*b);
            row(format!("Vendi generated bw={k}"), self.vendi_generated[&k], None);
        }
        let _ = writeln!(s, "(RKE row: right column is the RKE of the real set; Vendi on {} rows)", self.vendi_n);
        if self.kid.whole_sets {
            let _ = writeln!(
                s,
                "(KID: one subset held both whole sets, so there is no spread over subsets to report{})",
                if self.kid_ci.is_some() {
                    "; its bootstrap interval is below"
                } else {
                    "; a bootstrap interval gives an error bar"
                }
            );
        }
        if let Some(w) = &self.fid_warning {
            let _ = writeln!(s, "warning: {w}");
        }
        if let Some(i) = &self.fid_ci {
            let _ = writeln!(s, "\nFID {:.3}  {}", i.estimate, i.describe(3));
        }
        if let Some(i) = &self.kid_ci {
            let all_pairs =
                if self.kid.whole_sets { "" } else { "  (all pairs; the table's KID is a mean over subsets)" };
            let _ = writeln!(s, "KID {:.5}  {}{all_pairs}", i.estimate, i.describe(5));
        }
        if let Some(i) = &self.fid_ci {
            let _ = writeln!(
                s,
                "(intervals for the values expected at these set sizes: compare runs evaluated with equal sizes; \
                 the bootstrap puts the FID's small-sample bias at {:+.3})",
                i.bias
            );
        }
        s
    }

    /// Writes the report as pretty JSON, atomically (temporary file + rename).
    pub fn write_json(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| MetricsError::Json { path: path.to_path_buf(), message: e.to_string() })?;
        crate::features::write_atomic(path, text.as_bytes())
    }
}
