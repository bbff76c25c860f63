//! In-memory image sets, seeded train/validation splits and a batch iterator yielding plain
//! `ndarray` arrays (`[B, 1, H, W]` f32), with optional dihedral augmentation.

use std::path::PathBuf;

use ndarray::{s, Array3, Array4, ArrayView2, Axis};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::error::{LensDataError, Result};
use crate::transform::Dihedral;

/// Where an image came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSource {
    /// File.
    pub path: PathBuf,
    /// Index of the image inside the file (stacked `.npy`, `.npz`); 0 for single-image files.
    pub index: usize,
}

/// Something the loader did that the user should know about (returned, never printed).
#[derive(Debug, Clone, PartialEq)]
pub enum LoadWarning {
    /// A bad file was skipped (`skip_bad`).
    SkippedFile {
        /// The file.
        path: PathBuf,
        /// Why it is bad.
        error: String,
    },
    /// Colour images were converted to luminance `Y = 0.299 R + 0.587 G + 0.114 B` (ITU-R 601,
    /// as PIL's `convert("L")`); alpha channels are dropped.
    ConvertedToLuminance {
        /// Number of images converted.
        count: usize,
        /// The first such file.
        first: PathBuf,
    },
}

impl std::fmt::Display for LoadWarning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoadWarning::SkippedFile { path, error } => write!(f, "skipped {}: {error}", path.display()),
            LoadWarning::ConvertedToLuminance { count, first } => write!(
                f,
                "{count} colour image(s) converted to luminance (0.299 R + 0.587 G + 0.114 B), first: {}",
                first.display()
            ),
        }
    }
}

/// A set of single-channel images of one size, with optional class labels.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageSet {
    /// Images, f32 `[N, H, W]`.
    pub images: Array3<f32>,
    /// Class index per image (into `class_names`), for labelled data.
    pub labels: Option<Vec<usize>>,
    /// Class names, in label order (empty for unlabelled data).
    pub class_names: Vec<String>,
    /// Origin of each image.
    pub sources: Vec<ImageSource>,
    /// Warnings raised while loading.
    pub warnings: Vec<LoadWarning>,
    /// Number of files skipped as bad (`skip_bad`).
    pub skipped: usize,
}

impl ImageSet {
    /// An unlabelled set from images `[N, H, W]` (sources left empty).
    pub fn from_images(images: Array3<f32>) -> Self {
        Self { images, labels: None, class_names: Vec::new(), sources: Vec::new(), warnings: Vec::new(), skipped: 0 }
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.images.len_of(Axis(0))
    }

    /// True when there are no images.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// (H, W) of every image.
    pub fn image_shape(&self) -> (usize, usize) {
        let d = self.images.dim();
        (d.1, d.2)
    }

    /// Image `i`.
    pub fn image(&self, i: usize) -> ArrayView2<'_, f32> {
        self.images.index_axis(Axis(0), i)
    }

    /// The images as one contiguous `[N, 1, H, W]` array (copy).
    pub fn to_nchw(&self) -> Array4<f32> {
        self.images.clone().insert_axis(Axis(1))
    }

    /// A new set holding the images at `indices` (in that order).
    pub fn select(&self, indices: &[usize]) -> ImageSet {
        let images = self.images.select(Axis(0), indices);
        ImageSet {
            images,
            labels: self.labels.as_ref().map(|l| indices.iter().map(|&i| l[i]).collect()),
            class_names: self.class_names.clone(),
            sources: if self.sources.len() == self.len() {
                indices.iter().map(|&i| self.sources[i].clone()).collect()
            } else {
                Vec::new()
            },
            warnings: Vec::new(),
            skipped: 0,
        }
    }

    /// Deterministic train/validation split: a seeded shuffle, stratified by class when labelled
    /// (each class contributes `round(n_c * val_fraction)` images to validation). Returns
    /// `(train, val)`; both keep the original relative order.
    pub fn split(&self, val_fraction: f64, seed: u64) -> Result<(ImageSet, ImageSet)> {
        if !(0.0..=1.0).contains(&val_fraction) {
            return Err(LensDataError::invalid("val_fraction", val_fraction, "must be in [0, 1]"));
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let n = self.len();
        let groups: Vec<Vec<usize>> = match &self.labels {
            Some(labels) => {
                let k = labels.iter().copied().max().map_or(0, |m| m + 1);
                let mut g = vec![Vec::new(); k];
                for (i, &l) in labels.iter().enumerate() {
                    g[l].push(i);
                }
                g
            }
            None => vec![(0..n).collect()],
        };
        let mut is_val = vec![false; n];
        for mut g in groups {
            g.shuffle(&mut rng);
            let nv = (g.len() as f64 * val_fraction).round() as usize;
            for &i in &g[..nv] {
                is_val[i] = true;
            }
        }
        let val: Vec<usize> = (0..n).filter(|&i| is_val[i]).collect();
        let train: Vec<usize> = (0..n).filter(|&i| !is_val[i]).collect();
        Ok((self.select(&train), self.select(&val)))
    }

    /// Iterates over batches of epoch `epoch` (see [`BatchConfig`]).
    pub fn batches(&self, config: &BatchConfig, epoch: u64) -> Result<BatchIter<'_>> {
        BatchIter::new(self, config.clone(), epoch)
    }
}

/// Batch iteration settings.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchConfig {
    /// Images per batch (>= 1).
    pub batch_size: usize,
    /// Shuffle the order each epoch (seeded by `seed` and the epoch number).
    pub shuffle: bool,
    /// Apply a random one of the 8 dihedral symmetries to each image (square images only).
    pub augment: bool,
    /// Drop the last incomplete batch.
    pub drop_last: bool,
    /// Seed for shuffling and augmentation.
    pub seed: u64,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self { batch_size: 24, shuffle: true, augment: false, drop_last: false, seed: 0 }
    }
}

/// One batch: plain arrays, ready for any framework.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// Images, f32 `[B, 1, H, W]`, contiguous (row-major).
    pub images: Array4<f32>,
    /// Labels, when the set is labelled.
    pub labels: Option<Vec<usize>>,
    /// Indices of the images in the set.
    pub indices: Vec<usize>,
}

#[cfg(feature = "burn")]
impl Batch {
    /// The images as a burn tensor `[B, 1, H, W]` on `device` (feature `burn`).
    pub fn to_tensor<B: burn::tensor::backend::Backend>(&self, device: &B::Device) -> burn::tensor::Tensor<B, 4> {
        let shape: [usize; 4] = self.images.dim().into();
        let data = self.images.as_standard_layout().iter().copied().collect::<Vec<f32>>();
        burn::tensor::Tensor::from_data(burn::tensor::TensorData::new(data, shape), device)
    }
}

/// Iterator over the batches of one epoch.
#[derive(Debug)]
pub struct BatchIter<'a> {
    set: &'a ImageSet,
    config: BatchConfig,
    order: Vec<usize>,
    pos: usize,
    rng: ChaCha8Rng,
}

impl<'a> BatchIter<'a> {
    fn new(set: &'a ImageSet, config: BatchConfig, epoch: u64) -> Result<Self> {
        if config.batch_size == 0 {
            return Err(LensDataError::invalid("batch_size", 0, "must be >= 1"));
        }
        let (h, w) = set.image_shape();
        if config.augment && h != w {
            return Err(LensDataError::invalid(
                "augment",
                format!("{h}x{w} images"),
                "dihedral augmentation needs square images",
            ));
        }
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        rng.set_stream(epoch);
        let mut order: Vec<usize> = (0..set.len()).collect();
        if config.shuffle {
            order.shuffle(&mut rng);
        }
        Ok(Self { set, config, order, pos: 0, rng })
    }

    /// Number of batches this epoch.
    pub fn num_batches(&self) -> usize {
        let n = self.order.len();
        if self.config.drop_last {
            n / self.config.batch_size
        } else {
            n.div_ceil(self.config.batch_size)
        }
    }
}

impl Iterator for BatchIter<'_> {
    type Item = Batch;

    fn next(&mut self) -> Option<Batch> {
        let n = self.order.len();
        let bs = self.config.batch_size;
        if self.pos >= n || (self.config.drop_last && self.pos + bs > n) {
            return None;
        }
        let end = (self.pos + bs).min(n);
        let indices = self.order[self.pos..end].to_vec();
        self.pos = end;
        let (h, w) = self.set.image_shape();
        let mut images = Array4::<f32>::zeros((indices.len(), 1, h, w));
        for (b, &i) in indices.iter().enumerate() {
            let src = self.set.image(i);
            let dst = images.slice_mut(s![b, 0, .., ..]);
            let t = if self.config.augment { Dihedral::random(&mut self.rng) } else { Dihedral::Identity };
            t.apply_into(src, dst);
        }
        let labels = self.set.labels.as_ref().map(|l| indices.iter().map(|&i| l[i]).collect());
        Some(Batch { images, labels, indices })
    }
}
