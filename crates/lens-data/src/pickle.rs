//! Safe unpacking of numpy *object* arrays (`np.save(..., allow_pickle=True)` of e.g.
//! `[image, extra]`), without executing anything.
//!
//! The pickle stream is read by a tiny stack machine that only *records* calls (`REDUCE`,
//! `BUILD`) as data; nothing is imported or run. The recorded tree is then matched against the
//! exact shape numpy produces for arrays (`numpy.core.multiarray._reconstruct` + `BUILD` with
//! `(version, shape, dtype, is_fortran, raw bytes)`), and any callable other than numpy's array
//! and dtype reconstructors makes the file unreadable (typed error). Numeric arrays of 2 to 4
//! dimensions found among the object array's elements are returned as the file's images.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;
use std::rc::Rc;

use ndarray::{ArrayD, IxDyn, ShapeBuilder};

use crate::error::{LensDataError, Result};
use crate::limits::{exceeded, Limits};
use crate::npy::{decode_elements, dtype_info};

/// Why the stream was not unpacked: malformed / not numpy data, or a [`Limits`] ceiling.
#[derive(Debug)]
enum PErr {
    Bad(String),
    Limit { what: &'static str, value: u64, limit: u64, field: &'static str },
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

type PResult<T> = std::result::Result<T, PErr>;

#[derive(Debug, Clone)]
enum V {
    Mark,
    None,
    Bool(bool),
    Int(i64),
    #[allow(dead_code)] // kept for completeness of the value model (numpy scalars, dict extras)
    Float(f64),
    Str(Rc<str>),
    Bytes(Rc<[u8]>),
    Tuple(Rc<Vec<V>>),
    List(Rc<RefCell<Vec<V>>>),
    Dict(Rc<RefCell<Vec<(V, V)>>>),
    Global(Rc<str>, Rc<str>),
    Obj(Rc<RefCell<Obj>>),
}

#[derive(Debug)]
struct Obj {
    func: (Rc<str>, Rc<str>),
    args: V,
    state: Option<V>,
}

impl Drop for V {
    /// Iterative: the compiler's recursive drop overflows the stack on deep nesting (2,000,000
    /// `TUPLE1` opcodes are a 2 MB file). Children of containers this value owns alone move to a
    /// work list, so each drop below sees at most one level. (Shared children are dropped by
    /// their last owner the same way; cycles built through the memo leak, bounded by
    /// `Limits::max_pickle_values`.)
    fn drop(&mut self) {
        let mut work = Vec::new();
        detach_children(self, &mut work);
        while let Some(mut v) = work.pop() {
            detach_children(&mut v, &mut work);
        }
    }
}

fn detach_children(v: &mut V, work: &mut Vec<V>) {
    match v {
        V::Tuple(t) => {
            if let Some(items) = Rc::get_mut(t) {
                work.append(items);
            }
        }
        V::List(l) => {
            if let Some(items) = Rc::get_mut(l) {
                work.append(items.get_mut());
            }
        }
        V::Dict(d) => {
            if let Some(items) = Rc::get_mut(d) {
                for (k, v) in items.get_mut().drain(..) {
                    work.push(k);
                    work.push(v);
                }
            }
        }
        V::Obj(o) => {
            if let Some(o) = Rc::get_mut(o) {
                let o = o.get_mut();
                work.push(std::mem::replace(&mut o.args, V::None));
                work.extend(o.state.take());
            }
        }
        _ => {}
    }
}

const ALLOWED: [(&str, &str); 7] = [
    ("_codecs", "encode"), // protocol-2 pickles spell bytes as _codecs.encode(text, "latin1")
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
];

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        // `n` comes from the file (BINBYTES8 can say 2^64 - 1): compare with what is left
        // instead of computing `pos + n`, which could wrap.
        if n > self.b.len() - self.pos {
            return Err(format!("pickle stream truncated: an item of {n} bytes, {} left", self.b.len() - self.pos));
        }
        let s = &self.b[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self) -> std::result::Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn uint(&mut self, n: usize) -> std::result::Result<usize, String> {
        let s = self.take(n)?;
        let mut v: u64 = 0;
        for (i, &x) in s.iter().enumerate() {
            v |= (x as u64) << (8 * i);
        }
        usize::try_from(v).map_err(|_| "length overflows".to_string())
    }
    fn line(&mut self) -> std::result::Result<&'a str, String> {
        let rest = &self.b[self.pos..];
        let end = rest.iter().position(|&c| c == b'\n').ok_or("unterminated GLOBAL")?;
        self.pos += end + 1;
        std::str::from_utf8(&rest[..end]).map_err(|_| "GLOBAL name is not text".to_string())
    }
}

fn pop(stack: &mut Vec<V>) -> std::result::Result<V, String> {
    stack.pop().ok_or_else(|| "pickle stack underflow".to_string())
}

fn pop_mark(stack: &mut Vec<V>) -> std::result::Result<Vec<V>, String> {
    let at = stack.iter().rposition(|v| matches!(v, V::Mark)).ok_or("pickle MARK missing")?;
    let items = stack.split_off(at + 1);
    stack.pop();
    Ok(items)
}

/// Runs the pickle stream as data; returns the top-level value.
fn load(b: &[u8], limits: &Limits) -> PResult<V> {
    let mut r = Reader { b, pos: 0 };
    let mut stack: Vec<V> = Vec::new();
    // A map, not a table indexed by slot: `LONG_BINPUT 0xFFFFFFFF` must cost one entry.
    let mut memo: HashMap<usize, V> = HashMap::new();
    let put = |memo: &mut HashMap<usize, V>, i: usize, v: V| -> PResult<()> {
        memo.insert(i, v);
        if memo.len() as u64 > limits.max_pickle_memo {
            return Err(PErr::Limit {
                what: "pickle memo entries",
                value: memo.len() as u64,
                limit: limits.max_pickle_memo,
                field: "max_pickle_memo",
            });
        }
        Ok(())
    };
    let mut ops = 0u64;
    loop {
        let op = r.u8()?;
        // each opcode makes at most one value: counting opcodes bounds memory and time
        ops += 1;
        if ops > limits.max_pickle_values {
            return Err(PErr::Limit {
                what: "pickle values (opcodes run)",
                value: ops,
                limit: limits.max_pickle_values,
                field: "max_pickle_values",
            });
        }
        match op {
            0x80 => {
                r.u8()?;
            } // PROTO
            0x95 => {
                r.take(8)?;
            } // FRAME
            b'.' => return Ok(pop(&mut stack)?),
            b'(' => stack.push(V::Mark),
            b'N' => stack.push(V::None),
            0x88 => stack.push(V::Bool(true)),
            0x89 => stack.push(V::Bool(false)),
            b'K' => stack.push(V::Int(r.u8()? as i64)),
            b'M' => stack.push(V::Int(r.uint(2)? as i64)),
            b'J' => {
                let s = r.take(4)?;
                stack.push(V::Int(i32::from_le_bytes([s[0], s[1], s[2], s[3]]) as i64))
            }
            0x8a => {
                let n = r.u8()? as usize;
                let s = r.take(n)?;
                if n > 8 {
                    return Err("integer too large".into());
                }
                let mut v: i64 = 0;
                for (i, &x) in s.iter().enumerate() {
                    v |= (x as i64) << (8 * i);
                }
                if n > 0 && n < 8 && s[n - 1] & 0x80 != 0 {
                    v -= 1i64 << (8 * n);
                }
                stack.push(V::Int(v))
            }
            b'G' => {
                let s = r.take(8)?;
                stack.push(V::Float(f64::from_be_bytes(s.try_into().expect("8 bytes"))))
            }
            0x8c | b'X' | 0x8d => {
                let n = match op {
                    0x8c => r.u8()? as usize,
                    b'X' => r.uint(4)?,
                    _ => r.uint(8)?,
                };
                let s = std::str::from_utf8(r.take(n)?).map_err(|_| "bad unicode string")?;
                stack.push(V::Str(s.into()))
            }
            b'C' | b'B' | 0x8e | b'U' | b'T' => {
                let n = match op {
                    b'C' | b'U' => r.u8()? as usize,
                    b'B' | b'T' => r.uint(4)?,
                    _ => r.uint(8)?,
                };
                let s = r.take(n)?;
                if matches!(op, b'U' | b'T') {
                    // Python 2 str: latin-1 text (numpy uses it for dtype codes / raw data)
                    match std::str::from_utf8(s) {
                        Ok(t) if t.len() <= 16 => stack.push(V::Str(t.into())),
                        _ => stack.push(V::Bytes(s.into())),
                    }
                } else {
                    stack.push(V::Bytes(s.into()))
                }
            }
            0x94 => {
                let top = stack.last().ok_or("MEMOIZE on empty stack")?.clone();
                let i = memo.len();
                put(&mut memo, i, top)?;
            }
            b'q' | b'r' => {
                let i = if op == b'q' { r.u8()? as usize } else { r.uint(4)? };
                let top = stack.last().ok_or("BINPUT on empty stack")?.clone();
                put(&mut memo, i, top)?;
            }
            b'h' | b'j' => {
                let i = if op == b'h' { r.u8()? as usize } else { r.uint(4)? };
                let v = memo.get(&i).cloned().ok_or("BINGET of unknown memo slot")?;
                stack.push(v)
            }
            0x93 | b'c' => {
                let (m, n): (Rc<str>, Rc<str>) = if op == b'c' {
                    (r.line()?.into(), r.line()?.into())
                } else {
                    let n = pop(&mut stack)?;
                    let m = pop(&mut stack)?;
                    match (&m, &n) {
                        (V::Str(m), V::Str(n)) => (m.clone(), n.clone()),
                        _ => return Err("STACK_GLOBAL needs two strings".into()),
                    }
                };
                if !ALLOWED.iter().any(|(am, an)| **am == *m && **an == *n) {
                    return Err(format!("it references {m}.{n}, which is not a numpy array").into());
                }
                stack.push(V::Global(m, n))
            }
            b')' => stack.push(V::Tuple(Rc::new(Vec::new()))),
            0x85..=0x87 => {
                let k = (op - 0x84) as usize;
                if stack.len() < k {
                    return Err("pickle stack underflow".into());
                }
                let items = stack.split_off(stack.len() - k);
                stack.push(V::Tuple(Rc::new(items)))
            }
            b't' => {
                let items = pop_mark(&mut stack)?;
                stack.push(V::Tuple(Rc::new(items)))
            }
            b']' => stack.push(V::List(Rc::new(RefCell::new(Vec::new())))),
            b'l' => {
                let items = pop_mark(&mut stack)?;
                stack.push(V::List(Rc::new(RefCell::new(items))))
            }
            b'a' | b'e' => {
                let items = if op == b'a' { vec![pop(&mut stack)?] } else { pop_mark(&mut stack)? };
                match stack.last() {
                    Some(V::List(l)) => l.borrow_mut().extend(items),
                    _ => return Err("APPEND target is not a list".into()),
                }
            }
            b'}' => stack.push(V::Dict(Rc::new(RefCell::new(Vec::new())))),
            b's' | b'u' => {
                let items = if op == b's' {
                    let v = pop(&mut stack)?;
                    let k = pop(&mut stack)?;
                    vec![k, v]
                } else {
                    pop_mark(&mut stack)?
                };
                match stack.last() {
                    Some(V::Dict(d)) => {
                        let mut it = items.into_iter();
                        while let (Some(k), Some(v)) = (it.next(), it.next()) {
                            d.borrow_mut().push((k, v));
                        }
                    }
                    _ => return Err("SETITEM target is not a dict".into()),
                }
            }
            b'R' => {
                let args = pop(&mut stack)?;
                let func = match &pop(&mut stack)? {
                    V::Global(m, n) => (m.clone(), n.clone()),
                    _ => return Err("REDUCE of a non-global".into()),
                };
                if &*func.0 == "_codecs" {
                    // _codecs.encode(text, "latin1"): each char is one byte
                    let bytes = match &args {
                        V::Tuple(t) => match (t.first(), t.get(1)) {
                            (Some(V::Str(text)), Some(V::Str(enc))) if &**enc == "latin1" || &**enc == "latin-1" => {
                                text.chars()
                                    .map(|c| u8::try_from(c as u32).map_err(|_| "non-latin1 byte string".to_string()))
                                    .collect::<std::result::Result<Vec<u8>, _>>()?
                            }
                            _ => return Err("unsupported _codecs.encode call".into()),
                        },
                        _ => return Err("unsupported _codecs.encode call".into()),
                    };
                    stack.push(V::Bytes(bytes.into()));
                    continue;
                }
                stack.push(V::Obj(Rc::new(RefCell::new(Obj { func, args, state: None }))))
            }
            b'b' => {
                let state = pop(&mut stack)?;
                match stack.last() {
                    Some(V::Obj(o)) => o.borrow_mut().state = Some(state),
                    _ => return Err("BUILD target is not an object".into()),
                }
            }
            other => return Err(format!("unsupported pickle opcode 0x{other:02x}").into()),
        }
    }
}

/// A decoded numeric ndarray from the pickle tree.
struct Numeric {
    shape: Vec<usize>,
    data: Vec<f64>,
}

fn dtype_descr(v: &V) -> Option<String> {
    let V::Obj(o) = v else { return None };
    let o = o.borrow();
    if &*o.func.1 != "dtype" {
        return None;
    }
    let V::Tuple(args) = &o.args else { return None };
    let V::Str(code) = args.first()? else {
        return None;
    };
    let endian = match &o.state {
        Some(V::Tuple(st)) => match st.get(1) {
            Some(V::Str(e)) => e.to_string(),
            _ => "<".into(),
        },
        _ => "<".into(),
    };
    Some(format!("{endian}{code}"))
}

enum ArrayData {
    Numeric(Numeric),
    Objects(Vec<V>),
}

/// Bookkeeping of one walk over the pickled tree.
struct Walk<'l> {
    limits: &'l Limits,
    visits: u64,
    /// f64 bytes decoded so far, and the most allowed (see [`unpack_object_array`]).
    decoded: u64,
    max_decoded: u64,
    payload_len: usize,
}

fn as_array(v: &V, walk: &mut Walk) -> PResult<Option<ArrayData>> {
    let V::Obj(o) = v else { return Ok(None) };
    let o = o.borrow();
    if &*o.func.1 != "_reconstruct" {
        return Ok(None);
    }
    let Some(V::Tuple(st)) = &o.state else {
        return Err("array without state".into());
    };
    if st.len() < 5 {
        return Err("array state too short".into());
    }
    let shape: Vec<usize> = match &st[1] {
        V::Tuple(t) => t
            .iter()
            .map(|d| match d {
                V::Int(n) if *n >= 0 => usize::try_from(*n).map_err(|_| "dimension too large".to_string()),
                _ => Err("bad dimension".to_string()),
            })
            .collect::<std::result::Result<_, _>>()?,
        _ => return Err("array shape is not a tuple".into()),
    };
    let fortran = matches!(st[3], V::Bool(true));
    let descr = dtype_descr(&st[2]).ok_or("array dtype not understood")?;
    if descr.trim_start_matches(['<', '>', '|', '=']).starts_with('O') {
        return match &st[4] {
            V::List(l) => Ok(Some(ArrayData::Objects(l.borrow().clone()))),
            _ => Err("object array without element list".into()),
        };
    }
    let (le, kind, size) = dtype_info(&descr).ok_or_else(|| format!("element dtype '{descr}' not supported"))?;
    let V::Bytes(raw) = &st[4] else {
        return Err("numeric array without raw bytes".into());
    };
    // checked: the shape is the file's claim and must not wrap before it meets the byte count
    let need =
        shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).and_then(|c| c.checked_mul(size).map(|b| (c, b)));
    let Some((count, bytes)) = need else {
        return Err(format!("array shape {shape:?} overflows").into());
    };
    if raw.len() < bytes {
        return Err(format!("array bytes truncated: shape {shape:?} needs {bytes}, {} present", raw.len()).into());
    }
    let decoded = walk.decoded.saturating_add(count as u64 * 8);
    if decoded > walk.limits.max_array_bytes {
        return Err(PErr::Limit {
            what: "decoded size in bytes of the pickled arrays",
            value: decoded,
            limit: walk.limits.max_array_bytes,
            field: "max_array_bytes",
        });
    }
    if decoded > walk.max_decoded {
        return Err(format!(
            "memo references repeat arrays: {decoded} decoded bytes from a {}-byte pickle",
            walk.payload_len
        )
        .into());
    }
    walk.decoded = decoded;
    let mut data = Vec::with_capacity(count);
    decode_elements(&raw[..bytes], le, kind, size, &mut data);
    if fortran && shape.len() > 1 {
        let a = ArrayD::from_shape_vec(IxDyn(&shape).f(), data).map_err(|e| e.to_string())?;
        data = a.as_standard_layout().iter().copied().collect();
    }
    Ok(Some(ArrayData::Numeric(Numeric { shape, data })))
}

fn collect_images(v: &V, out: &mut Vec<Numeric>, depth: usize, walk: &mut Walk) -> PResult<()> {
    // Counted before the depth test: memo references let a few KB describe a tree with
    // exponentially many nodes, and even the cut-off ones cost a clone in their parent.
    walk.visits += 1;
    if walk.visits > walk.limits.max_pickle_visits {
        return Err(PErr::Limit {
            what: "pickle nodes visited",
            value: walk.visits,
            limit: walk.limits.max_pickle_visits,
            field: "max_pickle_visits",
        });
    }
    if depth > 8 {
        return Ok(());
    }
    match as_array(v, walk)? {
        Some(ArrayData::Numeric(n)) if (2..=4).contains(&n.shape.len()) => out.push(n),
        Some(ArrayData::Numeric(_)) => {}
        Some(ArrayData::Objects(items)) => {
            for it in &items {
                collect_images(it, out, depth + 1, walk)?;
            }
        }
        None => match v {
            V::List(l) => {
                let items = l.borrow().clone();
                for it in &items {
                    collect_images(it, out, depth + 1, walk)?;
                }
            }
            V::Tuple(t) => {
                for it in t.iter() {
                    collect_images(it, out, depth + 1, walk)?;
                }
            }
            _ => {}
        },
    }
    Ok(())
}

/// Unpacks the numeric images held in the pickled payload of an object `.npy` (the bytes after
/// the header). Returns `(shape, data)` like a plain array: one image as its own shape, several
/// same-shaped images stacked along a new first axis.
///
/// Bounded by `limits` (values, memo, visits, decoded bytes) and by the payload itself: the
/// arrays decode to at most 8 bytes per payload byte (a `u8` array written once), so memo
/// references that repeat one array many times cannot multiply the output.
pub(crate) fn unpack_object_array(payload: &[u8], path: &Path, limits: &Limits) -> Result<(Vec<usize>, Vec<f64>)> {
    let err = |e: PErr| match e {
        PErr::Bad(detail) => LensDataError::PickledObjectArray {
            path: path.to_path_buf(),
            detail: format!(" (not unpacked safely: {detail})"),
        },
        PErr::Limit { what, value, limit, field } => exceeded(path, what, value, limit, field),
    };
    let root = load(payload, limits).map_err(err)?;
    let mut images = Vec::new();
    let mut walk = Walk {
        limits,
        visits: 0,
        decoded: 0,
        max_decoded: (payload.len() as u64).saturating_mul(8),
        payload_len: payload.len(),
    };
    collect_images(&root, &mut images, 0, &mut walk).map_err(err)?;
    let plain =
        |detail: String| LensDataError::PickledObjectArray { path: path.to_path_buf(), detail: format!(" ({detail})") };
    match images.len() {
        0 => Err(plain("it holds no numeric array of 2 to 4 dimensions".into())),
        1 => {
            let n = images.pop().expect("one");
            Ok((n.shape, n.data))
        }
        k => {
            let shape = images[0].shape.clone();
            if images.iter().any(|n| n.shape != shape) {
                return Err(plain(format!("it holds {k} arrays of different shapes")));
            }
            let mut data = Vec::with_capacity(k * images[0].data.len());
            for n in images {
                data.extend(n.data);
            }
            let mut s = vec![k];
            s.extend(shape);
            Ok((s, data))
        }
    }
}
