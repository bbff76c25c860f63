//! Generate a DeepLense Model I dataset with the built-in simulator.
//!
//! ```text
//! cargo run --release --example make-dataset -- --out DIR --count N \
//!     [--classes no_sub,cdm,axion] [--seed S] [--num-pix 150] [--layout labelled|samples]
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use lens_data::simulate::{LensClass, ModelI};
use lens_data::write::{write_model_i_dataset, DatasetLayout};

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum Layout {
    /// DIR/{train,val}/CLASS/{k}.npy (DeepLense classification layout; read with load_labelled)
    Labelled,
    /// DIR/sample{1..N}.npy + DIR/labels.csv (the diffusion set's Samples/ folder; read with load_folder)
    Samples,
}

/// Simulate strong-lensing images (DeepLenseSim Model I: SIE + shear, Sersic source, Gaussian PSF,
/// exposure/Gaussian/Poisson noise, per-image min-max to [0,1]) and write them as f64 (1,N,N) .npy
/// files. Image i has class CLASSES[i % len] and its own random stream of SEED, so the same
/// arguments always give the same files, whatever the thread count.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Output folder (created if missing; existing files with the same names are replaced).
    #[arg(long)]
    out: PathBuf,
    /// Total number of images (classes take turns).
    #[arg(long)]
    count: usize,
    /// Comma-separated classes: no_sub, cdm (25 subhalos), axion (vortex line).
    #[arg(long, default_value = "no_sub,cdm,axion")]
    classes: String,
    /// Random seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Pixels per side.
    #[arg(long, default_value_t = 150)]
    num_pix: usize,
    /// Arcsec per pixel [default: 7.5 / num_pix, i.e. the 150 x 0.05" field of view of Model I].
    #[arg(long)]
    pixel_scale: Option<f64>,
    /// Folder layout.
    #[arg(long, value_enum, default_value_t = Layout::Labelled)]
    layout: Layout,
    /// Fraction of each class written to val/ (labelled layout).
    #[arg(long, default_value_t = 0.2)]
    val_fraction: f64,
    /// PSF truncation in sigmas (4 = the lenstronomy version DeepLense used).
    #[arg(long, default_value_t = 4.0)]
    psf_truncation: f64,
    /// Write noise-free images (no exposure / Gaussian / Poisson noise).
    #[arg(long)]
    no_noise: bool,
    /// Keep raw values instead of per-image min-max to [0, 1].
    #[arg(long)]
    no_normalize: bool,
    /// Worker threads [default: all cores].
    #[arg(long)]
    threads: Option<usize>,
}

fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let classes = LensClass::parse_list(&args.classes)?;
    let config = ModelI {
        num_pix: args.num_pix,
        pixel_scale: args.pixel_scale.unwrap_or(0.05 * (150.0 / args.num_pix.max(1) as f64)),
        psf_truncation: args.psf_truncation,
        noise: !args.no_noise,
        normalize: !args.no_normalize,
        ..ModelI::default()
    };
    let layout = match args.layout {
        Layout::Labelled => DatasetLayout::Labelled { val_fraction: args.val_fraction },
        Layout::Samples => DatasetLayout::Samples,
    };
    let pool = rayon::ThreadPoolBuilder::new().num_threads(args.threads.unwrap_or(0)).build()?;
    let bar = ProgressBar::new(args.count as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} images ({per_sec}, eta {eta})")?,
    );
    let t = std::time::Instant::now();
    let summary = pool.install(|| {
        write_model_i_dataset(&args.out, &config, &classes, args.count, args.seed, layout, &|k| bar.inc(k))
    })?;
    bar.finish();
    let secs = t.elapsed().as_secs_f64();
    eprintln!(
        "wrote {} images to {} in {secs:.2} s ({:.2} ms/image, {} threads)",
        summary.count,
        summary.out.display(),
        secs * 1e3 / summary.count as f64,
        pool.current_num_threads()
    );
    for (class, train, val) in &summary.per_class {
        eprintln!("  {class}: {train} train, {val} val");
    }
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
