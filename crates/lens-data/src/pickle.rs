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
use std::path::Path;
use std::rc::Rc;

use ndarray::{ArrayD, IxDyn, ShapeBuilder};

use crate::error::{LensDataError, Result};
use crate::npy::{decode_elements, dtype_info};

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
        if self.pos + n > self.b.len() {
            return Err("pickle stream truncated".into());
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
fn load(b: &[u8]) -> std::result::Result<V, String> {
    let mut r = Reader { b, pos: 0 };
    let mut stack: Vec<V> = Vec::new();
    let mut memo: Vec<Option<V>> = Vec::new();
    let put = |memo: &mut Vec<Option<V>>, i: usize, v: V| {
        if memo.len() <= i {
            memo.resize(i + 1, None);
        }
        memo[i] = Some(v);
    };
    loop {
        let op = r.u8()?;
        match op {
            0x80 => {
                r.u8()?;
            } // PROTO
            0x95 => {
                r.take(8)?;
            } // FRAME
            b'.' => return pop(&mut stack),
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
                put(&mut memo, i, top);
            }
            b'q' | b'r' => {
                let i = if op == b'q' { r.u8()? as usize } else { r.uint(4)? };
                let top = stack.last().ok_or("BINPUT on empty stack")?.clone();
                put(&mut memo, i, top);
            }
            b'h' | b'j' => {
                let i = if op == b'h' { r.u8()? as usize } else { r.uint(4)? };
                let v = memo.get(i).and_then(|v| v.clone()).ok_or("BINGET of unknown memo slot")?;
                stack.push(v)
            }
            0x93 | b'c' => {
                let (m, n): (Rc<str>, Rc<str>) = if op == b'c' {
                    (r.line()?.into(), r.line()?.into())
                } else {
                    let n = pop(&mut stack)?;
                    let m = pop(&mut stack)?;
                    match (m, n) {
                        (V::Str(m), V::Str(n)) => (m, n),
                        _ => return Err("STACK_GLOBAL needs two strings".into()),
                    }
                };
                if !ALLOWED.iter().any(|(am, an)| **am == *m && **an == *n) {
                    return Err(format!("it references {m}.{n}, which is not a numpy array"));
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
                let func = match pop(&mut stack)? {
                    V::Global(m, n) => (m, n),
                    _ => return Err("REDUCE of a non-global".into()),
                };
                if &*func.0 == "_codecs" {
                    // _codecs.encode(text, "latin1"): each char is one byte
                    let bytes = match &args {
                        V::Tuple(t) => match (t.first(), t.get(1)) {
                            (Some(V::Str(text)), Some(V::Str(enc))) if &**enc == "latin1" || &**enc == "latin-1" => text
                                .chars()
                                .map(|c| u8::try_from(c as u32).map_err(|_| "non-latin1 byte string".to_string()))
                                .collect::<std::result::Result<Vec<u8>, _>>()?,
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
            other => return Err(format!("unsupported pickle opcode 0x{other:02x}")),
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
    let V::Str(code) = args.first()? else { return None };
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

fn as_array(v: &V) -> std::result::Result<Option<ArrayData>, String> {
    let V::Obj(o) = v else { return Ok(None) };
    let o = o.borrow();
    if &*o.func.1 != "_reconstruct" {
        return Ok(None);
    }
    let Some(V::Tuple(st)) = &o.state else { return Err("array without state".into()) };
    if st.len() < 5 {
        return Err("array state too short".into());
    }
    let shape: Vec<usize> = match &st[1] {
        V::Tuple(t) => t
            .iter()
            .map(|d| match d {
                V::Int(n) if *n >= 0 => Ok(*n as usize),
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
    let V::Bytes(raw) = &st[4] else { return Err("numeric array without raw bytes".into()) };
    let count: usize = shape.iter().product();
    if raw.len() < count * size {
        return Err("array bytes truncated".into());
    }
    let mut data = Vec::with_capacity(count);
    decode_elements(&raw[..count * size], le, kind, size, &mut data);
    if fortran && shape.len() > 1 {
        let a = ArrayD::from_shape_vec(IxDyn(&shape).f(), data).map_err(|e| e.to_string())?;
        data = a.as_standard_layout().iter().copied().collect();
    }
    Ok(Some(ArrayData::Numeric(Numeric { shape, data })))
}

fn collect_images(v: &V, out: &mut Vec<Numeric>, depth: usize) -> std::result::Result<(), String> {
    if depth > 8 {
        return Ok(());
    }
    match as_array(v)? {
        Some(ArrayData::Numeric(n)) if (2..=4).contains(&n.shape.len()) => out.push(n),
        Some(ArrayData::Numeric(_)) => {}
        Some(ArrayData::Objects(items)) => {
            for it in &items {
                collect_images(it, out, depth + 1)?;
            }
        }
        None => match v {
            V::List(l) => {
                for it in l.borrow().iter() {
                    collect_images(it, out, depth + 1)?;
                }
            }
            V::Tuple(t) => {
                for it in t.iter() {
                    collect_images(it, out, depth + 1)?;
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
pub(crate) fn unpack_object_array(payload: &[u8], path: &Path) -> Result<(Vec<usize>, Vec<f64>)> {
    let err = |detail: String| LensDataError::PickledObjectArray { path: path.to_path_buf(), detail: format!(" ({detail})") };
    let root = load(payload).map_err(|e| err(format!("not unpacked safely: {e}")))?;
    let mut images = Vec::new();
    collect_images(&root, &mut images, 0).map_err(|e| err(format!("not unpacked safely: {e}")))?;
    match images.len() {
        0 => Err(err("it holds no numeric array of 2 to 4 dimensions".into())),
        1 => {
            let n = images.pop().expect("one");
            Ok((n.shape, n.data))
        }
        k => {
            let shape = images[0].shape.clone();
            if images.iter().any(|n| n.shape != shape) {
                return Err(err(format!("it holds {k} arrays of different shapes")));
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
