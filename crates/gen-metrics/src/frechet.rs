//! Fréchet distance between Gaussians fitted to feature sets (FID when the features come from a
//! trained network), reusable `(mean, covariance)` statistics, and FID-infinity.

use std::path::Path;

use faer::linalg::matmul::triangular::{self, BlockStructure};
use faer::{Accum, Mat, Side};
use ndarray::{Array1, Array2, ArrayView2};
use ndarray_npy::{NpzReader, NpzWriter};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::{MetricsError, Result};
use crate::features::{column_means, validate, MAX_FEATURE_DIM};
use crate::linalg::{centered_gram, par, view};
use crate::symeig::SymWork;

/// Mean and unbiased (`n - 1`) covariance of a feature set: what the Fréchet distance needs.
///
/// Compute it once for the real set and [`save`](GaussianStats::save) it; the `.npz` layout
/// (`mu`, `sigma`, plus `n`) is the one pytorch-fid reads and writes.
#[derive(Clone, Debug, PartialEq)]
pub struct GaussianStats {
    /// Column means, `[d]`.
    pub mean: Array1<f64>,
    /// Unbiased covariance, `[d, d]`, symmetric.
    pub cov: Array2<f64>,
    /// Number of samples the statistics came from (`None` when loaded from a file without it).
    pub n: Option<usize>,
}

impl GaussianStats {
    /// Statistics of an `[n, d]` feature matrix (`n >= 2`, all values finite).
    pub fn from_features(x: ArrayView2<'_, f64>) -> Result<Self> {
        Self::from_features_named(x, "features")
    }

    /// As [`from_features`](Self::from_features), naming the input `what` in errors.
    pub fn from_features_named(x: ArrayView2<'_, f64>, what: &str) -> Result<Self> {
        validate(x, what, 2)?;
        let n = x.nrows();
        let mean = column_means(x);
        let cov = centered_gram(x, &mean, 1.0 / (n as f64 - 1.0));
        Ok(Self { mean: Array1::from(mean), cov, n: Some(n) })
    }

    /// Feature dimension `d`.
    pub fn dim(&self) -> usize {
        self.mean.len()
    }

    /// Writes `mu`, `sigma` (and `n` when known) to an `.npz` file, atomically.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let err = |m: String| MetricsError::ArrayFile { path: path.to_path_buf(), message: m };
        let mut buf = std::io::Cursor::new(Vec::<u8>::new());
        {
            let mut w = NpzWriter::new(&mut buf);
            w.add_array("mu", &self.mean).map_err(|e| err(e.to_string()))?;
            w.add_array("sigma", &self.cov).map_err(|e| err(e.to_string()))?;
            if let Some(n) = self.n {
                w.add_array("n", &ndarray::arr0(n as i64)).map_err(|e| err(e.to_string()))?;
            }
            w.finish().map_err(|e| err(e.to_string()))?;
        }
        crate::features::write_atomic(path, &buf.into_inner())
    }

    /// Reads statistics written by [`save`](Self::save) or by pytorch-fid (`mu`, `sigma`). The
    /// archive's headers are checked before anything is allocated: entry sizes against their
    /// compressed bytes, shapes against the entries, the dimension against [`MAX_FEATURE_DIM`].
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        Self::load_with_max_dim(path, MAX_FEATURE_DIM)
    }

    /// [`load`](Self::load) with another ceiling on the dimension than [`MAX_FEATURE_DIM`].
    pub fn load_with_max_dim(path: impl AsRef<Path>, max_dim: usize) -> Result<Self> {
        let path = path.as_ref();
        let err = |m: String| MetricsError::ArrayFile { path: path.to_path_buf(), message: m };
        check_stats_archive(path, max_dim)?;
        let f = std::fs::File::open(path).map_err(|source| MetricsError::Io { path: path.to_path_buf(), source })?;
        let mut r = NpzReader::new(f).map_err(|e| err(e.to_string()))?;
        let names = r.names().map_err(|e| err(e.to_string()))?;
        let has = |k: &str| names.iter().any(|n| n == k || n == &format!("{k}.npy"));
        let mean: Array1<f64> = r.by_name("mu").map_err(|e| err(format!("key `mu`: {e}")))?;
        let cov: Array2<f64> = r.by_name("sigma").map_err(|e| err(format!("key `sigma`: {e}")))?;
        let n = if has("n") {
            let a: ndarray::Array0<i64> = r.by_name("n").map_err(|e| err(format!("key `n`: {e}")))?;
            Some(a.into_scalar().max(0) as usize)
        } else {
            None
        };
        if cov.nrows() != mean.len() || cov.ncols() != mean.len() {
            return Err(err(format!("`sigma` has shape {:?} but `mu` has length {}", cov.dim(), mean.len())));
        }
        if let Some((i, v)) = mean.iter().chain(cov.iter()).enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(err(format!("non-finite value {v} at flat index {i}")));
        }
        Ok(Self { mean, cov, n })
    }

    fn singular_by_count(&self) -> bool {
        matches!(self.n, Some(n) if n <= self.dim())
    }
}

/// The `.npz` checks of [`GaussianStats::load`], before ndarray-npy allocates what the headers
/// declare: each entry's size is what its compressed bytes can hold (deflate expands at most
/// 1032:1), each header's data fits its entry, `mu` is `[d]` and `sigma` `[d, d]` with
/// `d <= max_dim`.
fn check_stats_archive(path: &Path, max_dim: usize) -> Result<()> {
    let err = |m: String| MetricsError::ArrayFile { path: path.to_path_buf(), message: m };
    let f = std::fs::File::open(path).map_err(|source| MetricsError::Io { path: path.to_path_buf(), source })?;
    let mut z = zip::ZipArchive::new(std::io::BufReader::new(f)).map_err(|e| err(e.to_string()))?;
    let mut dims = Vec::new();
    for key in ["mu", "sigma", "n"] {
        let name = [key.to_string(), format!("{key}.npy")].into_iter().find(|n| z.index_for_name(n).is_some());
        let Some(name) = name else { continue };
        let mut e = z.by_name(&name).map_err(|e| err(format!("key `{key}`: {e}")))?;
        let (size, packed) = (e.size(), e.compressed_size());
        let plausible = match e.compression() {
            zip::CompressionMethod::Stored => size == packed,
            _ => size <= packed.saturating_mul(1032).saturating_add(1024),
        };
        if !plausible {
            return Err(err(format!("key `{key}` declares {size} bytes from {packed} stored bytes")));
        }
        let h = crate::features::read_npy_header(&mut e, size).map_err(|m| err(format!("key `{key}`: {m}")))?;
        dims.push((key, h.shape));
    }
    for (key, shape) in dims {
        let d = match (key, shape.as_slice()) {
            ("mu", &[d]) => d,
            ("sigma", &[a, b]) if a == b => a,
            ("n", &[]) => continue,
            _ => return Err(err(format!("key `{key}` has shape {shape:?}"))),
        };
        if d > max_dim {
            return Err(MetricsError::FeatureDimTooLarge { path: path.to_path_buf(), dim: d, limit: max_dim });
        }
    }
    Ok(())
}

/// A Fréchet distance and how it was obtained.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FrechetDistance {
    /// `|mu1 - mu2|^2 + tr S1 + tr S2 - 2 tr sqrt(S1 S2)`.
    pub value: f64,
    /// `|mu1 - mu2|^2`.
    pub mean_term: f64,
    /// `tr S1 + tr S2 - 2 tr sqrt(S1 S2)`.
    pub cov_term: f64,
    /// Set when a covariance is singular (`n <= d`, or not positive definite): the value is
    /// still the exact Fréchet distance of the two (degenerate) Gaussians, but it is dominated by
    /// the small sample and not comparable to full-rank values.
    pub warning: Option<String>,
}

/// Fréchet distance between two Gaussians given by their statistics.
///
/// `tr sqrt(S1 S2)` is computed exactly through a symmetric eigenproblem: with the Cholesky
/// factor `S1 = L L^T`, `S1 S2` is similar to `L^T S2 L`, so
/// `tr sqrt(S1 S2) = sum_i sqrt(max(lambda_i(L^T S2 L), 0))`. When neither covariance is
/// positive definite, `S1^{1/2} = V sqrt(max(D, 0)) V^T` from its eigendecomposition is used
/// instead (same eigenvalues), and the result carries a warning.
pub fn frechet_distance(a: &GaussianStats, b: &GaussianStats) -> Result<FrechetDistance> {
    if a.dim() != b.dim() {
        return Err(MetricsError::DimensionMismatch {
            left: "first statistics".into(),
            left_dim: a.dim(),
            right: "second statistics".into(),
            right_dim: b.dim(),
        });
    }
    let mut warnings = Vec::new();
    for (s, name) in [(a, "first"), (b, "second")] {
        if s.singular_by_count() {
            warnings.push(format!(
                "{name} set has n = {} <= d = {} samples: its covariance is singular, the Fréchet distance is exact for the degenerate Gaussian but biased by the small sample",
                s.n.unwrap_or(0),
                s.dim()
            ));
        }
    }
    let mean_term: f64 = a.mean.iter().zip(b.mean.iter()).map(|(x, y)| (x - y) * (x - y)).sum();
    let tr1: f64 = a.cov.diag().sum();
    let tr2: f64 = b.cov.diag().sum();
    // Factor the covariance that is more likely to be positive definite.
    let (p, q) = if a.singular_by_count() && !b.singular_by_count() { (b, a) } else { (a, b) };
    let (tr_sqrt, fallback) = trace_sqrt_product(&p.cov, &q.cov, p.singular_by_count())?;
    if fallback && warnings.is_empty() {
        warnings.push("covariance is not positive definite (singular): the Fréchet distance used the eigendecomposition route; it is exact for the degenerate Gaussian".into());
    }
    let cov_term = tr1 + tr2 - 2.0 * tr_sqrt;
    Ok(FrechetDistance {
        value: mean_term + cov_term,
        mean_term,
        cov_term,
        warning: if warnings.is_empty() { None } else { Some(warnings.join("; ")) },
    })
}

/// `tr sqrt(S1 S2)` for symmetric positive semi-definite `S1`, `S2`. Returns whether the
/// eigendecomposition fallback (non-positive-definite `S1`) was used.
fn trace_sqrt_product(s1: &Array2<f64>, s2: &Array2<f64>, skip_cholesky: bool) -> Result<(f64, bool)> {
    let d = s1.nrows();
    // Column-major views of the (symmetric) row-major arrays: the transposes are the same
    // matrices, and faer's factorisations copy column-major input without a strided transpose
    // (the Cholesky took twice as long from the row-major view).
    let s1v = view(s1).transpose();
    let s2v = view(s2).transpose();
    let llt = if skip_cholesky { None } else { s1v.llt(Side::Lower).ok() };
    // C (lower triangle) goes straight into the eigensolver's working storage.
    let mut work = SymWork::new(d);
    let fallback = match llt {
        Some(llt) => {
            let l = llt.L();
            // W = S2 L, C = L^T W.
            let mut w = Mat::<f64>::zeros(d, d);
            triangular::matmul(
                w.as_mut(),
                BlockStructure::Rectangular,
                Accum::Replace,
                s2v,
                BlockStructure::Rectangular,
                l,
                BlockStructure::TriangularLower,
                1.0,
                par(),
            );
            triangular::matmul(
                work.matrix_mut(),
                BlockStructure::TriangularLower,
                Accum::Replace,
                l.transpose(),
                BlockStructure::TriangularUpper,
                w.as_ref(),
                BlockStructure::Rectangular,
                1.0,
                par(),
            );
            false
        }
        None => {
            let evd = s1v
                .self_adjoint_eigen(Side::Lower)
                .map_err(|e| MetricsError::Linalg(format!("eigendecomposition of covariance: {e:?}")))?;
            let u = evd.U();
            let s = evd.S().column_vector();
            // R = U diag(sqrt(max(s, 0))), C = R^T S2 R.
            let r = Mat::<f64>::from_fn(d, d, |i, j| u[(i, j)] * s[j].max(0.0).sqrt());
            let mut t = Mat::<f64>::zeros(d, d);
            faer::linalg::matmul::matmul(t.as_mut(), Accum::Replace, s2v, r.as_ref(), 1.0, par());
            faer::linalg::matmul::matmul(work.matrix_mut(), Accum::Replace, r.transpose(), t.as_ref(), 1.0, par());
            true
        }
    };
    let eig = work.eigenvalues("S1^1/2 S2 S1^1/2")?;
    Ok((eig.iter().map(|&l| l.max(0.0).sqrt()).sum(), fallback))
}

/// Fréchet distance straight from two `[n, d]` feature matrices (statistics included).
pub fn frechet_distance_from_features(
    real: ArrayView2<'_, f64>,
    generated: ArrayView2<'_, f64>,
) -> Result<FrechetDistance> {
    crate::features::check_same_dim(real, "real features", generated, "generated features")?;
    let a = GaussianStats::from_features_named(real, "real features")?;
    let b = GaussianStats::from_features_named(generated, "generated features")?;
    frechet_distance(&a, &b)
}

/// Settings of [`fid_infinity`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FidInfinityConfig {
    /// Number of subset sizes (15 in Chong & Forsyth).
    pub num_points: usize,
    /// Smallest subset size (5,000 in Chong & Forsyth); sizes are `linspace(min_size, N)`
    /// truncated to integers.
    pub min_size: usize,
    /// Seed of the shuffles.
    pub seed: u64,
}

impl Default for FidInfinityConfig {
    fn default() -> Self {
        Self { num_points: 15, min_size: 5000, seed: 0 }
    }
}

/// FID-infinity and the points it was fitted on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FidInfinity {
    /// Intercept at `1/N = 0` of the least-squares line FID vs `1/N`.
    pub value: f64,
    /// Subset sizes used.
    pub sizes: Vec<usize>,
    /// FID at each size.
    pub fids: Vec<f64>,
}

/// FID-infinity (Chong & Forsyth 2020): FID of `num_points` random subsets of the generated
/// features of sizes `linspace(min_size, N)` against the fixed real statistics, a least-squares
/// line in `1/N`, and its intercept. As in the reference, the generated set is reshuffled
/// before each size (seeded).
pub fn fid_infinity(
    real: &GaussianStats,
    generated: ArrayView2<'_, f64>,
    cfg: &FidInfinityConfig,
) -> Result<FidInfinity> {
    validate(generated, "generated features", 2)?;
    let n = generated.nrows();
    if cfg.num_points < 2 {
        return Err(MetricsError::InvalidParameter {
            name: "num_points",
            value: cfg.num_points.to_string(),
            reason: "a line needs at least 2 sizes".into(),
        });
    }
    if cfg.min_size < 2 || cfg.min_size >= n {
        return Err(MetricsError::InvalidParameter {
            name: "min_size",
            value: cfg.min_size.to_string(),
            reason: format!("must be in [2, N) with N = {n} generated samples"),
        });
    }
    let k = cfg.num_points;
    let sizes: Vec<usize> = (0..k)
        .map(|i| (cfg.min_size as f64 + (n - cfg.min_size) as f64 * i as f64 / (k - 1) as f64) as usize)
        .collect();
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut idx: Vec<usize> = (0..n).collect();
    let mut fids = Vec::with_capacity(k);
    for &s in &sizes {
        idx.shuffle(&mut rng);
        let sub = crate::features::select_rows(generated, &idx[..s]);
        let st = GaussianStats::from_features_named(sub.view(), "generated subset")?;
        fids.push(frechet_distance(real, &st)?.value);
    }
    let xs: Vec<f64> = sizes.iter().map(|&s| 1.0 / s as f64).collect();
    let mx = xs.iter().sum::<f64>() / k as f64;
    let my = fids.iter().sum::<f64>() / k as f64;
    let sxy: f64 = xs.iter().zip(&fids).map(|(x, y)| (x - mx) * (y - my)).sum();
    let sxx: f64 = xs.iter().map(|x| (x - mx) * (x - mx)).sum();
    let slope = if sxx > 0.0 { sxy / sxx } else { 0.0 };
    Ok(FidInfinity { value: my - slope * mx, sizes, fids })
}
