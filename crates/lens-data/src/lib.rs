//! # lens-data
//!
//! Strong-lensing image data for the lensing-diffusion workspace: load what users have on disk
//! (every DeepLense layout), resize it exactly as the PyTorch recipe does, and *make* realistic
//! lensing data with a simulator that reproduces lenstronomy to ~1e-15 relative.
//! The crate is independent of any training code: it hands out plain `ndarray` arrays.
//!
//! ## Loading ([`load`])
//! ```no_run
//! use lens_data::load::{load_folder, load_labelled, LoadOptions};
//! use lens_data::transform::Normalization;
//! # fn main() -> lens_data::Result<()> {
//! // DeepLense diffusion set: Samples/sample{1..10000}.npy, f64 (1,150,150) -> 128x128
//! let set = load_folder("Samples", &LoadOptions::resized(128))?;
//! assert_eq!(set.images.dim().1, 128); // images: Array3<f32> [N, H, W]
//! for w in &set.warnings { eprintln!("warning: {w}"); }
//! // Labelled layout dataset/{train,val}/{no,sphere,vort}/*.npy
//! let opts = LoadOptions { target_size: Some((128, 128)), normalization: Normalization::MinMax,
//!                          skip_bad: true, ..Default::default() };
//! let ds = load_labelled("dataset", &opts)?;
//! println!("{:?} {} train", ds.class_names, ds.train.len());
//! # Ok(()) }
//! ```
//! - [`load::load_folder`]`(dir, &LoadOptions) -> Result<ImageSet>`: every `.npy` / `.npz` /
//!   PNG / JPEG / TIFF file in a folder, natural file-name order (`sample2` before `sample10`).
//! - [`load::load_labelled`]`(root, &LoadOptions) -> Result<LabelledDataset>`:
//!   `ROOT/{train,val}/CLASS/*` or `ROOT/CLASS/*`; labels index sorted class names.
//! - [`load::load_files`]`(&[PathBuf], &LoadOptions)`, [`load::load_path`] (file or folder),
//!   [`load::load_file`]`(path) -> Result<Vec<Array2<f64>>>` (raw values of one file).
//! - `.npy` shapes `(H,W)`, `(1,H,W)`, `(H,W,1)`, stacks `(N,H,W)`, `(N,1,H,W)`, `(N,H,W,1)`;
//!   dtypes f2/f4/f8, u1..u8, i1..i8, bool, either endianness, C or Fortran order. Colour
//!   (PNG/JPEG/TIFF 8/16-bit, or `(H,W,3|4)` arrays) -> luminance, reported as a
//!   [`dataset::LoadWarning`]. Pickled object arrays (`[image, extra]`) are never executed: a
//!   data-only reader takes the numeric arrays out of numpy's pickle records; anything else is
//!   a typed error naming the file and giving the one-line conversion.
//! - Empty / truncated / corrupt / NaN-containing / wrongly shaped files: a typed
//!   [`LensDataError`] naming the file; with `skip_bad` they are skipped, listed in
//!   `ImageSet::warnings` and counted in `ImageSet::skipped`. Empty folder: error.
//! - Decoding, resizing and normalisation run in parallel over files (rayon).
//!
//! ## Resizing, normalisation, augmentation, batches
//! - [`resize::resize_bilinear_aa`]`(view, (h, w)) -> Array2<f32>` / [`resize::Resizer`]:
//!   antialiased bilinear, identical to PIL `BILINEAR` and torch
//!   `interpolate(mode="bilinear", antialias=True)` (tested to 1e-12 against torch f64).
//! - [`transform::Normalization`]: `None`, `MinMax` (per image, to [0,1]), `MeanStd{mean,std}`.
//! - [`transform::Dihedral`]: the 8 symmetries of the square.
//! - [`dataset::ImageSet`]: `images: Array3<f32>`, `labels: Option<Vec<usize>>`,
//!   `split(val_fraction, seed)` (seeded, stratified), `batches(&BatchConfig, epoch)` ->
//!   iterator of [`dataset::Batch`] `{ images: Array4<f32> [B,1,H,W], labels, indices }`.
//!
//! ## Simulation ([`simulate`], [`render`], [`spec`])
//! - [`render::render`]`(&SimulationSpec) -> Result<Array2<f64>>`: a noise-free image from a
//!   spec in the JSON schema of `make_lens_fixtures.py` ([`spec::SimulationSpec::from_json_file`]),
//!   lens profiles SIE, SIS, SHEAR, POINT_MASS, NFW, TNFW; light SERSIC, SERSIC_ELLIPSE; pixel
//!   grid, supersampling, Gaussian PSF with truncation; pixel value = surface brightness x area.
//! - [`simulate::ModelI`] (DeepLenseSim Model I, `Default` = the recipe), [`simulate::LensClass`]
//!   (`NoSub`, `Cdm`, `Axion`), [`simulate::ModelISimulator`]`::simulate(class, seed, index)`,
//!   [`simulate::simulate_dataset`]`(&ModelI, &[LensClass], count, seed) -> Result<SimulatedSet>`
//!   (`images: Array3<f64>`, `labels`), parallel and seeded per image (ChaCha8, stream = index).
//! - [`write::write_model_i_dataset`] writes DeepLense layouts (f64 `(1,N,N)` files, atomic).
//!
//! Commands (the root package's `lensing-diffusion`): `lensing-diffusion simulate --spec S.json
//! --out image.npy`, `lensing-diffusion make-dataset --out DIR --count N`.
//!
//! ## Hostile input and [`Limits`]
//! Bad input ends in a typed [`LensDataError`] naming the file, key or value - never a panic,
//! an abort, a stack overflow, a hang or a silently wrong value. Sizes in headers are checked
//! (overflow-safe) against what the file holds before anything is allocated; then fixed ceilings
//! apply, each a public [`Limits`] field a caller can raise (`LoadOptions::limits`,
//! `ModelI::limits`, the `*_with_limits` functions):
//!
//! | field | default | bounds |
//! |---|---|---|
//! | `max_file_bytes` | 4 GiB | any file read whole (`/dev/zero` included) |
//! | `max_array_bytes` | 8 GiB | decoded values of one file (8 bytes each), loader / simulator output |
//! | `max_npz_decompressed_bytes` | 1 GiB | all `.npy` members of one `.npz` (deflate bombs) |
//! | `max_pickle_values` / `_memo` / `_visits` | 1 M / 100 k / 1 M | object-array pickles |
//! | `max_num_pix` / `max_grid_side` | 4096 / 4096 | `num_pix`, `num_pix * supersampling` |
//! | `max_psf_radius` | 1024 px | Gaussian PSF kernel radius |
//! | `max_profiles` | 10,000 | profiles per spec list, `cdm_count`, `axion_count` |
//! | `max_count` | 1,000,000 | images per simulation call |
//! | `max_spec_bytes` | 16 MiB | spec files |
//!
//! Exceeding one is [`LensDataError::LimitExceeded`] (files) or
//! [`LensDataError::InvalidValue`] with the allowed range (specs, configurations). Finite `f64`
//! pixels beyond `f32` are [`LensDataError::F32Overflow`]; a render or simulation whose pixels
//! overflow is [`LensDataError::NonFiniteRender`] (use `ModelISimulator::try_simulate_into`).
//! `tests/hostile.rs` holds the examples and property tests.
//!
//! ## Feature flags
//! - `burn` (off by default): `dataset::Batch::to_tensor::<B>(&device) -> Tensor<B, 4>`.
//!
//! See `ARCHITECTURE.md` in this crate for the decisions taken and rejected.
#![warn(missing_docs)]

pub mod dataset;
pub mod error;
pub mod limits;
pub mod load;
pub mod npy;
mod pickle;
pub mod render;
pub mod resize;
pub mod simulate;
pub mod spec;
pub mod transform;
pub mod write;

pub use dataset::{Batch, BatchConfig, ImageSet, LoadWarning};
pub use error::{LensDataError, Result};
pub use limits::Limits;
pub use load::{load_folder, load_labelled, LabelledDataset, LoadOptions};
pub use simulate::{simulate_dataset, LensClass, ModelI};
pub use spec::SimulationSpec;
pub use transform::{Dihedral, Normalization};
