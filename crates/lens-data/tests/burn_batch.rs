//! `Batch::to_tensor` (feature `burn`): `cargo test -p lens-data --features burn`.
#![cfg(feature = "burn")]

use burn::backend::NdArray;
use lens_data::dataset::{BatchConfig, ImageSet};
use ndarray::Array3;

#[test]
fn batch_to_tensor_keeps_shape_and_values() {
    let set = ImageSet::from_images(Array3::from_shape_fn((3, 4, 5), |(n, i, j)| (n * 20 + i * 5 + j) as f32));
    let cfg = BatchConfig { batch_size: 2, shuffle: false, ..Default::default() };
    let b = set.batches(&cfg, 0).unwrap().next().unwrap();
    let t = b.to_tensor::<NdArray>(&Default::default());
    assert_eq!(t.dims(), [2, 1, 4, 5]);
    let v: Vec<f32> = t.into_data().to_vec().unwrap();
    assert_eq!(v, b.images.iter().copied().collect::<Vec<_>>());
}
