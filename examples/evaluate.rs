//! Evaluates generated lensing images (or their features) against real ones: FID, exact RKE,
//! RRKE, Vendi, KID, precision/recall/density/coverage, with the real-vs-real noise floor.
//!
//! ```text
//! cargo run --release --example evaluate -- --real-features A.npy --generated-features B.npy
//! cargo run --release --example evaluate -- --real data/real --generated out/samples [--extractor W.bpk]
//! ```
//! Image inputs are read with lens-data's loaders (npy/npz/png/jpeg/tiff files or folders),
//! resized to the extractor's input size, and embedded with the lensing-trained ResNet-18.
//! Without `--extractor`, the extractor shipped in `assets/extractor/` (64 px), or for another size
//! the cached one under `target/extractor/`
//! is used, and trained (simulated data, a few minutes on 2 cores) and cached when absent.

use std::path::PathBuf;

use burn::backend::{Autodiff, Flex};
use clap::Parser;
use gen_metrics::{evaluate_features, EvalConfig, FeatureExtractor, FidInfinityConfig, GaussianStats, KidConfig};
use indicatif::{ProgressBar, ProgressStyle};
use lensing_diffusion::extractor::{extractor_source, ExtractorSource};
use ndarray::Array2;

#[derive(Parser, Debug)]
#[command(about = "FID / RKE / RRKE / Vendi / KID / PRDC of generated vs real images or features")]
struct Args {
    /// Real features, `[n, d]` f64 or f32 .npy.
    #[arg(long, requires = "generated_features", conflicts_with_all = ["real", "generated"])]
    real_features: Option<PathBuf>,
    /// Generated features, `[n, d]` f64 or f32 .npy.
    #[arg(long, requires = "real_features")]
    generated_features: Option<PathBuf>,
    /// Real images: a file or a folder (lens-data loaders).
    #[arg(long, requires = "generated")]
    real: Option<PathBuf>,
    /// Generated images: a file or a folder.
    #[arg(long, requires = "real")]
    generated: Option<PathBuf>,
    /// Extractor weights: our `.bpk` checkpoint (with its `.json` sidecar) or a torchvision
    /// resnet18 state dict with a 1-channel conv1 (`.pth`). Default: the cached trained one.
    #[arg(long)]
    extractor: Option<PathBuf>,
    /// Input size of the default extractor (images are resized to it).
    #[arg(long, default_value_t = 64)]
    image_size: usize,
    /// Gaussian-kernel bandwidths for RKE / RRKE / Vendi.
    #[arg(long, value_delimiter = ',', default_value = "8,16,32")]
    bandwidths: Vec<f64>,
    /// k for density and coverage.
    #[arg(long, default_value_t = 5)]
    k: usize,
    /// k for precision and recall.
    #[arg(long, default_value_t = 3)]
    pr_k: usize,
    /// KID subsets.
    #[arg(long, default_value_t = 100)]
    kid_subsets: usize,
    /// KID subset size.
    #[arg(long, default_value_t = 1000)]
    kid_subset_size: usize,
    /// Leading rows of each set for RRKE.
    #[arg(long, default_value_t = 500)]
    rrke_rows: usize,
    /// At most this many generated rows for Vendi (O(n^3)).
    #[arg(long, default_value_t = 2000)]
    vendi_max_n: usize,
    /// Skip the real-vs-real noise floor.
    #[arg(long)]
    no_noise_floor: bool,
    /// Also compute FID-infinity (needs more than 5,000 generated rows unless --fid-inf-min is set).
    #[arg(long)]
    fid_infinity: bool,
    /// Smallest subset size of FID-infinity.
    #[arg(long, default_value_t = 5000)]
    fid_inf_min: usize,
    /// Seed of every random choice.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Write the report as JSON here (atomically).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Save the features used (f64 .npy) into this folder: real_features.npy, generated_features.npy.
    #[arg(long)]
    save_features: Option<PathBuf>,
    /// Save the real set's (mean, covariance) statistics (.npz, pytorch-fid layout) here.
    #[arg(long)]
    save_real_stats: Option<PathBuf>,
    /// Images per extractor batch.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
}

fn main() {
    lensing_diffusion::alloc::tune_allocator();
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn bar(len: u64, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(ProgressStyle::with_template("{msg:>12} {bar:40} {pos}/{len} {elapsed_precise} (eta {eta})").expect("template"));
    pb.set_message(what.to_string());
    pb
}

fn features_from_images(a: &Args) -> Result<(Array2<f64>, Array2<f64>), Box<dyn std::error::Error>> {
    let device = Default::default();
    let ex: FeatureExtractor<Flex> = match &a.extractor {
        Some(p) => FeatureExtractor::load(p, &device)?,
        None => {
            let recipe = gen_metrics::ExtractorRecipe { image_size: a.image_size, ..Default::default() };
            let cache = PathBuf::from("target/extractor");
            if let ExtractorSource::Train(path) = extractor_source(&recipe, &cache) {
                eprintln!("no cached extractor at {}: training one on simulated data (once) ...", path.display());
            }
            let pb = bar(0, "train");
            let (ex, path) = lensing_diffusion::extractor::obtain_extractor::<Autodiff<Flex>>(&recipe, &cache, &device, |s, t, _| {
                pb.set_length(t as u64);
                pb.set_position(s as u64);
            })?;
            pb.finish_and_clear();
            eprintln!("extractor: {}", path.display());
            ex
        }
    };
    if let Some(info) = &ex.info {
        if let Some(acc) = info.get("heldout_accuracy") {
            eprintln!("extractor: ResNet-18, {}x{} input, held-out accuracy {acc}", ex.config.image_size, ex.config.image_size);
        }
    }
    let s = ex.config.image_size;
    let opts = lens_data::LoadOptions::resized(s);
    let embed = |p: &PathBuf, what: &str| -> Result<Array2<f64>, Box<dyn std::error::Error>> {
        let set = lens_data::load::load_path(p, &opts)?;
        let pb = bar(set.len() as u64, what);
        let f = ex.extract(set.images.view(), a.batch_size, &device, |k| pb.inc(k as u64))?;
        pb.finish();
        Ok(f)
    };
    let r = embed(a.real.as_ref().expect("clap"), "real")?;
    let g = embed(a.generated.as_ref().expect("clap"), "generated")?;
    Ok((r, g))
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let a = Args::parse();
    let (real, gen) = match (&a.real_features, &a.generated_features, &a.real, &a.generated) {
        (Some(r), Some(g), _, _) => (gen_metrics::load_features_npy(r)?, gen_metrics::load_features_npy(g)?),
        (_, _, Some(_), Some(_)) => features_from_images(&a)?,
        _ => return Err("give --real-features and --generated-features, or --real and --generated (see --help)".into()),
    };
    if let Some(dir) = &a.save_features {
        std::fs::create_dir_all(dir)?;
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
        fid_infinity: a.fid_infinity.then_some(FidInfinityConfig { min_size: a.fid_inf_min, seed: a.seed, ..Default::default() }),
        seed: a.seed,
    };
    let spinner = ProgressBar::new_spinner();
    spinner.set_message("computing metrics ...");
    spinner.enable_steady_tick(std::time::Duration::from_millis(200));
    let t = std::time::Instant::now();
    let report = evaluate_features(real.view(), gen.view(), Some(&real_stats), &cfg)?;
    spinner.finish_and_clear();
    print!("{}", report.to_table());
    eprintln!("metrics computed in {:.2} s", t.elapsed().as_secs_f64());
    if let Some(p) = &a.json {
        report.write_json(p)?;
        eprintln!("wrote {}", p.display());
    }
    Ok(())
}
