//! Training the ResNet-18 as a 3-class lensing classifier (no_sub / cdm / axion), so its
//! pooled features mean something for FID / RKE.

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

fn batch_tensor<B: burn::tensor::backend::Backend>(images: ArrayView3<'_, f32>, idx: &[usize], device: &B::Device) -> Tensor<B, 4> {
    let (_, h, w) = images.dim();
    let mut v = Vec::with_capacity(idx.len() * h * w);
    for &i in idx {
        v.extend(images.index_axis(ndarray::Axis(0), i).iter().copied());
    }
    Tensor::from_data(TensorData::new(v, [idx.len(), 1, h, w]), device)
}

/// Predicted class of each image (eval mode, batches of `batch`).
pub fn predict<B: burn::tensor::backend::Backend>(model: &ResNet18<B>, images: ArrayView3<'_, f32>, batch: usize, device: &B::Device) -> Result<Vec<usize>> {
    let n = images.dim().0;
    let mut out = Vec::with_capacity(n);
    let idx: Vec<usize> = (0..n).collect();
    for ch in idx.chunks(batch.max(1)) {
        let p = model.forward(batch_tensor::<B>(images, ch, device)).argmax(1).into_data();
        let v: Vec<i64> = p.convert::<i64>().to_vec().map_err(|e| MetricsError::Linalg(format!("prediction readback: {e:?}")))?;
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
        return Err(MetricsError::InvalidParameter { name: "labels", value: format!("{} / {}", labels.len(), heldout_labels.len()), reason: "one label per image".into() });
    }
    if h != extractor.image_size || w != extractor.image_size || heldout.dim().1 != h || heldout.dim().2 != w {
        return Err(MetricsError::InvalidParameter { name: "images", value: format!("{h}x{w}"), reason: format!("expected {0}x{0}", extractor.image_size) });
    }
    if let Some(&bad) = labels.iter().chain(heldout_labels).find(|&&l| l >= extractor.num_classes) {
        return Err(MetricsError::InvalidParameter { name: "labels", value: bad.to_string(), reason: format!("must be < {}", extractor.num_classes) });
    }
    if n == 0 || cfg.batch_size == 0 || cfg.epochs == 0 {
        return Err(MetricsError::InvalidParameter { name: "train", value: format!("n = {n}, batch = {}, epochs = {}", cfg.batch_size, cfg.epochs), reason: "need images, batch > 0, epochs > 0".into() });
    }
    let t0 = std::time::Instant::now();
    B::seed(device, cfg.seed);
    let mut model = ResNet18::<B>::new(extractor.num_classes, device);
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
            let lv: f64 = loss.clone().into_data().convert::<f64>().to_vec::<f64>().map_err(|e| MetricsError::Linalg(format!("loss readback: {e:?}")))?[0];
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

/// Simulated labelled lensing images for training / held-out evaluation.
#[derive(Clone, Debug)]
pub struct SimulatedImages {
    /// Images `[N, S, S]`, values in `[0, 1]`.
    pub images: ndarray::Array3<f32>,
    /// Label per image (index into [`ExtractorConfig::class_names`]: no_sub, cdm, axion).
    pub labels: Vec<usize>,
}

/// Simulates `count` DeepLense Model I images (lens-data, all three classes in turn, PSF and
/// noise, min-max normalised) on a `num_pix` grid and resizes them to `image_size` with the
/// antialiased bilinear filter. Seeded: same arguments, same images.
pub fn simulate_images(count: usize, num_pix: usize, image_size: usize, seed: u64) -> Result<SimulatedImages> {
    use lens_data::{simulate_dataset, LensClass, ModelI};
    let cfg = ModelI { num_pix, pixel_scale: 0.05 * 150.0 / num_pix as f64, ..ModelI::default() };
    let classes = [LensClass::NoSub, LensClass::Cdm, LensClass::Axion];
    let set = simulate_dataset(&cfg, &classes, count, seed).map_err(|e| MetricsError::InvalidParameter { name: "simulation", value: format!("count {count}, num_pix {num_pix}"), reason: e.to_string() })?;
    let mut images = ndarray::Array3::<f32>::zeros((count, image_size, image_size));
    for (i, mut dst) in images.outer_iter_mut().enumerate() {
        let img = set.images.index_axis(ndarray::Axis(0), i);
        if num_pix == image_size {
            dst.assign(&img.mapv(|v| v as f32));
        } else {
            dst.assign(&lens_data::resize::resize_bilinear_aa(img, (image_size, image_size)));
        }
    }
    Ok(SimulatedImages { images, labels: set.labels })
}

/// Recipe of the default extractor that [`ensure_extractor`] trains when no cached one exists.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExtractorRecipe {
    /// Training images (simulated, classes balanced).
    pub n_train: usize,
    /// Held-out images (different seed).
    pub n_heldout: usize,
    /// Simulation grid (pixels per side; the field of view stays 7.5 arcsec).
    pub num_pix: usize,
    /// Network input size.
    pub image_size: usize,
    /// Optimiser settings.
    pub train: TrainConfig,
}

impl Default for ExtractorRecipe {
    fn default() -> Self {
        Self { n_train: 3000, n_heldout: 600, num_pix: 150, image_size: 64, train: TrainConfig::default() }
    }
}

/// Simulates data, trains and returns the extractor with its report (see [`ExtractorRecipe`]).
pub fn train_from_recipe<B: AutodiffBackend>(recipe: &ExtractorRecipe, device: &B::Device, progress: impl FnMut(usize, usize, f64)) -> Result<(FeatureExtractor<B::InnerBackend>, TrainReport)> {
    let tr = simulate_images(recipe.n_train, recipe.num_pix, recipe.image_size, recipe.train.seed)?;
    let ho = simulate_images(recipe.n_heldout, recipe.num_pix, recipe.image_size, recipe.train.seed.wrapping_add(1_000_003))?;
    let cfg = ExtractorConfig { image_size: recipe.image_size, ..ExtractorConfig::default() };
    train_classifier::<B>(tr.images.view(), &tr.labels, ho.images.view(), &ho.labels, cfg, &recipe.train, device, progress)
}

/// Loads the extractor cached at `path`, or trains one from `recipe` and caches it there
/// (burnpack + `.json` sidecar with the training report): evaluation never needs the network.
pub fn ensure_extractor<B: AutodiffBackend>(path: &std::path::Path, recipe: &ExtractorRecipe, device: &B::Device, progress: impl FnMut(usize, usize, f64)) -> Result<FeatureExtractor<B::InnerBackend>> {
    if path.exists() {
        return FeatureExtractor::load(path, device);
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| MetricsError::Io { path: dir.to_path_buf(), source })?;
    }
    let (ex, _) = train_from_recipe::<B>(recipe, device, progress)?;
    ex.save(path)?;
    Ok(ex)
}
