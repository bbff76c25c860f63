//! Resize (vs torch / PIL), normalisation, dihedral symmetries, split, batches, dataset writer.

use std::path::{Path, PathBuf};

use lens_data::dataset::{BatchConfig, ImageSet};
use lens_data::load::{load_folder, load_labelled, LoadOptions};
use lens_data::npy::read_npy;
use lens_data::resize::{resize_bilinear_aa, Resizer};
use lens_data::simulate::{simulate_dataset, LensClass, ModelI};
use lens_data::transform::{Dihedral, Normalization};
use lens_data::write::{write_model_i_dataset, DatasetLayout};
use ndarray::{array, Array2, Array3};

fn fixtures() -> PathBuf {
    Path::new(&std::env::var("CARGO_MANIFEST_DIR").expect("cargo test sets CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The formula image of scripts/make_lens_data_refs.py.
fn pattern(n: usize) -> Array2<f64> {
    Array2::from_shape_fn((n, n), |(i, j)| {
        let mut v =
            0.5 + 0.5 * (0.37 * i as f64).sin() * (0.23 * j as f64).cos() + ((7 * i + 13 * j) % 17) as f64 / 17.0;
        if (40..60).contains(&i) && (70..90).contains(&j) {
            v += 2.0;
        }
        v
    })
}

#[test]
fn resize_matches_torch_antialiased_bilinear_and_pil() {
    for (n, size) in [(150, 128), (150, 37), (64, 90)] {
        let src = pattern(n);
        let got = resize_bilinear_aa(src.view(), (size, size));
        // torch float64 (antialias=True): f32 output rounding is the only difference
        let torch = read_npy(fixtures().join(format!("resize/torch_{n}_{size}.npy"))).unwrap();
        assert_eq!(torch.shape, vec![size, size]);
        let dt = got.iter().zip(&torch.data).fold(0.0f64, |a, (g, t)| a.max((*g as f64 - t).abs() / t.abs().max(1.0)));
        assert!(dt < 2e-7, "{n}->{size}: vs torch {dt:e}");
        let mut f64out = vec![0f64; size * size];
        Resizer::new((n, n), (size, size)).resize_into_f64(src.as_slice().unwrap(), &mut f64out, &mut Vec::new());
        let d64 = f64out.iter().zip(&torch.data).fold(0.0f64, |a, (g, t)| a.max((g - t).abs()));
        assert!(d64 < 1e-12, "{n}->{size}: f64 vs torch f64 {d64:e}");
        // PIL mode F stores the intermediate pass as f32
        let pil = read_npy(fixtures().join(format!("resize/pil_{n}_{size}.npy"))).unwrap();
        let dp = got.iter().zip(&pil.data).fold(0.0f64, |a, (g, t)| a.max((*g as f64 - t).abs()));
        assert!(dp < 1e-5, "{n}->{size}: vs PIL {dp:e}");
    }
    // exact f64 agreement with torch before the f32 cast (weights computed the same way)
    let src = pattern(150);
    let r = Resizer::new((150, 150), (128, 128));
    let mut out = vec![0f32; 128 * 128];
    r.resize_into(src.as_slice().unwrap(), &mut out, &mut Vec::new());
    assert_eq!(out, resize_bilinear_aa(src.view(), (128, 128)).into_raw_vec_and_offset().0);
    // identity size is a copy, constant stays constant
    let c = Array2::from_elem((150, 150), 0.25);
    assert!(resize_bilinear_aa(c.view(), (128, 128)).iter().all(|&v| (v - 0.25).abs() < 1e-7));
    let same = resize_bilinear_aa(src.view(), (150, 150));
    assert!(same.iter().zip(src.iter()).all(|(a, b)| (*a as f64 - b).abs() < 1e-6));
}

#[test]
fn normalisations() {
    let mut v = vec![2.0f32, 4.0, 6.0];
    Normalization::MinMax.apply(&mut v);
    assert_eq!(v, [0.0, 0.5, 1.0]);
    let mut c = vec![3.0f32; 4];
    Normalization::MinMax.apply(&mut c);
    assert_eq!(c, [0.0; 4]);
    let mut m = vec![1.0f32, 3.0];
    Normalization::MeanStd { mean: 1.0, std: 2.0 }.apply(&mut m);
    assert_eq!(m, [0.0, 1.0]);
    assert_eq!(Normalization::parse("minmax").unwrap(), Normalization::MinMax);
    assert_eq!(Normalization::parse("meanstd:0.5,0.25").unwrap(), Normalization::MeanStd { mean: 0.5, std: 0.25 });
    assert!(Normalization::parse("meanstd:0.5,0").is_err());
    assert!(Normalization::parse("zscore").is_err());
}

#[test]
fn dihedral_group() {
    let a = array![[1, 2], [3, 4]];
    // numpy conventions
    assert_eq!(Dihedral::Rot90.apply(a.view()), array![[2, 4], [1, 3]]); // np.rot90(a)
    assert_eq!(Dihedral::Rot180.apply(a.view()), array![[4, 3], [2, 1]]);
    assert_eq!(Dihedral::Rot270.apply(a.view()), array![[3, 1], [4, 2]]);
    assert_eq!(Dihedral::FlipHorizontal.apply(a.view()), array![[2, 1], [4, 3]]);
    assert_eq!(Dihedral::FlipVertical.apply(a.view()), array![[3, 4], [1, 2]]);
    assert_eq!(Dihedral::Transpose.apply(a.view()), array![[1, 3], [2, 4]]);
    assert_eq!(Dihedral::AntiTranspose.apply(a.view()), array![[4, 2], [3, 1]]);
    let b = Array2::from_shape_fn((5, 5), |(i, j)| i * 5 + j);
    let all: Vec<_> = Dihedral::ALL.iter().map(|t| t.apply(b.view())).collect();
    for i in 0..8 {
        for j in 0..i {
            assert_ne!(all[i], all[j], "{:?} == {:?}", Dihedral::ALL[i], Dihedral::ALL[j]);
        }
    }
    let mut r = b.clone();
    for _ in 0..4 {
        r = Dihedral::Rot90.apply(r.view());
    }
    assert_eq!(r, b);
}

fn toy_set(n: usize, classes: usize) -> ImageSet {
    let images = Array3::from_shape_fn((n, 4, 4), |(k, i, j)| (k * 100 + i * 4 + j) as f32);
    let mut s = ImageSet::from_images(images);
    s.labels = Some((0..n).map(|k| k % classes).collect());
    s.class_names = (0..classes).map(|c| format!("c{c}")).collect();
    s
}

#[test]
fn split_is_seeded_and_stratified() {
    let s = toy_set(30, 3);
    let (tr, va) = s.split(0.2, 7).unwrap();
    assert_eq!((tr.len(), va.len()), (24, 6));
    for c in 0..3 {
        assert_eq!(va.labels.as_ref().unwrap().iter().filter(|&&l| l == c).count(), 2);
    }
    let (tr2, va2) = s.split(0.2, 7).unwrap();
    assert_eq!((tr.images.clone(), va.images.clone()), (tr2.images, va2.images));
    let (_, va3) = s.split(0.2, 8).unwrap();
    assert_ne!(va.images, va3.images);
    // disjoint and complete
    let mut ids: Vec<f32> = tr.images.outer_iter().chain(va.images.outer_iter()).map(|im| im[[0, 0]]).collect();
    ids.sort_by(f32::total_cmp);
    assert_eq!(ids, (0..30).map(|k| (k * 100) as f32).collect::<Vec<_>>());
    assert!(s.split(1.5, 0).is_err());
}

#[test]
fn batches_shapes_shuffle_and_augmentation() {
    let s = toy_set(10, 2);
    let cfg = BatchConfig { batch_size: 4, shuffle: true, augment: false, drop_last: false, seed: 3 };
    let it = s.batches(&cfg, 0).unwrap();
    assert_eq!(it.num_batches(), 3);
    let batches: Vec<_> = it.collect();
    assert_eq!(batches.iter().map(|b| b.images.dim().0).collect::<Vec<_>>(), [4, 4, 2]);
    assert_eq!(batches[0].images.dim(), (4, 1, 4, 4));
    let mut seen: Vec<usize> = batches.iter().flat_map(|b| b.indices.clone()).collect();
    assert_ne!(seen, (0..10).collect::<Vec<_>>(), "shuffled");
    seen.sort();
    assert_eq!(seen, (0..10).collect::<Vec<_>>());
    for b in &batches {
        for (k, &i) in b.indices.iter().enumerate() {
            assert_eq!(b.images.slice(ndarray::s![k, 0, .., ..]), s.image(i));
            assert_eq!(b.labels.as_ref().unwrap()[k], i % 2);
        }
    }
    let again: Vec<_> = s.batches(&cfg, 0).unwrap().collect();
    assert_eq!(again, batches, "same seed and epoch -> same batches");
    let other: Vec<_> = s.batches(&cfg, 1).unwrap().collect();
    assert_ne!(other[0].indices, batches[0].indices, "new epoch -> new order");
    let dl = BatchConfig { drop_last: true, ..cfg.clone() };
    assert_eq!(s.batches(&dl, 0).unwrap().count(), 2);
    // augmentation: every image is one of its 8 symmetric versions, and not all are identity
    let aug = BatchConfig { augment: true, shuffle: false, batch_size: 10, ..cfg };
    let b = s.batches(&aug, 0).unwrap().next().unwrap();
    let mut changed = 0;
    for (k, &i) in b.indices.iter().enumerate() {
        let got = b.images.slice(ndarray::s![k, 0, .., ..]).to_owned();
        assert!(Dihedral::ALL.iter().any(|t| t.apply(s.image(i)) == got));
        changed += usize::from(got != s.image(i));
    }
    assert!(changed > 0);
    assert!(s.batches(&BatchConfig { batch_size: 0, ..Default::default() }, 0).is_err());
}

#[test]
fn writer_round_trips_through_the_loaders() {
    let cfg = ModelI { num_pix: 24, pixel_scale: 0.3, ..ModelI::default() };
    let classes = LensClass::ALL;
    let want = simulate_dataset(&cfg, &classes, 10, 5).unwrap();
    let td = tempfile::tempdir().unwrap();
    let done = std::sync::atomic::AtomicU64::new(0);
    let inc = |k: u64| {
        done.fetch_add(k, std::sync::atomic::Ordering::Relaxed);
    };
    let out = td.path().join("lab");
    let sum = write_model_i_dataset(&out, &cfg, &classes, 10, 5, DatasetLayout::Labelled { val_fraction: 0.25 }, &inc)
        .unwrap();
    assert_eq!(done.load(std::sync::atomic::Ordering::Relaxed), 10);
    // classes cycle: no_sub gets 4, cdm 3, axion 3; val = round(n * 0.25)
    assert_eq!(sum.per_class, vec![("no_sub".into(), 3, 1), ("cdm".into(), 2, 1), ("axion".into(), 2, 1)]);
    let f = read_npy(out.join("train/cdm/1.npy")).unwrap();
    assert_eq!(f.shape, vec![1, 24, 24]);
    assert_eq!(f.data, want.images.index_axis(ndarray::Axis(0), 1).iter().copied().collect::<Vec<_>>());
    let ds = load_labelled(&out, &LoadOptions::default()).unwrap();
    assert_eq!(ds.class_names, ["axion", "cdm", "no_sub"]);
    assert_eq!(ds.train.len() + ds.val.as_ref().unwrap().len(), 10);
    assert!(out.join("manifest.json").exists());

    let flat = td.path().join("Samples");
    write_model_i_dataset(&flat, &cfg, &classes, 10, 5, DatasetLayout::Samples, &|_| {}).unwrap();
    let set = load_folder(&flat, &LoadOptions::default()).unwrap();
    assert_eq!(set.images, want.images.mapv(|v| v as f32));
    let csv = std::fs::read_to_string(flat.join("labels.csv")).unwrap();
    assert!(csv.starts_with("file,class\nsample1.npy,no_sub\nsample2.npy,cdm\n"));
    // no temporary files left behind
    assert!(std::fs::read_dir(&flat).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().starts_with('.')));
    assert!(write_model_i_dataset(
        &flat,
        &cfg,
        &[LensClass::Cdm, LensClass::Cdm],
        2,
        0,
        DatasetLayout::Samples,
        &|_| {}
    )
    .is_err());
}
