//! Native fast path of transforms/unpack.py.
//!
//! The common records (one JSON object, `upload` or `json` envelope, nothing to reject) go straight
//! from bytes to the same event dicts the Python code builds. Everything else is handed back as a
//! "fallback" and the Python code makes its events, dead letters and counters: this module never
//! decides a rejection, so the Python code stays the one definition of the contract.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt::Write as _;

use blake2::{Blake2b512, Digest};
use pyo3::exceptions::PyTypeError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};

/// Deeper documents go to Python (orjson's own limit is 1024 levels).
const MAX_DEPTH: u32 = 256;
/// Objects with more keys than this find repeated keys through a map instead of a scan.
const HASH_AT: usize = 16;
const TIME_KEYS: [&str; 3] = ["timestamp", "time", "ts"];

// --- JSON ----------------------------------------------------------------------------------------

/// A parsed JSON value. Objects keep Python dict semantics (see `insert`).
enum J<'a> {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64), // above i64::MAX: orjson gives an int up to u64::MAX
    Float(f64),
    Str(Cow<'a, str>),
    Arr(Vec<J<'a>>),
    Obj(Vec<(Cow<'a, str>, J<'a>)>),
}

type Obj<'a> = [(Cow<'a, str>, J<'a>)];

/// A strict JSON parser over text already checked to be UTF-8. `None` = not sure it would give
/// exactly what orjson.loads gives (or not valid JSON): the record goes to Python.
struct Parser<'a> {
    s: &'a str,
    b: &'a [u8],
    i: usize,
}

impl<'a> Parser<'a> {
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    fn value(&mut self, depth: u32) -> Option<J<'a>> {
        self.ws();
        match *self.b.get(self.i)? {
            b'{' => self.object(depth + 1),
            b'[' => self.array(depth + 1),
            b'"' => Some(J::Str(self.string()?)),
            b't' => self.literal(b"true", J::Bool(true)),
            b'f' => self.literal(b"false", J::Bool(false)),
            b'n' => self.literal(b"null", J::Null),
            b'-' | b'0'..=b'9' => self.number(),
            _ => None,
        }
    }

    fn literal(&mut self, word: &[u8], v: J<'a>) -> Option<J<'a>> {
        if self.b[self.i..].starts_with(word) {
            self.i += word.len();
            Some(v)
        } else {
            None
        }
    }

    fn object(&mut self, depth: u32) -> Option<J<'a>> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.i += 1;
        let mut v: Vec<(Cow<'a, str>, J<'a>)> = Vec::new();
        let mut index: Option<HashMap<String, usize>> = None;
        self.ws();
        if self.b.get(self.i) == Some(&b'}') {
            self.i += 1;
            return Some(J::Obj(v));
        }
        loop {
            self.ws();
            if self.b.get(self.i) != Some(&b'"') {
                return None;
            }
            let k = self.string()?;
            self.ws();
            if self.b.get(self.i) != Some(&b':') {
                return None;
            }
            self.i += 1;
            let val = self.value(depth)?;
            insert(&mut v, &mut index, k, val);
            self.ws();
            match self.b.get(self.i) {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Some(J::Obj(v));
                }
                _ => return None,
            }
        }
    }

    fn array(&mut self, depth: u32) -> Option<J<'a>> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.i += 1;
        let mut v = Vec::new();
        self.ws();
        if self.b.get(self.i) == Some(&b']') {
            self.i += 1;
            return Some(J::Arr(v));
        }
        loop {
            v.push(self.value(depth)?);
            self.ws();
            match self.b.get(self.i) {
                Some(b',') => self.i += 1,
                Some(b']') => {
                    self.i += 1;
                    return Some(J::Arr(v));
                }
                _ => return None,
            }
        }
    }

    /// At the opening quote. Lone surrogates and raw control characters -> None (orjson rejects them).
    fn string(&mut self) -> Option<Cow<'a, str>> {
        let b = self.b;
        let start = self.i + 1;
        let mut i = start;
        loop {
            let c = *b.get(i)?;
            if c == b'"' {
                self.i = i + 1;
                // only ASCII bytes delimit slices, so they are on char boundaries of valid UTF-8
                return Some(Cow::Borrowed(&self.s[start..i]));
            }
            if c == b'\\' {
                break;
            }
            if c < 0x20 {
                return None;
            }
            i += 1;
        }
        let mut out = String::with_capacity(i - start + 16);
        out.push_str(&self.s[start..i]);
        loop {
            match *b.get(i)? {
                b'"' => {
                    self.i = i + 1;
                    return Some(Cow::Owned(out));
                }
                b'\\' => {
                    let e = *b.get(i + 1)?;
                    i += 2;
                    match e {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => {
                            let hi = hex4(b, i)?;
                            i += 4;
                            let cp = if (0xD800..0xDC00).contains(&hi) {
                                if b.get(i) != Some(&b'\\') || b.get(i + 1) != Some(&b'u') {
                                    return None;
                                }
                                let lo = hex4(b, i + 2)?;
                                if !(0xDC00..0xE000).contains(&lo) {
                                    return None;
                                }
                                i += 6;
                                0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                            } else if (0xDC00..0xE000).contains(&hi) {
                                return None;
                            } else {
                                hi
                            };
                            out.push(char::from_u32(cp)?);
                        }
                        _ => return None,
                    }
                }
                c if c < 0x20 => return None,
                _ => {
                    let s = i;
                    while i < b.len() && b[i] != b'"' && b[i] != b'\\' && b[i] >= 0x20 {
                        i += 1;
                    }
                    out.push_str(&self.s[s..i]);
                }
            }
        }
    }

    /// JSON number grammar. Integers beyond u64/i64 (orjson: float) and non-finite floats
    /// (orjson: error) -> None.
    fn number(&mut self) -> Option<J<'a>> {
        let b = self.b;
        let start = self.i;
        let mut i = start;
        let neg = b[i] == b'-';
        if neg {
            i += 1;
        }
        match b.get(i) {
            Some(b'0') => {
                i += 1;
                if matches!(b.get(i), Some(b'0'..=b'9')) {
                    return None;
                }
            }
            Some(b'1'..=b'9') => {
                while matches!(b.get(i), Some(b'0'..=b'9')) {
                    i += 1;
                }
            }
            _ => return None,
        }
        let mut is_float = false;
        if b.get(i) == Some(&b'.') {
            i += 1;
            let d = i;
            while matches!(b.get(i), Some(b'0'..=b'9')) {
                i += 1;
            }
            if i == d {
                return None;
            }
            is_float = true;
        }
        if matches!(b.get(i), Some(b'e' | b'E')) {
            i += 1;
            if matches!(b.get(i), Some(b'+' | b'-')) {
                i += 1;
            }
            let d = i;
            while matches!(b.get(i), Some(b'0'..=b'9')) {
                i += 1;
            }
            if i == d {
                return None;
            }
            is_float = true;
        }
        self.i = i;
        let text = &self.s[start..i];
        if is_float {
            // Rust's parse is correctly rounded, as orjson's is: the same double
            let f: f64 = text.parse().ok()?;
            f.is_finite().then_some(J::Float(f))
        } else if neg {
            text.parse::<i64>().ok().map(J::Int) // "-0" -> 0, as orjson
        } else {
            let u: u64 = text.parse().ok()?;
            Some(if u <= i64::MAX as u64 { J::Int(u as i64) } else { J::UInt(u) })
        }
    }
}

fn hex4(b: &[u8], i: usize) -> Option<u32> {
    let mut v = 0u32;
    for k in 0..4 {
        let d = (*b.get(i + k)? as char).to_digit(16)?;
        v = v * 16 + d;
    }
    Some(v)
}

/// Python dict semantics for a repeated key: it keeps its first position and takes the last value.
fn insert<'a>(
    v: &mut Vec<(Cow<'a, str>, J<'a>)>,
    index: &mut Option<HashMap<String, usize>>,
    k: Cow<'a, str>,
    val: J<'a>,
) {
    if index.is_none() && v.len() >= HASH_AT {
        *index = Some(v.iter().enumerate().map(|(n, (k, _))| (k.to_string(), n)).collect());
    }
    let found = match index {
        Some(ix) => ix.get(k.as_ref()).copied(),
        None => v.iter().position(|(x, _)| *x == k),
    };
    match found {
        Some(n) => v[n].1 = val,
        None => {
            if let Some(ix) = index {
                ix.insert(k.to_string(), v.len());
            }
            v.push((k, val));
        }
    }
}

fn get<'o, 'a>(o: &'o Obj<'a>, key: &str) -> Option<&'o J<'a>> {
    o.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

fn to_py<'py>(py: Python<'py>, v: &J) -> PyResult<Bound<'py, PyAny>> {
    Ok(match v {
        J::Null => py.None().into_bound(py),
        J::Bool(b) => PyBool::new(py, *b).to_owned().into_any(),
        J::Int(i) => i.into_pyobject(py)?.into_any(),
        J::UInt(u) => u.into_pyobject(py)?.into_any(),
        J::Float(f) => PyFloat::new(py, *f).into_any(),
        J::Str(s) => PyString::new(py, s).into_any(),
        J::Arr(a) => {
            let l = PyList::empty(py);
            for x in a {
                l.append(to_py(py, x)?)?;
            }
            l.into_any()
        }
        J::Obj(o) => {
            let d = PyDict::new(py);
            for (k, x) in o {
                d.set_item(PyString::new(py, k), to_py(py, x)?)?;
            }
            d.into_any()
        }
    })
}

// --- Events --------------------------------------------------------------------------------------

/// Where a key of the merged dict (upload: meta updated with the item) takes its value from.
#[derive(Clone, Copy, PartialEq)]
enum Src {
    Meta(usize),
    Item(usize),
    Gone, // popped
}

struct Cfg<'py> {
    t_lo: i64,
    t_hi: i64,
    text_fields: Vec<(String, Bound<'py, PyString>)>,
    max_chars: usize,
    max_items: usize,
    max_value: usize,
    now: i64,
    now_obj: Bound<'py, PyAny>,
    empty: Bound<'py, PyAny>,
}

/// What the events of one record share.
struct Rec<'py> {
    topic: Bound<'py, PyAny>,
    partition: Bound<'py, PyAny>,
    offset: Bound<'py, PyAny>,
    tp: Bound<'py, PyAny>,
    envelope: Bound<'py, PyAny>,
    default_time: i64,
}

/// Python's `len(s) > max_chars` (code points).
fn too_long(s: &str, max_chars: usize) -> bool {
    s.len() > max_chars && s.chars().count() > max_chars
}

struct Merged<'m, 'a, 'py> {
    meta: &'m Obj<'a>,
    meta_vals: &'m [Bound<'py, PyAny>],
    item: &'m Obj<'a>,
    m: Vec<(&'m str, Src)>,
}

impl<'m, 'a, 'py> Merged<'m, 'a, 'py> {
    fn val(&self, s: Src) -> &'m J<'a> {
        match s {
            Src::Meta(j) => &self.meta[j].1,
            Src::Item(j) => &self.item[j].1,
            Src::Gone => unreachable!(),
        }
    }

    fn obj(&self, py: Python<'py>, s: Src) -> PyResult<Bound<'py, PyAny>> {
        match s {
            // meta values are converted once per record and shared, as meta.copy() shares them
            Src::Meta(j) => Ok(self.meta_vals[j].clone()),
            _ => to_py(py, self.val(s)),
        }
    }

    /// dict.pop(key, None): the value, or None when absent or null (Python cannot tell them apart).
    fn pop(&mut self, key: &str) -> Option<Src> {
        let e = self.m.iter_mut().find(|(k, s)| *s != Src::Gone && *k == key)?;
        let s = e.1;
        e.1 = Src::Gone;
        match self.val(s) {
            J::Null => None,
            _ => Some(s),
        }
    }

    /// app_id/event_name/platform/device_id: a string, or "" for None. Numbers (Python formats them
    /// with str()) and other types (a rejection) -> Err(()) = fallback.
    fn scalar(&self, py: Python<'py>, s: Option<Src>, empty: &Bound<'py, PyAny>) -> Result<Bound<'py, PyAny>, ()> {
        match s {
            None => Ok(empty.clone()),
            Some(s) => match self.val(s) {
                J::Str(_) => self.obj(py, s).map_err(|_| ()),
                _ => Err(()),
            },
        }
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// One event, or None (fallback) when Python would not build it exactly like this.
#[allow(clippy::too_many_arguments)]
fn build<'py>(
    py: Python<'py>,
    cfg: &Cfg<'py>,
    rec: &Rec<'py>,
    meta: &Obj,
    meta_keys: &[Bound<'py, PyString>],
    meta_vals: &[Bound<'py, PyAny>],
    meta_index: Option<&HashMap<&str, usize>>,
    item: &Obj,
    index: usize,
    id_buf: &mut String,
    id_pre: usize,
) -> PyResult<Option<Bound<'py, PyDict>>> {
    let mut m: Vec<(&str, Src)> = Vec::with_capacity(meta.len() + item.len());
    m.extend(meta.iter().enumerate().map(|(j, (k, _))| (k.as_ref(), Src::Meta(j))));
    for (j, (k, _)) in item.iter().enumerate() {
        let k = k.as_ref();
        // item keys are unique among themselves: only meta's can repeat them (merged.update(item))
        let pos = match meta_index {
            Some(ix) => ix.get(k).copied(),
            None => meta.iter().position(|(mk, _)| mk == k),
        };
        match pos {
            Some(p) => m[p].1 = Src::Item(j),
            None => m.push((k, Src::Item(j))),
        }
    }
    let mut mg = Merged { meta, meta_vals, item, m };

    let mut t = None;
    for k in TIME_KEYS {
        t = mg.pop(k);
        if t.is_some() {
            break;
        }
    }
    let event_time = match t {
        None => rec.default_time,
        Some(s) => match mg.val(s) {
            J::Int(x) if cfg.t_lo <= *x && *x <= cfg.t_hi => *x,
            _ => return Ok(None), // other units, strings, out of bounds: Python's _event_time
        },
    };
    let app_id = mg.pop("app_id");
    let mut name = mg.pop("event_name");
    if name.is_none() {
        name = mg.pop("name");
        if name.is_none() {
            name = mg.pop("type");
        }
    }
    let platform = mg.pop("platform");
    let device_id = mg.pop("device_id");
    let duration = match mg.pop("duration_ms").map(|s| mg.val(s)) {
        None => None,
        Some(J::Int(x)) => Some(*x as f64), // float(int): round half to even, as `as` does
        Some(J::UInt(x)) => Some(*x as f64),
        Some(J::Float(f)) => Some(*f),
        Some(_) => return Ok(None),
    };
    let (Ok(app_id), Ok(name), Ok(platform), Ok(device_id)) = (
        mg.scalar(py, app_id, &cfg.empty),
        mg.scalar(py, name, &cfg.empty),
        mg.scalar(py, platform, &cfg.empty),
        mg.scalar(py, device_id, &cfg.empty),
    ) else {
        return Ok(None);
    };

    let fields = PyDict::new(py);
    for (tf, tf_obj) in &cfg.text_fields {
        let Some(e) = mg.m.iter_mut().find(|(k, s)| *s != Src::Gone && k == tf) else {
            continue;
        };
        let s = e.1;
        let v = match s {
            Src::Meta(j) => &meta[j].1,
            Src::Item(j) => &item[j].1,
            Src::Gone => unreachable!(),
        };
        if let J::Str(text) = v {
            if too_long(text, cfg.max_chars) {
                return Ok(None);
            }
            e.1 = Src::Gone;
            fields.set_item(tf_obj, mg.obj(py, s)?)?;
        }
    }

    let attrs = PyDict::new(py);
    for (pos, &(k, s)) in mg.m.iter().enumerate() {
        if s == Src::Gone {
            continue;
        }
        // keys keep meta's position (and key object) even when the item overrides the value
        if pos < meta.len() {
            attrs.set_item(&meta_keys[pos], mg.obj(py, s)?)?;
        } else {
            attrs.set_item(PyString::new(py, k), mg.obj(py, s)?)?;
        }
    }

    // blake2b(b"<topic>:<partition>:<offset>:<index>").digest()[:16].hex()
    id_buf.truncate(id_pre);
    let _ = write!(id_buf, "{index}");
    let digest = Blake2b512::digest(id_buf.as_bytes());
    let mut hex = [0u8; 32];
    for (n, byte) in digest[..16].iter().enumerate() {
        hex[2 * n] = HEX[(byte >> 4) as usize];
        hex[2 * n + 1] = HEX[(byte & 15) as usize];
    }
    let event_id = PyString::new(py, std::str::from_utf8(&hex).unwrap_or_default());

    let duration = match duration {
        Some(f) => PyFloat::new(py, f).into_any(),
        None => py.None().into_bound(py),
    };
    let src = PyList::new(
        py,
        [rec.topic.clone(), rec.partition.clone(), rec.offset.clone(), index.into_pyobject(py)?.into_any()],
    )?;
    let ev = PyDict::new(py);
    ev.set_item(intern!(py, "event_id"), event_id)?;
    ev.set_item(intern!(py, "event_time"), event_time)?;
    ev.set_item(intern!(py, "ingest_time"), &cfg.now_obj)?;
    ev.set_item(intern!(py, "app_id"), app_id)?;
    ev.set_item(intern!(py, "event_name"), name)?;
    ev.set_item(intern!(py, "platform"), platform)?;
    ev.set_item(intern!(py, "device_id"), device_id)?;
    ev.set_item(intern!(py, "duration_ms"), duration)?;
    ev.set_item(intern!(py, "fields"), fields)?;
    ev.set_item(intern!(py, "attrs"), attrs)?;
    ev.set_item(intern!(py, "traceparent"), &rec.tp)?;
    ev.set_item(intern!(py, "src"), src)?;
    ev.set_item(intern!(py, "envelope"), &rec.envelope)?;
    Ok(Some(ev))
}

fn exact_int(o: &Bound<PyAny>) -> Option<i64> {
    if o.is_exact_instance_of::<PyInt>() {
        o.extract::<i64>().ok()
    } else {
        None
    }
}

/// Python's str.strip() on ASCII text (str.isspace includes \x1c-\x1f).
fn strip_ascii(s: &[u8]) -> &[u8] {
    let ws = |c: &u8| matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c | 0x1c..=0x1f);
    let a = s.iter().position(|c| !ws(c)).unwrap_or(s.len());
    let b = s.iter().rposition(|c| !ws(c)).map_or(a, |p| p + 1);
    &s[a..b]
}

/// `00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}`, full match.
fn valid_traceparent(s: &[u8]) -> bool {
    let hex = |p: &[u8]| p.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
    s.len() == 55
        && s.starts_with(b"00-")
        && s[35] == b'-'
        && s[52] == b'-'
        && hex(&s[3..35])
        && hex(&s[36..52])
        && hex(&s[53..55])
        && s[3..35].iter().any(|&c| c != b'0')
        && s[36..52].iter().any(|&c| c != b'0')
}

/// The traceparent of a record: Ok(None) without the header, Ok(Some) when valid, Err(()) =
/// fallback (an invalid value: Python counts it; an unusual header shape).
fn traceparent<'py>(py: Python<'py>, headers: &Bound<'py, PyAny>) -> Result<Option<Bound<'py, PyAny>>, ()> {
    let items: Vec<Bound<PyAny>> = if headers.is_none() {
        return Ok(None);
    } else if let Ok(t) = headers.cast_exact::<PyTuple>() {
        t.iter().collect()
    } else if let Ok(l) = headers.cast_exact::<PyList>() {
        l.iter().collect()
    } else {
        return Err(());
    };
    let mut raw = None;
    for h in items {
        let h = h.cast_exact::<PyTuple>().map_err(|_| ())?;
        if h.len() != 2 {
            return Err(());
        }
        let k = h.get_item(0).map_err(|_| ())?;
        if let Ok(ks) = k.cast_exact::<PyString>() {
            if ks.to_str().is_ok_and(|s| s == "traceparent") {
                raw = Some(h.get_item(1).map_err(|_| ())?);
            }
        } else if !k.is_exact_instance_of::<PyBytes>() {
            return Err(()); // an object whose == we cannot predict
        }
    }
    let Some(raw) = raw else { return Ok(None) };
    let tp = if let Ok(b) = raw.cast_exact::<PyBytes>() {
        let s = strip_ascii(b.as_bytes());
        (s.is_ascii() && valid_traceparent(s)).then(|| PyString::new(py, std::str::from_utf8(s).unwrap_or("")))
    } else if let Ok(s) = raw.cast_exact::<PyString>() {
        let full = s.to_str().map_err(|_| ())?;
        let st = strip_ascii(full.as_bytes());
        (full.is_ascii() && valid_traceparent(st)).then(|| PyString::new(py, std::str::from_utf8(st).unwrap_or("")))
    } else {
        None
    };
    tp.map(|t| Some(t.into_any())).ok_or(())
}

/// One record: Ok(Some(is_upload)) with its events appended to `out`, Ok(None) = fallback.
#[allow(clippy::too_many_arguments)]
fn record<'py>(
    py: Python<'py>,
    cfg: &Cfg<'py>,
    rec: &Bound<'py, PyAny>,
    record_type: &Bound<'py, PyAny>,
    topics: &Bound<'py, PyDict>,
    topic_info: &Bound<'py, PyAny>,
    out: &mut Vec<Bound<'py, PyAny>>,
    id_buf: &mut String,
) -> PyResult<Option<bool>> {
    if !rec.get_type().is(record_type) {
        return Ok(None);
    }
    let t = rec.cast::<PyTuple>()?; // KafkaRecord is a NamedTuple: fields by position
    if t.len() != 7 {
        return Ok(None);
    }
    let topic = t.get_item(0)?;
    let partition = t.get_item(1)?;
    let offset = t.get_item(2)?;
    let ts = t.get_item(3)?;
    let value = t.get_item(5)?;
    let headers = t.get_item(6)?;

    let Ok(value) = value.cast_exact::<PyBytes>() else { return Ok(None) };
    let value = value.as_bytes();
    if value.len() > cfg.max_value {
        return Ok(None);
    }
    let Ok(topic_s) = topic.cast_exact::<PyString>() else { return Ok(None) };
    let Ok(topic_str) = topic_s.to_str() else { return Ok(None) };
    let (Some(part), Some(off)) = (exact_int(&partition), exact_int(&offset)) else { return Ok(None) };
    let default_time = if ts.is_exact_instance_of::<PyInt>() {
        match ts.extract::<i64>() {
            Ok(v) if v > 0 => v,
            Ok(_) => cfg.now,
            Err(_) => return Ok(None),
        }
    } else {
        cfg.now
    };
    let info = match topics.get_item(&topic)? {
        Some(i) => i,
        None => topic_info.call1((&topic,))?, // Unpacker._topic_info: the envelope, cached
    };
    let info = info.cast::<PyTuple>()?;
    if info.get_item(1)?.is_none() {
        return Ok(None);
    }
    let env_obj = info.get_item(0)?;
    let env = env_obj.cast::<PyString>()?.to_str()?;
    let Ok(tp) = traceparent(py, &headers) else { return Ok(None) };

    let Ok(text) = std::str::from_utf8(value) else { return Ok(None) };
    let mut p = Parser { s: text, b: value, i: 0 };
    p.ws();
    if p.b.get(p.i) != Some(&b'{') {
        return Ok(None);
    }
    let Some(J::Obj(obj)) = p.object(1) else { return Ok(None) };
    p.ws();
    if p.i != value.len() {
        return Ok(None);
    }
    let has = |k: &str| obj.iter().any(|(x, _)| x == k);
    let upload = match env {
        "auto" => {
            if has("data") && has("meta") {
                true
            } else if has("headers") && has("logs") {
                return Ok(None); // logs envelope: Python
            } else {
                false
            }
        }
        "upload" => true,
        "json" => false,
        _ => return Ok(None),
    };

    id_buf.clear();
    let _ = write!(id_buf, "{topic_str}:{part}:{off}:");
    let id_pre = id_buf.len();
    let mut r = Rec {
        topic: topic.clone(),
        partition,
        offset,
        tp: tp.unwrap_or_else(|| py.None().into_bound(py)),
        envelope: intern!(py, "json").clone().into_any(),
        default_time,
    };
    let start = out.len();
    if !upload {
        return Ok(match build(py, cfg, &r, &[], &[], &[], None, &obj, 0, id_buf, id_pre)? {
            Some(ev) => {
                out.push(ev.into_any());
                Some(false)
            }
            None => None,
        });
    }

    let meta: &Obj = match get(&obj, "meta") {
        None | Some(J::Null) => &[],
        Some(J::Obj(m)) => m,
        Some(_) => return Ok(None),
    };
    let data = match get(&obj, "data") {
        Some(J::Arr(a)) if !a.is_empty() && a.len() <= cfg.max_items => a,
        _ => return Ok(None),
    };
    if !data.iter().all(|x| matches!(x, J::Obj(_))) {
        return Ok(None);
    }
    for (k, v) in meta {
        if let J::Str(s) = v {
            if too_long(s, cfg.max_chars) && cfg.text_fields.iter().any(|(tf, _)| tf == k) {
                return Ok(None); // a bad meta: one dead letter for the record, from Python
            }
        }
    }
    r.envelope = intern!(py, "upload").clone().into_any();
    let meta_keys: Vec<Bound<PyString>> = meta.iter().map(|(k, _)| PyString::new(py, k)).collect();
    let meta_vals = meta.iter().map(|(_, v)| to_py(py, v)).collect::<PyResult<Vec<_>>>()?;
    let meta_index: Option<HashMap<&str, usize>> =
        (meta.len() > HASH_AT).then(|| meta.iter().enumerate().map(|(n, (k, _))| (k.as_ref(), n)).collect());
    for (i, item) in data.iter().enumerate() {
        let J::Obj(item) = item else { unreachable!() };
        match build(py, cfg, &r, meta, &meta_keys, &meta_vals, meta_index.as_ref(), item, i, id_buf, id_pre)? {
            Some(ev) => out.push(ev.into_any()),
            None => {
                out.truncate(start);
                return Ok(None);
            }
        }
    }
    Ok(Some(true))
}

/// unpack_records(records, record_type, topics, topic_info, now, t_lo, t_hi, text_fields, max_chars,
/// max_items, max_value) -> (events, fallbacks, n_uploads)
///
/// `events`: the events of the records handled here, in record order. `fallbacks`: (record index,
/// position in `events` where that record's output belongs, uploads handled here before it) for
/// each record Python must unpack itself. `n_uploads`: upload records handled here (uploads.200).
#[pyfunction]
#[allow(clippy::too_many_arguments)]
#[pyo3(signature = (records, record_type, topics, topic_info, now, t_lo, t_hi, text_fields, max_chars,
                    max_items, max_value))]
fn unpack_records<'py>(
    py: Python<'py>,
    records: &Bound<'py, PyAny>,
    record_type: &Bound<'py, PyAny>,
    topics: &Bound<'py, PyDict>,
    topic_info: &Bound<'py, PyAny>,
    now: i64,
    t_lo: i64,
    t_hi: i64,
    text_fields: &Bound<'py, PyTuple>,
    max_chars: usize,
    max_items: usize,
    max_value: usize,
) -> PyResult<(Bound<'py, PyList>, Vec<(usize, usize, usize)>, usize)> {
    let recs: Vec<Bound<PyAny>> = if let Ok(l) = records.cast::<PyList>() {
        l.iter().collect()
    } else if let Ok(t) = records.cast::<PyTuple>() {
        t.iter().collect()
    } else {
        return Err(PyTypeError::new_err("records: a list or tuple expected"));
    };
    let mut tfs = Vec::with_capacity(text_fields.len());
    for tf in text_fields.iter() {
        let s = tf.cast_into::<PyString>()?;
        tfs.push((s.to_str()?.to_owned(), s));
    }
    let cfg = Cfg {
        t_lo,
        t_hi,
        text_fields: tfs,
        max_chars,
        max_items,
        max_value,
        now,
        now_obj: now.into_pyobject(py)?.into_any(),
        empty: intern!(py, "").clone().into_any(),
    };
    let mut out: Vec<Bound<PyAny>> = Vec::with_capacity(recs.len() * 2);
    let mut fallbacks = Vec::new();
    let mut n_up = 0usize;
    let mut id_buf = String::with_capacity(128);
    for (ri, rec) in recs.iter().enumerate() {
        let start = out.len();
        match record(py, &cfg, rec, record_type, topics, topic_info, &mut out, &mut id_buf) {
            Ok(Some(upload)) => n_up += upload as usize,
            // an error here (a Python call that raised) is Python's to report, on its own path
            Ok(None) | Err(_) => {
                out.truncate(start);
                fallbacks.push((ri, out.len(), n_up));
            }
        }
    }
    Ok((PyList::new(py, out)?, fallbacks, n_up))
}

#[pymodule]
fn perf_native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(unpack_records, m)?)?;
    Ok(())
}
