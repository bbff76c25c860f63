//! Image grids and PNG output for generated and real images.

use std::path::Path;

use image::{GrayImage, Luma};

/// Errors writing images.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The input does not hold `n * h * w` values.
    #[error("image grid: {values} values do not make {n} images of {h}x{w}")]
    Shape {
        /// Values given.
        values: usize,
        /// Images.
        n: usize,
        /// Height.
        h: usize,
        /// Width.
        w: usize,
    },
    /// Encoding or writing failed.
    #[error("{path}: {reason}")]
    Write {
        /// The file.
        path: std::path::PathBuf,
        /// What failed.
        reason: String,
    },
}

/// Convert a `[0, 1]` image (row-major `h x w`) to 8-bit grey, clamping out-of-range values.
pub fn to_gray(values: &[f32], h: usize, w: usize) -> GrayImage {
    GrayImage::from_fn(w as u32, h as u32, |x, y| {
        let v = values[y as usize * w + x as usize];
        let v = if v.is_finite() { v.clamp(0.0, 1.0) } else { 0.0 };
        Luma([(v * 255.0).round() as u8])
    })
}

/// Tile `n` single-channel `h x w` images (values in `[0, 1]`, row-major, image after image)
/// into a grid with `cols` columns and a 2-pixel dark border, scaled up by `scale`.
pub fn grid(values: &[f32], n: usize, h: usize, w: usize, cols: usize, scale: u32) -> Result<GrayImage, ImageError> {
    if values.len() != n * h * w || n == 0 {
        return Err(ImageError::Shape { values: values.len(), n, h, w });
    }
    let cols = cols.clamp(1, n);
    let rows = n.div_ceil(cols);
    let pad = 2u32;
    let (cw, ch) = (w as u32 * scale + pad, h as u32 * scale + pad);
    let mut out = GrayImage::from_pixel(cols as u32 * cw + pad, rows as u32 * ch + pad, Luma([40]));
    for i in 0..n {
        let img = to_gray(&values[i * h * w..(i + 1) * h * w], h, w);
        let (ox, oy) = ((i % cols) as u32 * cw + pad, (i / cols) as u32 * ch + pad);
        for y in 0..h as u32 * scale {
            for x in 0..w as u32 * scale {
                out.put_pixel(ox + x, oy + y, *img.get_pixel(x / scale, y / scale));
            }
        }
    }
    Ok(out)
}

/// Save a PNG atomically and durably (encoded in memory, then `atomic_file::write`).
pub fn save_png_atomic(img: &GrayImage, path: &Path) -> Result<(), ImageError> {
    let err = |reason: String| ImageError::Write { path: path.to_path_buf(), reason };
    let mut bytes = std::io::Cursor::new(Vec::new());
    img.write_to(&mut bytes, image::ImageFormat::Png).map_err(|e| err(e.to_string()))?;
    atomic_file::write(path, bytes.get_ref()).map_err(|e| err(e.to_string()))
}

/// Tile images into a grid PNG (see [`grid`]) and save it atomically.
pub fn save_grid(values: &[f32], n: usize, h: usize, w: usize, cols: usize, path: &Path) -> Result<(), ImageError> {
    let scale = (128 / h.max(1)).clamp(1, 4) as u32;
    save_png_atomic(&grid(values, n, h, w, cols, scale)?, path)
}

/// One row per class: up to `per_row` images of class `0`, then of class `1`, ... (`labels[i]`
/// is the class of image `i`; rows of classes with fewer images are left dark). Saved atomically.
/// The row order is the class order, which a caption or legend should name.
pub fn save_class_grid(
    values: &[f32],
    labels: &[usize],
    num_classes: usize,
    h: usize,
    w: usize,
    per_row: usize,
    path: &Path,
) -> Result<(), ImageError> {
    let n = labels.len();
    if values.len() != n * h * w || n == 0 || num_classes == 0 || per_row == 0 {
        return Err(ImageError::Shape { values: values.len(), n, h, w });
    }
    // A dark image (-1 clamps to 0) fills a row's missing cells.
    let mut tiles = vec![-1.0f32; num_classes * per_row * h * w];
    for class in 0..num_classes {
        for (col, i) in labels.iter().enumerate().filter(|(_, &l)| l == class).map(|(i, _)| i).take(per_row).enumerate()
        {
            let dst = (class * per_row + col) * h * w;
            tiles[dst..dst + h * w].copy_from_slice(&values[i * h * w..(i + 1) * h * w]);
        }
    }
    save_grid(&tiles, num_classes * per_row, h, w, per_row, path)
}
