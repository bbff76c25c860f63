//! The weight gradient in bf16 ([`Precision::Bf16`](super::Precision)): bf16 operands, f32
//! sums, as PyTorch's autocast computes it.
//!
//! `dW[co][c][tap] = sum over pixels j of G[co][j] * xpad[c][j + off(tap)]`, with `G` the output
//! gradient in the wide layout of the forward (`j = y * R + x`, zero at the gap pixels) and
//! `off(dy, dx) = dy * R + dx`. The reduction runs over pixels, so `vdpbf16ps` takes pairs of
//! neighbouring pixels: each 32-bit lane of a packed operand holds pixels `2t` and `2t + 1`. The
//! gradient is transposed to pixel-pair rows of all output channels (`[pair][co]`), so a tile
//! loads 32 output channels of one pair as two vectors; the input stays channel-major, its padded
//! planes rounded to bf16 in place, where any two neighbouring pixels are one (possibly
//! unaligned) 32-bit lane: every tap's window is a plain offset, and a tile broadcasts one pair
//! of each of 8 input channels. The accumulators are `dW` itself (8 input x 32 output channels):
//! no horizontal sums, no gathers.

use rayon::prelude::*;

use super::direct::bf16::round;
use super::Geometry;

/// Input channels per register tile (broadcast rows).
const MR: usize = 8;
/// f32 lanes of a vector: output channels per accumulator.
const LANES: usize = 16;
/// Pixel pairs per block of the reduction: a tile's gradient rows (128 pairs of 32 output
/// channels, 16 KB) and input rows (8 channels' 256 pixels and the 3x3 taps' halo of two image
/// rows, 8 KB at 128 pixels a row) stay in the L1 cache.
const BLOCK: usize = 128;

/// Whether the bf16 weight gradient runs for `g`: enough channels to fill its tiles (the 1-channel
/// stem and a 1-channel output layer, a few percent of the work, stay in f32).
pub(super) fn applies(g: &Geometry) -> bool {
    g.cin >= MR && g.cout >= LANES
}

/// `src` rounded to bf16 into `dst` (a loop the compiler vectorises).
///
/// # Safety
/// The CPU has AVX-512F.
#[target_feature(enable = "avx512f")]
unsafe fn to_bf16(dst: &mut [u16], src: &[f32]) {
    for (d, &v) in dst.iter_mut().zip(src) {
        *d = (round(v) >> 16) as u16;
    }
}

/// [`super::weight_grad`] in bf16: `[cout, cin, k, k]`, the images' contributions added in image
/// order whatever the thread count.
///
/// # Safety
/// The CPU has AVX-512F and AVX512-BF16 (`bf16_available`); [`applies`] holds for `g`; `g.n`,
/// `g.h` and `g.w` are not 0.
pub(super) unsafe fn weight_grad(g: &Geometry, x: &[f32], grad: &[f32]) -> Vec<f32> {
    let s = Shape::new(g);
    // SAFETY: the caller's guarantees.
    let sum = super::sum_over_images(g, x, grad, |xi, gi, parallel| unsafe { s.image(xi, gi, parallel) });
    s.unpack(&sum)
}

/// The sizes of one call.
struct Shape {
    g: Geometry,
    /// Output channels rounded up to whole vectors.
    cout: usize,
    /// Input channels rounded up to whole tiles.
    cin: usize,
    /// Output channels per tile: 32 (two vectors) where the rounded-up count comes in 32s,
    /// else 16.
    cw: usize,
    /// Pixel pairs of the wide gradient (`h * R` pixels, a lone last pixel paired with zero).
    pairs: usize,
    /// bf16 pixels of each padded input plane: every tap's window, up to pixel
    /// `2 * pairs - 1 + off` (with 2 to spare).
    plane: usize,
}

impl Shape {
    fn new(g: &Geometry) -> Self {
        let cout = g.cout.div_ceil(LANES) * LANES;
        let cw = if cout.is_multiple_of(2 * LANES) { 2 * LANES } else { LANES };
        let pairs = (g.h * g.row()).div_ceil(2);
        let plane = 2 * pairs + (g.k - 1) * (g.row() + 1) + 2;
        Self { g: *g, cout, cin: g.cin.div_ceil(MR) * MR, cw, pairs, plane }
    }

    /// Length of one image's packed result: `[tile][tap][c][cw]`, tiles of `cw` output channels.
    fn result_len(&self) -> usize {
        self.cout * self.g.k * self.g.k * self.cin
    }

    /// One image's contribution, packed as [`Self::result_len`] says, its tiles of output
    /// channels in parallel when `parallel`.
    ///
    /// # Safety
    /// As for [`weight_grad`].
    unsafe fn image(&self, xi: &[f32], gi: &[f32], parallel: bool) -> Vec<f32> {
        // SAFETY: the caller checked the CPU.
        let (gp, xb) = unsafe { (self.pack_grad(gi), self.pack_input(xi)) };
        let (k, r) = (self.g.k, self.g.row());
        let mut out = vec![0f32; self.result_len()];
        let per_tile = k * k * self.cin * self.cw;
        let tile_of = |(ct, dst): (usize, &mut [f32])| {
            let co = ct * self.cw;
            for t0 in (0..self.pairs).step_by(BLOCK) {
                let len = BLOCK.min(self.pairs - t0);
                for c in (0..self.cin).step_by(MR) {
                    for tap in 0..k * k {
                        let off = (tap / k) * r + tap % k;
                        let d = &mut dst[(tap * self.cin + c) * self.cw..][..MR * self.cw];
                        // SAFETY: the caller checked the CPU; gradient rows t0..t0 + len of
                        // `gp` (`pairs` rows of `cout` lanes), columns co..co + cw; input planes
                        // c..c + MR of `xb` (`cin` planes of `plane` pixels), pixels up to
                        // `2 * (t0 + len) - 1 + off < plane`; `d` holds MR rows of cw.
                        unsafe {
                            let gptr = gp.as_ptr().add(t0 * self.cout + co);
                            let xptr = xb.as_ptr().add(c * self.plane + 2 * t0 + off);
                            if self.cw == 2 * LANES {
                                tile::<2>(gptr, self.cout, xptr, self.plane, len, d.as_mut_ptr(), self.cw);
                            } else {
                                tile::<1>(gptr, self.cout, xptr, self.plane, len, d.as_mut_ptr(), self.cw);
                            }
                        }
                    }
                }
            }
        };
        if parallel {
            out.par_chunks_mut(per_tile).enumerate().for_each(tile_of);
        } else {
            out.chunks_mut(per_tile).enumerate().for_each(tile_of);
        }
        out
    }

    /// The output gradient `gi` `[cout, h, w]` as bf16 pixel pairs of the wide layout,
    /// `[pair][co]` (`pairs` rows of `self.cout` lanes; zero at gaps and padding channels):
    /// every channel rounded into its wide row, then the rows transposed.
    ///
    /// # Safety
    /// The CPU has AVX-512F.
    #[target_feature(enable = "avx512f")]
    unsafe fn pack_grad(&self, gi: &[f32]) -> Vec<u32> {
        const T: usize = 16;
        let (h, w, r, pairs) = (self.g.h, self.g.w, self.g.row(), self.pairs);
        let mut gp = vec![0u32; pairs * self.cout];
        // Every channel's wide row of bf16 pixels (each pair one u32 lane); the gaps stay zero.
        let mut wide = vec![0u32; self.g.cout * pairs];
        for (dst, gc) in wide.chunks_exact_mut(pairs).zip(gi.chunks_exact(h * w)) {
            // SAFETY: `dst` as the 2 * pairs u16 halves of its lanes (the low half first: x86 is
            // little-endian); u32 alignment suits u16.
            let dst = unsafe { std::slice::from_raw_parts_mut(dst.as_mut_ptr().cast::<u16>(), 2 * pairs) };
            for (y, src) in gc.chunks_exact(w).enumerate() {
                // SAFETY: the caller checked the CPU.
                unsafe { to_bf16(&mut dst[y * r..y * r + w], src) };
            }
        }
        // Transposed T pairs at a time: T lanes (one cache line) of each channel's row go to T
        // rows of `gp`, whose lines stay in the L1 cache until the last channel fills them.
        for t0 in (0..pairs).step_by(T) {
            let t1 = (t0 + T).min(pairs);
            for (c, src) in wide.chunks_exact(pairs).enumerate() {
                for (t, &v) in (t0..t1).zip(&src[t0..t1]) {
                    gp[t * self.cout + c] = v;
                }
            }
        }
        gp
    }

    /// The zero-padded planes of `xi` `[cin, h, w]` (the forward's `xpad`: pixel `(y, x)` at
    /// `(y + p) * R + p + x`) in bf16, `plane` pixels per channel (`cin` planes, zero for the
    /// padding channels).
    ///
    /// # Safety
    /// The CPU has AVX-512F.
    #[target_feature(enable = "avx512f")]
    unsafe fn pack_input(&self, xi: &[f32]) -> Vec<u16> {
        let (h, w, r, p) = (self.g.h, self.g.w, self.g.row(), self.g.pad());
        let mut xb = vec![0u16; self.cin * self.plane];
        for (c, dst) in xb.chunks_exact_mut(self.plane).take(self.g.cin).enumerate() {
            for (y, src) in xi[c * h * w..(c + 1) * h * w].chunks_exact(w).enumerate() {
                let at = (y + p) * r + p;
                // SAFETY: the caller checked the CPU.
                unsafe { to_bf16(&mut dst[at..at + w], src) };
            }
        }
        xb
    }

    /// The summed packed result as `[cout, cin, k, k]`.
    fn unpack(&self, packed: &[f32]) -> Vec<f32> {
        let kk = self.g.k * self.g.k;
        let mut dw = vec![0f32; self.g.cout * self.g.cin * kk];
        for co in 0..self.g.cout {
            let (ct, lane) = (co / self.cw, co % self.cw);
            for c in 0..self.g.cin {
                for tap in 0..kk {
                    dw[(co * self.g.cin + c) * kk + tap] = packed[((ct * kk + tap) * self.cin + c) * self.cw + lane];
                }
            }
        }
        dw
    }
}

/// `dst[i][16 v + l] += sum over t < len of x[i][2t..2t + 2] . g[t][16 v + l]` for `i < MR`,
/// `v < NR`, `l < 16`: each product a pair of bf16 pixels (`vdpbf16ps`), `x[i]` the bf16 pixels
/// of plane `i` (`x_stride` apart; a pair may start at an odd pixel), `g` rows of pairs
/// `g_stride` lanes apart, `dst` rows `dst_stride` floats apart.
///
/// # Safety
/// The CPU has AVX-512F and AVX512-BF16; `g` is readable for `len` rows of `16 * NR` lanes, `x`
/// for `MR` planes of `2 * len` pixels, `dst` writable for `MR` rows of `16 * NR`.
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn tile<const NR: usize>(
    g: *const u32,
    g_stride: usize,
    x: *const u16,
    x_stride: usize,
    len: usize,
    dst: *mut f32,
    dst_stride: usize,
) {
    use std::arch::x86_64::*;
    // SAFETY: `__m512i` and `__m512bh` are both 64 bytes of plain lanes.
    let bh = |v: __m512i| unsafe { std::mem::transmute::<__m512i, __m512bh>(v) };
    let mut acc = [[_mm512_setzero_ps(); NR]; MR];
    for t in 0..len {
        // SAFETY (all pointer arithmetic below): within the ranges the caller guarantees.
        let gr = unsafe { g.add(t * g_stride) } as *const __m512i;
        let gv: [__m512bh; NR] = std::array::from_fn(|v| bh(unsafe { _mm512_loadu_si512(gr.add(v)) }));
        for (i, acc) in acc.iter_mut().enumerate() {
            let pair = unsafe { x.add(i * x_stride + 2 * t).cast::<u32>().read_unaligned() };
            let xv = bh(_mm512_set1_epi32(pair as i32));
            for (a, gv) in acc.iter_mut().zip(&gv) {
                *a = _mm512_dpbf16_ps(*a, xv, *gv);
            }
        }
    }
    for (i, acc) in acc.iter().enumerate() {
        for (v, a) in acc.iter().enumerate() {
            unsafe {
                let d = dst.add(i * dst_stride + v * LANES);
                _mm512_storeu_ps(d, _mm512_add_ps(_mm512_loadu_ps(d), *a));
            }
        }
    }
}
