//! Feature matrices: validation, `.npy` loading, and small helpers shared by the metrics.

use std::path::Path;

use ndarray::{Array2, ArrayView2, Axis};
use ndarray_npy::ReadNpyExt;

use crate::error::{MetricsError, Result};

/// Checks that `x` is a usable `[n, d]` feature matrix: `d > 0`, at least `min_rows` rows,
/// and every value finite. `what` names the input in the error.
pub fn validate(x: ArrayView2<'_, f64>, what: &str, min_rows: usize) -> Result<()> {
    if x.ncols() == 0 {
        return Err(MetricsError::EmptyDimension { what: what.to_string() });
    }
    if x.nrows() < min_rows {
        return Err(MetricsError::TooFewSamples { what: what.to_string(), needed: min_rows, got: x.nrows() });
    }
    use rayon::prelude::*;
    // Rows are scanned in parallel; the error reports the first bad value in row-major order.
    let bad_row = (0..x.nrows()).into_par_iter().position_first(|i| x.row(i).iter().any(|v| !v.is_finite()));
    if let Some(row) = bad_row {
        let r = x.row(row);
        let (col, &value) = r.iter().enumerate().find(|(_, v)| !v.is_finite()).expect("row has a bad value");
        return Err(MetricsError::NonFinite { what: what.to_string(), row, col, value });
    }
    Ok(())
}

/// Checks that two inputs have the same feature dimension.
pub fn check_same_dim(a: ArrayView2<'_, f64>, a_what: &str, b: ArrayView2<'_, f64>, b_what: &str) -> Result<()> {
    if a.ncols() != b.ncols() {
        return Err(MetricsError::DimensionMismatch {
            left: a_what.to_string(),
            left_dim: a.ncols(),
            right: b_what.to_string(),
            right_dim: b.ncols(),
        });
    }
    Ok(())
}

/// Checks a list of Gaussian-kernel bandwidths (non-empty, each finite and `> 0`).
pub fn validate_bandwidths(bws: &[f64]) -> Result<()> {
    if bws.is_empty() {
        return Err(MetricsError::InvalidParameter {
            name: "bandwidths",
            value: "[]".into(),
            reason: "at least one bandwidth is needed".into(),
        });
    }
    for &b in bws {
        if !(b.is_finite() && b > 0.0) {
            return Err(MetricsError::InvalidBandwidth(b));
        }
    }
    Ok(())
}

/// Reads an `[n, d]` feature matrix from a `.npy` file holding `f64` or `f32` values
/// (little-endian, C or Fortran order), returned as `f64`. The values are validated
/// (finite, `d > 0`); the error names the file.
pub fn load_features_npy(path: impl AsRef<Path>) -> Result<Array2<f64>> {
    let path = path.as_ref();
    let open = || std::fs::File::open(path).map_err(|source| MetricsError::Io { path: path.to_path_buf(), source });
    let arr = match Array2::<f64>::read_npy(open()?) {
        Ok(a) => a,
        Err(e64) => match Array2::<f32>::read_npy(open()?) {
            Ok(a) => a.mapv(f64::from),
            Err(_) => {
                return Err(MetricsError::ArrayFile {
                    path: path.to_path_buf(),
                    message: format!("expected a 2-D float64 or float32 array [n, d]: {e64}"),
                })
            }
        },
    };
    validate(arr.view(), &path.display().to_string(), 1)?;
    Ok(arr)
}

/// Writes bytes to `path` atomically and durably (`atomic_file::write`): a reader never sees a
/// half-written file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    atomic_file::write(path, bytes).map_err(|source| MetricsError::Io { path: path.to_path_buf(), source })
}

/// Returns `x` with its column means subtracted (a new standard-layout array), and the means.
pub(crate) fn centered(x: ArrayView2<'_, f64>) -> (Array2<f64>, Vec<f64>) {
    let mean = column_means(x);
    use rayon::prelude::*;
    let mut c = x.as_standard_layout().into_owned();
    let d = c.ncols().max(1);
    c.as_slice_mut().expect("standard layout").par_chunks_mut(d).for_each(|r| {
        for (v, m) in r.iter_mut().zip(&mean) {
            *v -= m;
        }
    });
    (c, mean)
}

/// Column means: blocks of `MEAN_BLOCK` rows are summed in parallel (each in row order), and
/// the block sums are added in block order, so the result does not depend on the thread count.
pub(crate) fn column_means(x: ArrayView2<'_, f64>) -> Vec<f64> {
    use rayon::prelude::*;
    const MEAN_BLOCK: usize = 512;
    let (n, d) = x.dim();
    let block_sum = |b: usize| {
        let mut s = vec![0.0f64; d];
        for r in x.slice(ndarray::s![b * MEAN_BLOCK..((b + 1) * MEAN_BLOCK).min(n), ..]).axis_iter(Axis(0)) {
            for (a, v) in s.iter_mut().zip(r.iter()) {
                *a += v;
            }
        }
        s
    };
    let sums: Vec<Vec<f64>> = (0..n.div_ceil(MEAN_BLOCK)).into_par_iter().map(block_sum).collect();
    let mut total = vec![0.0f64; d];
    for s in &sums {
        for (t, v) in total.iter_mut().zip(s) {
            *t += v;
        }
    }
    let n = n as f64;
    total.iter().map(|v| v / n).collect()
}

/// Squared Euclidean norm of each row.
pub(crate) fn row_sq_norms(x: ArrayView2<'_, f64>) -> Vec<f64> {
    x.axis_iter(Axis(0)).map(|r| r.iter().map(|v| v * v).sum()).collect()
}

/// Rows of `x` selected by `idx`, as a new standard-layout array.
pub(crate) fn select_rows(x: ArrayView2<'_, f64>, idx: &[usize]) -> Array2<f64> {
    x.select(Axis(0), idx)
}
