//! Train a tiny DDPM on simulated lenses and sample from it, with the library API: the
//! configuration, the trainer's step, checkpoints that carry their settings, and sampling.
//!
//! ```text
//! cargo run --release --example train_and_sample     # about a minute on two cores
//! ```

use burn::backend::{Autodiff, Flex};
use diffusion_core::Sampler;
use lens_data::simulate::LensClass;
use lensing_diffusion::config::TrainConfig;
use lensing_diffusion::sample::{generate, load_model, SampleOptions};
use lensing_diffusion::trainer::Trainer;

fn main() -> Result<(), lensing_diffusion::Error> {
    let device = Default::default();
    let mut config = TrainConfig::small();
    config.image_size = 16;
    config.total_steps = 60;
    let data = lensing_diffusion::data::simulate_resized(300, 150, config.image_size, &LensClass::ALL, 0)?;

    let mut trainer = Trainer::<Autodiff<Flex>>::new(config, &device)?;
    while trainer.step() < trainer.config().total_steps {
        let (x, y) = trainer.batch_for_step(&data, trainer.step())?;
        let stats = trainer.train_step(x, y.as_deref())?;
        if stats.step % 20 == 0 {
            println!("step {:>3}  loss {:.4}", stats.step, stats.loss);
        }
    }
    let dir = std::env::temp_dir().join("lensing-diffusion-example");
    let ckpt = trainer.save_checkpoint(&dir)?;

    // The checkpoint knows its image size and diffusion settings.
    let loaded = load_model::<Flex>(&ckpt.join("ema.bpk"), None, None, &device)?;
    let card = loaded.card.clone().expect("our checkpoints carry a model card");
    let opts = SampleOptions { sampler: Sampler::DpmSolverPp2M { steps: 10 }, batch_size: 8, workers: 2, seed: 1 };
    let images = generate(
        &loaded.model,
        &loaded.diffusion()?,
        [8, card.channels, card.image_size, card.image_size],
        None,
        None,
        &opts,
        &|| {},
    )?;
    println!(
        "sampled {:?}, values in [{:.3}, {:.3}]",
        images.dim(),
        images.fold(f32::MAX, |a, &b| a.min(b)),
        images.fold(f32::MIN, |a, &b| a.max(b))
    );
    Ok(())
}
