//! Loss curves as PNG (plotters).

use std::path::Path;

use plotters::prelude::*;

/// Plot `(step, loss)` points, with an exponential moving average (0.98) on top, on a log-scale
/// y axis, to a PNG at `path` (drawn in memory, then written atomically).
pub fn loss_curve(points: &[(usize, f32)], path: &Path) -> Result<(), String> {
    if points.is_empty() {
        return Err("no loss values to plot".into());
    }
    let (w, h) = (800u32, 480u32);
    let mut rgb = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let finite: Vec<(usize, f32)> = points.iter().copied().filter(|(_, l)| l.is_finite() && *l > 0.0).collect();
        if finite.is_empty() {
            return Err("no positive finite loss values to plot".into());
        }
        let max_step = finite.iter().map(|p| p.0).max().unwrap_or(1).max(1);
        let lo = finite.iter().map(|p| p.1).fold(f32::INFINITY, f32::min) as f64;
        let hi = finite.iter().map(|p| p.1).fold(0.0f32, f32::max) as f64;
        let mut chart = ChartBuilder::on(&root)
            .caption("Training loss", ("sans-serif", 24))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(64)
            .build_cartesian_2d(0usize..max_step, (lo * 0.9..hi * 1.1).log_scale())
            .map_err(|e| e.to_string())?;
        chart.configure_mesh().x_desc("optimizer step").y_desc("loss").draw().map_err(|e| e.to_string())?;
        chart
            .draw_series(LineSeries::new(finite.iter().map(|&(s, l)| (s, l as f64)), RGBColor(160, 190, 230)))
            .map_err(|e| e.to_string())?
            .label("loss")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RGBColor(160, 190, 230)));
        let mut ema = finite[0].1 as f64;
        let smooth: Vec<(usize, f64)> = finite
            .iter()
            .map(|&(s, l)| {
                ema = 0.98 * ema + 0.02 * l as f64;
                (s, ema)
            })
            .collect();
        chart
            .draw_series(LineSeries::new(smooth, BLUE.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label("moving average")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(2)));
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    write_png_rgb(rgb, w, h, path)
}

/// Encode an RGB buffer as PNG and write it atomically.
pub fn write_png_rgb(rgb: Vec<u8>, w: u32, h: u32, path: &Path) -> Result<(), String> {
    let img = image::RgbImage::from_raw(w, h, rgb)
        .ok_or_else(|| format!("{}: buffer does not hold {w}x{h} RGB pixels", path.display()))?;
    let mut bytes = std::io::Cursor::new(Vec::new());
    img.write_to(&mut bytes, image::ImageFormat::Png).map_err(|e| format!("{}: {e}", path.display()))?;
    atomic_file::write(path, bytes.get_ref()).map_err(|e| format!("{}: {e}", path.display()))
}
