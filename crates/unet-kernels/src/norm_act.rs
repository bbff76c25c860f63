//! The U-Net's channel `RMSNorm`, optionally followed by the time modulation
//! `y * (scale + 1) + shift` and SiLU, as one pass over contiguous NCHW f32 slices (the CPU
//! kernel behind `unet::UnetBackend::rms_norm_act` on burn Flex), and its gradient.
//!
//! Per image and chunk of pixels: the channel sum of squares is accumulated pixel-wise (one
//! contiguous row per channel), then every output row is written once. burn's composition of the
//! same arithmetic reads and writes the full activation about eight times (square, norm, repeat,
//! divide, gain, scale, shift, sigmoid, product) and its SiLU calls the scalar libm `expf`;
//! here `exp` is a polynomial that the compiler vectorises, compiled for the CPU's widest SIMD
//! through `pulp`'s run-time dispatch.
//!
//! The arithmetic is the reference's, in its order: `u = x / max(||x||_2, 1e-12)`,
//! `z = (u * gain) * (scale + 1) + shift`, `out = z * sigmoid(z)`. Only the channel sum (a
//! plain running sum here, a GEMM's blocked sum in burn) and `exp` (within 2 ulp of libm's)
//! round differently.

use rayon::prelude::*;

use crate::fill::SharedMut;

/// The norm's `eps` (`F.normalize`'s default).
pub const EPS: f32 = 1e-12;

/// Pixels per task: a chunk's rows stay in the core's L2 cache between the two passes.
const CHUNK: usize = 1024;

/// Shapes of one call: `[n, c, p]` with `p = H * W`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Images.
    pub n: usize,
    /// Channels (the normalised axis).
    pub c: usize,
    /// Pixels per channel.
    pub p: usize,
}

/// The operands besides `x`: `gain` `[c]` (the learned `g` times `sqrt(c)`), and the optional
/// per-image `(scale, shift)`, each `[n, c]`.
#[derive(Debug, Clone, Copy)]
pub struct Params<'a> {
    /// `g * sqrt(C)`, `[c]`.
    pub gain: &'a [f32],
    /// `(scale, shift)`, each `[n, c]`, applied as `y * (scale + 1) + shift`.
    pub modulation: Option<(&'a [f32], &'a [f32])>,
    /// Whether SiLU follows.
    pub silu: bool,
}

/// `exp(x)` for `f32`, branch-free so that loops over it vectorise: `2^n * e^r` with
/// `n = round(x / ln 2)`, `|r| <= ln 2 / 2`, and Cephes' degree-6 polynomial for `e^r`
/// (relative error below 2 ulp over the clamped range `[-87.3, 88.7]`; below it the result is
/// about `1e-38` instead of a subnormal or zero, which no caller here can tell apart).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // 1.5 * 2^23: adding it rounds to the nearest integer (ties to even).
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.3, 88.7);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 5e-1;
    let e = (p * r) * r + r + 1.0;
    // `x * LOG2E + ROUND` holds `n` in its low mantissa bits: `2^n` from integer operations
    // (a float-to-int cast saturates, which keeps the loop scalar).
    let t = x * LOG2E + ROUND;
    let two_n = f32::from_bits(t.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127) << 23);
    e * two_n
}

/// `z * sigmoid(z)`.
#[inline(always)]
fn silu(z: f32) -> f32 {
    z / (1.0 + exp(-z))
}

/// `d silu(z) / dz = s * (1 + z * (1 - s))` with `s = sigmoid(z)`.
#[inline(always)]
fn silu_grad(z: f32) -> f32 {
    let s = 1.0 / (1.0 + exp(-z));
    s * (1.0 + z * (1.0 - s))
}

/// The (image, first pixel, pixels) tasks of a call.
fn tasks(g: &Geometry) -> Vec<(usize, usize, usize)> {
    let chunks = g.p.div_ceil(CHUNK);
    (0..g.n).flat_map(|i| (0..chunks).map(move |k| (i, k * CHUNK, CHUNK.min(g.p - k * CHUNK)))).collect()
}

/// `max(sqrt(sum_c x[c][j]^2), EPS)` for the `len` pixels from `j0` of image `xi` `[c, p]`.
#[inline(always)]
fn norms(g: &Geometry, xi: &[f32], j0: usize, len: usize) -> Vec<f32> {
    let mut d = vec![0f32; len];
    for c in 0..g.c {
        let row = &xi[c * g.p + j0..c * g.p + j0 + len];
        for (s, v) in d.iter_mut().zip(row) {
            *s += v * v;
        }
    }
    for s in d.iter_mut() {
        *s = s.sqrt().max(EPS);
    }
    d
}

/// Channel `c`'s multiplier and offset for image `i`: `z = u * gain * (scale + 1) + shift` is
/// computed as `(u * gain) * m + b` with `m = scale + 1`, `b = shift` (or `1`, `0`).
#[inline(always)]
fn modulation(params: &Params<'_>, g: &Geometry, i: usize, c: usize) -> (f32, f32) {
    match params.modulation {
        Some((scale, shift)) => (scale[i * g.c + c] + 1.0, shift[i * g.c + c]),
        None => (1.0, 0.0),
    }
}

/// One forward task: pixels `j0..j0 + len` of image `i`.
struct ForwardTask<'a> {
    g: &'a Geometry,
    x: &'a [f32],
    params: &'a Params<'a>,
    dst: SharedMut,
    task: (usize, usize, usize),
}

impl pulp::WithSimd for ForwardTask<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) {
        let Self { g, x, params, dst, task: (i, j0, len) } = self;
        let xi = &x[i * g.c * g.p..(i + 1) * g.c * g.p];
        let d = norms(g, xi, j0, len);
        for c in 0..g.c {
            let (m, b) = modulation(params, g, i, c);
            let a = params.gain[c];
            let row = &xi[c * g.p + j0..c * g.p + j0 + len];
            // SAFETY: this task alone writes pixels j0..j0+len of image i (see `tasks`), inside
            // the output buffer, which outlives the parallel loop.
            let o = unsafe { std::slice::from_raw_parts_mut(dst.0.add((i * g.c + c) * g.p + j0), len) };
            if params.silu {
                for ((o, v), d) in o.iter_mut().zip(row).zip(&d) {
                    *o = silu((v / d) * a * m + b);
                }
            } else if params.modulation.is_some() {
                for ((o, v), d) in o.iter_mut().zip(row).zip(&d) {
                    *o = (v / d) * a * m + b;
                }
            } else {
                for ((o, v), d) in o.iter_mut().zip(row).zip(&d) {
                    *o = (v / d) * a;
                }
            }
        }
    }
}

/// The forward pass: `[n, c, p]`, row-major.
pub fn forward(g: &Geometry, x: &[f32], params: &Params<'_>) -> Vec<f32> {
    check(g, x, params);
    let mut out = vec![0f32; x.len()];
    let dst = SharedMut(out.as_mut_ptr());
    let arch = pulp::Arch::new();
    tasks(g).into_par_iter().for_each(|task| arch.dispatch(ForwardTask { g, x, params, dst, task }));
    out
}

/// Gradients of [`forward`] given the output's gradient `grad` `[n, c, p]`.
pub struct Grads {
    /// With respect to `x`, `[n, c, p]`.
    pub x: Vec<f32>,
    /// With respect to `gain`, `[c]`.
    pub gain: Vec<f32>,
    /// With respect to `scale` and `shift`, each `[n, c]` (when modulated).
    pub modulation: Option<(Vec<f32>, Vec<f32>)>,
}

/// The backward pass. With `u = x / d`, `d = max(||x||, eps)`, `z = u * gain * m + b` and
/// `gz = grad * silu'(z)` (or `grad`): `d gain_c = sum gz * u * m`, `d scale = sum_j gz * u *
/// gain`, `d shift = sum_j gz`, and with `gu = gz * gain * m`, `dx = (gu - u * sum_c gu u) / d`
/// where the norm exceeds `eps` (else `gu / eps`: the clamp is constant there).
///
/// Per-chunk partial sums are added in task order, whatever the thread count.
pub fn backward(g: &Geometry, x: &[f32], params: &Params<'_>, grad: &[f32]) -> Grads {
    check(g, x, params);
    assert_eq!(grad.len(), x.len(), "norm_act: gradient length");
    let mut dx = vec![0f32; x.len()];
    let dst = SharedMut(dx.as_mut_ptr());
    let arch = pulp::Arch::new();
    let tasks = tasks(g);
    // Per task: d gain [c], d scale [c], d shift [c] of its image.
    let partials: Vec<Vec<f32>> =
        tasks.par_iter().map(|&task| arch.dispatch(BackwardTask { g, x, params, grad, dst, task })).collect();
    let mut gain = vec![0f32; g.c];
    let mut scale = vec![0f32; g.n * g.c];
    let mut shift = vec![0f32; g.n * g.c];
    for (&(i, _, _), s) in tasks.iter().zip(&partials) {
        for c in 0..g.c {
            gain[c] += s[c];
            scale[i * g.c + c] += s[g.c + c];
            shift[i * g.c + c] += s[2 * g.c + c];
        }
    }
    Grads { x: dx, gain, modulation: params.modulation.is_some().then_some((scale, shift)) }
}

/// One backward task: pixels `j0..j0 + len` of image `i`; returns its partial sums, `d gain`,
/// `d scale`, `d shift` of its image, each `[c]`.
struct BackwardTask<'a> {
    g: &'a Geometry,
    x: &'a [f32],
    params: &'a Params<'a>,
    grad: &'a [f32],
    dst: SharedMut,
    task: (usize, usize, usize),
}

impl pulp::WithSimd for BackwardTask<'_> {
    type Output = Vec<f32>;

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) -> Vec<f32> {
        let Self { g, x, params, grad, dst, task: (i, j0, len) } = self;
        let at = |c: usize| (i * g.c + c) * g.p + j0;
        let mut sums = vec![0f32; 3 * g.c];
        let d = norms(g, &x[i * g.c * g.p..(i + 1) * g.c * g.p], j0, len);
        // gu (kept in the output buffer), and `dot` = sum_c gu * u per pixel.
        let mut dot = vec![0f32; len];
        for c in 0..g.c {
            let (m, b) = modulation(params, g, i, c);
            let a = params.gain[c];
            let (xr, gr) = (&x[at(c)..at(c) + len], &grad[at(c)..at(c) + len]);
            // SAFETY: as in `ForwardTask`: this task alone writes these pixels of image i.
            let o = unsafe { std::slice::from_raw_parts_mut(dst.0.add(at(c)), len) };
            let [s_gain, s_scale, s_shift] = if params.silu {
                grad_row::<true>(xr, gr, &d, o, &mut dot, a, m, b)
            } else {
                grad_row::<false>(xr, gr, &d, o, &mut dot, a, m, b)
            };
            sums[c] = s_gain;
            sums[g.c + c] = s_scale;
            sums[2 * g.c + c] = s_shift;
        }
        for c in 0..g.c {
            let xr = &x[at(c)..at(c) + len];
            // SAFETY: as above.
            let o = unsafe { std::slice::from_raw_parts_mut(dst.0.add(at(c)), len) };
            for (((o, v), dd), dt) in o.iter_mut().zip(xr).zip(&d).zip(&dot) {
                // Below eps the norm is the constant eps: no projection term.
                let proj = if *dd > EPS { (v / dd) * dt } else { 0.0 };
                *o = (*o - proj) / dd;
            }
        }
        sums
    }
}

/// One channel row of the backward's first pass: writes `gu` to `o`, adds `gu * u` to `dot`,
/// returns the row's sums for `d gain`, `d scale`, `d shift`. The sums run in 16 lanes (so the
/// loop vectorises), added up at the end.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn grad_row<const SILU: bool>(
    xr: &[f32],
    gr: &[f32],
    d: &[f32],
    o: &mut [f32],
    dot: &mut [f32],
    a: f32,
    m: f32,
    b: f32,
) -> [f32; 3] {
    const L: usize = 16;
    let mut acc = [[0f32; L]; 3];
    let mut one = |v: f32, gv: f32, dd: f32, o: &mut f32, dt: &mut f32, lane: usize| {
        let u = v / dd;
        let gz = if SILU { gv * silu_grad(u * a * m + b) } else { gv };
        acc[0][lane] += gz * u * m;
        acc[1][lane] += gz * (u * a);
        acc[2][lane] += gz;
        let gu = gz * a * m;
        *dt += gu * u;
        *o = gu;
    };
    let main = xr.len() / L * L;
    for ((((xc, gc), dc), oc), tc) in xr[..main]
        .chunks_exact(L)
        .zip(gr[..main].chunks_exact(L))
        .zip(d[..main].chunks_exact(L))
        .zip(o[..main].chunks_exact_mut(L))
        .zip(dot[..main].chunks_exact_mut(L))
    {
        for l in 0..L {
            one(xc[l], gc[l], dc[l], &mut oc[l], &mut tc[l], l);
        }
    }
    for j in main..xr.len() {
        one(xr[j], gr[j], d[j], &mut o[j], &mut dot[j], j - main);
    }
    acc.map(|lanes| lanes.iter().sum())
}

fn check(g: &Geometry, x: &[f32], params: &Params<'_>) {
    assert_eq!(x.len(), g.n * g.c * g.p, "norm_act: input length");
    assert_eq!(params.gain.len(), g.c, "norm_act: gain length");
    if let Some((scale, shift)) = params.modulation {
        assert_eq!(scale.len(), g.n * g.c, "norm_act: scale length");
        assert_eq!(shift.len(), g.n * g.c, "norm_act: shift length");
    }
}
