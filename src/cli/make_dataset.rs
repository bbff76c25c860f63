//! `lensing-diffusion make-dataset`.

use std::path::PathBuf;

use clap::ValueEnum;
use indicatif::{ProgressBar, ProgressStyle};
use lens_data::simulate::{LensClass, ModelI};
use lens_data::write::{write_model_i_dataset, DatasetLayout};

use super::args::{count, positive, MAX_IMAGES, MAX_IMAGE_SIZE};
use super::CmdResult;

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Layout {
    /// DIR/{train,val}/CLASS/{k}.npy (DeepLense classification layout; read with load_labelled)
    Labelled,
    /// DIR/sample{1..N}.npy + DIR/labels.csv (the diffusion set's Samples/ folder; read with load_folder)
    Samples,
}

/// Simulate strong-lensing images (DeepLenseSim Model I: SIE + shear, Sersic source, Gaussian
/// PSF, exposure/Gaussian/Poisson noise, per-image min-max to [0,1]) and write them as f64
/// (1,N,N) .npy files.
///
/// Image i has class CLASSES[i % len] and its own random stream of SEED, so the same arguments
/// always give the same files, whatever the thread count.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Output folder (created if missing). A folder that holds anything is refused, unless it
    /// is a dataset this command wrote (it has manifest.json) and --overwrite is given.
    #[arg(long)]
    pub(crate) out: PathBuf,
    /// Replace the dataset in --out (deleted first, so no stale files of a larger earlier one
    /// remain).
    #[arg(long)]
    pub(crate) overwrite: bool,
    /// Total number of images (classes take turns; 1 to 10,000,000).
    #[arg(long, value_parser = count(1, MAX_IMAGES))]
    pub(crate) count: usize,
    /// Comma-separated classes: no_sub, cdm (25 subhalos), axion (vortex line).
    #[arg(long, default_value = "no_sub,cdm,axion")]
    pub(crate) classes: String,
    /// Random seed.
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
    /// Pixels per side (8 to 4096).
    #[arg(long, default_value_t = 150, value_parser = count(8, MAX_IMAGE_SIZE))]
    pub(crate) num_pix: usize,
    /// Arcsec per pixel [default: 7.5 / num_pix, i.e. the 150 x 0.05" field of view of Model I].
    #[arg(long, value_parser = positive)]
    pub(crate) pixel_scale: Option<f64>,
    /// Folder layout.
    #[arg(long, value_enum, default_value_t = Layout::Labelled)]
    pub(crate) layout: Layout,
    /// Fraction of each class written to val/ (labelled layout).
    #[arg(long, default_value_t = 0.2)]
    pub(crate) val_fraction: f64,
    /// PSF truncation in sigmas (4 = the lenstronomy version DeepLense used).
    #[arg(long, default_value_t = 4.0, value_parser = positive)]
    pub(crate) psf_truncation: f64,
    /// Write noise-free images (no exposure / Gaussian / Poisson noise).
    #[arg(long)]
    pub(crate) no_noise: bool,
    /// Keep raw values instead of per-image min-max to [0, 1].
    #[arg(long)]
    pub(crate) no_normalize: bool,
    /// Worker threads [default: all cores].
    #[arg(long)]
    pub(crate) threads: Option<usize>,
}

pub fn run(args: Args) -> CmdResult {
    let classes = LensClass::parse_list(&args.classes)?;
    let used = std::fs::read_dir(&args.out).map(|mut d| d.next().is_some()).unwrap_or(false);
    if used {
        let ours = args.out.join("manifest.json").is_file();
        match (ours, args.overwrite) {
            (true, true) => std::fs::remove_dir_all(&args.out).map_err(|e| format!("{}: {e}", args.out.display()))?,
            (true, false) => {
                return Err(format!("--out {}: holds a dataset already; --overwrite replaces it", args.out.display()).into())
            }
            (false, _) => {
                return Err(format!(
                    "--out {}: the folder is not empty and holds no dataset of ours (no manifest.json); choose an empty or new folder",
                    args.out.display()
                )
                .into())
            }
        }
    }
    let base = lensing_diffusion::data::model_i(args.num_pix);
    let config = ModelI {
        pixel_scale: args.pixel_scale.unwrap_or(base.pixel_scale),
        psf_truncation: args.psf_truncation,
        noise: !args.no_noise,
        normalize: !args.no_normalize,
        ..base
    };
    let layout = match args.layout {
        Layout::Labelled => DatasetLayout::Labelled { val_fraction: args.val_fraction },
        Layout::Samples => DatasetLayout::Samples,
    };
    let pool = rayon::ThreadPoolBuilder::new().num_threads(args.threads.unwrap_or(0)).build()?;
    let bar = ProgressBar::new(args.count as u64);
    bar.set_style(ProgressStyle::with_template(
        "{spinner} [{elapsed_precise}] {bar:40} {pos}/{len} images ({per_sec}, eta {eta})",
    )?);
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
        secs * 1e3 / summary.count.max(1) as f64,
        pool.current_num_threads()
    );
    for (class, train, val) in &summary.per_class {
        eprintln!("  {class}: {train} train, {val} val");
    }
    Ok(())
}
