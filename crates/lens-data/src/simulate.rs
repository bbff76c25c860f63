//! DeepLenseSim "Model I" simulation (REFERENCE.md section 4): SIE + external shear main lens,
//! elliptical Sersic source at a random position, three substructure classes, Gaussian PSF,
//! exposure/Gaussian/Poisson noise and per-image min-max normalisation.
//!
//! Randomness: image `i` of a dataset draws everything from its own `ChaCha8Rng` seeded with
//! `seed` on stream `i`, so an image depends only on `(config, class, seed, i)`, never on the
//! thread count or on how many other images are generated.

use ndarray::{Array2, Array3};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use rayon::prelude::*;

use crate::error::{LensDataError, Result};
use crate::limits::Limits;
use crate::render::{check_rendered, validate_grid, Grid, RenderScratch, Renderer};
use crate::spec::{LensProfile, LightProfile, PsfSpec, SimulationSpec};

/// Einstein radius (arcsec) of a point mass of `mass` solar masses at the DeepLense Model I
/// redshifts: `1.2814905676172957e-6 * sqrt(mass)`.
pub fn theta_e_of_mass(mass: f64) -> f64 {
    1.2814905676172957e-6 * mass.sqrt()
}

/// The three DeepLense substructure classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LensClass {
    /// No substructure.
    NoSub,
    /// Cold-dark-matter subhalos (point masses drawn from a power-law mass function).
    Cdm,
    /// Axion dark matter vortex (a line of equal point masses through the centre).
    Axion,
}

impl LensClass {
    /// All classes, in label order.
    pub const ALL: [LensClass; 3] = [LensClass::NoSub, LensClass::Cdm, LensClass::Axion];

    /// Folder / command-line name: `no_sub`, `cdm`, `axion`.
    pub fn name(self) -> &'static str {
        match self {
            LensClass::NoSub => "no_sub",
            LensClass::Cdm => "cdm",
            LensClass::Axion => "axion",
        }
    }

    /// Parses `no_sub` (also `nosub`, `no`), `cdm` (also `sphere`), `axion` (also `vort`, `vortex`).
    pub fn parse(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "no_sub" | "nosub" | "no" | "none" => Ok(LensClass::NoSub),
            "cdm" | "sphere" | "subhalo" | "subhalos" => Ok(LensClass::Cdm),
            "axion" | "vort" | "vortex" => Ok(LensClass::Axion),
            _ => Err(LensDataError::UnknownClass(s.to_string())),
        }
    }

    /// Parses a comma-separated list, e.g. `no_sub,cdm,axion`.
    pub fn parse_list(s: &str) -> Result<Vec<Self>> {
        let v: Vec<Self> = s.split(',').filter(|t| !t.trim().is_empty()).map(Self::parse).collect::<Result<_>>()?;
        if v.is_empty() {
            return Err(LensDataError::invalid("classes", format!("'{s}'"), "no class given"));
        }
        Ok(v)
    }
}

impl std::fmt::Display for LensClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Model I configuration. [`ModelI::default`] is the DeepLense recipe; every field can be changed.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelI {
    /// Pixels per side (150).
    pub num_pix: usize,
    /// Arcsec per pixel (0.05).
    pub pixel_scale: f64,
    /// Sub-pixels per pixel side (1).
    pub supersampling: usize,
    /// PSF FWHM in arcsec (0.087); `None` disables the PSF.
    pub psf_fwhm: Option<f64>,
    /// PSF truncation in sigmas (4, as in the lenstronomy DeepLense used).
    pub psf_truncation: f64,
    /// Main lens: SIE Einstein radius (1.2814905676 arcsec = 1e12 Msun).
    pub main_theta_e: f64,
    /// Main lens SIE e1 (0.1).
    pub main_e1: f64,
    /// Main lens SIE e2 (0).
    pub main_e2: f64,
    /// External shear gamma1 (0.05).
    pub shear_gamma1: f64,
    /// External shear gamma2 (0).
    pub shear_gamma2: f64,
    /// Source Sersic amplitude (20).
    pub source_amp: f64,
    /// Source half-light radius (0.25 arcsec).
    pub source_r_sersic: f64,
    /// Source Sersic index (1).
    pub source_n_sersic: f64,
    /// Source e1 (-0.1).
    pub source_e1: f64,
    /// Source e2 (0.1).
    pub source_e2: f64,
    /// Source centre drawn uniformly in `[-r, r]^2` (r = 0.35 arcsec).
    pub source_center_range: f64,
    /// CDM: number of subhalos (25).
    pub cdm_count: usize,
    /// CDM: subhalo mass range in Msun (1e6, 1e10).
    pub cdm_mass_range: (f64, f64),
    /// CDM: mass-function slope, dN/dm ~ m^slope (-0.9).
    pub cdm_mass_slope: f64,
    /// CDM: radial range of subhalo positions in arcsec (0.25, 2.0).
    pub cdm_radius_range: (f64, f64),
    /// Axion: number of point masses on the vortex line (100).
    pub axion_count: usize,
    /// Axion: total vortex mass in Msun (3e10).
    pub axion_total_mass: f64,
    /// Axion: axion mass range (eV), drawn log-uniformly (1e-24, 1e-22).
    pub axion_mass_range: (f64, f64),
    /// Axion: vortex half-length = coefficient / m_a arcsec (3e-24).
    pub axion_length_coefficient: f64,
    /// Add Model I noise (exposure, Gaussian, Poisson).
    pub noise: bool,
    /// Exposure time t = 10^U(lo, hi) (3.0, 3.5).
    pub exposure_log10_range: (f64, f64),
    /// Background Gaussian noise level (0.01).
    pub background_sigma: f64,
    /// Per-image min-max normalisation to [0, 1] (after noise).
    pub normalize: bool,
    /// Ceilings on `num_pix`, `supersampling`, the PSF radius, the subhalo / vortex counts and
    /// the number of images per call ([`Limits`]).
    pub limits: Limits,
}

impl Default for ModelI {
    fn default() -> Self {
        Self {
            num_pix: 150,
            pixel_scale: 0.05,
            supersampling: 1,
            psf_fwhm: Some(0.087),
            psf_truncation: 4.0,
            main_theta_e: theta_e_of_mass(1e12),
            main_e1: 0.1,
            main_e2: 0.0,
            shear_gamma1: 0.05,
            shear_gamma2: 0.0,
            source_amp: 20.0,
            source_r_sersic: 0.25,
            source_n_sersic: 1.0,
            source_e1: -0.1,
            source_e2: 0.1,
            source_center_range: 0.35,
            cdm_count: 25,
            cdm_mass_range: (1e6, 1e10),
            cdm_mass_slope: -0.9,
            cdm_radius_range: (0.25, 2.0),
            axion_count: 100,
            axion_total_mass: 3e10,
            axion_mass_range: (1e-24, 1e-22),
            axion_length_coefficient: 3e-24,
            noise: true,
            exposure_log10_range: (3.0, 3.5),
            background_sigma: 0.01,
            normalize: true,
            limits: Limits::default(),
        }
    }
}

/// The random draws of one Model I image (enough to re-render it noise-free).
#[derive(Debug, Clone, PartialEq)]
pub struct ImageParams {
    /// Class.
    pub class: LensClass,
    /// Source centre (arcsec).
    pub source_center: (f64, f64),
    /// Substructure point masses (POINT_MASS profiles).
    pub substructure: Vec<LensProfile>,
    /// Exposure time (when noise is on).
    pub exposure: Option<f64>,
}

fn check_range(name: &str, (lo, hi): (f64, f64), positive: bool) -> Result<()> {
    if !(lo.is_finite() && hi.is_finite() && lo <= hi) || (positive && lo <= 0.0) {
        return Err(LensDataError::invalid(
            name,
            format!("({lo}, {hi})"),
            if positive { "need 0 < lo <= hi" } else { "need lo <= hi" },
        ));
    }
    Ok(())
}

fn check_finite(name: &str, v: f64) -> Result<()> {
    if !v.is_finite() {
        return Err(LensDataError::invalid(name, v, "must be finite"));
    }
    Ok(())
}

impl ModelI {
    /// Checks every field (sizes against [`Self::limits`]).
    pub fn validate(&self) -> Result<()> {
        validate_grid(&self.grid(), &self.limits)?;
        for (name, n) in [("cdm_count", self.cdm_count), ("axion_count", self.axion_count)] {
            if n > self.limits.max_profiles {
                return Err(LensDataError::invalid(
                    name,
                    n,
                    format!("allowed range 0..={} (Limits::max_profiles)", self.limits.max_profiles),
                ));
            }
        }
        // NaN or inf here would turn every image into NaN, which min-max then hides as zeros
        for (name, v) in [
            ("main_theta_e", self.main_theta_e),
            ("main_e1", self.main_e1),
            ("main_e2", self.main_e2),
            ("shear_gamma1", self.shear_gamma1),
            ("shear_gamma2", self.shear_gamma2),
            ("source_amp", self.source_amp),
            ("source_r_sersic", self.source_r_sersic),
            ("source_e1", self.source_e1),
            ("source_e2", self.source_e2),
            ("cdm_mass_slope", self.cdm_mass_slope),
            ("axion_total_mass", self.axion_total_mass),
            ("axion_length_coefficient", self.axion_length_coefficient),
        ] {
            check_finite(name, v)?;
        }
        if !(self.source_n_sersic > 0.0 && self.source_n_sersic.is_finite()) {
            return Err(LensDataError::invalid("source_n_sersic", self.source_n_sersic, "must be finite and > 0"));
        }
        check_range("cdm_mass_range", self.cdm_mass_range, true)?;
        check_range("cdm_radius_range", self.cdm_radius_range, false)?;
        check_range("axion_mass_range", self.axion_mass_range, true)?;
        check_range("exposure_log10_range", self.exposure_log10_range, false)?;
        if !(self.source_center_range >= 0.0 && self.source_center_range.is_finite()) {
            return Err(LensDataError::invalid("source_center_range", self.source_center_range, "must be >= 0"));
        }
        if !(self.background_sigma >= 0.0 && self.background_sigma.is_finite()) {
            return Err(LensDataError::invalid("background_sigma", self.background_sigma, "must be >= 0"));
        }
        if self.axion_total_mass < 0.0 {
            return Err(LensDataError::invalid("axion_total_mass", self.axion_total_mass, "must be >= 0"));
        }
        Ok(())
    }

    fn grid(&self) -> Grid {
        Grid { num_pix: self.num_pix, pixel_scale: self.pixel_scale, supersampling: self.supersampling }
    }

    fn psf(&self) -> Option<PsfSpec> {
        self.psf_fwhm.map(|fwhm| PsfSpec::Gaussian { fwhm, truncation: self.psf_truncation })
    }

    /// The fixed macro model: SIE + external shear.
    pub fn main_lens(&self) -> Vec<LensProfile> {
        vec![
            LensProfile::Sie {
                theta_e: self.main_theta_e,
                e1: self.main_e1,
                e2: self.main_e2,
                center_x: 0.0,
                center_y: 0.0,
            },
            LensProfile::Shear { gamma1: self.shear_gamma1, gamma2: self.shear_gamma2, ra_0: 0.0, dec_0: 0.0 },
        ]
    }

    fn source(&self, (cx, cy): (f64, f64)) -> LightProfile {
        LightProfile::SersicEllipse {
            amp: self.source_amp,
            r_sersic: self.source_r_sersic,
            n_sersic: self.source_n_sersic,
            e1: self.source_e1,
            e2: self.source_e2,
            center_x: cx,
            center_y: cy,
        }
    }

    /// Draws the parameters of one image from `rng`.
    pub fn draw_params<R: Rng + ?Sized>(&self, class: LensClass, rng: &mut R) -> ImageParams {
        let r = self.source_center_range;
        let source_center = (rng.random_range(-r..=r), rng.random_range(-r..=r));
        let substructure = match class {
            LensClass::NoSub => Vec::new(),
            LensClass::Cdm => {
                let p = 1.0 + self.cdm_mass_slope;
                let (lo, hi) = self.cdm_mass_range;
                let (rlo, rhi) = self.cdm_radius_range;
                (0..self.cdm_count)
                    .map(|_| {
                        let u: f64 = rng.random();
                        // inverse CDF of dN/dm ~ m^slope on [lo, hi]
                        let m = if p.abs() < 1e-12 {
                            lo * (hi / lo).powf(u)
                        } else {
                            (lo.powf(p) + u * (hi.powf(p) - lo.powf(p))).powf(1.0 / p)
                        };
                        let rad = rlo + (rhi - rlo) * rng.random::<f64>();
                        let t = std::f64::consts::TAU * rng.random::<f64>();
                        LensProfile::PointMass {
                            theta_e: theta_e_of_mass(m),
                            center_x: rad * t.sin(),
                            center_y: rad * t.cos(),
                        }
                    })
                    .collect()
            }
            LensClass::Axion => {
                let (lo, hi) = self.axion_mass_range;
                let log_ma = lo.log10() + (hi.log10() - lo.log10()) * rng.random::<f64>();
                let half = self.axion_length_coefficient / 10f64.powf(log_ma);
                let angle = std::f64::consts::PI * rng.random::<f64>();
                let (s, c) = angle.sin_cos();
                let n = self.axion_count;
                let te = theta_e_of_mass(self.axion_total_mass / n.max(1) as f64);
                (0..n)
                    .map(|k| {
                        let t = if n == 1 { 0.0 } else { -half + 2.0 * half * k as f64 / (n - 1) as f64 };
                        LensProfile::PointMass { theta_e: te, center_x: t * c, center_y: t * s }
                    })
                    .collect()
            }
        };
        let exposure = self.noise.then(|| {
            let (lo, hi) = self.exposure_log10_range;
            10f64.powf(lo + (hi - lo) * rng.random::<f64>())
        });
        ImageParams { class, source_center, substructure, exposure }
    }

    /// The noise-free spec of an image (same schema as the `simulate` command reads).
    pub fn spec(&self, params: &ImageParams) -> SimulationSpec {
        let mut lens = self.main_lens();
        lens.extend(params.substructure.iter().cloned());
        SimulationSpec {
            num_pix: self.num_pix,
            pixel_scale: self.pixel_scale,
            supersampling: self.supersampling,
            psf: self.psf(),
            lens,
            source: vec![self.source(params.source_center)],
            lens_light: Vec::new(),
        }
    }
}

/// Model I noise, in place: `img_c = t (img + N(0,1) sqrt(|img|/t) + N(0,1) sigma_bg)`,
/// `counts = Poisson(max(img_c, 0))` (numpy's Poisson algorithms, see [`poisson`]).
pub fn add_model_i_noise<R: Rng + ?Sized>(img: &mut [f64], exposure: f64, background_sigma: f64, rng: &mut R) {
    for v in img.iter_mut() {
        let n1: f64 = StandardNormal.sample(rng);
        let n2: f64 = StandardNormal.sample(rng);
        let c = exposure * (*v + n1 * (v.abs() / exposure).sqrt() + n2 * background_sigma);
        *v = if c > 0.0 { poisson(c, rng) } else { 0.0 };
    }
}

/// numpy's `random_loggam`: log Gamma(x) by Stirling series (x > 0).
fn loggam(x: f64) -> f64 {
    const A: [f64; 10] = [
        8.333333333333333e-02,
        -2.777777777777778e-03,
        7.936507936507937e-04,
        -5.952380952380952e-04,
        8.417508417508418e-04,
        -1.917526917526918e-03,
        6.41025641025641e-03,
        -2.955065359477124e-02,
        1.796443723688307e-01,
        -1.39243221690590e+00,
    ];
    if x == 1.0 || x == 2.0 {
        return 0.0;
    }
    let n = if x < 7.0 { (7.0 - x) as i64 } else { 0 };
    let mut x0 = x + n as f64;
    let x2 = (1.0 / x0) * (1.0 / x0);
    let mut gl0 = A[9];
    for k in (0..9).rev() {
        gl0 = gl0 * x2 + A[k];
    }
    let mut gl = gl0 / x0 + 0.5 * 1.8378770664093453 + (x0 - 0.5) * x0.ln() - x0;
    for _ in 0..n {
        gl -= (x0 - 1.0).ln();
        x0 -= 1.0;
    }
    gl
}

/// `ln k!` = `loggam(k + 1)` for a non-negative integer `k`: from a table for `k < 1024`
/// (filled by `loggam` itself, so the values are bit-identical), `loggam` beyond. The PTRS slow
/// path needs it for about half of the draws at the background's lambda ~ 10-30, where
/// `loggam`'s shift loop costs up to six extra logarithms.
fn log_factorial(k: f64) -> f64 {
    const N: usize = 1024;
    static TABLE: std::sync::OnceLock<Vec<f64>> = std::sync::OnceLock::new();
    if k < N as f64 {
        TABLE.get_or_init(|| (0..N).map(|i| loggam(i as f64 + 1.0)).collect())[k as usize]
    } else {
        loggam(k + 1.0)
    }
}

/// A Poisson(`lambda`) draw with numpy's algorithms: multiplication method below 10,
/// PTRS transformed rejection (Hormann 1993) from 10 on. Exact samplers, ~10 ns per draw.
pub fn poisson<R: Rng + ?Sized>(lambda: f64, rng: &mut R) -> f64 {
    if lambda.is_nan() || lambda <= 0.0 {
        return 0.0;
    }
    if lambda < 10.0 {
        let enlam = (-lambda).exp();
        let mut prod = 1.0;
        let mut k = 0.0;
        loop {
            prod *= rng.random::<f64>();
            if prod > enlam {
                k += 1.0;
            } else {
                return k;
            }
        }
    }
    if lambda > 1e15 {
        // beyond the f64 integer resolution of the sampler; the mean is the meaningful value
        return lambda.round();
    }
    let slam = lambda.sqrt();
    let b = 0.931 + 2.53 * slam;
    let a = -0.059 + 0.02483 * b;
    let invalpha = 1.1239 + 1.1328 / (b - 3.4);
    let vr = 0.9277 - 3.6224 / (b - 2.0);
    let mut logs: Option<(f64, f64)> = None; // (ln lambda, ln invalpha), only on the slow path
    loop {
        let u = rng.random::<f64>() - 0.5;
        let v: f64 = rng.random();
        let us = 0.5 - u.abs();
        let k = ((2.0 * a / us + b) * u + lambda + 0.43).floor();
        if us >= 0.07 && v <= vr {
            return k;
        }
        if k < 0.0 || (us < 0.013 && v > us) {
            continue;
        }
        let (loglam, log_invalpha) = *logs.get_or_insert_with(|| (lambda.ln(), invalpha.ln()));
        if v.ln() + log_invalpha - (a / (us * us) + b).ln() <= -lambda + k * loglam - log_factorial(k) {
            return k;
        }
    }
}

/// Per-image min-max to [0, 1] in place (a constant image becomes all zeros).
pub fn min_max_in_place(img: &mut [f64]) {
    let (lo, hi) = img.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
    let span = hi - lo;
    if span > 0.0 && span.is_finite() {
        img.iter_mut().for_each(|v| *v = (*v - lo) / span);
    } else if lo.is_finite() && hi.is_finite() && hi > lo {
        // finite extremes whose difference overflows (e.g. -1e308..1e308): halve both first
        let (l, s) = (lo / 2.0, hi / 2.0 - lo / 2.0);
        img.iter_mut().for_each(|v| *v = (*v / 2.0 - l) / s);
    } else {
        img.iter_mut().for_each(|v| *v = 0.0);
    }
}

/// A seeded Model I generator: precomputes the grid and the macro-lens deflection once.
#[derive(Debug, Clone)]
pub struct ModelISimulator {
    config: ModelI,
    renderer: Renderer,
}

/// xoshiro256++ (Blackman & Vigna): the fast generator the per-pixel noise draws from. Seeded
/// from the image's ChaCha8 stream, so images stay reproducible and independent.
#[derive(Debug, Clone)]
pub struct Xoshiro256pp {
    s: [u64; 4],
}

impl Xoshiro256pp {
    /// Seeds from four words of `rng` (an all-zero state is replaced by a fixed non-zero one).
    pub fn from_rng<R: rand::RngCore + ?Sized>(rng: &mut R) -> Self {
        let mut s = [rng.next_u64(), rng.next_u64(), rng.next_u64(), rng.next_u64()];
        if s == [0; 4] {
            s = [0x9E37_79B9_7F4A_7C15, 0xBF58_476D_1CE4_E5B9, 0x94D0_49BB_1331_11EB, 1];
        }
        Self { s }
    }
}

impl rand::RngCore for Xoshiro256pp {
    fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    #[inline]
    fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[0].wrapping_add(s[3]).rotate_left(23).wrapping_add(s[0]);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    fn fill_bytes(&mut self, dst: &mut [u8]) {
        for chunk in dst.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// The RNG of image `index` under `seed`.
pub fn image_rng(seed: u64, index: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(index);
    rng
}

impl ModelISimulator {
    /// Validates `config` and precomputes.
    pub fn new(config: ModelI) -> Result<Self> {
        config.validate()?;
        let psf = config.psf();
        let renderer = Renderer::with_limits(config.grid(), &config.main_lens(), psf, &config.limits)?;
        Ok(Self { config, renderer })
    }

    /// The configuration.
    pub fn config(&self) -> &ModelI {
        &self.config
    }

    /// Image `index` of class `class` under `seed`: f64 `[num_pix, num_pix]` and its draws.
    pub fn simulate(&self, class: LensClass, seed: u64, index: u64) -> (Array2<f64>, ImageParams) {
        let n = self.config.num_pix;
        let mut img = Array2::zeros((n, n));
        let params =
            self.simulate_into(class, seed, index, &mut RenderScratch::default(), img.as_slice_mut().expect("fresh"));
        (img, params)
    }

    /// As [`Self::simulate`], into a row-major `num_pix^2` slice, reusing `scratch`.
    ///
    /// Unchecked: a configuration whose values overflow `f64` gives NaN/inf pixels (or, once
    /// normalised, zeros). [`Self::try_simulate_into`] reports them instead.
    pub fn simulate_into(
        &self,
        class: LensClass,
        seed: u64,
        index: u64,
        scratch: &mut RenderScratch,
        out: &mut [f64],
    ) -> ImageParams {
        match self.simulate_checked(class, seed, index, scratch, out, false) {
            Ok(p) => p,
            Err(_) => unreachable!("unchecked simulation does not fail"),
        }
    }

    /// As [`Self::simulate_into`], but NaN or infinite pixels (after rendering, or after the
    /// noise) are a [`LensDataError::NonFiniteRender`] naming the image.
    pub fn try_simulate_into(
        &self,
        class: LensClass,
        seed: u64,
        index: u64,
        scratch: &mut RenderScratch,
        out: &mut [f64],
    ) -> Result<ImageParams> {
        self.simulate_checked(class, seed, index, scratch, out, true)
    }

    fn simulate_checked(
        &self,
        class: LensClass,
        seed: u64,
        index: u64,
        scratch: &mut RenderScratch,
        out: &mut [f64],
        check: bool,
    ) -> Result<ImageParams> {
        let what = || format!("Model I image {index} ({class}, seed {seed})");
        let mut rng = image_rng(seed, index);
        let params = self.config.draw_params(class, &mut rng);
        let source = [self.config.source(params.source_center)];
        self.renderer.render_into(&params.substructure, &source, &[], scratch, out);
        if check {
            check_rendered(out, what)?;
        }
        if let Some(t) = params.exposure {
            // ~70,000 draws per image: a xoshiro256++ stream seeded from this image's ChaCha stream
            let mut noise_rng = Xoshiro256pp::from_rng(&mut rng);
            add_model_i_noise(out, t, self.config.background_sigma, &mut noise_rng);
            if check {
                check_rendered(out, || format!("{} after noise", what()))?;
            }
        }
        if self.config.normalize {
            min_max_in_place(out);
        }
        Ok(params)
    }
}

/// `count` within [`Limits::max_count`].
pub(crate) fn check_count(count: usize, limits: &Limits) -> Result<()> {
    if count > limits.max_count {
        return Err(LensDataError::invalid(
            "count",
            count,
            format!("allowed range 1..={} (Limits::max_count)", limits.max_count),
        ));
    }
    Ok(())
}

/// Class of image `index` when a dataset cycles through `classes`: `classes[index % len]`.
pub fn class_of(classes: &[LensClass], index: usize) -> LensClass {
    classes[index % classes.len()]
}

/// A simulated dataset held in memory.
#[derive(Debug, Clone)]
pub struct SimulatedSet {
    /// Images, f64 `[count, num_pix, num_pix]`.
    pub images: Array3<f64>,
    /// Label of each image: index into `classes`.
    pub labels: Vec<usize>,
    /// The classes, in label order.
    pub classes: Vec<LensClass>,
}

/// Simulates `count` Model I images in parallel (rayon). Image `i` has class
/// `classes[i % classes.len()]` and its own RNG stream, so results do not depend on the thread count.
pub fn simulate_dataset(config: &ModelI, classes: &[LensClass], count: usize, seed: u64) -> Result<SimulatedSet> {
    if classes.is_empty() {
        return Err(LensDataError::invalid("classes", "[]", "need at least one class"));
    }
    let sim = ModelISimulator::new(config.clone())?;
    let n = config.num_pix;
    check_count(count, &config.limits)?;
    // the whole set is one in-memory array: check its size before allocating it
    let bytes = (count as u64).saturating_mul((n * n) as u64).saturating_mul(8);
    if bytes > config.limits.max_array_bytes {
        return Err(LensDataError::invalid(
            "count",
            count,
            format!(
                "allowed range 1..={} at {n}x{n}: the images take {bytes} bytes as f64, above Limits::max_array_bytes = {}",
                config.limits.max_array_bytes / ((n * n) as u64 * 8),
                config.limits.max_array_bytes
            ),
        ));
    }
    let mut images = Array3::<f64>::zeros((count, n, n));
    let buf = images.as_slice_mut().expect("fresh array is contiguous");
    buf.par_chunks_mut((n * n).max(1)).enumerate().try_for_each_init(RenderScratch::default, |scratch, (i, dst)| {
        sim.try_simulate_into(class_of(classes, i), seed, i as u64, scratch, dst).map(drop)
    })?;
    let labels = (0..count).map(|i| i % classes.len()).collect();
    Ok(SimulatedSet { images, labels, classes: classes.to_vec() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xoshiro_matches_the_reference_vector() {
        use rand::RngCore;
        let mut r = Xoshiro256pp { s: [1, 2, 3, 4] };
        assert_eq!([r.next_u64(), r.next_u64(), r.next_u64()], [41943041, 58720359, 3588806011781223]);
    }

    #[test]
    fn loggam_matches_known_values() {
        for (x, want) in [
            (5.0, 24f64.ln()),
            (0.5, 0.5723649429247001),
            (100.0, 359.1342053695754),
            (1.0, 0.0),
            (12.5, 18.734347511936445),
        ] {
            assert!((loggam(x) - want).abs() < 1e-12 * want.abs().max(1.0), "{x}: {} vs {want}", loggam(x));
        }
    }

    #[test]
    fn log_factorial_table_is_loggam() {
        for k in [0.0, 1.0, 2.0, 6.0, 7.0, 100.0, 1023.0, 1024.0, 5000.0] {
            assert_eq!(log_factorial(k).to_bits(), loggam(k + 1.0).to_bits(), "k = {k}");
        }
    }

    #[test]
    fn poisson_has_the_right_distribution() {
        let mut rng = image_rng(3, 0);
        for lambda in [0.3, 4.0, 9.9, 10.0, 35.0, 1500.0] {
            let n = 200_000;
            let draws: Vec<f64> = (0..n).map(|_| poisson(lambda, &mut rng)).collect();
            assert!(draws.iter().all(|&k| k >= 0.0 && k.fract() == 0.0));
            let mean = draws.iter().sum::<f64>() / n as f64;
            let var = draws.iter().map(|k| (k - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
            let se = (lambda / n as f64).sqrt();
            assert!((mean - lambda).abs() < 5.0 * se, "lambda {lambda}: mean {mean}");
            assert!((var / lambda - 1.0).abs() < 0.03, "lambda {lambda}: var {var}");
            // pmf at the mode region vs exp(k ln l - l - lgamma(k+1))
            let k0 = lambda.floor();
            for k in [k0, k0 + 1.0] {
                let p = (k * lambda.ln() - lambda - loggam(k + 1.0)).exp();
                let f = draws.iter().filter(|&&d| d == k).count() as f64 / n as f64;
                let sd = (p * (1.0 - p) / n as f64).sqrt();
                assert!((f - p).abs() < 5.0 * sd + 1e-4, "lambda {lambda}, k {k}: freq {f} vs pmf {p}");
            }
        }
        assert_eq!(poisson(0.0, &mut rng), 0.0);
        assert_eq!(poisson(-1.0, &mut rng), 0.0);
    }
}
