//! Batch normalisation in training mode on NCHW f32 slices, optionally followed by ReLU, and its
//! closed-form gradient: the two passes a ResNet needs per normalisation, where burn's module
//! composes about ten tensor operations (two of them transposing copies) and as many again in
//! its autodiff graph.
//!
//! Forward, per channel `c` over the `M = N * H * W` values `x` of that channel:
//! `mean = sum(x) / M`, `var = sum((x - mean)^2) / M` (biased, as the normalisation uses it),
//! `y = gamma * (x - mean) / sqrt(var + eps) + beta`, then `max(y, 0)` when `relu`.
//!
//! Backward, with `xhat = (x - mean) / sqrt(var + eps)` and `g` the output gradient masked by
//! `y > 0` when `relu`: `dbeta = sum(g)`, `dgamma = sum(g * xhat)`,
//! `dx = gamma / sqrt(var + eps) * (g - dbeta / M - xhat * dgamma / M)`.
//!
//! Sums run in f64; channels are reduced in parallel and planes written in parallel.

use rayon::prelude::*;

/// Shapes of one call: `x` is `[n, c, p]` with `p = H * W` pixels per plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Images.
    pub n: usize,
    /// Channels.
    pub c: usize,
    /// Pixels per channel plane.
    pub p: usize,
}

impl Geometry {
    fn len(&self) -> usize {
        self.n * self.c * self.p
    }
    /// The `n` planes of channel `c`.
    fn planes<'a>(&self, x: &'a [f32], c: usize) -> impl Iterator<Item = &'a [f32]> + 'a {
        let (p, stride) = (self.p, self.c * self.p);
        (0..self.n).map(move |i| &x[i * stride + c * p..i * stride + (c + 1) * p])
    }
}

/// The output and the batch statistics (`mean`, biased `var`, each `[c]`) of [`forward`].
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    /// `[n, c, p]`.
    pub y: Vec<f32>,
    /// Per-channel mean.
    pub mean: Vec<f32>,
    /// Per-channel biased variance.
    pub var: Vec<f32>,
}

/// Gradients of [`forward`] with respect to `x`, `gamma` and `beta`.
#[derive(Debug, Clone, PartialEq)]
pub struct Grads {
    /// `[n, c, p]`.
    pub x: Vec<f32>,
    /// `[c]`.
    pub gamma: Vec<f32>,
    /// `[c]`.
    pub beta: Vec<f32>,
}

/// Per-channel `(scale, shift)` with `y = x * scale + shift`.
fn affine(gamma: &[f32], beta: &[f32], mean: &[f32], var: &[f32], eps: f64) -> Vec<(f32, f32)> {
    (0..gamma.len())
        .map(|c| {
            let inv = 1.0 / (var[c] as f64 + eps).sqrt();
            let scale = gamma[c] as f64 * inv;
            (scale as f32, (beta[c] as f64 - mean[c] as f64 * scale) as f32)
        })
        .collect()
}

fn check(g: &Geometry, x: &[f32], per_channel: &[&[f32]]) {
    assert_eq!(x.len(), g.len(), "batch_norm: x has {} values for {g:?}", x.len());
    for v in per_channel {
        assert_eq!(v.len(), g.c, "batch_norm: a per-channel operand has {} values for {} channels", v.len(), g.c);
    }
}

/// `y = x * scale[c] + shift[c]` (then ReLU) for every plane, in parallel.
fn apply(g: &Geometry, x: &[f32], coef: &[(f32, f32)], relu: bool) -> Vec<f32> {
    let mut y = vec![0f32; x.len()];
    y.par_chunks_mut(g.p.max(1)).zip(x.par_chunks(g.p.max(1))).enumerate().for_each(|(i, (yo, xi))| {
        let (s, b) = coef[i % g.c];
        if relu {
            yo.iter_mut().zip(xi).for_each(|(o, &v)| *o = (v * s + b).max(0.0));
        } else {
            yo.iter_mut().zip(xi).for_each(|(o, &v)| *o = v * s + b);
        }
    });
    y
}

/// Normalises `x` with given per-channel `mean` and `var` (evaluation mode: the running
/// statistics), scales by `gamma`, shifts by `beta`, then ReLU when `relu`.
#[allow(clippy::too_many_arguments)]
pub fn apply_stats(
    g: &Geometry,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    var: &[f32],
    eps: f64,
    relu: bool,
) -> Vec<f32> {
    check(g, x, &[gamma, beta, mean, var]);
    apply(g, x, &affine(gamma, beta, mean, var, eps), relu)
}

/// Training-mode batch normalisation (batch statistics), then ReLU when `relu`.
pub fn forward(g: &Geometry, x: &[f32], gamma: &[f32], beta: &[f32], eps: f64, relu: bool) -> Output {
    check(g, x, &[gamma, beta]);
    let m = (g.n * g.p) as f64;
    let stats: Vec<(f32, f32)> = (0..g.c)
        .into_par_iter()
        .map(|c| {
            let mean = g.planes(x, c).map(|pl| pl.iter().map(|&v| v as f64).sum::<f64>()).sum::<f64>() / m;
            let var =
                g.planes(x, c).map(|pl| pl.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>()).sum::<f64>() / m;
            (mean as f32, var as f32)
        })
        .collect();
    let (mean, var): (Vec<f32>, Vec<f32>) = stats.into_iter().unzip();
    let y = apply(g, x, &affine(gamma, beta, &mean, &var, eps), relu);
    Output { y, mean, var }
}

/// Gradients of [`forward`] given its inputs, its batch statistics and the output gradient `dy`.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    g: &Geometry,
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    var: &[f32],
    eps: f64,
    relu: bool,
    dy: &[f32],
) -> Grads {
    check(g, x, &[gamma, beta, mean, var]);
    assert_eq!(dy.len(), x.len(), "batch_norm: dy has {} values, x {}", dy.len(), x.len());
    let coef = affine(gamma, beta, mean, var, eps);
    let m = (g.n * g.p) as f64;
    // Per channel: (sum of g, sum of g * xhat).
    let sums: Vec<(f64, f64)> = (0..g.c)
        .into_par_iter()
        .map(|c| {
            let (s, b) = coef[c];
            let inv = 1.0 / (var[c] as f64 + eps).sqrt();
            let mu = mean[c] as f64;
            let (mut sg, mut sgx) = (0f64, 0f64);
            for (xp, dp) in g.planes(x, c).zip(g.planes(dy, c)) {
                for (&v, &d) in xp.iter().zip(dp) {
                    let d = if relu && v * s + b <= 0.0 { 0.0 } else { d as f64 };
                    sg += d;
                    sgx += d * (v as f64 - mu) * inv;
                }
            }
            (sg, sgx)
        })
        .collect();
    let mut dx = vec![0f32; x.len()];
    dx.par_chunks_mut(g.p.max(1)).enumerate().for_each(|(i, out)| {
        let c = i % g.c;
        let (s, b) = coef[c];
        let inv = 1.0 / (var[c] as f64 + eps).sqrt();
        let k = (gamma[c] as f64 * inv) as f32;
        let (mg, mgx) = ((sums[c].0 / m) as f32, (sums[c].1 / m) as f32);
        let (mu, inv) = (mean[c], inv as f32);
        let start = i * g.p;
        for (j, o) in out.iter_mut().enumerate() {
            let v = x[start + j];
            let d = if relu && v * s + b <= 0.0 { 0.0 } else { dy[start + j] };
            *o = k * (d - mg - (v - mu) * inv * mgx);
        }
    });
    Grads {
        x: dx,
        gamma: sums.iter().map(|&(_, sgx)| sgx as f32).collect(),
        beta: sums.iter().map(|&(sg, _)| sg as f32).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2654435761).wrapping_add(12345);
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s % 2000) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    fn loss(g: &Geometry, x: &[f32], gamma: &[f32], beta: &[f32], w: &[f32], relu: bool) -> f64 {
        let y = forward(g, x, gamma, beta, 1e-5, relu).y;
        y.iter().zip(w).map(|(&a, &b)| a as f64 * b as f64).sum()
    }

    /// Statistics and output against a direct f64 evaluation of the definition.
    #[test]
    fn forward_matches_the_definition() {
        let g = Geometry { n: 3, c: 4, p: 5 };
        let (x, gamma, beta) = (data(60, 1), data(4, 2), data(4, 3));
        let out = forward(&g, &x, &gamma, &beta, 1e-5, false);
        for c in 0..4 {
            let vals: Vec<f64> =
                (0..3).flat_map(|n| (0..5).map(move |p| (n, p))).map(|(n, p)| x[(n * 4 + c) * 5 + p] as f64).collect();
            let mean = vals.iter().sum::<f64>() / 15.0;
            let var = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 15.0;
            assert!((out.mean[c] as f64 - mean).abs() < 1e-6 && (out.var[c] as f64 - var).abs() < 1e-6);
            for n in 0..3 {
                for p in 0..5 {
                    let i = (n * 4 + c) * 5 + p;
                    let want = gamma[c] as f64 * (x[i] as f64 - mean) / (var + 1e-5).sqrt() + beta[c] as f64;
                    assert!((out.y[i] as f64 - want).abs() < 1e-5, "{} vs {want}", out.y[i]);
                }
            }
        }
        let r = forward(&g, &x, &gamma, &beta, 1e-5, true);
        assert!(r.y.iter().zip(&out.y).all(|(&a, &b)| a == b.max(0.0)));
    }

    /// The closed-form gradients against central differences of `sum(w * y)`.
    #[test]
    fn backward_matches_finite_differences() {
        let g = Geometry { n: 2, c: 3, p: 7 };
        let (x, gamma, beta, w) = (data(42, 4), data(3, 5), data(3, 6), data(42, 7));
        for relu in [false, true] {
            let out = forward(&g, &x, &gamma, &beta, 1e-5, relu);
            let gr = backward(&g, &x, &gamma, &beta, &out.mean, &out.var, 1e-5, relu, &w);
            let h = 1e-3f32;
            let fd = |f: &dyn Fn(f32) -> f64| (f(h) - f(-h)) / (2.0 * h as f64);
            for i in [0, 5, 13, 41] {
                let num = fd(&|d| {
                    let mut xx = x.clone();
                    xx[i] += d;
                    loss(&g, &xx, &gamma, &beta, &w, relu)
                });
                assert!(
                    (num - gr.x[i] as f64).abs() < 2e-2 * (1.0 + num.abs()),
                    "relu {relu} dx[{i}]: {num} vs {}",
                    gr.x[i]
                );
            }
            for c in 0..3 {
                let num = fd(&|d| {
                    let mut gg = gamma.clone();
                    gg[c] += d;
                    loss(&g, &x, &gg, &beta, &w, relu)
                });
                assert!(
                    (num - gr.gamma[c] as f64).abs() < 2e-2 * (1.0 + num.abs()),
                    "dgamma[{c}]: {num} vs {}",
                    gr.gamma[c]
                );
                let num = fd(&|d| {
                    let mut bb = beta.clone();
                    bb[c] += d;
                    loss(&g, &x, &gamma, &bb, &w, relu)
                });
                assert!(
                    (num - gr.beta[c] as f64).abs() < 2e-2 * (1.0 + num.abs()),
                    "dbeta[{c}]: {num} vs {}",
                    gr.beta[c]
                );
            }
        }
    }
}
