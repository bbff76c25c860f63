//! A small, strict `.npy` reader/writer (format versions 1.0, 2.0, 3.0).
//!
//! Reads every numeric dtype numpy writes for images (f2/f4/f8, u1..u8, i1..i8, b1; either
//! endianness; C or Fortran order) into `f64` in C order. Object arrays (`dtype=object`, i.e.
//! pickles) are never executed: [`crate::pickle`] reads the numeric arrays inside them as data
//! (e.g. DeepLense's `[image, extra]` files); anything else is a
//! [`LensDataError::PickledObjectArray`] with the one-line Python conversion in the message.

use std::path::Path;

use ndarray::{ArrayD, IxDyn, ShapeBuilder};

use crate::error::{LensDataError, Result};
use crate::limits::{exceeded, read_bounded, Limits};

/// A decoded numeric array: shape and values in C (row-major) order, converted to `f64`.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyArray {
    /// Array shape.
    pub shape: Vec<usize>,
    /// Values, C order.
    pub data: Vec<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Kind {
    F,
    U,
    I,
    B,
}

/// Parsed `.npy` header.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Header {
    pub descr: String,
    pub fortran: bool,
    pub shape: Vec<usize>,
    pub data_offset: usize,
}

fn bad(path: &Path, reason: impl Into<String>) -> LensDataError {
    LensDataError::InvalidNpy { path: path.to_path_buf(), reason: reason.into() }
}

/// Extracts the value text of `'key': ...` from a Python-literal dict header.
fn dict_value<'a>(h: &'a str, key: &str) -> Option<&'a str> {
    let k1 = format!("'{key}'");
    let k2 = format!("\"{key}\"");
    let start = h.find(&k1).map(|i| i + k1.len()).or_else(|| h.find(&k2).map(|i| i + k2.len()))?;
    let rest = h[start..].trim_start();
    let rest = rest.strip_prefix(':')?.trim_start();
    Some(rest)
}

/// At most `max` bytes of `s`, cut at a char boundary: keeps error messages short when a hostile
/// header is megabytes long.
fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

pub(crate) fn parse_header(bytes: &[u8], path: &Path) -> Result<Header> {
    if bytes.is_empty() {
        return Err(LensDataError::EmptyFile { path: path.to_path_buf() });
    }
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(bad(path, "missing the \\x93NUMPY magic string (not a .npy file, or corrupt)"));
    }
    let major = bytes[6];
    let (hlen, hstart) = match major {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 => {
            if bytes.len() < 12 {
                return Err(bad(path, "header truncated"));
            }
            (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12)
        }
        v => return Err(bad(path, format!("unsupported format version {v}.{}", bytes[7]))),
    };
    if bytes.len() - hstart < hlen {
        return Err(bad(
            path,
            format!("header truncated: needs {} bytes, file has {}", hstart as u64 + hlen as u64, bytes.len()),
        ));
    }
    let h = std::str::from_utf8(&bytes[hstart..hstart + hlen]).map_err(|_| bad(path, "header is not text"))?;
    let descr_v =
        dict_value(h, "descr").ok_or_else(|| bad(path, format!("header has no 'descr': {}", clip(h, 200))))?;
    let descr = if let Some(r) = descr_v.strip_prefix('\'') {
        r.split('\'').next().unwrap_or("").to_string()
    } else if let Some(r) = descr_v.strip_prefix('"') {
        r.split('"').next().unwrap_or("").to_string()
    } else {
        // structured dtype (a list of fields)
        let end = descr_v.find(']').map(|i| i + 1).unwrap_or(descr_v.len());
        return Err(LensDataError::UnsupportedDtype { path: path.to_path_buf(), dtype: clip(&descr_v[..end], 60) });
    };
    let fortran_v = dict_value(h, "fortran_order").ok_or_else(|| bad(path, "header has no 'fortran_order'"))?;
    let fortran = if fortran_v.starts_with("True") {
        true
    } else if fortran_v.starts_with("False") {
        false
    } else {
        return Err(bad(path, "header 'fortran_order' is neither True nor False"));
    };
    let shape_v = dict_value(h, "shape").ok_or_else(|| bad(path, "header has no 'shape'"))?;
    let inner = shape_v
        .strip_prefix('(')
        .and_then(|r| r.split(')').next())
        .ok_or_else(|| bad(path, "header 'shape' is not a tuple"))?;
    let mut shape = Vec::new();
    for part in inner.split(',') {
        let p = part.trim().trim_end_matches('L');
        if p.is_empty() {
            continue;
        }
        shape.push(p.parse::<usize>().map_err(|_| bad(path, format!("bad dimension '{}' in shape", clip(p, 40))))?);
    }
    // numpy's own maximum; also keeps a hostile header from building a huge shape vector
    if shape.len() > 64 {
        return Err(bad(path, format!("shape has {} dimensions (numpy allows at most 64)", shape.len())));
    }
    Ok(Header { descr, fortran, shape, data_offset: hstart + hlen })
}

/// `(little_endian, kind, itemsize)` of a numpy descr such as `<f8`; `None` for anything else,
/// including empty, one-character and non-ASCII descrs.
pub(crate) fn dtype_info(descr: &str) -> Option<(bool, Kind, usize)> {
    if !descr.is_ascii() {
        return None;
    }
    let (endian, rest) = match descr.as_bytes().first()? {
        b'<' | b'|' | b'=' => (true, &descr[1..]),
        b'>' => (false, &descr[1..]),
        _ => (true, descr),
    };
    if rest.len() < 2 {
        return None;
    }
    let (k, size) = rest.split_at(1);
    let size: usize = size.parse().ok()?;
    let kind = match k {
        "f" if matches!(size, 2 | 4 | 8) => Kind::F,
        "u" if matches!(size, 1 | 2 | 4 | 8) => Kind::U,
        "i" if matches!(size, 1 | 2 | 4 | 8) => Kind::I,
        "b" if size == 1 => Kind::B,
        _ => return None,
    };
    Some((endian, kind, size))
}

/// Number of elements of `shape` and their decoded size (8 bytes each), checked: a hostile
/// shape such as (2^32, 2^32) must not wrap around before it is compared with the file.
pub(crate) fn element_count(shape: &[usize], path: &Path, limits: &Limits) -> Result<usize> {
    let count = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| bad(path, format!("shape {shape:?} overflows: its element count exceeds 2^64")))?;
    let decoded = (count as u64).saturating_mul(8);
    if decoded > limits.max_array_bytes {
        return Err(exceeded(
            path,
            &format!("decoded size in bytes of shape {shape:?}"),
            decoded,
            limits.max_array_bytes,
            "max_array_bytes",
        ));
    }
    Ok(count)
}

fn f16_to_f64(bits: u16) -> f64 {
    let sign = if bits & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = ((bits >> 10) & 0x1f) as i32;
    let frac = (bits & 0x3ff) as f64;
    sign * match exp {
        0 => frac * 2f64.powi(-24),
        31 => {
            if frac == 0.0 {
                f64::INFINITY
            } else {
                f64::NAN
            }
        }
        e => (1.0 + frac / 1024.0) * 2f64.powi(e - 15),
    }
}

/// Converts raw element bytes to f64 values (storage order preserved).
pub(crate) fn decode_elements(raw: &[u8], le: bool, kind: Kind, size: usize, out: &mut Vec<f64>) {
    macro_rules! conv {
        ($t:ty, $n:expr) => {{
            out.extend(raw.chunks_exact($n).map(|c| {
                let a: [u8; $n] = c.try_into().unwrap();
                (if le { <$t>::from_le_bytes(a) } else { <$t>::from_be_bytes(a) }) as f64
            }))
        }};
    }
    match (kind, size) {
        (Kind::F, 8) => conv!(f64, 8),
        (Kind::F, 4) => conv!(f32, 4),
        (Kind::F, 2) => out.extend(raw.chunks_exact(2).map(|c| {
            let b = if le { u16::from_le_bytes([c[0], c[1]]) } else { u16::from_be_bytes([c[0], c[1]]) };
            f16_to_f64(b)
        })),
        (Kind::U, 1) => out.extend(raw.iter().map(|&b| b as f64)),
        (Kind::U, 2) => conv!(u16, 2),
        (Kind::U, 4) => conv!(u32, 4),
        (Kind::U, 8) => conv!(u64, 8),
        (Kind::I, 1) => out.extend(raw.iter().map(|&b| b as i8 as f64)),
        (Kind::I, 2) => conv!(i16, 2),
        (Kind::I, 4) => conv!(i32, 4),
        (Kind::I, 8) => conv!(i64, 8),
        (Kind::B, 1) => out.extend(raw.iter().map(|&b| (b != 0) as u8 as f64)),
        _ => unreachable!("dtype_info filters sizes"),
    }
}

/// Decodes `.npy` bytes (`path` is only used in error messages), under [`Limits::default`].
pub fn parse_npy(bytes: &[u8], path: &Path) -> Result<NpyArray> {
    parse_npy_with_limits(bytes, path, &Limits::default())
}

/// As [`parse_npy`], under `limits`.
pub fn parse_npy_with_limits(bytes: &[u8], path: &Path, limits: &Limits) -> Result<NpyArray> {
    let mut data = Vec::new();
    let shape = parse_npy_into_with_limits(bytes, path, &mut data, limits)?;
    Ok(NpyArray { shape, data })
}

/// Decodes `.npy` bytes into `data` (cleared first; C order, f64) and returns the shape.
/// Lets a caller reuse one buffer across many files. Uses [`Limits::default`].
pub fn parse_npy_into(bytes: &[u8], path: &Path, data: &mut Vec<f64>) -> Result<Vec<usize>> {
    parse_npy_into_with_limits(bytes, path, data, &Limits::default())
}

/// As [`parse_npy_into`], under `limits`. The header's sizes are checked (overflow, bytes
/// present, `max_array_bytes`) before anything is allocated for the values.
pub fn parse_npy_into_with_limits(
    bytes: &[u8],
    path: &Path,
    data: &mut Vec<f64>,
    limits: &Limits,
) -> Result<Vec<usize>> {
    data.clear();
    let h = parse_header(bytes, path)?;
    if h.descr.trim_start_matches(['|', '<', '>', '=']).starts_with('O') {
        let (shape, values) = crate::pickle::unpack_object_array(&bytes[h.data_offset..], path, limits)?;
        *data = values;
        return Ok(shape);
    }
    let (le, kind, size) = dtype_info(&h.descr)
        .ok_or_else(|| LensDataError::UnsupportedDtype { path: path.to_path_buf(), dtype: clip(&h.descr, 60) })?;
    let count = element_count(&h.shape, path, limits)?;
    let expected = count.checked_mul(size).ok_or_else(|| bad(path, "shape overflows"))?;
    let raw = &bytes[h.data_offset..];
    if raw.len() < expected {
        return Err(LensDataError::Truncated { path: path.to_path_buf(), expected, actual: raw.len() });
    }
    data.reserve(count);
    decode_elements(&raw[..expected], le, kind, size, data);
    if h.fortran && h.shape.len() > 1 {
        let a =
            ArrayD::from_shape_vec(IxDyn(&h.shape).f(), std::mem::take(data)).map_err(|e| bad(path, e.to_string()))?;
        *data = a.as_standard_layout().iter().copied().collect();
    }
    Ok(h.shape)
}

/// Reads a `.npy` file, under [`Limits::default`].
pub fn read_npy(path: impl AsRef<Path>) -> Result<NpyArray> {
    read_npy_with_limits(path, &Limits::default())
}

/// Reads a `.npy` file, under `limits` (the file itself at most `max_file_bytes`).
pub fn read_npy_with_limits(path: impl AsRef<Path>, limits: &Limits) -> Result<NpyArray> {
    let path = path.as_ref();
    let mut bytes = Vec::new();
    read_file_bounded(path, limits, &mut bytes)?;
    parse_npy_with_limits(&bytes, path, limits)
}

/// Reads a whole file into `buf` (cleared first), at most `limits.max_file_bytes`.
pub(crate) fn read_file_bounded(path: &Path, limits: &Limits, buf: &mut Vec<u8>) -> Result<()> {
    let f = std::fs::File::open(path).map_err(|e| LensDataError::io(path, e))?;
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    read_bounded(f, path, len, limits.max_file_bytes, "max_file_bytes", buf)
}

/// `.npy` (version 1.0) bytes of a little-endian f64 C-order array.
pub fn npy_bytes_f64(shape: &[usize], data: &[f64]) -> Vec<u8> {
    let mut out = Vec::new();
    npy_bytes_f64_into(shape, data, &mut out);
    out
}

/// As [`npy_bytes_f64`], into a reused buffer (cleared first).
pub fn npy_bytes_f64_into(shape: &[usize], data: &[f64], out: &mut Vec<u8>) {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_txt = if dims.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
    let mut header = format!("{{'descr': '<f8', 'fortran_order': False, 'shape': {shape_txt}, }}");
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    out.clear();
    out.reserve(10 + header.len() + data.len() * 8);
    out.extend_from_slice(b"\x93NUMPY\x01\x00");
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in data {
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// Writes `bytes` to `path` atomically and durably (`atomic_file::write`): a crash never leaves
/// a half-written `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    atomic_file::write(path, bytes).map_err(|e| LensDataError::io(path, e))
}

/// Writes a little-endian f64 C-order `.npy` file atomically.
pub fn write_npy_f64(path: impl AsRef<Path>, shape: &[usize], data: &[f64]) -> Result<()> {
    let n: usize = shape.iter().product();
    if n != data.len() {
        return Err(LensDataError::invalid("data length", data.len(), format!("shape {shape:?} needs {n} values")));
    }
    write_atomic(path.as_ref(), &npy_bytes_f64(shape, data))
}
