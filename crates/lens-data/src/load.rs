//! Loading lensing images from disk, in every layout DeepLense users have: a folder of `.npy`
//! files, one stacked `.npy`, `.npz` archives, PNG/JPEG/TIFF, and the labelled layout
//! `ROOT/{train,val}/CLASS/*.npy`. Decoding, checking, resizing and normalisation run in
//! parallel over files (rayon; set `RAYON_NUM_THREADS` or use a rayon pool to limit threads).

use std::collections::BTreeSet;
use std::io::{Cursor, Read};
use std::path::{Path, PathBuf};

use ndarray::{Array2, Array3};
use rayon::prelude::*;

use crate::dataset::{ImageSet, ImageSource, LoadWarning};
use crate::error::{LensDataError, Result};
use crate::limits::{exceeded, Limits};
use crate::npy::{parse_npy_into_with_limits, read_file_bounded};
use crate::resize::Resizer;
use crate::transform::Normalization;

/// File extensions the loader reads (lower case).
pub const EXTENSIONS: [&str; 7] = ["npy", "npz", "png", "jpg", "jpeg", "tif", "tiff"];

/// Loader settings.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LoadOptions {
    /// Resize every image to (H, W) with the antialiased bilinear filter ([`crate::resize`]);
    /// `None` keeps the stored size (then all images must have the same size).
    pub target_size: Option<(usize, usize)>,
    /// Normalisation applied after resizing.
    pub normalization: Normalization,
    /// Skip unreadable / invalid files (each becomes a [`LoadWarning::SkippedFile`] and is
    /// counted in [`ImageSet::skipped`]) instead of failing on the first one.
    pub skip_bad: bool,
    /// Also look into sub-folders (for [`load_folder`]).
    pub recursive: bool,
    /// Ceilings on file, array and archive sizes (see [`Limits`]).
    pub limits: Limits,
}

impl LoadOptions {
    /// The DeepLense diffusion recipe: resize to `size` x `size`, no further normalisation (the
    /// files are already min-max normalised).
    pub fn resized(size: usize) -> Self {
        Self { target_size: Some((size, size)), ..Self::default() }
    }
}

/// One decoded image before resizing: shape and f64 values (row-major).
struct RawImage {
    h: usize,
    w: usize,
    data: Vec<f64>,
    colour: bool,
}

fn is_loadable(p: &Path) -> bool {
    p.extension().and_then(|e| e.to_str()).is_some_and(|e| EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Natural ordering: digit runs compare as numbers, so `sample2` < `sample10`.
pub fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    while !a.is_empty() && !b.is_empty() {
        if a[0].is_ascii_digit() && b[0].is_ascii_digit() {
            let la = a.iter().take_while(|c| c.is_ascii_digit()).count();
            let lb = b.iter().take_while(|c| c.is_ascii_digit()).count();
            let (da, db) = (&a[..la], &b[..lb]);
            let ta = da.iter().position(|&c| c != b'0').map_or(&da[da.len()..], |p| &da[p..]);
            let tb = db.iter().position(|&c| c != b'0').map_or(&db[db.len()..], |p| &db[p..]);
            let o = ta.len().cmp(&tb.len()).then_with(|| ta.cmp(tb)).then_with(|| la.cmp(&lb));
            if o != Ordering::Equal {
                return o;
            }
            a = &a[la..];
            b = &b[lb..];
        } else {
            if a[0] != b[0] {
                return a[0].cmp(&b[0]);
            }
            a = &a[1..];
            b = &b[1..];
        }
    }
    a.len().cmp(&b.len())
}

/// Loadable files in `dir` (hidden files ignored), in natural order of their paths.
pub fn list_image_files(dir: impl AsRef<Path>, recursive: bool) -> Result<Vec<PathBuf>> {
    fn walk(dir: &Path, recursive: bool, out: &mut Vec<PathBuf>) -> Result<()> {
        let rd = std::fs::read_dir(dir).map_err(|e| LensDataError::io(dir, e))?;
        for entry in rd {
            let entry = entry.map_err(|e| LensDataError::io(dir, e))?;
            let p = entry.path();
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let ft = entry.file_type().map_err(|e| LensDataError::io(&p, e))?;
            let is_dir = ft.is_dir() || (ft.is_symlink() && p.is_dir());
            if is_dir {
                if recursive {
                    walk(&p, recursive, out)?;
                }
            } else if is_loadable(&p) {
                out.push(p);
            }
        }
        Ok(())
    }
    let dir = dir.as_ref();
    let mut out = Vec::new();
    walk(dir, recursive, &mut out)?;
    out.sort_by(|a, b| natural_cmp(&a.to_string_lossy(), &b.to_string_lossy()));
    Ok(out)
}

/// Splits a decoded array into images by its shape (see [`LensDataError::BadShape`]).
fn split_array(shape: &[usize], data: Vec<f64>, path: &Path, out: &mut Vec<RawImage>) -> Result<()> {
    let bad = || LensDataError::BadShape { path: path.to_path_buf(), shape: shape.to_vec() };
    let (n, h, w, channels) = match *shape {
        [h, w] => (1, h, w, 1),
        [1, h, w] => (1, h, w, 1),
        [h, w, 1] => (1, h, w, 1),
        [h, w, c @ (3 | 4)] if h > 4 && w > 4 => (1, h, w, c),
        [n, h, w] => (n, h, w, 1),
        [n, 1, h, w] => (n, h, w, 1),
        [n, h, w, 1] => (n, h, w, 1),
        _ => return Err(bad()),
    };
    if n == 0 || h == 0 || w == 0 {
        return Err(bad());
    }
    if channels > 1 {
        out.push(RawImage { h, w, data: luminance(&data, channels), colour: true });
        return Ok(());
    }
    if n == 1 {
        out.push(RawImage { h, w, data, colour: false });
    } else {
        for chunk in data.chunks_exact(h * w) {
            out.push(RawImage { h, w, data: chunk.to_vec(), colour: false });
        }
    }
    Ok(())
}

/// ITU-R 601 luminance of interleaved RGB(A) values (alpha ignored).
fn luminance(data: &[f64], channels: usize) -> Vec<f64> {
    data.chunks_exact(channels).map(|p| 0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2]).collect()
}

/// Deflate's largest possible expansion (each 258-byte match costs at least 2 bits): an `.npz`
/// member declaring more than this over its compressed size is lying.
const DEFLATE_MAX_RATIO: u64 = 1032;

fn decode_npz(bytes: &[u8], path: &Path, limits: &Limits, out: &mut Vec<RawImage>) -> Result<()> {
    use zip::CompressionMethod;
    let npz_err = |reason: String| LensDataError::Npz { path: path.to_path_buf(), reason };
    let mut zip = zip::ZipArchive::new(Cursor::new(bytes)).map_err(|e| npz_err(e.to_string()))?;
    let mut names: Vec<String> = zip.file_names().filter(|n| n.ends_with(".npy")).map(str::to_string).collect();
    if names.is_empty() {
        return Err(npz_err("archive holds no .npy member".into()));
    }
    names.sort_by(|a, b| natural_cmp(a, b));
    let mut inflated = 0u64;
    let mut buf = Vec::new();
    for name in names {
        let f = zip.by_name(&name).map_err(|e| npz_err(format!("{name}: {e}")))?;
        // Sizes in the zip directory are claims: check them against the archive before trusting
        // them with an allocation.
        let (declared, packed) = (f.size(), f.compressed_size());
        if packed > bytes.len() as u64 {
            return Err(npz_err(format!(
                "{name}: declares {packed} compressed bytes, but the whole archive is {} bytes",
                bytes.len()
            )));
        }
        let most = match f.compression() {
            CompressionMethod::Stored => packed,
            CompressionMethod::Deflated => packed.saturating_mul(DEFLATE_MAX_RATIO).saturating_add(64),
            other => {
                return Err(npz_err(format!(
                    "{name}: unsupported compression {other:?} (numpy writes stored or deflate)"
                )))
            }
        };
        if declared > most {
            return Err(npz_err(format!(
                "{name}: declares {declared} bytes uncompressed, but its {packed} compressed bytes can hold at most {most}"
            )));
        }
        let total = inflated.saturating_add(declared);
        if total > limits.max_npz_decompressed_bytes {
            return Err(exceeded(
                path,
                &format!("uncompressed size in bytes of the .npy members up to {name}"),
                total,
                limits.max_npz_decompressed_bytes,
                "max_npz_decompressed_bytes",
            ));
        }
        buf.clear();
        buf.reserve(declared as usize);
        // One byte more than declared shows a member that inflates past its claim.
        f.take(declared.saturating_add(1)).read_to_end(&mut buf).map_err(|e| npz_err(format!("{name}: {e}")))?;
        if buf.len() as u64 > declared {
            return Err(npz_err(format!("{name}: inflates to more than its declared {declared} bytes")));
        }
        inflated = total;
        let member = path.join(&name);
        let mut data = Vec::new();
        let shape = parse_npy_into_with_limits(&buf, &member, &mut data, limits)?;
        split_array(&shape, data, &member, out)?;
    }
    Ok(())
}

fn decode_raster(bytes: &[u8], path: &Path, out: &mut Vec<RawImage>) -> Result<()> {
    use image::DynamicImage as D;
    let err = |reason: String| LensDataError::ImageDecode { path: path.to_path_buf(), reason };
    let img = image::ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| err(e.to_string()))?
        .decode()
        .map_err(|e| err(e.to_string()))?;
    let (w, h) = (img.width() as usize, img.height() as usize);
    if w == 0 || h == 0 {
        return Err(LensDataError::BadShape { path: path.to_path_buf(), shape: vec![h, w] });
    }
    let (data, colour): (Vec<f64>, bool) = match &img {
        D::ImageLuma8(b) => (b.as_raw().iter().map(|&v| v as f64).collect(), false),
        D::ImageLumaA8(b) => (b.as_raw().chunks_exact(2).map(|p| p[0] as f64).collect(), false),
        D::ImageLuma16(b) => (b.as_raw().iter().map(|&v| v as f64).collect(), false),
        D::ImageLumaA16(b) => (b.as_raw().chunks_exact(2).map(|p| p[0] as f64).collect(), false),
        D::ImageRgb8(b) => (luminance(&b.as_raw().iter().map(|&v| v as f64).collect::<Vec<_>>(), 3), true),
        D::ImageRgba8(b) => (luminance(&b.as_raw().iter().map(|&v| v as f64).collect::<Vec<_>>(), 4), true),
        D::ImageRgb16(b) => (luminance(&b.as_raw().iter().map(|&v| v as f64).collect::<Vec<_>>(), 3), true),
        D::ImageRgba16(b) => (luminance(&b.as_raw().iter().map(|&v| v as f64).collect::<Vec<_>>(), 4), true),
        D::ImageRgb32F(b) => (luminance(&b.as_raw().iter().map(|&v| v as f64).collect::<Vec<_>>(), 3), true),
        D::ImageRgba32F(b) => (luminance(&b.as_raw().iter().map(|&v| v as f64).collect::<Vec<_>>(), 4), true),
        other => {
            let b = other.to_rgb32f();
            (luminance(&b.as_raw().iter().map(|&v| v as f64).collect::<Vec<_>>(), 3), true)
        }
    };
    out.push(RawImage { h, w, data, colour });
    Ok(())
}

fn decode_bytes(
    bytes: &[u8],
    path: &Path,
    limits: &Limits,
    npy_buf: &mut Vec<f64>,
    out: &mut Vec<RawImage>,
) -> Result<()> {
    if bytes.is_empty() {
        return Err(LensDataError::EmptyFile { path: path.to_path_buf() });
    }
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    match ext.as_str() {
        "npy" => {
            let shape = parse_npy_into_with_limits(bytes, path, npy_buf, limits)?;
            split_array(&shape, std::mem::take(npy_buf), path, out)
        }
        "npz" => decode_npz(bytes, path, limits, out),
        _ => decode_raster(bytes, path, out),
    }
}

/// Reads every image a file holds, as f64 (values as stored; colour -> luminance), under
/// [`Limits::default`].
pub fn load_file(path: impl AsRef<Path>) -> Result<Vec<Array2<f64>>> {
    load_file_with_limits(path, &Limits::default())
}

/// As [`load_file`], under `limits`.
pub fn load_file_with_limits(path: impl AsRef<Path>, limits: &Limits) -> Result<Vec<Array2<f64>>> {
    let path = path.as_ref();
    let mut bytes = Vec::new();
    read_file_bounded(path, limits, &mut bytes)?;
    load_bytes(&bytes, path, limits)
}

/// Decodes the contents of one file already in memory (e.g. received over a network): the
/// extension of `path` picks the format and `path` names the file in errors.
pub fn load_bytes(bytes: &[u8], path: &Path, limits: &Limits) -> Result<Vec<Array2<f64>>> {
    let mut raw = Vec::new();
    decode_bytes(bytes, path, limits, &mut Vec::new(), &mut raw)?;
    raw.into_iter()
        .enumerate()
        .map(|(i, r)| {
            check_finite(&r.data, path, i)?;
            Ok(Array2::from_shape_vec((r.h, r.w), r.data).expect("shape matches"))
        })
        .collect()
}

fn check_finite(v: &[f64], path: &Path, image: usize) -> Result<()> {
    if v.iter().all(|x| x.is_finite()) {
        return Ok(());
    }
    let count = v.iter().filter(|x| !x.is_finite()).count();
    let first_index = v.iter().position(|x| !x.is_finite()).unwrap_or(0);
    Err(LensDataError::NonFinite { path: path.to_path_buf(), image, count, first_index })
}

/// As [`check_finite`], and every value must fit `f32` (the loader's output type), where a
/// finite `f64` above `f32::MAX` would silently become infinite.
fn check_f32_range(v: &[f64], path: &Path, image: usize) -> Result<()> {
    const MAX: f64 = f32::MAX as f64;
    // one branch-free pass in the common case; NaN fails the comparison too
    if v.iter().all(|x| x.abs() <= MAX) {
        return Ok(());
    }
    check_finite(v, path, image)?;
    let count = v.iter().filter(|x| x.abs() > MAX).count();
    let first_index = v.iter().position(|x| x.abs() > MAX).unwrap_or(0);
    Err(LensDataError::F32Overflow {
        path: path.to_path_buf(),
        image,
        count,
        first_index,
        value: v[first_index],
        stage: "as stored",
    })
}

/// The normalised output must still be finite (`MeanStd` with a tiny `std` can overflow).
fn check_normalised(v: &[f32], path: &Path, image: usize) -> Result<()> {
    match v.iter().position(|x| !x.is_finite()) {
        None => Ok(()),
        Some(first_index) => Err(LensDataError::F32Overflow {
            path: path.to_path_buf(),
            image,
            count: v.iter().filter(|x| !x.is_finite()).count(),
            first_index,
            value: v[first_index] as f64,
            stage: "after normalisation",
        }),
    }
}

/// The processed images of one file.
struct FileImages {
    shape: (usize, usize),
    images: Vec<Vec<f32>>,
    colour: usize,
    /// The single image was written straight into the caller's output slot.
    in_place: bool,
}

struct Worker {
    bytes: Vec<u8>,
    npy: Vec<f64>,
    scratch: Vec<f64>,
    resizer: Option<Resizer>,
}

fn read_into(path: &Path, limits: &Limits, buf: &mut Vec<u8>) -> Result<()> {
    read_file_bounded(path, limits, buf)
}

/// `data` (`in_shape`, row-major) resized to `out_shape` into `dst`, or converted when the
/// shapes agree; the worker's resizer is rebuilt only when the shapes change.
fn resize_or_copy(data: &[f64], in_shape: (usize, usize), out_shape: (usize, usize), w: &mut Worker, dst: &mut [f32]) {
    if out_shape == in_shape {
        dst.iter_mut().zip(data).for_each(|(d, &x)| *d = x as f32);
    } else {
        if w.resizer.as_ref().is_none_or(|r| r.in_shape() != in_shape || r.out_shape() != out_shape) {
            w.resizer = Some(Resizer::new(in_shape, out_shape));
        }
        w.resizer.as_ref().expect("set above").resize_into(data, dst, &mut w.scratch);
    }
}

/// Zero-copy fast path for the DeepLense case: a little-endian f64, C-order `.npy` holding one
/// image, resized straight from the read buffer. Returns `None` when the file is anything else.
fn fast_f64_npy(
    bytes: &[u8],
    path: &Path,
    opts: &LoadOptions,
    w: &mut Worker,
    dst: &mut [f32],
) -> Option<Result<FileImages>> {
    if !cfg!(target_endian = "little") || path.extension().and_then(|e| e.to_str()) != Some("npy") {
        return None;
    }
    let out_shape = opts.target_size?;
    let h = crate::npy::parse_header(bytes, path).ok()?;
    if h.descr != "<f8" || h.fortran {
        return None;
    }
    let (ih, iw) = match h.shape[..] {
        [1, a, b] | [a, b] | [a, b, 1] if a > 0 && b > 0 => (a, b),
        _ => return None,
    };
    // Checked: a hostile (2^32, 2^32) shape would wrap to 0 bytes. Anything odd goes the
    // general path, which reports it.
    let count = ih.checked_mul(iw)?;
    let end = count.checked_mul(8)?.checked_add(h.data_offset)?;
    let data = bytes.get(h.data_offset..end)?;
    // SAFETY: every bit pattern is a valid f64; `align_to` only hands out the aligned middle.
    let (pre, vals, _) = unsafe { data.align_to::<f64>() };
    if !pre.is_empty() || vals.len() < count {
        return None;
    }
    let vals = &vals[..count];
    if let Err(e) = check_f32_range(vals, path, 0) {
        return Some(Err(e));
    }
    resize_or_copy(vals, (ih, iw), out_shape, w, dst);
    opts.normalization.apply(dst);
    if let Err(e) = check_normalised(dst, path, 0) {
        return Some(Err(e));
    }
    Some(Ok(FileImages { shape: out_shape, images: Vec::new(), colour: 0, in_place: true }))
}

fn process_file(path: &Path, opts: &LoadOptions, w: &mut Worker, mut dst: Option<&mut [f32]>) -> Result<FileImages> {
    let mut raw = Vec::new();
    let mut bytes = std::mem::take(&mut w.bytes);
    if let Err(e) = read_into(path, &opts.limits, &mut bytes) {
        w.bytes = bytes;
        return Err(e);
    }
    if let Some(d) = dst.as_deref_mut() {
        if let Some(r) = fast_f64_npy(&bytes, path, opts, w, d) {
            w.bytes = bytes;
            return r;
        }
    }
    let r = decode_bytes(&bytes, path, &opts.limits, &mut w.npy, &mut raw);
    w.bytes = bytes;
    r?;
    // fast path: one image, known output size -> straight into the output array
    if let (Some(dst), Some(out_shape), 1) = (dst, opts.target_size, raw.len()) {
        let img = raw.pop().expect("one image");
        check_f32_range(&img.data, path, 0)?;
        resize_or_copy(&img.data, (img.h, img.w), out_shape, w, dst);
        opts.normalization.apply(dst);
        check_normalised(dst, path, 0)?;
        let colour = img.colour as usize;
        w.npy = img.data;
        return Ok(FileImages { shape: out_shape, images: Vec::new(), colour, in_place: true });
    }
    let mut images = Vec::with_capacity(raw.len());
    let mut shape = (0, 0);
    let mut colour = 0;
    for (i, img) in raw.into_iter().enumerate() {
        check_f32_range(&img.data, path, i)?;
        colour += img.colour as usize;
        let out_shape = opts.target_size.unwrap_or((img.h, img.w));
        if i > 0 && out_shape != shape {
            return Err(LensDataError::SizeMismatch { path: path.to_path_buf(), got: out_shape, expected: shape });
        }
        shape = out_shape;
        let mut v = vec![0.0f32; out_shape.0 * out_shape.1];
        resize_or_copy(&img.data, (img.h, img.w), out_shape, w, &mut v);
        opts.normalization.apply(&mut v);
        check_normalised(&v, path, i)?;
        images.push(v);
        // give the decode buffer back for reuse
        if w.npy.capacity() < img.data.capacity() {
            w.npy = img.data;
        }
    }
    Ok(FileImages { shape, images, colour, in_place: false })
}

/// Loads `(path, label)` entries in parallel and assembles an [`ImageSet`].
fn load_entries(
    entries: &[(PathBuf, usize)],
    labelled: bool,
    class_names: Vec<String>,
    opts: &LoadOptions,
    origin: &Path,
) -> Result<ImageSet> {
    opts.normalization.validate()?;
    if let Some((h, w)) = opts.target_size {
        if h == 0 || w == 0 {
            return Err(LensDataError::invalid("target_size", format!("{h}x{w}"), "must be >= 1x1"));
        }
        // the f32 output array is allocated up front: check its size before asking for it
        let bytes = (h as u64).saturating_mul(w as u64).saturating_mul(4).saturating_mul(entries.len() as u64);
        if bytes > opts.limits.max_array_bytes {
            return Err(LensDataError::invalid(
                "target_size",
                format!("{h}x{w}"),
                format!(
                    "{} files at this size take {bytes} bytes as f32, above Limits::max_array_bytes = {}",
                    entries.len(),
                    opts.limits.max_array_bytes
                ),
            ));
        }
    }
    if entries.is_empty() {
        return Err(LensDataError::EmptyFolder { path: origin.to_path_buf() });
    }
    let worker = || Worker { bytes: Vec::new(), npy: Vec::new(), scratch: Vec::new(), resizer: None };
    // With a target size, each file's slot in the output is known in advance (one image per
    // file is the common case), so workers write straight into it; other files go the general way.
    let plane = opts.target_size.map(|(h, w)| h * w);
    let mut buf: Vec<f32> = plane.map_or_else(Vec::new, |p| vec![0.0; p * entries.len()]);
    let results: Vec<Result<FileImages>> = match plane {
        Some(p) => buf
            .par_chunks_mut(p)
            .zip(entries.par_iter())
            .map_init(worker, |w, (dst, (path, _))| process_file(path, opts, w, Some(dst)))
            .collect(),
        None => entries.par_iter().map_init(worker, |w, (path, _)| process_file(path, opts, w, None)).collect(),
    };

    let mut warnings = Vec::new();
    let mut skipped = 0;
    let mut first_err: Option<LensDataError> = None;
    let mut shape: Option<(usize, usize)> = None;
    let mut colour = 0usize;
    let mut first_colour: Option<PathBuf> = None;
    let mut kept: Vec<(&PathBuf, usize, FileImages, usize)> = Vec::with_capacity(results.len());
    for (idx, ((path, label), r)) in entries.iter().zip(results).enumerate() {
        let r = r.and_then(|f| match shape {
            Some(s) if s != f.shape => {
                Err(LensDataError::SizeMismatch { path: path.clone(), got: f.shape, expected: s })
            }
            _ => Ok(f),
        });
        match r {
            Ok(f) => {
                shape = Some(f.shape);
                if f.colour > 0 {
                    colour += f.colour;
                    first_colour.get_or_insert_with(|| path.clone());
                }
                kept.push((path, *label, f, idx));
            }
            Err(e) if opts.skip_bad => {
                warnings.push(LoadWarning::SkippedFile { path: path.clone(), error: e.to_string() });
                skipped += 1;
                first_err.get_or_insert(e);
            }
            Err(e) => return Err(e),
        }
    }
    let Some((h, w)) = shape else {
        return Err(match first_err {
            Some(e) => LensDataError::AllFilesBad { path: origin.to_path_buf(), count: skipped, first: Box::new(e) },
            None => LensDataError::EmptyFolder { path: origin.to_path_buf() },
        });
    };
    if let Some(first) = first_colour {
        warnings.push(LoadWarning::ConvertedToLuminance { count: colour, first });
    }
    let plane = h * w;
    let mut sources = Vec::with_capacity(kept.len());
    let mut labels = Vec::with_capacity(kept.len());
    let all_in_place = kept.len() == entries.len() && kept.iter().all(|k| k.2.in_place);
    let images = if all_in_place {
        for (path, label, _, _) in &kept {
            sources.push(ImageSource { path: (*path).clone(), index: 0 });
            labels.push(*label);
        }
        Array3::from_shape_vec((kept.len(), h, w), buf).expect("one plane per file")
    } else {
        let mut slots: Vec<&[f32]> = Vec::new();
        for (path, label, f, idx) in &kept {
            if f.in_place {
                slots.push(&buf[idx * plane..(idx + 1) * plane]);
                sources.push(ImageSource { path: (*path).clone(), index: 0 });
                labels.push(*label);
            } else {
                for (i, img) in f.images.iter().enumerate() {
                    slots.push(img);
                    sources.push(ImageSource { path: (*path).clone(), index: i });
                    labels.push(*label);
                }
            }
        }
        let mut images = Array3::<f32>::zeros((slots.len(), h, w));
        images
            .as_slice_mut()
            .expect("fresh array is contiguous")
            .par_chunks_mut(plane)
            .zip(slots.par_iter())
            .for_each(|(dst, src)| dst.copy_from_slice(src));
        images
    };
    Ok(ImageSet { images, labels: labelled.then_some(labels), class_names, sources, warnings, skipped })
}

/// Loads the given files (any supported format; a file may hold several images).
pub fn load_files(paths: &[PathBuf], opts: &LoadOptions) -> Result<ImageSet> {
    let entries: Vec<(PathBuf, usize)> = paths.iter().map(|p| (p.clone(), 0)).collect();
    let origin = paths.first().and_then(|p| p.parent()).unwrap_or(Path::new("."));
    load_entries(&entries, false, Vec::new(), opts, origin)
}

/// Loads every supported file of a folder (e.g. DeepLense `Samples/sample{1..10000}.npy`), in
/// natural file-name order. Unlabelled. An empty folder is an error.
pub fn load_folder(dir: impl AsRef<Path>, opts: &LoadOptions) -> Result<ImageSet> {
    let dir = dir.as_ref();
    let files = list_image_files(dir, opts.recursive)?;
    if files.is_empty() {
        return Err(LensDataError::EmptyFolder { path: dir.to_path_buf() });
    }
    let entries: Vec<(PathBuf, usize)> = files.into_iter().map(|p| (p, 0)).collect();
    load_entries(&entries, false, Vec::new(), opts, dir)
}

/// Loads a file or a folder (dispatches to [`load_files`] or [`load_folder`]).
pub fn load_path(path: impl AsRef<Path>, opts: &LoadOptions) -> Result<ImageSet> {
    let path = path.as_ref();
    if path.is_dir() {
        load_folder(path, opts)
    } else {
        load_files(&[path.to_path_buf()], opts)
    }
}

/// A labelled dataset: train split and, when present, validation split, sharing class names.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelledDataset {
    /// Class names in label order (sorted folder names, as torchvision's `ImageFolder`).
    pub class_names: Vec<String>,
    /// `ROOT/train` (or `ROOT` itself when it holds class folders directly).
    pub train: ImageSet,
    /// `ROOT/val` (also accepted: `valid`, `validation`), when present.
    pub val: Option<ImageSet>,
}

fn subdirs(dir: &Path) -> Result<Vec<String>> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| LensDataError::io(dir, e))? {
        let e = e.map_err(|e| LensDataError::io(dir, e))?;
        let name = e.file_name().to_string_lossy().to_string();
        if !name.starts_with('.') && e.path().is_dir() {
            v.push(name);
        }
    }
    v.sort();
    Ok(v)
}

/// Loads the labelled layout `ROOT/{train,val}/CLASS/*.npy` (DeepLense "common test":
/// classes `no`, `sphere`, `vort`) or `ROOT/CLASS/*.npy`. The class of an image is its folder
/// name; labels index the sorted union of class folder names.
pub fn load_labelled(root: impl AsRef<Path>, opts: &LoadOptions) -> Result<LabelledDataset> {
    let root = root.as_ref();
    let top = subdirs(root)?;
    let val_name = ["val", "valid", "validation"].into_iter().find(|n| top.iter().any(|t| t == n));
    let (train_dir, val_dir) = if top.iter().any(|t| t == "train") {
        (root.join("train"), val_name.map(|n| root.join(n)))
    } else {
        (root.to_path_buf(), None)
    };
    let mut classes: BTreeSet<String> = subdirs(&train_dir)?.into_iter().collect();
    if let Some(v) = &val_dir {
        classes.extend(subdirs(v)?);
    }
    if classes.is_empty() {
        return Err(LensDataError::NoClasses { path: root.to_path_buf() });
    }
    let class_names: Vec<String> = classes.into_iter().collect();
    let split = |dir: &Path| -> Result<ImageSet> {
        let mut entries = Vec::new();
        for (label, c) in class_names.iter().enumerate() {
            let d = dir.join(c);
            if d.is_dir() {
                entries.extend(list_image_files(&d, opts.recursive)?.into_iter().map(|p| (p, label)));
            }
        }
        load_entries(&entries, true, class_names.clone(), opts, dir)
    };
    let train = split(&train_dir)?;
    let val = match &val_dir {
        Some(v) => Some(split(v)?),
        None => None,
    };
    Ok(LabelledDataset { class_names, train, val })
}
