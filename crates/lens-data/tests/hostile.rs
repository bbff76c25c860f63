//! Hostile and broken input (issue 16): every reader ends in a typed error or a valid result -
//! never a panic, an abort, a stack overflow, a hang or a silently wrong value. Inputs are built
//! here, in memory or in temporary folders, and are small; the property tests at the end feed
//! random and mutated bytes to the `.npy`, `.npz`, pickle and spec readers.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lens_data::load::{load_bytes, load_folder, LoadOptions};
use lens_data::npy::{parse_npy, parse_npy_with_limits};
use lens_data::{LensDataError, Limits};

/// A version-1 `.npy` with the given header dict and data bytes.
fn npy_raw(dict: &str, data: &[u8]) -> Vec<u8> {
    let mut header = dict.to_string();
    let total = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - total % 64) % 64));
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

fn npy_f64(shape: &str, values: &[f64]) -> Vec<u8> {
    let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    npy_raw(&format!("{{'descr': '<f8', 'fortran_order': False, 'shape': {shape}, }}"), &data)
}

fn p(name: &str) -> PathBuf {
    PathBuf::from(name)
}

/// Runs `f` on a thread with a small (1 MiB) stack: deep recursion anywhere shows as a crash.
fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new().stack_size(1 << 20).spawn(f).unwrap().join().unwrap()
}

mod npy {
    use super::*;

    fn dtype_err(descr: &str) {
        let b = npy_raw(&format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': (2, 2), }}"), &[0; 64]);
        match parse_npy(&b, &p("d.npy")) {
            Err(LensDataError::UnsupportedDtype { path, .. }) => assert_eq!(path, p("d.npy")),
            other => panic!("descr {descr:?}: {other:?}"),
        }
    }

    #[test]
    fn short_and_non_ascii_descrs_are_unsupported_dtypes() {
        for d in ["<", ">", "|", "=", "", "f", "é", "<é", "é8", "<fé", "<f\u{10FFFF}", "<f88888888888888888888888"]
        {
            dtype_err(d);
        }
    }

    #[test]
    fn overflowing_shape_is_an_error_before_any_size_check() {
        let b = npy_f64("(4294967296, 4294967296)", &[1.0; 4]);
        let e = parse_npy(&b, &p("o.npy")).unwrap_err();
        assert!(matches!(e, LensDataError::InvalidNpy { ref reason, .. } if reason.contains("overflows")), "{e}");
        // (2^62, 4) * 8 bytes overflows only in the byte count
        let b = npy_f64("(4611686018427387904, 4)", &[1.0; 4]);
        assert!(parse_npy_with_limits(&b, &p("o.npy"), &Limits::unlimited()).is_err());
    }

    #[test]
    fn overflowing_shape_through_the_loader_fast_path_is_an_error() {
        // the loader's zero-copy path for one f64 image computed `h * w * 8` unchecked
        let td = tempfile::tempdir().unwrap();
        for (i, shape) in
            ["(4294967296, 4294967296)", "(1, 4294967296, 4294967296)", "(2305843009213693952, 8)"].iter().enumerate()
        {
            std::fs::write(td.path().join(format!("s{i}.npy")), npy_f64(shape, &[1.0; 8])).unwrap();
        }
        let opts = LoadOptions { skip_bad: true, ..LoadOptions::resized(8) };
        match load_folder(td.path(), &opts) {
            Err(LensDataError::AllFilesBad { count: 3, .. }) => {}
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn declared_size_beyond_the_file_is_an_error_before_allocating() {
        // 10^6 x 10^6 f64 = 8 TB: above max_array_bytes, refused before allocating
        let b = npy_f64("(1000000, 1000000)", &[1.0; 2]);
        match parse_npy(&b, &p("big.npy")) {
            Err(LensDataError::LimitExceeded { field: "max_array_bytes", value, .. }) => {
                assert_eq!(value, 8_000_000_000_000)
            }
            other => panic!("{other:?}"),
        }
        // within the limits, the bytes present decide
        let b = npy_f64("(1000, 1000)", &[1.0; 2]);
        assert!(matches!(
            parse_npy(&b, &p("t.npy")),
            Err(LensDataError::Truncated { expected: 8_000_000, actual: 16, .. })
        ));
    }

    #[test]
    fn header_length_beyond_the_file_is_an_error() {
        let mut b = b"\x93NUMPY\x02\x00".to_vec();
        b.extend_from_slice(&u32::MAX.to_le_bytes());
        b.extend_from_slice(b"{'descr': '<f8'");
        assert!(matches!(parse_npy(&b, &p("h.npy")), Err(LensDataError::InvalidNpy { .. })));
        assert!(matches!(parse_npy(b"\x93NUMPY\x01", &p("h.npy")), Err(LensDataError::InvalidNpy { .. })));
    }

    #[test]
    fn long_and_non_ascii_headers_give_short_messages() {
        // a structured descr with no closing bracket and a multi-byte char where the message is cut
        let descr = format!("[('{}é{}", "a".repeat(57), "b".repeat(5000));
        let b = npy_raw(&format!("{{'descr': {descr}, 'fortran_order': False, 'shape': (2,), }}"), &[]);
        let e = parse_npy(&b, &p("s.npy")).unwrap_err();
        assert!(matches!(e, LensDataError::UnsupportedDtype { .. }));
        assert!(e.to_string().len() < 300, "{e}");
        let b = npy_raw(&format!("{{'fortran_order': False, 'shape': (2,), 'x': '{}' }}", "é".repeat(20_000)), &[]);
        let e = parse_npy(&b, &p("s.npy")).unwrap_err();
        assert!(e.to_string().len() < 400, "{e}");
        let b = npy_raw(&format!("{{'descr': '<f8', 'fortran_order': False, 'shape': ({}), }}", "1,".repeat(100)), &[]);
        assert!(matches!(parse_npy(&b, &p("s.npy")), Err(LensDataError::InvalidNpy { .. })));
    }

    #[test]
    fn f64_pixels_beyond_f32_are_an_error_naming_the_file() {
        let td = tempfile::tempdir().unwrap();
        let mut img = vec![0.5; 16];
        img[5] = 1e39;
        // the zero-copy path (one (1,H,W) f64 image) and the general path (a stack)
        std::fs::write(td.path().join("a.npy"), npy_f64("(1, 4, 4)", &img)).unwrap();
        let mut stack = vec![0.5; 32];
        stack[16 + 3] = -1e300;
        std::fs::write(td.path().join("b.npy"), npy_f64("(2, 4, 4)", &stack)).unwrap();
        for (name, opts) in
            [("a.npy", LoadOptions::resized(4)), ("a.npy", LoadOptions::default()), ("b.npy", LoadOptions::resized(2))]
        {
            let e = lens_data::load::load_files(&[td.path().join(name)], &opts).unwrap_err();
            match &e {
                LensDataError::F32Overflow { path, count: 1, stage: "as stored", .. } => assert!(path.ends_with(name)),
                other => panic!("{name}: {other:?}"),
            }
            assert!(e.to_string().contains(name), "{e}");
        }
        // f64 values as stored stay readable through load_file (no f32 conversion there)
        assert_eq!(lens_data::load::load_file(td.path().join("a.npy")).unwrap()[0][[1, 1]], 1e39);
    }

    #[test]
    fn normalisation_overflow_is_an_error_and_min_max_of_extremes_works() {
        use lens_data::transform::Normalization;
        let td = tempfile::tempdir().unwrap();
        let mut img = vec![0.0; 16];
        img[0] = -3e38;
        img[1] = 3e38;
        std::fs::write(td.path().join("x.npy"), npy_f64("(4, 4)", &img)).unwrap();
        let opts =
            LoadOptions { normalization: Normalization::MeanStd { mean: 0.0, std: 1e-3 }, ..LoadOptions::resized(4) };
        match load_folder(td.path(), &opts) {
            Err(LensDataError::F32Overflow { stage: "after normalisation", .. }) => {}
            other => panic!("{other:?}"),
        }
        // MinMax: the f32 span overflows, the result must still be [0, 1], not all zeros
        let opts = LoadOptions { normalization: Normalization::MinMax, ..LoadOptions::resized(4) };
        let set = load_folder(td.path(), &opts).unwrap();
        let v = set.images.as_slice().unwrap();
        assert_eq!((v[0], v[1], v[2]), (0.0, 1.0, 0.5));
    }

    #[test]
    fn file_size_ceiling_applies_to_every_reader() {
        let td = tempfile::tempdir().unwrap();
        let f = td.path().join("x.npy");
        std::fs::write(&f, npy_f64("(4, 4)", &[0.0; 16])).unwrap();
        let limits = Limits { max_file_bytes: 100, ..Limits::default() };
        let is_limit = |r: lens_data::Result<()>| {
            matches!(
                r,
                Err(LensDataError::LimitExceeded { field: "max_file_bytes", .. })
                    | Err(LensDataError::AllFilesBad { .. })
            )
        };
        assert!(is_limit(lens_data::npy::read_npy_with_limits(&f, &limits).map(drop)));
        assert!(is_limit(lens_data::load::load_file_with_limits(&f, &limits).map(drop)));
        let opts = LoadOptions { limits, ..LoadOptions::default() };
        assert!(matches!(
            load_folder(td.path(), &opts),
            Err(LensDataError::LimitExceeded { field: "max_file_bytes", .. })
        ));
        assert!(load_folder(td.path(), &LoadOptions::default()).is_ok());
    }

    #[cfg(unix)]
    #[test]
    fn an_endless_special_file_stops_at_the_ceiling() {
        let td = tempfile::tempdir().unwrap();
        let f = td.path().join("zero.npy");
        std::os::unix::fs::symlink("/dev/zero", &f).unwrap();
        let limits = Limits { max_file_bytes: 1 << 16, ..Limits::default() };
        assert!(matches!(
            lens_data::load::load_file_with_limits(&f, &limits),
            Err(LensDataError::LimitExceeded { field: "max_file_bytes", .. })
        ));
    }

    #[test]
    fn huge_target_size_is_refused_before_allocating() {
        let td = tempfile::tempdir().unwrap();
        std::fs::write(td.path().join("x.npy"), npy_f64("(2, 2)", &[0.0; 4])).unwrap();
        let opts = LoadOptions { target_size: Some((1 << 31, 1 << 31)), ..LoadOptions::default() };
        match load_folder(td.path(), &opts) {
            Err(LensDataError::InvalidValue { name, .. }) => assert_eq!(name, "target_size"),
            other => panic!("{other:?}"),
        }
    }
}

mod npz {
    use super::*;
    use zip::write::SimpleFileOptions;

    fn npz(members: &[(&str, Vec<u8>)], method: zip::CompressionMethod) -> Vec<u8> {
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        for (name, bytes) in members {
            w.start_file(*name, SimpleFileOptions::default().compression_method(method)).unwrap();
            w.write_all(bytes).unwrap();
        }
        w.finish().unwrap().into_inner()
    }

    /// Overwrites the 32-bit uncompressed size of every central-directory (and local) entry.
    fn declare_size(zip: &mut [u8], size: u32) {
        for i in 0..zip.len().saturating_sub(30) {
            if zip[i..i + 4] == [0x50, 0x4b, 0x01, 0x02] {
                zip[i + 24..i + 28].copy_from_slice(&size.to_le_bytes());
            }
            if zip[i..i + 4] == [0x50, 0x4b, 0x03, 0x04] {
                zip[i + 22..i + 26].copy_from_slice(&size.to_le_bytes());
            }
        }
    }

    /// Overwrites the 64-bit uncompressed size in every zip64 extra field (tag 0x0001).
    fn declare_size64(zip: &mut [u8], size: u64) -> usize {
        let mut patched = 0;
        for i in 0..zip.len().saturating_sub(46) {
            if zip[i..i + 4] == [0x50, 0x4b, 0x01, 0x02] {
                let name = u16::from_le_bytes([zip[i + 28], zip[i + 29]]) as usize;
                let extra = u16::from_le_bytes([zip[i + 30], zip[i + 31]]) as usize;
                let (mut j, end) = (i + 46 + name, i + 46 + name + extra);
                while j + 4 <= end {
                    let tag = u16::from_le_bytes([zip[j], zip[j + 1]]);
                    let len = u16::from_le_bytes([zip[j + 2], zip[j + 3]]) as usize;
                    if tag == 1 && len >= 8 && u32::from_le_bytes(zip[i + 24..i + 28].try_into().unwrap()) == u32::MAX {
                        zip[j + 4..j + 12].copy_from_slice(&size.to_le_bytes());
                        patched += 1;
                    }
                    j += 4 + len;
                }
            }
        }
        patched
    }

    fn load(bytes: &[u8], limits: &Limits) -> lens_data::Result<Vec<ndarray::Array2<f64>>> {
        load_bytes(bytes, Path::new("a.npz"), limits)
    }

    #[test]
    fn a_valid_archive_loads() {
        let z = npz(&[("x.npy", npy_f64("(2, 2)", &[1.0, 2.0, 3.0, 4.0]))], zip::CompressionMethod::Deflated);
        assert_eq!(load(&z, &Limits::default()).unwrap()[0][[1, 1]], 4.0);
    }

    #[test]
    fn a_small_archive_declaring_4_gb_is_an_error_before_allocating() {
        for method in [zip::CompressionMethod::Stored, zip::CompressionMethod::Deflated] {
            let mut z = npz(&[("x.npy", npy_f64("(2, 2)", &[1.0; 4]))], method);
            declare_size(&mut z, 4_000_000_000);
            assert!(z.len() < 1000);
            match load(&z, &Limits::unlimited()) {
                Err(LensDataError::Npz { reason, path }) => {
                    assert_eq!(path, p("a.npz"));
                    assert!(reason.contains("declares 4000000000 bytes"), "{reason}");
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn a_small_zip64_archive_declaring_1_tb_is_an_error_before_allocating() {
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let opts = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated).large_file(true);
        w.start_file("x.npy", opts).unwrap();
        w.write_all(&npy_f64("(2, 2)", &[1.0; 4])).unwrap();
        let mut z = w.finish().unwrap().into_inner();
        if declare_size64(&mut z, 1 << 40) == 0 {
            // this zip version wrote no zip64 size in the central directory: use the 32-bit field
            declare_size(&mut z, u32::MAX - 1);
        }
        assert!(z.len() < 1000, "{}", z.len());
        assert!(matches!(load(&z, &Limits::unlimited()), Err(LensDataError::Npz { .. })));
    }

    #[test]
    fn a_deflate_bomb_stops_at_the_decompressed_ceiling() {
        // 4 MiB of zeros deflate to ~4 KB; a 1 MiB ceiling stands in for the 1 GiB default
        let member = npy_raw("{'descr': '|u1', 'fortran_order': False, 'shape': (2048, 2048), }", &vec![0u8; 1 << 22]);
        let z = npz(&[("x.npy", member)], zip::CompressionMethod::Deflated);
        assert!(z.len() < 20_000, "{}", z.len());
        let small = Limits { max_npz_decompressed_bytes: 1 << 20, ..Limits::default() };
        match load(&z, &small) {
            Err(LensDataError::LimitExceeded { field: "max_npz_decompressed_bytes", path, .. }) => {
                assert_eq!(path, p("a.npz"))
            }
            other => panic!("{other:?}"),
        }
        // raising the ceiling through Limits accepts it
        assert_eq!(load(&z, &Limits::default()).unwrap()[0].dim(), (2048, 2048));
    }

    #[test]
    fn the_ceiling_counts_every_member() {
        let m = npy_raw("{'descr': '|u1', 'fortran_order': False, 'shape': (512, 512), }", &vec![0u8; 1 << 18]);
        let z = npz(&[("a.npy", m.clone()), ("b.npy", m.clone()), ("c.npy", m)], zip::CompressionMethod::Deflated);
        let limits = Limits { max_npz_decompressed_bytes: 600_000, ..Limits::default() };
        assert!(matches!(load(&z, &limits), Err(LensDataError::LimitExceeded { .. })));
    }

    #[test]
    fn a_member_inflating_past_its_declared_size_is_an_error() {
        let member = npy_raw("{'descr': '|u1', 'fortran_order': False, 'shape': (256, 256), }", &vec![0u8; 1 << 16]);
        let mut z = npz(&[("x.npy", member)], zip::CompressionMethod::Deflated);
        declare_size(&mut z, 1000);
        assert!(matches!(load(&z, &Limits::default()), Err(LensDataError::Npz { .. })));
    }

    #[test]
    fn garbage_and_empty_archives_are_npz_errors() {
        assert!(matches!(load(b"PK\x05\x06garbage", &Limits::default()), Err(LensDataError::Npz { .. })));
        let z = npz(&[("readme.txt", b"hi".to_vec())], zip::CompressionMethod::Stored);
        assert!(matches!(load(&z, &Limits::default()), Err(LensDataError::Npz { .. })));
    }
}

/// Pickled object arrays (`.npy` with descr `|O`), read by lens-data's data-only pickle reader.
mod pickle {
    use super::*;

    fn object_npy(payload: &[u8]) -> Vec<u8> {
        npy_raw("{'descr': '|O', 'fortran_order': False, 'shape': (2,), }", payload)
    }

    fn parse(payload: &[u8], limits: &Limits) -> lens_data::Result<lens_data::npy::NpyArray> {
        parse_npy_with_limits(&object_npy(payload), &p("o.npy"), limits)
    }

    /// Opcodes that leave one numpy f64 array of `shape` holding `raw` on the stack.
    fn array_ops(shape: &[u64], raw: &[u8]) -> Vec<u8> {
        let mut o = b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85C\x01b\x87R(K\x01(".to_vec();
        for &d in shape {
            o.push(0x8a); // LONG1, 8 bytes
            o.push(8);
            o.extend_from_slice(&d.to_le_bytes());
        }
        o.extend_from_slice(b"tcnumpy\ndtype\nX\x02\x00\x00\x00f8\x89\x88\x87R(K\x03X\x01\x00\x00\x00<NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89B");
        o.extend_from_slice(&(raw.len() as u32).to_le_bytes());
        o.extend_from_slice(raw);
        o.extend_from_slice(b"tb");
        o
    }

    fn f64_bytes(v: &[f64]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn a_hand_built_array_unpacks() {
        let mut pl = b"\x80\x02]".to_vec();
        pl.extend(array_ops(&[2, 2], &f64_bytes(&[1.0, 2.0, 3.0, 4.0])));
        pl.extend_from_slice(b"a.");
        let a = parse(&pl, &Limits::default()).unwrap();
        assert_eq!((a.shape, a.data), (vec![2, 2], vec![1.0, 2.0, 3.0, 4.0]));
    }

    #[test]
    fn two_million_nested_tuple1_neither_overflow_nor_hang() {
        let mut pl = b"\x80\x02N".to_vec();
        pl.extend(std::iter::repeat_n(0x85u8, 2_000_000));
        pl.push(b'.');
        // default limits: refused by the value count
        let e = parse(&pl, &Limits::default()).unwrap_err();
        assert!(matches!(e, LensDataError::LimitExceeded { field: "max_pickle_values", .. }), "{e}");
        // limits lifted: parsed, then dropped iteratively, on a 1 MiB stack
        let t = Instant::now();
        let r = on_small_stack(move || parse(&pl, &Limits::unlimited()).map(drop));
        assert!(matches!(r, Err(LensDataError::PickledObjectArray { .. })), "{r:?}");
        assert!(t.elapsed() < Duration::from_secs(20));
    }

    #[test]
    fn long_binput_0xffffffff_does_not_allocate_a_table() {
        let pl = b"\x80\x02Nr\xff\xff\xff\xff.";
        let r = on_small_stack(move || parse(pl, &Limits::default()).map(drop));
        assert!(matches!(r, Err(LensDataError::PickledObjectArray { .. })), "{r:?}");
    }

    #[test]
    fn memo_entries_are_capped() {
        let mut pl = b"\x80\x02N".to_vec();
        for i in 0..50u32 {
            pl.push(b'r');
            pl.extend_from_slice(&(i * 1000).to_le_bytes());
        }
        pl.push(b'.');
        let limits = Limits { max_pickle_memo: 10, ..Limits::default() };
        let e = parse(&pl, &limits).unwrap_err();
        assert!(
            matches!(e, LensDataError::LimitExceeded { field: "max_pickle_memo", value: 11, limit: 10, .. }),
            "{e}"
        );
    }

    /// ~16 KB: eight levels of lists, each holding 1000 references to the level below.
    fn fan_out(leaf: &[u8]) -> Vec<u8> {
        let mut pl = b"\x80\x02".to_vec();
        pl.extend_from_slice(leaf);
        pl.extend_from_slice(b"q\x00");
        for level in 0..8u8 {
            pl.extend_from_slice(b"](");
            for _ in 0..1000 {
                pl.extend_from_slice(&[b'h', level]);
            }
            pl.extend_from_slice(&[b'e', b'q', level + 1]);
        }
        pl.push(b'.');
        pl
    }

    #[test]
    fn memo_fan_out_stops_at_the_visit_ceiling() {
        let pl = fan_out(b"]");
        assert!(pl.len() < 20_000);
        let t = Instant::now();
        let e = parse(&pl, &Limits::default()).unwrap_err();
        assert!(matches!(e, LensDataError::LimitExceeded { field: "max_pickle_visits", .. }), "{e}");
        assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    }

    #[test]
    fn memo_references_cannot_multiply_an_array() {
        // one 8 KB array referenced 1000 times: more f64 than the pickle's bytes can hold
        let mut pl = b"\x80\x02".to_vec();
        pl.extend(array_ops(&[32, 32], &f64_bytes(&[0.5; 1024])));
        pl.extend_from_slice(b"q\x00](");
        for _ in 0..1000 {
            pl.extend_from_slice(b"h\x00");
        }
        pl.extend_from_slice(b"e.");
        let e = parse(&pl, &Limits::default()).unwrap_err();
        assert!(matches!(e, LensDataError::PickledObjectArray { ref detail, .. } if detail.contains("memo")), "{e}");
        // the decoded-size ceiling also applies
        let small = Limits { max_array_bytes: 10_000, ..Limits::default() };
        let e = parse(&pl, &small).unwrap_err();
        assert!(matches!(e, LensDataError::LimitExceeded { field: "max_array_bytes", .. }), "{e}");
    }

    #[test]
    fn huge_lengths_do_not_overflow() {
        // BINBYTES8 / BINUNICODE8 with length 2^64 - 1, BINBYTES / BINUNICODE with 2^32 - 1
        for op in [&b"\x8e"[..], b"\x8d"] {
            let mut pl = b"\x80\x04".to_vec();
            pl.extend_from_slice(op);
            pl.extend_from_slice(&u64::MAX.to_le_bytes());
            pl.extend_from_slice(b"abc.");
            assert!(matches!(parse(&pl, &Limits::default()), Err(LensDataError::PickledObjectArray { .. })));
        }
        for op in [b'B', b'X', b'T'] {
            let mut pl = vec![0x80, 2, op];
            pl.extend_from_slice(&u32::MAX.to_le_bytes());
            pl.push(b'.');
            assert!(matches!(parse(&pl, &Limits::default()), Err(LensDataError::PickledObjectArray { .. })));
        }
    }

    #[test]
    fn overflowing_array_shape_is_an_error() {
        for shape in [&[1u64 << 32, 1 << 32][..], &[1 << 62, 4], &[u64::MAX, 1]] {
            let mut pl = b"\x80\x02".to_vec();
            pl.extend(array_ops(shape, &f64_bytes(&[1.0; 4])));
            pl.push(b'.');
            let e = parse(&pl, &Limits::unlimited()).unwrap_err();
            assert!(matches!(e, LensDataError::PickledObjectArray { .. }), "{shape:?}: {e}");
        }
    }

    #[test]
    fn code_execution_is_still_refused() {
        let pl = b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00ls\x85R.";
        let e = parse(pl, &Limits::default()).unwrap_err();
        assert!(e.to_string().contains("os.system"), "{e}");
    }
}

mod spec {
    use super::*;
    use lens_data::render::{render, render_with_limits};
    use lens_data::SimulationSpec;

    fn spec(num_pix: &str, extra: &str) -> String {
        format!(
            r#"{{"num_pix": {num_pix}, "pixel_scale": 0.05 {extra},
               "lens": [{{"type": "SIS", "theta_E": 1.0}}],
               "source": [{{"type": "SERSIC", "amp": 1.0, "R_sersic": 0.2, "n_sersic": 1.0}}]}}"#
        )
    }

    fn invalid(text: &str) -> (String, String, String) {
        match SimulationSpec::from_json_str(text) {
            Err(LensDataError::InvalidValue { name, value, reason }) => (name, value, reason),
            other => panic!("{text}: {other:?}"),
        }
    }

    #[test]
    fn num_pix_and_supersampling_have_upper_bounds() {
        let (name, value, reason) = invalid(&spec("1000000000", ""));
        assert_eq!((name.as_str(), value.as_str()), ("num_pix", "1000000000"));
        assert!(reason.contains("1..=4096"), "{reason}");
        let (name, _, reason) = invalid(&spec("1000", r#", "supersampling": 100"#));
        assert_eq!(name, "supersampling");
        assert!(reason.contains("1..=4"), "{reason}");
        assert!(SimulationSpec::from_json_str(&spec("18446744073709551615", "")).is_err());
        // raised limits accept it
        let big = Limits { max_num_pix: 5000, max_grid_side: 5000, ..Limits::default() };
        assert!(SimulationSpec::from_json_str_with_limits(&spec("5000", ""), &big).is_ok());
    }

    #[test]
    fn an_overflowing_psf_radius_is_an_error_not_a_dropped_psf() {
        let (name, _, reason) =
            invalid(&spec("16", r#", "psf": {"type": "GAUSSIAN", "fwhm": 1e300, "truncation": 1e300}"#));
        assert_eq!(name, "psf.fwhm * psf.truncation");
        assert!(reason.contains("Limits::max_psf_radius"), "{reason}");
        // large but finite radius: refused too (it would cost radius operations per pixel)
        invalid(&spec("16", r#", "psf": {"type": "GAUSSIAN", "fwhm": 1e3, "truncation": 4}"#));
        // a spec built in code goes through the same check when rendered
        let mut s = SimulationSpec::from_json_str(&spec("16", "")).unwrap();
        s.psf = Some(lens_data::spec::PsfSpec::Gaussian { fwhm: f64::MAX, truncation: 10.0 });
        assert!(matches!(render(&s), Err(LensDataError::InvalidValue { .. })));
        s.psf = Some(lens_data::spec::PsfSpec::Gaussian { fwhm: f64::NAN, truncation: 10.0 });
        assert!(matches!(render(&s), Err(LensDataError::InvalidValue { .. })));
    }

    #[test]
    fn profile_counts_are_bounded() {
        let many = vec![r#"{"type": "SIS", "theta_E": 0.1}"#; 20].join(",");
        let text = format!(r#"{{"num_pix": 8, "pixel_scale": 0.1, "lens": [{many}], "source": []}}"#);
        let limits = Limits { max_profiles: 10, ..Limits::default() };
        match SimulationSpec::from_json_str_with_limits(&text, &limits) {
            Err(LensDataError::InvalidValue { name, value, .. }) => {
                assert_eq!((name.as_str(), value.as_str()), ("lens (number of profiles)", "20"))
            }
            other => panic!("{other:?}"),
        }
        assert!(SimulationSpec::from_json_str(&text).is_ok());
    }

    #[test]
    fn rendering_non_finite_pixels_is_an_error() {
        let text = r#"{"num_pix": 8, "pixel_scale": 0.1, "lens": [],
            "source": [{"type": "SERSIC", "amp": 1e308, "R_sersic": 0.2, "n_sersic": 1.0}]}"#;
        let s = SimulationSpec::from_json_str(text).unwrap();
        match render(&s) {
            Err(LensDataError::NonFiniteRender { what, count, .. }) => {
                assert!(what == "render" && count > 0)
            }
            other => panic!("{other:?}"),
        }
        // and a huge pixel scale (area = scale^2 overflows)
        let text = r#"{"num_pix": 4, "pixel_scale": 1e200, "lens": [],
            "source": [{"type": "SERSIC", "amp": 1.0, "R_sersic": 0.2, "n_sersic": 1.0}], "lens_light": [{"type": "SERSIC", "amp": 1.0, "R_sersic": 1e200, "n_sersic": 1.0}]}"#;
        let s = SimulationSpec::from_json_str(text).unwrap();
        assert!(matches!(render_with_limits(&s, &Limits::default()), Err(LensDataError::NonFiniteRender { .. })));
    }

    #[test]
    fn deep_json_and_big_spec_files_are_errors() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let r = on_small_stack(move || SimulationSpec::from_json_str(&deep).map(drop));
        assert!(matches!(r, Err(LensDataError::SpecSyntax { .. })));
        let td = tempfile::tempdir().unwrap();
        let f = td.path().join("s.json");
        std::fs::write(&f, spec("8", "")).unwrap();
        let limits = Limits { max_spec_bytes: 50, ..Limits::default() };
        assert!(matches!(
            SimulationSpec::from_json_file_with_limits(&f, &limits),
            Err(LensDataError::LimitExceeded { field: "max_spec_bytes", .. })
        ));
        std::fs::write(&f, b"{\"num_pix\": \xff}").unwrap();
        assert!(matches!(SimulationSpec::from_json_file(&f), Err(LensDataError::SpecSyntax { origin: Some(_), .. })));
    }
}

mod simulate {
    use super::*;
    use lens_data::simulate::{simulate_dataset, LensClass, ModelI};
    use lens_data::write::{write_model_i_dataset, DatasetLayout};

    fn small() -> ModelI {
        ModelI { num_pix: 16, pixel_scale: 0.4, ..ModelI::default() }
    }

    fn invalid_name(r: lens_data::Result<impl std::fmt::Debug>) -> String {
        match r {
            Err(LensDataError::InvalidValue { name, reason, .. }) => {
                assert!(reason.contains("..=") || reason.contains("must"), "{reason}");
                name
            }
            Err(other) => panic!("{other:?}"),
            Ok(_) => panic!("accepted"),
        }
    }

    #[test]
    fn sizes_and_counts_have_upper_bounds() {
        let cfg = ModelI { num_pix: 1 << 40, ..small() };
        assert_eq!(invalid_name(simulate_dataset(&cfg, &LensClass::ALL, 1, 0)), "num_pix");
        let cfg = ModelI { cdm_count: usize::MAX, ..small() };
        assert_eq!(invalid_name(simulate_dataset(&cfg, &LensClass::ALL, 1, 0)), "cdm_count");
        let cfg = ModelI { axion_count: 1 << 30, ..small() };
        assert_eq!(invalid_name(simulate_dataset(&cfg, &LensClass::ALL, 1, 0)), "axion_count");
        assert_eq!(invalid_name(simulate_dataset(&small(), &LensClass::ALL, usize::MAX, 0)), "count");
        // below max_count, but the in-memory set (900,000 x 256^2 f64 = 470 GB) would not fit
        // max_array_bytes
        let cfg = ModelI { num_pix: 256, ..small() };
        assert_eq!(invalid_name(simulate_dataset(&cfg, &LensClass::ALL, 900_000, 0)), "count");
        let td = tempfile::tempdir().unwrap();
        let r =
            write_model_i_dataset(td.path(), &small(), &LensClass::ALL, usize::MAX, 0, DatasetLayout::Samples, &|_| {});
        assert_eq!(invalid_name(r), "count");
        // raised limits are honoured
        let cfg = ModelI { limits: Limits { max_count: 2, ..Limits::default() }, ..small() };
        assert_eq!(invalid_name(simulate_dataset(&cfg, &LensClass::ALL, 3, 0)), "count");
        assert!(simulate_dataset(&cfg, &LensClass::ALL, 2, 0).is_ok());
    }

    #[test]
    fn an_overflowing_psf_is_an_error() {
        let cfg = ModelI { psf_fwhm: Some(1e300), psf_truncation: 1e300, ..small() };
        assert!(invalid_name(simulate_dataset(&cfg, &LensClass::ALL, 1, 0)).starts_with("psf"));
        let cfg = ModelI { psf_fwhm: Some(f64::INFINITY), ..small() };
        assert!(invalid_name(simulate_dataset(&cfg, &LensClass::ALL, 1, 0)).starts_with("psf"));
    }

    #[test]
    fn non_finite_parameters_and_pixels_are_errors() {
        let cfg = ModelI { source_amp: f64::NAN, ..small() };
        assert_eq!(invalid_name(simulate_dataset(&cfg, &LensClass::ALL, 1, 0)), "source_amp");
        // finite, but the image overflows: no longer min-max'ed into silent zeros
        let cfg = ModelI { source_amp: 1e308, ..small() };
        match simulate_dataset(&cfg, &LensClass::ALL, 3, 0) {
            Err(LensDataError::NonFiniteRender { what, .. }) => {
                assert!(what.contains("Model I image"), "{what}")
            }
            other => panic!("{other:?}"),
        }
        let td = tempfile::tempdir().unwrap();
        let r = write_model_i_dataset(td.path(), &cfg, &LensClass::ALL, 3, 0, DatasetLayout::Samples, &|_| {});
        assert!(matches!(r, Err(LensDataError::NonFiniteRender { .. })), "{r:?}");
        // noise overflow: exposure 10^300
        let cfg = ModelI { exposure_log10_range: (300.0, 300.0), source_amp: 1e10, ..small() };
        match simulate_dataset(&cfg, &LensClass::ALL, 1, 0) {
            Err(LensDataError::NonFiniteRender { what, .. }) => {
                assert!(what.contains("after noise"), "{what}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn min_max_of_finite_extremes_is_not_zeros() {
        let mut v = [-1e308, 0.0, 1e308];
        lens_data::simulate::min_max_in_place(&mut v);
        assert_eq!(v, [0.0, 0.5, 1.0]);
    }
}

/// Random and mutated bytes into every reader: no panic, and a typed error or a valid result.
/// Case counts keep the whole module to a few seconds in a debug build.
mod props {
    use super::*;
    use lens_data::SimulationSpec;
    use proptest::prelude::*;

    /// Small ceilings, so that whatever a mutation declares stays cheap to attempt.
    fn tight() -> Limits {
        Limits {
            max_file_bytes: 1 << 20,
            max_array_bytes: 1 << 20,
            max_npz_decompressed_bytes: 1 << 20,
            max_pickle_values: 10_000,
            max_pickle_memo: 1000,
            max_pickle_visits: 10_000,
            max_num_pix: 32,
            max_grid_side: 64,
            max_psf_radius: 16,
            max_profiles: 8,
            max_count: 4,
            max_spec_bytes: 1 << 16,
        }
    }

    fn config(cases: u32) -> ProptestConfig {
        ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
    }

    /// A valid array's bytes with up to eight bytes overwritten, then maybe truncated.
    fn mutate(base: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
        let n = base.len();
        (proptest::collection::vec((0..n, any::<u8>()), 0..8), 0..=n + 8, any::<bool>()).prop_map(
            move |(edits, cut, trunc)| {
                let mut b = base.clone();
                for (i, v) in edits {
                    b[i] = v;
                }
                if trunc {
                    b.truncate(cut);
                }
                b
            },
        )
    }

    fn valid_npy() -> Vec<u8> {
        npy_f64("(1, 3, 3)", &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0])
    }

    fn check_npy(bytes: &[u8]) {
        if let Ok(a) = parse_npy_with_limits(bytes, &p("x.npy"), &tight()) {
            assert_eq!(a.shape.iter().product::<usize>(), a.data.len());
        }
    }

    proptest! {
        #![proptest_config(config(300))]

        #[test]
        fn npy_random_bytes(mut bytes in proptest::collection::vec(any::<u8>(), 0..200), magic in any::<bool>()) {
            if magic {
                let mut b = b"\x93NUMPY\x01\x00".to_vec();
                b.append(&mut bytes);
                bytes = b;
            }
            check_npy(&bytes);
        }

        #[test]
        fn npy_mutated(bytes in mutate(valid_npy())) {
            check_npy(&bytes);
            let r = load_bytes(&bytes, Path::new("x.npy"), &tight());
            if let Ok(images) = r {
                prop_assert!(images.iter().all(|i| i.iter().all(|v| v.is_finite())));
            }
        }

        #[test]
        fn npy_random_headers(descr in "[<>|=]?[a-zA-Zé0-9]{0,4}", dims in proptest::collection::vec(any::<u64>(), 0..5),
                              small in proptest::collection::vec(0u64..6, 0..4), pick in any::<bool>(), fortran in any::<bool>()) {
            let dims = if pick { small } else { dims };
            let shape: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
            let shape = if shape.len() == 1 { format!("({},)", shape[0]) } else { format!("({})", shape.join(", ")) };
            let dict = format!("{{'descr': '{descr}', 'fortran_order': {}, 'shape': {shape}, }}", if fortran { "True" } else { "False" });
            check_npy(&npy_raw(&dict, &[7u8; 256]));
        }
    }

    fn valid_npz() -> Vec<u8> {
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        for name in ["a.npy", "b.npy"] {
            w.start_file(name, opts).unwrap();
            w.write_all(&valid_npy()).unwrap();
        }
        w.finish().unwrap().into_inner()
    }

    proptest! {
        #![proptest_config(config(300))]

        #[test]
        fn npz_mutated(bytes in mutate(valid_npz())) {
            let _ = load_bytes(&bytes, Path::new("x.npz"), &tight());
        }

        #[test]
        fn npz_random_bytes(mut bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            bytes.splice(0..0, *b"PK\x03\x04");
            let _ = load_bytes(&bytes, Path::new("x.npz"), &tight());
        }
    }

    /// Pickle opcodes with plausible arguments, so random programs get past the first byte.
    fn op() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            prop::sample::select(b"(N\x88\x89)]}tlaesuR.b\x85\x86\x87\x94\x93".to_vec()).prop_map(|o| vec![o]),
            (prop::sample::select(b"KqhC\x8c".to_vec()), any::<u8>()).prop_map(|(o, a)| vec![o, a]),
            (prop::sample::select(b"MJrjBXT".to_vec()), any::<u32>()).prop_map(|(o, a)| {
                let mut v = vec![o];
                v.extend_from_slice(&a.to_le_bytes());
                if o == b'M' {
                    v.truncate(3)
                }
                v
            }),
            (prop::sample::select(b"\x8e\x8d".to_vec()), any::<u64>(), 0u64..4).prop_map(|(o, a, s)| {
                let mut v = vec![o];
                v.extend_from_slice(&(if a % 2 == 0 { s } else { a }).to_le_bytes());
                v
            }),
            Just(b"cnumpy\ndtype\n".to_vec()),
            Just(b"cnumpy.core.multiarray\n_reconstruct\n".to_vec()),
            Just(b"X\x02\x00\x00\x00f8".to_vec()),
            (any::<u8>(), any::<u64>()).prop_map(|(n, v)| {
                let mut o = vec![0x8a, n % 10];
                o.extend_from_slice(&v.to_le_bytes());
                o
            }),
        ]
    }

    fn check_pickle(payload: &[u8]) {
        let b = npy_raw("{'descr': '|O', 'fortran_order': False, 'shape': (1,), }", payload);
        if let Ok(a) = parse_npy_with_limits(&b, &p("o.npy"), &tight()) {
            assert_eq!(a.shape.iter().product::<usize>(), a.data.len());
        }
    }

    proptest! {
        #![proptest_config(config(400))]

        #[test]
        fn pickle_random_programs(ops in proptest::collection::vec(op(), 0..60)) {
            let mut payload = b"\x80\x02".to_vec();
            payload.extend(ops.concat());
            check_pickle(&payload);
        }

        #[test]
        fn pickle_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            check_pickle(&bytes);
        }

        #[test]
        fn pickle_mutated_fixture(bytes in mutate(std::fs::read(std::path::Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("tests/fixtures/pickled_rows.npy")).unwrap())) {
            let _ = parse_npy_with_limits(&bytes, &p("o.npy"), &tight());
        }
    }

    fn valid_spec() -> String {
        r#"{"num_pix": 12, "pixel_scale": 0.3, "supersampling": 2,
            "psf": {"type": "GAUSSIAN", "fwhm": 0.5, "truncation": 3.0},
            "lens": [{"type": "SIE", "theta_E": 1.0, "e1": 0.1, "e2": 0.0},
                     {"type": "SHEAR", "gamma1": 0.05, "gamma2": 0.0},
                     {"type": "TNFW", "Rs": 0.5, "alpha_Rs": 0.1, "r_trunc": 2.0}],
            "source": [{"type": "SERSIC_ELLIPSE", "amp": 20.0, "R_sersic": 0.25, "n_sersic": 1.0, "e1": -0.1, "e2": 0.1}],
            "lens_light": []}"#
            .to_string()
    }

    fn check_spec(text: &str) {
        let limits = tight();
        if let Ok(s) = SimulationSpec::from_json_str_with_limits(text, &limits) {
            if let Ok(img) = lens_data::render::render_with_limits(&s, &limits) {
                assert!(img.iter().all(|v| v.is_finite()));
            }
        }
    }

    /// A spec's JSON value with one number replaced by something extreme.
    fn extreme() -> impl Strategy<Value = serde_json::Value> {
        prop_oneof![
            any::<f64>().prop_map(|x| serde_json::json!(x)),
            any::<u64>().prop_map(|x| serde_json::json!(x)),
            any::<i64>().prop_map(|x| serde_json::json!(x)),
            prop::sample::select(vec![0.0, -0.0, 1e-300, 1e300, f64::MAX, f64::MIN_POSITIVE, -1e308])
                .prop_map(|x| serde_json::json!(x)),
            Just(serde_json::Value::Null),
            Just(serde_json::json!("x")),
            Just(serde_json::json!([])),
        ]
    }

    proptest! {
        #![proptest_config(config(200))]

        #[test]
        fn spec_mutated_text(bytes in mutate(valid_spec().into_bytes())) {
            check_spec(&String::from_utf8_lossy(&bytes));
        }

        #[test]
        fn spec_extreme_values(path in 0usize..64, v in extreme()) {
            let mut spec: serde_json::Value = serde_json::from_str(&valid_spec()).unwrap();
            // the path-th leaf value, in document order
            fn leaves(v: &serde_json::Value) -> usize {
                match v {
                    serde_json::Value::Object(m) => m.values().map(leaves).sum(),
                    serde_json::Value::Array(a) => a.iter().map(leaves).sum(),
                    _ => 1,
                }
            }
            fn replace(v: &mut serde_json::Value, k: &mut usize, new: &serde_json::Value) -> bool {
                match v {
                    serde_json::Value::Object(m) => m.values_mut().any(|x| replace(x, k, new)),
                    serde_json::Value::Array(a) => a.iter_mut().any(|x| replace(x, k, new)),
                    leaf if *k == 0 => {
                        *leaf = new.clone();
                        true
                    }
                    _ => {
                        *k -= 1;
                        false
                    }
                }
            }
            let mut k = path % leaves(&spec);
            prop_assert!(replace(&mut spec, &mut k, &v));
            check_spec(&spec.to_string());
        }
    }
}
