//! Hostile feature files: headers that lie, dimensions whose covariance would not fit in
//! memory, too few samples; then random and mutated bytes into both readers.

use std::io::Write;
use std::path::{Path, PathBuf};

use gen_metrics::{load_features_npy, load_features_npy_with_max_dim, GaussianStats, MetricsError, MAX_FEATURE_DIM};
use ndarray::Array2;
use proptest::prelude::*;

/// A `.npy` file with this header dict and these data bytes.
fn npy(dir: &Path, name: &str, dict: &str, data: &[u8]) -> PathBuf {
    let mut header = dict.as_bytes().to_vec();
    while !(10 + header.len() + 1).is_multiple_of(64) {
        header.push(b' ');
    }
    header.push(b'\n');
    let mut b = b"\x93NUMPY\x01\x00".to_vec();
    b.extend((header.len() as u16).to_le_bytes());
    b.extend(header);
    b.extend(data);
    let p = dir.join(name);
    std::fs::write(&p, b).unwrap();
    p
}

fn features(n: usize, d: usize) -> Array2<f64> {
    Array2::from_shape_fn((n, d), |(i, j)| ((i * 31 + j * 7) % 13) as f64 / 13.0)
}

#[test]
fn a_wide_feature_file_is_refused_before_its_covariance() {
    // The example: a 960 KB [3, 40000] file would ask for a 12.8 GB covariance.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("wide.npy");
    ndarray_npy::write_npy(&p, &features(3, 40_000)).unwrap();
    match load_features_npy(&p) {
        Err(e @ MetricsError::FeatureDimTooLarge { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("wide.npy") && msg.contains("40000") && msg.contains("8192"), "{msg}");
        }
        other => panic!("expected FeatureDimTooLarge, got {other:?}"),
    }
    // Raisable through the API.
    assert_eq!(load_features_npy_with_max_dim(&p, 40_000).unwrap().dim(), (3, 40_000));
    assert_eq!(MAX_FEATURE_DIM, 8192);
}

#[test]
fn headers_that_lie_about_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let data = vec![0u8; 64];
    for (name, dict, want) in [
        ("huge.npy", "{'descr': '<f8', 'fortran_order': False, 'shape': (1000000, 1000000), }", "only 64 follow"),
        ("wrap.npy", "{'descr': '<f8', 'fortran_order': False, 'shape': (4294967296, 4294967296), }", "can exist"),
        ("neg.npy", "{'descr': '<f8', 'fortran_order': False, 'shape': (-1, 4), }", "not a size"),
        ("noshape.npy", "{'descr': '<f8', 'fortran_order': False}", "'shape'"),
        ("weird.npy", "{'descr': '<', 'fortran_order': False, 'shape': (2, 4), }", "dtype"),
        ("text.npy", "{'descr': '<U8', 'fortran_order': False, 'shape': (1, 2), }", "dtype `<U8`"),
        ("three.npy", "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2, 2), }", "2-D"),
    ] {
        let p = npy(dir.path(), name, dict, &data);
        match load_features_npy(&p) {
            Err(MetricsError::ArrayFile { path, message }) => {
                assert_eq!(path, p);
                assert!(message.contains(want), "{name}: {message}");
            }
            other => panic!("{name}: expected ArrayFile, got {other:?}"),
        }
    }
    // A version-2 header that claims 4 GB of header text.
    let p = dir.path().join("long-header.npy");
    std::fs::write(&p, b"\x93NUMPY\x02\x00\xff\xff\xff\xff{").unwrap();
    assert!(matches!(load_features_npy(&p), Err(MetricsError::ArrayFile { .. })));
}

#[test]
fn fewer_than_two_samples_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    for n in [0, 1] {
        let p = dir.path().join(format!("rows{n}.npy"));
        ndarray_npy::write_npy(&p, &features(n, 4)).unwrap();
        match load_features_npy(&p) {
            Err(MetricsError::TooFewSamples { needed: 2, got, what }) => {
                assert_eq!(got, n);
                assert!(what.contains(&format!("rows{n}.npy")));
            }
            other => panic!("expected TooFewSamples, got {other:?}"),
        }
    }
}

#[test]
fn statistics_files_are_checked_before_they_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("stats.npz");
    GaussianStats::from_features(features(20, 8).view()).unwrap().save(&p).unwrap();
    assert_eq!(GaussianStats::load(&p).unwrap().dim(), 8);
    assert!(matches!(GaussianStats::load_with_max_dim(&p, 4), Err(MetricsError::FeatureDimTooLarge { dim: 8, .. })));
    // A `sigma` whose header declares 20000 x 20000 (3.2 GB) in a small archive.
    let mut header = b"{'descr': '<f8', 'fortran_order': False, 'shape': (20000, 20000), }".to_vec();
    while !(10 + header.len() + 1).is_multiple_of(64) {
        header.push(b' ');
    }
    header.push(b'\n');
    let mut sigma = b"\x93NUMPY\x01\x00".to_vec();
    sigma.extend((header.len() as u16).to_le_bytes());
    sigma.extend(header);
    sigma.extend([0u8; 256]);
    let p = dir.path().join("lying.npz");
    {
        let mut w = zip::ZipWriter::new(std::fs::File::create(&p).unwrap());
        let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
        w.start_file("sigma.npy", opts).unwrap();
        w.write_all(&sigma).unwrap();
        w.start_file("mu.npy", opts).unwrap();
        w.write_all(&sigma).unwrap();
        w.finish().unwrap();
    }
    match GaussianStats::load(&p) {
        Err(MetricsError::ArrayFile { message, .. }) => assert!(message.contains("only 256 follow"), "{message}"),
        other => panic!("expected ArrayFile, got {other:?}"),
    }
}

fn mutated(src: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let n = src.len();
    let a = src.clone();
    let b = src.clone();
    prop_oneof![
        proptest::collection::vec((0..n.min(160), any::<u8>()), 1..4).prop_map(move |edits| {
            let mut v = a.clone();
            for (i, x) in edits {
                v[i] = x;
            }
            v
        }),
        (0..n).prop_map(move |cut| b[..cut].to_vec()),
        proptest::collection::vec(any::<u8>(), 0..300).prop_map(|rest| {
            let mut v = b"\x93NUMPY\x01\x00".to_vec();
            v.extend(rest);
            v
        }),
    ]
}

fn npy_bytes() -> Vec<u8> {
    let mut b = Vec::new();
    ndarray_npy::WriteNpyExt::write_npy(&features(6, 5), &mut b).unwrap();
    b
}

fn npz_bytes() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("s.npz");
    GaussianStats::from_features(features(10, 3).view()).unwrap().save(&p).unwrap();
    std::fs::read(p).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn mutated_feature_files(bytes in mutated(npy_bytes())) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.npy");
        std::fs::write(&p, &bytes).unwrap();
        if let Ok(x) = load_features_npy(&p) {
            prop_assert!(x.nrows() >= 2 && x.ncols() >= 1 && x.iter().all(|v| v.is_finite()));
        }
    }

    #[test]
    fn mutated_statistics_files(bytes in mutated(npz_bytes())) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.npz");
        std::fs::write(&p, &bytes).unwrap();
        if let Ok(s) = GaussianStats::load(&p) {
            prop_assert_eq!(s.cov.dim(), (s.dim(), s.dim()));
        }
    }
}
