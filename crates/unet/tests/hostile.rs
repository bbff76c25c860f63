//! Hostile and broken checkpoints, by reader: crafted cases first, then properties that feed
//! random and mutated bytes to every reader (`load_checkpoint`, `read_metadata`, `infer_config`)
//! and require a typed error or a valid model; never a panic, an abort or a hang.
//!
//! Files are made in the test from small sources: the PyTorch fixture `unet_state_dict.pth`
//! (367 KB), and a burnpack save and a safetensors export of `UnetConfig::new(8, vec![1, 2], 1)`.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use burn::backend::Flex;
use proptest::prelude::*;
mod common;

use unet::{infer_config, load_checkpoint, read_metadata, PytorchLimits, UnetConfig, UnetError, Weights};

type B = Flex;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo test sets CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn load(path: &Path) -> Result<unet::Unet<B>, UnetError> {
    load_checkpoint::<B>(path, Weights::Model, None, &Default::default())
}

/// The entries of a zip archive, in order.
fn entries(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut z = zip8::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
    (0..z.len())
        .map(|i| {
            let mut f = z.by_index(i).unwrap();
            let mut v = Vec::new();
            f.read_to_end(&mut v).unwrap();
            (f.name().to_string(), v)
        })
        .collect()
}

/// A zip archive of these entries, stored (as torch.save writes them) or deflated.
fn zip(entries: &[(String, Vec<u8>)], deflate: bool) -> Vec<u8> {
    let mut w = zip8::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let method = if deflate { zip8::CompressionMethod::Deflated } else { zip8::CompressionMethod::Stored };
    let opts = zip8::write::SimpleFileOptions::default().compression_method(method);
    for (name, data) in entries {
        w.start_file(name.as_str(), opts).unwrap();
        w.write_all(data).unwrap();
    }
    w.finish().unwrap().into_inner()
}

fn fixture_entries() -> Vec<(String, Vec<u8>)> {
    entries(&std::fs::read(fixture("unet_state_dict.pth")).unwrap())
}

/// A PyTorch archive whose data.pkl is `pkl`, beside the fixture's other entries.
fn with_pickle(pkl: Vec<u8>) -> Vec<u8> {
    let mut e = fixture_entries();
    e.iter_mut().find(|(n, _)| n.ends_with("data.pkl")).unwrap().1 = pkl;
    zip(&e, false)
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

mod pytorch {
    use super::*;

    #[test]
    fn a_rewritten_archive_still_loads() {
        // The helpers themselves: the fixture, unpacked and zipped again, is the same model.
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "same.pth", &zip(&fixture_entries(), false));
        assert_eq!(load(&p).unwrap().config(), &UnetConfig::new(8, vec![1, 2], 1));
        let p = write(dir.path(), "deflated.pth", &zip(&fixture_entries(), true));
        assert!(load(&p).is_ok());
    }

    #[test]
    fn a_missing_storage_is_an_error_naming_the_tensor() {
        let dir = tempfile::tempdir().unwrap();
        let e: Vec<_> = fixture_entries().into_iter().filter(|(n, _)| !n.ends_with("/data/7")).collect();
        let p = write(dir.path(), "missing.pth", &zip(&e, false));
        match load(&p).unwrap_err() {
            UnetError::MissingTensorData { path, key, reason } => {
                assert_eq!(path, p);
                assert!(!key.is_empty() && reason.contains("storage `7`"), "{key}: {reason}");
            }
            e => panic!("wrong error: {e}"),
        }
        assert!(matches!(unet::read_state_dict(&p, Weights::Model), Err(UnetError::MissingTensorData { .. })));
    }

    #[test]
    fn a_short_storage_is_an_error_naming_the_tensor() {
        let dir = tempfile::tempdir().unwrap();
        let mut e = fixture_entries();
        let (_, data) = e.iter_mut().find(|(n, _)| n.ends_with("/data/4")).unwrap();
        data.truncate(data.len() / 2);
        let p = write(dir.path(), "short.pth", &zip(&e, false));
        let err = load(&p).unwrap_err();
        assert!(matches!(err, UnetError::MissingTensorData { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains("short.pth") && msg.contains("is truncated"), "{msg}");
    }

    #[test]
    fn a_corrupted_storage_fails_its_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = std::fs::read(fixture("unet_state_dict.pth")).unwrap();
        let start = {
            let mut z = zip8::ZipArchive::new(std::io::Cursor::new(&bytes)).unwrap();
            let f = z.by_name("unet_state_dict/data/3").unwrap();
            f.data_start().unwrap() as usize
        };
        bytes[start + 5] ^= 0x40;
        let p = write(dir.path(), "flipped.pth", &bytes);
        let err = load(&p).unwrap_err();
        assert!(matches!(err, UnetError::MissingTensorData { .. }), "{err}");
        assert!(err.to_string().contains("cannot be read"), "{err}");
    }

    #[test]
    fn deep_pickles_are_refused_before_the_reader_runs() {
        // 2,000,000 nested TUPLE1 (burn-store overflows its stack dropping them).
        let dir = tempfile::tempdir().unwrap();
        let mut pkl = vec![0x80, 2, b'N'];
        pkl.extend(std::iter::repeat_n(0x85u8, 2_000_000));
        pkl.push(b'.');
        let p = write(dir.path(), "deep.pth", &with_pickle(pkl));
        match load(&p).unwrap_err() {
            UnetError::LimitExceeded { setting, path, .. } => {
                assert_eq!((setting, path), ("max_pickle_depth", p.clone()))
            }
            e => panic!("wrong error: {e}"),
        }
        // The same through EMPTY_LIST + APPEND, and through nested MARKs.
        let mut pkl = vec![0x80, 2];
        pkl.extend(std::iter::repeat_n(b']', 1_000_000));
        pkl.extend(std::iter::repeat_n(b'a', 999_999));
        pkl.push(b'.');
        let p = write(dir.path(), "deep-list.pth", &with_pickle(pkl));
        assert!(matches!(load(&p), Err(UnetError::LimitExceeded { setting: "max_pickle_depth", .. })));
        let mut pkl = vec![0x80, 2];
        pkl.extend(std::iter::repeat_n(b'(', 100_000));
        let p = write(dir.path(), "marks.pth", &with_pickle(pkl));
        assert!(matches!(load(&p), Err(UnetError::LimitExceeded { setting: "max_pickle_depth", .. })));
        // A raised limit lets a deeper (but not absurd) file through to the next check.
        let mut pkl = vec![0x80, 2, b'N'];
        pkl.extend(std::iter::repeat_n(0x85u8, 150));
        pkl.push(b'.');
        let p = write(dir.path(), "deeper.pth", &with_pickle(pkl));
        assert!(matches!(load(&p), Err(UnetError::LimitExceeded { setting: "max_pickle_depth", .. })));
        let raised = PytorchLimits { max_pickle_depth: 200, ..Default::default() };
        let e = unet::read_state_dict_with_limits(&p, Weights::Model, &raised).unwrap_err();
        assert!(e.to_string().contains("no state dict"), "{e}");
    }

    #[test]
    fn memo_fan_out_and_huge_memo_indices_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        // x = (x, x) through the memo, 64 times: 2^64 copies in burn-store.
        let mut pkl = vec![0x80, 2, b']', b'q', 0];
        for _ in 0..64 {
            pkl.extend([b'h', 0, b'h', 0, 0x86, b'q', 0]);
        }
        pkl.push(b'.');
        let p = write(dir.path(), "fan-out.pth", &with_pickle(pkl));
        let t = std::time::Instant::now();
        assert!(matches!(load(&p), Err(UnetError::LimitExceeded { setting: "max_pickle_work", .. })));
        assert!(t.elapsed().as_secs() < 5);
        let pkl = vec![0x80, 2, b'}', b'r', 0xff, 0xff, 0xff, 0xff, b'.'];
        let p = write(dir.path(), "memo.pth", &with_pickle(pkl));
        let e = load(&p).unwrap_err();
        assert!(matches!(e, UnetError::LimitExceeded { value: 0xffff_ffff, .. }), "{e}");
        assert!(e.to_string().contains("memo index"), "{e}");
        // A string that says it is 4 GB long.
        let pkl = vec![0x80, 2, b'X', 0xff, 0xff, 0xff, 0xff, b'a', b'.'];
        let p = write(dir.path(), "string.pth", &with_pickle(pkl));
        let e = load(&p).unwrap_err();
        assert!(matches!(e, UnetError::NotACheckpoint { .. }) && e.to_string().contains("truncated"), "{e}");
    }

    #[test]
    fn zip_entries_that_declare_more_than_they_hold() {
        let dir = tempfile::tempdir().unwrap();
        // A deflated data.pkl whose headers say 4 GB: patch the size in both headers.
        let e = fixture_entries();
        let mut bytes = zip(&e, true);
        let name = e[0].0.as_bytes();
        for (sig, at) in [(&b"PK\x01\x02"[..], 24usize), (&b"PK\x03\x04"[..], 22)] {
            let name_at = if sig[2] == 1 { 46 } else { 30 };
            let pos = (0..bytes.len() - 64)
                .find(|&i| &bytes[i..i + 4] == sig && &bytes[i + name_at..i + name_at + name.len()] == name)
                .unwrap();
            bytes[pos + at..pos + at + 4].copy_from_slice(&0xffff_fff0u32.to_le_bytes());
        }
        let p = write(dir.path(), "bomb.pth", &bytes);
        let err = load(&p).unwrap_err();
        assert!(err.to_string().contains("declares 4294967280 bytes"), "{err}");
        // A truncated archive: its central directory is gone.
        let bytes = zip(&fixture_entries(), false);
        let p = write(dir.path(), "cut.pth", &bytes[..bytes.len() / 2]);
        assert!(matches!(load(&p), Err(UnetError::NotACheckpoint { .. })));
    }

    #[test]
    fn formats_other_than_the_zip_archive_are_refused_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let mut legacy = vec![0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e];
        legacy.extend(std::iter::repeat_n(0x85u8, 100_000));
        let p = write(dir.path(), "legacy.pt", &legacy);
        let e = load(&p).unwrap_err();
        assert!(e.to_string().contains("PyTorch < 1.6"), "{e}");
        let mut pickle = vec![0x80, 2, b'N'];
        pickle.extend(std::iter::repeat_n(0x85u8, 2_000_000));
        pickle.push(b'.');
        let p = write(dir.path(), "bare.pkl", &pickle);
        assert!(matches!(load(&p), Err(UnetError::NotACheckpoint { .. })));
        let mut tar = vec![0u8; 1024];
        tar[257..262].copy_from_slice(b"ustar");
        let p = write(dir.path(), "old.tar", &tar);
        assert!(load(&p).unwrap_err().to_string().contains("TAR"));
    }
}

mod metadata_configs {
    use super::*;

    /// The network is built from a file's config before its weights are read: a config larger
    /// than the file must be refused first, not allocated (`dim_mults` (9, 9) is 81 times the
    /// saved network; `dim` 4096 would be gigabytes).
    #[test]
    fn a_burnpack_config_larger_than_its_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = sources().burnpack.clone();
        let at = b.windows(17).position(|w| w == b"\"dim_mults\":[1,2]").expect("config JSON in the header");
        b[at..at + 17].copy_from_slice(b"\"dim_mults\":[9,9]");
        let p = write(dir.path(), "big.bpk", &b);
        let e = load(&p).unwrap_err();
        assert!(matches!(e, UnetError::WrongContents { .. }) && e.to_string().contains("can hold"), "{e}");
        assert!(infer_config(&p, Weights::Model).is_err());
        // An invalid config names the file too.
        let mut b = sources().burnpack.clone();
        let at = b.windows(8).position(|w| w == b"\"dim\":8,").unwrap();
        b[at..at + 8].copy_from_slice(b"\"dim\":0,");
        let p = write(dir.path(), "zero.bpk", &b);
        let e = load(&p).unwrap_err();
        assert!(e.to_string().contains("zero.bpk"), "{e}");
    }

    #[test]
    fn a_safetensors_config_larger_than_its_tensors_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let model = load(&fixture("unet_state_dict.pth")).unwrap();
        let big = serde_json::to_string(&UnetConfig::new(4096, vec![1, 2, 4, 8], 1)).unwrap();
        let meta = std::collections::HashMap::from([(unet::CONFIG_METADATA_KEY.to_string(), big)]);
        let p = dir.path().join("big.safetensors");
        crate::common::write_safetensors(&p, &model.torch_state_dict(), Some(meta));
        let t = std::time::Instant::now();
        let e = load(&p).unwrap_err();
        assert!(matches!(e, UnetError::MissingKeys { .. } | UnetError::ShapeMismatch { .. }), "{e}");
        assert!(t.elapsed().as_secs() < 5);
    }
}

// ---------------------------------------------------------------------------------------------
// Properties: random and mutated bytes into every reader.

struct Sources {
    pth: Vec<u8>,
    burnpack: Vec<u8>,
    safetensors: Vec<u8>,
}

fn sources() -> &'static Sources {
    static S: OnceLock<Sources> = OnceLock::new();
    S.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let model = UnetConfig::new(8, vec![1, 2], 1).init::<B>(&Default::default()).unwrap();
        let bpk = dir.path().join("m.bpk");
        model.save(&bpk).unwrap();
        let st = dir.path().join("m.safetensors");
        model.export_safetensors(&st).unwrap();
        Sources {
            pth: std::fs::read(fixture("unet_state_dict.pth")).unwrap(),
            burnpack: std::fs::read(bpk).unwrap(),
            safetensors: std::fs::read(st).unwrap(),
        }
    })
}

/// Every reader on one file: each returns a typed error or a result that holds together.
fn all_readers(bytes: &[u8]) {
    let dir = tempfile::tempdir().unwrap();
    let p = write(dir.path(), "case.bin", bytes);
    let named = |e: &UnetError| match e {
        UnetError::InvalidConfig { .. } | UnetError::BadInput { .. } => true,
        e => e.to_string().contains("case.bin"),
    };
    match load(&p) {
        Ok(m) => assert!(m.config().validate().is_ok()),
        Err(e) => assert!(named(&e), "error without the file name: {e}"),
    }
    match read_metadata(&p) {
        Ok(_) => {}
        Err(e) => assert!(named(&e), "error without the file name: {e}"),
    }
    match infer_config(&p, Weights::Model) {
        Ok(c) => assert!(c.validate().is_ok()),
        Err(e) => assert!(named(&e), "error without the file name: {e}"),
    }
}

/// A source with some bytes changed, cut short, or with bytes inserted.
fn mutated(src: &'static [u8]) -> impl Strategy<Value = Vec<u8>> {
    let n = src.len();
    prop_oneof![
        4 => proptest::collection::vec((0..n, any::<u8>()), 1..6).prop_map(move |edits| {
            let mut b = src.to_vec();
            for (i, v) in edits {
                b[i] = v;
            }
            b
        }),
        // Bytes near the start (headers, lengths, the pickle) are the interesting ones.
        4 => proptest::collection::vec((0..n.min(600), any::<u8>()), 1..4).prop_map(move |edits| {
            let mut b = src.to_vec();
            for (i, v) in edits {
                b[i] = v;
            }
            b
        }),
        1 => (0..n).prop_map(move |cut| src[..cut].to_vec()),
        1 => (0..n, proptest::collection::vec(any::<u8>(), 1..64)).prop_map(move |(at, ins)| {
            let mut b = src[..at].to_vec();
            b.extend(ins);
            b.extend(&src[at..]);
            b
        }),
    ]
}

/// Random bytes behind a format's first bytes, so that each reader, not the sniffer, sees them.
fn random_with_prefix() -> impl Strategy<Value = Vec<u8>> {
    let prefixes: Vec<Vec<u8>> = vec![
        vec![],
        b"NRUB".to_vec(),
        b"NRUB\x01\x00".to_vec(),
        vec![0x40, 0, 0, 0, 0, 0, 0, 0, b'{'],
        b"PK\x03\x04".to_vec(),
        vec![0x80, 2],
    ];
    (proptest::sample::select(prefixes), proptest::collection::vec(any::<u8>(), 0..512)).prop_map(|(mut p, rest)| {
        p.extend(rest);
        p
    })
}

/// The data.pkl of the fixture with a few bytes changed: burn-store's pickle machine and the
/// guard in front of it see every kind of malformed stream.
fn mutated_pickle() -> impl Strategy<Value = Vec<u8>> {
    static PKL: OnceLock<Vec<u8>> = OnceLock::new();
    let pkl: &'static [u8] = PKL.get_or_init(|| fixture_entries().remove(0).1);
    mutated(pkl).prop_map(with_pickle)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn mutated_pytorch_files(bytes in mutated(&sources().pth)) {
        all_readers(&bytes);
    }

    #[test]
    fn mutated_pytorch_pickles(bytes in mutated_pickle()) {
        all_readers(&bytes);
    }

    #[test]
    fn mutated_burnpack_files(bytes in mutated(&sources().burnpack)) {
        all_readers(&bytes);
    }

    #[test]
    fn mutated_safetensors_files(bytes in mutated(&sources().safetensors)) {
        all_readers(&bytes);
    }

    #[test]
    fn random_bytes(bytes in random_with_prefix()) {
        all_readers(&bytes);
    }
}
