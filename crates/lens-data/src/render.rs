//! Noise-free image rendering, following lenstronomy 1.14 `ImageModel.image` step by step:
//! regular (super-sampled) pixel grid -> sum of deflections (single lens plane) -> source light at
//! the ray-traced positions + lens light in the image plane -> mean over each pixel's k x k
//! sub-pixels -> Gaussian PSF (`scipy.ndimage.gaussian_filter`, `mode="nearest"`) -> x pixel area.
//!
//! Every profile formula is a line-by-line port of lenstronomy's (`LensModel/Profiles/{nie,sis,
//! shear,point_mass,nfw,tnfw}.py`, `LightModel/Profiles/sersic.py`, `sersic_utils.py`), including
//! its numerical floors (SIE core 1e-10, Sersic smoothing 1e-4, NFW/TNFW minimum radii).

use ndarray::Array2;

use crate::error::{LensDataError, Result};
use crate::limits::Limits;
use crate::spec::{LensProfile, LightProfile, PsfSpec, SimulationSpec};

/// lenstronomy `ellipticity2phi_q`: orientation angle and axis ratio from (e1, e2).
pub fn ellipticity_to_phi_q(e1: f64, e2: f64) -> (f64, f64) {
    let phi = e2.atan2(e1) / 2.0;
    let c = (e1 * e1 + e2 * e2).sqrt().min(0.9999);
    (phi, (1.0 - c) / (1.0 + c))
}

/// FWHM -> Gaussian sigma, `fwhm / (2 sqrt(2 ln 2))` (lenstronomy `util.fwhm2sigma`).
pub fn fwhm_to_sigma(fwhm: f64) -> f64 {
    fwhm / (2.0 * (2.0 * std::f64::consts::LN_2).sqrt())
}

/// Adds one lens profile's deflection at the points `(x[i], y[i])` to `(ax[i], ay[i])`.
///
/// All slices must have the same length.
pub fn add_deflection(lens: &LensProfile, x: &[f64], y: &[f64], ax: &mut [f64], ay: &mut [f64]) {
    assert!(x.len() == y.len() && x.len() == ax.len() && x.len() == ay.len(), "slice lengths differ");
    match *lens {
        LensProfile::Sie { theta_e, e1, e2, center_x, center_y } => {
            // NIE with s_scale = 1e-10 (lenstronomy SIE).
            let (phi, q) = ellipticity_to_phi_q(e1, e2);
            let theta_conv = theta_e / ((1.0 + q * q) / (2.0 * q)).sqrt();
            let b = theta_conv * ((1.0 + q * q) / 2.0).sqrt();
            let s = 1e-10 / q.sqrt();
            let q = if q >= 1.0 { 0.99999999 } else { q };
            let (sin, cos) = phi.sin_cos();
            let sq = (1.0 - q * q).sqrt();
            let pre = b / sq;
            let q2 = q * q;
            for i in 0..x.len() {
                let xs = x[i] - center_x;
                let ys = y[i] - center_y;
                let xr = xs * cos + ys * sin;
                let yr = -xs * sin + ys * cos;
                let psi = (q2 * (s * s + xr * xr) + yr * yr).sqrt();
                let fx = pre * (sq * xr / (psi + s)).atan();
                let fy = pre * (sq * yr / (psi + q2 * s)).atanh();
                // rotate back by -phi
                ax[i] += fx * cos - fy * sin;
                ay[i] += fx * sin + fy * cos;
            }
        }
        LensProfile::Sis { theta_e, center_x, center_y } => {
            for i in 0..x.len() {
                let xs = x[i] - center_x;
                let ys = y[i] - center_y;
                let r = (xs * xs + ys * ys).sqrt();
                let a = if r > 0.0 { theta_e / r } else { 0.0 };
                ax[i] += a * xs;
                ay[i] += a * ys;
            }
        }
        LensProfile::Shear { gamma1, gamma2, ra_0, dec_0 } => {
            for i in 0..x.len() {
                let xs = x[i] - ra_0;
                let ys = y[i] - dec_0;
                ax[i] += gamma1 * xs + gamma2 * ys;
                ay[i] += gamma2 * xs - gamma1 * ys;
            }
        }
        LensProfile::PointMass { theta_e, center_x, center_y } => {
            point_mass_dispatch(theta_e * theta_e, center_x, center_y, x, y, ax, ay)
        }
        LensProfile::Nfw { rs, alpha_rs, center_x, center_y } => {
            let rho0 = nfw_alpha_to_rho0(alpha_rs, rs);
            let rs = rs.max(1e-7);
            for i in 0..x.len() {
                let xs = x[i] - center_x;
                let ys = y[i] - center_y;
                let r = (xs * xs + ys * ys).sqrt().max(1e-8);
                // lenstronomy's `_g` floors X at 1e-6 *in place*, so `nfw_alpha` divides by the
                // floored value too.
                let xx = (r / rs).max(1e-6);
                let a = 4.0 * rho0 * rs * nfw_g(xx) / (xx * xx);
                ax[i] += a * xs;
                ay[i] += a * ys;
            }
        }
        LensProfile::Tnfw { rs, alpha_rs, r_trunc, center_x, center_y } => {
            const S: f64 = 0.001;
            let rho0 = nfw_alpha_to_rho0(alpha_rs, rs);
            let tau = r_trunc / rs;
            for i in 0..x.len() {
                let xs = x[i] - center_x;
                let ys = y[i] - center_y;
                let r = (xs * xs + ys * ys).sqrt().max(S * rs);
                let xx = (r / rs).max(S);
                let a = 4.0 * rho0 * rs * tnfw_g(xx, tau) / (xx * xx);
                ax[i] += a * xs;
                ay[i] += a * ys;
            }
        }
    }
}

/// Point-mass deflection. lenstronomy: `r = max(sqrt(x^2+y^2), 1e-25)`, `alpha = theta_E^2 / r`,
/// `(alpha x / r, alpha y / r)`; the same value with one division and no square root (differs by
/// rounding only). Written over plain slices so it vectorises.
#[inline(always)]
fn point_mass_kernel(t2: f64, cx: f64, cy: f64, x: &[f64], y: &[f64], ax: &mut [f64], ay: &mut [f64]) {
    let n = x.len();
    let (x, y, ax, ay) = (&x[..n], &y[..n], &mut ax[..n], &mut ay[..n]);
    for i in 0..n {
        let xs = x[i] - cx;
        let ys = y[i] - cy;
        let r2 = xs * xs + ys * ys;
        let f = t2 / if r2 > 1e-50 { r2 } else { 1e-50 };
        ax[i] += f * xs;
        ay[i] += f * ys;
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn point_mass_avx2(t2: f64, cx: f64, cy: f64, x: &[f64], y: &[f64], ax: &mut [f64], ay: &mut [f64]) {
    point_mass_kernel(t2, cx, cy, x, y, ax, ay)
}

/// Runs the point-mass kernel with AVX2 (4 f64 lanes) when the CPU has it. No FMA is enabled,
/// so results are bit-identical to the baseline build.
fn point_mass_dispatch(t2: f64, cx: f64, cy: f64, x: &[f64], y: &[f64], ax: &mut [f64], ay: &mut [f64]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            unsafe { point_mass_avx2(t2, cx, cy, x, y, ax, ay) };
            return;
        }
    }
    point_mass_kernel(t2, cx, cy, x, y, ax, ay)
}

/// Sum of the deflections of `lenses` at one point (convenience for point-wise checks).
pub fn deflection_at(lenses: &[LensProfile], x: f64, y: f64) -> (f64, f64) {
    let (mut ax, mut ay) = ([0.0], [0.0]);
    for l in lenses {
        add_deflection(l, &[x], &[y], &mut ax, &mut ay);
    }
    (ax[0], ay[0])
}

/// lenstronomy `NFW.alpha2rho0`.
fn nfw_alpha_to_rho0(alpha_rs: f64, rs: f64) -> f64 {
    alpha_rs / (4.0 * rs * rs * (1.0 + (0.5f64).ln()))
}

/// lenstronomy `NFW._g` (array branch).
fn nfw_g(x: f64) -> f64 {
    let x = x.max(1e-6);
    if x < 1.0 {
        (x / 2.0).ln() + 1.0 / (1.0 - x * x).sqrt() * (1.0 / x).acosh()
    } else if x == 1.0 {
        1.0 + (0.5f64).ln()
    } else {
        (x / 2.0).ln() + 1.0 / (x * x - 1.0).sqrt() * (1.0 / x).acos()
    }
}

/// lenstronomy `TNFW.F` (array branch), for x already floored.
fn tnfw_f(x: f64) -> f64 {
    let x = x.max(0.001);
    if x < 1.0 {
        (1.0 - x * x).powf(-0.5) * (1.0 - x * x).sqrt().atanh()
    } else if x > 1.0 {
        (x * x - 1.0).powf(-0.5) * (x * x - 1.0).sqrt().atan()
    } else {
        1.0
    }
}

/// lenstronomy `TNFW._g`.
fn tnfw_g(x: f64, tau: f64) -> f64 {
    use std::f64::consts::PI;
    let x = x.max(0.001);
    let t2 = tau * tau;
    let l = (x * (tau + (t2 + x * x).sqrt()).powi(-1)).ln();
    t2 * (t2 + 1.0).powi(-2)
        * ((t2 + 1.0 + 2.0 * (x * x - 1.0)) * tnfw_f(x)
            + tau * PI
            + (t2 - 1.0) * tau.ln()
            + (t2 + x * x).sqrt() * (-PI + l * (t2 - 1.0) * tau.powi(-1)))
}

/// Adds one light profile's surface brightness at `(x[i], y[i])` to `out[i]`.
pub fn add_surface_brightness(light: &LightProfile, x: &[f64], y: &[f64], out: &mut [f64]) {
    assert!(x.len() == y.len() && x.len() == out.len(), "slice lengths differ");
    let (amp, r_sersic, n, e1, e2, cx, cy) = match *light {
        LightProfile::Sersic { amp, r_sersic, n_sersic, center_x, center_y } => {
            (amp, r_sersic, n_sersic, 0.0, 0.0, center_x, center_y)
        }
        LightProfile::SersicEllipse { amp, r_sersic, n_sersic, e1, e2, center_x, center_y } => {
            (amp, r_sersic, n_sersic, e1, e2, center_x, center_y)
        }
    };
    const SMOOTHING: f64 = 1e-4;
    const MAX_R_FRAC: f64 = 1000.0;
    let r_sersic = r_sersic.max(0.0).max(SMOOTHING);
    let bn = (1.9992 * n - 0.3271).max(1e-5);
    let inv_n = 1.0 / n;
    let norm = (1.0 - e1 * e1 - e2 * e2).abs().max(1e-6).sqrt();
    let unit_n = n == 1.0;
    for i in 0..x.len() {
        let xs = x[i] - cx;
        let ys = y[i] - cy;
        let xt = ((1.0 - e1) * xs - e2 * ys) / norm;
        let yt = (-e2 * xs + (1.0 + e1) * ys) / norm;
        let r = (xt * xt + yt * yt).sqrt().max(SMOOTHING);
        let frac = r / r_sersic;
        if frac <= MAX_R_FRAC {
            let p = if unit_n { frac } else { frac.powf(inv_n) };
            let v = (-bn * (p - 1.0)).exp();
            // np.nan_to_num: NaN -> 0, +inf -> f64::MAX
            out[i] += amp * if v.is_nan() { 0.0 } else { v.min(f64::MAX) };
        }
    }
}

/// The regular (optionally super-sampled) pixel grid of lenstronomy `RegularGrid`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Grid {
    /// Pixels per side.
    pub num_pix: usize,
    /// Pixel size (arcsec).
    pub pixel_scale: f64,
    /// Sub-pixels per pixel side.
    pub supersampling: usize,
}

impl Grid {
    /// Coordinates of the `(num_pix*k)^2` evaluation points, row-major over the high-resolution
    /// grid: pixel (row i, col j) centre is `x = -(N-1)/2 d + j d`, `y = -(N-1)/2 d + i d`;
    /// sub-pixel offsets `(-1/2 + 1/(2k) + s/k) d`.
    pub fn coordinates(&self) -> (Vec<f64>, Vec<f64>) {
        let n = self.num_pix;
        let k = self.supersampling;
        let d = self.pixel_scale;
        let x0 = -((n as f64 - 1.0) / 2.0) * d;
        let m = n * k;
        let off: Vec<f64> = (0..k).map(|s| d * (-0.5 + 1.0 / (2.0 * k as f64) + s as f64 / k as f64)).collect();
        let mut xs = Vec::with_capacity(m * m);
        let mut ys = Vec::with_capacity(m * m);
        for r in 0..m {
            let y = x0 + (r / k) as f64 * d + off[r % k];
            for c in 0..m {
                xs.push(x0 + (c / k) as f64 * d + off[c % k]);
                ys.push(y);
            }
        }
        (xs, ys)
    }
}

/// Precomputed grid + optional fixed deflection field: renders many images that share a grid
/// (and, for Model I, the macro lens) without recomputing either.
#[derive(Debug, Clone)]
pub struct Renderer {
    grid: Grid,
    x: Vec<f64>,
    y: Vec<f64>,
    base_ax: Vec<f64>,
    base_ay: Vec<f64>,
    psf_taps: Vec<f64>,
}

impl Renderer {
    /// A renderer for `grid`, with `base_lenses` deflections precomputed and `psf` applied,
    /// under [`Limits::default`].
    pub fn new(grid: Grid, base_lenses: &[LensProfile], psf: Option<PsfSpec>) -> Result<Self> {
        Self::with_limits(grid, base_lenses, psf, &Limits::default())
    }

    /// As [`Self::new`], with the grid side and PSF radius checked against `limits`.
    pub fn with_limits(grid: Grid, base_lenses: &[LensProfile], psf: Option<PsfSpec>, limits: &Limits) -> Result<Self> {
        validate_grid(&grid, limits)?;
        if let Some(PsfSpec::Gaussian { fwhm, truncation }) = psf {
            validate_psf(fwhm, truncation, grid.pixel_scale, limits)?;
        }
        let (x, y) = grid.coordinates();
        let mut base_ax = vec![0.0; x.len()];
        let mut base_ay = vec![0.0; x.len()];
        for l in base_lenses {
            add_deflection(l, &x, &y, &mut base_ax, &mut base_ay);
        }
        let psf_taps = match psf {
            Some(PsfSpec::Gaussian { fwhm, truncation }) => {
                psf_taps(fwhm_to_sigma(fwhm) / grid.pixel_scale, truncation, limits.max_psf_radius)?
            }
            None => Vec::new(),
        };
        Ok(Self { grid, x, y, base_ax, base_ay, psf_taps })
    }

    /// The grid.
    pub fn grid(&self) -> Grid {
        self.grid
    }

    /// Renders the image (surface brightness x pixel area, shape `[num_pix, num_pix]`) for the
    /// base lenses plus `extra_lenses`.
    pub fn render(
        &self,
        extra_lenses: &[LensProfile],
        source: &[LightProfile],
        lens_light: &[LightProfile],
    ) -> Array2<f64> {
        let n = self.grid.num_pix;
        let mut out = Array2::zeros((n, n));
        let mut scratch = RenderScratch::default();
        self.render_into(extra_lenses, source, lens_light, &mut scratch, out.as_slice_mut().expect("fresh"));
        out
    }

    /// As [`Self::render`], into a row-major `num_pix^2` slice, reusing `scratch` buffers
    /// (no allocation once the scratch has grown: the fast path for many images).
    pub fn render_into(
        &self,
        extra_lenses: &[LensProfile],
        source: &[LightProfile],
        lens_light: &[LightProfile],
        scratch: &mut RenderScratch,
        out: &mut [f64],
    ) {
        let n = self.grid.num_pix;
        assert_eq!(out.len(), n * n, "output length");
        let npts = self.x.len();
        let RenderScratch { ax, ay, flux, tmp } = scratch;
        ax.clear();
        ax.extend_from_slice(&self.base_ax);
        ay.clear();
        ay.extend_from_slice(&self.base_ay);
        for l in extra_lenses {
            add_deflection(l, &self.x, &self.y, ax, ay);
        }
        // ray-shoot in place: beta = theta - alpha
        for i in 0..npts {
            ax[i] = self.x[i] - ax[i];
            ay[i] = self.y[i] - ay[i];
        }
        flux.clear();
        flux.resize(npts, 0.0);
        for s in source {
            add_surface_brightness(s, ax, ay, flux);
        }
        for s in lens_light {
            add_surface_brightness(s, &self.x, &self.y, flux);
        }
        downsample_mean_into(flux, n, self.grid.supersampling, out);
        if !self.psf_taps.is_empty() {
            gaussian_filter_taps(out, n, n, &self.psf_taps, tmp);
        }
        let area = self.grid.pixel_scale * self.grid.pixel_scale;
        out.iter_mut().for_each(|v| *v *= area);
    }
}

/// Reusable buffers for [`Renderer::render_into`].
#[derive(Debug, Clone, Default)]
pub struct RenderScratch {
    ax: Vec<f64>,
    ay: Vec<f64>,
    flux: Vec<f64>,
    tmp: Vec<f64>,
}

/// `num_pix`, `pixel_scale` and `supersampling` in range (the grid's arrays are allocated from
/// them, so they are bounded by [`Limits::max_num_pix`] and [`Limits::max_grid_side`]).
pub(crate) fn validate_grid(g: &Grid, limits: &Limits) -> Result<()> {
    if g.num_pix == 0 || g.num_pix > limits.max_num_pix {
        return Err(LensDataError::invalid(
            "num_pix",
            g.num_pix,
            format!("allowed range 1..={} (Limits::max_num_pix)", limits.max_num_pix),
        ));
    }
    if !(g.pixel_scale > 0.0 && g.pixel_scale.is_finite()) {
        return Err(LensDataError::invalid("pixel_scale", g.pixel_scale, "must be finite and > 0"));
    }
    let m = g.num_pix.saturating_mul(g.supersampling);
    if g.supersampling == 0 || m > limits.max_grid_side {
        return Err(LensDataError::invalid(
            "supersampling",
            g.supersampling,
            format!(
                "allowed range 1..={} at num_pix {} (num_pix * supersampling <= Limits::max_grid_side = {})",
                (limits.max_grid_side / g.num_pix).max(1),
                g.num_pix,
                limits.max_grid_side
            ),
        ));
    }
    Ok(())
}

/// A Gaussian PSF's `fwhm` and `truncation` are finite and positive and its kernel radius,
/// `int(truncation * sigma / pixel_scale + 0.5)`, is finite and within
/// [`Limits::max_psf_radius`] (an overflowing radius used to leave an empty kernel: no PSF).
pub(crate) fn validate_psf(fwhm: f64, truncation: f64, pixel_scale: f64, limits: &Limits) -> Result<()> {
    if !(fwhm > 0.0 && fwhm.is_finite()) {
        return Err(LensDataError::invalid("psf.fwhm", fwhm, "must be finite and > 0"));
    }
    if !(truncation > 0.0 && truncation.is_finite()) {
        return Err(LensDataError::invalid("psf.truncation", truncation, "must be finite and > 0"));
    }
    let sigma = fwhm_to_sigma(fwhm) / pixel_scale;
    check_psf_radius(sigma, truncation, limits.max_psf_radius).map(drop).map_err(|_| {
        LensDataError::invalid(
            "psf.fwhm * psf.truncation",
            format!("{fwhm} * {truncation}"),
            format!(
                "the kernel radius int(truncation * sigma / pixel_scale + 0.5) = {:e} pixels must be at most {} (Limits::max_psf_radius)",
                truncation * sigma + 0.5,
                limits.max_psf_radius
            ),
        )
    })
}

fn check_psf_radius(sigma: f64, truncation: f64, max_radius: usize) -> std::result::Result<usize, f64> {
    let r = truncation * sigma + 0.5;
    if r.is_finite() && r <= max_radius as f64 {
        Ok(r as usize)
    } else {
        Err(r)
    }
}

/// `image_util.re_size`: mean over k x k blocks (numpy order: mean over the inner column
/// block first, then over the row block), into a row-major `n x n` slice.
fn downsample_mean_into(flux: &[f64], n: usize, k: usize, out: &mut [f64]) {
    if k == 1 {
        out.copy_from_slice(flux);
        return;
    }
    let m = n * k;
    let kf = k as f64;
    for i in 0..n {
        for j in 0..n {
            let mut acc = 0.0;
            for a in 0..k {
                let start = (i * k + a) * m + j * k;
                let s: f64 = flux[start..start + k].iter().sum();
                acc += s / kf;
            }
            out[i * n + j] = acc / kf;
        }
    }
}

/// scipy `gaussian_kernel1d` weights (radius `int(truncate*sigma + 0.5)`, normalised). The
/// caller checks the radius (a non-finite or huge one is refused by [`gaussian_filter_nearest`]
/// and the renderer); here it saturates at [`Limits::max_psf_radius`]'s default.
pub fn gaussian_kernel_1d(sigma: f64, truncation: f64) -> Vec<f64> {
    let radius = ((truncation * sigma + 0.5) as usize).min(Limits::default().max_psf_radius);
    let s2 = sigma * sigma;
    let w: Vec<f64> = (-(radius as i64)..=radius as i64).map(|x| (-0.5 / s2 * (x * x) as f64).exp()).collect();
    let sum: f64 = w.iter().sum();
    w.into_iter().map(|v| v / sum).collect()
}

/// The separable Gaussian taps for a blur of `sigma` pixels (none when `sigma <= 1e-15`: no
/// blur). Errors name a non-finite or negative `sigma` / `truncation`, or a kernel radius that
/// is not finite or above `max_radius`.
fn psf_taps(sigma: f64, truncation: f64, max_radius: usize) -> Result<Vec<f64>> {
    if !(sigma.is_finite() && sigma >= 0.0) {
        return Err(LensDataError::invalid("psf sigma (pixels)", sigma, "must be finite and >= 0"));
    }
    if !(truncation.is_finite() && truncation >= 0.0) {
        return Err(LensDataError::invalid("psf truncation", truncation, "must be finite and >= 0"));
    }
    if sigma <= 1e-15 {
        return Ok(Vec::new());
    }
    check_psf_radius(sigma, truncation, max_radius).map_err(|r| {
        LensDataError::invalid(
            "psf truncation * sigma",
            format!("{truncation} * {sigma}"),
            format!("kernel radius {r:e} pixels; allowed at most {max_radius} (Limits::max_psf_radius)"),
        )
    })?;
    Ok(gaussian_kernel_1d(sigma, truncation))
}

/// `scipy.ndimage.gaussian_filter(img, sigma, mode="nearest", truncate=truncation)` in place:
/// axis 0 (rows) first, then axis 1. A `sigma` of (almost) zero leaves `img` unchanged; a
/// non-finite or negative `sigma` or `truncation` is an error (the image is not touched).
pub fn gaussian_filter_nearest(img: &mut Array2<f64>, sigma: f64, truncation: f64) -> Result<()> {
    let taps = psf_taps(sigma, truncation, Limits::default().max_psf_radius)?;
    if taps.is_empty() {
        return Ok(());
    }
    let (h, w) = img.dim();
    let mut data = img.as_standard_layout().into_owned().into_raw_vec_and_offset().0;
    gaussian_filter_taps(&mut data, h, w, &taps, &mut Vec::new());
    *img = Array2::from_shape_vec((h, w), data).expect("shape");
    Ok(())
}

/// Separable correlation with symmetric `taps` (odd length), edge-replicate ("nearest")
/// boundaries, rows then columns, on a row-major `h x w` slice. `tmp` is scratch.
fn gaussian_filter_taps(img: &mut [f64], h: usize, w: usize, taps: &[f64], tmp: &mut Vec<f64>) {
    let r = taps.len() / 2;
    tmp.clear();
    tmp.resize(h * w, 0.0);
    // axis 0: tmp[i, :] = sum_t taps[t] * img[clamp(i + t - r), :]
    for i in 0..h {
        let dst = &mut tmp[i * w..(i + 1) * w];
        for (t, &wt) in taps.iter().enumerate() {
            let ii = (i + t).saturating_sub(r).min(h - 1);
            let src = &img[ii * w..(ii + 1) * w];
            for (d, &v) in dst.iter_mut().zip(src) {
                *d += wt * v;
            }
        }
    }
    // axis 1
    for i in 0..h {
        let row = &tmp[i * w..(i + 1) * w];
        let dst = &mut img[i * w..(i + 1) * w];
        for (j, d) in dst.iter_mut().enumerate() {
            let mut acc = 0.0;
            if j >= r && j + r < w {
                let win = &row[j - r..j + r + 1];
                for (wt, v) in taps.iter().zip(win) {
                    acc += wt * v;
                }
            } else {
                for (t, &wt) in taps.iter().enumerate() {
                    let jj = (j + t).saturating_sub(r).min(w - 1);
                    acc += wt * row[jj];
                }
            }
            *d = acc;
        }
    }
}

/// Renders a spec: noise-free image, f64 `[num_pix, num_pix]`, surface brightness x pixel area,
/// as lenstronomy's `ImageModel.image` (regular grid, `supersampling_convolution=False`).
/// Under [`Limits::default`]; an image with NaN or infinite pixels is a
/// [`LensDataError::NonFiniteRender`].
pub fn render(spec: &SimulationSpec) -> Result<Array2<f64>> {
    render_with_limits(spec, &Limits::default())
}

/// As [`render`], with the spec checked against `limits` ([`SimulationSpec::validate`]).
pub fn render_with_limits(spec: &SimulationSpec, limits: &Limits) -> Result<Array2<f64>> {
    spec.validate(limits)?;
    let grid = Grid { num_pix: spec.num_pix, pixel_scale: spec.pixel_scale, supersampling: spec.supersampling };
    let r = Renderer::with_limits(grid, &spec.lens, spec.psf.clone(), limits)?;
    let img = r.render(&[], &spec.source, &spec.lens_light);
    check_rendered(img.as_slice().expect("fresh array is contiguous"), || "render".into())?;
    Ok(img)
}

/// Every pixel finite, else [`LensDataError::NonFiniteRender`] for `what()`.
pub(crate) fn check_rendered(img: &[f64], what: impl FnOnce() -> String) -> Result<()> {
    match img.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(first_index) => Err(LensDataError::NonFiniteRender {
            what: what(),
            count: img.iter().filter(|v| !v.is_finite()).count(),
            first_index,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn point_mass_dispatch_is_bit_identical_to_the_baseline_kernel() {
        let x: Vec<f64> = (0..1001).map(|i| (i as f64 * 0.37).sin() * 2.0).collect();
        let y: Vec<f64> = (0..1001).map(|i| (i as f64 * 0.11).cos() * 2.0).collect();
        let (mut a1, mut b1) = (vec![0.1; 1001], vec![-0.2; 1001]);
        let (mut a2, mut b2) = (a1.clone(), b1.clone());
        point_mass_kernel(0.003, 0.2, -0.4, &x, &y, &mut a1, &mut b1);
        point_mass_dispatch(0.003, 0.2, -0.4, &x, &y, &mut a2, &mut b2);
        assert_eq!((a1, b1), (a2, b2));
    }

    #[test]
    fn gaussian_filter_rejects_nan_and_negative_sigma() {
        let mut img = Array2::from_elem((4, 4), 1.0);
        assert!(matches!(gaussian_filter_nearest(&mut img, f64::NAN, 4.0), Err(LensDataError::InvalidValue { .. })));
        assert!(matches!(gaussian_filter_nearest(&mut img, -1.0, 4.0), Err(LensDataError::InvalidValue { .. })));
        assert!(matches!(
            gaussian_filter_nearest(&mut img, 1.0, f64::INFINITY),
            Err(LensDataError::InvalidValue { .. })
        ));
        assert!(img.iter().all(|&v| v == 1.0), "untouched on error");
        gaussian_filter_nearest(&mut img, 0.0, 4.0).unwrap();
        gaussian_filter_nearest(&mut img, 1.3, 4.0).unwrap();
        assert!(img.iter().all(|&v| (v - 1.0).abs() < 1e-15), "a constant image stays constant");
    }

    #[test]
    fn gaussian_taps_are_scipy_kernels() {
        // scipy.ndimage._gaussian_kernel1d(sigma=0.739..., order=0, radius=int(4*sigma+0.5)=3)
        let sigma = fwhm_to_sigma(0.087) / 0.05;
        let w = gaussian_kernel_1d(sigma, 4.0);
        assert_eq!(w.len(), 7);
        assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-15);
        let scipy = [
            0.00014219077503208036,
            0.013849790332875552,
            0.21606591705999467,
            0.5398842036641954,
            0.21606591705999467,
            0.013849790332875552,
            0.00014219077503208036,
        ];
        for (a, b) in w.iter().zip(scipy) {
            assert!((a - b).abs() < 1e-15, "{a} vs {b}");
        }
    }
}
