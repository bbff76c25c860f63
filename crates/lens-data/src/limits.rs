//! Ceilings on what hostile or broken input can make the crate allocate or compute.
//!
//! Every reader first bounds sizes by what the input can actually hold (a `.npy` must contain
//! the bytes its header promises, an `.npz` member cannot inflate past deflate's 1032:1 ratio, a
//! pickle memo only holds what its file puts there). These limits are the second line: fixed
//! ceilings, generous for real lensing data, that a caller with bigger trusted inputs raises:
//!
//! ```
//! use lens_data::{Limits, LoadOptions};
//! let opts = LoadOptions {
//!     limits: Limits { max_npz_decompressed_bytes: 8 << 30, ..Limits::default() },
//!     ..LoadOptions::resized(128)
//! };
//! # let _ = opts;
//! ```
//!
//! Exceeding a file-related limit is a [`crate::LensDataError::LimitExceeded`] naming the file,
//! the value, the limit and the field to raise; a spec or configuration value outside its range is
//! a [`crate::LensDataError::InvalidValue`] giving the allowed range.

/// Ceilings on input sizes and simulation sizes. [`Limits::default`] documents each default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest file a reader loads into memory (default 4 GiB). Read through a bounded reader,
    /// so special files (`/dev/zero`) stop here too.
    pub max_file_bytes: u64,
    /// Largest decoded array of one file, counted as 8 bytes (one `f64`) per value
    /// (default 8 GiB): a `u8` file decodes to 8x its size.
    pub max_array_bytes: u64,
    /// Largest total uncompressed size of the `.npy` members of one `.npz` (default 1 GiB): stops
    /// deflate bombs (a 2 MB member can legally inflate to 2 GB).
    pub max_npz_decompressed_bytes: u64,
    /// Most values a pickle (object `.npy`) may create (default 1,000,000; numpy's
    /// `[image, extra]` files use a few dozen). Bounds memory at ~100 bytes per value.
    pub max_pickle_values: u64,
    /// Most memo entries a pickle may store (default 100,000). The memo is a map, so a huge
    /// index (`LONG_BINPUT 0xFFFFFFFF`) costs one entry, not a table up to that index.
    pub max_pickle_memo: u64,
    /// Most nodes visited while looking for arrays in the pickled tree (default 1,000,000): memo
    /// references let a small file describe an exponentially large tree.
    pub max_pickle_visits: u64,
    /// Largest simulated image side `num_pix` (default 4096).
    pub max_num_pix: usize,
    /// Largest evaluation grid side, `num_pix * supersampling` (default 4096: 16.7 M points,
    /// ~1 GB of coordinates, deflections and flux).
    pub max_grid_side: usize,
    /// Largest Gaussian PSF kernel radius in pixels, `int(truncation * sigma + 0.5)`
    /// (default 1024).
    pub max_psf_radius: usize,
    /// Most profiles in one spec list (`lens`, `source`, `lens_light`) and most subhalos /
    /// vortex point masses in Model I (`cdm_count`, `axion_count`) (default 10,000).
    pub max_profiles: usize,
    /// Most images one simulation call makes (default 1,000,000); in memory they also have to
    /// fit `max_array_bytes`.
    pub max_count: usize,
    /// Largest spec file (default 16 MiB; 10,000 profiles take ~2 MB).
    pub max_spec_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_file_bytes: 4 << 30,
            max_array_bytes: 8 << 30,
            max_npz_decompressed_bytes: 1 << 30,
            max_pickle_values: 1_000_000,
            max_pickle_memo: 100_000,
            max_pickle_visits: 1_000_000,
            max_num_pix: 4096,
            max_grid_side: 4096,
            max_psf_radius: 1024,
            max_profiles: 10_000,
            max_count: 1_000_000,
            max_spec_bytes: 16 << 20,
        }
    }
}

impl Limits {
    /// No ceilings beyond what the input itself holds (every field at its type's maximum). For
    /// trusted inputs only: a hostile file can then exhaust memory or time.
    pub fn unlimited() -> Self {
        Self {
            max_file_bytes: u64::MAX,
            max_array_bytes: u64::MAX,
            max_npz_decompressed_bytes: u64::MAX,
            max_pickle_values: u64::MAX,
            max_pickle_memo: u64::MAX,
            max_pickle_visits: u64::MAX,
            max_num_pix: usize::MAX,
            max_grid_side: usize::MAX,
            max_psf_radius: usize::MAX,
            max_profiles: usize::MAX,
            max_count: usize::MAX,
            max_spec_bytes: u64::MAX,
        }
    }
}

/// Reads at most `limit` bytes of `r` into `buf` (cleared first); more is a
/// [`crate::LensDataError::LimitExceeded`] on `max_file_bytes`-style `field`. `size_hint` (the
/// file's metadata length) is only trusted up to the limit.
pub(crate) fn read_bounded(
    r: impl std::io::Read,
    path: &std::path::Path,
    size_hint: u64,
    limit: u64,
    field: &'static str,
    buf: &mut Vec<u8>,
) -> crate::Result<()> {
    use std::io::Read;
    buf.clear();
    if size_hint > limit {
        return Err(exceeded(path, "file size in bytes", size_hint, limit, field));
    }
    buf.reserve(usize::try_from(size_hint).unwrap_or(0).saturating_add(1));
    r.take(limit.saturating_add(1)).read_to_end(buf).map_err(|e| crate::LensDataError::io(path, e))?;
    if buf.len() as u64 > limit {
        // a special file or one still growing: its length is unknown, only that it is larger
        return Err(exceeded(path, "file size in bytes (at least)", buf.len() as u64, limit, field));
    }
    Ok(())
}

pub(crate) fn exceeded(
    path: &std::path::Path,
    what: &str,
    value: u64,
    limit: u64,
    field: &'static str,
) -> crate::LensDataError {
    crate::LensDataError::LimitExceeded { path: path.to_path_buf(), what: what.into(), value, limit, field }
}
