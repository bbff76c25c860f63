//! lens-data speed targets (see docs/performance-history.md, section "lens-data").
//!
//! ```text
//! cargo bench --bench lens_data                      # everything
//! cargo bench --bench lens_data -- load_resize       # 10,000 .npy files -> 128x128
//! cargo bench --bench lens_data -- model_i           # simulator
//! ```
//! The 10,000 `(1,150,150)` f64 files are written once to `$LENS_DATA_BENCH_DIR` (default
//! `target/lens-data-bench/npy150`) and reused; the Python comparison
//! (`scripts/bench_lens_data.py load DIR`) reads the same folder.

use std::path::PathBuf;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use lens_data::load::{list_image_files, load_folder, LoadOptions};
use lens_data::resize::Resizer;
use lens_data::simulate::{simulate_dataset, LensClass, ModelI, ModelISimulator};
use lens_data::write::write_image_npy;
use ndarray::Array2;

const FILES: usize = 10_000;

fn bench_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("LENS_DATA_BENCH_DIR") {
        return PathBuf::from(d);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("target"));
    target.join("lens-data-bench").join("npy150")
}

/// 10,000 DeepLense-like files: Model I images (noise, min-max), f64 (1,150,150).
fn ensure_files() -> PathBuf {
    let dir = bench_dir();
    let have = list_image_files(&dir, false).map(|v| v.len()).unwrap_or(0);
    if have != FILES {
        std::fs::create_dir_all(&dir).expect("create bench dir");
        eprintln!("writing {FILES} bench files to {} ...", dir.display());
        let sim = ModelISimulator::new(ModelI::default()).expect("model");
        use rayon::prelude::*;
        (0..FILES).into_par_iter().for_each(|i| {
            let (img, _) = sim.simulate(LensClass::ALL[i % 3], 1234, i as u64);
            write_image_npy(dir.join(format!("sample{}.npy", i + 1)), img.view()).expect("write");
        });
    }
    dir
}

fn load_resize(c: &mut Criterion) {
    let opts = LoadOptions::resized(128);
    let mut g = c.benchmark_group("load_resize");
    g.sample_size(10).measurement_time(Duration::from_secs(20)).throughput(Throughput::Elements(FILES as u64));
    g.bench_function("10k_npy_150_to_128_all_threads", |b| {
        // (runs only when this benchmark is selected)
        let dir = ensure_files();
        let set = load_folder(&dir, &opts).expect("load"); // warms the page cache
        assert_eq!(set.images.dim(), (FILES, 128, 128));
        b.iter(|| load_folder(&dir, &opts).expect("load"))
    });
    g.finish();
}

fn resize_one(c: &mut Criterion) {
    let img = Array2::from_shape_fn((150, 150), |(i, j)| ((i * 7 + j * 13) % 17) as f64 / 17.0);
    let r = Resizer::new((150, 150), (128, 128));
    let mut out = vec![0f32; 128 * 128];
    let mut scratch = Vec::new();
    c.bench_function("resize_150_to_128_one_image", |b| {
        b.iter(|| r.resize_into(img.as_slice().unwrap(), &mut out, &mut scratch))
    });
}

fn model_i(c: &mut Criterion) {
    let sim = ModelISimulator::new(ModelI::default()).expect("model");
    let mut g = c.benchmark_group("model_i");
    g.sample_size(20);
    let mut k = 0u64;
    for class in LensClass::ALL {
        g.bench_function(format!("one_image_1thread_{class}"), |b| {
            b.iter(|| {
                k += 1;
                sim.simulate(class, 7, k)
            })
        });
    }
    // 300 images (cdm), rayon over all cores: the make-dataset throughput
    g.throughput(Throughput::Elements(300));
    g.bench_function("300_cdm_images_all_threads", |b| {
        b.iter_batched(
            || (),
            |_| simulate_dataset(&ModelI::default(), &[LensClass::Cdm], 300, 11).expect("sim"),
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, model_i, resize_one, load_resize);
criterion_main!(benches);
