//! Trains the ResNet-18 feature extractor of `gen-metrics` as a 3-class lensing classifier
//! (no_sub / cdm / axion) on simulated DeepLense Model I images (lens-data), reports held-out
//! accuracy and the confusion matrix, and saves the checkpoint (burnpack + `.json` sidecar)
//! that `evaluate --extractor` reads.
//!
//! `cargo run --release --example train-classifier -- --out target/extractor/resnet18-lensing-s64.bpk`

use std::path::PathBuf;

use burn::backend::{Autodiff, Flex};
use clap::Parser;
use gen_metrics::train::{train_from_recipe, ExtractorRecipe, TrainConfig};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Parser, Debug)]
#[command(about = "Train the lensing ResNet-18 feature extractor (3 classes) on simulated data")]
struct Args {
    /// Where to write the checkpoint (a `.json` sidecar is written next to it).
    #[arg(long, default_value = "target/extractor/resnet18-lensing-s64.bpk")]
    out: PathBuf,
    /// Training images (classes in turn).
    #[arg(long, default_value_t = 3000)]
    n_train: usize,
    /// Held-out images (simulated with another seed).
    #[arg(long, default_value_t = 600)]
    n_heldout: usize,
    /// Simulation grid, pixels per side (field of view fixed at 7.5 arcsec).
    #[arg(long, default_value_t = 150)]
    num_pix: usize,
    /// Network input size (images are resized to it).
    #[arg(long, default_value_t = 64)]
    image_size: usize,
    /// Epochs.
    #[arg(long, default_value_t = 8)]
    epochs: usize,
    /// Batch size.
    #[arg(long, default_value_t = 32)]
    batch_size: usize,
    /// Adam learning rate.
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Seed (simulation, initialisation, shuffles).
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

fn main() {
    lensing_diffusion::alloc::tune_allocator();
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let a = Args::parse();
    let recipe = ExtractorRecipe {
        n_train: a.n_train,
        n_heldout: a.n_heldout,
        num_pix: a.num_pix,
        image_size: a.image_size,
        train: TrainConfig { epochs: a.epochs, batch_size: a.batch_size, lr: a.lr, seed: a.seed },
    };
    eprintln!("simulating {} + {} images ({}px -> {}px) and training on Flex ...", a.n_train, a.n_heldout, a.num_pix, a.image_size);
    let device = Default::default();
    let pb = ProgressBar::new(0);
    pb.set_style(ProgressStyle::with_template("{bar:40} {pos}/{len} steps  {elapsed_precise} (eta {eta})  {msg}")?);
    let (ex, report) = train_from_recipe::<Autodiff<Flex>>(&recipe, &device, |step, total, loss| {
        pb.set_length(total as u64);
        pb.set_position(step as u64);
        pb.set_message(format!("loss {loss:.4}"));
    })?;
    pb.finish();
    if let Some(dir) = a.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    ex.save(&a.out)?;
    println!("epoch losses: {:?}", report.epoch_loss.iter().map(|l| format!("{l:.4}")).collect::<Vec<_>>());
    println!("held-out accuracy: {:.4} ({} images), training {:.0} s", report.heldout_accuracy, report.n_heldout, report.seconds);
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
    println!("saved {} (+ {})", a.out.display(), gen_metrics::extractor::sidecar_path(&a.out).display());
    Ok(())
}
