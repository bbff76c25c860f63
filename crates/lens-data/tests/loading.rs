//! Loaders: real DeepLense files, every supported layout/dtype, and every kind of bad file.

use std::io::Write;
use std::path::{Path, PathBuf};

use lens_data::load::{list_image_files, load_file, load_files, load_folder, load_labelled, load_path, LoadOptions};
use lens_data::npy::{npy_bytes_f64, read_npy};
use lens_data::transform::Normalization;
use lens_data::{LensDataError, LoadWarning};
use ndarray::{Array, Array2, Array3, Array4, ShapeBuilder};
use ndarray_npy::write_npy;

fn fixtures() -> PathBuf {
    Path::new(&std::env::var("CARGO_MANIFEST_DIR").expect("cargo test sets CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn pattern(h: usize, w: usize, seed: f64) -> Array2<f64> {
    Array2::from_shape_fn((h, w), |(i, j)| ((i * 31 + j * 17) % 23) as f64 / 22.0 + seed)
}

#[test]
fn real_deeplense_files_load_exactly() {
    let dir = fixtures().join("real");
    let set = load_folder(&dir, &LoadOptions::default()).unwrap();
    assert_eq!(set.images.dim(), (3, 64, 64));
    assert!(set.labels.is_none() && set.warnings.is_empty() && set.skipped == 0);
    let names: Vec<String> = set.sources.iter().map(|s| s.path.file_name().unwrap().to_string_lossy().into()).collect();
    assert_eq!(names, ["axion.npy", "cdm.npy", "nosub.npy"]);
    for (k, name) in names.iter().enumerate() {
        // independent reader (ndarray-npy)
        let want: Array2<f64> = ndarray_npy::read_npy(dir.join(name)).unwrap();
        let got = load_file(dir.join(name)).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0], want, "{name}");
        let f32s = want.mapv(|v| v as f32);
        assert_eq!(set.image(k), f32s.view());
        let hi = want.iter().cloned().fold(f64::MIN, f64::max);
        assert!((0.99..=1.0 + 1e-12).contains(&hi), "min-max normalised files: max {hi}");
    }
    // resized
    let r = load_folder(&dir, &LoadOptions::resized(32)).unwrap();
    assert_eq!(r.images.dim(), (3, 32, 32));
}

#[test]
fn every_npy_dtype_shape_and_order() {
    let td = tempfile::tempdir().unwrap();
    let d = td.path();
    let base = pattern(6, 5, 0.0); // non-square catches transposition bugs
    write_npy(d.join("a_f64_hw.npy"), &base).unwrap();
    write_npy(d.join("b_f32_1hw.npy"), &base.mapv(|v| v as f32).insert_axis(ndarray::Axis(0))).unwrap();
    write_npy(d.join("c_f64_hw1.npy"), &base.clone().insert_axis(ndarray::Axis(2))).unwrap();
    let u8img = base.mapv(|v| (v * 200.0).round() as u8);
    write_npy(d.join("d_u8.npy"), &u8img).unwrap();
    let u16img = base.mapv(|v| (v * 60000.0).round() as u16);
    write_npy(d.join("e_u16.npy"), &u16img).unwrap();
    // Fortran order: same logical array, column-major storage
    let mut fort = Array2::<f64>::zeros((6, 5).f());
    fort.assign(&base);
    write_npy(d.join("f_fortran.npy"), &fort).unwrap();
    let txt = std::fs::read(d.join("f_fortran.npy")).unwrap();
    assert!(String::from_utf8_lossy(&txt[..80]).contains("'fortran_order': True"));
    // big-endian f8, hand-written
    let mut be = b"\x93NUMPY\x01\x00".to_vec();
    let mut hdr = "{'descr': '>f8', 'fortran_order': False, 'shape': (6, 5), }".to_string();
    while !(10 + hdr.len() + 1).is_multiple_of(64) {
        hdr.push(' ');
    }
    hdr.push('\n');
    be.extend((hdr.len() as u16).to_le_bytes());
    be.extend(hdr.as_bytes());
    for v in base.iter() {
        be.extend(v.to_be_bytes());
    }
    std::fs::write(d.join("g_be.npy"), be).unwrap();

    let files = list_image_files(d, false).unwrap();
    assert_eq!(files.len(), 7);
    let set = load_folder(d, &LoadOptions::default()).unwrap();
    assert_eq!(set.images.dim(), (7, 6, 5));
    let f = |a: &Array2<f64>| a.mapv(|v| v as f32);
    assert_eq!(set.image(0), f(&base).view());
    assert_eq!(set.image(1), f(&base).view());
    assert_eq!(set.image(2), f(&base).view());
    assert_eq!(set.image(3), u8img.mapv(|v| v as f32).view());
    assert_eq!(set.image(4), u16img.mapv(|v| v as f32).view());
    assert_eq!(set.image(5), f(&base).view());
    assert_eq!(set.image(6), f(&base).view());
    // min-max normalisation maps u8 data to [0,1]
    let mm = load_folder(d, &LoadOptions { normalization: Normalization::MinMax, ..Default::default() }).unwrap();
    for k in 0..7 {
        let img = mm.image(k);
        assert_eq!(img.iter().cloned().fold(f32::MAX, f32::min), 0.0);
        assert_eq!(img.iter().cloned().fold(f32::MIN, f32::max), 1.0);
    }
}

#[test]
fn stacked_npy_and_npz() {
    let td = tempfile::tempdir().unwrap();
    let d = td.path();
    let stack = Array3::from_shape_fn((4, 8, 8), |(n, i, j)| (n * 100 + i * 8 + j) as f64);
    write_npy(d.join("stack.npy"), &stack).unwrap();
    let set = load_path(d.join("stack.npy"), &LoadOptions::default()).unwrap();
    assert_eq!(set.images, stack.mapv(|v| v as f32));
    assert_eq!(set.sources[3].index, 3);
    let stack4: Array4<f64> = stack.clone().insert_axis(ndarray::Axis(1));
    write_npy(d.join("stack4.npy"), &stack4).unwrap();
    let set4 = load_files(&[d.join("stack4.npy")], &LoadOptions::default()).unwrap();
    assert_eq!(set4.images, set.images);

    // .npz: one stored and one deflated member, written with the zip crate
    let npz = d.join("arch.npz");
    {
        let f = std::fs::File::create(&npz).unwrap();
        let mut z = zip::ZipWriter::new(f);
        let stored = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
        let deflated = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        z.start_file("x.npy", stored).unwrap();
        z.write_all(&npy_bytes_f64(&[2, 8, 8], stack.as_slice().unwrap()[..128].as_ref())).unwrap();
        z.start_file("y.npy", deflated).unwrap();
        z.write_all(&npy_bytes_f64(&[1, 8, 8], &stack.as_slice().unwrap()[128..192])).unwrap();
        z.finish().unwrap();
    }
    let z = load_files(std::slice::from_ref(&npz), &LoadOptions::default()).unwrap();
    assert_eq!(z.images, stack.slice(ndarray::s![0..3, .., ..]).mapv(|v| v as f32));
    // corrupt archive
    std::fs::write(d.join("bad.npz"), b"PK\x03\x04 nonsense").unwrap();
    assert!(matches!(load_files(&[d.join("bad.npz")], &LoadOptions::default()), Err(LensDataError::Npz { .. })));
    // a folder mixing stacks, archives, single images and a bad file, with a target size
    std::fs::write(d.join("single.npy"), npy_bytes_f64(&[1, 8, 8], &[7.0; 64])).unwrap();
    let opts = LoadOptions { target_size: Some((8, 8)), skip_bad: true, ..Default::default() };
    let all = load_folder(d, &opts).unwrap();
    assert_eq!(all.skipped, 1);
    let names: Vec<(String, usize)> =
        all.sources.iter().map(|s| (s.path.file_name().unwrap().to_string_lossy().into(), s.index)).collect();
    assert_eq!(names.len(), 3 + 1 + 4 + 4);
    assert_eq!(names[0], ("arch.npz".into(), 0));
    assert_eq!(names[3], ("single.npy".into(), 0));
    assert_eq!(all.image(3), Array2::from_elem((8, 8), 7.0f32).view());
    assert_eq!(all.image(4), stack.index_axis(ndarray::Axis(0), 0).mapv(|v| v as f32).view());
    assert_eq!(all.image(11), stack.index_axis(ndarray::Axis(0), 3).mapv(|v| v as f32).view());
}

#[test]
fn png_jpeg_tiff_8_and_16_bit() {
    let td = tempfile::tempdir().unwrap();
    let d = td.path();
    let (w, h) = (20u32, 12u32);
    let g8 = image::GrayImage::from_fn(w, h, |x, y| image::Luma([(x * 12 + y) as u8]));
    g8.save(d.join("a.png")).unwrap();
    let g16 =
        image::ImageBuffer::<image::Luma<u16>, Vec<u16>>::from_fn(w, h, |x, y| image::Luma([(x * 3000 + y) as u16]));
    g16.save(d.join("b.png")).unwrap();
    g16.save(d.join("c.tiff")).unwrap();
    let rgb = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 10) as u8, (y * 20) as u8, 7]));
    rgb.save(d.join("d.png")).unwrap();
    g8.save(d.join("e.jpg")).unwrap();
    let set = load_folder(d, &LoadOptions::default()).unwrap();
    assert_eq!(set.images.dim(), (5, 12, 20));
    assert_eq!(set.image(0)[[3, 5]], 63.0);
    assert_eq!(set.image(1)[[3, 5]], 15003.0);
    assert_eq!(set.image(2)[[3, 5]], 15003.0);
    let want = 0.299 * 50.0 + 0.587 * 60.0 + 0.114 * 7.0;
    assert!((set.image(3)[[3, 5]] as f64 - want).abs() < 1e-4);
    assert!((set.image(4)[[3, 5]] - 63.0).abs() <= 3.0, "jpeg is lossy but close");
    assert_eq!(set.warnings.len(), 1);
    match &set.warnings[0] {
        LoadWarning::ConvertedToLuminance { count, first } => {
            assert_eq!(*count, 1);
            assert!(first.ends_with("d.png"));
        }
        w => panic!("{w:?}"),
    }
    assert!(set.warnings[0].to_string().contains("luminance"));
}

fn err_of(path: &Path) -> LensDataError {
    load_files(&[path.to_path_buf()], &LoadOptions::default()).unwrap_err()
}

#[test]
fn bad_files_give_typed_errors_naming_the_file() {
    let td = tempfile::tempdir().unwrap();
    let d = td.path();
    let good = npy_bytes_f64(&[1, 4, 4], &[0.5; 16]);
    std::fs::write(d.join("empty.npy"), b"").unwrap();
    std::fs::write(d.join("trunc.npy"), &good[..good.len() - 9]).unwrap();
    std::fs::write(d.join("garbage.npy"), b"this is not numpy at all").unwrap();
    let mut nan = vec![0.5; 16];
    nan[5] = f64::NAN;
    nan[9] = f64::INFINITY;
    std::fs::write(d.join("nan.npy"), npy_bytes_f64(&[1, 4, 4], &nan)).unwrap();
    std::fs::write(d.join("shape.npy"), npy_bytes_f64(&[16], &[0.5; 16])).unwrap();
    std::fs::write(d.join("zero.npy"), npy_bytes_f64(&[0, 4], &[])).unwrap();
    std::fs::write(d.join("corrupt.png"), b"\x89PNG\r\n\x1a\n broken").unwrap();
    std::fs::copy(fixtures().join("pickled_foreign.npy"), d.join("pickled.npy")).unwrap();

    let check = |name: &str, ok: &dyn Fn(&LensDataError) -> bool| {
        let e = err_of(&d.join(name));
        assert!(ok(&e), "{name}: {e:?}");
        assert!(e.to_string().contains(name), "{name}: message must name the file: {e}");
    };
    check("empty.npy", &|e| matches!(e, LensDataError::EmptyFile { .. }));
    check("trunc.npy", &|e| matches!(e, LensDataError::Truncated { expected: 128, actual: 119, .. }));
    check("garbage.npy", &|e| matches!(e, LensDataError::InvalidNpy { .. }));
    check("nan.npy", &|e| matches!(e, LensDataError::NonFinite { count: 2, first_index: 5, .. }));
    check("shape.npy", &|e| matches!(e, LensDataError::BadShape { .. }));
    check("zero.npy", &|e| matches!(e, LensDataError::BadShape { .. }));
    check("corrupt.png", &|e| matches!(e, LensDataError::ImageDecode { .. }));
    check("pickled.npy", &|e| matches!(e, LensDataError::PickledObjectArray { .. }));
    let msg = err_of(&d.join("pickled.npy")).to_string();
    assert!(msg.contains("allow_pickle=True") && msg.contains("fractions.Fraction"), "{msg}");
    assert!(matches!(read_npy(d.join("missing.npy")), Err(LensDataError::Io { .. })));
    // the zero-copy f64 fast path (target size set) reports the same errors
    let resized = LoadOptions::resized(8);
    assert!(matches!(
        load_files(&[d.join("nan.npy")], &resized),
        Err(LensDataError::NonFinite { count: 2, first_index: 5, .. })
    ));
    assert!(matches!(load_files(&[d.join("trunc.npy")], &resized), Err(LensDataError::Truncated { .. })));
    let ok = load_files(&[d.join("nan.npy").with_file_name("good0.npy")], &resized);
    assert!(matches!(ok, Err(LensDataError::Io { .. })));

    // whole folder: first bad file fails the load ...
    std::fs::write(d.join("good1.npy"), &good).unwrap();
    std::fs::write(d.join("good2.npy"), &good).unwrap();
    assert!(load_folder(d, &LoadOptions::default()).is_err());
    // ... unless skip_bad: 8 skipped with warnings, 2 loaded
    let set = load_folder(d, &LoadOptions { skip_bad: true, ..Default::default() }).unwrap();
    assert_eq!(set.len(), 2);
    assert_eq!(set.skipped, 8);
    assert_eq!(set.warnings.iter().filter(|w| matches!(w, LoadWarning::SkippedFile { .. })).count(), 8);
}

#[test]
fn folder_level_errors_and_ordering() {
    let td = tempfile::tempdir().unwrap();
    let d = td.path();
    assert!(matches!(load_folder(d, &LoadOptions::default()), Err(LensDataError::EmptyFolder { .. })));
    std::fs::write(d.join("notes.txt"), b"ignored").unwrap();
    assert!(matches!(load_folder(d, &LoadOptions::default()), Err(LensDataError::EmptyFolder { .. })));
    for i in [10, 2, 1] {
        std::fs::write(d.join(format!("sample{i}.npy")), npy_bytes_f64(&[1, 3, 3], &[i as f64; 9])).unwrap();
    }
    let set = load_folder(d, &LoadOptions::default()).unwrap();
    let firsts: Vec<f32> = (0..3).map(|k| set.image(k)[[0, 0]]).collect();
    assert_eq!(firsts, [1.0, 2.0, 10.0], "natural order");
    std::fs::write(d.join("sample11.npy"), npy_bytes_f64(&[1, 4, 4], &[1.0; 16])).unwrap();
    match load_folder(d, &LoadOptions::default()) {
        Err(e @ LensDataError::SizeMismatch { .. }) => assert!(e.to_string().contains("sample11.npy")),
        other => panic!("{other:?}"),
    }
    assert_eq!(load_folder(d, &LoadOptions::resized(5)).unwrap().images.dim(), (4, 5, 5));
    // all bad with skip_bad
    let td2 = tempfile::tempdir().unwrap();
    std::fs::write(td2.path().join("x.npy"), b"").unwrap();
    assert!(matches!(
        load_folder(td2.path(), &LoadOptions { skip_bad: true, ..Default::default() }),
        Err(LensDataError::AllFilesBad { count: 1, .. })
    ));
}

#[test]
fn labelled_layout() {
    let td = tempfile::tempdir().unwrap();
    let root = td.path().join("dataset");
    for (split, n) in [("train", 3), ("val", 1)] {
        for (ci, class) in ["no", "sphere", "vort"].iter().enumerate() {
            let dir = root.join(split).join(class);
            std::fs::create_dir_all(&dir).unwrap();
            for k in 0..n {
                let v = (ci * 10 + k) as f64;
                std::fs::write(dir.join(format!("{}.npy", k + 1)), npy_bytes_f64(&[1, 5, 5], &[v; 25])).unwrap();
            }
        }
    }
    let ds = load_labelled(&root, &LoadOptions::default()).unwrap();
    assert_eq!(ds.class_names, ["no", "sphere", "vort"]);
    assert_eq!(ds.train.len(), 9);
    assert_eq!(ds.train.labels.as_deref().unwrap(), [0, 0, 0, 1, 1, 1, 2, 2, 2]);
    for k in 0..9 {
        let label = ds.train.labels.as_ref().unwrap()[k];
        assert_eq!(ds.train.image(k)[[2, 2]], (label * 10 + k % 3) as f32);
    }
    let val = ds.val.unwrap();
    assert_eq!(val.labels.as_deref().unwrap(), [0, 1, 2]);
    // a class folder directly under the root works too
    let only = load_labelled(root.join("train"), &LoadOptions::default()).unwrap();
    assert_eq!(only.train.len(), 9);
    assert!(only.val.is_none());
    let empty = tempfile::tempdir().unwrap();
    assert!(matches!(load_labelled(empty.path(), &LoadOptions::default()), Err(LensDataError::NoClasses { .. })));
}

#[test]
fn fortran_order_3d_stack() {
    let td = tempfile::tempdir().unwrap();
    let a = Array::from_shape_fn((3, 4, 5), |(n, i, j)| (n * 20 + i * 5 + j) as f64);
    let mut f = Array3::<f64>::zeros((3, 4, 5).f());
    f.assign(&a);
    write_npy(td.path().join("f.npy"), &f).unwrap();
    let set = load_files(&[td.path().join("f.npy")], &LoadOptions::default()).unwrap();
    assert_eq!(set.images, a.mapv(|v| v as f32));
}

#[test]
fn pickled_object_arrays_are_unpacked_without_executing_pickle() {
    // np.save of an object array [image (4x4 f64), 3] (numpy 2, protocol 4)
    let one = load_file(fixtures().join("pickled_object.npy")).unwrap();
    assert_eq!(one, vec![Array2::from_shape_fn((4, 4), |(i, j)| (i * 4 + j) as f64)]);
    // rows [[image (1,3,3) f32 Fortran, 'x'], [image, 1.5]] -> two images
    let rows = load_file(fixtures().join("pickled_rows.npy")).unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1], Array2::from_shape_fn((3, 3), |(i, j)| (9 + i * 3 + j) as f64));
    // protocol 2 (bytes spelled as _codecs.encode), big-endian image, dict extra
    let p2 = load_file(fixtures().join("pickled_proto2.npy")).unwrap();
    assert_eq!(p2, vec![Array2::from_shape_fn((3, 4), |(i, j)| (i * 4 + j) as f64)]);
    // an object that is not a numpy array is refused, naming what it references
    match load_file(fixtures().join("pickled_foreign.npy")) {
        Err(e @ LensDataError::PickledObjectArray { .. }) => assert!(e.to_string().contains("pickled_foreign.npy")),
        other => panic!("{other:?}"),
    }
}
