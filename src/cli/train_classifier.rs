//! `lensing-diffusion train-classifier`.

use std::path::PathBuf;

use burn::backend::{Autodiff, Flex};
use gen_metrics::train::RunControl;
use gen_metrics::train::TrainConfig;
use indicatif::{ProgressBar, ProgressStyle};
use lensing_diffusion::classifier::{cache_dir, cached_extractor_path, train_from_recipe_with, ExtractorRecipe};

use super::args::{count, positive, MAX_IMAGES, MAX_IMAGE_SIZE, MAX_STEPS};
use super::CmdResult;

/// Train the lensing feature extractor: a ResNet-18 classifying simulated DeepLense Model I
/// images (no_sub / cdm / axion); reports the training curve, held-out accuracy, one-vs-rest
/// ROC AUC and the confusion matrix.
///
/// The defaults are the recipe of the shipped 128x128 extractor (the default of `evaluate` and
/// `pipeline`). The first shipped one (64x64) is `--image-size 64 --n-heldout 600 --epochs 8
/// --fixed-data --no-augment --constant-lr --bn-recalibration 0`. Training keeps its state
/// after every epoch in --run-dir and continues from there when run again; --minutes bounds
/// one run.
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
    #[arg(long, default_value_t = 1500, value_parser = count(1, MAX_IMAGES))]
    pub(crate) n_heldout: usize,
    /// Simulation grid, pixels per side (field of view fixed at 7.5 arcsec; 8 to 4096).
    #[arg(long, default_value_t = 150, value_parser = count(8, MAX_IMAGE_SIZE))]
    pub(crate) num_pix: usize,
    /// Network input size (images are resized to it; 8 to 4096).
    #[arg(long, default_value_t = 128, value_parser = count(8, MAX_IMAGE_SIZE))]
    pub(crate) image_size: usize,
    /// Epochs (1 to 100000).
    #[arg(long, default_value_t = 32, value_parser = count(1, MAX_STEPS))]
    pub(crate) epochs: usize,
    /// Batch size.
    #[arg(long, default_value_t = 32, value_parser = count(1, MAX_STEPS))]
    pub(crate) batch_size: usize,
    /// Adam learning rate (finite, > 0).
    #[arg(long, default_value_t = 1e-3, value_parser = positive)]
    pub(crate) lr: f64,
    /// Seed (simulation, initialisation, shuffles, augmentation).
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
    /// Train on one set of --n-train images every epoch. By default every epoch simulates a
    /// fresh set, so the network never sees an image twice.
    #[arg(long)]
    pub(crate) fixed_data: bool,
    /// Show the images as they are. By default each is shown under a random rotation by a
    /// multiple of 90 degrees, mirrored or not (the dihedral group: a lens keeps its class).
    #[arg(long)]
    pub(crate) no_augment: bool,
    /// Keep the learning rate at --lr. By default it decays to zero along a cosine over all
    /// steps.
    #[arg(long)]
    pub(crate) constant_lr: bool,
    /// After the last epoch, recompute the batch-norm running statistics with the final weights
    /// over this many batches of freshly simulated images. After every epoch they are recomputed
    /// over at most 10 of its batches before the held-out accuracy is measured, so the curve, and
    /// a run stopped by --minutes, measure the weights rather than averages that lag them
    /// (0: keep the running averages throughout).
    #[arg(long, default_value_t = 50, value_parser = count(0, MAX_STEPS))]
    pub(crate) bn_recalibration: usize,
    /// Stop before an epoch that would end after this many minutes (counted over resumed
    /// runs); the checkpoint is measured and saved as it stands. Run again with the same
    /// settings, and a larger budget, to continue.
    #[arg(long, value_parser = positive)]
    pub(crate) minutes: Option<f64>,
    /// Folder for the state after every epoch; the same command run again continues after the
    /// last finished epoch [default: the checkpoint path with `.run` appended].
    #[arg(long)]
    pub(crate) run_dir: Option<PathBuf>,
}

/// The recipe the flags describe.
pub(crate) fn recipe(a: &Args) -> ExtractorRecipe {
    ExtractorRecipe {
        n_train: a.n_train,
        n_heldout: a.n_heldout,
        num_pix: a.num_pix,
        image_size: a.image_size,
        train: TrainConfig {
            epochs: a.epochs,
            batch_size: a.batch_size,
            lr: a.lr,
            seed: a.seed,
            augment: !a.no_augment,
            cosine: !a.constant_lr,
            bn_recalibration: a.bn_recalibration,
        },
        fresh_data: !a.fixed_data,
    }
}

pub fn run(a: Args) -> CmdResult {
    if !(a.lr.is_finite() && a.lr > 0.0) {
        return Err(format!("--lr {}: must be finite and > 0", a.lr).into());
    }
    let recipe = recipe(&a);
    let out = a.out.clone().unwrap_or_else(|| cached_extractor_path(&cache_dir(), &recipe));
    let run_dir = a.run_dir.clone().unwrap_or_else(|| {
        let mut p = out.clone().into_os_string();
        p.push(".run");
        PathBuf::from(p)
    });
    let control = RunControl { checkpoint_dir: Some(run_dir.clone()), time_budget_s: a.minutes.map(|m| m * 60.0) };
    eprintln!(
        "simulating {} held-out images and {} training images{} ({}px -> {}px); training on Flex, state in {}",
        a.n_heldout,
        a.n_train,
        if a.fixed_data { "" } else { " per epoch" },
        a.num_pix,
        a.image_size,
        run_dir.display()
    );
    let device = Default::default();
    let pb = ProgressBar::new(0);
    pb.set_style(ProgressStyle::with_template("{bar:40} {pos}/{len} steps  {elapsed_precise} (eta {eta})  {msg}")?);
    let (ex, report) = train_from_recipe_with::<Autodiff<Flex>>(&recipe, &control, &device, |step, total, loss| {
        pb.set_length(total as u64);
        pb.set_position(step as u64);
        pb.set_message(format!("loss {loss:.4}"));
    })?;
    pb.finish();
    ex.save(&out)?;
    println!("epoch  train loss  train acc  held-out acc  minutes");
    for r in &report.curve {
        println!(
            "{:>5}  {:>10.4}  {:>9.4}  {:>12.4}  {:>7.1}",
            r.epoch,
            r.train_loss,
            r.train_accuracy,
            r.heldout_accuracy,
            r.seconds / 60.0
        );
    }
    println!(
        "held-out accuracy: {:.4} ({} images), {:.0} s in all ({}), training {:.1} images/s",
        report.heldout_accuracy, report.n_heldout, report.seconds, report.stop, report.train_images_per_second
    );
    let auc: Vec<String> =
        ex.config.class_names.iter().zip(&report.roc_auc).map(|(c, a)| format!("{c} {a:.4}")).collect();
    println!("ROC AUC (one vs rest): {}", auc.join(", "));
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
