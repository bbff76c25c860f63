//! Train-synthetic-test-real (TSTR) for class-conditional generation: the lensing classifier's
//! recipe (gen-metrics' ResNet-18 and [`train_classifier`]) trained on generated images labelled
//! with the class that was asked for and tested on real held-out images, beside the same recipe
//! trained on as many real images of each class (train-real-test-real, TRTR) and tested on the
//! same images. A generator whose classes carry what tells the real classes apart gives TSTR
//! close to TRTR; one that draws the wrong class, or no class at all, gives TSTR near chance or
//! below.
//!
//! ```no_run
//! use burn::backend::{Autodiff, Flex};
//! use lensing_diffusion::tstr::{train_synthetic_test_real, Labelled};
//! # let (gen, gen_labels, train, train_labels, test, test_labels) =
//! #     (ndarray::Array3::<f32>::zeros((3, 32, 32)), vec![0, 1, 2], ndarray::Array3::<f32>::zeros((3, 32, 32)),
//! #      vec![0, 1, 2], ndarray::Array3::<f32>::zeros((3, 32, 32)), vec![0, 1, 2]);
//! let names = ["no_sub", "cdm", "axion"].map(String::from);
//! let cfg = lensing_diffusion::gen_metrics::TrainConfig { epochs: 4, ..Default::default() };
//! let t = train_synthetic_test_real::<Autodiff<Flex>>(
//!     Labelled { images: gen.view(), labels: &gen_labels },
//!     Labelled { images: train.view(), labels: &train_labels },
//!     Labelled { images: test.view(), labels: &test_labels },
//!     &names,
//!     &cfg,
//!     32,
//!     &Default::default(),
//!     |_, _, _| {},
//! )?;
//! println!("TSTR {:.3} vs TRTR {:.3}: {}", t.tstr_accuracy, t.trtr_accuracy, t.reading());
//! # Ok::<(), lensing_diffusion::Error>(())
//! ```

use gen_metrics::train::{train_classifier, TrainConfig, TrainReport};
use gen_metrics::ExtractorConfig;
use ndarray::{ArrayView3, Axis};
use serde::Serialize;

use crate::error::Error;
use crate::evaluate::to_size;

/// Images `[N, H, W]` in `[0, 1]` with one label each (an index into the class names).
#[derive(Clone, Copy, Debug)]
pub struct Labelled<'a> {
    /// The images.
    pub images: ArrayView3<'a, f32>,
    /// One class index per image.
    pub labels: &'a [usize],
}

/// Both arms of train-synthetic-test-real, tested on the same real images.
#[derive(Debug, Clone, Serialize)]
pub struct Tstr {
    /// Accuracy on the real test images of the classifier trained on generated images.
    pub tstr_accuracy: f64,
    /// Accuracy on the same images of the classifier trained on real images.
    pub trtr_accuracy: f64,
    /// `confusion[true][predicted]` on the real test images, classifier trained on generated.
    pub tstr_confusion: Vec<Vec<usize>>,
    /// The same for the classifier trained on real images.
    pub trtr_confusion: Vec<Vec<usize>>,
    /// The classes, in label order.
    pub class_names: Vec<String>,
    /// Training images of each arm (the same number per class in both).
    pub n_train: usize,
    /// Real test images.
    pub n_test: usize,
    /// Network input size (every set is resized to it).
    pub image_size: usize,
    /// Passes over the training images (each arm).
    pub epochs: usize,
    /// Images per optimiser step.
    pub batch_size: usize,
    /// Adam learning rate.
    pub lr: f64,
    /// Seed of both arms' initialisation and shuffles (the same for both).
    pub seed: u64,
    /// Wall time of the classifier trained on generated images, in seconds.
    pub tstr_seconds: f64,
    /// Wall time of the classifier trained on real images, in seconds.
    pub trtr_seconds: f64,
}

impl Tstr {
    /// Accuracy of guessing (one over the number of classes).
    pub fn chance(&self) -> f64 {
        1.0 / self.class_names.len().max(1) as f64
    }

    /// Two binomial standard errors of an accuracy `p` on the `n_test` images: the test set's
    /// share of the uncertainty (the classifiers' own training noise is not in it).
    pub fn two_standard_errors(&self, p: f64) -> f64 {
        2.0 * (p * (1.0 - p) / self.n_test.max(1) as f64).sqrt()
    }

    /// One sentence saying what the two accuracies mean together. Differences are judged
    /// against [`Tstr::two_standard_errors`], so a small test set is not read as a verdict.
    pub fn reading(&self) -> String {
        let (s, r, c) = (self.tstr_accuracy, self.trtr_accuracy, self.chance());
        let se = |p: f64| self.two_standard_errors(p) / 2.0;
        if r - c <= 2.0 * se(c) {
            return format!(
                "TRTR is not clearly above chance: at {0}x{0} with {1} training images and {2} epochs the recipe does \
                 not learn the classes from real images either, so TSTR cannot tell a good generator from a bad one \
                 here.",
                self.image_size, self.n_train, self.epochs
            );
        }
        let gap = (se(s).powi(2) + se(r).powi(2)).sqrt();
        if (s - r).abs() <= 2.0 * gap {
            "TSTR is within sampling error of TRTR: at this budget the generated images teach this classifier the \
             classes as well as real ones do."
                .into()
        } else if s > r {
            "TSTR is above TRTR: the generated classes are easier to learn than the real ones (possibly exaggerated, \
             e.g. by guidance), and what was learnt still transfers to real images."
                .into()
        } else if s < c - 2.0 * se(c) {
            "TSTR is below chance: the generated images of a class look like another real class to the classifier \
             (the class drawn is not the class asked for)."
                .into()
        } else if s - c <= 2.0 * se(c) {
            "TSTR is within sampling error of chance: what the classifier learns from the generated classes does not \
             transfer to real images."
                .into()
        } else {
            format!(
                "Training on generated images keeps {:.0}% of what training on real ones gains over chance.",
                100.0 * (s - c) / (r - c)
            )
        }
    }
}

/// The real images matching `wanted`'s class counts: for each class, its first images in the
/// order of `real_labels` (no random choice: the simulator already interleaves its draws).
/// Returns their indices, or an error naming a class with fewer real images than wanted.
pub fn class_matched(real_labels: &[usize], wanted: &[usize], class_names: &[String]) -> Result<Vec<usize>, Error> {
    let k = class_names.len();
    let mut need = vec![0usize; k];
    for &l in wanted {
        *need.get_mut(l).ok_or_else(|| label_error("generated", l, class_names))? += 1;
    }
    let mut have = vec![0usize; k];
    let mut idx = Vec::with_capacity(wanted.len());
    for (i, &l) in real_labels.iter().enumerate() {
        if l < k && have[l] < need[l] {
            have[l] += 1;
            idx.push(i);
        }
    }
    match (0..k).find(|&c| have[c] < need[c]) {
        Some(c) => Err(Error::invalid(
            format!("real training images of class `{}`", class_names[c]),
            have[c],
            format!("TRTR trains on as many real images of each class as there are generated ones ({})", need[c]),
        )),
        None => Ok(idx),
    }
}

fn label_error(set: &str, label: usize, class_names: &[String]) -> Error {
    Error::invalid(
        format!("{set} label"),
        label,
        format!("must be below {} (classes {})", class_names.len(), class_names.join(", ")),
    )
}

fn check(set: &str, s: &Labelled<'_>, class_names: &[String]) -> Result<(), Error> {
    let (n, h, w) = s.images.dim();
    if s.labels.len() != n {
        return Err(Error::invalid(format!("{set} labels"), s.labels.len(), format!("one per image ({n} images)")));
    }
    if n == 0 || h == 0 || w == 0 {
        return Err(Error::invalid(format!("{set} images"), format!("[{n}, {h}, {w}]"), "need at least one image"));
    }
    match s.labels.iter().find(|&&l| l >= class_names.len()) {
        Some(&l) => Err(label_error(set, l, class_names)),
        None => Ok(()),
    }
}

/// Trains the classifier recipe (`train`: epochs, batch, learning rate, seed; the same for both
/// arms) at `image_size` input on `generated` and on as many real images of each class taken
/// from `real_train` ([`class_matched`]), and tests both on `real_test`. Every set is resized to
/// `image_size` (antialiased bilinear, [`to_size`]). `progress(step, total, loss)` counts the
/// steps of both arms, generated first.
#[allow(clippy::too_many_arguments)]
pub fn train_synthetic_test_real<B: gen_metrics::KernelAutodiffBackend>(
    generated: Labelled<'_>,
    real_train: Labelled<'_>,
    real_test: Labelled<'_>,
    class_names: &[String],
    train: &TrainConfig,
    image_size: usize,
    device: &B::Device,
    mut progress: impl FnMut(usize, usize, f64),
) -> Result<Tstr, Error> {
    if class_names.len() < 2 {
        return Err(Error::invalid("classes", class_names.len(), "train-synthetic-test-real needs at least two"));
    }
    check("generated", &generated, class_names)?;
    check("real training", &real_train, class_names)?;
    check("real test", &real_test, class_names)?;
    if image_size == 0 {
        return Err(Error::invalid("image size", image_size, "must be >= 1"));
    }
    if train.epochs == 0 || train.batch_size == 0 {
        return Err(Error::invalid(
            "classifier training",
            format!("epochs {}, batch {}", train.epochs, train.batch_size),
            "both must be >= 1",
        ));
    }
    if !(train.lr.is_finite() && train.lr > 0.0) {
        return Err(Error::invalid("classifier learning rate", train.lr, "must be finite and > 0"));
    }
    let idx = class_matched(real_train.labels, generated.labels, class_names)?;
    let real_images = to_size(real_train.images.select(Axis(0), &idx).view(), image_size);
    let real_labels: Vec<usize> = idx.iter().map(|&i| real_train.labels[i]).collect();
    let gen_images = to_size(generated.images, image_size);
    let test_images = to_size(real_test.images, image_size);
    let n = generated.labels.len();
    let per_arm = n.div_ceil(train.batch_size) * train.epochs;
    let cfg = ExtractorConfig { num_classes: class_names.len(), image_size, class_names: class_names.to_vec() };
    let mut arm = |images: ArrayView3<'_, f32>, labels: &[usize], offset: usize| -> Result<TrainReport, Error> {
        let (_, report) = train_classifier::<B>(
            images,
            labels,
            test_images.view(),
            real_test.labels,
            cfg.clone(),
            train,
            device,
            |step, _, loss| progress(offset + step, 2 * per_arm, loss),
        )?;
        Ok(report)
    };
    let synthetic = arm(gen_images.view(), generated.labels, 0)?;
    let real = arm(real_images.view(), &real_labels, per_arm)?;
    Ok(Tstr {
        tstr_accuracy: synthetic.heldout_accuracy,
        trtr_accuracy: real.heldout_accuracy,
        tstr_confusion: synthetic.confusion,
        trtr_confusion: real.confusion,
        class_names: class_names.to_vec(),
        n_train: n,
        n_test: real_test.labels.len(),
        image_size,
        epochs: train.epochs,
        batch_size: train.batch_size,
        lr: train.lr,
        seed: train.seed,
        tstr_seconds: synthetic.seconds,
        trtr_seconds: real.seconds,
    })
}

#[cfg(test)]
mod tests {
    use burn::backend::{Autodiff, Flex};
    use ndarray::Array3;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;

    type B = Autodiff<Flex>;

    fn names() -> Vec<String> {
        ["dim", "mid", "bright"].map(String::from).to_vec()
    }

    /// `n` images of the three classes in turn: stripes of period 4 px along rows, columns or
    /// diagonals (class 0, 1, 2) at a random phase, plus noise. Every image has the same mean,
    /// so the classes differ in pattern only, which the ResNet's batch norms do not remove.
    fn set(n: usize, size: usize, seed: u64) -> (Array3<f32>, Vec<usize>) {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let labels: Vec<usize> = (0..n).map(|i| i % 3).collect();
        let phases: Vec<usize> = (0..n).map(|_| rng.random_range(0..4)).collect();
        let images = Array3::from_shape_fn((n, size, size), |(i, y, x)| {
            let along = [y, x, x + y][labels[i]] + phases[i];
            let stripe = if (along / 2).is_multiple_of(2) { 0.3 } else { -0.3 };
            (0.5 + stripe + rng.random_range(-0.1f32..0.1)).clamp(0.0, 1.0)
        });
        (images, labels)
    }

    #[test]
    fn each_arm_learns_from_its_own_images_and_labels() {
        // The generated images carry the class asked for; the real training images are
        // labelled with the next class. Both arms learn (36 steps each: fewer left the batch
        // norms' running statistics behind and the predictions collapsed to one class), so
        // TSTR is near 1 and TRTR, tested against the true labels, near 0.
        let (gen, gen_labels) = set(48, 16, 1);
        let (train, labels) = set(48, 16, 2);
        let shifted: Vec<usize> = labels.iter().map(|l| (l + 1) % 3).collect();
        let (test, test_labels) = set(42, 16, 3);
        let cfg = TrainConfig { epochs: 6, batch_size: 8, lr: 1e-3, seed: 5, ..TrainConfig::default() };
        let mut steps = 0;
        let t = train_synthetic_test_real::<B>(
            Labelled { images: gen.view(), labels: &gen_labels },
            Labelled { images: train.view(), labels: &shifted },
            Labelled { images: test.view(), labels: &test_labels },
            &names(),
            &cfg,
            16,
            &Default::default(),
            |step, total, _| {
                assert_eq!((step, total), (steps + 1, 2 * 6 * 6));
                steps = step;
            },
        )
        .unwrap();
        assert_eq!(steps, 72);
        assert!(t.tstr_accuracy >= 0.9 && t.trtr_accuracy <= 0.1, "{t:?}");
        assert_eq!((t.n_train, t.n_test, t.image_size, t.epochs), (48, 42, 16, 6));
        assert_eq!(t.tstr_confusion.iter().flatten().sum::<usize>(), 42);
        assert!(t.reading().contains("not clearly above chance"), "{}", t.reading());
    }

    #[test]
    fn the_reading_follows_both_accuracies() {
        let t = |tstr_accuracy, trtr_accuracy| Tstr {
            tstr_accuracy,
            trtr_accuracy,
            tstr_confusion: vec![],
            trtr_confusion: vec![],
            class_names: names(),
            n_train: 600,
            n_test: 1000,
            image_size: 32,
            epochs: 8,
            batch_size: 32,
            lr: 1e-3,
            seed: 0,
            tstr_seconds: 0.0,
            trtr_seconds: 0.0,
        };
        // Two binomial standard errors at chance on 1,000 images: 3.0 points.
        for (tstr, trtr, want) in [
            (0.60, 0.35, "TRTR is not clearly above chance"),
            (0.56, 0.58, "within sampling error of TRTR"),
            (0.70, 0.58, "TSTR is above TRTR"),
            (0.20, 0.58, "TSTR is below chance"),
            (0.35, 0.58, "TSTR is within sampling error of chance"),
            (0.45, 0.58, "keeps 47%"),
        ] {
            let r = t(tstr, trtr).reading();
            assert!(r.contains(want), "{tstr} / {trtr}: {r}");
        }
    }

    #[test]
    fn class_matched_takes_the_first_of_each_class_or_names_the_short_one() {
        let names = names();
        assert_eq!(class_matched(&[2, 0, 0, 1, 2, 1], &[0, 1, 2, 1], &names).unwrap(), vec![0, 1, 3, 5]);
        let e = class_matched(&[0, 1, 2, 0], &[2, 2], &names).unwrap_err().to_string();
        assert!(e.contains("`bright`") && e.contains("= 1") && e.contains("(2)"), "{e}");
        let e = class_matched(&[0], &[3], &names).unwrap_err().to_string();
        assert!(e.contains("generated label = 3"), "{e}");
    }

    fn l<'a>(images: &'a Array3<f32>, labels: &'a [usize]) -> Labelled<'a> {
        Labelled { images: images.view(), labels }
    }

    #[test]
    fn bad_sets_are_errors_naming_the_set() {
        let (imgs, labels) = set(6, 8, 0);
        let cfg = TrainConfig { epochs: 1, batch_size: 4, lr: 1e-3, seed: 0, ..TrainConfig::default() };
        let run = |g: Labelled<'_>, t: Labelled<'_>, cfg: &TrainConfig| {
            let real = l(&imgs, &labels);
            train_synthetic_test_real::<B>(g, real, t, &names(), cfg, 8, &Default::default(), |_, _, _| {})
                .unwrap_err()
                .to_string()
        };
        let e = run(l(&imgs, &labels[..5]), l(&imgs, &labels), &cfg);
        assert!(e.contains("generated labels = 5") && e.contains("6 images"), "{e}");
        let e = run(l(&imgs, &labels), l(&imgs, &[0, 1, 2, 3, 0, 1]), &cfg);
        assert!(e.contains("real test label = 3"), "{e}");
        let e = run(l(&imgs, &labels), l(&imgs, &labels), &TrainConfig { lr: f64::NAN, ..cfg.clone() });
        assert!(e.contains("learning rate = NaN"), "{e}");
        let e = run(l(&imgs, &labels), l(&imgs, &labels), &TrainConfig { epochs: 0, ..cfg.clone() });
        assert!(e.contains("epochs 0"), "{e}");
    }
}
