//! The guard in front of burn-store's PyTorch reader.
//!
//! burn-store 0.21 (`burn_store::pytorch::PytorchReader`) trusts its input in ways a hostile or
//! damaged file exploits (docs/ARCHITECTURE.md, "burn-store's PyTorch reader"):
//! - its pickle machine builds `Object` trees by deep copy and drops, clones and prints them
//!   recursively, so 2,000,000 nested `TUPLE1` opcodes (a 2 MB file) overflow the stack, which
//!   `catch_unwind` cannot stop; `BINGET` of a memoised container copies it whole, so a small
//!   memo fan-out doubles the tree at every step (a hang, then an allocation abort);
//! - it allocates what a header declares (`BINUNICODE` lengths, a zip entry's uncompressed size)
//!   before reading it;
//! - a tensor whose storage is missing from the archive, shorter than the tensor, or fails its
//!   checksum loads as zeros, without a word.
//!
//! So before the reader sees a file, this module
//! 1. checks the zip archive: every entry's declared size against what its compressed bytes can
//!    hold, and reads `data.pkl`, `.format_version`, `byteorder` and `version` through a bound;
//! 2. runs `data.pkl` through a shadow of burn-store's pickle machine ([`scan`]): one linear,
//!    non-recursive pass over the opcodes that tracks, for every value, its nesting depth and
//!    what burn-store would allocate copying it, and refuses past [`PytorchLimits`] (opcodes,
//!    depth, copy work, memo indices) or at a length beyond the bytes left;
//! 3. records, for every tensor the reader will produce, its storage, offset, shape and element
//!    size under the same dotted key, so that after the read [`verify`] can check that the data
//!    of every tensor about to be used is in the archive with the declared length.
//!
//! Files that are not zip archives (the pre-1.6 legacy stream, torchvision's TAR, bare pickles)
//! are refused before the reader runs (`pytorch.rs`): burn-store reads their pickles with the
//! same machine and their storages from offsets the guard would have to re-derive, and none is
//! what denoising-diffusion-pytorch (PyTorch >= 2.0) writes.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;
use std::rc::Rc;

use burn_store::TensorSnapshot;
use zip8::ZipArchive;

use crate::error::UnetError;

/// Ceilings of the guard in front of the PyTorch reader, with defaults far above any
/// denoising-diffusion-pytorch checkpoint. Raise them with
/// [`read_state_dict_with_limits`](crate::read_state_dict_with_limits) for a trusted file that
/// exceeds one ([`UnetError::LimitExceeded`] names the field).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PytorchLimits {
    /// Largest `data.pkl` (the pickled structure, not the weights): 256 MiB.
    pub max_pickle_bytes: u64,
    /// Most pickle opcodes run: 32,000,000.
    pub max_pickle_ops: u64,
    /// Deepest nesting of values (containers, calls) and of open `MARK`s: 100. burn-store
    /// drops, clones and prints its values recursively, so depth is stack.
    pub max_pickle_depth: u32,
    /// Most bytes burn-store's pickle machine would allocate in all (it copies a value whole at
    /// every memo put and get, and several times per call): 1 GiB.
    pub max_pickle_work: u64,
    /// Largest uncompressed size of a compressed zip entry: 4 GiB (torch.save stores entries
    /// uncompressed, and those are bounded by the file itself).
    pub max_inflated_bytes: u64,
}

impl Default for PytorchLimits {
    fn default() -> Self {
        Self {
            max_pickle_bytes: 256 << 20,
            max_pickle_ops: 32_000_000,
            max_pickle_depth: 100,
            max_pickle_work: 1 << 30,
            max_inflated_bytes: 4 << 30,
        }
    }
}

fn not_pytorch(path: &Path, reason: impl ToString) -> UnetError {
    UnetError::NotACheckpoint {
        path: path.to_path_buf(),
        expected: "PyTorch (.pth/.pt)".into(),
        reason: reason.to_string(),
    }
}

fn limit(path: &Path, what: impl ToString, value: u64, limit: u64, setting: &'static str) -> UnetError {
    UnetError::LimitExceeded { path: path.to_path_buf(), what: what.to_string(), value, limit, setting }
}

/// What one tensor of the file needs from its storage, as burn-store will read it.
#[derive(Debug)]
struct TensorRec {
    /// The storage key (`'0'`, `'1'`, ...); `None` when burn-store would find the storage from a
    /// string persistent id (never written by PyTorch), which the guard does not follow.
    storage: Option<Rc<str>>,
    /// Bytes per element of the storage type.
    elem: usize,
    offset: i64,
    shape: Vec<i64>,
}

enum Slot {
    One(Rc<TensorRec>),
    /// Two tensors under one dotted key (`a.b` and `a` -> `b`): which one burn-store keeps
    /// depends on its hash order.
    Ambiguous,
}

/// The tensors of a zip checkpoint and its entry names, from [`guard_zip`].
pub(super) struct TorchIndex {
    tensors: HashMap<String, Slot>,
    /// Entry names in archive order (burn-store's search order for storages).
    names: Vec<String>,
}

/// Opens the file as a zip archive with the zip version burn-store uses; `None` when it is not
/// one (burn-store then tries its other formats, which are refused).
pub(super) fn open_zip(path: &Path) -> Result<Option<ZipArchive<BufReader<File>>>, UnetError> {
    let file = File::open(path).map_err(|e| super::io_err(path, e))?;
    Ok(ZipArchive::new(BufReader::new(file)).ok())
}

/// Steps 1 and 2: checks the archive and scans `data.pkl`. Returns the tensors burn-store will
/// find, for [`verify`].
pub(super) fn guard_zip(
    path: &Path,
    archive: &mut ZipArchive<BufReader<File>>,
    file_len: u64,
    limits: &PytorchLimits,
) -> Result<TorchIndex, UnetError> {
    let mut names = Vec::with_capacity(archive.len());
    for i in 0..archive.len() {
        let f = archive.by_index_raw(i).map_err(|e| not_pytorch(path, format!("a damaged zip archive ({e})")))?;
        let name = f.name().to_string();
        let (size, packed) = (f.size(), f.compressed_size());
        let start = f.data_start().unwrap_or(u64::MAX);
        if start.checked_add(packed).is_none_or(|end| end > file_len) {
            return Err(not_pytorch(
                path,
                format!("zip entry `{name}` declares {packed} bytes beyond the end of the file (truncated?)"),
            ));
        }
        if f.compression() == zip8::CompressionMethod::Stored {
            if size != packed {
                return Err(not_pytorch(
                    path,
                    format!("zip entry `{name}` is stored uncompressed but declares {size} bytes for {packed}"),
                ));
            }
        } else {
            // Deflate cannot expand more than 1032:1; other methods are held to the same.
            let most = packed.saturating_mul(1032).saturating_add(1024);
            if size > most {
                return Err(not_pytorch(
                    path,
                    format!("zip entry `{name}` declares {size} bytes from {packed} compressed bytes"),
                ));
            }
            if size > limits.max_inflated_bytes {
                return Err(limit(
                    path,
                    format!("the uncompressed size of zip entry `{name}`"),
                    size,
                    limits.max_inflated_bytes,
                    "max_inflated_bytes",
                ));
            }
        }
        names.push(name);
    }
    // The entries burn-store reads whole before any tensor: its metadata files and data.pkl,
    // which it takes from `data.pkl`, `archive/data.pkl`, else the first name ending in it.
    for meta in [".format_version", "byteorder", "version"] {
        if names.iter().any(|n| n == meta) {
            read_bounded(path, archive, meta, 1 << 20, "max_pickle_bytes")?;
        }
    }
    let pkl = ["data.pkl", "archive/data.pkl"]
        .iter()
        .find(|p| names.iter().any(|n| n == *p))
        .map(|p| p.to_string())
        .or_else(|| names.iter().find(|n| n.ends_with("data.pkl")).cloned())
        .ok_or_else(|| not_pytorch(path, "a zip archive without data.pkl, so not a PyTorch checkpoint"))?;
    let bytes = read_bounded(path, archive, &pkl, limits.max_pickle_bytes, "max_pickle_bytes")?;
    let root = scan(&bytes, limits).map_err(|e| match e {
        PErr::Bad(reason) => not_pytorch(path, format!("its {pkl} is not a readable state dict: {reason}")),
        PErr::Limit { what, value, limit: l, setting } => limit(path, format!("{what} in {pkl}"), value, l, setting),
    })?;
    let tensors = index_tensors(&root).map_err(|reason| not_pytorch(path, reason))?;
    Ok(TorchIndex { tensors, names })
}

/// Reads one entry whole, refusing past `most` bytes (a deflate stream can run past the size
/// its header declares), with its checksum checked.
fn read_bounded(
    path: &Path,
    archive: &mut ZipArchive<BufReader<File>>,
    name: &str,
    most: u64,
    setting: &'static str,
) -> Result<Vec<u8>, UnetError> {
    let f = archive.by_name(name).map_err(|e| not_pytorch(path, format!("zip entry `{name}`: {e}")))?;
    if f.size() > most {
        return Err(limit(path, format!("the size of zip entry `{name}`"), f.size(), most, setting));
    }
    let mut out = Vec::new();
    f.take(most + 1)
        .read_to_end(&mut out)
        .map_err(|e| not_pytorch(path, format!("zip entry `{name}` cannot be read (damaged?): {e}")))?;
    if out.len() as u64 > most {
        return Err(limit(path, format!("the size of zip entry `{name}`"), out.len() as u64, most, setting));
    }
    Ok(out)
}

/// Length of an entry's data as a reader gets it (checksum checked), refusing past `most`.
fn entry_len(archive: &mut ZipArchive<BufReader<File>>, name: &str, most: u64) -> Result<u64, String> {
    let f = archive.by_name(name).map_err(|e| e.to_string())?;
    let n = std::io::copy(&mut f.take(most + 1), &mut std::io::sink()).map_err(|e| e.to_string())?;
    if n > most {
        return Err(format!("it inflates past {most} bytes"));
    }
    Ok(n)
}

/// Step 3, after burn-store has read the file: every tensor in `selected` (the U-Net's, by the
/// file's full key `prefix + key`) must be one the guard saw, with the same shape and element
/// size, and its storage entry must exist, pass its checksum and hold
/// `(offset + numel) * element size` bytes. burn-store would read zeros otherwise.
pub(super) fn verify<'a>(
    path: &Path,
    index: &TorchIndex,
    archive: &mut ZipArchive<BufReader<File>>,
    prefix: &str,
    selected: impl Iterator<Item = (&'a String, &'a TensorSnapshot)>,
    limits: &PytorchLimits,
) -> Result<(), UnetError> {
    let mut lengths: HashMap<String, Result<u64, String>> = HashMap::new();
    for (key, snap) in selected {
        let full = format!("{prefix}{key}");
        let bad = |reason: String| UnetError::MissingTensorData { path: path.to_path_buf(), key: full.clone(), reason };
        let rec = match index.tensors.get(&full) {
            Some(Slot::One(r)) => r,
            Some(Slot::Ambiguous) => return Err(bad("is defined twice in the file under the same name".into())),
            None => return Err(bad("cannot be located through the archive's data.pkl".into())),
        };
        let shape: Vec<usize> = rec.shape.iter().map(|&d| d as usize).collect();
        if shape != snap.shape.to_vec() || rec.elem != snap.dtype.size() {
            return Err(bad("is described differently by the reader and by data.pkl".into()));
        }
        let Some(storage) = &rec.storage else {
            return Err(bad("refers to its storage by a string id, which PyTorch never writes".into()));
        };
        if rec.offset < 0 || rec.shape.iter().any(|&d| d < 0) {
            return Err(bad(format!(
                "declares a negative offset or size (offset {}, shape {:?})",
                rec.offset, rec.shape
            )));
        }
        let numel = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        let need = numel.and_then(|n| (rec.offset as usize).checked_add(n)).and_then(|n| n.checked_mul(rec.elem));
        let (Some(numel), Some(need)) = (numel, need) else {
            return Err(bad(format!(
                "declares more elements than can exist (offset {}, shape {:?})",
                rec.offset, rec.shape
            )));
        };
        if numel == 0 {
            return Err(bad(format!("declares no elements (shape {:?})", rec.shape)));
        }
        let Some(entry) = resolve_entry(&index.names, storage) else {
            return Err(bad(format!("is missing: storage `{storage}` is not in the archive (no data/{storage})")));
        };
        let most = limits.max_inflated_bytes.max(need as u64);
        let len = lengths.entry(entry.clone()).or_insert_with(|| entry_len(archive, &entry, most));
        match len {
            Err(e) => return Err(bad(format!("cannot be read from `{entry}` (damaged archive?): {e}"))),
            Ok(len) if *len < need as u64 => {
                return Err(bad(format!(
                    "is truncated: `{entry}` holds {len} bytes, the tensor needs {need} (offset {} + {numel} \
                     elements of {} bytes)",
                    rec.offset, rec.elem
                )))
            }
            Ok(_) => {}
        }
    }
    Ok(())
}

/// burn-store's search for a storage's entry: `data/KEY`, else the first data entry (archive
/// order) that ends in `/data/KEY` or lies under a `/data/` folder with the last segment `KEY`.
fn resolve_entry(names: &[String], key: &str) -> Option<String> {
    let exact = format!("data/{key}");
    if names.contains(&exact) {
        return Some(exact);
    }
    let suffix = format!("/data/{key}");
    names
        .iter()
        .filter(|n| (n.starts_with("data/") || n.contains("/data/")) && !n.ends_with(".pkl") && !n.ends_with('/'))
        .find(|n| n.ends_with(&suffix) || (n.contains("/data/") && n.rsplit('/').next() == Some(key)))
        .cloned()
}

// ---------------------------------------------------------------------------------------------
// The shadow pickle machine.

/// What a value costs burn-store per copy: one `Object` (with its box or vector slot).
const NODE: u64 = 64;

#[derive(Debug)]
pub(super) enum PErr {
    Bad(String),
    Limit { what: &'static str, value: u64, limit: u64, setting: &'static str },
}

impl From<String> for PErr {
    fn from(s: String) -> Self {
        PErr::Bad(s)
    }
}

impl From<&str> for PErr {
    fn from(s: &str) -> Self {
        PErr::Bad(s.to_string())
    }
}

type PResult<T> = Result<T, PErr>;

/// A value of burn-store's machine, reduced to what decides its cost and the tensors: `cost` is
/// the bytes one deep copy allocates, `depth` the levels its recursive drop and clone descend.
#[derive(Debug, Clone)]
struct Val {
    k: K,
    cost: u64,
    depth: u32,
}

#[derive(Debug, Clone)]
enum K {
    /// None, bools, floats, `BUILD` results: nothing the tensors depend on.
    Leaf,
    Int(i64),
    Str(Rc<str>),
    /// A `GLOBAL`; burn-store's MARK is the class `mark.mark`.
    Class(Rc<str>, Rc<str>),
    Tuple(Rc<Vec<Val>>),
    List(Rc<Vec<Val>>),
    Dict(Rc<HashMap<Rc<str>, Val>>),
    /// A persistent id given as a string.
    Persistent(Rc<str>),
    PersistentTuple(Rc<Vec<Val>>),
    /// `NEWOBJ` (burn-store's `Object::Reduce`).
    NewObj,
    Tensor(Rc<TensorRec>),
}

impl K {
    fn is_mark(&self) -> bool {
        matches!(self, K::Class(m, n) if &**m == "mark" && &**n == "mark")
    }
}

struct Machine<'a> {
    b: &'a [u8],
    pos: usize,
    stack: Vec<Val>,
    marks: u64,
    memo: HashMap<u32, Val>,
    work: u64,
    limits: &'a PytorchLimits,
}

impl<'a> Machine<'a> {
    fn take(&mut self, n: usize) -> PResult<&'a [u8]> {
        // Compared with what is left, never allocated first: BINUNICODE can say 4 GB.
        if n > self.b.len() - self.pos {
            return Err(format!("truncated: an item of {n} bytes, {} left", self.b.len() - self.pos).into());
        }
        let s = &self.b[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u8(&mut self) -> PResult<u8> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> PResult<u32> {
        let s = self.take(4)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }

    /// burn-store's `read_to_newline`: up to and including `\n` or to the end, then the last
    /// byte dropped (whatever it is) and a `\r` before it.
    fn line(&mut self) -> PResult<String> {
        let rest = &self.b[self.pos..];
        let n = rest.iter().position(|&c| c == b'\n').map_or(rest.len(), |i| i + 1);
        self.pos += n;
        let mut l = &rest[..n];
        if !l.is_empty() {
            l = &l[..l.len() - 1];
        }
        if l.last() == Some(&b'\r') {
            l = &l[..l.len() - 1];
        }
        String::from_utf8(l.to_vec()).map_err(|e| format!("invalid UTF-8: {e}").into())
    }

    fn charge(&mut self, bytes: u64) -> PResult<()> {
        self.work = self.work.saturating_add(bytes);
        if self.work > self.limits.max_pickle_work {
            return Err(PErr::Limit {
                what: "the bytes the reader would allocate",
                value: self.work,
                limit: self.limits.max_pickle_work,
                setting: "max_pickle_work",
            });
        }
        Ok(())
    }

    fn depth_ok(&self, depth: u32) -> PResult<()> {
        if depth > self.limits.max_pickle_depth {
            return Err(PErr::Limit {
                what: "the nesting depth of values",
                value: depth as u64,
                limit: self.limits.max_pickle_depth as u64,
                setting: "max_pickle_depth",
            });
        }
        Ok(())
    }

    fn push(&mut self, v: Val) -> PResult<()> {
        if v.k.is_mark() {
            self.marks += 1;
            if self.marks > self.limits.max_pickle_depth as u64 {
                return Err(PErr::Limit {
                    what: "the open MARKs",
                    value: self.marks,
                    limit: self.limits.max_pickle_depth as u64,
                    setting: "max_pickle_depth",
                });
            }
        }
        self.stack.push(v);
        Ok(())
    }

    fn pop(&mut self) -> PResult<Val> {
        let v = self.stack.pop().ok_or("stack underflow")?;
        if v.k.is_mark() {
            self.marks -= 1;
        }
        Ok(v)
    }

    fn pop_to_mark(&mut self) -> PResult<Vec<Val>> {
        let at = self.stack.iter().rposition(|v| v.k.is_mark()).ok_or("marker not found")?;
        self.charge((self.stack.len() - at) as u64)?;
        let items = self.stack.split_off(at + 1);
        self.pop()?;
        Ok(items)
    }

    fn leaf(&mut self, k: K, extra: u64) -> PResult<Val> {
        let cost = NODE + extra;
        self.charge(cost)?;
        Ok(Val { k, cost, depth: 1 })
    }

    /// A container of `items` (moved, not copied: one new node).
    fn node(&mut self, items: &[Val], make: impl FnOnce() -> K) -> PResult<Val> {
        let cost = items.iter().fold(NODE, |a, v| a.saturating_add(v.cost));
        let depth = 1 + items.iter().map(|v| v.depth).max().unwrap_or(0);
        self.depth_ok(depth)?;
        self.charge(NODE)?;
        Ok(Val { k: make(), cost, depth })
    }

    fn tuple(&mut self, items: Vec<Val>) -> PResult<Val> {
        let rc = Rc::new(items);
        self.node(&rc.clone(), || K::Tuple(rc))
    }

    fn dict(&mut self, items: HashMap<Rc<str>, Val>) -> PResult<Val> {
        let keys: u64 = items.keys().map(|k| k.len() as u64 + NODE).sum();
        let vals: Vec<Val> = items.values().cloned().collect();
        let mut v = self.node(&vals, || K::Dict(Rc::new(items)))?;
        v.cost = v.cost.saturating_add(keys);
        Ok(v)
    }

    /// Adds a child to the container on top of the stack, in place (APPEND, SETITEM).
    fn grow_top(&mut self, child_cost: u64, child_depth: u32) -> PResult<()> {
        let d = child_depth + 1;
        self.depth_ok(d)?;
        let top = self.stack.last_mut().ok_or("stack underflow")?;
        top.cost = top.cost.saturating_add(child_cost);
        top.depth = top.depth.max(d);
        Ok(())
    }

    fn push_leaf(&mut self, k: K, extra: u64) -> PResult<()> {
        let v = self.leaf(k, extra)?;
        self.push(v)
    }

    fn run(&mut self) -> PResult<Val> {
        let mut ops = 0u64;
        loop {
            ops += 1;
            if ops > self.limits.max_pickle_ops {
                return Err(PErr::Limit {
                    what: "the opcodes",
                    value: ops,
                    limit: self.limits.max_pickle_ops,
                    setting: "max_pickle_ops",
                });
            }
            let op = self.u8().map_err(|_| "the stream ends without STOP")?;
            match op {
                0x80 => {
                    let v = self.u8()?;
                    if v > 5 {
                        return Err(format!("pickle protocol {v}").into());
                    }
                }
                b'c' => {
                    let m = self.line()?;
                    let n = self.line()?;
                    let extra = (m.len() + n.len()) as u64;
                    self.push_leaf(K::Class(m.as_str().into(), n.as_str().into()), extra)?;
                }
                b'J' => {
                    let s = self.take(4)?;
                    let i = i32::from_le_bytes([s[0], s[1], s[2], s[3]]) as i64;
                    self.push_leaf(K::Int(i), 0)?;
                }
                b'I' => {
                    let l = self.line()?;
                    let i: i64 = l.parse().map_err(|e| format!("invalid INT value '{l}': {e}"))?;
                    self.push_leaf(K::Int(i), 0)?;
                }
                b'K' => {
                    let i = self.u8()? as i64;
                    self.push_leaf(K::Int(i), 0)?;
                }
                b'M' => {
                    let s = self.take(2)?;
                    self.push_leaf(K::Int(u16::from_le_bytes([s[0], s[1]]) as i64), 0)?;
                }
                b'G' => {
                    self.take(8)?;
                    self.push_leaf(K::Leaf, 0)?;
                }
                b'X' | b'U' => {
                    let n = if op == b'X' { self.u32()? as usize } else { self.u8()? as usize };
                    let s = self.take(n)?;
                    let s = std::str::from_utf8(s).map_err(|e| format!("invalid UTF-8: {e}"))?;
                    self.push_leaf(K::Str(s.into()), n as u64)?;
                }
                0x8a => {
                    // LONG1, as burn-store computes it (wrapping, sign-extended below 8 bytes)
                    let n = self.u8()? as usize;
                    let data = self.take(n)?;
                    let mut value = 0i64;
                    for (i, &byte) in data.iter().enumerate().take(8) {
                        value |= (byte as i64).wrapping_shl((i as u32) * 8);
                    }
                    if n < 8 && data.last().is_some_and(|&b| b & 0x80 != 0) {
                        for i in n..8 {
                            value |= 0xffi64.wrapping_shl((i as u32) * 8);
                        }
                    }
                    self.push_leaf(K::Int(value), n as u64)?;
                }
                b'N' | 0x88 | 0x89 => self.push_leaf(K::Leaf, 0)?,
                b')' => {
                    let v = self.tuple(Vec::new())?;
                    self.push(v)?;
                }
                b']' => {
                    let v = self.node(&[], || K::List(Rc::new(Vec::new())))?;
                    self.push(v)?;
                }
                b'}' => {
                    let v = self.dict(HashMap::new())?;
                    self.push(v)?;
                }
                b't' => {
                    let items = self.pop_to_mark()?;
                    let v = self.tuple(items)?;
                    self.push(v)?;
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    let v = self.tuple(items)?;
                    self.push(v)?;
                }
                b'l' => {
                    let items = self.pop_to_mark()?;
                    let rc = Rc::new(items);
                    let v = self.node(&rc.clone(), || K::List(rc))?;
                    self.push(v)?;
                }
                b'a' | b'e' => {
                    let items = if op == b'a' { vec![self.pop()?] } else { self.pop_to_mark()? };
                    let Some(Val { k: K::List(_), .. }) = self.stack.last() else {
                        return Err("APPEND to something that is not a list".into());
                    };
                    for v in &items {
                        self.grow_top(v.cost, v.depth)?;
                    }
                    if let Some(Val { k: K::List(l), .. }) = self.stack.last_mut() {
                        Rc::make_mut(l).extend(items);
                    }
                }
                b's' | b'u' => {
                    let pairs: Vec<(Rc<str>, Val)> = if op == b's' {
                        let v = self.pop()?;
                        let k = self.pop()?;
                        let Some(Val { k: K::Dict(_), .. }) = self.stack.last() else {
                            return Err("SETITEM on something that is not a dict".into());
                        };
                        let K::Str(k) = k.k else { return Err("dict key must be a string".into()) };
                        vec![(k, v)]
                    } else {
                        let items = self.pop_to_mark()?;
                        if items.len() % 2 != 0 {
                            return Err("setitems requires even number of objects".into());
                        }
                        let Some(Val { k: K::Dict(_), .. }) = self.stack.last() else {
                            return Err("SETITEMS on something that is not a dict".into());
                        };
                        // burn-store takes each pair with `Vec::remove(0)`: quadratic.
                        let n = items.len() as u64;
                        self.charge(n.saturating_mul(n) / 2)?;
                        let mut pairs = Vec::with_capacity(items.len() / 2);
                        let mut it = items.into_iter();
                        while let (Some(k), Some(v)) = (it.next(), it.next()) {
                            pairs.push((dict_key(k)?, v));
                        }
                        pairs
                    };
                    for (k, v) in &pairs {
                        self.grow_top(v.cost.saturating_add(k.len() as u64 + NODE), v.depth)?;
                    }
                    if let Some(Val { k: K::Dict(d), .. }) = self.stack.last_mut() {
                        let d = Rc::make_mut(d);
                        for (k, v) in pairs {
                            d.insert(k, v);
                        }
                    }
                }
                b'd' => {
                    let items = self.pop_to_mark()?;
                    if items.len() % 2 != 0 {
                        return Err("dict requires even number of objects".into());
                    }
                    // each pair is copied out of its chunk
                    let copied = items.iter().fold(0u64, |a, v| a.saturating_add(v.cost));
                    self.charge(copied)?;
                    let mut d = HashMap::new();
                    let mut it = items.into_iter();
                    while let (Some(k), Some(v)) = (it.next(), it.next()) {
                        d.insert(dict_key(k)?, v);
                    }
                    let v = self.dict(d)?;
                    self.push(v)?;
                }
                b'q' | b'r' | 0x94 => {
                    let idx = match op {
                        b'q' => self.u8()? as u32,
                        b'r' => self.u32()?,
                        _ => self.memo.len() as u32,
                    };
                    // A memo slot is written by an opcode of its own: a valid index is below
                    // the stream's length (LONG_BINPUT 0xFFFFFFFF asks for the impossible).
                    if idx as u64 >= self.b.len() as u64 {
                        return Err(PErr::Limit {
                            what: "a memo index (bounded by the stream's length)",
                            value: idx as u64,
                            limit: self.b.len() as u64,
                            setting: "max_pickle_bytes",
                        });
                    }
                    let top = self.stack.last().ok_or("stack underflow")?.clone();
                    self.charge(top.cost)?;
                    self.memo.insert(idx, top);
                }
                b'h' | b'j' => {
                    let idx = if op == b'h' { self.u8()? as u32 } else { self.u32()? };
                    let v = self.memo.get(&idx).cloned().ok_or_else(|| format!("memo slot {idx} not found"))?;
                    self.charge(v.cost)?;
                    self.push(v)?;
                }
                b'(' => self.push_leaf(K::Class("mark".into(), "mark".into()), 8)?,
                b'Q' => {
                    let pid = self.pop()?;
                    let v = match pid.k {
                        K::Str(s) => Val { k: K::Persistent(s), ..pid },
                        K::Tuple(t) => Val { k: K::PersistentTuple(t), ..pid },
                        _ => return Err("persistent id must be a string or tuple".into()),
                    };
                    self.push(v)?;
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let v = self.reduce(callable, args)?;
                    self.push(v)?;
                }
                b'b' => {
                    let args = self.pop()?;
                    let obj = self.pop()?;
                    let v = match (&obj.k, &args.k) {
                        (K::Dict(d), K::Dict(update)) => {
                            let mut d = d.clone();
                            let merged = Rc::make_mut(&mut d);
                            for (k, v) in update.iter() {
                                merged.insert(k.clone(), v.clone());
                            }
                            let depth = obj.depth.max(args.depth);
                            Val { k: K::Dict(d), cost: obj.cost.saturating_add(args.cost), depth }
                        }
                        (K::Dict(_), _) => obj,
                        _ => self.node(&[obj, args], || K::Leaf)?,
                    };
                    self.push(v)?;
                }
                0x81 => {
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    let v = self.node(&[cls, args], || K::NewObj)?;
                    self.push(v)?;
                }
                b'.' => return self.pop(),
                other => return Err(format!("unsupported pickle opcode 0x{other:02x}").into()),
            }
        }
    }

    /// REDUCE as burn-store runs it: `OrderedDict(items)`, else its `rebuild_from_type_v2`.
    fn reduce(&mut self, callable: Val, args: Val) -> PResult<Val> {
        if let K::Class(m, n) = &callable.k {
            if &**m == "collections" && &**n == "OrderedDict" {
                let items = match &args.k {
                    K::Tuple(t) => match t.first().map(|v| &v.k) {
                        Some(K::List(l)) => Some(l.clone()),
                        _ => None,
                    },
                    K::List(l) => Some(l.clone()),
                    _ => None,
                };
                self.charge(args.cost.saturating_mul(2))?;
                let mut d = HashMap::new();
                for item in items.iter().flat_map(|l| l.iter()) {
                    if let K::List(pair) | K::Tuple(pair) = &item.k {
                        if pair.len() >= 2 {
                            if let K::Str(key) = &pair[0].k {
                                d.insert(key.clone(), pair[1].clone());
                            }
                        }
                    }
                }
                return self.dict(d);
            }
        }
        // burn-store copies the call twice before it looks at it (an `Object::Reduce` it
        // drops, then the tuple it passes on).
        self.charge(callable.cost.saturating_add(args.cost).saturating_mul(2))?;
        let mut o = self.tuple(vec![callable, args])?;
        // `_rebuild_from_type_v2` calls itself on its arguments: once per round here, once per
        // stack frame there.
        for _round in 0..self.limits.max_pickle_depth {
            let args = match &o.k {
                K::Tuple(t) if !t.is_empty() => t.clone(),
                K::Tuple(_) => return Err("rebuild_from_type_v2: empty args".into()),
                _ => return Err("rebuild_from_type_v2: expected a tuple".into()),
            };
            let (m, n) = match &args[0].k {
                K::Class(m, n) => (m.clone(), n.clone()),
                _ => return Err("rebuild_from_type_v2: expected a class".into()),
            };
            let actual = if args.len() == 2 && matches!(args[1].k, K::Tuple(_)) {
                self.charge(args[1].cost)?;
                args[1].clone()
            } else {
                let rest = args[1..].to_vec();
                self.charge(rest.iter().fold(0u64, |a, v| a.saturating_add(v.cost)))?;
                self.tuple(rest)?
            };
            match (&*m, &*n) {
                ("torch._utils", "_rebuild_tensor_v2") => return self.rebuild_tensor(actual, 5),
                ("torch._utils", "_rebuild_tensor") => return self.rebuild_tensor(actual, 4),
                ("torch._tensor", "_rebuild_from_type_v2") => o = actual,
                ("torch._utils", "_rebuild_parameter") => {
                    let K::Tuple(t) = &actual.k else { return Err("rebuild_parameter: expected a tuple".into()) };
                    let data = t.first().ok_or("rebuild_parameter: empty args")?.clone();
                    if matches!(data.k, K::NewObj) {
                        return Err("rebuild_from_type_v2: expected a tuple".into());
                    }
                    self.charge(data.cost)?;
                    return Ok(data);
                }
                ("collections", "OrderedDict") => return self.dict(HashMap::new()),
                _ => return Err(format!("unsupported type {m}.{n}").into()),
            }
        }
        Err(PErr::Limit {
            what: "the nested _rebuild_from_type_v2 calls",
            value: self.limits.max_pickle_depth as u64 + 1,
            limit: self.limits.max_pickle_depth as u64,
            setting: "max_pickle_depth",
        })
    }

    fn rebuild_tensor(&mut self, args: Val, min_args: usize) -> PResult<Val> {
        let K::Tuple(args) = &args.k else { return Err("rebuild_tensor: expected a tuple".into()) };
        if args.len() < min_args {
            return Err(format!("rebuild_tensor: expected at least {min_args} args, got {}", args.len()).into());
        }
        let (storage, elem) = match &args[0].k {
            K::PersistentTuple(t) | K::Tuple(t) => {
                if t.len() < 3 {
                    return Err("storage tuple too short".into());
                }
                let ty = match &t[1].k {
                    K::Str(s) => s.clone(),
                    K::Class(_, n) => n.clone(),
                    _ => return Err("expected storage type as string or class".into()),
                };
                let elem = storage_elem_size(&ty).ok_or_else(|| format!("unknown storage type: {ty}"))?;
                let K::Str(key) = &t[2].k else { return Err("expected storage key as string".into()) };
                (Some(key.clone()), elem)
            }
            // burn-store parses a debug string here; PyTorch never writes one.
            K::Persistent(s) if s.starts_with("Tuple(") => (None, 1),
            K::Persistent(_) => return Err("invalid storage info format".into()),
            _ => return Err("rebuild_tensor: expected a persistent id".into()),
        };
        let offset = match args[1].k {
            K::Int(i) => i,
            _ => 0,
        };
        let K::Tuple(dims) = &args[2].k else { return Err("rebuild_tensor: expected a shape tuple".into()) };
        let shape = dims
            .iter()
            .map(|d| match d.k {
                K::Int(i) => Ok(i),
                _ => Err(PErr::from("shape must contain ints")),
            })
            .collect::<PResult<Vec<i64>>>()?;
        let v = self.leaf(K::Leaf, 8 * shape.len() as u64 + 64)?;
        Ok(Val { k: K::Tensor(Rc::new(TensorRec { storage, elem, offset, shape })), ..v })
    }
}

fn dict_key(k: Val) -> PResult<Rc<str>> {
    match k.k {
        K::Str(s) => Ok(s),
        K::Int(i) => Ok(i.to_string().into()),
        _ => Err("dict key must be a string or int".into()),
    }
}

fn storage_elem_size(ty: &str) -> Option<usize> {
    Some(match ty {
        "FloatStorage" | "IntStorage" => 4,
        "DoubleStorage" | "LongStorage" => 8,
        "HalfStorage" | "BFloat16Storage" | "ShortStorage" => 2,
        "CharStorage" | "ByteStorage" | "BoolStorage" => 1,
        _ => return None,
    })
}

/// Runs a pickle stream through the shadow machine; returns the value it leaves.
fn scan(b: &[u8], limits: &PytorchLimits) -> PResult<Val> {
    let mut m = Machine { b, pos: 0, stack: Vec::new(), marks: 0, memo: HashMap::new(), work: 0, limits };
    m.run()
}

/// The tensors under their dotted keys, as burn-store's `extract_tensors_recursive` finds them
/// (through dicts only, from a dict at the root).
fn index_tensors(root: &Val) -> Result<HashMap<String, Slot>, String> {
    if !matches!(root.k, K::Dict(_)) {
        return Err("its data.pkl does not hold a dict at its root, so it is no state dict".into());
    }
    let mut out: HashMap<String, Slot> = HashMap::new();
    // (dotted path, value); the root has no path.
    let mut work: Vec<(Option<String>, &Val)> = vec![(None, root)];
    while let Some((path, v)) = work.pop() {
        match &v.k {
            K::Dict(d) => {
                for (k, child) in d.iter() {
                    let p = match &path {
                        None => k.to_string(),
                        Some(p) => format!("{p}.{k}"),
                    };
                    work.push((Some(p), child));
                }
            }
            K::Tensor(t) => {
                let slot = out.entry(path.unwrap_or_default()).or_insert_with(|| Slot::One(t.clone()));
                if let Slot::One(prev) = slot {
                    if !Rc::ptr_eq(prev, t) {
                        *slot = Slot::Ambiguous;
                    }
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> PytorchLimits {
        PytorchLimits::default()
    }

    fn refused_by(b: &[u8], l: &PytorchLimits) -> &'static str {
        match scan(b, l) {
            Err(PErr::Limit { setting, .. }) => setting,
            other => panic!("expected a limit, got {other:?}"),
        }
    }

    #[test]
    fn deep_nesting_is_refused_without_recursion() {
        let mut b = vec![0x80, 2, b'N'];
        b.extend(std::iter::repeat_n(0x85u8, 2_000_000));
        b.push(b'.');
        assert_eq!(refused_by(&b, &limits()), "max_pickle_depth");
        let mut b = vec![0x80, 2, b']'];
        for _ in 0..2_000_000 {
            b.extend([b']', b'a']);
        }
        b.push(b'.');
        assert!(scan(&b, &limits()).is_ok(), "a long flat list is fine");
        let mut b = vec![0x80, 2];
        b.extend(std::iter::repeat_n(b']', 1000));
        b.extend(std::iter::repeat_n(b'a', 999));
        b.push(b'.');
        assert_eq!(refused_by(&b, &limits()), "max_pickle_depth");
        let mut b = vec![0x80, 2];
        b.extend(std::iter::repeat_n(b'(', 1000));
        assert_eq!(refused_by(&b, &limits()), "max_pickle_depth");
    }

    #[test]
    fn memo_fan_out_is_refused_by_the_work_it_would_cost() {
        // x = (x, x) through the memo, 60 times: 2^60 copies in burn-store.
        let mut b = vec![0x80, 2, b']', b'q', 0];
        for _ in 0..60 {
            b.extend([b'h', 0, b'h', 0, 0x86, b'q', 0]);
        }
        b.push(b'.');
        assert_eq!(refused_by(&b, &limits()), "max_pickle_work");
    }

    #[test]
    fn lying_lengths_and_memo_indices() {
        let b = [0x80, 2, b'X', 0xff, 0xff, 0xff, 0xff, b'a', b'.'];
        assert!(matches!(scan(&b, &limits()), Err(PErr::Bad(_))));
        let b = [0x80, 2, b'N', b'r', 0xff, 0xff, 0xff, 0xff, b'.'];
        assert_eq!(refused_by(&b, &limits()), "max_pickle_bytes");
        let b = [0x80, 2, b'h', 3, b'.'];
        assert!(matches!(scan(&b, &limits()), Err(PErr::Bad(_))));
        // SETITEMS with 6,000 items: burn-store's remove(0) loop is quadratic.
        let mut b = vec![0x80, 2, b'}', b'('];
        for i in 0..3000u32 {
            b.push(b'J');
            b.extend(i.to_le_bytes());
            b.push(b'N');
        }
        b.extend([b'u', b'.']);
        let small = PytorchLimits { max_pickle_work: 10_000_000, ..limits() };
        assert_eq!(refused_by(&b, &small), "max_pickle_work");
        assert!(scan(&b, &limits()).is_ok());
    }

    #[test]
    fn opcode_count_is_bounded() {
        let mut b = vec![0x80, 2, b'}'];
        b.extend(std::iter::repeat_n(b'N', 1000));
        let small = PytorchLimits { max_pickle_ops: 100, ..limits() };
        assert_eq!(refused_by(&b, &small), "max_pickle_ops");
    }

    #[test]
    fn real_checkpoints_are_far_below_the_limits() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        for name in ["unet_state_dict.pth", "diffusion_state_dict.pth", "trainer_checkpoint.pt"] {
            let f = File::open(dir.join(name)).unwrap();
            let mut z = ZipArchive::new(BufReader::new(f)).unwrap();
            let pkl = (0..z.len()).find(|&i| z.by_index(i).unwrap().name().ends_with("data.pkl")).unwrap();
            let mut bytes = Vec::new();
            z.by_index(pkl).unwrap().read_to_end(&mut bytes).unwrap();
            let l = limits();
            let mut m =
                Machine { b: &bytes, pos: 0, stack: Vec::new(), marks: 0, memo: HashMap::new(), work: 0, limits: &l };
            let root = m.run().unwrap();
            // The Trainer checkpoint (U-Net, EMA copies, AdamW state): 126 KB of pickle, about
            // 8 MB of copies by burn-store, depth 6.
            assert!(
                m.work < l.max_pickle_work / 50 && root.depth < 10,
                "{name}: work {}, depth {}",
                m.work,
                root.depth
            );
            assert!(!index_tensors(&root).unwrap().is_empty());
        }
    }

    #[test]
    fn rebuild_recursion_is_bounded() {
        // REDUCE of _rebuild_from_type_v2 on a tuple of 1,000 more of them: burn-store recurses
        // once per element.
        let mut b = vec![0x80, 2];
        let g = b"ctorch._tensor\n_rebuild_from_type_v2\n";
        b.extend(g);
        b.push(b'(');
        for _ in 0..1000 {
            b.extend(g);
        }
        b.extend([b't', b'R', b'.']);
        assert_eq!(refused_by(&b, &limits()), "max_pickle_depth");
    }
}
