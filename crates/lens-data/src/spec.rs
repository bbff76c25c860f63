//! Simulation specs: the JSON schema of `make_lens_fixtures.py` (lenstronomy kwarg names).
//!
//! ```json
//! {"num_pix": 150, "pixel_scale": 0.05, "supersampling": 1,
//!  "psf": {"type": "GAUSSIAN", "fwhm": 0.087, "truncation": 3.0},
//!  "lens": [{"type": "SIE", "theta_E": 1.28, "e1": 0.1, "e2": 0.0, "center_x": 0.0, "center_y": 0.0},
//!           {"type": "SHEAR", "gamma1": 0.05, "gamma2": 0.0}],
//!  "source": [{"type": "SERSIC_ELLIPSE", "amp": 20.0, "R_sersic": 0.25, "n_sersic": 1.0,
//!              "e1": -0.1, "e2": 0.1, "center_x": 0.1, "center_y": -0.05}],
//!  "lens_light": []}
//! ```
//! `psf` may be `null` (no convolution); `lens_light` is optional. Parsing is strict: unknown
//! profile types, missing required parameters and unknown parameter names are typed errors.

use std::path::Path;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::{LensDataError, Result};
use crate::limits::{read_bounded, Limits};
use crate::render::{validate_grid, validate_psf, Grid};

/// Lens (mass) profiles, with lenstronomy's parameter names and defaults (`center_*` = 0).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type")]
pub enum LensProfile {
    /// Singular isothermal ellipsoid (lenstronomy `SIE`: NIE with core 1e-10, product-average `theta_E`).
    #[serde(rename = "SIE")]
    Sie {
        /// Einstein radius (arcsec).
        #[serde(rename = "theta_E")]
        theta_e: f64,
        /// Ellipticity component.
        e1: f64,
        /// Ellipticity component.
        e2: f64,
        /// Centre x (arcsec).
        center_x: f64,
        /// Centre y (arcsec).
        center_y: f64,
    },
    /// Singular isothermal sphere.
    #[serde(rename = "SIS")]
    Sis {
        /// Einstein radius (arcsec).
        #[serde(rename = "theta_E")]
        theta_e: f64,
        /// Centre x.
        center_x: f64,
        /// Centre y.
        center_y: f64,
    },
    /// External shear (lenstronomy `SHEAR`, Cartesian gamma1/gamma2).
    #[serde(rename = "SHEAR")]
    Shear {
        /// Shear component 1.
        gamma1: f64,
        /// Shear component 2.
        gamma2: f64,
        /// Origin x of the shear field.
        ra_0: f64,
        /// Origin y of the shear field.
        dec_0: f64,
    },
    /// Point mass.
    #[serde(rename = "POINT_MASS")]
    PointMass {
        /// Einstein radius (arcsec).
        #[serde(rename = "theta_E")]
        theta_e: f64,
        /// Centre x.
        center_x: f64,
        /// Centre y.
        center_y: f64,
    },
    /// Navarro-Frenk-White halo.
    #[serde(rename = "NFW")]
    Nfw {
        /// Scale radius (arcsec).
        #[serde(rename = "Rs")]
        rs: f64,
        /// Deflection at `Rs` (arcsec).
        #[serde(rename = "alpha_Rs")]
        alpha_rs: f64,
        /// Centre x.
        center_x: f64,
        /// Centre y.
        center_y: f64,
    },
    /// Truncated NFW (Baltz et al. 2009), lenstronomy `TNFW`.
    #[serde(rename = "TNFW")]
    Tnfw {
        /// Scale radius (arcsec).
        #[serde(rename = "Rs")]
        rs: f64,
        /// Deflection at `Rs` of the untruncated profile (arcsec).
        #[serde(rename = "alpha_Rs")]
        alpha_rs: f64,
        /// Truncation radius (arcsec).
        r_trunc: f64,
        /// Centre x.
        center_x: f64,
        /// Centre y.
        center_y: f64,
    },
}

/// Light profiles (surface brightness), lenstronomy conventions.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type")]
pub enum LightProfile {
    /// Circular Sersic.
    #[serde(rename = "SERSIC")]
    Sersic {
        /// Surface brightness at `R_sersic`.
        amp: f64,
        /// Half-light radius (arcsec).
        #[serde(rename = "R_sersic")]
        r_sersic: f64,
        /// Sersic index.
        n_sersic: f64,
        /// Centre x.
        center_x: f64,
        /// Centre y.
        center_y: f64,
    },
    /// Elliptical Sersic (product-average radius, lenstronomy's default convention).
    #[serde(rename = "SERSIC_ELLIPSE")]
    SersicEllipse {
        /// Surface brightness at `R_sersic`.
        amp: f64,
        /// Half-light radius (arcsec).
        #[serde(rename = "R_sersic")]
        r_sersic: f64,
        /// Sersic index.
        n_sersic: f64,
        /// Ellipticity component.
        e1: f64,
        /// Ellipticity component.
        e2: f64,
        /// Centre x.
        center_x: f64,
        /// Centre y.
        center_y: f64,
    },
}

/// Point-spread function.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type")]
pub enum PsfSpec {
    /// Gaussian PSF applied as `scipy.ndimage.gaussian_filter(mode="nearest", truncate=truncation)`.
    #[serde(rename = "GAUSSIAN")]
    Gaussian {
        /// Full width at half maximum (arcsec).
        fwhm: f64,
        /// Kernel half-width in units of sigma (lenstronomy default 5; DeepLense used 4).
        truncation: f64,
    },
}

/// A full noise-free image specification (schema of `make_lens_fixtures.py`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SimulationSpec {
    /// Pixels per side.
    pub num_pix: usize,
    /// Pixel size (arcsec).
    pub pixel_scale: f64,
    /// Sub-pixels per pixel side (>= 1).
    pub supersampling: usize,
    /// PSF, or `None` for no convolution.
    pub psf: Option<PsfSpec>,
    /// Lens profiles (deflections add up: single lens plane).
    pub lens: Vec<LensProfile>,
    /// Source light profiles (evaluated at the ray-traced positions).
    pub source: Vec<LightProfile>,
    /// Lens light profiles (evaluated in the image plane).
    pub lens_light: Vec<LightProfile>,
}

const LENS_TYPES: &str = "SIE, SIS, SHEAR, POINT_MASS, NFW, TNFW";
const LIGHT_TYPES: &str = "SERSIC, SERSIC_ELLIPSE";

struct Params<'a> {
    section: &'a str,
    index: usize,
    profile: String,
    map: &'a Map<String, Value>,
}

impl Params<'_> {
    fn check_keys(&self, allowed: &[&str]) -> Result<()> {
        for k in self.map.keys() {
            if k != "type" && !allowed.contains(&k.as_str()) {
                return Err(LensDataError::UnknownParam {
                    section: self.section.into(),
                    index: self.index,
                    profile: self.profile.clone(),
                    param: k.clone(),
                    expected: allowed.join(", "),
                });
            }
        }
        Ok(())
    }

    fn name(&self, key: &str) -> String {
        format!("{}[{}].{}", self.section, self.index, key)
    }

    fn num(&self, key: &str, v: &Value) -> Result<f64> {
        let x = v.as_f64().ok_or_else(|| LensDataError::invalid(self.name(key), v, "expected a number"))?;
        if !x.is_finite() {
            return Err(LensDataError::invalid(self.name(key), x, "must be finite"));
        }
        Ok(x)
    }

    fn req(&self, key: &str) -> Result<f64> {
        match self.map.get(key) {
            Some(v) => self.num(key, v),
            None => Err(LensDataError::MissingParam {
                section: self.section.into(),
                index: self.index,
                profile: self.profile.clone(),
                param: key.into(),
            }),
        }
    }

    fn opt(&self, key: &str, default: f64) -> Result<f64> {
        match self.map.get(key) {
            Some(v) => self.num(key, v),
            None => Ok(default),
        }
    }

    fn positive(&self, key: &str) -> Result<f64> {
        let x = self.req(key)?;
        if x <= 0.0 {
            return Err(LensDataError::invalid(self.name(key), x, "must be > 0"));
        }
        Ok(x)
    }
}

fn component<'a>(section: &'a str, index: usize, v: &'a Value) -> Result<Params<'a>> {
    let map = v.as_object().ok_or_else(|| LensDataError::SpecSyntax {
        origin: None,
        reason: format!("{section}[{index}] must be an object with a \"type\" key, got {v}"),
    })?;
    let profile = match map.get("type") {
        Some(Value::String(s)) => s.clone(),
        Some(other) => {
            return Err(LensDataError::invalid(format!("{section}[{index}].type"), other, "expected a string"))
        }
        None => {
            return Err(LensDataError::MissingParam {
                section: section.into(),
                index,
                profile: "?".into(),
                param: "type".into(),
            })
        }
    };
    Ok(Params { section, index, profile, map })
}

fn parse_lens(index: usize, v: &Value) -> Result<LensProfile> {
    let p = component("lens", index, v)?;
    let c = |p: &Params| -> Result<(f64, f64)> { Ok((p.opt("center_x", 0.0)?, p.opt("center_y", 0.0)?)) };
    Ok(match p.profile.as_str() {
        "SIE" => {
            p.check_keys(&["theta_E", "e1", "e2", "center_x", "center_y"])?;
            let (center_x, center_y) = c(&p)?;
            LensProfile::Sie { theta_e: p.req("theta_E")?, e1: p.req("e1")?, e2: p.req("e2")?, center_x, center_y }
        }
        "SIS" => {
            p.check_keys(&["theta_E", "center_x", "center_y"])?;
            let (center_x, center_y) = c(&p)?;
            LensProfile::Sis { theta_e: p.req("theta_E")?, center_x, center_y }
        }
        "POINT_MASS" => {
            p.check_keys(&["theta_E", "center_x", "center_y"])?;
            let (center_x, center_y) = c(&p)?;
            LensProfile::PointMass { theta_e: p.req("theta_E")?, center_x, center_y }
        }
        "SHEAR" => {
            p.check_keys(&["gamma1", "gamma2", "ra_0", "dec_0"])?;
            LensProfile::Shear {
                gamma1: p.req("gamma1")?,
                gamma2: p.req("gamma2")?,
                ra_0: p.opt("ra_0", 0.0)?,
                dec_0: p.opt("dec_0", 0.0)?,
            }
        }
        "NFW" => {
            p.check_keys(&["Rs", "alpha_Rs", "center_x", "center_y"])?;
            let (center_x, center_y) = c(&p)?;
            LensProfile::Nfw { rs: p.positive("Rs")?, alpha_rs: p.req("alpha_Rs")?, center_x, center_y }
        }
        "TNFW" => {
            p.check_keys(&["Rs", "alpha_Rs", "r_trunc", "center_x", "center_y"])?;
            let (center_x, center_y) = c(&p)?;
            LensProfile::Tnfw {
                rs: p.positive("Rs")?,
                alpha_rs: p.req("alpha_Rs")?,
                r_trunc: p.positive("r_trunc")?,
                center_x,
                center_y,
            }
        }
        other => {
            return Err(LensDataError::UnknownProfile {
                section: "lens".into(),
                index,
                name: other.into(),
                supported: LENS_TYPES,
            })
        }
    })
}

fn parse_light(section: &str, index: usize, v: &Value) -> Result<LightProfile> {
    let p = component(section, index, v)?;
    Ok(match p.profile.as_str() {
        "SERSIC" => {
            p.check_keys(&["amp", "R_sersic", "n_sersic", "center_x", "center_y"])?;
            LightProfile::Sersic {
                amp: p.req("amp")?,
                r_sersic: p.req("R_sersic")?,
                n_sersic: p.positive("n_sersic")?,
                center_x: p.opt("center_x", 0.0)?,
                center_y: p.opt("center_y", 0.0)?,
            }
        }
        "SERSIC_ELLIPSE" => {
            p.check_keys(&["amp", "R_sersic", "n_sersic", "e1", "e2", "center_x", "center_y"])?;
            LightProfile::SersicEllipse {
                amp: p.req("amp")?,
                r_sersic: p.req("R_sersic")?,
                n_sersic: p.positive("n_sersic")?,
                e1: p.req("e1")?,
                e2: p.req("e2")?,
                center_x: p.opt("center_x", 0.0)?,
                center_y: p.opt("center_y", 0.0)?,
            }
        }
        other => {
            return Err(LensDataError::UnknownProfile {
                section: section.into(),
                index,
                name: other.into(),
                supported: LIGHT_TYPES,
            })
        }
    })
}

fn list<'a>(root: &'a Map<String, Value>, key: &str, required: bool, limits: &Limits) -> Result<&'a [Value]> {
    match root.get(key) {
        Some(Value::Array(a)) => {
            check_profile_count(key, a.len(), limits)?;
            Ok(a)
        }
        Some(Value::Null) | None if !required => Ok(&[]),
        None => Err(LensDataError::MissingParam {
            section: "spec".into(),
            index: 0,
            profile: "spec".into(),
            param: key.into(),
        }),
        Some(other) => Err(LensDataError::invalid(key, other, "expected a list of profile objects")),
    }
}

fn check_profile_count(key: &str, n: usize, limits: &Limits) -> Result<()> {
    if n > limits.max_profiles {
        return Err(LensDataError::invalid(
            format!("{key} (number of profiles)"),
            n,
            format!("allowed range 0..={} (Limits::max_profiles)", limits.max_profiles),
        ));
    }
    Ok(())
}

impl SimulationSpec {
    /// Parses a spec from JSON text, under [`Limits::default`].
    pub fn from_json_str(text: &str) -> Result<Self> {
        Self::from_json_str_with_limits(text, &Limits::default())
    }

    /// As [`Self::from_json_str`], under `limits`.
    pub fn from_json_str_with_limits(text: &str, limits: &Limits) -> Result<Self> {
        // serde_json refuses nesting deeper than 128, so hostile JSON cannot overflow the stack
        let v: Value = serde_json::from_str(text)
            .map_err(|e| LensDataError::SpecSyntax { origin: None, reason: format!("invalid JSON: {e}") })?;
        Self::from_json_value_with_limits(&v, limits)
    }

    /// Reads and parses a spec file, under [`Limits::default`].
    pub fn from_json_file(path: impl AsRef<Path>) -> Result<Self> {
        Self::from_json_file_with_limits(path, &Limits::default())
    }

    /// As [`Self::from_json_file`], under `limits` (the file at most `max_spec_bytes`).
    pub fn from_json_file_with_limits(path: impl AsRef<Path>, limits: &Limits) -> Result<Self> {
        let path = path.as_ref();
        let f = std::fs::File::open(path).map_err(|e| LensDataError::io(path, e))?;
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let mut bytes = Vec::new();
        read_bounded(f, path, len, limits.max_spec_bytes, "max_spec_bytes", &mut bytes)?;
        let text = String::from_utf8(bytes).map_err(|e| LensDataError::SpecSyntax {
            origin: Some(path.to_path_buf()),
            reason: format!("not UTF-8 text (invalid byte at offset {})", e.utf8_error().valid_up_to()),
        })?;
        Self::from_json_str_with_limits(&text, limits).map_err(|e| match e {
            LensDataError::SpecSyntax { reason, .. } => {
                LensDataError::SpecSyntax { origin: Some(path.to_path_buf()), reason }
            }
            other => other,
        })
    }

    /// Converts an already-parsed JSON value, under [`Limits::default`].
    pub fn from_json_value(v: &Value) -> Result<Self> {
        Self::from_json_value_with_limits(v, &Limits::default())
    }

    /// As [`Self::from_json_value`], under `limits`; the result passes [`Self::validate`].
    pub fn from_json_value_with_limits(v: &Value, limits: &Limits) -> Result<Self> {
        let root = v.as_object().ok_or_else(|| LensDataError::SpecSyntax {
            origin: None,
            reason: "top level must be a JSON object".into(),
        })?;
        let allowed = ["num_pix", "pixel_scale", "supersampling", "psf", "lens", "source", "lens_light"];
        for k in root.keys() {
            if !allowed.contains(&k.as_str()) {
                return Err(LensDataError::UnknownParam {
                    section: "spec".into(),
                    index: 0,
                    profile: "spec".into(),
                    param: k.clone(),
                    expected: allowed.join(", "),
                });
            }
        }
        let missing = |param: &str| LensDataError::MissingParam {
            section: "spec".into(),
            index: 0,
            profile: "spec".into(),
            param: param.into(),
        };
        let uint = |key: &str, v: &Value| -> Result<usize> {
            v.as_u64()
                .filter(|&n| n >= 1)
                .map(|n| n as usize)
                .ok_or_else(|| LensDataError::invalid(key, v, "expected an integer >= 1"))
        };
        let num_pix = uint("num_pix", root.get("num_pix").ok_or_else(|| missing("num_pix"))?)?;
        let pixel_scale = root
            .get("pixel_scale")
            .ok_or_else(|| missing("pixel_scale"))?
            .as_f64()
            .filter(|x| x.is_finite() && *x > 0.0)
            .ok_or_else(|| LensDataError::invalid("pixel_scale", &root["pixel_scale"], "expected a number > 0"))?;
        let supersampling = match root.get("supersampling") {
            None => 1,
            Some(v) => uint("supersampling", v)?,
        };
        let psf = match root.get("psf") {
            None | Some(Value::Null) => None,
            Some(v) => {
                let p = component("psf", 0, v)?;
                match p.profile.as_str() {
                    "GAUSSIAN" => {
                        p.check_keys(&["fwhm", "truncation"])?;
                        Some(PsfSpec::Gaussian { fwhm: p.positive("fwhm")?, truncation: p.positive("truncation")? })
                    }
                    "NONE" => None,
                    other => {
                        return Err(LensDataError::UnknownProfile {
                            section: "psf".into(),
                            index: 0,
                            name: other.into(),
                            supported: "GAUSSIAN, NONE (or null)",
                        })
                    }
                }
            }
        };
        let lens = list(root, "lens", true, limits)?
            .iter()
            .enumerate()
            .map(|(i, v)| parse_lens(i, v))
            .collect::<Result<_>>()?;
        let source = list(root, "source", true, limits)?
            .iter()
            .enumerate()
            .map(|(i, v)| parse_light("source", i, v))
            .collect::<Result<_>>()?;
        let lens_light = list(root, "lens_light", false, limits)?
            .iter()
            .enumerate()
            .map(|(i, v)| parse_light("lens_light", i, v))
            .collect::<Result<_>>()?;
        let spec = Self { num_pix, pixel_scale, supersampling, psf, lens, source, lens_light };
        spec.validate(limits)?;
        Ok(spec)
    }

    /// Checks the sizes against `limits`: `num_pix`, `num_pix * supersampling`, the PSF kernel
    /// radius (`fwhm * truncation` may overflow) and the number of profiles per list. (Parsing
    /// already checks each value's own domain; a spec built in code is checked here.)
    pub fn validate(&self, limits: &Limits) -> Result<()> {
        let grid = Grid { num_pix: self.num_pix, pixel_scale: self.pixel_scale, supersampling: self.supersampling };
        validate_grid(&grid, limits)?;
        if let Some(PsfSpec::Gaussian { fwhm, truncation }) = self.psf {
            validate_psf(fwhm, truncation, self.pixel_scale, limits)?;
        }
        check_profile_count("lens", self.lens.len(), limits)?;
        check_profile_count("source", self.source.len(), limits)?;
        check_profile_count("lens_light", self.lens_light.len(), limits)
    }

    /// Serialises to pretty JSON in the same schema (round-trips through [`Self::from_json_str`]).
    pub fn to_json_string(&self) -> String {
        serde_json::to_string_pretty(self).expect("spec serialisation cannot fail")
    }
}
