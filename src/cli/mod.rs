//! Flag parsing for the subcommands. Shared groups of flags are one `#[derive(Args)]` each
//! ([`args`]); every subcommand module holds its `Args` and a `run` that calls the library.

use clap::{Parser, Subcommand};
use lensing_diffusion::backend::BackendKind;

mod args;
mod evaluate;
mod export;
mod make_dataset;
mod pipeline;
mod sample;
mod simulate;
mod train;
mod train_classifier;

/// The result of a subcommand: any error is printed as `error: ...` with exit code 1.
pub type CmdResult = Result<(), Box<dyn std::error::Error>>;

/// Denoising diffusion models for strong gravitational-lensing images: simulate DeepLense
/// lenses, train a DDPM on them, sample new ones, and measure how real they look.
///
/// Start with `lensing-diffusion pipeline` (the whole job on simulated data, ~15 minutes on two
/// cores); `lensing-diffusion help <COMMAND>` explains each step.
#[derive(Parser, Debug)]
#[command(name = "lensing-diffusion", version, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
// Parsed once per process; boxing the larger flag sets would only add noise.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Simulate -> train -> sample -> evaluate, and write runs/NAME/report.md.
    Pipeline(pipeline::Args),
    /// Train a DDPM on lensing images (simulated or from disk); resumable.
    Train(train::Args),
    /// Generate images from a checkpoint (ours or denoising-diffusion-pytorch's).
    Sample(sample::Args),
    /// FID, RKE, RRKE, Vendi, KID and PRDC of generated vs real images or features.
    Evaluate(evaluate::Args),
    /// Render one noise-free lensing image from a lenstronomy-style JSON spec.
    Simulate(simulate::Args),
    /// Write a simulated DeepLense Model I dataset to a folder.
    MakeDataset(make_dataset::Args),
    /// Train the lensing feature extractor (a 3-class ResNet-18) on simulated images.
    TrainClassifier(train_classifier::Args),
    /// Convert a checkpoint: to safetensors with PyTorch names, or to our .bpk with its settings.
    Export(export::Args),
}

impl Command {
    /// Run the subcommand.
    pub fn run(self) -> CmdResult {
        let backend = match &self {
            Self::Pipeline(a) => Some(a.backend.backend),
            Self::Train(a) => Some(a.backend.backend),
            Self::Sample(a) => Some(a.backend.backend),
            _ => None,
        };
        // Held until the command ends: prints warm-up progress while cubecl compiles kernels.
        let _watch = match backend {
            Some(BackendKind::Cuda) => cuda_kernel_cache(),
            _ => None,
        };
        match self {
            Self::Pipeline(a) => pipeline::run(a),
            Self::Train(a) => train::run(a),
            Self::Sample(a) => sample::run(a),
            Self::Evaluate(a) => evaluate::run(a),
            Self::Simulate(a) => simulate::run(a),
            Self::MakeDataset(a) => make_dataset::run(a),
            Self::TrainClassifier(a) => train_classifier::run(a),
            Self::Export(a) => export::run(a),
        }
    }
}

/// Switches cubecl's kernel cache on for `--backend cuda` (in the cache folder, or
/// `$LENSING_DIFFUSION_CACHE/cubecl`) and starts the warm-up progress lines.
#[cfg(feature = "cuda-untuned")]
fn cuda_kernel_cache() -> Option<lensing_diffusion::backend::KernelCompileWatch> {
    let dir = lensing_diffusion::classifier::cache_dir().join("cubecl");
    match lensing_diffusion::backend::configure_cubecl(&dir) {
        Ok(log) => {
            eprintln!("cubecl kernel cache: {}", dir.display());
            Some(lensing_diffusion::backend::KernelCompileWatch::start(log, std::time::Duration::from_secs(5)))
        }
        Err(e) => {
            eprintln!("warning: cubecl kernel cache off ({}: {e})", dir.display());
            None
        }
    }
}

#[cfg(not(feature = "cuda-untuned"))]
fn cuda_kernel_cache() -> Option<lensing_diffusion::backend::KernelCompileWatch> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn flags_are_consistent() {
        Cli::command().debug_assert();
    }

    fn parses(args: &[&str]) -> Command {
        let argv = std::iter::once("lensing-diffusion").chain(args.iter().copied());
        match Cli::try_parse_from(argv) {
            Ok(cli) => cli.command,
            Err(e) => panic!("{args:?} did not parse:\n{e}"),
        }
    }

    /// Every flag of the former `cargo run --example NAME` programs, with the same spelling and
    /// value syntax, under the subcommand of the same name.
    #[test]
    fn the_old_example_flags_still_work() {
        let c = parses(&[
            "pipeline",
            "--name",
            "p",
            "--data",
            "d",
            "--train-images",
            "10",
            "--eval-images",
            "5",
            "--num-generated",
            "4",
            "--sim-num-pix",
            "150",
            "--preset",
            "deeplense",
            "--image-size",
            "32",
            "--steps",
            "7",
            "--train-minutes",
            "0.5",
            "--sampler",
            "ddim",
            "--sample-steps",
            "12",
            "--sample-batch",
            "3",
            "--sample-threads",
            "2",
            "--extractor",
            "e.bpk",
            "--bandwidths",
            "4,8",
            "--backend",
            "ndarray",
            "--seed",
            "9",
        ]);
        let Command::Pipeline(a) = c else { panic!("not pipeline") };
        assert_eq!(a.options().unwrap().sampler, diffusion_core::Sampler::Ddim { steps: 12, eta: 1.0 });
        assert_eq!(a.options().unwrap().train_minutes, 0.5);

        // The command's defaults are the library's, with and without --conditional: stochastic
        // DDIM in 50 steps and a run length fitted to the time budget.
        use lensing_diffusion::pipeline::PipelineOptions;
        for (args, d) in [
            (&["pipeline"][..], PipelineOptions::default()),
            (&["pipeline", "--conditional", "--name", "c"][..], PipelineOptions::conditional()),
        ] {
            let Command::Pipeline(a) = parses(args) else { panic!("not pipeline") };
            let o = a.options().unwrap();
            assert_eq!(o.sampler, diffusion_core::Sampler::Ddim { steps: 50, eta: 1.0 });
            assert_eq!(PipelineOptions { out: d.out.clone(), progress: d.progress, ..o }, d, "{args:?}");
        }
        let c = PipelineOptions::conditional();
        assert_eq!((c.train_minutes, c.num_generated, c.sweep_images), (5.0, 300, 90));
        assert_eq!(PipelineOptions::default().train_minutes, 9.0);

        let c = parses(&[
            "train",
            "--simulate",
            "30",
            "--sim-num-pix",
            "75",
            "--normalize",
            "none",
            "--skip-bad",
            "--preset",
            "small",
            "--out",
            "o",
            "--backend",
            "flex",
            "--time-budget-min",
            "2",
            "--image-size",
            "16",
            "--dim",
            "8",
            "--dim-mults",
            "1,2",
            "--timesteps",
            "100",
            "--objective",
            "pred_noise",
            "--schedule",
            "cosine",
            "--min-snr",
            "5",
            "--offset-noise",
            "0.1",
            "--batch-size",
            "4",
            "--grad-accum",
            "2",
            "--data-parallel",
            "1",
            "--steps",
            "3",
            "--epochs",
            "2",
            "--lr",
            "1e-4",
            "--warmup-steps",
            "1",
            "--cosine-decay",
            "false",
            "--weight-decay",
            "0.01",
            "--grad-clip",
            "0",
            "--ema-decay",
            "0.99",
            "--ema-every",
            "2",
            "--ema-start",
            "5",
            "--augment",
            "true",
            "--checkpoint-every",
            "2",
            "--keep-last",
            "1",
            "--sample-every",
            "0",
            "--seed",
            "3",
        ]);
        let Command::Train(a) = c else { panic!("not train") };
        assert_eq!(a.diffusion.objective, Some(diffusion_core::Objective::PredNoise));
        assert_eq!(a.diffusion.schedule, Some(diffusion_core::BetaSchedule::cosine()));
        let c = a.apply(lensing_diffusion::config::TrainConfig::small(), None);
        assert_eq!((c.unet.dim, c.unet.dim_mults.clone(), c.total_steps, c.grad_clip), (8, vec![1, 2], 3, None));
        parses(&["train", "--data", "d", "--resume", "runs/small"]);

        let c = parses(&[
            "sample",
            "--checkpoint",
            "c.pth",
            "--weights",
            "model",
            "--dim",
            "8",
            "--dim-mults",
            "1,2",
            "--channels",
            "1",
            "--image-size",
            "16",
            "--timesteps",
            "100",
            "--objective",
            "pred_v",
            "--schedule",
            "sigmoid",
            "--sampler",
            "ddim",
            "--steps",
            "10",
            "--eta",
            "0.5",
            "--num",
            "4",
            "--batch-size",
            "2",
            "--threads",
            "1",
            "--seed",
            "1",
            "--init-noise",
            "n.npy",
            "--out",
            "s.npy",
            "--png-dir",
            "p",
            "--grid",
            "g.png",
            "--backend",
            "flex",
        ]);
        let Command::Sample(a) = c else { panic!("not sample") };
        assert_eq!(
            a.sampler.sampler(diffusion_core::SamplerKind::Ddim, a.steps, 0.0).unwrap(),
            diffusion_core::Sampler::Ddim { steps: 10, eta: 0.5 }
        );
        parses(&["sample", "--checkpoint", "c.pth", "--sampler", "dpm-solver++", "--out", "s.npy"]);

        parses(&[
            "evaluate",
            "--real-features",
            "a.npy",
            "--generated-features",
            "b.npy",
            "--bandwidths",
            "8,16",
            "--k",
            "5",
            "--pr-k",
            "3",
            "--kid-subsets",
            "10",
            "--kid-subset-size",
            "100",
            "--rrke-rows",
            "50",
            "--vendi-max-n",
            "100",
            "--no-noise-floor",
            "--fid-infinity",
            "--fid-inf-min",
            "100",
            "--seed",
            "2",
            "--json",
            "m.json",
            "--save-features",
            "f",
            "--save-real-stats",
            "s.npz",
            "--batch-size",
            "8",
        ]);
        parses(&["evaluate", "--real", "r", "--generated", "g", "--extractor", "e.bpk", "--image-size", "64"]);
        parses(&["simulate", "--spec", "s.json", "--out", "i.npy"]);
        parses(&[
            "make-dataset",
            "--out",
            "d",
            "--count",
            "6",
            "--classes",
            "cdm,axion",
            "--seed",
            "1",
            "--num-pix",
            "64",
            "--pixel-scale",
            "0.1",
            "--layout",
            "samples",
            "--val-fraction",
            "0.5",
            "--psf-truncation",
            "3",
            "--no-noise",
            "--no-normalize",
            "--threads",
            "1",
        ]);
        parses(&[
            "train-classifier",
            "--out",
            "e.bpk",
            "--n-train",
            "30",
            "--n-heldout",
            "9",
            "--num-pix",
            "64",
            "--image-size",
            "32",
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--lr",
            "0.001",
            "--seed",
            "4",
            "--fixed-data",
            "--no-augment",
            "--constant-lr",
            "--minutes",
            "3",
            "--run-dir",
            "r",
        ]);
    }

    /// `train-classifier` without flags trains the shipped default recipe, and the documented
    /// flags give the first (64x64) one.
    #[test]
    fn train_classifier_defaults_are_the_shipped_recipes() {
        use lensing_diffusion::classifier::ExtractorRecipe;
        let recipe = |args: &[&str]| match parses(args) {
            Command::TrainClassifier(a) => train_classifier::recipe(&a),
            other => panic!("{other:?}"),
        };
        assert_eq!(recipe(&["train-classifier"]), ExtractorRecipe::default());
        let legacy = [
            "train-classifier",
            "--image-size",
            "64",
            "--n-heldout",
            "600",
            "--epochs",
            "8",
            "--fixed-data",
            "--no-augment",
            "--constant-lr",
            "--bn-recalibration",
            "0",
        ];
        assert_eq!(recipe(&legacy), ExtractorRecipe::legacy_s64());
    }

    #[test]
    fn bad_values_are_refused_with_the_flag_named() {
        for (args, flag) in [
            (&["pipeline", "--train-minutes=-1"][..], "--train-minutes"),
            (&["pipeline", "--train-minutes", "NaN"][..], "--train-minutes"),
            (&["train", "--time-budget-min", "inf"][..], "--time-budget-min"),
            (&["train", "--objective", "pred_eps"][..], "--objective"),
            (&["train", "--schedule", "quadratic"][..], "--schedule"),
            (&["train", "--preset", "huge"][..], "--preset"),
            (&["sample", "--checkpoint", "c", "--out", "o", "--weights", "best"][..], "--weights"),
        ] {
            let argv = std::iter::once("lensing-diffusion").chain(args.iter().copied());
            let err = Cli::try_parse_from(argv).expect_err("must be refused").to_string();
            assert!(err.contains(flag), "{args:?}: {err}");
        }
    }
}
