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
            // lenstronomy: r = max(sqrt(x^2+y^2), 1e-25); alpha = theta_E^2 / r; (alpha x/r, alpha y/r).
            // Same value with one division and no square root (differs by rounding only).
            let t2 = theta_e * theta_e;
            for i in 0..x.len() {
                let xs = x[i] - center_x;
                let ys = y[i] - center_y;
                let r2 = xs * xs + ys * ys;
                let f = t2 / if r2 > 1e-50 { r2 } else { 1e-50 };
                ax[i] += f * xs;
                ay[i] += f * ys;
            }
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
    psf: Option<PsfSpec>,
}

impl Renderer {
    /// A renderer for `grid`, with `base_lenses` deflections precomputed and `psf` applied.
    pub fn new(grid: Grid, base_lenses: &[LensProfile], psf: Option<PsfSpec>) -> Result<Self> {
        validate_grid(&grid)?;
        if let Some(PsfSpec::Gaussian { fwhm, truncation }) = psf {
            if !(fwhm > 0.0 && fwhm.is_finite()) {
                return Err(LensDataError::invalid("psf.fwhm", fwhm, "must be > 0"));
            }
            if !(truncation > 0.0 && truncation.is_finite()) {
                return Err(LensDataError::invalid("psf.truncation", truncation, "must be > 0"));
            }
        }
        let (x, y) = grid.coordinates();
        let mut base_ax = vec![0.0; x.len()];
        let mut base_ay = vec![0.0; x.len()];
        for l in base_lenses {
            add_deflection(l, &x, &y, &mut base_ax, &mut base_ay);
        }
        Ok(Self { grid, x, y, base_ax, base_ay, psf })
    }

    /// The grid.
    pub fn grid(&self) -> Grid {
        self.grid
    }

    /// Renders the image (surface brightness x pixel area, shape `[num_pix, num_pix]`) for the
    /// base lenses plus `extra_lenses`.
    pub fn render(&self, extra_lenses: &[LensProfile], source: &[LightProfile], lens_light: &[LightProfile]) -> Array2<f64> {
        let npts = self.x.len();
        let mut ax = self.base_ax.clone();
        let mut ay = self.base_ay.clone();
        for l in extra_lenses {
            add_deflection(l, &self.x, &self.y, &mut ax, &mut ay);
        }
        // ray-shoot in place: beta = theta - alpha
        for i in 0..npts {
            ax[i] = self.x[i] - ax[i];
            ay[i] = self.y[i] - ay[i];
        }
        let mut flux = vec![0.0; npts];
        for s in source {
            add_surface_brightness(s, &ax, &ay, &mut flux);
        }
        for s in lens_light {
            add_surface_brightness(s, &self.x, &self.y, &mut flux);
        }
        let mut img = downsample_mean(&flux, self.grid.num_pix, self.grid.supersampling);
        if let Some(PsfSpec::Gaussian { fwhm, truncation }) = self.psf {
            gaussian_filter_nearest(&mut img, fwhm_to_sigma(fwhm) / self.grid.pixel_scale, truncation);
        }
        let area = self.grid.pixel_scale * self.grid.pixel_scale;
        img.mapv_inplace(|v| v * area);
        img
    }
}

fn validate_grid(g: &Grid) -> Result<()> {
    if g.num_pix == 0 {
        return Err(LensDataError::invalid("num_pix", g.num_pix, "must be >= 1"));
    }
    if !(g.pixel_scale > 0.0 && g.pixel_scale.is_finite()) {
        return Err(LensDataError::invalid("pixel_scale", g.pixel_scale, "must be > 0"));
    }
    if g.supersampling == 0 {
        return Err(LensDataError::invalid("supersampling", g.supersampling, "must be >= 1"));
    }
    let m = g.num_pix.saturating_mul(g.supersampling);
    if m > 20_000 {
        return Err(LensDataError::invalid("num_pix*supersampling", m, "must be <= 20000"));
    }
    Ok(())
}

/// `image_util.re_size`: mean over k x k blocks (numpy order: mean over the inner column
/// block first, then over the row block).
fn downsample_mean(flux: &[f64], n: usize, k: usize) -> Array2<f64> {
    if k == 1 {
        return Array2::from_shape_vec((n, n), flux.to_vec()).expect("shape");
    }
    let m = n * k;
    let kf = k as f64;
    let mut out = Array2::zeros((n, n));
    for i in 0..n {
        for j in 0..n {
            let mut acc = 0.0;
            for a in 0..k {
                let row = &flux[(i * k + a) * m + j * k..(i * k + a) * m + j * k + k];
                let s: f64 = row.iter().sum();
                acc += s / kf;
            }
            out[[i, j]] = acc / kf;
        }
    }
    out
}

/// scipy `gaussian_kernel1d` weights (radius `int(truncate*sigma + 0.5)`, normalised).
pub fn gaussian_kernel_1d(sigma: f64, truncation: f64) -> Vec<f64> {
    let radius = (truncation * sigma + 0.5) as usize;
    let s2 = sigma * sigma;
    let w: Vec<f64> = (-(radius as i64)..=radius as i64).map(|x| (-0.5 / s2 * (x * x) as f64).exp()).collect();
    let sum: f64 = w.iter().sum();
    w.into_iter().map(|v| v / sum).collect()
}

/// `scipy.ndimage.gaussian_filter(img, sigma, mode="nearest", truncate=truncation)` in place:
/// axis 0 (rows) first, then axis 1.
pub fn gaussian_filter_nearest(img: &mut Array2<f64>, sigma: f64, truncation: f64) {
    if sigma <= 1e-15 {
        return;
    }
    let w = gaussian_kernel_1d(sigma, truncation);
    let r = (w.len() / 2) as i64;
    let (h, wd) = img.dim();
    let src = img.as_standard_layout().into_owned();
    let mut tmp = Array2::<f64>::zeros((h, wd));
    // axis 0
    for i in 0..h as i64 {
        for j in 0..wd {
            let mut acc = 0.0;
            for (t, wt) in w.iter().enumerate() {
                let ii = (i + t as i64 - r).clamp(0, h as i64 - 1) as usize;
                acc += wt * src[[ii, j]];
            }
            tmp[[i as usize, j]] = acc;
        }
    }
    // axis 1
    for i in 0..h {
        let row = tmp.row(i);
        for j in 0..wd as i64 {
            let mut acc = 0.0;
            for (t, wt) in w.iter().enumerate() {
                let jj = (j + t as i64 - r).clamp(0, wd as i64 - 1) as usize;
                acc += wt * row[jj];
            }
            img[[i, j as usize]] = acc;
        }
    }
}

/// Renders a spec: noise-free image, f64 `[num_pix, num_pix]`, surface brightness x pixel area,
/// as lenstronomy's `ImageModel.image` (regular grid, `supersampling_convolution=False`).
pub fn render(spec: &SimulationSpec) -> Result<Array2<f64>> {
    let grid = Grid { num_pix: spec.num_pix, pixel_scale: spec.pixel_scale, supersampling: spec.supersampling };
    let r = Renderer::new(grid, &spec.lens, spec.psf.clone())?;
    Ok(r.render(&[], &spec.source, &spec.lens_light))
}
