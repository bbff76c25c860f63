//! The crate's single error type.

use std::path::PathBuf;

/// Every failure `lens-data` reports. Each variant names the file, key or value at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LensDataError {
    /// Reading or writing a file failed.
    #[error("{path}: I/O error: {source}")]
    Io {
        /// File or directory involved.
        path: PathBuf,
        /// Underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The file is zero bytes long.
    #[error("{path}: file is empty")]
    EmptyFile {
        /// File at fault.
        path: PathBuf,
    },
    /// The file is not a valid `.npy` array (bad magic, header or version).
    #[error("{path}: not a valid .npy file: {reason}")]
    InvalidNpy {
        /// File at fault.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The `.npy` holds fewer data bytes than its header promises.
    #[error("{path}: truncated .npy: header promises {expected} data bytes, file holds {actual}")]
    Truncated {
        /// File at fault.
        path: PathBuf,
        /// Bytes the header promises.
        expected: usize,
        /// Bytes present.
        actual: usize,
    },
    /// The array's element type is not one the loader reads.
    #[error(
        "{path}: unsupported dtype '{dtype}' (supported: f2/f4/f8, u1/u2/u4/u8, i1/i2/i4/i8, b1; little or big endian)"
    )]
    UnsupportedDtype {
        /// File at fault.
        path: PathBuf,
        /// numpy dtype descriptor, e.g. `<c16`.
        dtype: String,
    },
    /// A pickled object array (`dtype=object`) whose content is not plain numeric arrays
    /// (plain `[image, extra]` files are unpacked safely and do not raise this).
    #[error(
        "{path}: holds a pickled object array (dtype 'O'){detail}; lens-data never executes pickle \
         code. Convert it once in Python: `a = np.load(p, allow_pickle=True); \
         np.save(p, np.asarray(a[0], dtype=np.float64))` (a[0] being the image)"
    )]
    PickledObjectArray {
        /// File at fault.
        path: PathBuf,
        /// Why the safe unpacker could not read it (empty when not attempted).
        detail: String,
    },
    /// The array's shape is not an image or a stack of images.
    #[error(
        "{path}: unsupported array shape {shape:?}; expected (H,W), (1,H,W), (H,W,1), (N,H,W), (N,1,H,W) or (N,H,W,1)"
    )]
    BadShape {
        /// File at fault.
        path: PathBuf,
        /// Shape found.
        shape: Vec<usize>,
    },
    /// The image holds NaN or infinite values.
    #[error("{path}: image {image} contains {count} non-finite value(s) (NaN/inf), first at flat index {first_index}")]
    NonFinite {
        /// File at fault.
        path: PathBuf,
        /// Index of the image inside the file (0 for single-image files).
        image: usize,
        /// Number of non-finite values.
        count: usize,
        /// Flat (row-major) index of the first one.
        first_index: usize,
    },
    /// Images of different sizes were loaded without a target size.
    #[error("{path}: image is {got:?} but earlier images are {expected:?}; set a target size to resize every image to one size")]
    SizeMismatch {
        /// File at fault.
        path: PathBuf,
        /// (H, W) of this image.
        got: (usize, usize),
        /// (H, W) of the first image.
        expected: (usize, usize),
    },
    /// A PNG/JPEG/TIFF could not be decoded.
    #[error("{path}: cannot decode image: {reason}")]
    ImageDecode {
        /// File at fault.
        path: PathBuf,
        /// Decoder message.
        reason: String,
    },
    /// A `.npz` archive could not be read.
    #[error("{path}: cannot read .npz archive: {reason}")]
    Npz {
        /// File at fault.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A folder holds no loadable file.
    #[error("{path}: no loadable files found (.npy, .npz, .png, .jpg, .jpeg, .tif, .tiff)")]
    EmptyFolder {
        /// Folder at fault.
        path: PathBuf,
    },
    /// A labelled-dataset root holds no class folders.
    #[error("{path}: no class folders found; expected ROOT/{{train,val}}/CLASS/*.npy or ROOT/CLASS/*.npy")]
    NoClasses {
        /// Folder at fault.
        path: PathBuf,
    },
    /// Every file was bad and `skip_bad` was set.
    #[error("{path}: all {count} files are unreadable; first error: {first}")]
    AllFilesBad {
        /// Folder at fault.
        path: PathBuf,
        /// Number of bad files.
        count: usize,
        /// The first error.
        first: Box<LensDataError>,
    },
    /// A simulation spec is not valid JSON or not an object of the expected schema.
    #[error("spec{}: {reason}", origin.as_ref().map(|p| format!(" {}", p.display())).unwrap_or_default())]
    SpecSyntax {
        /// Spec file, when read from one.
        origin: Option<PathBuf>,
        /// What is wrong.
        reason: String,
    },
    /// A profile `type` the simulator does not implement.
    #[error("spec: {section}[{index}]: unknown profile type '{name}'; supported: {supported}")]
    UnknownProfile {
        /// `lens`, `source` or `lens_light`.
        section: String,
        /// Position in the list.
        index: usize,
        /// The unknown type name.
        name: String,
        /// Supported names.
        supported: &'static str,
    },
    /// A required profile parameter is missing.
    #[error("spec: {section}[{index}] ({profile}): missing parameter '{param}'")]
    MissingParam {
        /// `lens`, `source`, `lens_light`, `psf` or `spec`.
        section: String,
        /// Position in the list.
        index: usize,
        /// Profile type.
        profile: String,
        /// Missing key.
        param: String,
    },
    /// A parameter that the profile does not take (often a typo).
    #[error("spec: {section}[{index}] ({profile}): unknown parameter '{param}'; expected: {expected}")]
    UnknownParam {
        /// `lens`, `source`, `lens_light`, `psf` or `spec`.
        section: String,
        /// Position in the list.
        index: usize,
        /// Profile type.
        profile: String,
        /// Unexpected key.
        param: String,
        /// Accepted keys.
        expected: String,
    },
    /// A parameter has a value outside its domain.
    #[error("invalid value for {name}: {value} ({reason})")]
    InvalidValue {
        /// Which parameter (e.g. `lens[2].Rs`, `num_pix`, `batch_size`).
        name: String,
        /// Offending value, as text.
        value: String,
        /// Why it is rejected.
        reason: String,
    },
    /// An input is larger than a [`crate::Limits`] ceiling allows.
    #[error("{path}: {what} is {value}, above the limit of {limit}; raise `Limits::{field}` if the input is trusted")]
    LimitExceeded {
        /// File at fault.
        path: PathBuf,
        /// What was measured (e.g. `decompressed size of member x.npy`).
        what: String,
        /// The measured or declared value.
        value: u64,
        /// The ceiling.
        limit: u64,
        /// The [`crate::Limits`] field that sets the ceiling.
        field: &'static str,
    },
    /// Finite `f64` values too large for `f32`, the loader's output type (they would silently
    /// become infinite), as stored or after normalisation.
    #[error("{path}: image {image}: {count} value(s) overflow f32 {stage} (first {value:e} at flat index {first_index}); f32 holds magnitudes up to 3.4e38")]
    F32Overflow {
        /// File at fault.
        path: PathBuf,
        /// Index of the image inside the file.
        image: usize,
        /// Number of values that overflow.
        count: usize,
        /// Flat (row-major) index of the first one.
        first_index: usize,
        /// The first such value (`inf` when it overflowed during normalisation).
        value: f64,
        /// `as stored` or `after normalisation`.
        stage: &'static str,
    },
    /// Rendering or simulating produced NaN or infinite pixels: the parameters overflow `f64`.
    #[error("{what}: {count} pixel(s) are not finite (NaN/inf), first at flat index {first_index}; the parameters overflow f64 (check amplitudes, pixel_scale, exposure)")]
    NonFiniteRender {
        /// Which image (e.g. `render` or `Model I image 3 (cdm)`).
        what: String,
        /// Number of non-finite pixels.
        count: usize,
        /// Flat (row-major) index of the first one.
        first_index: usize,
    },
    /// An unknown DeepLense class name.
    #[error("unknown lens class '{0}'; expected no_sub, cdm or axion")]
    UnknownClass(String),
}

impl LensDataError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { path: path.into(), source }
    }

    pub(crate) fn invalid(name: impl Into<String>, value: impl ToString, reason: impl Into<String>) -> Self {
        Self::InvalidValue { name: name.into(), value: value.to_string(), reason: reason.into() }
    }
}

/// `Result` with [`LensDataError`].
pub type Result<T, E = LensDataError> = std::result::Result<T, E>;
