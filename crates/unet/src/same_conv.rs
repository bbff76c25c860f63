//! A `k x k` stride-1 "same" convolution on contiguous NCHW f32 slices as `k` GEMMs (the CPU
//! kernel behind [`crate::backend::UnetBackend`] on burn Flex).
//!
//! Per image, the input is written once into a zero-padded plane of width `Wp = W + 2p`
//! (`p = k / 2`), replicated `k` times with shifts of `0..k` columns: row `(dx, c)` of `x3` holds
//! `xpad[c][j + dx]`. For a kernel row `dy`, every tap `(c, dx)` then reads the same window
//! `x3[(dx, c)][dy * Wp .. dy * Wp + H * Wp]`, so the whole row of taps is one GEMM,
//! `out_wide [C_out, H * Wp] += W_dy [C_out, k * C_in] x window [k * C_in, H * Wp]`, with every
//! operand a plain strided matrix (no im2col buffer of `k^2` copies). `out_wide` holds `2p`
//! columns per row that read across the padding; they are dropped when the result is written
//! out as `[C_out, H, W]` with the bias added.
//!
//! Why not burn Flex's `conv2d`: it spends about a third of its time scattering its NHWC GEMM
//! result back to NCHW element by element and a tenth in a single-threaded input transpose
//! (docs/PERFORMANCE.md). Here the GEMM writes NCHW rows directly.

use rayon::prelude::*;

/// Shapes of one call: input `[n, cin, h, w]`, weight `[cout, cin, k, k]` (odd `k`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Images in the batch.
    pub n: usize,
    /// Input channels.
    pub cin: usize,
    /// Height (input and output).
    pub h: usize,
    /// Width (input and output).
    pub w: usize,
    /// Output channels.
    pub cout: usize,
    /// Kernel size (odd).
    pub k: usize,
}

impl Geometry {
    fn pad(&self) -> usize {
        self.k / 2
    }
    /// Padded width.
    fn wp(&self) -> usize {
        self.w + 2 * self.pad()
    }
    /// Row stride of `x3`: the padded plane plus `k` elements of slack for the shifted reads.
    fn plane(&self) -> usize {
        (self.h + 2 * self.pad()) * self.wp() + self.k
    }
}

/// Weights `[cout, cin, k, k]` regrouped per kernel row: `wr[dy][co][dx * cin + c]`.
fn regroup_weights(g: &Geometry, weight: &[f32]) -> Vec<f32> {
    let (k, cin, cout) = (g.k, g.cin, g.cout);
    let kk = k * cin;
    let mut wr = vec![0f32; k * cout * kk];
    for co in 0..cout {
        for c in 0..cin {
            for dy in 0..k {
                for dx in 0..k {
                    wr[(dy * cout + co) * kk + dx * cin + c] = weight[((co * cin + c) * k + dy) * k + dx];
                }
            }
        }
    }
    wr
}

/// `x3[(dx, c)][j] = xpad[c][j + dx]` for one image `xi` `[cin, h, w]`.
fn replicate_shifted(g: &Geometry, xi: &[f32]) -> Vec<f32> {
    let (p, wp, s, w) = (g.pad(), g.wp(), g.plane(), g.w);
    let mut x3 = vec![0f32; g.k * g.cin * s];
    for dx in 0..g.k {
        for c in 0..g.cin {
            let row = &mut x3[(dx * g.cin + c) * s..(dx * g.cin + c + 1) * s];
            for y in 0..g.h {
                let src = &xi[(c * g.h + y) * w..(c * g.h + y + 1) * w];
                // Padded position of the row's first pixel, shifted left by dx.
                let j0 = ((y + p) * wp + p) as isize - dx as isize;
                if j0 >= 0 {
                    let j0 = j0 as usize;
                    row[j0..j0 + w].copy_from_slice(src);
                } else {
                    // Only the first row with dx > p: its first pixels fall before the plane.
                    let cut = ((-j0) as usize).min(w);
                    row[..w - cut].copy_from_slice(&src[cut..]);
                }
            }
        }
    }
    x3
}

/// Convolve one image `xi` `[cin, h, w]` into `out` `[cout, h, w]`.
fn forward_image(g: &Geometry, wr: &[f32], xi: &[f32], bias: Option<&[f32]>, out: &mut [f32], par: gemm::Parallelism) {
    let (k, h, w, wp, s, cout) = (g.k, g.h, g.w, g.wp(), g.plane(), g.cout);
    let kk = k * g.cin;
    let x3 = replicate_shifted(g, xi);
    let mut wide = vec![0f32; cout * h * wp];
    for dy in 0..k {
        // SAFETY: dst is `cout x (h*wp)` row-major inside `wide`; lhs is `cout x kk` row-major
        // inside `wr`'s block dy; rhs is `kk x (h*wp)` with row stride `s` starting at
        // `dy * wp`, whose last element `(kk-1)*s + dy*wp + h*wp - 1 < kk*s` since
        // `(dy + h) * wp <= (h + 2p) * wp < s`.
        unsafe {
            gemm::gemm(
                cout,
                h * wp,
                kk,
                wide.as_mut_ptr(),
                1,
                (h * wp) as isize,
                dy > 0,
                wr.as_ptr().add(dy * cout * kk),
                1,
                kk as isize,
                x3.as_ptr().add(dy * wp),
                1,
                s as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                par,
            );
        }
    }
    for co in 0..cout {
        let b = bias.map_or(0.0, |b| b[co]);
        for y in 0..h {
            let src = &wide[(co * h + y) * wp..(co * h + y) * wp + w];
            let dst = &mut out[(co * h + y) * w..(co * h + y + 1) * w];
            for (d, v) in dst.iter_mut().zip(src) {
                *d = v + b;
            }
        }
    }
}

/// Whether a call's `n` images run in parallel, one single-threaded GEMM each (at least as many
/// images as rayon threads), rather than one after the other with a multi-threaded GEMM.
fn images_in_parallel(n: usize) -> bool {
    n >= rayon::current_num_threads()
}

/// The convolution of `x` `[n, cin, h, w]` with `weight` `[cout, cin, k, k]` plus `bias`
/// `[cout]`, stride 1, zero padding `k / 2`: `[n, cout, h, w]`, row-major.
///
/// Images run in parallel or one after the other as [`images_in_parallel`] decides.
pub fn forward(g: &Geometry, x: &[f32], weight: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    assert!(g.k % 2 == 1, "same_conv: even kernel size {}", g.k);
    assert_eq!(x.len(), g.n * g.cin * g.h * g.w, "same_conv: input length");
    assert_eq!(weight.len(), g.cout * g.cin * g.k * g.k, "same_conv: weight length");
    let wr = regroup_weights(g, weight);
    let (img_in, img_out) = (g.cin * g.h * g.w, g.cout * g.h * g.w);
    let mut out = vec![0f32; g.n * img_out];
    if img_out == 0 || img_in == 0 {
        if let (Some(b), true) = (bias, img_in == 0) {
            // No input channels: the output is the bias alone.
            for (i, v) in out.iter_mut().enumerate() {
                *v = b[(i / (g.h * g.w)) % g.cout];
            }
        }
        return out;
    }
    if images_in_parallel(g.n) {
        out.par_chunks_mut(img_out).zip(x.par_chunks(img_in)).for_each(|(o, xi)| {
            forward_image(g, &wr, xi, bias, o, gemm::Parallelism::None)
        });
    } else {
        for (o, xi) in out.chunks_mut(img_out).zip(x.chunks(img_in)) {
            forward_image(g, &wr, xi, bias, o, gemm::Parallelism::Rayon(0));
        }
    }
    out
}

/// The gradient of [`forward`] with respect to its input: `grad` `[n, cout, h, w]` convolved
/// with the weights transposed and flipped (`[cin, cout, k, k]`, same padding): `[n, cin, h, w]`.
pub fn input_grad(g: &Geometry, weight: &[f32], grad: &[f32]) -> Vec<f32> {
    let k = g.k;
    let mut flipped = vec![0f32; weight.len()];
    for co in 0..g.cout {
        for c in 0..g.cin {
            for dy in 0..k {
                for dx in 0..k {
                    flipped[((c * g.cout + co) * k + dy) * k + dx] =
                        weight[((co * g.cin + c) * k + (k - 1 - dy)) * k + (k - 1 - dx)];
                }
            }
        }
    }
    let transposed = Geometry { cin: g.cout, cout: g.cin, ..*g };
    forward(&transposed, grad, &flipped, None)
}

/// The gradient of [`forward`] with respect to its weights, `[cout, cin, k, k]`:
/// `dW[co][c][dy][dx] = sum over images and pixels of grad[co][y][x] * xpad[c][y + dy][x + dx]`.
///
/// Per image and kernel row `dy`, one GEMM `grad_wide [C_out, H * Wp] x window^T` (the window
/// of [`forward`], zero columns of `grad_wide` where the window reads across the padding). The
/// images' contributions are added in image order, whatever the thread count.
pub fn weight_grad(g: &Geometry, x: &[f32], grad: &[f32]) -> Vec<f32> {
    assert!(g.k % 2 == 1, "same_conv: even kernel size {}", g.k);
    assert_eq!(x.len(), g.n * g.cin * g.h * g.w, "same_conv: input length");
    assert_eq!(grad.len(), g.n * g.cout * g.h * g.w, "same_conv: gradient length");
    let (k, h, w, wp, s, cout, cin) = (g.k, g.h, g.w, g.wp(), g.plane(), g.cout, g.cin);
    let kk = k * cin;
    let (img_in, img_out) = (cin * h * w, cout * h * w);
    let mut dw = vec![0f32; cout * cin * k * k];
    if g.n == 0 || img_in == 0 || img_out == 0 {
        return dw;
    }
    let one = |xi: &[f32], gi: &[f32], par: gemm::Parallelism| -> Vec<f32> {
        let x3 = replicate_shifted(g, xi);
        let mut gw = vec![0f32; cout * h * wp];
        for row in 0..cout * h {
            gw[row * wp..row * wp + w].copy_from_slice(&gi[row * w..(row + 1) * w]);
        }
        let mut dwr = vec![0f32; k * cout * kk];
        for dy in 0..k {
            // SAFETY: dst is `cout x kk` row-major in block dy of `dwr`; lhs is `cout x (h*wp)`
            // row-major in `gw`; rhs is `(h*wp) x kk` with element (j, r) at
            // `x3[r * s + dy * wp + j]`, in bounds as in `forward_image`.
            unsafe {
                gemm::gemm(
                    cout,
                    kk,
                    h * wp,
                    dwr.as_mut_ptr().add(dy * cout * kk),
                    1,
                    kk as isize,
                    false,
                    gw.as_ptr(),
                    1,
                    (h * wp) as isize,
                    x3.as_ptr().add(dy * wp),
                    s as isize,
                    1,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    par,
                );
            }
        }
        dwr
    };
    let parts: Vec<Vec<f32>> = if images_in_parallel(g.n) {
        x.par_chunks(img_in)
            .zip(grad.par_chunks(img_out))
            .map(|(xi, gi)| one(xi, gi, gemm::Parallelism::None))
            .collect()
    } else {
        x.chunks(img_in)
            .zip(grad.chunks(img_out))
            .map(|(xi, gi)| one(xi, gi, gemm::Parallelism::Rayon(0)))
            .collect()
    };
    let mut parts = parts.into_iter();
    let mut dwr = parts.next().expect("n > 0 images");
    for p in parts {
        for (a, b) in dwr.iter_mut().zip(&p) {
            *a += b;
        }
    }
    for co in 0..cout {
        for c in 0..cin {
            for dy in 0..k {
                for dx in 0..k {
                    dw[((co * cin + c) * k + dy) * k + dx] = dwr[(dy * cout + co) * kk + dx * cin + c];
                }
            }
        }
    }
    dw
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `(output, input, weight)` index triple of the textbook sum: output pixel `(n, co,
    /// y, x)` takes input pixel `(n, c, y + dy - p, x + dx - p)` times weight `(co, c, dy, dx)`
    /// wherever that input pixel lies inside the image.
    fn taps(g: &Geometry) -> Vec<(usize, usize, usize)> {
        let p = g.pad() as isize;
        let mut taps = Vec::new();
        for n in 0..g.n {
            for co in 0..g.cout {
                for y in 0..g.h {
                    for xx in 0..g.w {
                        let o = ((n * g.cout + co) * g.h + y) * g.w + xx;
                        for c in 0..g.cin {
                            for dy in 0..g.k {
                                for dx in 0..g.k {
                                    let (iy, ix) = (y as isize + dy as isize - p, xx as isize + dx as isize - p);
                                    if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
                                        continue;
                                    }
                                    let i = ((n * g.cin + c) * g.h + iy as usize) * g.w + ix as usize;
                                    taps.push((o, i, ((co * g.cin + c) * g.k + dy) * g.k + dx));
                                }
                            }
                        }
                    }
                }
            }
        }
        taps
    }

    /// The textbook sum, in f64.
    fn direct(g: &Geometry, x: &[f32], wt: &[f32], bias: Option<&[f32]>) -> Vec<f64> {
        let plane = g.h * g.w;
        let mut out: Vec<f64> = (0..g.n * g.cout * plane).map(|o| bias.map_or(0.0, |b| b[(o / plane) % g.cout] as f64)).collect();
        for (o, i, w) in taps(g) {
            out[o] += x[i] as f64 * wt[w] as f64;
        }
        out
    }

    /// Deterministic pseudo-random values in [-1, 1).
    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    #[test]
    fn matches_the_direct_sum() {
        for (i, g) in [
            Geometry { n: 1, cin: 1, h: 9, w: 7, cout: 4, k: 7 },
            Geometry { n: 3, cin: 5, h: 6, w: 11, cout: 2, k: 3 },
            Geometry { n: 4, cin: 2, h: 1, w: 1, cout: 3, k: 3 },
            Geometry { n: 2, cin: 3, h: 4, w: 5, cout: 6, k: 1 },
            Geometry { n: 1, cin: 2, h: 2, w: 3, cout: 2, k: 5 },
        ]
        .iter()
        .enumerate()
        {
            let x = values(g.n * g.cin * g.h * g.w, i as u64 + 1);
            let wt = values(g.cout * g.cin * g.k * g.k, i as u64 + 100);
            let b = values(g.cout, i as u64 + 200);
            for bias in [None, Some(b.as_slice())] {
                let got = forward(g, &x, &wt, bias);
                let want = direct(g, &x, &wt, bias);
                for (j, (a, e)) in got.iter().zip(&want).enumerate() {
                    assert!((*a as f64 - e).abs() < 1e-5, "{g:?} bias {} at {j}: {a} vs {e}", bias.is_some());
                }
            }
        }
    }

    /// Both gradients against the direct sums of their definitions, in f64.
    #[test]
    fn gradients_match_the_direct_sums() {
        for (i, g) in [
            Geometry { n: 2, cin: 3, h: 5, w: 4, cout: 2, k: 3 },
            Geometry { n: 1, cin: 1, h: 8, w: 9, cout: 3, k: 7 },
            Geometry { n: 3, cin: 2, h: 1, w: 2, cout: 4, k: 3 },
            Geometry { n: 2, cin: 2, h: 3, w: 3, cout: 2, k: 1 },
        ]
        .iter()
        .enumerate()
        {
            let x = values(g.n * g.cin * g.h * g.w, i as u64 + 7);
            let wt = values(g.cout * g.cin * g.k * g.k, i as u64 + 70);
            let gr = values(g.n * g.cout * g.h * g.w, i as u64 + 700);
            let (mut gx, mut gw) = (vec![0f64; x.len()], vec![0f64; wt.len()]);
            for (o, xi, wi) in taps(g) {
                gx[xi] += gr[o] as f64 * wt[wi] as f64;
                gw[wi] += gr[o] as f64 * x[xi] as f64;
            }
            for (name, got, want) in [("input", input_grad(g, &wt, &gr), gx), ("weight", weight_grad(g, &x, &gr), gw)] {
                assert_eq!(got.len(), want.len());
                for (j, (a, e)) in got.iter().zip(&want).enumerate() {
                    assert!((*a as f64 - e).abs() < 1e-5, "{g:?} {name} gradient at {j}: {a} vs {e}");
                }
            }
        }
    }

    #[test]
    fn empty_batches_and_channels() {
        let g = Geometry { n: 0, cin: 2, h: 3, w: 3, cout: 2, k: 3 };
        assert!(forward(&g, &[], &values(36, 1), None).is_empty());
        assert!(input_grad(&g, &values(36, 1), &[]).is_empty());
        assert_eq!(weight_grad(&g, &[], &[]), vec![0.0; 36]);
        let g = Geometry { n: 2, cin: 0, h: 2, w: 2, cout: 2, k: 3 };
        assert_eq!(forward(&g, &[], &[], Some(&[1.0, -2.0])), vec![1.0, 1.0, 1.0, 1.0, -2.0, -2.0, -2.0, -2.0, 1.0, 1.0, 1.0, 1.0, -2.0, -2.0, -2.0, -2.0]);
    }
}
