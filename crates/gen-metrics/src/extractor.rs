//! ResNet-18 for single-channel lensing images (the DeepLense common-test classifier shape):
//! 512-d pooled features, loading torchvision `resnet18` state dicts with a 1-channel `conv1`
//! and our own burnpack checkpoints. Generic over `B: Backend`.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::relu;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use burn_store::{BurnpackStore, ModuleSnapshot, ModuleStore, PytorchStore};
use kernel_ops::KernelBackend;
use ndarray::{Array2, ArrayView3};
use serde::{Deserialize, Serialize};

use crate::error::{MetricsError, Result};

/// Width of the pooled features.
pub const FEATURE_DIM: usize = 512;

/// Architecture and preprocessing of a [`ResNet18`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExtractorConfig {
    /// Output classes of the final linear layer (3 for no_sub / cdm / axion).
    pub num_classes: usize,
    /// Images are resized to `image_size x image_size` before the network (64 by default).
    pub image_size: usize,
    /// Class names, in label order.
    pub class_names: Vec<String>,
}

impl Default for ExtractorConfig {
    fn default() -> Self {
        Self { num_classes: 3, image_size: 64, class_names: vec!["no_sub".into(), "cdm".into(), "axion".into()] }
    }
}

/// torchvision `BasicBlock`.
#[derive(Module, Debug)]
pub struct BasicBlock<B: Backend> {
    conv1: Conv2d<B>,
    bn1: BatchNorm<B>,
    conv2: Conv2d<B>,
    bn2: BatchNorm<B>,
    downsample: Option<Downsample<B>>,
}

/// The 1x1 strided projection of a block's shortcut (`downsample.0`, `downsample.1`).
#[derive(Module, Debug)]
pub struct Downsample<B: Backend> {
    conv: Conv2d<B>,
    bn: BatchNorm<B>,
}

fn conv(cin: usize, cout: usize, k: usize, stride: usize, pad: usize, device: &impl Sized) -> Conv2dConfig {
    let _ = device;
    Conv2dConfig::new([cin, cout], [k, k])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
        .with_bias(false)
}

impl<B: Backend> BasicBlock<B> {
    fn new(cin: usize, cout: usize, stride: usize, device: &B::Device) -> Self {
        let downsample = (stride != 1 || cin != cout).then(|| Downsample {
            conv: conv(cin, cout, 1, stride, 0, device).init(device),
            bn: BatchNormConfig::new(cout).init(device),
        });
        Self {
            conv1: conv(cin, cout, 3, stride, 1, device).init(device),
            bn1: BatchNormConfig::new(cout).init(device),
            conv2: conv(cout, cout, 3, 1, 1, device).init(device),
            bn2: BatchNormConfig::new(cout).init(device),
            downsample,
        }
    }
}

impl<B: KernelBackend> BasicBlock<B> {
    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let identity = match &self.downsample {
            Some(d) => batch_norm(&d.bn, d.conv.forward(x.clone()), false),
            None => x.clone(),
        };
        let y = batch_norm(&self.bn1, conv_forward(&self.conv1, x), true);
        let y = batch_norm(&self.bn2, conv_forward(&self.conv2, y), false);
        relu(y + identity)
    }
}

/// A convolution of the network: 3x3 stride 1 through [`KernelBackend::conv2d_same`] (on Flex
/// the direct kernel; most of the network's arithmetic), the strided ones and the smallest
/// planes through burn.
fn conv_forward<B: KernelBackend>(c: &Conv2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    let [_, _, kh, kw] = c.weight.dims();
    let [_, _, h, w] = x.dims();
    // Planes under 32 pixels (layer4's 4x4 or 5x5) would leave the direct kernel's 48-pixel
    // tiles mostly padding; burn's GEMM over the whole batch is faster there (measured with
    // the classifier_step bench: 17.3 vs 14.7 training images/s at 128x128).
    if h * w < 32 {
        return c.forward(x);
    }
    let same = c.padding == PaddingConfig2d::Explicit(1, 1, 1, 1);
    if same && c.stride == [1, 1] && kh == 3 && kw == 3 && c.bias.is_none() && c.dilation == [1, 1] && c.groups == 1 {
        kernel_ops::conv2d_same(x, c.weight.val(), None)
    } else {
        c.forward(x)
    }
}

/// Batch normalisation, then ReLU when `relu`, through [`KernelBackend`]'s fused operations.
/// As burn's `BatchNorm` does, it normalises with the batch's statistics when the backend
/// tracks gradients (training) and with the running averages otherwise. The running variance
/// is updated with the unbiased batch variance, as torch does (burn's module uses the biased
/// one), so that running statistics mean the same as in a torchvision checkpoint.
fn batch_norm<B: KernelBackend>(bn: &BatchNorm<B>, x: Tensor<B, 4>, relu: bool) -> Tensor<B, 4> {
    if !B::ad_enabled(&x.device()) {
        let (mean, var) = (bn.running_mean.value(), bn.running_var.value());
        return kernel_ops::batch_norm_eval(x, bn.gamma.val(), bn.beta.val(), mean, var, bn.epsilon, relu);
    }
    let [n, _, h, w] = x.dims();
    let m = (n * h * w) as f64;
    let (y, mean, var) = kernel_ops::batch_norm_train(x, bn.gamma.val(), bn.beta.val(), bn.epsilon, relu);
    let unbiased = if m > 1.0 { m / (m - 1.0) } else { 1.0 };
    let mom = bn.momentum;
    let rm = bn.running_mean.value_sync().mul_scalar(1.0 - mom).add(mean.detach().mul_scalar(mom));
    let rv = bn.running_var.value_sync().mul_scalar(1.0 - mom).add(var.detach().mul_scalar(mom * unbiased));
    bn.running_mean.update(rm);
    bn.running_var.update(rv);
    y
}

/// ResNet-18 with a single-channel stem: conv 7x7/2, BN, ReLU, max-pool 3x3/2, four stages of
/// two basic blocks (64, 128, 256, 512 channels), global average pooling, linear classifier.
/// Parameter names follow torchvision (`conv1`, `bn1`, `layer1.0.conv1`, ..., `fc`), except
/// `downsample.{0,1}` which are `downsample.{conv,bn}` here (remapped on load).
#[derive(Module, Debug)]
pub struct ResNet18<B: Backend> {
    pub(crate) conv1: Conv2d<B>,
    pub(crate) bn1: BatchNorm<B>,
    maxpool: MaxPool2d,
    layer1: Vec<BasicBlock<B>>,
    layer2: Vec<BasicBlock<B>>,
    layer3: Vec<BasicBlock<B>>,
    layer4: Vec<BasicBlock<B>>,
    pub(crate) fc: Linear<B>,
}

impl<B: Backend> ResNet18<B> {
    /// A randomly initialised network with `num_classes` outputs.
    pub fn new(num_classes: usize, device: &B::Device) -> Self {
        let stage = |cin: usize, cout: usize, stride: usize| {
            vec![BasicBlock::new(cin, cout, stride, device), BasicBlock::new(cout, cout, 1, device)]
        };
        Self {
            conv1: conv(1, 64, 7, 2, 3, device).init(device),
            bn1: BatchNormConfig::new(64).init(device),
            maxpool: MaxPool2dConfig::new([3, 3])
                .with_strides([2, 2])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(),
            layer1: stage(64, 64, 1),
            layer2: stage(64, 128, 2),
            layer3: stage(128, 256, 2),
            layer4: stage(256, 512, 2),
            fc: LinearConfig::new(FEATURE_DIM, num_classes).init(device),
        }
    }
}

impl<B: KernelBackend> ResNet18<B> {
    /// Pooled 512-d features of `[N, 1, H, W]` images (after the last stage, before `fc`), the
    /// forward's convolutions in f32 whatever `kernel_ops::set_conv_precision` chose (a backward
    /// runs later, outside this call: training code holds its own `kernel_ops::F32Convolutions`,
    /// as `train_classifier_streamed` does).
    pub fn features(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        let _f32 = kernel_ops::F32Convolutions::new();
        let x = self.maxpool.forward(batch_norm(&self.bn1, self.conv1.forward(x), true));
        let mut x = x;
        for l in [&self.layer1, &self.layer2, &self.layer3, &self.layer4] {
            for b in l {
                x = b.forward(x);
            }
        }
        let [n, c, _, _] = x.dims();
        x.mean_dim(3).mean_dim(2).reshape([n, c])
    }

    /// Sets the momentum of every batch norm's running statistics (torchvision's default 0.1).
    pub fn set_batch_norm_momentum(&mut self, momentum: f64) {
        self.bn1.momentum = momentum;
        for l in [&mut self.layer1, &mut self.layer2, &mut self.layer3, &mut self.layer4] {
            for b in l.iter_mut() {
                b.bn1.momentum = momentum;
                b.bn2.momentum = momentum;
                if let Some(d) = &mut b.downsample {
                    d.bn.momentum = momentum;
                }
            }
        }
    }

    /// Class logits `[N, num_classes]`.
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 2> {
        self.fc.forward(self.features(x))
    }
}

impl<B: Backend> ResNet18<B> {
    /// Loads a torchvision `resnet18` `state_dict` (`torch.save(model.state_dict(), path)`) whose
    /// `conv1` takes one channel; the number of classes is read from `fc.weight`.
    /// `num_batches_tracked` buffers are ignored; any other missing or extra key is an error.
    pub fn load_torchvision(path: impl AsRef<Path>, device: &B::Device) -> Result<Self> {
        let path = path.as_ref();
        let ck = |m: String| MetricsError::Checkpoint { path: path.to_path_buf(), message: m };
        let mut store = PytorchStore::from_file(path)
            .with_key_remapping(r"downsample\.0\.", "downsample.conv.")
            .with_key_remapping(r"downsample\.1\.", "downsample.bn.")
            .allow_partial(true);
        let fc = store
            .get_snapshot("fc.weight")
            .map_err(|e| ck(e.to_string()))?
            .ok_or_else(|| ck("no key `fc.weight`".into()))?;
        let shape: Vec<usize> = fc.shape.iter().copied().collect();
        if shape.len() != 2 || shape[1] != FEATURE_DIM {
            return Err(ck(format!("`fc.weight` has shape {shape:?}, expected [classes, 512]")));
        }
        let mut model = Self::new(shape[0], device);
        let res = model.load_from(&mut store).map_err(|e| ck(e.to_string()))?;
        check_apply(path, &res, true)?;
        Ok(model)
    }

    /// Saves the weights (burnpack) to `path`, atomically.
    pub fn save_burnpack(&self, path: &Path) -> Result<()> {
        atomic_file::write_with(path, |tmp| {
            let mut store = BurnpackStore::from_file(tmp).auto_extension(false).overwrite(true);
            self.save_into(&mut store).map_err(|e| e.to_string())
        })
        .map_err(|e| match e {
            atomic_file::Error::Write(message) => MetricsError::Checkpoint { path: path.to_path_buf(), message },
            atomic_file::Error::Io(source) => MetricsError::Io { path: path.to_path_buf(), source },
        })
    }

    /// Loads weights written by [`save_burnpack`](Self::save_burnpack).
    pub fn load_burnpack(path: &Path, num_classes: usize, device: &B::Device) -> Result<Self> {
        let mut model = Self::new(num_classes, device);
        let mut store = BurnpackStore::from_file(path).auto_extension(false);
        let res = model
            .load_from(&mut store)
            .map_err(|e| MetricsError::Checkpoint { path: path.to_path_buf(), message: e.to_string() })?;
        check_apply(path, &res, false)?;
        Ok(model)
    }
}

fn check_apply(path: &Path, r: &burn_store::ApplyResult, ignore_batches_tracked: bool) -> Result<()> {
    // burn-store reports PyTorch-named norm parameters (`bn1.weight`) as unused even when the
    // adapter applied them under burn's names (`bn1.gamma`): accept those.
    let applied_alias = |k: &str| {
        let alias = if let Some(b) = k.strip_suffix(".weight") {
            format!("{b}.gamma")
        } else if let Some(b) = k.strip_suffix(".bias") {
            format!("{b}.beta")
        } else {
            return false;
        };
        r.applied.iter().any(|a| a == &alias)
    };
    let unused: Vec<&String> = r
        .unused
        .iter()
        .filter(|k| (!ignore_batches_tracked || !k.ends_with("num_batches_tracked")) && !applied_alias(k))
        .collect();
    if !r.errors.is_empty() || !r.missing.is_empty() || !unused.is_empty() {
        return Err(MetricsError::Checkpoint {
            path: path.to_path_buf(),
            message: format!(
                "weights do not match ResNet-18: errors {:?}, missing {:?}, unexpected {:?}",
                r.errors.iter().take(4).map(|e| e.to_string()).collect::<Vec<_>>(),
                r.missing.iter().take(8).map(|m| &m.0).collect::<Vec<_>>(),
                unused.iter().take(8).collect::<Vec<_>>()
            ),
        });
    }
    Ok(())
}

/// A trained extractor: network + its config (image size, classes) + what training measured.
#[derive(Debug)]
pub struct FeatureExtractor<B: Backend> {
    /// The network.
    pub model: ResNet18<B>,
    /// Its configuration.
    pub config: ExtractorConfig,
    /// Training record, when the checkpoint has one.
    pub info: Option<serde_json::Value>,
}

/// The sidecar JSON of a checkpoint `W.bpk` is `W.json` (config + training report).
pub fn sidecar_path(weights: &Path) -> PathBuf {
    weights.with_extension("json")
}

impl<B: Backend> FeatureExtractor<B> {
    /// Loads our checkpoint (`.bpk` burnpack + `.json` sidecar written by [`save`](Self::save))
    /// or a torchvision state dict (`.pth` / `.pt`, default config with the class count of the
    /// file).
    pub fn load(path: impl AsRef<Path>, device: &B::Device) -> Result<Self> {
        let path = path.as_ref();
        if !path.is_file() {
            return Err(MetricsError::Io {
                path: path.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "extractor weights not found"),
            });
        }
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
        if ext == "pth" || ext == "pt" {
            let model = ResNet18::load_torchvision(path, device)?;
            let n = model.fc.weight.dims()[1];
            let mut config = ExtractorConfig { num_classes: n, ..ExtractorConfig::default() };
            if n != 3 {
                config.class_names = (0..n).map(|i| format!("class{i}")).collect();
            }
            return Ok(Self { model, config, info: None });
        }
        let side = sidecar_path(path);
        let text = std::fs::read_to_string(&side).map_err(|source| MetricsError::Io { path: side.clone(), source })?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| MetricsError::Json { path: side.clone(), message: e.to_string() })?;
        let config: ExtractorConfig = serde_json::from_value(v.get("config").cloned().unwrap_or_default())
            .map_err(|e| MetricsError::Json { path: side.clone(), message: format!("key `config`: {e}") })?;
        let model = ResNet18::load_burnpack(path, config.num_classes, device)?;
        Ok(Self { model, config, info: v.get("training").cloned() })
    }

    /// Writes `path` (burnpack weights) and its `.json` sidecar (config + `training` record).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        self.model.save_burnpack(path)?;
        let side = sidecar_path(path);
        let v = serde_json::json!({ "config": self.config, "training": self.info, "format": "gen-metrics ResNet18 burnpack v1" });
        crate::features::write_atomic(&side, serde_json::to_string_pretty(&v).unwrap().as_bytes())
    }
}

impl<B: KernelBackend> FeatureExtractor<B> {
    /// 512-d features of images `[N, H, W]` with values in `[0, 1]`, already at
    /// `config.image_size` (resize first, e.g. with lens-data's loaders), in batches.
    pub fn extract(
        &self,
        images: ArrayView3<'_, f32>,
        batch: usize,
        device: &B::Device,
        mut progress: impl FnMut(usize),
    ) -> Result<Array2<f64>> {
        let (n, h, w) = images.dim();
        if h != self.config.image_size || w != self.config.image_size {
            return Err(MetricsError::InvalidParameter {
                name: "images",
                value: format!("{h}x{w}"),
                reason: format!("the extractor expects {0}x{0} images", self.config.image_size),
            });
        }
        let mut out = Array2::<f64>::zeros((n, FEATURE_DIM));
        let batch = batch.max(1);
        let mut i = 0;
        while i < n {
            let j = (i + batch).min(n);
            let chunk = images.slice(ndarray::s![i..j, .., ..]).as_standard_layout().into_owned();
            let data = TensorData::new(chunk.into_raw_vec_and_offset().0, [j - i, 1, h, w]);
            let x = Tensor::<B, 4>::from_data(data, device);
            let f = self.model.features(x).into_data().convert::<f32>();
            let v: Vec<f32> = f.to_vec().map_err(|e| MetricsError::Linalg(format!("feature readback: {e:?}")))?;
            for (r, row) in v.chunks_exact(FEATURE_DIM).enumerate() {
                for (c, &x) in row.iter().enumerate() {
                    out[[i + r, c]] = x as f64;
                }
            }
            progress(j - i);
            i = j;
        }
        Ok(out)
    }
}
