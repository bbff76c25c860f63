//! The shipped default extractor sees the classes apart: on small simulated sets, FID between
//! two classes is many times the floor between two sets of one class, cdm vs axion included
//! (docs/REALISM.md has the table on 1,000 vs 1,000 images, `scripts/fid_class_table.sh`).

use burn::backend::Flex;
use gen_metrics::{frechet_distance_from_features, FeatureExtractor};
use lens_data::simulate::LensClass;
use lensing_diffusion::classifier::{heldout_accuracy, shipped_extractor_path};
use ndarray::Array2;

fn features(ex: &FeatureExtractor<Flex>, class: LensClass, seed: u64, n: usize) -> Array2<f64> {
    let set = lensing_diffusion::data::simulate_resized(n, 150, ex.config.image_size, &[class], seed).unwrap();
    ex.extract(set.images.view(), 50, &Default::default(), |_| {}).unwrap()
}

#[test]
fn between_class_fid_is_far_above_the_within_class_floor() {
    let ex = FeatureExtractor::<Flex>::load(shipped_extractor_path(), &Default::default()).unwrap();
    assert_eq!(ex.config.image_size, 128);
    let acc = heldout_accuracy(&ex).unwrap();
    assert!(acc >= 0.89, "recorded held-out accuracy {acc}");
    let n = 150;
    let sets: Vec<(Array2<f64>, Array2<f64>)> =
        LensClass::ALL.iter().map(|&c| (features(&ex, c, 101, n), features(&ex, c, 202, n))).collect();
    let fid = |a: &Array2<f64>, b: &Array2<f64>| frechet_distance_from_features(a.view(), b.view()).unwrap().value;
    let floor: Vec<f64> = sets.iter().map(|(a, b)| fid(a, b)).collect();
    for (i, j) in [(0, 1), (0, 2), (1, 2)] {
        let between = fid(&sets[i].0, &sets[j].1);
        let ratio = between / floor[i].max(floor[j]);
        assert!(ratio > 5.0, "classes {i} vs {j}: FID {between}, floors {floor:?}");
    }
}
