//! A `k x k` stride-1 "same" convolution on contiguous NCHW f32 slices as `k` GEMMs (the CPU
//! kernel behind `unet::UnetBackend` on burn Flex).
//!
//! Per image, the input is written once into a zero-padded plane with rows of `R = W + p`
//! (`p = k / 2`; the `p` zeros after an image row are its right padding and the next row's left
//! padding), replicated `k` times with shifts of `0..k` columns: row `(dx, c)` of `x3` holds
//! `xpad[c][j + dx]`. For a kernel row `dy`, every tap `(c, dx)` then reads the same window
//! `x3[(dx, c)][dy * R .. dy * R + H * R]`, so the whole row of taps is one GEMM,
//! `out_wide [C_out, H * R] += W_dy [C_out, k * C_in] x window [k * C_in, H * R]`, with every
//! operand a plain strided matrix (no im2col buffer of `k^2` copies). `out_wide` holds `p`
//! columns per row that read across the padding; they are dropped when the result is written
//! out as `[C_out, H, W]` with the bias added.
//!
//! On x86-64 CPUs with AVX-512F, when the output channels come in blocks of 8, the forward and
//! the input gradient skip the GEMMs: the `direct` kernel reads one padded plane per channel
//! at each tap's offset and accumulates tiles of 48 wide pixels x 8 output channels in
//! registers, without the gemm crate's packed copy of the window (crates/unet/ARCHITECTURE.md).
//!
//! Why not burn Flex's `conv2d`: it spends about a third of its time scattering its NHWC GEMM
//! result back to NCHW element by element and a tenth in a single-threaded input transpose
//! (docs/performance-history.md). Here the GEMM writes NCHW rows directly.

use std::cell::Cell;
use std::marker::PhantomData;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicU8, Ordering};

use rayon::prelude::*;

use crate::fill::filled_by;
#[cfg(target_arch = "x86_64")]
use crate::fill::SharedMut;

/// The arithmetic of the direct kernel (forward and input gradient).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// f32 inputs, weights and sums (the default).
    #[default]
    F32,
    /// Operands rounded to bfloat16 (round to nearest even), products summed in f32 by
    /// AVX512-BF16 dot products, as PyTorch's CPU autocast rounds a convolution's operands (its
    /// results stay f32 here). The convolution stays f32 where its bf16 kernel does not run: the
    /// forward's output channels, or the input gradient's input channels, not in blocks of 8;
    /// the weight gradient with fewer than 8 input or 16 output channels; a CPU without
    /// AVX512-BF16.
    Bf16,
}

/// The process-wide [`Precision`] ([`forward`], [`input_grad`] and [`weight_grad`] read it), chosen once at the
/// edge like rayon's thread count: 0 = f32, 1 = bf16.
static PRECISION: AtomicU8 = AtomicU8::new(0);

/// [`set_precision`] asked for bf16 on a CPU without AVX512-BF16.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bf16Unavailable;

impl std::fmt::Display for Bf16Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("bf16 convolutions need a CPU with AVX-512F and AVX512-BF16, which this one lacks")
    }
}

impl std::error::Error for Bf16Unavailable {}

/// Whether this CPU runs [`Precision::Bf16`]: x86-64 with AVX-512F and AVX512-BF16.
pub fn bf16_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// How many more products per second this CPU's bf16 dot products (`vdpbf16ps`, two products a
/// lane) sum than its f32 FMAs (one a lane), measured on the calling thread in well under a
/// millisecond: register-only loops of each with 16 independent accumulators (throughput, not
/// latency, bounds them), the best of ten alternated timings; `None` without AVX512-BF16. What
/// [`Precision::Bf16`] can gain at most in the kernels' inner loops: about 2 where the dot
/// product issues as often as an FMA, 1 or less where it issues at half the rate or slower, and
/// then bf16, with its rounding passes, runs slower than f32 (docs/PERFORMANCE.md names the
/// CPUs measured).
pub fn bf16_dot_speedup() -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    if bf16_available() {
        const ITERS: usize = 4096;
        let best = |f: &dyn Fn() -> f32| -> f64 {
            (0..5)
                .map(|_| {
                    let t = std::time::Instant::now();
                    std::hint::black_box(f());
                    t.elapsed().as_secs_f64()
                })
                .fold(f64::INFINITY, f64::min)
                .max(1e-9)
        };
        let (mut dot, mut fma) = (f64::INFINITY, f64::INFINITY);
        for _ in 0..2 {
            // SAFETY: `bf16_available` checked AVX-512F and AVX512-BF16.
            dot = dot.min(best(&|| unsafe { probe::dot_bf16(std::hint::black_box(ITERS)) }));
            // SAFETY: as above (AVX-512F).
            fma = fma.min(best(&|| unsafe { probe::fma_f32(std::hint::black_box(ITERS)) }));
        }
        // Per loop iteration: the same number of instructions, of 32 (bf16) or 16 (f32) products.
        return Some((32.0 / dot) / (16.0 / fma));
    }
    None
}

/// The register-only loops of [`bf16_dot_speedup`]: `ACC` independent accumulators with
/// distinct starting values (so no two chains can be merged), enough to cover the latency of
/// either instruction at two issues a cycle.
#[cfg(target_arch = "x86_64")]
mod probe {
    use std::arch::x86_64::*;

    /// Accumulators per loop.
    const ACC: usize = 16;

    /// Distinct starting values.
    #[target_feature(enable = "avx512f")]
    fn start() -> [__m512; ACC] {
        std::array::from_fn(|i| _mm512_set1_ps(i as f32 * 1e-3))
    }

    /// The sum of all lanes (keeps the loop's result alive).
    #[target_feature(enable = "avx512f")]
    fn total(acc: [__m512; ACC]) -> f32 {
        acc.iter().map(|&a| _mm512_reduce_add_ps(a)).sum()
    }

    /// `iters` rounds of `ACC` `vdpbf16ps`.
    ///
    /// # Safety
    /// The CPU has AVX-512F and AVX512-BF16.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn dot_bf16(iters: usize) -> f32 {
        let a: __m512bh = _mm512_cvtne2ps_pbh(_mm512_set1_ps(1e-3), _mm512_set1_ps(2e-3));
        let b: __m512bh = _mm512_cvtne2ps_pbh(_mm512_set1_ps(3e-3), _mm512_set1_ps(1e-3));
        let mut acc = start();
        for _ in 0..iters {
            for a_i in acc.iter_mut() {
                *a_i = _mm512_dpbf16_ps(*a_i, a, b);
            }
        }
        total(acc)
    }

    /// `iters` rounds of `ACC` f32 FMAs.
    ///
    /// # Safety
    /// The CPU has AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn fma_f32(iters: usize) -> f32 {
        let (a, b) = (_mm512_set1_ps(1e-3), _mm512_set1_ps(3e-3));
        let mut acc = start();
        for _ in 0..iters {
            for a_i in acc.iter_mut() {
                *a_i = _mm512_fmadd_ps(a, b, *a_i);
            }
        }
        total(acc)
    }
}

/// Sets the process-wide precision of [`forward`], [`input_grad`] and [`weight_grad`]; refuses bf16 where
/// [`bf16_available`] is false (the setting is then unchanged).
pub fn set_precision(p: Precision) -> Result<(), Bf16Unavailable> {
    if p == Precision::Bf16 && !bf16_available() {
        return Err(Bf16Unavailable);
    }
    PRECISION.store(p as u8, Ordering::Relaxed);
    Ok(())
}

thread_local! {
    /// Live [`F32Scope`]s on this thread.
    static F32_SCOPES: Cell<usize> = const { Cell::new(0) };
}

/// While alive, [`forward`], [`input_grad`] and [`weight_grad`] called on this thread run in f32 whatever
/// [`set_precision`] chose; other threads are not affected. For results that must not depend
/// on the setting (a metric's features). Not `Send`: it must drop on the thread that made it.
#[must_use = "the scope ends when the guard drops"]
pub struct F32Scope {
    _not_send: PhantomData<*const ()>,
}

impl F32Scope {
    /// Starts an f32 scope on this thread (scopes nest).
    pub fn new() -> Self {
        F32_SCOPES.with(|c| c.set(c.get() + 1));
        Self { _not_send: PhantomData }
    }
}

impl Default for F32Scope {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for F32Scope {
    fn drop(&mut self) {
        F32_SCOPES.with(|c| c.set(c.get() - 1));
    }
}

/// The precision [`forward`], [`input_grad`] and [`weight_grad`] use on this thread: f32 inside an
/// [`F32Scope`], else the process-wide setting ([`set_precision`]). Read once per call, on the
/// calling thread, before the work is spread over rayon's threads.
pub fn precision() -> Precision {
    if F32_SCOPES.with(|c| c.get()) > 0 {
        return Precision::F32;
    }
    if PRECISION.load(Ordering::Relaxed) == 1 {
        Precision::Bf16
    } else {
        Precision::F32
    }
}

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
    /// Row stride `R = W + p` of the padded plane and of the wide output: each image row is
    /// followed by `p` zeros, which serve as the right padding of that row and the left padding
    /// of the next one.
    fn row(&self) -> usize {
        self.w + self.pad()
    }
    /// Length of a padded plane (a row of `x3`): `p` zero rows above and `p` below the image, so
    /// that every window `[dy * R, dy * R + H * R)` of it stays inside.
    fn plane(&self) -> usize {
        (self.h + 2 * self.pad()) * self.row()
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

/// `x3[(dx, c)][j] = xpad[c][j + dx]` for one image `xi` `[cin, h, w]`, where the padded plane
/// `xpad` holds pixel `(y, x)` at `(y + p) * R + p + x` and zeros elsewhere.
fn replicate_shifted(g: &Geometry, xi: &[f32]) -> Vec<f32> {
    padded_planes(g, xi, g.k, g.plane())
}

/// `shifts` copies of every channel's padded plane (see [`replicate_shifted`]), copy `dx`
/// shifted left by `dx`, each `plane` long (at least `(h + p) * R + p`). Every element is
/// written once, in order (no zero-fill pass before the copies).
fn padded_planes(g: &Geometry, xi: &[f32], shifts: usize, plane: usize) -> Vec<f32> {
    let (p, r, w) = (g.pad(), g.row(), g.w);
    let mut x3 = Vec::with_capacity(shifts * g.cin * plane);
    for dx in 0..shifts {
        for c in 0..g.cin {
            let start = x3.len();
            // Rows of xpad before the image, and the first row's left padding, shifted by dx.
            x3.resize(start + p * r + p - dx, 0.0);
            for src in xi[c * g.h * w..(c + 1) * g.h * w].chunks_exact(w) {
                x3.extend_from_slice(src);
                x3.resize(x3.len() + p, 0.0);
            }
            x3.resize(start + plane, 0.0);
        }
    }
    x3
}

/// The direct convolution: no GEMM, no packed copy of the window. Per block of 8 output
/// channels and tile of 48 wide pixels, 24 AVX-512 accumulators (3 vectors of 16 pixels x 8
/// channels) run over every input channel and tap, loading the input straight from the padded
/// plane at the tap's offset (`dy * R + dx`) and broadcasting the weights from a block-packed
/// copy. The GEMM formulation spent about 15 % of a DeepLense forward in the gemm crate packing
/// the window (a full copy of it per kernel row) and another 5 % replicating the shifted input;
/// here the input is written once per image and read from cache.
///
/// In bf16 ([`Precision::Bf16`]) the same tiles run on pairs of input channels: each 32-bit
/// lane of a padded plane holds one pixel of two channels as bf16, each broadcast weight the two
/// channels' weights, and one AVX512-BF16 dot product (`vdpbf16ps`) adds both products to the
/// f32 accumulator: half the loads, broadcasts and instructions of the f32 tile.
#[cfg(target_arch = "x86_64")]
mod direct {
    use super::*;

    /// Output channels per block (accumulator rows).
    pub(super) const CO: usize = 8;
    /// Wide pixels per tile: three 16-lane vectors.
    pub(super) const PX: usize = 48;

    /// Weights packed per block of [`CO`] output channels,
    /// `wp[block][c][tap][o] = W[block * CO + o][c][tap]`, read in order by the kernel. Written
    /// in one pass with the weights read in order too: for plain weights block by block and
    /// output channel by output channel (a block's packed weights stay in the L2 cache); for the
    /// adjoint, whose `[cin][cout]` layout already groups a block's output channels, in the
    /// packed order.
    pub(super) fn pack_weights(g: &Geometry, weights: Weights<'_>) -> Vec<f32> {
        let (kk, cin) = (g.k * g.k, g.cin);
        let mut wp = vec![0f32; g.cout * cin * kk];
        match weights {
            Weights::AsGiven(w) => {
                for (block, dst) in wp.chunks_exact_mut(cin * kk * CO).enumerate() {
                    for o in 0..CO {
                        let src = &w[(block * CO + o) * cin * kk..(block * CO + o + 1) * cin * kk];
                        for (i, &v) in src.iter().enumerate() {
                            dst[i * CO + o] = v;
                        }
                    }
                }
            }
            Weights::Adjoint(w) => {
                // W[o][c][tap] = w[c][o][kk - 1 - tap], `w` being `[cin][cout][k][k]`: per
                // (block, c), CO * kk values in, CO * kk out.
                let blocks = g.cout / CO;
                // Where each packed value of a chunk comes from within its source chunk.
                let from: Vec<usize> = (0..kk).flat_map(|tap| (0..CO).map(move |o| o * kk + kk - 1 - tap)).collect();
                for (i, dst) in wp.chunks_exact_mut(CO * kk).enumerate() {
                    let (block, c) = (i / cin, i % cin);
                    let src = &w[(c * blocks + block) * CO * kk..][..CO * kk];
                    for (d, &j) in dst.iter_mut().zip(&from) {
                        *d = src[j];
                    }
                }
            }
        }
        wp
    }

    /// Wide pixels computed per output channel: `h * R` rounded up to whole tiles.
    fn wide_len(g: &Geometry) -> usize {
        (g.h * g.row()).div_ceil(PX) * PX
    }

    /// Length of a padded plane: every tile's reads, up to `wide_len - 1 + (k - 1) * (R + 1)`,
    /// stay inside it.
    fn plane_len(g: &Geometry) -> usize {
        wide_len(g) + (g.k - 1) * (g.row() + 1)
    }

    /// Tiles per group: the unit over which every block of output channels runs before the
    /// next group starts. A group's input (`cin` rows of its pixels plus the `(k - 1) * (R + 1)`
    /// halo) is sized for half the core's L2 cache ([`crate::cache::l2_bytes`]; the Zen 5 the
    /// kernel was tuned on has 1 MB, so 512 KB there), so that it stays there while the blocks
    /// read it (running each block over the whole image instead re-read the input from memory
    /// once per 8 output channels: 69 MB per image at 128 channels and 128 x 128, and a
    /// convolution time that doubled or tripled with the memory traffic of other processes). When the weights
    /// outweigh the image's input (the 16 x 16 stages), one group holds the whole image, so that
    /// the weights are read once per image.
    fn group_tiles(g: &Geometry) -> usize {
        // In 4-byte elements (an f32, or a bf16 pair of channels).
        let budget = crate::cache::l2_bytes() / 2 / 4;
        let tiles = wide_len(g) / PX;
        if g.cout * g.cin * g.k * g.k >= g.cin * plane_len(g) {
            return tiles.max(1);
        }
        let per_channel = budget / g.cin.max(1);
        (per_channel.saturating_sub((g.k - 1) * (g.row() + 1)) / PX).clamp(1, tiles.max(1))
    }

    /// Convolve one image `xi` `[cin, h, w]` into `out` `[cout, h, w]`, its groups of tiles in
    /// parallel when `parallel`.
    pub(super) fn forward_image(
        g: &Geometry,
        wp: &[f32],
        xi: &[f32],
        bias: Option<&[f32]>,
        out: &mut [MaybeUninit<f32>],
        parallel: bool,
    ) {
        let plane = plane_len(g);
        let xpad = padded_planes(g, xi, 1, plane);
        run_tiles(g, g.cin, &xpad, plane, wp, tile, bias, out, parallel);
    }

    /// [`forward_image`] in bf16: the padded planes rounded to bf16 and interleaved in pairs of
    /// channels ([`bf16::pairs`]), `wp` from [`bf16::pack_weights`].
    ///
    /// # Safety
    /// The CPU has AVX-512F and AVX512-BF16 (`bf16_available`).
    pub(super) unsafe fn forward_image_bf16(
        g: &Geometry,
        wp: &[u32],
        xi: &[f32],
        bias: Option<&[f32]>,
        out: &mut [MaybeUninit<f32>],
        parallel: bool,
    ) {
        let plane = plane_len(g);
        let xpad = padded_planes(g, xi, 1, plane);
        // SAFETY: the caller checked AVX-512F.
        let xpairs = unsafe { bf16::pairs(&xpad, g.cin, plane) };
        run_tiles(g, g.cin.div_ceil(2), &xpairs, plane, wp, tile_bf16, bias, out, parallel);
    }

    /// One tile's kernel: `(x, plane, r, k, rows, w, dst, dst_stride)` as [`tile`] takes them.
    type Tile<T, W> = unsafe fn(*const T, usize, usize, usize, usize, *const W, *mut f32, usize);

    /// Runs `tile` over every block of output channels and tile of wide pixels of one image
    /// whose padded input is `rows` planes of `plane` elements (`rows * k * k * CO` packed weights
    /// per block), and writes the result to `out`.
    #[allow(clippy::too_many_arguments)]
    fn run_tiles<T: Sync, W: Sync>(
        g: &Geometry,
        rows: usize,
        xpad: &[T],
        plane: usize,
        wp: &[W],
        tile: Tile<T, W>,
        bias: Option<&[f32]>,
        out: &mut [MaybeUninit<f32>],
        parallel: bool,
    ) {
        let r = g.row();
        let m = wide_len(g);
        let block_weights = rows * g.k * g.k * CO;
        let blocks = g.cout / CO;
        // A bf16 pair of channels takes the bytes of one f32 channel: the cache budget counts rows.
        let group = group_tiles(&Geometry { cin: rows, ..*g });
        let fill = |wide: *mut f32| {
            let shared = SharedMut(wide);
            // One group of tiles: every block of output channels over the group's tiles, so
            // that the group's input rows are read from the L2 cache by all blocks.
            let one = |first: usize| {
                // Rebinding moves the whole `SharedMut` (Send + Sync) into the closure; without
                // it the closure would capture the bare raw pointer field, which is neither.
                #[allow(clippy::redundant_locals)]
                let shared = shared;
                for block in 0..blocks {
                    for t in first..(first + group).min(m / PX) {
                        // SAFETY: the callers checked the CPU features `tile` needs; the tile
                        // reads `xpad` at `c * plane + t * PX + dy * R + dx + (0..PX)`, below
                        // `(c + 1) * plane` by `plane_len`; it reads `block_weights` weights of
                        // this block and writes rows `block * CO..(block + 1) * CO` of `wide`,
                        // elements `t * PX..(t + 1) * PX`, which no other block or tile writes.
                        unsafe {
                            tile(
                                xpad.as_ptr().add(t * PX),
                                plane,
                                r,
                                g.k,
                                rows,
                                wp.as_ptr().add(block * block_weights),
                                shared.0.add(block * CO * m + t * PX),
                                m,
                            );
                        }
                    }
                }
            };
            if parallel {
                (0..m / PX).into_par_iter().step_by(group).for_each(one);
            } else {
                (0..m / PX).step_by(group).for_each(one);
            }
        };
        // SAFETY: the blocks together write all `cout * m` elements (whole tiles of every row).
        let wide = unsafe { filled_by(g.cout * m, fill) };
        write_out(g, &wide, m, bias, out);
    }

    /// One tile: `dst[o * dst_stride + j] = sum over c, dy, dx of w[c][dy * k + dx][o] *
    /// x[c * plane + dy * r + dx + j]` for `o < CO`, `j < PX`.
    ///
    /// # Safety
    /// The CPU has AVX-512F; `x` is readable at every offset named above, `w` for
    /// `cin * k * k * CO` elements, and `dst` writable at every `o * dst_stride + j`.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile(
        x: *const f32,
        plane: usize,
        r: usize,
        k: usize,
        cin: usize,
        w: *const f32,
        dst: *mut f32,
        dst_stride: usize,
    ) {
        use std::arch::x86_64::*;
        let mut acc = [[_mm512_setzero_ps(); 3]; CO];
        for c in 0..cin {
            // SAFETY (all pointer arithmetic below): within the ranges the caller guarantees.
            let xc = unsafe { x.add(c * plane) };
            let wc = unsafe { w.add(c * k * k * CO) };
            for dy in 0..k {
                for dx in 0..k {
                    let src = unsafe { xc.add(dy * r + dx) };
                    let (x0, x1, x2) =
                        unsafe { (_mm512_loadu_ps(src), _mm512_loadu_ps(src.add(16)), _mm512_loadu_ps(src.add(32))) };
                    let wt = unsafe { wc.add((dy * k + dx) * CO) };
                    for (o, acc) in acc.iter_mut().enumerate() {
                        let wv = _mm512_set1_ps(unsafe { *wt.add(o) });
                        acc[0] = _mm512_fmadd_ps(wv, x0, acc[0]);
                        acc[1] = _mm512_fmadd_ps(wv, x1, acc[1]);
                        acc[2] = _mm512_fmadd_ps(wv, x2, acc[2]);
                    }
                }
            }
        }
        for (o, acc) in acc.iter().enumerate() {
            for (v, a) in acc.iter().enumerate() {
                unsafe { _mm512_storeu_ps(dst.add(o * dst_stride + v * 16), *a) };
            }
        }
    }

    /// [`tile`] on pairs of channels in bf16: `x` holds `pairs` planes of 32-bit lanes (a pixel
    /// of channels `2c` and `2c + 1`), `w` the pairs' weights in the same layout
    /// ([`bf16::pack_weights`]).
    ///
    /// # Safety
    /// The CPU has AVX-512F and AVX512-BF16; the ranges as for [`tile`], counted in 32-bit lanes
    /// and pairs.
    #[target_feature(enable = "avx512f,avx512bf16")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile_bf16(
        x: *const u32,
        plane: usize,
        r: usize,
        k: usize,
        pairs: usize,
        w: *const u32,
        dst: *mut f32,
        dst_stride: usize,
    ) {
        use std::arch::x86_64::*;
        // SAFETY: `__m512i` and `__m512bh` are both 64 bytes of plain lanes.
        let bh = |v: __m512i| unsafe { std::mem::transmute::<__m512i, __m512bh>(v) };
        let mut acc = [[_mm512_setzero_ps(); 3]; CO];
        for c in 0..pairs {
            // SAFETY (all pointer arithmetic below): within the ranges the caller guarantees.
            let xc = unsafe { x.add(c * plane) };
            let wc = unsafe { w.add(c * k * k * CO) };
            for dy in 0..k {
                for dx in 0..k {
                    let src = unsafe { xc.add(dy * r + dx) } as *const __m512i;
                    let (x0, x1, x2) = unsafe {
                        (
                            bh(_mm512_loadu_si512(src)),
                            bh(_mm512_loadu_si512(src.add(1))),
                            bh(_mm512_loadu_si512(src.add(2))),
                        )
                    };
                    let wt = unsafe { wc.add((dy * k + dx) * CO) };
                    for (o, acc) in acc.iter_mut().enumerate() {
                        let wv = bh(_mm512_set1_epi32(unsafe { *wt.add(o) } as i32));
                        acc[0] = _mm512_dpbf16_ps(acc[0], wv, x0);
                        acc[1] = _mm512_dpbf16_ps(acc[1], wv, x1);
                        acc[2] = _mm512_dpbf16_ps(acc[2], wv, x2);
                    }
                }
            }
        }
        for (o, acc) in acc.iter().enumerate() {
            for (v, a) in acc.iter().enumerate() {
                unsafe { _mm512_storeu_ps(dst.add(o * dst_stride + v * 16), *a) };
            }
        }
    }

    /// The bf16 operands of [`tile_bf16`].
    pub(super) mod bf16 {
        use super::CO;
        use crate::same_conv::{Geometry, Weights};

        /// `v` rounded to bfloat16 (to nearest, ties to even), as the bits of an f32 whose low
        /// 16 bits are zero. A NaN stays a (quiet) NaN.
        #[inline(always)]
        pub(crate) fn round(v: f32) -> u32 {
            let b = v.to_bits();
            let rounded = b.wrapping_add(0x7fff + ((b >> 16) & 1)) & 0xffff_0000;
            if v.is_nan() {
                (b | 0x0040_0000) & 0xffff_0000
            } else {
                rounded
            }
        }

        /// Rows `2p` and `2p + 1` of `x` (`rows` rows of `len` values) as one row of 32-bit
        /// lanes, row `2p` in the low half, appended to `out`; a lone last row is paired with
        /// zeros. The one pairing behind both operands of [`super::tile_bf16`].
        #[inline(always)]
        fn pair_rows(x: &[f32], rows: usize, len: usize, out: &mut Vec<u32>) {
            for p in 0..rows.div_ceil(2) {
                let lo = &x[2 * p * len..][..len];
                if 2 * p + 1 < rows {
                    let hi = &x[(2 * p + 1) * len..][..len];
                    out.extend(lo.iter().zip(hi).map(|(a, b)| (round(*a) >> 16) | round(*b)));
                } else {
                    out.extend(lo.iter().map(|a| round(*a) >> 16));
                }
            }
        }

        /// Channels `2c` and `2c + 1` of `x` (`rows` planes of `plane` values) as one plane of
        /// 32-bit lanes, channel `2c` in the low half; a lone last channel is paired with zeros.
        ///
        /// # Safety
        /// The CPU has AVX-512F (the loop is compiled for it).
        #[target_feature(enable = "avx512f")]
        pub(in super::super) unsafe fn pairs(x: &[f32], rows: usize, plane: usize) -> Vec<u32> {
            let mut out = Vec::with_capacity(rows.div_ceil(2) * plane);
            pair_rows(x, rows, plane, &mut out);
            out
        }

        /// The weights in [`super::pack_weights`]'s order as pairs of channels,
        /// `[block][c / 2][tap][o]`, channel `2c` in the low half (a lone last channel paired
        /// with zero): the same values as pairing that function's f32 output, in one pass from
        /// the caller's weights, without the f32 copy the two passes made.
        pub(in super::super) fn pack_weights(g: &Geometry, weights: Weights<'_>) -> Vec<u32> {
            match weights {
                Weights::AsGiven(w) => pack_with(g, |o, c, tap| w[(o * g.cin + c) * g.k * g.k + tap]),
                // W[o][c][tap] = w[c][o][kk - 1 - tap], `w` being `[cin][cout][k][k]`.
                Weights::Adjoint(w) => {
                    let kk = g.k * g.k;
                    pack_with(g, |o, c, tap| w[(c * g.cout + o) * kk + kk - 1 - tap])
                }
            }
        }

        /// [`pack_weights`] for weights `W[o][c][tap]` given by `at`: per block and pair of
        /// channels, the two channels' `[tap][o]` values gathered, then rounded and paired in
        /// one loop the compiler vectorises.
        #[inline(always)]
        fn pack_with(g: &Geometry, at: impl Fn(usize, usize, usize) -> f32) -> Vec<u32> {
            let (kk, pairs) = (g.k * g.k, g.cin.div_ceil(2));
            let mut out = Vec::with_capacity(g.cout / CO * pairs * kk * CO);
            let (mut lo, mut hi) = (vec![0f32; kk * CO], vec![0f32; kk * CO]);
            for block in 0..g.cout / CO {
                for p in 0..pairs {
                    let (c, lone) = (2 * p, 2 * p + 1 == g.cin);
                    for tap in 0..kk {
                        for oi in 0..CO {
                            let o = block * CO + oi;
                            lo[tap * CO + oi] = at(o, c, tap);
                            // A lone last channel pairs with zero, whose bf16 bits are zero.
                            hi[tap * CO + oi] = if lone { 0.0 } else { at(o, c + 1, tap) };
                        }
                    }
                    out.extend(lo.iter().zip(&hi).map(|(a, b)| (round(*a) >> 16) | round(*b)));
                }
            }
            out
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod weight_grad_direct;

/// Whether the `direct` kernel runs for `g`: an x86-64 CPU with AVX-512F and output channels
/// in whole blocks of 8.
fn direct_available(g: &Geometry) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        g.cout.is_multiple_of(direct::CO) && std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = g;
        false
    }
}

/// Convolve one image `xi` `[cin, h, w]` into `out` `[cout, h, w]`.
fn forward_image(
    g: &Geometry,
    wr: &[f32],
    xi: &[f32],
    bias: Option<&[f32]>,
    out: &mut [MaybeUninit<f32>],
    par: gemm::Parallelism,
) {
    let (k, h, r, s, cout) = (g.k, g.h, g.row(), g.plane(), g.cout);
    let kk = k * g.cin;
    let x3 = replicate_shifted(g, xi);
    // SAFETY: the first GEMM (dy = 0, read_dst false) writes all of the `cout x (h*r)` elements.
    let wide = unsafe {
        filled_by(cout * h * r, |wide| {
            for dy in 0..k {
                // SAFETY: dst is `cout x (h*r)` row-major; lhs is `cout x kk` row-major inside
                // `wr`'s block dy; rhs is `kk x (h*r)` with row stride `s` starting at `dy * r`,
                // whose last element `(kk-1)*s + dy*r + h*r - 1 < kk*s` since
                // `(dy + h) * r <= (h + 2p) * r = s`.
                gemm::gemm(
                    cout,
                    h * r,
                    kk,
                    wide,
                    1,
                    (h * r) as isize,
                    dy > 0,
                    wr.as_ptr().add(dy * cout * kk),
                    1,
                    kk as isize,
                    x3.as_ptr().add(dy * r),
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
        })
    };
    write_out(g, &wide, h * r, bias, out);
}

/// `out` `[cout, h, w]` from the wide result (`cout` rows of `row_len >= h * R` values, image row
/// `y` at `y * R`), the gap columns dropped and the bias added.
fn write_out(g: &Geometry, wide: &[f32], row_len: usize, bias: Option<&[f32]>, out: &mut [MaybeUninit<f32>]) {
    let (w, r) = (g.w, g.row());
    for (co, (src, dst)) in wide.chunks_exact(row_len).zip(out.chunks_exact_mut(g.h * w)).enumerate() {
        let b = bias.map_or(0.0, |b| b[co]);
        for (src, dst) in src.chunks(r).zip(dst.chunks_exact_mut(w)) {
            for (d, v) in dst.iter_mut().zip(src) {
                d.write(v + b);
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
/// `[cout]`, stride 1, zero padding `k / 2`: `[n, cout, h, w]`, row-major, in the process-wide
/// [`precision`].
///
/// Images run in parallel or one after the other as [`images_in_parallel`] decides.
pub fn forward(g: &Geometry, x: &[f32], weight: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    forward_with(g, x, weight, bias, precision())
}

/// [`forward`] in the given precision (bf16 where the CPU and the geometry allow it).
pub fn forward_with(g: &Geometry, x: &[f32], weight: &[f32], bias: Option<&[f32]>, precision: Precision) -> Vec<f32> {
    assert_eq!(weight.len(), g.cout * g.cin * g.k * g.k, "same_conv: weight length");
    convolve(g, x, Weights::AsGiven(weight), bias, precision)
}

/// The weights in the layout of the kernel that runs.
enum Packed {
    /// Regrouped per kernel row, for the GEMMs.
    Gemm(Vec<f32>),
    /// Packed per block of output channels, for the direct kernel.
    #[cfg(target_arch = "x86_64")]
    Direct(Vec<f32>),
    /// The same as pairs of bf16 channels, for the direct kernel in bf16.
    #[cfg(target_arch = "x86_64")]
    DirectBf16(Vec<u32>),
}

/// [`forward`] with the weights as [`Weights`] says.
fn convolve(g: &Geometry, x: &[f32], weights: Weights<'_>, bias: Option<&[f32]>, precision: Precision) -> Vec<f32> {
    assert!(g.k % 2 == 1, "same_conv: even kernel size {}", g.k);
    assert_eq!(x.len(), g.n * g.cin * g.h * g.w, "same_conv: input length");
    let (img_in, img_out) = (g.cin * g.h * g.w, g.cout * g.h * g.w);
    if img_out == 0 || img_in == 0 {
        return match (bias, img_in == 0) {
            // No input channels: the output is the bias alone.
            (Some(b), true) => (0..g.n * img_out).map(|i| b[(i / (g.h * g.w)) % g.cout]).collect(),
            _ => vec![0f32; g.n * img_out],
        };
    }
    #[cfg(target_arch = "x86_64")]
    let direct = direct_available(g).then(|| {
        if precision == Precision::Bf16 && bf16_available() {
            Packed::DirectBf16(direct::bf16::pack_weights(g, weights))
        } else {
            Packed::Direct(direct::pack_weights(g, weights))
        }
    });
    #[cfg(not(target_arch = "x86_64"))]
    let direct = {
        let _ = precision;
        None
    };
    let packed = direct.unwrap_or_else(|| {
        Packed::Gemm(match weights {
            Weights::AsGiven(w) => regroup_weights(g, w),
            Weights::Adjoint(w) => regroup_weights(g, &adjoint(g, w)),
        })
    });
    // One image; `parallel`: the image's own work spread over the rayon threads.
    let image = |xi: &[f32], o: &mut [MaybeUninit<f32>], parallel: bool| match &packed {
        #[cfg(target_arch = "x86_64")]
        Packed::Direct(wp) => direct::forward_image(g, wp, xi, bias, o, parallel),
        // SAFETY: chosen only where `bf16_available` (AVX-512F and AVX512-BF16).
        #[cfg(target_arch = "x86_64")]
        Packed::DirectBf16(wp) => unsafe { direct::forward_image_bf16(g, wp, xi, bias, o, parallel) },
        Packed::Gemm(wr) => {
            let par = if parallel { gemm::Parallelism::Rayon(0) } else { gemm::Parallelism::None };
            forward_image(g, wr, xi, bias, o, par)
        }
    };
    let mut out = Vec::with_capacity(g.n * img_out);
    let slots = &mut out.spare_capacity_mut()[..g.n * img_out];
    if images_in_parallel(g.n) {
        slots.par_chunks_mut(img_out).zip(x.par_chunks(img_in)).for_each(|(o, xi)| image(xi, o, false));
    } else {
        for (o, xi) in slots.chunks_mut(img_out).zip(x.chunks(img_in)) {
            image(xi, o, true);
        }
    }
    // SAFETY: every image's `forward_image` wrote all `img_out` elements of its chunk.
    unsafe { out.set_len(g.n * img_out) };
    out
}

/// The gradient of [`forward`] with respect to its input: `grad` `[n, cout, h, w]` convolved
/// with the weights transposed and flipped (`[cin, cout, k, k]`, same padding): `[n, cin, h, w]`.
/// In the process-wide [`precision`].
pub fn input_grad(g: &Geometry, weight: &[f32], grad: &[f32]) -> Vec<f32> {
    input_grad_with(g, weight, grad, precision())
}

/// [`input_grad`] in the given precision (bf16 where the CPU and the geometry allow it).
pub fn input_grad_with(g: &Geometry, weight: &[f32], grad: &[f32], precision: Precision) -> Vec<f32> {
    assert_eq!(weight.len(), g.cout * g.cin * g.k * g.k, "same_conv: weight length");
    let transposed = Geometry { cin: g.cout, cout: g.cin, ..*g };
    convolve(&transposed, grad, Weights::Adjoint(weight), None, precision)
}

/// The weights a [`convolve`] call applies, for its geometry `g`.
#[derive(Clone, Copy)]
enum Weights<'a> {
    /// `[g.cout, g.cin, k, k]` as given.
    AsGiven(&'a [f32]),
    /// The adjoint of a convolution with `[g.cin, g.cout, k, k]` weights: those weights with
    /// both channel axes swapped and the kernel flipped (for [`input_grad`]).
    Adjoint(&'a [f32]),
}

/// The adjoint weights of `w` `[g.cin, g.cout, k, k]` as plain `[g.cout, g.cin, k, k]` weights.
fn adjoint(g: &Geometry, w: &[f32]) -> Vec<f32> {
    let kk = g.k * g.k;
    let mut out = vec![0f32; w.len()];
    for c in 0..g.cin {
        for o in 0..g.cout {
            for tap in 0..kk {
                out[(o * g.cin + c) * kk + tap] = w[(c * g.cout + o) * kk + (kk - 1 - tap)];
            }
        }
    }
    out
}

/// Whether [`weight_grad`] hands the gemm crate the output gradient transposed to pixel-major
/// rows ([`transpose_grad`]). With image rows (row-major) as its left operand, the gemm crate
/// packs it with scalar gathers, which made the 64-channel weight gradient at 128 x 128 twice
/// as slow as oneDNN's (27 vs 13 ms at batch 4; 14 ms transposed). With many output channels on
/// small images (the 16 x 16 stages of the DeepLense preset, 256 and 512 channels) the
/// transposed form is slower instead (512 channels: 32 vs 15 ms), as the window, then read
/// unpacked, is walked once per 64 output channels over a short reduction.
fn pixel_major_grad(g: &Geometry) -> bool {
    g.cout <= 128 || g.h * g.row() >= 1024
}

/// One image's output gradient `gi` `[cout, h, w]` transposed to the wide pixel layout of
/// [`forward`]: `[h * R, cout]`, pixel-major, zero rows at the `p` gap pixels after each image
/// row. Tiles of 16 pixels keep both the reads and the writes in a few cache lines.
fn transpose_grad(g: &Geometry, gi: &[f32]) -> Vec<f32> {
    const TILE: usize = 16;
    let (h, w, r, cout) = (g.h, g.w, g.row(), g.cout);
    let mut gt = vec![0f32; h * r * cout];
    for y in 0..h {
        for x0 in (0..w).step_by(TILE) {
            let x1 = (x0 + TILE).min(w);
            for co in 0..cout {
                let src = &gi[(co * h + y) * w + x0..(co * h + y) * w + x1];
                for (x, v) in (x0..x1).zip(src) {
                    gt[(y * r + x) * cout + co] = *v;
                }
            }
        }
    }
    gt
}

/// `sum over images i of one(x_i, grad_i, parallel)` for the weight gradients: images in
/// parallel (`parallel` false) or one after the other, each spreading its own work over the
/// threads (`parallel` true), as [`images_in_parallel`] decides; the sum runs in image order
/// either way, so the result does not depend on the thread count. `g.n` > 0.
fn sum_over_images(
    g: &Geometry,
    x: &[f32],
    grad: &[f32],
    one: impl Fn(&[f32], &[f32], bool) -> Vec<f32> + Sync,
) -> Vec<f32> {
    let (img_in, img_out) = (g.cin * g.h * g.w, g.cout * g.h * g.w);
    let parts: Vec<Vec<f32>> = if images_in_parallel(g.n) {
        x.par_chunks(img_in).zip(grad.par_chunks(img_out)).map(|(xi, gi)| one(xi, gi, false)).collect()
    } else {
        x.chunks(img_in).zip(grad.chunks(img_out)).map(|(xi, gi)| one(xi, gi, true)).collect()
    };
    let mut parts = parts.into_iter();
    let mut sum = parts.next().expect("n > 0 images");
    for p in parts {
        for (a, b) in sum.iter_mut().zip(&p) {
            *a += b;
        }
    }
    sum
}

/// The gradient of [`forward`] with respect to its weights, `[cout, cin, k, k]`:
/// `dW[co][c][dy][dx] = sum over images and pixels of grad[co][y][x] * xpad[c][y + dy][x + dx]`.
///
/// On x86-64 CPUs with AVX-512F, from 8 input and 16 output channels, a kernel of its own
/// (`weight_grad_direct.rs`: the output gradient transposed to pixel rows, the sums kept in
/// registers as `dW` tiles while they run over the pixels). Elsewhere, per image and kernel row
/// `dy`, one GEMM `grad_wide [C_out, H * R] x window^T` (the window of [`forward`]; `grad_wide`
/// is zero where the window reads across the padding, and laid out as [`pixel_major_grad`]
/// decides). The images' contributions are added in image order, whatever the thread count.
///
/// In the process-wide [`precision`]; in bf16 see [`weight_grad_with`].
pub fn weight_grad(g: &Geometry, x: &[f32], grad: &[f32]) -> Vec<f32> {
    weight_grad_with(g, x, grad, precision())
}

/// [`weight_grad`] in the given precision. In bf16 (where the CPU allows it, with at least 8
/// input and 16 output channels) the input and the output gradient are rounded to bf16 and the
/// products summed in f32 by the same kernel on pairs of pixels (`weight_grad_direct.rs`);
/// elsewhere the f32 path runs.
pub fn weight_grad_with(g: &Geometry, x: &[f32], grad: &[f32], precision: Precision) -> Vec<f32> {
    assert!(g.k % 2 == 1, "same_conv: even kernel size {}", g.k);
    assert_eq!(x.len(), g.n * g.cin * g.h * g.w, "same_conv: input length");
    assert_eq!(grad.len(), g.n * g.cout * g.h * g.w, "same_conv: gradient length");
    #[cfg(target_arch = "x86_64")]
    if g.n > 0 && g.h * g.w > 0 && weight_grad_direct::applies(g) {
        use weight_grad_direct::{Bf16, F32};
        if precision == Precision::Bf16 && bf16_available() {
            // SAFETY: `bf16_available` (AVX-512F and AVX512-BF16) and `applies` checked.
            return unsafe { weight_grad_direct::weight_grad::<Bf16>(g, x, grad) };
        }
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: AVX-512F and `applies` checked.
            return unsafe { weight_grad_direct::weight_grad::<F32>(g, x, grad) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = precision;
    weight_grad_f32(g, x, grad)
}

/// [`weight_grad`] in f32 where its own kernel does not apply: the GEMMs.
fn weight_grad_f32(g: &Geometry, x: &[f32], grad: &[f32]) -> Vec<f32> {
    let (k, h, w, r, s, cout, cin) = (g.k, g.h, g.w, g.row(), g.plane(), g.cout, g.cin);
    let kk = k * cin;
    let (img_in, img_out) = (cin * h * w, cout * h * w);
    let mut dw = vec![0f32; cout * cin * k * k];
    if g.n == 0 || img_in == 0 || img_out == 0 {
        return dw;
    }
    let pixel_major = pixel_major_grad(g);
    // Each kernel row's `cout x kk` block of the result: column-major next to the pixel-major
    // gradient, row-major next to the row-major one (the gemm crate then transposes the
    // problem and gather-packs the window instead).
    let (dst_cs, dst_rs) = if pixel_major { (cout as isize, 1) } else { (1, kk as isize) };
    let one = |xi: &[f32], gi: &[f32], par: gemm::Parallelism| -> Vec<f32> {
        let x3 = replicate_shifted(g, xi);
        // The left operand: the output gradient, `cout x (h*r)` with zero gap columns, stored
        // pixel-major (column-major) or as image rows (row-major).
        let (gw, gw_cs, gw_rs) = if pixel_major {
            (transpose_grad(g, gi), cout as isize, 1)
        } else {
            let mut gw = Vec::with_capacity(cout * h * r);
            for src in gi.chunks_exact(w) {
                gw.extend_from_slice(src);
                gw.resize(gw.len() + r - w, 0.0);
            }
            (gw, 1, (h * r) as isize)
        };
        // SAFETY: each GEMM (read_dst false) writes all `cout x kk` elements of its block dy.
        unsafe {
            filled_by(k * kk * cout, |dwt| {
                for dy in 0..k {
                    // SAFETY: dst is `cout x kk` with strides `dst_cs`, `dst_rs` in block dy;
                    // lhs is `cout x (h*r)` with the strides above; rhs is `(h*r) x kk` with
                    // element (j, q) at `x3[q * s + dy * r + j]`, in bounds as in
                    // `forward_image`.
                    gemm::gemm(
                        cout,
                        kk,
                        h * r,
                        dwt.add(dy * kk * cout),
                        dst_cs,
                        dst_rs,
                        false,
                        gw.as_ptr(),
                        gw_cs,
                        gw_rs,
                        x3.as_ptr().add(dy * r),
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
            })
        }
    };
    let dwt = sum_over_images(g, x, grad, |xi, gi, parallel| {
        one(xi, gi, if parallel { gemm::Parallelism::Rayon(0) } else { gemm::Parallelism::None })
    });
    for co in 0..cout {
        for c in 0..cin {
            for dy in 0..k {
                for dx in 0..k {
                    let q = (dx * cin + c) as isize;
                    dw[((co * cin + c) * k + dy) * k + dx] =
                        dwt[dy * kk * cout + (q * dst_cs + co as isize * dst_rs) as usize];
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
        let mut out: Vec<f64> =
            (0..g.n * g.cout * plane).map(|o| bias.map_or(0.0, |b| b[(o / plane) % g.cout] as f64)).collect();
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
            // Large enough for the gemm crate's packed paths (more than 48 output channels,
            // several 64-pixel panels), one image (a multi-threaded GEMM) and several.
            Geometry { n: 1, cin: 4, h: 10, w: 19, cout: 70, k: 3 },
            Geometry { n: 3, cin: 3, h: 7, w: 30, cout: 52, k: 5 },
            // Output channels in blocks of 8: the direct kernel (on CPUs with AVX-512F), with
            // one and several tiles of 48 wide pixels, blocks in parallel (one image) or not.
            Geometry { n: 2, cin: 3, h: 9, w: 13, cout: 16, k: 3 },
            Geometry { n: 1, cin: 2, h: 6, w: 5, cout: 8, k: 7 },
            Geometry { n: 3, cin: 4, h: 12, w: 40, cout: 24, k: 3 },
            Geometry { n: 1, cin: 9, h: 1, w: 1, cout: 8, k: 3 },
            Geometry { n: 2, cin: 3, h: 4, w: 4, cout: 8, k: 1 },
            Geometry { n: 1, cin: 2, h: 5, w: 17, cout: 16, k: 5 },
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

    /// Both gradients against the direct sums of their definitions, in f64 (relative tolerance:
    /// the f32 sums run over up to ~2,000 terms).
    #[test]
    fn gradients_match_the_direct_sums() {
        for (i, g) in [
            Geometry { n: 2, cin: 3, h: 5, w: 4, cout: 2, k: 3 },
            Geometry { n: 1, cin: 1, h: 8, w: 9, cout: 3, k: 7 },
            Geometry { n: 3, cin: 2, h: 1, w: 2, cout: 4, k: 3 },
            Geometry { n: 2, cin: 2, h: 3, w: 3, cout: 2, k: 1 },
            Geometry { n: 2, cin: 4, h: 9, w: 20, cout: 66, k: 3 },
            Geometry { n: 1, cin: 3, h: 11, w: 12, cout: 50, k: 3 },
            // Images of more than 1,024 wide pixels.
            Geometry { n: 2, cin: 2, h: 32, w: 33, cout: 3, k: 3 },
            Geometry { n: 1, cin: 2, h: 20, w: 60, cout: 20, k: 5 },
            // More than 128 output channels on a small image: the row-major weight-gradient path.
            Geometry { n: 2, cin: 2, h: 3, w: 4, cout: 130, k: 3 },
            Geometry { n: 1, cin: 3, h: 5, w: 2, cout: 140, k: 5 },
            // Input channels in blocks of 8: the input gradient through the direct kernel.
            Geometry { n: 2, cin: 8, h: 7, w: 9, cout: 5, k: 3 },
            Geometry { n: 1, cin: 16, h: 10, w: 50, cout: 3, k: 5 },
            // Both channel counts in blocks of 8 on 1,024+ wide pixels, one and two images.
            Geometry { n: 2, cin: 8, h: 32, w: 33, cout: 8, k: 3 },
            Geometry { n: 1, cin: 16, h: 40, w: 30, cout: 16, k: 3 },
            // The weight gradient's own kernel (from 8 input and 16 output channels): tiles of
            // 32 and of 16 output channels, channels not in whole tiles, an odd count of wide
            // pixels, one and several blocks of pixels, 1x1 and 5x5 kernels, images in parallel.
            Geometry { n: 3, cin: 8, h: 9, w: 13, cout: 32, k: 3 },
            Geometry { n: 1, cin: 12, h: 5, w: 7, cout: 20, k: 5 },
            Geometry { n: 2, cin: 16, h: 3, w: 3, cout: 48, k: 1 },
            Geometry { n: 1, cin: 8, h: 16, w: 17, cout: 64, k: 3 },
            Geometry { n: 4, cin: 24, h: 12, w: 11, cout: 40, k: 3 },
            // A 5x5 kernel over several blocks of pixels.
            Geometry { n: 1, cin: 8, h: 12, w: 24, cout: 32, k: 5 },
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
            // The weight gradient on one thread and on two (one image's tiles, or the images, in
            // parallel): the same sums in the same order, bit for bit.
            let on = |threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                pool.install(|| weight_grad(g, &x, &gr))
            };
            let weight = on(2);
            assert_eq!(weight, on(1), "{g:?}: the weight gradient depends on the thread count");
            // The GEMM path, which the kernel replaces where it applies, stays checked too.
            let gemm = weight_grad_f32(g, &x, &gr);
            for (name, got, want) in
                [("input", input_grad(g, &wt, &gr), &gx), ("weight", weight, &gw), ("GEMM weight", gemm, &gw)]
            {
                assert_eq!(got.len(), want.len());
                for (j, (a, e)) in got.iter().zip(want).enumerate() {
                    assert!((*a as f64 - e).abs() < 1e-5 * (1.0 + e.abs()), "{g:?} {name} gradient at {j}: {a} vs {e}");
                }
            }
        }
    }

    /// bf16: the forward and both gradients equal the textbook sums of the operands rounded to
    /// bf16 (the products are exact in f32; only the f32 sums round), and differ from f32.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn bf16_sums_the_rounded_operands() {
        if !bf16_available() {
            eprintln!("skipped: this CPU has no AVX512-BF16");
            return;
        }
        let rounded = |v: &[f32]| -> Vec<f32> { v.iter().map(|a| f32::from_bits(direct::bf16::round(*a))).collect() };
        for (i, g) in [
            // An odd channel count (a lone last channel), one channel, several tiles and blocks.
            Geometry { n: 2, cin: 3, h: 9, w: 13, cout: 16, k: 3 },
            Geometry { n: 1, cin: 1, h: 6, w: 5, cout: 8, k: 7 },
            Geometry { n: 3, cin: 4, h: 12, w: 40, cout: 24, k: 3 },
            Geometry { n: 1, cin: 16, h: 40, w: 30, cout: 16, k: 3 },
            Geometry { n: 2, cin: 8, h: 7, w: 9, cout: 8, k: 1 },
            // The weight gradient's kernel: tiles of 32 and of 16 output channels, channels not
            // in whole tiles (20 -> 32 and 40 -> 48 output, 12 -> 16 input), an odd count of
            // wide pixels, one and several blocks of pixels, 1x1 and 5x5 kernels.
            Geometry { n: 3, cin: 8, h: 9, w: 13, cout: 32, k: 3 },
            Geometry { n: 1, cin: 12, h: 5, w: 7, cout: 20, k: 5 },
            Geometry { n: 2, cin: 16, h: 3, w: 3, cout: 48, k: 1 },
            Geometry { n: 1, cin: 8, h: 16, w: 17, cout: 64, k: 3 },
            Geometry { n: 1, cin: 8, h: 6, w: 7, cout: 40, k: 3 },
            // Input gradients whose adjoint has one or three (unpaired) channels: the U-Net's
            // `final_conv` (1x1 to one channel) and an odd 3x3.
            Geometry { n: 2, cin: 8, h: 5, w: 7, cout: 1, k: 1 },
            Geometry { n: 1, cin: 16, h: 6, w: 5, cout: 3, k: 3 },
        ]
        .iter()
        .enumerate()
        {
            let x = values(g.n * g.cin * g.h * g.w, i as u64 + 11);
            let wt = values(g.cout * g.cin * g.k * g.k, i as u64 + 110);
            let b = values(g.cout, i as u64 + 210);
            let gr = values(g.n * g.cout * g.h * g.w, i as u64 + 310);
            // The forward runs the direct kernel when the output channels come in 8s.
            if g.cout % 8 == 0 {
                let got = forward_with(g, &x, &wt, Some(&b), Precision::Bf16);
                let want = direct(g, &rounded(&x), &rounded(&wt), Some(&b));
                let f32_out = forward_with(g, &x, &wt, Some(&b), Precision::F32);
                let mut moved = 0f64;
                for (j, ((a, e), f)) in got.iter().zip(&want).zip(&f32_out).enumerate() {
                    assert!((*a as f64 - e).abs() < 1e-5 * (1.0 + e.abs()), "{g:?} bf16 forward at {j}: {a} vs {e}");
                    moved = moved.max((a - f).abs() as f64);
                }
                assert!(moved > 1e-4, "{g:?}: the bf16 forward equals the f32 one (max difference {moved})");
            }
            // The input gradient runs the direct kernel when the input channels come in 8s.
            if g.cin % 8 == 0 {
                let (wr, grr) = (rounded(&wt), rounded(&gr));
                let mut want = vec![0f64; x.len()];
                for (o, xi, wi) in taps(g) {
                    want[xi] += grr[o] as f64 * wr[wi] as f64;
                }
                let got = input_grad_with(g, &wt, &gr, Precision::Bf16);
                for (j, (a, e)) in got.iter().zip(&want).enumerate() {
                    assert!(
                        (*a as f64 - e).abs() < 1e-5 * (1.0 + e.abs()),
                        "{g:?} bf16 input gradient at {j}: {a} vs {e}"
                    );
                }
            }
            // The weight gradient has a bf16 kernel from 8 input and 16 output channels.
            if g.cin >= 8 && g.cout >= 16 {
                let (xr, grr) = (rounded(&x), rounded(&gr));
                let mut want = vec![0f64; wt.len()];
                for (o, xi, wi) in taps(g) {
                    want[wi] += grr[o] as f64 * xr[xi] as f64;
                }
                // On one thread and on two (one image's tiles, or images, in parallel): the same
                // sums in the same order, bit for bit.
                let on = |threads: usize| {
                    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
                    pool.install(|| weight_grad_with(g, &x, &gr, Precision::Bf16))
                };
                let got = on(2);
                assert_eq!(got, on(1), "{g:?}: the bf16 weight gradient depends on the thread count");
                let f32_grad = weight_grad_with(g, &x, &gr, Precision::F32);
                let mut moved = 0f64;
                for (j, ((a, e), f)) in got.iter().zip(&want).zip(&f32_grad).enumerate() {
                    assert!(
                        (*a as f64 - e).abs() < 1e-5 * (1.0 + e.abs()),
                        "{g:?} bf16 weight gradient at {j}: {a} vs {e}"
                    );
                    moved = moved.max((a - f).abs() as f64);
                }
                assert!(moved > 1e-4, "{g:?}: the bf16 weight gradient equals the f32 one ({moved})");
            }
        }
    }

    /// The probe answers exactly where bf16 runs, with a plausible ratio (the dot product does
    /// two products a lane: about 2 where it issues as often as an FMA; the bounds leave room for
    /// a noisy timing either way).
    #[test]
    fn bf16_dot_speedup_is_measured_where_bf16_runs() {
        match bf16_dot_speedup() {
            None => assert!(!bf16_available()),
            Some(s) => {
                assert!(bf16_available());
                assert!(s.is_finite() && (0.1..=5.0).contains(&s), "implausible bf16 speed-up {s}");
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn bf16_rounds_to_nearest_even() {
        let r = |v: f32| f32::from_bits(direct::bf16::round(v));
        assert_eq!(r(1.0), 1.0);
        // 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: ties go to the even mantissa (1).
        assert_eq!(r(1.0 + 2f32.powi(-8)), 1.0);
        assert_eq!(r(1.0 + 3.0 * 2f32.powi(-8)), 1.0 + 2.0 * 2f32.powi(-7));
        assert_eq!(r(-3.0e38), f32::from_bits(0xff62_0000));
        assert!(r(f32::NAN).is_nan());
        assert!(r(f32::from_bits(0x7f80_0001)).is_nan());
        assert_eq!(r(f32::INFINITY), f32::INFINITY);
    }

    #[test]
    fn empty_batches_and_channels() {
        let g = Geometry { n: 0, cin: 2, h: 3, w: 3, cout: 2, k: 3 };
        assert!(forward(&g, &[], &values(36, 1), None).is_empty());
        assert!(input_grad(&g, &values(36, 1), &[]).is_empty());
        assert_eq!(weight_grad(&g, &[], &[]), vec![0.0; 36]);
        let g = Geometry { n: 2, cin: 0, h: 2, w: 2, cout: 2, k: 3 };
        assert_eq!(
            forward(&g, &[], &[], Some(&[1.0, -2.0])),
            vec![1.0, 1.0, 1.0, 1.0, -2.0, -2.0, -2.0, -2.0, 1.0, 1.0, 1.0, 1.0, -2.0, -2.0, -2.0, -2.0]
        );
    }
}
