//! Precision, recall, density and coverage (Naeem et al. 2020) with the conventions of the
//! `prdc` package: Euclidean k-NN radii excluding the point itself, strict `<` comparisons.

use ndarray::{Array2, ArrayView2};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{MetricsError, Result};
use crate::features::{check_same_dim, row_sq_norms, validate};
use crate::linalg::a_bt_into;

/// Rows per streamed block of distances.
const BLOCK: usize = 256;

/// The four k-NN manifold metrics.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Prdc {
    /// Fraction of generated points inside some real k-NN ball.
    pub precision: f64,
    /// Fraction of real points inside some generated k-NN ball.
    pub recall: f64,
    /// Mean over generated points of (number of real balls containing it) / k.
    pub density: f64,
    /// Fraction of real points whose k-NN ball contains a generated point.
    pub coverage: f64,
}

/// Euclidean distances of a block of rows of `a` to all rows of `b`, as sklearn computes them
/// (`sqrt(max(|a|^2 + |b|^2 - 2 a.b, 0))`, exact 0 on the diagonal when `same`).
#[allow(clippy::too_many_arguments)]
fn dist_block(
    a: &Array2<f64>,
    an: &[f64],
    r0: usize,
    r1: usize,
    b: &Array2<f64>,
    bn: &[f64],
    same: bool,
    out: &mut Vec<f64>,
) {
    let d = a.ncols();
    let nb = b.nrows();
    out.resize((r1 - r0) * nb, 0.0);
    let av = faer::MatRef::from_row_major_slice(&a.as_slice().unwrap()[r0 * d..r1 * d], r1 - r0, d);
    a_bt_into(out, av, crate::linalg::view(b), faer::Par::Seq);
    for (ii, row) in out.chunks_exact_mut(nb).enumerate() {
        let i = r0 + ii;
        for (j, v) in row.iter_mut().enumerate() {
            *v = if same && i == j { 0.0 } else { (an[i] + bn[j] - 2.0 * *v).max(0.0).sqrt() };
        }
    }
}

/// Distance of every row to its k-th nearest neighbour in the same set (self excluded).
pub fn knn_radii(x: ArrayView2<'_, f64>, k: usize) -> Result<Vec<f64>> {
    validate(x, "features", k.saturating_add(1))?;
    let xs = crate::linalg::standard(x);
    Ok(radii(&xs, k))
}

fn radii(x: &Array2<f64>, k: usize) -> Vec<f64> {
    let n = x.nrows();
    let norms = row_sq_norms(x.view());
    let blocks: Vec<usize> = (0..n.div_ceil(BLOCK)).collect();
    let per: Vec<Vec<f64>> = blocks
        .par_iter()
        .map_init(Vec::new, |buf, &b| {
            let (r0, r1) = (b * BLOCK, ((b + 1) * BLOCK).min(n));
            dist_block(x, &norms, r0, r1, x, &norms, true, buf);
            buf.chunks_exact_mut(n)
                .map(|row| {
                    // (k+1)-th smallest including self = k-th neighbour.
                    let (_, kth, _) = row.select_nth_unstable_by(k, |a, b| a.total_cmp(b));
                    *kth
                })
                .collect::<Vec<f64>>()
        })
        .collect();
    per.concat()
}

/// `prdc.compute_prdc(real, fake, nearest_k = k)`.
pub fn prdc(real: ArrayView2<'_, f64>, fake: ArrayView2<'_, f64>, k: usize) -> Result<Prdc> {
    if k == 0 {
        return Err(MetricsError::InvalidParameter { name: "k", value: "0".into(), reason: "must be >= 1".into() });
    }
    validate(real, "real features", k.saturating_add(1))?;
    validate(fake, "generated features", k.saturating_add(1))?;
    check_same_dim(real, "real features", fake, "generated features")?;
    let r = crate::linalg::standard(real);
    let f = crate::linalg::standard(fake);
    let rr = radii(&r, k);
    let rf = radii(&f, k);
    let (nr, nf) = (r.nrows(), f.nrows());
    let rn = row_sq_norms(r.view());
    let fnorm = row_sq_norms(f.view());
    let blocks: Vec<usize> = (0..nr.div_ceil(BLOCK)).collect();
    // Per block: counts per fake, and per real row (recall hit, coverage hit).
    #[allow(clippy::type_complexity)]
    let parts: Vec<(Vec<u32>, Vec<(bool, bool)>)> = blocks
        .par_iter()
        .map_init(Vec::new, |buf, &b| {
            let (r0, r1) = (b * BLOCK, ((b + 1) * BLOCK).min(nr));
            dist_block(&r, &rn, r0, r1, &f, &fnorm, false, buf);
            let mut counts = vec![0u32; nf];
            let mut rows = Vec::with_capacity(r1 - r0);
            for (ii, row) in buf.chunks_exact(nf).enumerate() {
                let ri = rr[r0 + ii];
                let mut rec = false;
                let mut min = f64::INFINITY;
                for (j, &dij) in row.iter().enumerate() {
                    if dij < ri {
                        counts[j] += 1;
                    }
                    if dij < rf[j] {
                        rec = true;
                    }
                    if dij < min {
                        min = dij;
                    }
                }
                rows.push((rec, min < ri));
            }
            (counts, rows)
        })
        .collect();
    let mut counts = vec![0u64; nf];
    let (mut rec, mut cov) = (0usize, 0usize);
    for (c, rows) in &parts {
        for (t, v) in counts.iter_mut().zip(c) {
            *t += *v as u64;
        }
        rec += rows.iter().filter(|r| r.0).count();
        cov += rows.iter().filter(|r| r.1).count();
    }
    let precision = counts.iter().filter(|&&c| c > 0).count() as f64 / nf as f64;
    let density = counts.iter().sum::<u64>() as f64 / k as f64 / nf as f64;
    Ok(Prdc { precision, recall: rec as f64 / nr as f64, density, coverage: cov as f64 / nr as f64 })
}
