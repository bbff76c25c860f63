//! Tensors of seeded random values for tests (feature `test-util`).

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use rand::SeedableRng;
use rand_distr::Distribution as _;

/// A `shape` tensor of normal `(mean, std)` values from its own generator seeded with `seed`.
/// burn's `Tensor::random` draws from one generator that the tests running in parallel share,
/// so its values change from run to run, and a tolerance that most draws meet can fail on one.
pub fn randn<B: Backend, const D: usize>(
    shape: [usize; D],
    mean: f64,
    std: f64,
    seed: u64,
    dev: &B::Device,
) -> Tensor<B, D> {
    let normal = rand_distr::Normal::new(mean as f32, std as f32).expect("a finite, non-negative std");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let values: Vec<f32> = (0..shape.iter().product()).map(|_| normal.sample(&mut rng)).collect();
    Tensor::from_data(TensorData::new(values, shape), dev)
}
