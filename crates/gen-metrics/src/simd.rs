//! A branch-free `exp` for non-positive arguments and the row kernels that use it, compiled
//! for AVX-512 / AVX2+FMA with runtime dispatch (the crate is built for the baseline x86-64
//! target, so plain loops would otherwise stay SSE2).

const LOG2E: f64 = std::f64::consts::LOG2_E;
#[allow(clippy::excessive_precision)]
const LN2_HI: f64 = 6.931_471_803_691_238_164_90e-01;
#[allow(clippy::excessive_precision)]
const LN2_LO: f64 = 1.908_214_929_270_587_700_02e-10;
/// 1.5 * 2^52: adding it rounds to an integer held in the low mantissa bits.
const MAGIC: f64 = 6_755_399_441_055_744.0;

/// `exp(x)` for `x <= 0` (any finite `x`; results below `exp(-708)` flush to `~0`), relative
/// error a few ulp: Cody-Waite reduction `x = k ln 2 + r`, `|r| <= ln2 / 2`, degree-13 Taylor
/// polynomial (truncation error < 1e-17), scaling by `2^k` through the exponent bits.
#[inline(always)]
pub(crate) fn exp_nonpos(x: f64) -> f64 {
    let x = if x < -708.0 { -708.0 } else { x };
    let t = x.mul_add(LOG2E, MAGIC);
    let kf = t - MAGIC;
    let r = kf.mul_add(-LN2_LO, kf.mul_add(-LN2_HI, x));
    // Horner, 1/13! .. 1/0!
    let mut p: f64 = 1.0 / 6_227_020_800.0;
    p = p.mul_add(r, 1.0 / 479_001_600.0);
    p = p.mul_add(r, 1.0 / 39_916_800.0);
    p = p.mul_add(r, 1.0 / 3_628_800.0);
    p = p.mul_add(r, 1.0 / 362_880.0);
    p = p.mul_add(r, 1.0 / 40_320.0);
    p = p.mul_add(r, 1.0 / 5_040.0);
    p = p.mul_add(r, 1.0 / 720.0);
    p = p.mul_add(r, 1.0 / 120.0);
    p = p.mul_add(r, 1.0 / 24.0);
    p = p.mul_add(r, 1.0 / 6.0);
    p = p.mul_add(r, 0.5);
    p = p.mul_add(r, 1.0);
    p = p.mul_add(r, 1.0);
    let k = (t.to_bits() as i64).wrapping_sub(MAGIC.to_bits() as i64);
    let scale = f64::from_bits(((k + 1023) as u64) << 52);
    p * scale
}

/// For one Gram row `g` (dot products of row `i` with rows `c0..`), squared distances
/// `sq_j = max(ni + norms_j - 2 g_j, 0)` and, for each coefficient `c`, `sum_j exp(-c sq_j)`
/// added into `acc`. `diag` is the position in the row that is the point itself (exact 0).
#[inline(always)]
fn gauss_row_sums_impl(g: &mut [f64], ni: f64, norms: &[f64], diag: Option<usize>, coef: &[f64], acc: &mut [f64]) {
    for (v, &nj) in g.iter_mut().zip(norms) {
        let s = ni + nj - 2.0 * *v;
        *v = if s > 0.0 { s } else { 0.0 };
    }
    if let Some(j) = diag {
        g[j] = 0.0;
    }
    for (a, &c) in acc.iter_mut().zip(coef) {
        // 8 independent partial sums so the loop vectorises (fixed order: deterministic).
        let mut part = [0.0f64; 8];
        let chunks = g.chunks_exact(8);
        let rem = chunks.remainder();
        for ch in chunks {
            for l in 0..8 {
                part[l] += exp_nonpos(-c * ch[l]);
            }
        }
        let mut s = 0.0;
        for &v in rem {
            s += exp_nonpos(-c * v);
        }
        *a += part.iter().sum::<f64>() + s;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,avx512vl,avx2,fma")]
unsafe fn gauss_row_sums_v4(g: &mut [f64], ni: f64, norms: &[f64], diag: Option<usize>, coef: &[f64], acc: &mut [f64]) {
    gauss_row_sums_impl(g, ni, norms, diag, coef, acc)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gauss_row_sums_v3(g: &mut [f64], ni: f64, norms: &[f64], diag: Option<usize>, coef: &[f64], acc: &mut [f64]) {
    gauss_row_sums_impl(g, ni, norms, diag, coef, acc)
}

/// Whether the CPU has what the `avx512f,avx512dq,avx512vl,avx2,fma` kernels need.
#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx512() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512dq")
        && std::arch::is_x86_feature_detected!("avx512vl")
        && std::arch::is_x86_feature_detected!("avx2")
        && std::arch::is_x86_feature_detected!("fma")
}

/// Whether the CPU has what the `avx2,fma` kernels need.
#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx2_fma() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

/// Dispatching wrapper of the row kernel (see `gauss_row_sums_impl`).
pub(crate) fn gauss_row_sums(
    g: &mut [f64],
    ni: f64,
    norms: &[f64],
    diag: Option<usize>,
    coef: &[f64],
    acc: &mut [f64],
) {
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx512() {
            // SAFETY: the features the function is compiled for were detected at run time.
            return unsafe { gauss_row_sums_v4(g, ni, norms, diag, coef, acc) };
        }
        if has_avx2_fma() {
            // SAFETY: as above.
            return unsafe { gauss_row_sums_v3(g, ni, norms, diag, coef, acc) };
        }
    }
    gauss_row_sums_impl(g, ni, norms, diag, coef, acc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_std() {
        let mut worst = 0.0f64;
        let mut x = 0.0f64;
        while x > -700.0 {
            let (a, b) = (exp_nonpos(x), x.exp());
            worst = worst.max(((a - b) / b).abs());
            x -= 0.0137;
        }
        assert!(worst < 1e-15, "worst relative error {worst:e}");
        assert_eq!(exp_nonpos(0.0), 1.0);
        assert!(exp_nonpos(-1e6) < 1e-300);
    }
}
