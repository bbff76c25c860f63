//! `lensing-diffusion evaluate`.

use std::path::PathBuf;

use burn::backend::{Autodiff, Flex};
use gen_metrics::physics::PhysicsComparison;
use gen_metrics::{evaluate_features, BootstrapConfig, EvalConfig, FidInfinityConfig, GaussianStats, KidConfig};
use indicatif::ProgressBar;
use lensing_diffusion::evaluate::{features_of_path, images_of_path, load_extractor};
use ndarray::Array2;

use super::args::{count, MAX_IMAGES, MAX_IMAGE_SIZE, MAX_STEPS};
use super::CmdResult;

/// FID / RKE / RRKE / Vendi / KID / PRDC of generated vs real images or features, with the
/// real-vs-real noise floor; for images also physical statistics a lensing scientist reads
/// (Einstein radii, ring widths, multipoles along the ring, power spectra, pixel histograms).
///
/// Image inputs (npy/npz/png/jpeg/tiff files or folders) are min-max normalised, resized to the
/// extractor's input size and embedded with the lensing-trained ResNet-18: by default the one
/// shipped in assets/extractor/ (64x64 input); another --image-size trains one on simulated data
/// on first use (minutes on 2 cores) and caches it (LENSING_DIFFUSION_CACHE, else
/// ~/.cache/lensing-diffusion).
///
/// Examples:
///   lensing-diffusion evaluate --real data/real --generated samples.npy --json metrics.json
///   lensing-diffusion evaluate --real-features A.npy --generated-features B.npy
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Real features, `[n, d]` f64 or f32 .npy.
    #[arg(long, requires = "generated_features", conflicts_with_all = ["real", "generated"])]
    pub(crate) real_features: Option<PathBuf>,
    /// Generated features, `[n, d]` f64 or f32 .npy.
    #[arg(long, requires = "real_features")]
    pub(crate) generated_features: Option<PathBuf>,
    /// Real images: a file or a folder (lens-data loaders).
    #[arg(long, requires = "generated")]
    pub(crate) real: Option<PathBuf>,
    /// Generated images: a file or a folder.
    #[arg(long, requires = "real")]
    pub(crate) generated: Option<PathBuf>,
    /// Extractor weights: our `.bpk` checkpoint (with its `.json` sidecar) or a torchvision
    /// resnet18 state dict with a 1-channel conv1 (`.pth`). Default: the shipped one.
    #[arg(long)]
    pub(crate) extractor: Option<PathBuf>,
    /// Input size of the default extractor (images are resized to it; 8 to 4096). 128 and 64
    /// are shipped (128: 32 epochs of fresh simulated images; 64: the first, less accurate
    /// one); another size trains one on simulated data on first use and caches it.
    #[arg(long, default_value_t = 128, value_parser = count(8, MAX_IMAGE_SIZE))]
    pub(crate) image_size: usize,
    /// Gaussian-kernel bandwidths for RKE / RRKE / Vendi.
    #[arg(long, value_delimiter = ',', default_value = "8,16,32")]
    pub(crate) bandwidths: Vec<f64>,
    /// k for density and coverage (each set needs more than k rows).
    #[arg(long, default_value_t = 5, value_parser = count(1, MAX_IMAGES))]
    pub(crate) k: usize,
    /// k for precision and recall (each set needs more than k rows).
    #[arg(long, default_value_t = 3, value_parser = count(1, MAX_IMAGES))]
    pub(crate) pr_k: usize,
    /// KID subsets (1 to 100000).
    #[arg(long, default_value_t = 100, value_parser = count(1, MAX_STEPS))]
    pub(crate) kid_subsets: usize,
    /// KID subset size.
    #[arg(long, default_value_t = 1000, value_parser = count(2, MAX_IMAGES))]
    pub(crate) kid_subset_size: usize,
    /// Leading rows of each set for RRKE.
    #[arg(long, default_value_t = 500)]
    pub(crate) rrke_rows: usize,
    /// At most this many generated rows for Vendi (O(n^3)).
    #[arg(long, default_value_t = 2000)]
    pub(crate) vendi_max_n: usize,
    /// Skip the real-vs-real noise floor.
    #[arg(long)]
    pub(crate) no_noise_floor: bool,
    /// Also compute FID-infinity (needs more than 5,000 generated rows unless --fid-inf-min is set).
    #[arg(long)]
    pub(crate) fid_infinity: bool,
    /// Smallest subset size of FID-infinity.
    #[arg(long, default_value_t = 5000)]
    pub(crate) fid_inf_min: usize,
    /// Bootstrap resamples behind the 95% intervals of FID and KID (0 to 100000; 0: no
    /// intervals). Both sets are resampled with replacement and the metrics recomputed: two runs
    /// evaluated on as many images whose intervals do not overlap differ by more than the draw
    /// of images. The default 100 is the usual minimum for a 95% interval (its ends move by ~0.3
    /// of the metric's spread between seeds); on 1,000 x 512 features per set it took 7-8 s for
    /// FID and 0.2 s for KID on 2 cores shared with other builds, growing linearly with the rows
    /// for FID and quadratically for KID (5,000 rows per set: 18 s and 2.4 s).
    #[arg(long, default_value_t = 100, value_parser = count(0, MAX_STEPS))]
    pub(crate) bootstrap: usize,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
    /// Write the report as JSON here (atomically).
    #[arg(long)]
    pub(crate) json: Option<PathBuf>,
    /// Save the features used (f64 .npy) into this folder: real_features.npy, generated_features.npy.
    #[arg(long)]
    pub(crate) save_features: Option<PathBuf>,
    /// Save the real set's (mean, covariance) statistics (.npz, pytorch-fid layout) here.
    #[arg(long)]
    pub(crate) save_real_stats: Option<PathBuf>,
    /// Images per extractor batch.
    #[arg(long, default_value_t = 64, value_parser = count(1, MAX_STEPS))]
    pub(crate) batch_size: usize,
    /// Physical statistics of the images (Einstein radius, ring width, multipoles along the
    /// ring, power spectrum, pixel histogram, asymmetry, ellipticity), real vs generated with
    /// the real-vs-real floor. On by default when images are given; sets of different sizes
    /// are then skipped with a warning (an error with --physics).
    #[arg(long, conflicts_with = "no_physics")]
    pub(crate) physics: bool,
    /// Skip the physical statistics.
    #[arg(long)]
    pub(crate) no_physics: bool,
    /// Write the physical statistics' plots (PNG) into this folder.
    #[arg(long)]
    pub(crate) plots: Option<PathBuf>,
}

fn features(a: &Args) -> Result<(Array2<f64>, Array2<f64>), Box<dyn std::error::Error>> {
    match (&a.real_features, &a.generated_features, &a.real, &a.generated) {
        (Some(r), Some(g), _, _) => Ok((gen_metrics::load_features_npy(r)?, gen_metrics::load_features_npy(g)?)),
        (_, _, Some(r), Some(g)) => {
            let device = Default::default();
            let ex = load_extractor::<Autodiff<Flex>>(a.extractor.as_deref(), a.image_size, &device, true)?;
            Ok((features_of_path(&ex, r, a.batch_size, true)?, features_of_path(&ex, g, a.batch_size, true)?))
        }
        _ => Err("give --real-features and --generated-features, or --real and --generated (see --help)".into()),
    }
}

/// The physical statistics of the image sets, when asked for or by default with images.
fn physics(a: &Args) -> Result<Option<PhysicsComparison>, Box<dyn std::error::Error>> {
    let (Some(r), Some(g)) = (&a.real, &a.generated) else {
        if a.physics {
            return Err("--physics needs images: give --real and --generated".into());
        }
        return Ok(None);
    };
    if a.no_physics {
        return Ok(None);
    }
    let (real, gen) = (images_of_path(r)?, images_of_path(g)?);
    let (rs, gs) = ((real.dim().1, real.dim().2), (gen.dim().1, gen.dim().2));
    if rs != gs && !a.physics {
        eprintln!(
            "warning: physical statistics skipped: real images are {}x{}, generated {}x{}; they compare images of one size (resize one set, or --no-physics)",
            rs.0, rs.1, gs.0, gs.1
        );
        return Ok(None);
    }
    let (cmp, files) = lensing_diffusion::evaluate::physics(real.view(), gen.view(), a.seed, a.plots.as_deref())?;
    if let Some(dir) = &a.plots {
        eprintln!("wrote {} plots to {}", files.len(), dir.display());
    }
    Ok(Some(cmp))
}

pub fn run(a: Args) -> CmdResult {
    let (real, gen) = features(&a)?;
    let physics = physics(&a)?;
    if let Some(dir) = &a.save_features {
        for (name, x) in [("real_features.npy", &real), ("generated_features.npy", &gen)] {
            let mut buf = Vec::new();
            ndarray_npy::WriteNpyExt::write_npy(x, &mut buf)?;
            gen_metrics::features::write_atomic(&dir.join(name), &buf)?;
        }
    }
    let real_stats = GaussianStats::from_features_named(real.view(), "real features")?;
    if let Some(p) = &a.save_real_stats {
        real_stats.save(p)?;
    }
    let cfg = EvalConfig {
        bandwidths: a.bandwidths.clone(),
        k_density_coverage: a.k,
        k_precision_recall: a.pr_k,
        rrke_rows: a.rrke_rows,
        vendi_max_n: a.vendi_max_n,
        kid: KidConfig { num_subsets: a.kid_subsets, subset_size: a.kid_subset_size, seed: a.seed },
        noise_floor: !a.no_noise_floor,
        fid_infinity: a.fid_infinity.then_some(FidInfinityConfig {
            min_size: a.fid_inf_min,
            seed: a.seed,
            ..Default::default()
        }),
        bootstrap: (a.bootstrap > 0).then(|| BootstrapConfig {
            resamples: a.bootstrap,
            seed: a.seed,
            ..BootstrapConfig::default()
        }),
        seed: a.seed,
    };
    let spinner = ProgressBar::new_spinner();
    spinner.set_message("computing metrics ...");
    spinner.enable_steady_tick(std::time::Duration::from_millis(200));
    let t = std::time::Instant::now();
    let report = evaluate_features(real.view(), gen.view(), Some(&real_stats), &cfg)?;
    spinner.finish_and_clear();
    print!("{}", report.to_table());
    if let Some(p) = &physics {
        println!("\nPhysical statistics (distance generated vs real; floor: two halves of the real set)\n");
        print!("{}", p.to_table());
    }
    eprintln!("metrics computed in {:.2} s", t.elapsed().as_secs_f64());
    if let Some(p) = &a.json {
        lensing_diffusion::evaluate::write_json(p, &report, physics.as_ref())?;
        eprintln!("wrote {}", p.display());
    }
    Ok(())
}
