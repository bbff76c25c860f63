//! `lensing-diffusion train-classifier`.

use std::path::PathBuf;

use burn::backend::{Autodiff, Flex};
use gen_metrics::train::TrainConfig;
use indicatif::{ProgressBar, ProgressStyle};
use lensing_diffusion::classifier::{cache_dir, cached_extractor_path, train_from_recipe, ExtractorRecipe};

use super::args::{count, positive, MAX_IMAGES, MAX_IMAGE_SIZE, MAX_STEPS};
use super::CmdResult;

/// Train the lensing feature extractor: a ResNet-18 classifying simulated DeepLense Model I
/// images (no_sub / cdm / axion); reports held-out accuracy and the confusion matrix.
///
/// Saves the checkpoint (burnpack + `.json` sidecar with the training record) that
/// `evaluate --extractor` reads. By default it goes where `evaluate` and `pipeline` look for an
/// extractor of this recipe (the cache, LENSING_DIFFUSION_CACHE or ~/.cache/lensing-diffusion),
/// so they use it from then on.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Where to write the checkpoint (a `.json` sidecar is written next to it) [default: the
    /// cache entry of this recipe].
    #[arg(long)]
    pub(crate) out: Option<PathBuf>,
    /// Training images (classes in turn; 1 to 10,000,000).
    #[arg(long, default_value_t = 3000, value_parser = count(1, MAX_IMAGES))]
    pub(crate) n_train: usize,
    /// Held-out images (simulated with another seed; 1 to 10,000,000).
    #[arg(long, default_value_t = 600, value_parser = count(1, MAX_IMAGES))]
    pub(crate) n_heldout: usize,
    /// Simulation grid, pixels per side (field of view fixed at 7.5 arcsec; 8 to 4096).
    #[arg(long, default_value_t = 150, value_parser = count(8, MAX_IMAGE_SIZE))]
    pub(crate) num_pix: usize,
    /// Network input size (images are resized to it; 8 to 4096).
    #[arg(long, default_value_t = 64, value_parser = count(8, MAX_IMAGE_SIZE))]
    pub(crate) image_size: usize,
    /// Epochs (1 to 100000).
    #[arg(long, default_value_t = 8, value_parser = count(1, MAX_STEPS))]
    pub(crate) epochs: usize,
    /// Batch size.
    #[arg(long, default_value_t = 32, value_parser = count(1, MAX_STEPS))]
    pub(crate) batch_size: usize,
    /// Adam learning rate (finite, > 0).
    #[arg(long, default_value_t = 1e-3, value_parser = positive)]
    pub(crate) lr: f64,
    /// Seed (simulation, initialisation, shuffles).
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
}

pub fn run(a: Args) -> CmdResult {
    if !(a.lr.is_finite() && a.lr > 0.0) {
        return Err(format!("--lr {}: must be finite and > 0", a.lr).into());
    }
    let recipe = ExtractorRecipe {
        n_train: a.n_train,
        n_heldout: a.n_heldout,
        num_pix: a.num_pix,
        image_size: a.image_size,
        train: TrainConfig { epochs: a.epochs, batch_size: a.batch_size, lr: a.lr, seed: a.seed },
    };
    let out = a.out.clone().unwrap_or_else(|| cached_extractor_path(&cache_dir(), &recipe));
    eprintln!(
        "simulating {} + {} images ({}px -> {}px) and training on Flex ...",
        a.n_train, a.n_heldout, a.num_pix, a.image_size
    );
    let device = Default::default();
    let pb = ProgressBar::new(0);
    pb.set_style(ProgressStyle::with_template("{bar:40} {pos}/{len} steps  {elapsed_precise} (eta {eta})  {msg}")?);
    let (ex, report) = train_from_recipe::<Autodiff<Flex>>(&recipe, &device, |step, total, loss| {
        pb.set_length(total as u64);
        pb.set_position(step as u64);
        pb.set_message(format!("loss {loss:.4}"));
    })?;
    pb.finish();
    ex.save(&out)?;
    println!("epoch losses: {:?}", report.epoch_loss.iter().map(|l| format!("{l:.4}")).collect::<Vec<_>>());
    println!(
        "held-out accuracy: {:.4} ({} images), training {:.0} s",
        report.heldout_accuracy, report.n_heldout, report.seconds
    );
    println!("confusion matrix (rows = true, columns = predicted):");
    print!("{:>8}", "");
    for c in &ex.config.class_names {
        print!("{c:>8}");
    }
    println!();
    for (i, row) in report.confusion.iter().enumerate() {
        print!("{:>8}", ex.config.class_names[i]);
        for v in row {
            print!("{v:>8}");
        }
        println!();
    }
    println!("saved {} (+ {})", out.display(), gen_metrics::extractor::sidecar_path(&out).display());
    Ok(())
}
