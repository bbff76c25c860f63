//! Flag groups shared by several subcommands, parsed once into the library's types.

use clap::Args;
use diffusion_core::{BetaSchedule, Objective, Sampler, SamplerKind};
use lensing_diffusion::backend::BackendKind;

/// `--backend`.
#[derive(Args, Debug, Clone)]
pub struct BackendArgs {
    /// Compute backend: flex (CPU, default), ndarray (CPU, slow training), cuda (a build with
    /// `--features cuda`; kernels cached in the cache folder's cubecl/) or tch (a build with
    /// `--features tch`: libtorch on its first GPU, else its CPU).
    #[arg(long, default_value = "flex")]
    pub backend: BackendKind,
    /// Convolution arithmetic on flex: f32, or bf16 - the operands of the U-Net's convolutions
    /// (3x3, 1x1 and the first 7x7: forward and input gradient where the channels come in
    /// eights; weight gradients from 8 input and 16 output channels, so not the 7x7's) rounded
    /// to bfloat16 and their products summed in f32 by AVX512-BF16 dot products, as PyTorch's
    /// CPU autocast rounds them; the master weights, AdamW, norms, softmaxes and the attention's
    /// matmuls stay f32, and the metrics run in f32. bf16 needs a CPU with AVX512-BF16 and pays
    /// only where its bf16 dot products outrun its f32 FMAs; where they do not, bf16 runs slower
    /// than f32, which the command measures at start and warns of (docs/PERFORMANCE.md names the
    /// CPUs measured, the speeds and the loss against f32).
    #[arg(long, value_enum, default_value = "f32")]
    pub precision: PrecisionArg,
}

/// Below this [`unet::bf16_dot_speedup`], `--precision bf16` warns that it will likely be slower
/// than f32: the bf16 kernels also round their operands, which the dot products' speed must pay for.
const BF16_WORTHWHILE: f64 = 1.3;

/// `--precision`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrecisionArg {
    /// f32 throughout.
    F32,
    /// bf16 convolution operands, f32 sums.
    Bf16,
}

impl BackendArgs {
    /// Sets the process-wide convolution precision; bf16 is refused, naming the flag, off flex or
    /// on a CPU without AVX512-BF16.
    pub fn apply_precision(&self) -> Result<(), lensing_diffusion::Error> {
        let precision = match self.precision {
            PrecisionArg::F32 => unet::ConvPrecision::F32,
            PrecisionArg::Bf16 if self.backend != BackendKind::Flex => {
                return Err(lensing_diffusion::Error::invalid(
                    "--precision",
                    "bf16",
                    format!("runs on --backend flex only (the CPU kernels), not {}", self.backend),
                ))
            }
            PrecisionArg::Bf16 => unet::ConvPrecision::Bf16,
        };
        unet::set_conv_precision(precision)
            .map_err(|e| lensing_diffusion::Error::invalid("--precision", "bf16", e.to_string()))?;
        if precision == unet::ConvPrecision::Bf16 {
            eprintln!("convolutions in bf16 with f32 sums (--precision bf16)");
            if let Some(speedup) = unet::bf16_dot_speedup().filter(|&s| s < BF16_WORTHWHILE) {
                eprintln!(
                    "warning: this CPU's bf16 dot products sum only {speedup:.2}x the products per second of its \
                     f32 FMAs, so --precision bf16 will likely run slower than f32 here (docs/PERFORMANCE.md)"
                );
            }
        }
        Ok(())
    }
}

/// The U-Net's shape: `--dim`, `--dim-mults`, `--channels`.
#[derive(Args, Debug, Clone, Default)]
pub struct UnetArgs {
    /// U-Net base width (train: the preset's; sample: inferred from the checkpoint; the
    /// DeepLense preset is 64; 1 to 1024).
    #[arg(long, value_parser = count(1, MAX_DIM))]
    pub dim: Option<usize>,
    /// U-Net width multipliers per stage, e.g. 1,2,4,8 (each 1 to 64).
    #[arg(long, value_delimiter = ',', value_parser = count(1, 64))]
    pub dim_mults: Option<Vec<usize>>,
    /// Image channels (lensing images have 1; at most 64).
    #[arg(long, value_parser = count(1, 64))]
    pub channels: Option<usize>,
    /// Classes of a class-conditional U-Net (denoising-diffusion-pytorch's
    /// `classifier_free_guidance.Unet`) [default: inferred from the checkpoint; train: set by
    /// --conditional from the data].
    #[arg(long, value_parser = count(1, 1_000_000))]
    pub num_classes: Option<usize>,
}

impl UnetArgs {
    /// Whether any U-Net flag was given.
    pub fn any(&self) -> bool {
        self.dim.is_some() || self.dim_mults.is_some() || self.channels.is_some() || self.num_classes.is_some()
    }

    /// `base` with the given flags applied.
    pub fn apply(&self, base: &unet::UnetConfig) -> unet::UnetConfig {
        if !self.any() {
            return base.clone();
        }
        unet::UnetConfig::new(
            self.dim.unwrap_or(base.dim),
            self.dim_mults.clone().unwrap_or(base.dim_mults.clone()),
            self.channels.unwrap_or(base.channels),
        )
        .with_num_classes(self.num_classes.or(base.num_classes))
    }
}

/// The diffusion process: `--timesteps`, `--objective`, `--schedule`.
#[derive(Args, Debug, Clone, Default)]
pub struct DiffusionArgs {
    /// Diffusion timesteps T, 1 to 100000 [default: the preset's or the checkpoint's, else 1000].
    #[arg(long, value_parser = count(1, MAX_TIMESTEPS))]
    pub timesteps: Option<usize>,
    /// What the network predicts: pred_noise, pred_x0 or pred_v [default: the preset's or the
    /// checkpoint's, else pred_v].
    #[arg(long)]
    pub objective: Option<Objective>,
    /// Beta schedule: linear, cosine or sigmoid (parameters: `cosine:s=0.01`,
    /// `sigmoid:start=-3,end=3,tau=1`) [default: the preset's or the checkpoint's, else sigmoid].
    #[arg(long)]
    pub schedule: Option<BetaSchedule>,
}

impl DiffusionArgs {
    /// `config` with the given flags applied.
    pub fn apply(&self, config: &mut diffusion_core::DiffusionConfig) {
        if let Some(v) = self.timesteps {
            config.timesteps = v;
        }
        if let Some(v) = self.objective {
            config.objective = v;
        }
        if let Some(v) = self.schedule {
            config.schedule = v;
        }
    }
}

/// The reverse process: `--sampler`, `--eta` (the step count flag is the command's own:
/// `--steps` for `sample`, `--sample-steps` for `pipeline`, where `--steps` counts training steps).
#[derive(Args, Debug, Clone, Default)]
pub struct SamplerArgs {
    /// ddpm (all T steps), ddim, or dpmpp (DPM-Solver++ 2M); or a full spec with the step count,
    /// `dpmpp:20`, `ddim:50:0.5`, which then wins over the step flag [default: ddim].
    #[arg(long)]
    pub sampler: Option<String>,
    /// DDIM eta: 0 is deterministic, 1 adds the posterior's noise at every step as DDPM does.
    /// Lensing images carry pixel noise, which only a stochastic sampler restores: on the main
    /// job, eta 1 gave FID 12 where eta 0 and DPM-Solver++ gave 100-200 (docs/REALISM.md)
    /// [default: 1 for pipeline, 0 (the reference's) for sample].
    #[arg(long, value_parser = non_negative)]
    pub eta: Option<f64>,
}

impl SamplerArgs {
    /// The sampler these flags name, with `steps` model evaluations unless the spec says, and
    /// `default_eta` unless `--eta` is given.
    pub fn sampler(
        &self,
        default: SamplerKind,
        steps: usize,
        default_eta: f64,
    ) -> Result<Sampler, diffusion_core::DiffusionError> {
        let eta = self.eta.unwrap_or(default_eta);
        match self.sampler.as_deref() {
            Some(spec) if spec.contains(':') => spec.parse(),
            Some(kind) => Ok(kind.parse::<SamplerKind>()?.with_steps(steps, eta)),
            None => Ok(default.with_steps(steps, eta)),
        }
    }
}

/// Largest `--image-size` and simulated grid (`--sim-num-pix`, `--num-pix`) of any command.
pub const MAX_IMAGE_SIZE: u64 = 4096;
/// Largest `--timesteps`.
pub const MAX_TIMESTEPS: u64 = 100_000;
/// Largest `--dim` (the DeepLense preset has 64).
pub const MAX_DIM: u64 = 1024;
/// Largest image count (`--simulate`, `--count`, `--num`, `--train-images`, ...).
pub const MAX_IMAGES: u64 = 10_000_000;
/// Largest step count of a sampler (`--steps` of sample, `--sample-steps`) and batch size.
pub const MAX_STEPS: u64 = 100_000;

/// A count flag in `lo..=hi`. A value outside is refused while parsing, and clap's message
/// names the flag, the value and the range (`invalid value '0' for '--timesteps <TIMESTEPS>':
/// 0 is not in 1..=100000`).
pub fn count(lo: u64, hi: u64) -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::<usize>::new().range(lo..=hi)
}

/// A finite number > 0 (`--lr`): NaN, infinities, zero and negative values are refused.
pub fn positive(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err(format!("{v}: must be a finite number > 0"))
    }
}

/// A finite number >= 0 (`--eta`).
pub fn non_negative(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if v.is_finite() && v >= 0.0 {
        Ok(v)
    } else {
        Err(format!("{v}: must be a finite number >= 0"))
    }
}

/// Any finite number (`--cond-scale`).
pub fn finite(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if v.is_finite() {
        Ok(v)
    } else {
        Err(format!("{v}: must be a finite number"))
    }
}

/// A number in `[0, 1]` (`--cond-drop-prob`, `--rescaled-phi`); NaN is refused.
pub fn unit_interval(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("{v}: must be in [0, 1]"))
    }
}

/// A finite, non-negative number of minutes (`--train-minutes`, `--time-budget-min`).
pub fn minutes(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("`{s}` is not a number of minutes"))?;
    if v.is_finite() && v > 0.0 && v <= 1e7 {
        Ok(v)
    } else {
        Err(format!("{v} minutes: must be finite, > 0 and at most 1e7"))
    }
}

/// The checkpoint to read: `--checkpoint`, `--weights`.
#[derive(Args, Debug, Clone)]
pub struct CheckpointArgs {
    /// Checkpoint file: our .bpk (checkpoints/step-N/ema.bpk), a safetensors export, or a
    /// denoising-diffusion-pytorch .pth/.pt.
    #[arg(long)]
    pub checkpoint: std::path::PathBuf,
    /// Which weights of a denoising-diffusion-pytorch Trainer checkpoint: model or ema
    /// [default: ema where the file has EMA weights, else its only weights].
    #[arg(long)]
    pub weights: Option<unet::Weights>,
}

/// What a checkpoint's model card records, as flags that override it: `--image-size` and the
/// diffusion flags.
#[derive(Args, Debug, Clone, Default)]
pub struct ModelSettingsArgs {
    /// Image size (square) the model was trained at, 8 to 4096 [default: the checkpoint's, else
    /// 128].
    #[arg(long, value_parser = count(8, MAX_IMAGE_SIZE))]
    pub image_size: Option<usize>,
    #[command(flatten)]
    pub diffusion: DiffusionArgs,
}

impl ModelSettingsArgs {
    /// The settings to use with a checkpoint's card: these flags over the card, a warning on
    /// stderr for each flag that contradicts it.
    pub fn resolve(
        &self,
        card: Option<&lensing_diffusion::checkpoint::ModelCard>,
    ) -> lensing_diffusion::sample::Resolved {
        let d = &self.diffusion;
        let flags = lensing_diffusion::sample::Overrides {
            image_size: self.image_size,
            timesteps: d.timesteps,
            objective: d.objective,
            schedule: d.schedule,
        };
        let resolved = lensing_diffusion::sample::resolve(card, &flags);
        for w in &resolved.warnings {
            eprintln!("warning: {w}");
        }
        resolved
    }
}
