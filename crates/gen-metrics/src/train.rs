//! Training the ResNet-18 as a classifier on labelled images, so its pooled features mean
//! something for FID / RKE. Where the images come from (the lensing simulator, a folder) is the
//! caller's business: this crate knows no lensing code.

use burn::module::AutodiffModule;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Int, Tensor, TensorData};
use ndarray::ArrayView3;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::{MetricsError, Result};
use crate::extractor::{ExtractorConfig, FeatureExtractor, ResNet18};

/// burn draws initial weights from one process-wide generator per backend, seeded by `B::seed`,
/// and lazily, at a parameter's first use. Held from the seed until every parameter is drawn
/// ([`materialized`]), this keeps two classifiers created at once on different threads from
/// interleaving their draws (same seed, same weights).
static SEEDED_INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Draws every lazily initialised parameter of `model` now.
fn materialized<B: burn::tensor::backend::Backend>(model: ResNet18<B>) -> ResNet18<B> {
    struct Touch;
    impl<B: burn::tensor::backend::Backend> burn::module::ModuleVisitor<B> for Touch {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<B, D>>) {
            let _ = param.val();
        }
    }
    burn::module::Module::visit(&model, &mut Touch);
    model
}

/// Settings of [`train_classifier`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Passes over the training images.
    pub epochs: usize,
    /// Images per step.
    pub batch_size: usize,
    /// Adam learning rate.
    pub lr: f64,
    /// Seed of the initialisation and the shuffles.
    pub seed: u64,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self { epochs: 8, batch_size: 32, lr: 1e-3, seed: 0 }
    }
}

/// What training measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainReport {
    /// Mean training loss per epoch.
    pub epoch_loss: Vec<f64>,
    /// Accuracy on the held-out images.
    pub heldout_accuracy: f64,
    /// `confusion[true][predicted]` counts on the held-out images.
    pub confusion: Vec<Vec<usize>>,
    /// Training images.
    pub n_train: usize,
    /// Held-out images.
    pub n_heldout: usize,
    /// Wall time in seconds.
    pub seconds: f64,
    /// The settings used.
    pub config: TrainConfig,
}

fn batch_tensor<B: burn::tensor::backend::Backend>(
    images: ArrayView3<'_, f32>,
    idx: &[usize],
    device: &B::Device,
) -> Tensor<B, 4> {
    let (_, h, w) = images.dim();
    let mut v = Vec::with_capacity(idx.len() * h * w);
    for &i in idx {
        v.extend(images.index_axis(ndarray::Axis(0), i).iter().copied());
    }
    Tensor::from_data(TensorData::new(v, [idx.len(), 1, h, w]), device)
}

/// Predicted class of each image (eval mode, batches of `batch`).
pub fn predict<B: burn::tensor::backend::Backend>(
    model: &ResNet18<B>,
    images: ArrayView3<'_, f32>,
    batch: usize,
    device: &B::Device,
) -> Result<Vec<usize>> {
    let n = images.dim().0;
    let mut out = Vec::with_capacity(n);
    let idx: Vec<usize> = (0..n).collect();
    for ch in idx.chunks(batch.max(1)) {
        let p = model.forward(batch_tensor::<B>(images, ch, device)).argmax(1).into_data();
        let v: Vec<i64> =
            p.convert::<i64>().to_vec().map_err(|e| MetricsError::Linalg(format!("prediction readback: {e:?}")))?;
        out.extend(v.into_iter().map(|c| c as usize));
    }
    Ok(out)
}

/// Trains a [`ResNet18`] classifier on `images [N, S, S]` (values in `[0, 1]`, `S` =
/// `extractor.image_size`) with integer `labels`, and measures it on the held-out set.
/// `progress(step, total_steps, loss)` is called after every step.
#[allow(clippy::too_many_arguments)]
pub fn train_classifier<B: AutodiffBackend>(
    images: ArrayView3<'_, f32>,
    labels: &[usize],
    heldout: ArrayView3<'_, f32>,
    heldout_labels: &[usize],
    extractor: ExtractorConfig,
    cfg: &TrainConfig,
    device: &B::Device,
    mut progress: impl FnMut(usize, usize, f64),
) -> Result<(FeatureExtractor<B::InnerBackend>, TrainReport)> {
    let (n, h, w) = images.dim();
    if n != labels.len() || heldout.dim().0 != heldout_labels.len() {
        return Err(MetricsError::InvalidParameter {
            name: "labels",
            value: format!("{} / {}", labels.len(), heldout_labels.len()),
            reason: "one label per image".into(),
        });
    }
    if h != extractor.image_size || w != extractor.image_size || heldout.dim().1 != h || heldout.dim().2 != w {
        return Err(MetricsError::InvalidParameter {
            name: "images",
            value: format!("{h}x{w}"),
            reason: format!("expected {0}x{0}", extractor.image_size),
        });
    }
    if let Some(&bad) = labels.iter().chain(heldout_labels).find(|&&l| l >= extractor.num_classes) {
        return Err(MetricsError::InvalidParameter {
            name: "labels",
            value: bad.to_string(),
            reason: format!("must be < {}", extractor.num_classes),
        });
    }
    if !(cfg.lr.is_finite() && cfg.lr > 0.0) {
        return Err(MetricsError::InvalidParameter {
            name: "lr",
            value: cfg.lr.to_string(),
            reason: "must be finite and > 0".into(),
        });
    }
    // An empty held-out set would report a NaN accuracy.
    if heldout.dim().0 == 0 {
        return Err(MetricsError::InvalidParameter {
            name: "heldout",
            value: "0 images".into(),
            reason: "need held-out images to measure accuracy".into(),
        });
    }
    if n == 0 || cfg.batch_size == 0 || cfg.epochs == 0 {
        return Err(MetricsError::InvalidParameter {
            name: "train",
            value: format!("n = {n}, batch = {}, epochs = {}", cfg.batch_size, cfg.epochs),
            reason: "need images, batch > 0, epochs > 0".into(),
        });
    }
    let t0 = std::time::Instant::now();
    let mut model = {
        let _one_at_a_time = SEEDED_INIT.lock().unwrap_or_else(|e| e.into_inner());
        B::seed(device, cfg.seed);
        materialized(ResNet18::<B>::new(extractor.num_classes, device))
    };
    let mut optim = AdamConfig::new().init();
    let loss_fn = CrossEntropyLossConfig::new().init(device);
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    let mut order: Vec<usize> = (0..n).collect();
    let steps_per_epoch = n.div_ceil(cfg.batch_size);
    let total = steps_per_epoch * cfg.epochs;
    let mut step = 0;
    let mut epoch_loss = Vec::new();
    for _ in 0..cfg.epochs {
        order.shuffle(&mut rng);
        let mut sum = 0.0;
        for ch in order.chunks(cfg.batch_size) {
            let x = batch_tensor::<B>(images, ch, device);
            let y: Vec<i64> = ch.iter().map(|&i| labels[i] as i64).collect();
            let y = Tensor::<B, 1, Int>::from_data(TensorData::new(y, [ch.len()]), device);
            let loss = loss_fn.forward(model.forward(x), y);
            let lv: f64 = loss
                .clone()
                .into_data()
                .convert::<f64>()
                .to_vec::<f64>()
                .map_err(|e| MetricsError::Linalg(format!("loss readback: {e:?}")))?[0];
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(cfg.lr, model, grads);
            sum += lv;
            step += 1;
            progress(step, total, lv);
        }
        epoch_loss.push(sum / steps_per_epoch as f64);
    }
    let model = model.valid();
    let pred = predict(&model, heldout, cfg.batch_size, device)?;
    let k = extractor.num_classes;
    let mut confusion = vec![vec![0usize; k]; k];
    for (&t, &p) in heldout_labels.iter().zip(&pred) {
        confusion[t][p] += 1;
    }
    let correct: usize = (0..k).map(|i| confusion[i][i]).sum();
    let report = TrainReport {
        epoch_loss,
        heldout_accuracy: if pred.is_empty() { f64::NAN } else { correct as f64 / pred.len() as f64 },
        confusion,
        n_train: n,
        n_heldout: pred.len(),
        seconds: t0.elapsed().as_secs_f64(),
        config: cfg.clone(),
    };
    let info = serde_json::to_value(&report).ok();
    Ok((FeatureExtractor { model, config: extractor, info }, report))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use ndarray::Array3;

    /// Settings that cannot train or cannot be scored are refused before the network is built,
    /// naming the setting.
    #[test]
    fn bad_settings_are_typed_errors() {
        let images = Array3::<f32>::zeros((4, 8, 8));
        let labels = [0, 1, 2, 0];
        let ex = ExtractorConfig { image_size: 8, ..ExtractorConfig::default() };
        let run = |heldout: &Array3<f32>, heldout_labels: &[usize], cfg: TrainConfig| {
            train_classifier::<Autodiff<Flex>>(
                images.view(),
                &labels,
                heldout.view(),
                heldout_labels,
                ex.clone(),
                &cfg,
                &Default::default(),
                |_, _, _| {},
            )
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
        };
        for lr in [f64::NAN, f64::INFINITY, 0.0, -1e-3] {
            let e = run(&images, &labels, TrainConfig { lr, ..TrainConfig::default() });
            assert!(e.contains("lr"), "lr {lr}: {e}");
        }
        let empty = Array3::<f32>::zeros((0, 8, 8));
        let e = run(&empty, &[], TrainConfig::default());
        assert!(e.contains("heldout"), "{e}");
        let e = run(&images, &labels, TrainConfig { epochs: 0, ..TrainConfig::default() });
        assert!(e.contains("epochs = 0"), "{e}");
    }
}
