//! Normalisation and the 8 symmetries of the square (dihedral group D4).

use ndarray::{s, Array2, ArrayView2, ArrayViewMut2};
use rand::Rng;

use crate::error::{LensDataError, Result};

/// How pixel values are normalised after loading (and resizing).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Normalization {
    /// Keep values as stored (u8/u16 files keep 0..255 / 0..65535).
    #[default]
    None,
    /// Per-image min-max to [0, 1] (the DeepLense convention); a constant image becomes zeros.
    MinMax,
    /// `(x - mean) / std` with fixed values.
    MeanStd {
        /// Subtracted.
        mean: f32,
        /// Divided by (must be > 0).
        std: f32,
    },
}

impl Normalization {
    /// Checks parameters.
    pub fn validate(&self) -> Result<()> {
        if let Normalization::MeanStd { mean, std } = *self {
            if !mean.is_finite() {
                return Err(LensDataError::invalid("normalization.mean", mean, "must be finite"));
            }
            if !(std > 0.0 && std.is_finite()) {
                return Err(LensDataError::invalid("normalization.std", std, "must be > 0"));
            }
        }
        Ok(())
    }

    /// Parses `none`, `minmax` (or `min-max`), `meanstd:MEAN,STD`.
    pub fn parse(s: &str) -> Result<Self> {
        let t = s.trim().to_ascii_lowercase();
        let n = match t.as_str() {
            "none" => Normalization::None,
            "minmax" | "min-max" | "min_max" => Normalization::MinMax,
            _ => {
                let rest = t.strip_prefix("meanstd:").ok_or_else(|| {
                    LensDataError::invalid("normalization", s, "expected none, minmax or meanstd:MEAN,STD")
                })?;
                let mut it = rest.split(',').map(|v| v.trim().parse::<f32>());
                match (it.next(), it.next(), it.next()) {
                    (Some(Ok(mean)), Some(Ok(std)), None) => Normalization::MeanStd { mean, std },
                    _ => return Err(LensDataError::invalid("normalization", s, "expected meanstd:MEAN,STD")),
                }
            }
        };
        n.validate()?;
        Ok(n)
    }

    /// Applies the normalisation to a slice in place.
    pub fn apply(&self, v: &mut [f32]) {
        match *self {
            Normalization::None => {}
            Normalization::MinMax => {
                let (lo, hi) = v.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &x| (a.min(x), b.max(x)));
                let span = hi - lo;
                if span > 0.0 && span.is_finite() {
                    let inv = 1.0 / span as f64;
                    v.iter_mut().for_each(|x| *x = ((*x - lo) as f64 * inv) as f32);
                } else if lo.is_finite() && hi.is_finite() && hi > lo {
                    // the f32 span overflows (e.g. -3e38..3e38): f64 holds it exactly
                    let (lo, inv) = (lo as f64, 1.0 / (hi as f64 - lo as f64));
                    v.iter_mut().for_each(|x| *x = ((*x as f64 - lo) * inv) as f32);
                } else {
                    v.iter_mut().for_each(|x| *x = 0.0);
                }
            }
            Normalization::MeanStd { mean, std } => v.iter_mut().for_each(|x| *x = (*x - mean) / std),
        }
    }
}

/// One of the 8 symmetries of the square. Lensing images have no preferred orientation, so all
/// 8 are valid augmentations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dihedral {
    /// Identity.
    Identity,
    /// Rotation by 90 degrees counter-clockwise (`np.rot90(x, 1)`).
    Rot90,
    /// Rotation by 180 degrees.
    Rot180,
    /// Rotation by 270 degrees counter-clockwise.
    Rot270,
    /// Left-right mirror (`x[:, ::-1]`).
    FlipHorizontal,
    /// Up-down mirror (`x[::-1, :]`).
    FlipVertical,
    /// Transpose (mirror about the main diagonal).
    Transpose,
    /// Mirror about the anti-diagonal.
    AntiTranspose,
}

impl Dihedral {
    /// All 8 elements.
    pub const ALL: [Dihedral; 8] = [
        Dihedral::Identity,
        Dihedral::Rot90,
        Dihedral::Rot180,
        Dihedral::Rot270,
        Dihedral::FlipHorizontal,
        Dihedral::FlipVertical,
        Dihedral::Transpose,
        Dihedral::AntiTranspose,
    ];

    /// A uniformly random element.
    pub fn random<R: Rng + ?Sized>(rng: &mut R) -> Self {
        Self::ALL[rng.random_range(0..8)]
    }

    /// A view of `img` transformed (no copy).
    pub fn view<'a, T>(self, img: ArrayView2<'a, T>) -> ArrayView2<'a, T> {
        match self {
            Dihedral::Identity => img,
            Dihedral::Rot90 => img.reversed_axes().slice_move(s![..;-1, ..]),
            Dihedral::Rot180 => img.slice_move(s![..;-1, ..;-1]),
            Dihedral::Rot270 => img.reversed_axes().slice_move(s![.., ..;-1]),
            Dihedral::FlipHorizontal => img.slice_move(s![.., ..;-1]),
            Dihedral::FlipVertical => img.slice_move(s![..;-1, ..]),
            Dihedral::Transpose => img.reversed_axes(),
            Dihedral::AntiTranspose => img.reversed_axes().slice_move(s![..;-1, ..;-1]),
        }
    }

    /// A transformed copy.
    pub fn apply<T: Clone>(self, img: ArrayView2<'_, T>) -> Array2<T> {
        self.view(img).to_owned()
    }

    /// Writes the transformed `src` into `dst` (shapes must match after transformation).
    pub fn apply_into<T: Clone>(self, src: ArrayView2<'_, T>, mut dst: ArrayViewMut2<'_, T>) {
        dst.assign(&self.view(src));
    }
}
