//! Render one noise-free, unnormalised strong-lensing image from a JSON spec.
//!
//! ```text
//! cargo run --release --example simulate -- --spec SPEC.json --out image.npy
//! ```
//! The spec uses the schema of `make_lens_fixtures.py` (lenstronomy kwarg names): `num_pix`,
//! `pixel_scale`, `supersampling`, `psf` (null or GAUSSIAN fwhm/truncation), `lens` (SIE, SIS,
//! SHEAR, POINT_MASS, NFW, TNFW), `source` and optional `lens_light` (SERSIC, SERSIC_ELLIPSE).
//! Output: f64 `[num_pix, num_pix]` `.npy`, surface brightness x pixel area, as lenstronomy's
//! `ImageModel.image`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use lens_data::npy::write_npy_f64;
use lens_data::render::render;
use lens_data::SimulationSpec;

/// Render one noise-free lensing image (lenstronomy conventions) from a JSON spec.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Spec file (JSON; schema of make_lens_fixtures.py, lenstronomy kwarg names).
    #[arg(long)]
    spec: PathBuf,
    /// Output .npy file: f64 [num_pix, num_pix], surface brightness x pixel area (written atomically).
    #[arg(long)]
    out: PathBuf,
}

fn run(args: &Args) -> lens_data::Result<()> {
    let spec = SimulationSpec::from_json_file(&args.spec)?;
    let t = std::time::Instant::now();
    let img = render(&spec)?;
    let n = spec.num_pix;
    write_npy_f64(&args.out, &[n, n], img.as_slice().expect("contiguous"))?;
    let (sum, max) = img.iter().fold((0.0, f64::MIN), |(s, m), &v| (s + v, m.max(v)));
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

fn main() -> ExitCode {
    lensing_diffusion::alloc::tune_allocator();
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
