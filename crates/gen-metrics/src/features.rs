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

/// Largest feature dimension [`load_features_npy`] and [`GaussianStats::load`] accept:
/// 8192 (ResNet-18 features have 512, Inception's 2048). The Fréchet distance needs a `[d, d]`
/// covariance and its eigendecomposition, so a 960 KB `[3, 40000]` file would otherwise ask for
/// 12.8 GB; the `_with_max_dim` variants raise it.
///
/// [`GaussianStats::load`]: crate::GaussianStats::load
pub const MAX_FEATURE_DIM: usize = 8192;

/// What a `.npy` header declares, checked against the bytes that follow it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NpyHeader {
    /// The `descr` field, e.g. `<f8`.
    pub descr: String,
    /// The array's shape.
    pub shape: Vec<usize>,
    /// Bytes per element.
    pub elem: usize,
    /// Bytes before the data (magic, version, length, header text).
    pub data_offset: usize,
}

impl NpyHeader {
    /// Bytes of data the header declares (`None` when the product overflows).
    pub fn data_bytes(&self) -> Option<u64> {
        self.shape.iter().try_fold(self.elem as u64, |a, &d| a.checked_mul(d as u64))
    }
}

/// Longest `.npy` header read (numpy writes a few hundred bytes; the format allows 4 GB).
const MAX_HEADER: usize = 1 << 16;

/// Parses a `.npy` header from `r` without trusting it: the header length is bounded, the
/// shape parsed with overflow checks. `total_len` is the number of bytes `r` holds in all; the
/// data the header declares must fit in it. Errors are plain text for the caller to wrap.
pub fn read_npy_header(r: &mut impl std::io::Read, total_len: u64) -> std::result::Result<NpyHeader, String> {
    let mut pre = [0u8; 8];
    r.read_exact(&mut pre).map_err(|_| "not a .npy file: shorter than its magic string".to_string())?;
    if &pre[..6] != b"\x93NUMPY" {
        return Err("not a .npy file (no \\x93NUMPY magic string)".into());
    }
    let (len, fixed) = match pre[6] {
        1 => {
            let mut b = [0u8; 2];
            r.read_exact(&mut b).map_err(|_| "truncated header".to_string())?;
            (u16::from_le_bytes(b) as usize, 10)
        }
        2 | 3 => {
            let mut b = [0u8; 4];
            r.read_exact(&mut b).map_err(|_| "truncated header".to_string())?;
            (u32::from_le_bytes(b) as usize, 12)
        }
        v => return Err(format!("unsupported .npy version {v}")),
    };
    if len > MAX_HEADER {
        return Err(format!("its header claims {len} bytes (at most {MAX_HEADER} are read)"));
    }
    let mut text = vec![0u8; len];
    r.read_exact(&mut text).map_err(|_| format!("truncated header (it claims {len} bytes)"))?;
    let text = String::from_utf8_lossy(&text);
    let field = |key: &str| -> Option<&str> {
        let at = text.find(&format!("'{key}'"))?;
        let rest = text[at + key.len() + 2..].trim_start();
        Some(rest.strip_prefix(':')?.trim_start())
    };
    let descr = field("descr")
        .and_then(|v| {
            let q = v.chars().next().filter(|c| *c == '\'' || *c == '"')?;
            let v = &v[1..];
            Some(v[..v.find(q)?].to_string())
        })
        .ok_or("its header has no readable 'descr'")?;
    let shape_text = field("shape")
        .and_then(|v| v.strip_prefix('('))
        .and_then(|v| v.find(')').map(|end| &v[..end]))
        .ok_or("its header has no readable 'shape'")?;
    let shape = shape_text
        .split(',')
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| d.trim_end_matches('L').parse::<usize>().map_err(|_| format!("shape entry `{d}` is not a size")))
        .collect::<std::result::Result<Vec<usize>, String>>()?;
    let elem = descr
        .trim_start_matches(['<', '>', '|', '='])
        .get(1..)
        .and_then(|d| d.parse::<usize>().ok())
        .filter(|&e| e > 0)
        .ok_or_else(|| format!("unsupported dtype `{descr}`"))?;
    let h = NpyHeader { descr, shape, elem, data_offset: fixed + len };
    let avail = total_len.saturating_sub(h.data_offset as u64);
    match h.data_bytes() {
        Some(need) if need <= avail => Ok(h),
        Some(need) => Err(format!("its header declares shape {:?} ({need} bytes) but only {avail} follow", h.shape)),
        None => Err(format!("its header declares shape {:?}, more bytes than can exist", h.shape)),
    }
}

/// Reads an `[n, d]` feature matrix from a `.npy` file holding `f64` or `f32` values
/// (little-endian, C or Fortran order), returned as `f64`. The header is checked before
/// anything is allocated (its sizes against the file's, `d` against [`MAX_FEATURE_DIM`],
/// `n >= 2`, which the Fréchet distance needs), then the values (finite, `d > 0`); the error
/// names the file.
pub fn load_features_npy(path: impl AsRef<Path>) -> Result<Array2<f64>> {
    load_features_npy_with_max_dim(path, MAX_FEATURE_DIM)
}

/// [`load_features_npy`] with another ceiling on the feature dimension than
/// [`MAX_FEATURE_DIM`].
pub fn load_features_npy_with_max_dim(path: impl AsRef<Path>, max_dim: usize) -> Result<Array2<f64>> {
    let path = path.as_ref();
    let io = |source| MetricsError::Io { path: path.to_path_buf(), source };
    let bad = |message: String| MetricsError::ArrayFile { path: path.to_path_buf(), message };
    let open = || std::fs::File::open(path).map_err(io);
    let len = std::fs::metadata(path).map_err(io)?.len();
    let h = read_npy_header(&mut std::io::BufReader::new(open()?), len).map_err(bad)?;
    if !matches!(h.descr.as_str(), "<f8" | "<f4" | "=f8" | "=f4") {
        return Err(bad(format!("expected a float64 or float32 array [n, d], the file holds dtype `{}`", h.descr)));
    }
    let &[n, d] = h.shape.as_slice() else {
        return Err(bad(format!("expected a 2-D array [n, d], the file holds shape {:?}", h.shape)));
    };
    if d > max_dim {
        return Err(MetricsError::FeatureDimTooLarge { path: path.to_path_buf(), dim: d, limit: max_dim });
    }
    let what = path.display().to_string();
    if n < 2 {
        return Err(MetricsError::TooFewSamples { what, needed: 2, got: n });
    }
    let arr = match Array2::<f64>::read_npy(open()?) {
        Ok(a) => a,
        Err(e64) => match Array2::<f32>::read_npy(open()?) {
            Ok(a) => a.mapv(f64::from),
            Err(_) => return Err(bad(format!("expected a 2-D float64 or float32 array [n, d]: {e64}"))),
        },
    };
    validate(arr.view(), &what, 2)?;
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
