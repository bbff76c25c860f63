//! Kernel Inception Distance: unbiased MMD^2 with the cubic polynomial kernel
//! `k(x, y) = (x . y / d + 1)^3`, averaged over random subsets.

use ndarray::{Array2, ArrayView2};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::{MetricsError, Result};
use crate::features::{check_same_dim, select_rows, validate};
use crate::linalg::{a_bt, par};

/// Settings of [`kid`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KidConfig {
    /// Number of subsets (100 in torch-fidelity / the KID paper).
    pub num_subsets: usize,
    /// Rows per subset, drawn without replacement from each set (capped at the set size).
    pub subset_size: usize,
    /// Seed of the subset draws.
    pub seed: u64,
}

impl Default for KidConfig {
    fn default() -> Self {
        Self { num_subsets: 100, subset_size: 1000, seed: 0 }
    }
}

/// KID estimate: mean and (population) standard deviation of the per-subset MMD^2.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Kid {
    /// Mean over subsets of the unbiased MMD^2.
    pub mean: f64,
    /// Standard deviation over subsets (`ddof = 0`, as torch-fidelity); 0 for one subset.
    /// It measures how much the subsets disagree, not how far the KID is from the truth; for an
    /// error bar see [`crate::bootstrap::kid_interval`].
    pub std: f64,
    /// Whether every subset held both whole sets (`subset_size` at least both set sizes): the
    /// subsets are then the same rows reordered, `mean` is the full-set unbiased MMD^2
    /// (computed once) and `std` is 0 by construction, not a measured spread.
    #[serde(default)]
    pub whole_sets: bool,
}

/// Unbiased MMD^2 between two whole sets with the cubic kernel (one "subset" = everything).
pub fn mmd2_unbiased_cubic(x: ArrayView2<'_, f64>, y: ArrayView2<'_, f64>) -> Result<f64> {
    validate(x, "real features", 2)?;
    validate(y, "generated features", 2)?;
    check_same_dim(x, "real features", y, "generated features")?;
    Ok(mmd2(&crate::linalg::standard(x), &crate::linalg::standard(y)))
}

fn mmd2(x: &Array2<f64>, y: &Array2<f64>) -> f64 {
    let d = x.ncols() as f64;
    let k = |a: &Array2<f64>, b: &Array2<f64>| {
        let mut g = a_bt(a, b, par());
        g.mapv_inplace(|v| {
            let t = v / d + 1.0;
            t * t * t
        });
        g
    };
    let (m, n) = (x.nrows() as f64, y.nrows() as f64);
    let kxx = k(x, x);
    let kyy = k(y, y);
    let kxy = k(x, y);
    let off = |g: &Array2<f64>| g.sum() - g.diag().sum();
    off(&kxx) / (m * (m - 1.0)) + off(&kyy) / (n * (n - 1.0)) - 2.0 * kxy.sum() / (m * n)
}

/// KID over `cfg.num_subsets` random subsets of `min(subset_size, n)` rows of each set.
pub fn kid(real: ArrayView2<'_, f64>, generated: ArrayView2<'_, f64>, cfg: &KidConfig) -> Result<Kid> {
    validate(real, "real features", 2)?;
    validate(generated, "generated features", 2)?;
    check_same_dim(real, "real features", generated, "generated features")?;
    if cfg.num_subsets == 0 || cfg.subset_size < 2 {
        return Err(MetricsError::InvalidParameter {
            name: "kid",
            value: format!("num_subsets = {}, subset_size = {}", cfg.num_subsets, cfg.subset_size),
            reason: "need at least one subset of at least 2 rows".into(),
        });
    }
    let (nr, ng) = (real.nrows(), generated.nrows());
    let (mr, mg) = (cfg.subset_size.min(nr), cfg.subset_size.min(ng));
    if (mr, mg) == (nr, ng) {
        // Every subset would be both whole sets reordered: the same MMD^2 each time.
        let mean = mmd2(&crate::linalg::standard(real), &crate::linalg::standard(generated));
        return Ok(Kid { mean, std: 0.0, whole_sets: true });
    }
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut vals = Vec::with_capacity(cfg.num_subsets.min(1 << 16));
    for _ in 0..cfg.num_subsets {
        let ir = rand::seq::index::sample(&mut rng, nr, mr).into_vec();
        let ig = rand::seq::index::sample(&mut rng, ng, mg).into_vec();
        vals.push(mmd2(&select_rows(real, &ir), &select_rows(generated, &ig)));
    }
    let k = vals.len() as f64;
    let mean = vals.iter().sum::<f64>() / k;
    let var = vals.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / k;
    Ok(Kid { mean, std: var.sqrt(), whole_sets: false })
}
