//! Classifier-free guidance (Ho & Salimans 2022) for any class-conditional denoiser.
//!
//! - Training: [`GaussianDiffusion::loss_labelled`] drops each label with probability
//!   `cond_drop_prob` (the model then sees its learned null class), so one network learns both
//!   the conditional and the unconditional prediction.
//! - Sampling: [`Guided`] wraps a [`ConditionalDenoiser`] and a list of labels into a plain
//!   [`Denoiser`], so every sampler guides without knowing it. Each step runs the conditional and
//!   the null prediction as *one* batch of `2B` and combines them with [`guide`].
//!
//! The combination follows denoising-diffusion-pytorch's `forward_with_cond_scale` (version 2.3):
//! `update = cond - null`, with the component of `update` parallel to `cond` removed (computed per
//! sample in f64), `guided = cond + (s - 1) update`, then optionally std-rescaled towards `cond`
//! (`rescaled_phi`, Lin et al. 2023, with the unbiased std of each sample).

use burn::tensor::{backend::Backend, Tensor, TensorData};
use rand::Rng;

use crate::error::{DiffusionError, Result};
use crate::Denoiser;

/// A network that predicts for a batch of noisy images, each under a class label or the null
/// (unconditional) class.
///
/// `labels[i]` is the class of sample `i` (`0..num_classes`), or `None` for the learned null
/// class (the reference's `cond_keep_mask[i] = False`). `labels.len()` equals the batch size.
pub trait ConditionalDenoiser<B: Backend> {
    /// Run the network on one batch; `x` and `t` as in [`Denoiser::denoise`].
    fn denoise_labelled(&self, x: Tensor<B, 4>, t: Tensor<B, 1>, labels: &[Option<usize>]) -> Tensor<B, 4>;

    /// Number of classes the network knows (labels must be below it).
    fn num_classes(&self) -> usize;
}

/// How conditional and null predictions are combined while sampling.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Guidance {
    /// Guidance scale `s` (`cond_scale`): 1 is the plain conditional model (one forward pass per
    /// step), 0 the unconditional one, larger values push harder towards the class.
    pub cond_scale: f64,
    /// Std rescaling (`rescaled_phi`, Lin et al. 2023): 0 leaves the guided output alone, 1
    /// rescales it to the std of the conditional output; values in between interpolate.
    pub rescaled_phi: f64,
    /// Remove the component of `cond - null` parallel to `cond` before scaling (the reference's
    /// default, `remove_parallel_component=True`, against oversaturation at large scales).
    pub remove_parallel: bool,
    /// CFG++ (Chung et al. 2024): the guided prediction gives `x_0`, but samplers re-noise with
    /// the *null* prediction's noise (`use_cfg_plus_plus` in the reference). Needs the null pass
    /// even at `cond_scale = 1`.
    pub cfg_plus_plus: bool,
}

impl Default for Guidance {
    /// No guidance: the conditional model alone.
    fn default() -> Self {
        Self { cond_scale: 1.0, rescaled_phi: 0.0, remove_parallel: true, cfg_plus_plus: false }
    }
}

impl Guidance {
    /// Guidance of scale `cond_scale` with std rescaling `rescaled_phi` and the reference's other
    /// defaults.
    pub fn new(cond_scale: f64, rescaled_phi: f64) -> Self {
        Self { cond_scale, rescaled_phi, ..Self::default() }
    }

    /// Checks the parameters: a finite scale, `rescaled_phi` in `[0, 1]`.
    pub fn validate(&self) -> Result<()> {
        if !self.cond_scale.is_finite() {
            return Err(DiffusionError::InvalidParameter {
                name: "cond_scale",
                value: self.cond_scale,
                reason: "must be finite",
            });
        }
        if !(0.0..=1.0).contains(&self.rescaled_phi) {
            return Err(DiffusionError::InvalidParameter {
                name: "rescaled_phi",
                value: self.rescaled_phi,
                reason: "must be in [0, 1]",
            });
        }
        Ok(())
    }

    /// Whether a sampling step needs the null prediction (a second half of the batch).
    pub fn needs_null(&self) -> bool {
        self.cond_scale != 1.0 || self.cfg_plus_plus
    }
}

/// Combines per-sample conditional and null outputs (`n` samples of `len` values each, row
/// major) into the guided output, in f64, rounded to f32 at the end.
///
/// With [`Guidance::cond_scale`] = 1 the result is `cond` (bit for bit).
pub fn guide(cond: &[f32], null: &[f32], len: usize, guidance: &Guidance) -> Vec<f32> {
    assert_eq!(cond.len(), null.len(), "cond and null outputs differ in length");
    if guidance.cond_scale == 1.0 {
        return cond.to_vec();
    }
    let s = guidance.cond_scale;
    let phi = guidance.rescaled_phi;
    let mut out = Vec::with_capacity(cond.len());
    for (c, u) in cond.chunks(len.max(1)).zip(null.chunks(len.max(1))) {
        let c: Vec<f64> = c.iter().map(|&v| v as f64).collect();
        let mut update: Vec<f64> = c.iter().zip(u).map(|(&c, &u)| c - u as f64).collect();
        if guidance.remove_parallel {
            // F.normalize's unit vector: c / max(|c|, 1e-12).
            let norm = c.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12);
            let along = update.iter().zip(&c).map(|(x, y)| x * y / norm).sum::<f64>();
            for (x, y) in update.iter_mut().zip(&c) {
                *x -= along * y / norm;
            }
        }
        let scaled: Vec<f64> = c.iter().zip(&update).map(|(c, x)| c + (s - 1.0) * x).collect();
        if phi == 0.0 {
            out.extend(scaled.iter().map(|&v| v as f32));
            continue;
        }
        // A constant guided output has no spread to rescale (the reference would divide by 0).
        let spread = unbiased_std(&scaled);
        let ratio = if spread > 0.0 { unbiased_std(&c) / spread } else { 1.0 };
        out.extend(scaled.iter().map(|&v| (v * ratio * phi + v * (1.0 - phi)) as f32));
    }
    out
}

fn unbiased_std(v: &[f64]) -> f64 {
    let n = v.len() as f64;
    let mean = v.iter().sum::<f64>() / n;
    (v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1.0)).sqrt()
}

/// The reference's condition dropout: label `i` is kept when a uniform draw is below
/// `1 - cond_drop_prob` (`prob_mask_like`); `cond_drop_prob` 0 keeps all without drawing, 1 drops
/// all without drawing.
pub fn drop_labels(labels: &[usize], cond_drop_prob: f64, rng: &mut impl Rng) -> Vec<Option<usize>> {
    if cond_drop_prob <= 0.0 {
        return labels.iter().map(|&l| Some(l)).collect();
    }
    if cond_drop_prob >= 1.0 {
        return vec![None; labels.len()];
    }
    let keep = 1.0 - cond_drop_prob;
    labels.iter().map(|&l| (rng.random::<f64>() < keep).then_some(l)).collect()
}

/// Checks labels against a model with `num_classes` classes and a batch of `batch`.
pub fn check_labels(labels: &[Option<usize>], num_classes: usize, batch: usize) -> Result<()> {
    if labels.len() != batch {
        return Err(DiffusionError::ShapeMismatch {
            what: "class labels (one per sample)",
            expected: vec![batch],
            found: vec![labels.len()],
        });
    }
    if let Some(&bad) = labels.iter().flatten().find(|&&l| l >= num_classes) {
        return Err(DiffusionError::LabelOutOfRange { label: bad, num_classes });
    }
    Ok(())
}

/// A class-conditional denoiser with fixed labels and guidance: a plain [`Denoiser`] for the
/// samplers. Build it with [`Guided::new`], which checks the labels and the guidance.
pub struct Guided<'a, M> {
    model: &'a M,
    labels: Vec<Option<usize>>,
    guidance: Guidance,
}

impl<'a, M> Guided<'a, M> {
    /// Guide `model` towards `labels` (one per sample of the batches it will see).
    pub fn new<B: Backend>(model: &'a M, labels: Vec<Option<usize>>, guidance: Guidance) -> Result<Self>
    where
        M: ConditionalDenoiser<B>,
    {
        guidance.validate()?;
        check_labels(&labels, model.num_classes(), labels.len())?;
        Ok(Self { model, labels, guidance })
    }

    /// The labels, one per sample.
    pub fn labels(&self) -> &[Option<usize>] {
        &self.labels
    }

    /// The guidance parameters.
    pub fn guidance(&self) -> &Guidance {
        &self.guidance
    }
}

/// What a denoiser gives a sampler at one step.
pub struct DenoiserOutput<B: Backend> {
    /// The prediction that determines `x_0` (the guided one under guidance).
    pub out: Tensor<B, 4>,
    /// Under CFG++, the null prediction, whose noise the sampler re-noises with.
    pub renoise: Option<Tensor<B, 4>>,
}

impl<M> Guided<'_, M> {
    fn run<B: Backend>(&self, x: Tensor<B, 4>, t: Tensor<B, 1>) -> DenoiserOutput<B>
    where
        M: ConditionalDenoiser<B>,
    {
        let [n, c, h, w] = x.dims();
        assert_eq!(n, self.labels.len(), "Guided: batch of {n} for {} labels", self.labels.len());
        if !self.guidance.needs_null() {
            return DenoiserOutput { out: self.model.denoise_labelled(x, t, &self.labels), renoise: None };
        }
        // One batch of 2B: conditional half, then null half.
        let mut labels = self.labels.clone();
        labels.extend(std::iter::repeat_n(None, n));
        let both = self.model.denoise_labelled(
            Tensor::cat(vec![x.clone(), x], 0),
            Tensor::cat(vec![t.clone(), t], 0),
            &labels,
        );
        let device = both.device();
        let cond = both.clone().narrow(0, 0, n);
        let null = both.narrow(0, n, n);
        let out = if self.guidance.cond_scale == 1.0 {
            cond
        } else {
            let read = |x: Tensor<B, 4>| x.into_data().convert::<f32>().into_vec::<f32>().expect("f32 tensor data");
            let guided = guide(&read(cond), &read(null.clone()), c * h * w, &self.guidance);
            Tensor::from_data(TensorData::new(guided, [n, c, h, w]), &device)
        };
        DenoiserOutput { out, renoise: self.guidance.cfg_plus_plus.then_some(null) }
    }
}

impl<B: Backend, M: ConditionalDenoiser<B>> Denoiser<B> for Guided<'_, M> {
    fn denoise(&self, x: Tensor<B, 4>, t: Tensor<B, 1>) -> Tensor<B, 4> {
        self.run(x, t).out
    }

    fn denoise_for_sampling(&self, x: Tensor<B, 4>, t: Tensor<B, 1>) -> DenoiserOutput<B> {
        self.run(x, t)
    }
}
