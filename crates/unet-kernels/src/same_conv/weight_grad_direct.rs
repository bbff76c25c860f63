//! The weight gradient as a reduction over pixels, in f32 or in bf16 ([`Precision::Bf16`](super::Precision):
//! bf16 operands, f32 sums, as PyTorch's autocast computes it).
//!
//! `dW[co][c][tap] = sum over pixels j of G[co][j] * xpad[c][j + off(tap)]`, with `G` the output
//! gradient in the wide layout of the forward (`j = y * R + x`, zero at the gap pixels) and
//! `off(dy, dx) = dy * R + dx`. The gradient is transposed to rows of all output channels per
//! reduction lane (`[lane][co]`), so a tile loads 32 output channels of one lane as two vectors;
//! the input stays channel-major in its padded planes, where every tap's window is a plain
//! offset, and a tile broadcasts one lane of each of 8 input channels. The accumulators are `dW`
//! itself (8 input x 32 output channels): no horizontal sums, no gathers, no copy of the window
//! per tap (the GEMM formulation replicates the input once per kernel column and packs it).
//!
//! A lane is one f32 pixel ([`F32`], one FMA per product), or in bf16 ([`Bf16`]) a pair of
//! neighbouring pixels: `vdpbf16ps` sums both products of a 32-bit lane, whose two halves are
//! pixels `2t` and `2t + 1`, so any two neighbouring bf16 pixels of a plane are one (possibly
//! unaligned) 32-bit lane.

use rayon::prelude::*;

use super::direct::bf16::round;
use super::Geometry;

/// Input channels per register tile (broadcast rows).
const MR: usize = 8;
/// f32 lanes of a vector: output channels per accumulator.
const LANES: usize = 16;
/// Reduction lanes per block: a tile's gradient rows (128 lanes of 32 output channels, 16 KB)
/// and input rows (8 channels' 128 lanes and the 3x3 taps' halo of two image rows) stay in the
/// L1 cache.
const BLOCK: usize = 128;

/// How a reduction lane holds pixels, and the tile that sums its products.
pub(super) trait Operands {
    /// Pixels per lane.
    const PIX: usize;
    /// One pixel of the packed input planes.
    type Pixel: Copy + Default + Send + Sync;
    /// One lane of the packed gradient: `PIX` pixels.
    type Lane: Copy + Default + Send + Sync;
    /// `src` converted into `dst`.
    ///
    /// # Safety
    /// The CPU has AVX-512F.
    unsafe fn convert(dst: &mut [Self::Pixel], src: &[f32]);
    /// `dst[i][16 v + l] += sum over t < len of x[i][PIX t..PIX t + PIX] . g[t][16 v + l]` for
    /// `i < MR`, `v < NR`, `l < 16`: `x[i]` the pixels of plane `i` (`x_stride` apart; a lane may
    /// start at any pixel), `g` lanes `g_stride` apart, `dst` rows `dst_stride` floats apart.
    ///
    /// # Safety
    /// The CPU has what [`weight_grad`] asks of it; `g` is readable for `len` rows of `16 * NR`
    /// lanes, `x` for `MR` planes of `PIX * len` pixels, `dst` writable for `MR` rows of `16 * NR`.
    unsafe fn tile<const NR: usize>(
        g: *const Self::Lane,
        g_stride: usize,
        x: *const Self::Pixel,
        x_stride: usize,
        len: usize,
        dst: *mut f32,
        dst_stride: usize,
    );
}

/// f32 operands: a lane is one pixel.
pub(super) struct F32;

/// bf16 operands with f32 sums: a lane is a pair of neighbouring pixels.
pub(super) struct Bf16;

impl Operands for F32 {
    const PIX: usize = 1;
    type Pixel = f32;
    type Lane = f32;
    unsafe fn convert(dst: &mut [f32], src: &[f32]) {
        dst.copy_from_slice(src);
    }
    /// One FMA per product (needs AVX-512F).
    #[target_feature(enable = "avx512f")]
    unsafe fn tile<const NR: usize>(
        g: *const f32,
        g_stride: usize,
        x: *const f32,
        x_stride: usize,
        len: usize,
        dst: *mut f32,
        dst_stride: usize,
    ) {
        use std::arch::x86_64::*;
        let mut acc = [[_mm512_setzero_ps(); NR]; MR];
        for t in 0..len {
            // SAFETY (all pointer arithmetic below): within the ranges the caller guarantees.
            let gr = unsafe { g.add(t * g_stride) };
            let gv: [__m512; NR] = std::array::from_fn(|v| unsafe { _mm512_loadu_ps(gr.add(v * LANES)) });
            for (i, acc) in acc.iter_mut().enumerate() {
                let xv = _mm512_set1_ps(unsafe { *x.add(i * x_stride + t) });
                for (a, gv) in acc.iter_mut().zip(&gv) {
                    *a = _mm512_fmadd_ps(xv, *gv, *a);
                }
            }
        }
        // SAFETY: `dst` as the caller guarantees.
        unsafe { add_tile(&acc, dst, dst_stride) }
    }
}

impl Operands for Bf16 {
    const PIX: usize = 2;
    type Pixel = u16;
    type Lane = u32;
    unsafe fn convert(dst: &mut [u16], src: &[f32]) {
        // SAFETY: the caller checked the CPU.
        unsafe { to_bf16(dst, src) }
    }
    /// Each product a pair of bf16 pixels, `vdpbf16ps` (needs AVX-512F and AVX512-BF16).
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
        // SAFETY: `dst` as the caller guarantees.
        unsafe { add_tile(&acc, dst, dst_stride) }
    }
}

/// Whether this weight gradient runs for `g`: enough channels to fill its tiles (the 1-channel
/// stem and a 1-channel output layer, a few percent of the work, stay on the GEMMs).
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

/// [`super::weight_grad`] with operands `O`: `[cout, cin, k, k]`, the images' contributions added
/// in image order whatever the thread count.
///
/// # Safety
/// The CPU has AVX-512F, and for [`Bf16`] AVX512-BF16 (`bf16_available`); [`applies`] holds for
/// `g`; `g.n`, `g.h` and `g.w` are not 0.
pub(super) unsafe fn weight_grad<O: Operands>(g: &Geometry, x: &[f32], grad: &[f32]) -> Vec<f32> {
    let s = Shape::<O>::new(g);
    // SAFETY: the caller's guarantees.
    let sum = super::sum_over_images(g, x, grad, |xi, gi, parallel| unsafe { s.image(xi, gi, parallel) });
    s.unpack(&sum)
}

/// The sizes of one call.
struct Shape<O> {
    g: Geometry,
    /// Output channels rounded up to whole vectors.
    cout: usize,
    /// Input channels rounded up to whole tiles.
    cin: usize,
    /// Output channels per tile: 32 (two vectors) where the rounded-up count comes in 32s,
    /// else 16.
    cw: usize,
    /// Lanes of the wide gradient (`h * R` pixels; in pairs, a lone last pixel paired with zero).
    lanes: usize,
    /// Pixels of each padded input plane: every tap's window, up to pixel
    /// `PIX * lanes - 1 + off` (with 2 to spare).
    plane: usize,
    operands: std::marker::PhantomData<fn() -> O>,
}

impl<O: Operands> Shape<O> {
    fn new(g: &Geometry) -> Self {
        const {
            assert!(size_of::<O::Lane>() == O::PIX * size_of::<O::Pixel>());
            assert!(align_of::<O::Lane>() >= align_of::<O::Pixel>());
        };
        let cout = g.cout.div_ceil(LANES) * LANES;
        let cw = if cout.is_multiple_of(2 * LANES) { 2 * LANES } else { LANES };
        let lanes = (g.h * g.row()).div_ceil(O::PIX);
        let plane = O::PIX * lanes + (g.k - 1) * (g.row() + 1) + 2;
        Self { g: *g, cout, cin: g.cin.div_ceil(MR) * MR, cw, lanes, plane, operands: std::marker::PhantomData }
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
        // The tiles' furthest reads: the last lane's pixels at the last tap's offset, every row
        // of the packed gradient.
        debug_assert!(O::PIX * self.lanes - 1 + (k - 1) * (r + 1) < self.plane);
        debug_assert_eq!(xb.len(), self.cin * self.plane);
        debug_assert_eq!(gp.len(), self.lanes * self.cout);
        let mut out = vec![0f32; self.result_len()];
        let per_tile = k * k * self.cin * self.cw;
        let tile_of = |(ct, dst): (usize, &mut [f32])| {
            let co = ct * self.cw;
            for t0 in (0..self.lanes).step_by(BLOCK) {
                let len = BLOCK.min(self.lanes - t0);
                for c in (0..self.cin).step_by(MR) {
                    for tap in 0..k * k {
                        let off = (tap / k) * r + tap % k;
                        let d = &mut dst[(tap * self.cin + c) * self.cw..][..MR * self.cw];
                        // SAFETY: the caller checked the CPU; gradient rows t0..t0 + len of
                        // `gp` (`lanes` rows of `cout`), columns co..co + cw; input planes
                        // c..c + MR of `xb` (`cin` planes of `plane` pixels), pixels up to
                        // `PIX * (t0 + len) - 1 + off < plane`; `d` holds MR rows of cw.
                        unsafe {
                            let gptr = gp.as_ptr().add(t0 * self.cout + co);
                            let xptr = xb.as_ptr().add(c * self.plane + O::PIX * t0 + off);
                            if self.cw == 2 * LANES {
                                O::tile::<2>(gptr, self.cout, xptr, self.plane, len, d.as_mut_ptr(), self.cw);
                            } else {
                                O::tile::<1>(gptr, self.cout, xptr, self.plane, len, d.as_mut_ptr(), self.cw);
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

    /// The output gradient `gi` `[cout, h, w]` as lanes of the wide layout, `[lane][co]`
    /// (`lanes` rows of `self.cout`; zero at gaps and padding channels): every channel converted
    /// into its wide row, then the rows transposed.
    ///
    /// # Safety
    /// The CPU has AVX-512F.
    #[target_feature(enable = "avx512f")]
    unsafe fn pack_grad(&self, gi: &[f32]) -> Vec<O::Lane> {
        const T: usize = 16;
        let (h, w, r, lanes) = (self.g.h, self.g.w, self.g.row(), self.lanes);
        let mut gp = vec![O::Lane::default(); lanes * self.cout];
        // Every channel's wide row of pixels (in bf16, each pair one u32 lane); the gaps stay zero.
        let mut wide = vec![O::Lane::default(); self.g.cout * lanes];
        for (dst, gc) in wide.chunks_exact_mut(lanes).zip(gi.chunks_exact(h * w)) {
            // SAFETY: `dst` as the PIX * lanes pixels of its lanes (in bf16 the low half first:
            // x86 is little-endian); `Shape::new` checked the sizes, and a lane's alignment suits
            // its pixels.
            let dst = unsafe { std::slice::from_raw_parts_mut(dst.as_mut_ptr().cast::<O::Pixel>(), O::PIX * lanes) };
            for (y, src) in gc.chunks_exact(w).enumerate() {
                // SAFETY: the caller checked the CPU.
                unsafe { O::convert(&mut dst[y * r..y * r + w], src) };
            }
        }
        // Transposed T lanes at a time: T lanes (one cache line) of each channel's row go to T
        // rows of `gp`, whose lines stay in the L1 cache until the last channel fills them.
        for t0 in (0..lanes).step_by(T) {
            let t1 = (t0 + T).min(lanes);
            for (c, src) in wide.chunks_exact(lanes).enumerate() {
                for (t, &v) in (t0..t1).zip(&src[t0..t1]) {
                    gp[t * self.cout + c] = v;
                }
            }
        }
        gp
    }

    /// The zero-padded planes of `xi` `[cin, h, w]` (the forward's `xpad`: pixel `(y, x)` at
    /// `(y + p) * R + p + x`) as `O`'s pixels, `plane` pixels per channel (`cin` planes, zero
    /// for the padding channels).
    ///
    /// # Safety
    /// The CPU has AVX-512F.
    #[target_feature(enable = "avx512f")]
    unsafe fn pack_input(&self, xi: &[f32]) -> Vec<O::Pixel> {
        let (h, w, r, p) = (self.g.h, self.g.w, self.g.row(), self.g.pad());
        let mut xb = vec![O::Pixel::default(); self.cin * self.plane];
        for (c, dst) in xb.chunks_exact_mut(self.plane).take(self.g.cin).enumerate() {
            for (y, src) in xi[c * h * w..(c + 1) * h * w].chunks_exact(w).enumerate() {
                let at = (y + p) * r + p;
                // SAFETY: the caller checked the CPU.
                unsafe { O::convert(&mut dst[at..at + w], src) };
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

/// `dst[i][16 v + l] += acc[i][v][l]`: a tile's sums added to its rows of `dW`.
///
/// # Safety
/// The CPU has AVX-512F; `dst` is writable for `MR` rows of `16 * NR`, `dst_stride` apart.
#[target_feature(enable = "avx512f")]
unsafe fn add_tile<const NR: usize>(acc: &[[std::arch::x86_64::__m512; NR]; MR], dst: *mut f32, dst_stride: usize) {
    use std::arch::x86_64::*;
    for (i, acc) in acc.iter().enumerate() {
        for (v, a) in acc.iter().enumerate() {
            // SAFETY: row i, vector v of `dst`, within the caller's guarantee.
            unsafe {
                let d = dst.add(i * dst_stride + v * LANES);
                _mm512_storeu_ps(d, _mm512_add_ps(_mm512_loadu_ps(d), *a));
            }
        }
    }
}
