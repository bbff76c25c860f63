//! Training the ResNet-18 as a classifier on labelled images, so its pooled features mean
//! something for FID / RKE. Where the images come from (the lensing simulator, a folder) is the
//! caller's business: this crate knows no lensing code.

use std::path::{Path, PathBuf};

use burn::module::{AutodiffModule, Module};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamConfig, GradientsParams, Optimizer};
use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder, Recorder};
use burn::tensor::ElementConversion;
use burn::tensor::{Int, Tensor, TensorData};
use kernel_ops::{KernelAutodiffBackend, KernelBackend};
use ndarray::ArrayView3;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
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

/// Settings of [`train_classifier`] and [`train_classifier_streamed`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Passes over the training images (with a data source, fresh sets of images).
    pub epochs: usize,
    /// Images per step.
    pub batch_size: usize,
    /// Adam learning rate (the peak, with `cosine`).
    pub lr: f64,
    /// Seed of the initialisation, the shuffles and the augmentation.
    pub seed: u64,
    /// Each training image is shown under a random element of the dihedral group (four
    /// rotations by 90 degrees, each mirrored or not): the classes of a lens do not change.
    #[serde(default)]
    pub augment: bool,
    /// Cosine decay of the learning rate from `lr` to zero over all steps, else constant.
    #[serde(default)]
    pub cosine: bool,
    /// After the last epoch, recompute every batch norm's running statistics with the final
    /// weights as the plain average over this many batches of one more epoch's images ("precise
    /// BN"), instead of keeping the exponential averages collected while the weights moved.
    /// After every epoch they are also recomputed, over at most 10 of its batches, before the
    /// held-out set is measured, so the curve (and a run stopped by its time budget) measures
    /// the weights rather than lagging averages. 0 keeps the averages throughout.
    #[serde(default)]
    pub bn_recalibration: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self { epochs: 8, batch_size: 32, lr: 1e-3, seed: 0, augment: false, cosine: false, bn_recalibration: 0 }
    }
}

/// One epoch of training as the curve records it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// 1-based epoch.
    pub epoch: usize,
    /// Mean training loss of the epoch.
    pub train_loss: f64,
    /// Accuracy on the epoch's training batches (in training mode, as they were seen).
    pub train_accuracy: f64,
    /// Accuracy on the held-out images after the epoch (with `bn_recalibration` > 0, after the
    /// running statistics were recomputed over a few of the epoch's batches).
    pub heldout_accuracy: f64,
    /// Seconds since the run started (summed over resumed sessions).
    pub seconds: f64,
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
    /// One-vs-rest ROC AUC of each class on the held-out images (softmax probability of the
    /// class as the score).
    #[serde(default)]
    pub roc_auc: Vec<f64>,
    /// The training curve, one record per epoch.
    #[serde(default)]
    pub curve: Vec<EpochRecord>,
    /// Training images per epoch.
    pub n_train: usize,
    /// Held-out images.
    pub n_heldout: usize,
    /// Wall time in seconds (summed over resumed sessions).
    pub seconds: f64,
    /// Training images per second over the run (steps only, no evaluation or data).
    #[serde(default)]
    pub train_images_per_second: f64,
    /// Why training ended: `"completed"` or `"time budget"` (then fewer epochs than configured).
    #[serde(default)]
    pub stop: String,
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

/// `img` `[s, s]` (row-major) under dihedral element `g` (0..8): `g % 4` quarter turns, then a
/// mirror when `g >= 4`.
pub fn dihedral(img: &[f32], s: usize, g: u8) -> Vec<f32> {
    let mut out = vec![0f32; s * s];
    for y in 0..s {
        for x in 0..s {
            let (mut u, v) = match g % 4 {
                0 => (x, y),
                1 => (s - 1 - y, x),
                2 => (s - 1 - x, s - 1 - y),
                _ => (y, s - 1 - x),
            };
            if g >= 4 {
                u = s - 1 - u;
            }
            out[v * s + u] = img[y * s + x];
        }
    }
    out
}

/// One-vs-rest ROC AUC: the probability that a positive scores above a negative (ties count
/// half), by ranks. `NaN` when either class is empty.
pub fn roc_auc(scores: &[f64], positive: &[bool]) -> f64 {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let (mut rank_sum, mut i) = (0f64, 0);
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && scores[idx[j + 1]] == scores[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        rank_sum += (i..=j).filter(|&k| positive[idx[k]]).count() as f64 * avg;
        i = j + 1;
    }
    let np = positive.iter().filter(|&&p| p).count() as f64;
    let nn = positive.len() as f64 - np;
    if np == 0.0 || nn == 0.0 {
        return f64::NAN;
    }
    (rank_sum - np * (np + 1.0) / 2.0) / (np * nn)
}

/// Class probabilities (softmax of the logits) of each image, eval mode, batches of `batch`.
pub fn probabilities<B: KernelBackend>(
    model: &ResNet18<B>,
    images: ArrayView3<'_, f32>,
    batch: usize,
    device: &B::Device,
) -> Result<Vec<Vec<f64>>> {
    let n = images.dim().0;
    let mut out = Vec::with_capacity(n);
    let idx: Vec<usize> = (0..n).collect();
    for ch in idx.chunks(batch.max(1)) {
        let logits = model.forward(batch_tensor::<B>(images, ch, device));
        let k = logits.dims()[1];
        let p = burn::tensor::activation::softmax(logits, 1).into_data().convert::<f64>();
        let v: Vec<f64> = p.to_vec().map_err(|e| MetricsError::Linalg(format!("prediction readback: {e:?}")))?;
        out.extend(v.chunks_exact(k).map(|r| r.to_vec()));
    }
    Ok(out)
}

/// Predicted class of each image (eval mode, batches of `batch`).
pub fn predict<B: KernelBackend>(
    model: &ResNet18<B>,
    images: ArrayView3<'_, f32>,
    batch: usize,
    device: &B::Device,
) -> Result<Vec<usize>> {
    let probs = probabilities(model, images, batch, device)?;
    Ok(probs.iter().map(|p| argmax(p)).collect())
}

/// The index of the largest value (the first on ties).
fn argmax(p: &[f64]) -> usize {
    (0..p.len()).fold(0, |best, c| if p[c] > p[best] { c } else { best })
}

/// Labelled training images of one epoch: `[N, S, S]` in `[0, 1]` and one label per image.
pub type EpochData = (ndarray::Array3<f32>, Vec<usize>);

/// Where [`train_classifier_streamed`] keeps its resumable state and when it stops.
#[derive(Clone, Debug, Default)]
pub struct RunControl {
    /// Folder for the state after every epoch (weights, optimiser, curve): a run started
    /// again with the same folder and settings continues after the last finished epoch.
    pub checkpoint_dir: Option<PathBuf>,
    /// Stop before an epoch that would end after this many seconds (counted over resumed
    /// sessions), measuring the held-out set as it stands.
    pub time_budget_s: Option<f64>,
}

/// What [`RunControl::checkpoint_dir`] holds besides the burn records.
#[derive(Serialize, Deserialize)]
struct RunState {
    config: TrainConfig,
    extractor: ExtractorConfig,
    epochs_done: usize,
    curve: Vec<EpochRecord>,
    step_seconds: f64,
    steps_images: usize,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> MetricsError + '_ {
    move |source| MetricsError::Io { path: path.to_path_buf(), source }
}

fn recorder() -> NamedMpkFileRecorder<FullPrecisionSettings> {
    NamedMpkFileRecorder::<FullPrecisionSettings>::new()
}

/// Trains a [`ResNet18`] classifier on `images [N, S, S]` (values in `[0, 1]`, `S` =
/// `extractor.image_size`) with integer `labels`, and measures it on the held-out set.
/// `progress(step, total_steps, loss)` is called after every step.
#[allow(clippy::too_many_arguments)]
pub fn train_classifier<B: KernelAutodiffBackend>(
    images: ArrayView3<'_, f32>,
    labels: &[usize],
    heldout: ArrayView3<'_, f32>,
    heldout_labels: &[usize],
    extractor: ExtractorConfig,
    cfg: &TrainConfig,
    device: &B::Device,
    progress: impl FnMut(usize, usize, f64),
) -> Result<(FeatureExtractor<B::InnerBackend>, TrainReport)> {
    if images.dim().0 != labels.len() {
        return Err(MetricsError::InvalidParameter {
            name: "labels",
            value: format!("{} training images, {} labels", images.dim().0, labels.len()),
            reason: "one label per image".into(),
        });
    }
    let data = |_epoch: usize| Ok((images.to_owned(), labels.to_vec()));
    train_classifier_streamed::<B>(
        images.dim().0,
        data,
        heldout,
        heldout_labels,
        extractor,
        cfg,
        &RunControl::default(),
        device,
        progress,
    )
}

/// Trains a [`ResNet18`] classifier on `n_train` images per epoch that `data(epoch)` (0-based)
/// returns (fresh images every epoch, or the same ones), and measures it on the held-out set
/// after every epoch (the curve), with ROC AUC and the confusion matrix at the end. `control`
/// makes the run resumable and bounded in time. `progress(step, total_steps, loss)` is called
/// after every step.
#[allow(clippy::too_many_arguments)]
pub fn train_classifier_streamed<B: KernelAutodiffBackend>(
    n_train: usize,
    mut data: impl FnMut(usize) -> Result<EpochData>,
    heldout: ArrayView3<'_, f32>,
    heldout_labels: &[usize],
    extractor: ExtractorConfig,
    cfg: &TrainConfig,
    control: &RunControl,
    device: &B::Device,
    mut progress: impl FnMut(usize, usize, f64),
) -> Result<(FeatureExtractor<B::InnerBackend>, TrainReport)> {
    // The classifier is a measuring instrument: f32 whatever the process chose for the U-Net.
    let _f32 = kernel_ops::F32Convolutions::new();
    let (h, w) = (heldout.dim().1, heldout.dim().2);
    if heldout.dim().0 != heldout_labels.len() {
        return Err(MetricsError::InvalidParameter {
            name: "labels",
            value: format!("{} held-out images, {} labels", heldout.dim().0, heldout_labels.len()),
            reason: "one label per image".into(),
        });
    }
    if h != extractor.image_size || w != extractor.image_size {
        return Err(MetricsError::InvalidParameter {
            name: "images",
            value: format!("{h}x{w}"),
            reason: format!("expected {0}x{0}", extractor.image_size),
        });
    }
    if let Some(&bad) = heldout_labels.iter().find(|&&l| l >= extractor.num_classes) {
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
    if n_train == 0 || cfg.batch_size == 0 || cfg.epochs == 0 {
        return Err(MetricsError::InvalidParameter {
            name: "train",
            value: format!("n = {n_train}, batch = {}, epochs = {}", cfg.batch_size, cfg.epochs),
            reason: "need images, batch > 0, epochs > 0".into(),
        });
    }
    if let Some(b) = control.time_budget_s.filter(|b| !(b.is_finite() && *b > 0.0)) {
        return Err(MetricsError::InvalidParameter {
            name: "time budget",
            value: b.to_string(),
            reason: "must be finite and > 0 seconds".into(),
        });
    }
    let t0 = std::time::Instant::now();
    let mut model = {
        let _one_at_a_time = SEEDED_INIT.lock().unwrap_or_else(|e| e.into_inner());
        B::seed(device, cfg.seed);
        materialized(ResNet18::<B>::new(extractor.num_classes, device))
    };
    let mut optim = AdamConfig::new().init();
    let mut state = RunState {
        config: cfg.clone(),
        extractor: extractor.clone(),
        epochs_done: 0,
        curve: Vec::new(),
        step_seconds: 0.0,
        steps_images: 0,
    };
    // Resume: the state of the last finished epoch, when it was written with these settings.
    if let Some(dir) = &control.checkpoint_dir {
        let sp = dir.join("state.json");
        if sp.is_file() {
            let text = std::fs::read_to_string(&sp).map_err(io(&sp))?;
            let saved: RunState = serde_json::from_str(&text)
                .map_err(|e| MetricsError::Json { path: sp.clone(), message: e.to_string() })?;
            // The weights do not depend on the recalibration, nor does the curve on the final
            // one's length: only the batches recomputed after each epoch must agree.
            let per_epoch = |c: &TrainConfig| c.bn_recalibration.min(EPOCH_RECALIBRATION_BATCHES);
            let same = TrainConfig { bn_recalibration: cfg.bn_recalibration, ..saved.config.clone() } == *cfg
                && per_epoch(&saved.config) == per_epoch(cfg);
            if !same || saved.extractor != extractor {
                return Err(MetricsError::InvalidParameter {
                    name: "checkpoint",
                    value: dir.display().to_string(),
                    reason: "holds a run with other settings; use another folder or the same settings".into(),
                });
            }
            let ck = |what: &str, e: burn::record::RecorderError| MetricsError::Checkpoint {
                path: dir.join(what),
                message: format!("cannot resume: {e}"),
            };
            let rec = recorder();
            model = model.load_record(rec.load(dir.join("model"), device).map_err(|e| ck("model.mpk", e))?);
            optim = optim.load_record(rec.load(dir.join("optim"), device).map_err(|e| ck("optim.mpk", e))?);
            state = saved;
        }
    }
    let elapsed_before = state.curve.last().map_or(0.0, |r| r.seconds);
    let loss_fn = CrossEntropyLossConfig::new().init(device);
    let steps_per_epoch = n_train.div_ceil(cfg.batch_size);
    let total = steps_per_epoch * cfg.epochs;
    let mut step = state.epochs_done * steps_per_epoch;
    let mut stop = "completed";
    let s = extractor.image_size;
    for epoch in state.epochs_done..cfg.epochs {
        let now = elapsed_before + t0.elapsed().as_secs_f64();
        let last = state.curve.last().map(|r| r.seconds).unwrap_or(0.0);
        let prev = state.curve.iter().rev().nth(1).map_or(0.0, |r| r.seconds);
        let epoch_time = last - prev;
        // Without a measured epoch (a fresh run's first) there is nothing to predict with: run it.
        if let Some(budget) = control.time_budget_s {
            if epoch_time > 0.0 && now + epoch_time > budget {
                stop = "time budget";
                break;
            }
        }
        let (images, labels) = data(epoch)?;
        let (n, ih, iw) = images.dim();
        if n != n_train || n != labels.len() || ih != s || iw != s {
            return Err(MetricsError::InvalidParameter {
                name: "training images",
                value: format!("epoch {}: {n} images of {ih}x{iw}, {} labels", epoch + 1, labels.len()),
                reason: format!("expected {n_train} images of {s}x{s} with one label each"),
            });
        }
        if let Some(&bad) = labels.iter().find(|&&l| l >= extractor.num_classes) {
            return Err(MetricsError::InvalidParameter {
                name: "labels",
                value: bad.to_string(),
                reason: format!("must be < {}", extractor.num_classes),
            });
        }
        // One generator per epoch: a resumed run draws what an uninterrupted one would.
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        rng.set_stream(epoch as u64);
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut rng);
        let (mut sum, mut correct) = (0.0, 0usize);
        let ts = std::time::Instant::now();
        for ch in order.chunks(cfg.batch_size) {
            let x = if cfg.augment {
                let mut v = Vec::with_capacity(ch.len() * s * s);
                for &i in ch {
                    let img = images.index_axis(ndarray::Axis(0), i);
                    let img = img.as_standard_layout();
                    v.extend(dihedral(img.as_slice().expect("standard layout"), s, rng.random_range(0..8u8)));
                }
                Tensor::<B, 4>::from_data(TensorData::new(v, [ch.len(), 1, s, s]), device)
            } else {
                batch_tensor::<B>(images.view(), ch, device)
            };
            let y: Vec<i64> = ch.iter().map(|&i| labels[i] as i64).collect();
            let y = Tensor::<B, 1, Int>::from_data(TensorData::new(y, [ch.len()]), device);
            let logits = model.forward(x);
            let hits: i64 =
                logits.clone().argmax(1).reshape([ch.len()]).equal(y.clone()).int().sum().into_scalar().elem();
            let loss = loss_fn.forward(logits, y);
            let lv: f64 = loss
                .clone()
                .into_data()
                .convert::<f64>()
                .to_vec::<f64>()
                .map_err(|e| MetricsError::Linalg(format!("loss readback: {e:?}")))?[0];
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            let lr = if cfg.cosine {
                cfg.lr * 0.5 * (1.0 + (std::f64::consts::PI * step as f64 / total as f64).cos())
            } else {
                cfg.lr
            };
            model = optim.step(lr, model, grads);
            sum += lv;
            correct += hits as usize;
            step += 1;
            progress(step, total, lv);
        }
        state.step_seconds += ts.elapsed().as_secs_f64();
        state.steps_images += n;
        if cfg.bn_recalibration > 0 {
            // The running averages lag the weights while the learning rate is high, enough to
            // turn a network that classifies its training batches well into one that calls every
            // held-out image one class. Recomputed, they measure the weights the epoch ended with;
            // training itself only ever normalises with the batch's own statistics.
            let batches = cfg.bn_recalibration.min(EPOCH_RECALIBRATION_BATCHES);
            recalibrate(&mut model, images.view(), batches, cfg.batch_size, device);
        }
        let acc = accuracy(&predict(&model.valid(), heldout, cfg.batch_size, device)?, heldout_labels);
        state.epochs_done = epoch + 1;
        state.curve.push(EpochRecord {
            epoch: epoch + 1,
            train_loss: sum / steps_per_epoch as f64,
            train_accuracy: correct as f64 / n as f64,
            heldout_accuracy: acc,
            seconds: elapsed_before + t0.elapsed().as_secs_f64(),
        });
        if let Some(dir) = &control.checkpoint_dir {
            save_state(dir, &model, &optim, &state)?;
        }
    }
    if cfg.bn_recalibration > 0 && stop == "completed" {
        let (images, _) = data(cfg.epochs)?;
        recalibrate(&mut model, images.view(), cfg.bn_recalibration, cfg.batch_size, device);
    }
    let model = model.valid();
    let probs = probabilities(&model, heldout, cfg.batch_size, device)?;
    let k = extractor.num_classes;
    let pred: Vec<usize> = probs.iter().map(|p| argmax(p)).collect();
    let mut confusion = vec![vec![0usize; k]; k];
    for (&t, &p) in heldout_labels.iter().zip(&pred) {
        confusion[t][p] += 1;
    }
    let roc = (0..k)
        .map(|c| {
            let scores: Vec<f64> = probs.iter().map(|p| p[c]).collect();
            let pos: Vec<bool> = heldout_labels.iter().map(|&l| l == c).collect();
            roc_auc(&scores, &pos)
        })
        .collect();
    let report = TrainReport {
        epoch_loss: state.curve.iter().map(|r| r.train_loss).collect(),
        heldout_accuracy: accuracy(&pred, heldout_labels),
        confusion,
        roc_auc: roc,
        n_train,
        n_heldout: pred.len(),
        seconds: elapsed_before + t0.elapsed().as_secs_f64(),
        train_images_per_second: if state.step_seconds > 0.0 {
            state.steps_images as f64 / state.step_seconds
        } else {
            0.0
        },
        stop: stop.into(),
        curve: state.curve,
        config: cfg.clone(),
    };
    let info = serde_json::to_value(&report).ok();
    Ok((FeatureExtractor { model, config: extractor, info }, report))
}

/// With `bn_recalibration` > 0, the batches of an epoch's own images (at most that many) over
/// which the running statistics are recomputed before the held-out set is measured after it: a
/// few percent of the epoch's work.
const EPOCH_RECALIBRATION_BATCHES: usize = 10;

/// Recomputes every batch norm's running statistics with the current weights as the plain average
/// over the first `batches` batches of `images` ("precise BN").
fn recalibrate<B: KernelAutodiffBackend>(
    model: &mut ResNet18<B>,
    images: ArrayView3<'_, f32>,
    batches: usize,
    batch_size: usize,
    device: &B::Device,
) {
    let n = images.dim().0.min(batches * batch_size);
    let idx: Vec<usize> = (0..n).collect();
    for (i, ch) in idx.chunks(batch_size).enumerate() {
        // Momentum 1 / (i + 1): after batch i each running statistic is the mean over batches 0..=i.
        model.set_batch_norm_momentum(1.0 / (i as f64 + 1.0));
        let _ = model.forward(batch_tensor::<B>(images, ch, device));
    }
    model.set_batch_norm_momentum(0.1);
}

fn accuracy(pred: &[usize], labels: &[usize]) -> f64 {
    pred.iter().zip(labels).filter(|(p, l)| p == l).count() as f64 / labels.len().max(1) as f64
}

/// Writes the epoch's state into `dir` atomically: a new folder beside it, then swapped in.
fn save_state<B: KernelAutodiffBackend, O: Optimizer<ResNet18<B>, B>>(
    dir: &Path,
    model: &ResNet18<B>,
    optim: &O,
    state: &RunState,
) -> Result<()> {
    let tmp = atomic_file::temp_path(dir);
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    let write = || -> Result<()> {
        let rec = recorder();
        let ck = |what: &str, e: burn::record::RecorderError| MetricsError::Checkpoint {
            path: tmp.join(what),
            message: format!("could not write: {e}"),
        };
        rec.record(model.clone().into_record(), tmp.join("model")).map_err(|e| ck("model.mpk", e))?;
        rec.record(optim.to_record(), tmp.join("optim")).map_err(|e| ck("optim.mpk", e))?;
        let sp = tmp.join("state.json");
        std::fs::write(&sp, serde_json::to_string_pretty(state).expect("serialisable")).map_err(io(&sp))?;
        atomic_file::replace_dir(&tmp, dir).map_err(io(dir))
    };
    let r = write();
    if r.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    r
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
        // A time budget that is not a positive number of seconds, and a data source whose
        // epoch disagrees with the announced count, are refused naming them.
        let streamed = |budget: Option<f64>, n_data: usize| {
            train_classifier_streamed::<Autodiff<Flex>>(
                4,
                |_| Ok((Array3::<f32>::zeros((n_data, 8, 8)), vec![0; n_data])),
                images.view(),
                &labels,
                ex.clone(),
                &TrainConfig { epochs: 1, batch_size: 4, ..TrainConfig::default() },
                &RunControl { checkpoint_dir: None, time_budget_s: budget },
                &Default::default(),
                |_, _, _| {},
            )
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
        };
        for b in [0.0, -1.0, f64::NAN] {
            let e = streamed(Some(b), 4);
            assert!(e.contains("time budget"), "budget {b}: {e}");
        }
        let e = streamed(None, 3);
        assert!(e.contains("training images") && e.contains("epoch 1: 3 images"), "{e}");
    }

    /// The eight dihedral elements of an asymmetric image are eight different images, each a
    /// permutation of the pixels, and element 0 is the identity.
    #[test]
    fn dihedral_group_has_eight_distinct_elements() {
        let s = 3;
        let img: Vec<f32> = (0..9).map(|v| v as f32).collect();
        let all: Vec<Vec<f32>> = (0..8).map(|g| dihedral(&img, s, g)).collect();
        assert_eq!(all[0], img);
        for (i, a) in all.iter().enumerate() {
            let mut sorted = a.clone();
            sorted.sort_by(f32::total_cmp);
            assert_eq!(sorted, img, "element {i} is not a permutation");
            for b in &all[i + 1..] {
                assert_ne!(a, b);
            }
        }
        // Four quarter turns are the identity.
        let mut r = img.clone();
        for _ in 0..4 {
            r = dihedral(&r, s, 1);
        }
        assert_eq!(r, img);
    }

    /// ROC AUC: a perfect ranking, a reversed one, all ties, and a hand-counted case.
    #[test]
    fn roc_auc_counts_ranked_pairs() {
        let pos = [false, false, true, true];
        assert_eq!(roc_auc(&[0.1, 0.2, 0.8, 0.9], &pos), 1.0);
        assert_eq!(roc_auc(&[0.9, 0.8, 0.2, 0.1], &pos), 0.0);
        assert_eq!(roc_auc(&[0.5; 4], &pos), 0.5);
        // Pairs (pos, neg): (0.3 > 0.1), (0.3 < 0.4), (0.6 > 0.1), (0.6 > 0.4): 3 of 4.
        assert_eq!(roc_auc(&[0.1, 0.4, 0.3, 0.6], &pos), 0.75);
        assert!(roc_auc(&[0.1, 0.2], &[true, true]).is_nan());
    }

    /// `n` labelled `s`x`s` images whose pattern depends on the class, varied by `seed`.
    fn toy(n: usize, s: usize, seed: usize) -> EpochData {
        let labels: Vec<usize> = (0..n).map(|i| i % 3).collect();
        let images = Array3::from_shape_fn((n, s, s), |(i, y, x)| {
            let c = labels[i] as f32;
            ((x * (1 + labels[i]) + y * 3 + i * 7 + seed) % 11) as f32 / 11.0 * (0.5 + 0.25 * c)
        });
        (images, labels)
    }

    /// After an epoch the held-out set is measured with running statistics recomputed over the
    /// epoch's first batches, not with the averages that lag the weights: in a run stopped by its
    /// time budget (so without the final recalibration), the stem's batch norm holds the mean of
    /// the per-batch means and unbiased variances of its input over exactly those images, and
    /// the curve's last accuracy is the returned model's.
    #[test]
    fn epochs_are_measured_with_recomputed_statistics() {
        let s = 8;
        let (ho, ho_labels) = toy(6, s, 99);
        let ex = ExtractorConfig { image_size: s, ..ExtractorConfig::default() };
        let cfg = TrainConfig { epochs: 2, batch_size: 4, bn_recalibration: 2, ..TrainConfig::default() };
        let (model, report) = train_classifier_streamed::<Autodiff<Flex>>(
            12,
            |epoch| Ok(toy(12, s, epoch)),
            ho.view(),
            &ho_labels,
            ex.clone(),
            &cfg,
            &RunControl { checkpoint_dir: None, time_budget_s: Some(1e-9) },
            &Default::default(),
            |_, _, _| {},
        )
        .unwrap();
        assert_eq!((report.stop.as_str(), report.curve.len()), ("time budget", 1));
        assert_eq!(report.curve[0].heldout_accuracy, report.heldout_accuracy);
        // The recalibration never touches the weights: the run without it ends with the same.
        let (plain, _) = train_classifier_streamed::<Autodiff<Flex>>(
            12,
            |epoch| Ok(toy(12, s, epoch)),
            ho.view(),
            &ho_labels,
            ex,
            &TrainConfig { bn_recalibration: 0, ..cfg.clone() },
            &RunControl { checkpoint_dir: None, time_budget_s: Some(1e-9) },
            &Default::default(),
            |_, _, _| {},
        )
        .unwrap();
        plain.model.fc.weight.val().into_data().assert_eq(&model.model.fc.weight.val().into_data(), true);
        // The stem's convolution, with the returned weights, over epoch 0's first two batches.
        let m = &model.model;
        let (images, _) = toy(12, s, 0);
        let x: Vec<f32> = images.iter().take(8 * s * s).copied().collect();
        let y = m.conv1.forward(Tensor::<Flex, 4>::from_data(TensorData::new(x, [8, 1, s, s]), &Default::default()));
        let [_, c, h, w] = y.dims();
        let y: Vec<f32> = y.into_data().to_vec().unwrap();
        let per = 4 * h * w;
        let (mut mean, mut var) = (vec![0f64; c], vec![0f64; c]);
        for b in 0..2 {
            for ch in 0..c {
                let v: Vec<f64> = (0..4)
                    .flat_map(|i| {
                        let at = ((b * 4 + i) * c + ch) * h * w;
                        y[at..at + h * w].iter().map(|&v| v as f64)
                    })
                    .collect();
                let mu = v.iter().sum::<f64>() / per as f64;
                mean[ch] += mu / 2.0;
                var[ch] += v.iter().map(|v| (v - mu).powi(2)).sum::<f64>() / (per - 1) as f64 / 2.0;
            }
        }
        let got = |t: Tensor<Flex, 1>| -> Vec<f32> { t.into_data().to_vec().unwrap() };
        for (name, want, have) in
            [("mean", &mean, got(m.bn1.running_mean.value())), ("var", &var, got(m.bn1.running_var.value()))]
        {
            for (ch, (a, b)) in want.iter().zip(&have).enumerate() {
                assert!((a - *b as f64).abs() <= 1e-4 * (1.0 + a.abs()), "running {name}[{ch}]: want {a}, have {b}");
            }
        }
    }

    /// A run stopped after one epoch and resumed from its folder ends with the weights, curve
    /// and accuracy of the uninterrupted run; a folder holding other settings (other epochs, no
    /// recalibration after each epoch) is refused.
    #[test]
    fn resumed_run_matches_the_uninterrupted_one() {
        let s = 8;
        let make = |n: usize, seed: usize| toy(n, s, seed);
        let (ho, ho_labels) = make(6, 99);
        let ex = ExtractorConfig { image_size: s, ..ExtractorConfig::default() };
        let cfg = TrainConfig {
            epochs: 2,
            batch_size: 4,
            lr: 1e-3,
            seed: 3,
            augment: true,
            cosine: true,
            bn_recalibration: 1,
        };
        let run = |control: &RunControl, epochs: usize| {
            let cfg = TrainConfig { epochs, ..cfg.clone() };
            train_classifier_streamed::<Autodiff<Flex>>(
                8,
                |epoch| Ok(make(8, epoch)),
                ho.view(),
                &ho_labels,
                ex.clone(),
                &cfg,
                control,
                &Default::default(),
                |_, _, _| {},
            )
        };
        let (whole, whole_report) = run(&RunControl::default(), 2).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let control = RunControl { checkpoint_dir: Some(dir.path().join("run")), time_budget_s: None };
        // The first session runs out of time after epoch 1 (a budget below one epoch's time).
        let (_, first) = run(&RunControl { time_budget_s: Some(1e-9), ..control.clone() }, 2).unwrap();
        assert_eq!(first.stop, "time budget");
        assert_eq!(first.curve.len(), 1);
        let (resumed, resumed_report) = run(&control, 2).unwrap();
        assert_eq!(resumed_report.curve.len(), 2);
        for (a, b) in resumed_report.curve.iter().zip(&whole_report.curve) {
            assert_eq!((a.epoch, a.train_loss, a.heldout_accuracy), (b.epoch, b.train_loss, b.heldout_accuracy));
        }
        let w = |m: &FeatureExtractor<Flex>| m.model.fc.weight.val().into_data();
        w(&resumed).assert_eq(&w(&whole), true);
        assert_eq!(resumed_report.stop, "completed");
        // Other settings in the same folder: a typed error naming the checkpoint.
        let e = run(&control, 3).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("checkpoint") && e.contains("other settings"), "{e}");
        // Without the recalibration after each epoch, the folder's curve would mix two kinds of
        // measurement: refused too.
        let e = train_classifier_streamed::<Autodiff<Flex>>(
            8,
            |epoch| Ok(make(8, epoch)),
            ho.view(),
            &ho_labels,
            ex.clone(),
            &TrainConfig { bn_recalibration: 0, ..cfg.clone() },
            &control,
            &Default::default(),
            |_, _, _| {},
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(e.contains("other settings"), "{e}");
    }
}
