//! `lensing-diffusion simulate`.

use std::path::PathBuf;

use lens_data::npy::write_npy_f64;
use lens_data::render::render;
use lens_data::SimulationSpec;

use super::CmdResult;

/// Render one noise-free, unnormalised lensing image (lenstronomy conventions) from a JSON spec.
///
/// The spec uses the schema of make_lens_fixtures.py (lenstronomy kwarg names): `num_pix`,
/// `pixel_scale`, `supersampling`, `psf` (null or GAUSSIAN fwhm/truncation), `lens` (SIE, SIS,
/// SHEAR, POINT_MASS, NFW, TNFW), `source` and optional `lens_light` (SERSIC, SERSIC_ELLIPSE).
/// Output: f64 [num_pix, num_pix] .npy, surface brightness x pixel area, as lenstronomy's
/// `ImageModel.image`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Spec file (JSON; schema of make_lens_fixtures.py, lenstronomy kwarg names).
    #[arg(long)]
    pub(crate) spec: PathBuf,
    /// Output .npy file: f64 [num_pix, num_pix], surface brightness x pixel area (written atomically).
    #[arg(long)]
    pub(crate) out: PathBuf,
}

pub fn run(args: Args) -> CmdResult {
    let spec = SimulationSpec::from_json_file(&args.spec)?;
    let t = std::time::Instant::now();
    let img = render(&spec)?;
    let n = spec.num_pix;
    let values: Vec<f64> = img.iter().copied().collect();
    write_npy_f64(&args.out, &[n, n], &values)?;
    let (sum, max) = values.iter().fold((0.0, f64::MIN), |(s, m), &v| (s + v, m.max(v)));
    eprintln!(
        "wrote {} ({n}x{n}, {} lens / {} source / {} lens-light profiles) in {:.1} ms: sum {sum:.6e}, max {max:.6e}",
        args.out.display(),
        spec.lens.len(),
        spec.source.len(),
        spec.lens_light.len(),
        t.elapsed().as_secs_f64() * 1e3
    );
    Ok(())
}
