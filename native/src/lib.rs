//! Native fast paths of transforms/unpack.py (this file) and of the classifier's Hyperscan loop (hs.rs).
//!
//! The common records (`upload`, `json`, headers+`logs` and JSON Lines envelopes, nothing to reject)
//! go straight from bytes to the same event dicts the Python code builds. Everything else is handed back as a
//! "fallback" and the Python code makes its events, dead letters and counters: this module never
//! decides a rejection, so the Python code stays the one definition of the contract.

mod hs;
mod route;
mod rows;

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use pyo3::exceptions::PyTypeError;
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict, PyInt, PyList, PyString, PyTuple};

/// Deeper documents go to Python (orjson's own limit is 1024 levels).
const MAX_DEPTH: u32 = 256;
/// Objects with more keys than this find repeated keys through a map instead of a scan.
const HASH_AT: usize = 16;

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
type Members<'a> = Vec<(Cow<'a, str>, J<'a>)>;

/// A strict JSON parser. `None` = not sure it would give exactly what orjson.loads gives (or not
/// valid JSON): the record goes to Python. Bytes outside strings must be ASCII (the grammar), strings
/// are checked to be UTF-8 one by one, so the document as a whole is.
struct Parser<'a> {
    b: &'a [u8],
    i: usize,
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Non-zero when one of the 8 bytes ends a plain run of string bytes: '"', '\\' or a control char.
#[inline(always)]
fn special(x: u64) -> u64 {
    let zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGHS;
    zero(x ^ (ONES * b'"' as u64)) | zero(x ^ (ONES * b'\\' as u64)) | (x.wrapping_sub(ONES * 0x20) & !x & HIGHS)
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
        let mut v: Vec<(Cow<'a, str>, J<'a>)> = Vec::with_capacity(8);
        let mut index: Option<HashMap<String, usize>> = None;
        let mut tags = [0u64; HASH_AT];
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
            insert(&mut v, &mut index, &mut tags, k, val);
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
        let mut v = Vec::with_capacity(4);
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

    /// At the opening quote. Lone surrogates, raw control characters and invalid UTF-8 -> None
    /// (orjson rejects them).
    fn string(&mut self) -> Option<Cow<'a, str>> {
        let b = self.b;
        let start = self.i + 1;
        let mut i = start;
        let mut high = 0u64;
        loop {
            while i + 8 <= b.len() {
                let x = u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
                if special(x) != 0 {
                    break;
                }
                high |= x & HIGHS;
                i += 8;
            }
            let c = *b.get(i)?;
            if c == b'"' {
                self.i = i + 1;
                let raw = &b[start..i];
                return Some(Cow::Borrowed(if high == 0 {
                    // SAFETY: ASCII only
                    unsafe { std::str::from_utf8_unchecked(raw) }
                } else {
                    std::str::from_utf8(raw).ok()?
                }));
            }
            if c == b'\\' {
                break;
            }
            if c < 0x20 {
                return None;
            }
            high |= (c & 0x80) as u64;
            i += 1;
        }
        let mut out: Vec<u8> = Vec::with_capacity(i - start + 16);
        out.extend_from_slice(&b[start..i]);
        let mut ch = [0u8; 4];
        loop {
            match *b.get(i)? {
                b'"' => {
                    self.i = i + 1;
                    // escapes add valid UTF-8; the raw runs are checked here
                    return String::from_utf8(out).ok().map(Cow::Owned);
                }
                b'\\' => {
                    let e = *b.get(i + 1)?;
                    i += 2;
                    match e {
                        b'"' => out.push(b'"'),
                        b'\\' => out.push(b'\\'),
                        b'/' => out.push(b'/'),
                        b'b' => out.push(8),
                        b'f' => out.push(12),
                        b'n' => out.push(b'\n'),
                        b'r' => out.push(b'\r'),
                        b't' => out.push(b'\t'),
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
                            out.extend_from_slice(char::from_u32(cp)?.encode_utf8(&mut ch).as_bytes());
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
                    out.extend_from_slice(&b[s..i]);
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
            Some(b'1'..=b'9') => i = digits_end(b, i),
            _ => return None,
        }
        let mut is_float = false;
        if b.get(i) == Some(&b'.') {
            let d = i + 1;
            i = digits_end(b, d);
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
            i = digits_end(b, d);
            if i == d {
                return None;
            }
            is_float = true;
        }
        self.i = i;
        // SAFETY: digits, sign, '.', 'e': ASCII
        let text = unsafe { std::str::from_utf8_unchecked(&b[start..i]) };
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

/// The index after the run of ASCII digits that starts at `i`.
fn digits_end(b: &[u8], mut i: usize) -> usize {
    while matches!(b.get(i), Some(b'0'..=b'9')) {
        i += 1;
    }
    i
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
/// Small objects compare `key_tag`s (one word per key) before the keys themselves.
fn insert<'a>(
    v: &mut Vec<(Cow<'a, str>, J<'a>)>,
    index: &mut Option<HashMap<String, usize>>,
    tags: &mut [u64; HASH_AT],
    k: Cow<'a, str>,
    val: J<'a>,
) {
    let n = v.len();
    if index.is_none() && n < HASH_AT {
        let tag = key_tag(&k);
        match (0..n).find(|&j| tags[j] == tag && key_eq(&v[j].0, &k)) {
            Some(j) => v[j].1 = val,
            None => {
                tags[n] = tag;
                v.push((k, val));
            }
        }
        return;
    }
    let ix = index.get_or_insert_with(|| v.iter().enumerate().map(|(j, (k, _))| (k.to_string(), j)).collect());
    match ix.get(k.as_ref()) {
        Some(&j) => v[j].1 = val,
        None => {
            ix.insert(k.to_string(), n);
            v.push((k, val));
        }
    }
}

/// Length and first 7 bytes of a key: equal keys have equal tags.
#[inline(always)]
fn key_tag(k: &str) -> u64 {
    let b = k.as_bytes();
    let mut w = [0u8; 8];
    let n = b.len().min(7);
    w[..n].copy_from_slice(&b[..n]);
    w[7] = b.len().min(255) as u8;
    u64::from_le_bytes(w)
}

/// `a == b` for the short strings keys are, without a memcmp call for each.
#[inline(always)]
fn key_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    if a.len() <= 8 {
        let word = |s: &[u8]| {
            let mut w = [0u8; 8];
            w[..s.len()].copy_from_slice(s);
            u64::from_le_bytes(w)
        };
        return word(a) == word(b);
    }
    a[..8] == b[..8] && a == b
}

fn get<'o, 'a>(o: &'o Obj<'a>, key: &str) -> Option<&'o J<'a>> {
    o.iter().find(|(k, _)| key_eq(k, key)).map(|(_, v)| v)
}

// --- Python objects ------------------------------------------------------------------------------

fn check<'py>(py: Python<'py>, p: *mut ffi::PyObject) -> PyResult<Bound<'py, PyAny>> {
    // SAFETY: `p` is a new reference or NULL with an exception set
    unsafe { Bound::from_owned_ptr_or_err(py, p) }
}

/// A new str. ASCII text is copied straight into a 1-byte str: no UTF-8 decoding pass.
fn new_str<'py>(py: Python<'py>, s: &str) -> PyResult<Bound<'py, PyAny>> {
    // SAFETY: PyUnicode_New(n, 127) is a compact ASCII str with room for n bytes
    unsafe {
        if s.is_ascii() {
            let p = ffi::PyUnicode_New(s.len() as ffi::Py_ssize_t, 127);
            if !p.is_null() {
                std::ptr::copy_nonoverlapping(s.as_ptr(), ffi::PyUnicode_1BYTE_DATA(p), s.len());
            }
            check(py, p)
        } else {
            check(py, ffi::PyUnicode_FromStringAndSize(s.as_ptr().cast(), s.len() as ffi::Py_ssize_t))
        }
    }
}

/// A dict sized for `n` keys (as Python's own dict displays are): no resize while filling it.
fn new_dict<'py>(py: Python<'py>, n: usize) -> PyResult<Bound<'py, PyDict>> {
    // SAFETY: a new dict or NULL with an exception set
    Ok(unsafe { check(py, ffi::_PyDict_NewPresized(n as ffi::Py_ssize_t))?.cast_into_unchecked() })
}

#[inline]
fn set(py: Python<'_>, d: &Bound<'_, PyDict>, k: &Bound<'_, PyAny>, v: &Bound<'_, PyAny>) -> PyResult<()> {
    // SAFETY: valid objects; PyDict_SetItem takes its own references
    if unsafe { ffi::PyDict_SetItem(d.as_ptr(), k.as_ptr(), v.as_ptr()) } < 0 {
        return Err(PyErr::fetch(py));
    }
    Ok(())
}

/// FxHash: the key cache's keys are short and not attacker-chosen in a way that matters (its size is capped).
#[derive(Default)]
struct Fx(u64);

impl Hasher for Fx {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        let mut h = self.0;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            h = (h.rotate_left(5) ^ u64::from_le_bytes(c.try_into().unwrap())).wrapping_mul(0x517c_c1b7_2722_0a95);
        }
        for &c in chunks.remainder() {
            h = (h.rotate_left(5) ^ c as u64).wrapping_mul(0x517c_c1b7_2722_0a95);
        }
        self.0 = h;
    }
}

/// Dict keys repeat from record to record: one str object (hash computed once) per distinct short key
/// and call, instead of a new str per dict.
struct Keys<'py> {
    map: HashMap<Box<str>, Bound<'py, PyAny>, BuildHasherDefault<Fx>>,
}

impl<'py> Keys<'py> {
    fn get(&mut self, py: Python<'py>, k: &str) -> PyResult<Bound<'py, PyAny>> {
        if k.len() > 64 {
            return new_str(py, k);
        }
        if let Some(v) = self.map.get(k) {
            return Ok(v.clone());
        }
        let v = new_str(py, k)?;
        v.hash()?;
        if self.map.len() < 4096 {
            self.map.insert(k.into(), v.clone());
        }
        Ok(v)
    }
}

fn to_py<'py>(py: Python<'py>, v: &J, keys: &mut Keys<'py>) -> PyResult<Bound<'py, PyAny>> {
    // SAFETY: the ffi constructors return a new reference or NULL with an exception set (`check`);
    // PyList_SET_ITEM steals the item's reference into a slot of a new list.
    unsafe {
        Ok(match v {
            J::Null => py.None().into_bound(py),
            J::Bool(b) => PyBool::new(py, *b).to_owned().into_any(),
            J::Int(i) => check(py, ffi::PyLong_FromLongLong(*i))?,
            J::UInt(u) => check(py, ffi::PyLong_FromUnsignedLongLong(*u))?,
            J::Float(f) => check(py, ffi::PyFloat_FromDouble(*f))?,
            J::Str(s) => new_str(py, s)?,
            J::Arr(a) => {
                let l = check(py, ffi::PyList_New(a.len() as ffi::Py_ssize_t))?;
                for (n, x) in a.iter().enumerate() {
                    ffi::PyList_SET_ITEM(l.as_ptr(), n as ffi::Py_ssize_t, to_py(py, x, keys)?.into_ptr());
                }
                l
            }
            J::Obj(o) => {
                let d = new_dict(py, o.len())?;
                for (k, x) in o {
                    set(py, &d, &keys.get(py, k)?, &to_py(py, x, keys)?)?;
                }
                d.into_any()
            }
        })
    }
}

// --- Events --------------------------------------------------------------------------------------

/// Where a key of the merged dict (upload: meta updated with the item) takes its value from.
#[derive(Clone, Copy, PartialEq)]
enum Src {
    Meta(usize),
    Item(usize),
    Gone, // popped
}

const EVENT_KEYS: [&str; 13] = [
    "event_id", "event_time", "ingest_time", "app_id", "event_name", "platform", "device_id", "duration_ms",
    "fields", "attrs", "traceparent", "src", "envelope",
];

struct Cfg<'py> {
    t_lo: i64,
    t_hi: i64,
    text_fields: Vec<(String, Bound<'py, PyAny>)>,
    max_chars: usize,
    max_items: usize,
    max_value: usize,
    now: i64,
    now_obj: Bound<'py, PyAny>,
    empty: Bound<'py, PyAny>,
    none: Bound<'py, PyAny>,
    ev_keys: Vec<Bound<'py, PyAny>>, // EVENT_KEYS as str objects, hashes computed
    tf_mask: u64,                     // text_fields by tf_hash: most keys are ruled out by one bit
    types: Vec<(String, u8)>,         // validation.types: (key, TY_* mask of the accepted JSON types)
    required: u16,                    // validation.required: 1 << popped_key code of each (event keys only)
}

// validation.types as masks of JSON value kinds (Python's exact-type checks on parsed JSON)
const TY_STR: u8 = 1;
const TY_INT: u8 = 2;
const TY_FLOAT: u8 = 4;
const TY_BOOL: u8 = 8;
const TY_OBJ: u8 = 16;
const TY_ARR: u8 = 32;

fn ty(v: &J) -> u8 {
    match v {
        J::Null => 0,
        J::Bool(_) => TY_BOOL,
        J::Int(_) | J::UInt(_) => TY_INT,
        J::Float(_) => TY_FLOAT,
        J::Str(_) => TY_STR,
        J::Arr(_) => TY_ARR,
        J::Obj(_) => TY_OBJ,
    }
}

/// Python's type check of `own` (an item, the upload's meta, or a json object): every typed key that is
/// present and not null has an accepted type. false: Python rejects it (the record goes to Python).
fn types_ok(cfg: &Cfg, own: &Obj) -> bool {
    cfg.types.iter().all(|(k, mask)| match get(own, k) {
        None | Some(J::Null) => true,
        Some(v) => ty(v) & mask != 0,
    })
}

fn tf_hash(k: &str) -> u32 {
    let b = k.as_bytes();
    match (b.first(), b.last()) {
        (Some(&f), Some(&l)) => (b.len() as u32).wrapping_mul(7) ^ (f as u32).wrapping_mul(31) ^ l as u32,
        _ => 0,
    }
}

impl Cfg<'_> {
    /// Index of `k` in text_fields, or usize::MAX.
    fn text_index(&self, k: &str) -> usize {
        if self.tf_mask & (1 << (tf_hash(k) & 63)) == 0 {
            return usize::MAX;
        }
        self.text_fields.iter().position(|(tf, _)| key_eq(tf, k)).unwrap_or(usize::MAX)
    }
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
    /// position in `m` of each key _build pops (by `popped_key` code)
    slots: [Option<usize>; POPPED_KEYS],
}

const POPPED_KEYS: usize = 12;
const TIMESTAMP: usize = 1;
const TIME: usize = 2;
const TS: usize = 3;
const APP_ID: usize = 4;
const EVENT_NAME: usize = 5;
const NAME: usize = 6;
const TYPE: usize = 7;
const PLATFORM: usize = 8;
const DEVICE_ID: usize = 9;
const DURATION_MS: usize = 10;
const MTIME: usize = 11; // a time key of the logs envelope only (elsewhere it stays in attrs)

/// The keys _build pops, by code (0: none of them). One match per key instead of a scan per pop.
fn popped_key(k: &str) -> usize {
    match k {
        "timestamp" => TIMESTAMP,
        "time" => TIME,
        "ts" => TS,
        "app_id" => APP_ID,
        "event_name" => EVENT_NAME,
        "name" => NAME,
        "type" => TYPE,
        "platform" => PLATFORM,
        "device_id" => DEVICE_ID,
        "duration_ms" => DURATION_MS,
        "mtime" => MTIME,
        _ => 0,
    }
}

impl<'m, 'a, 'py> Merged<'m, 'a, 'py> {
    fn val(&self, s: Src) -> &'m J<'a> {
        match s {
            Src::Meta(j) => &self.meta[j].1,
            Src::Item(j) => &self.item[j].1,
            Src::Gone => unreachable!(),
        }
    }

    fn obj(&self, py: Python<'py>, s: Src, keys: &mut Keys<'py>) -> PyResult<Bound<'py, PyAny>> {
        match s {
            // meta values are converted once per record and shared, as meta.copy() shares them
            Src::Meta(j) => Ok(self.meta_vals[j].clone()),
            _ => to_py(py, self.val(s), keys),
        }
    }

    /// dict.pop(key, None): the value, or None when absent or null (Python cannot tell them apart).
    fn pop(&mut self, code: usize) -> Option<Src> {
        let pos = self.slots[code]?;
        let s = self.m[pos].1;
        self.m[pos].1 = Src::Gone;
        match self.val(s) {
            J::Null => None,
            _ => Some(s),
        }
    }

    /// app_id/event_name/platform/device_id: Some(value) for a string, an integer (Python's str() of
    /// it) or None (-> ""); None (fallback) for floats (Python's float repr) and other types (a rejection).
    fn scalar(&self, s: Option<Src>) -> Option<Option<Src>> {
        match s {
            None => Some(None),
            Some(s) => match self.val(s) {
                J::Str(_) | J::Int(_) | J::UInt(_) => Some(Some(s)),
                _ => None,
            },
        }
    }

    fn scalar_obj(&self, py: Python<'py>, s: Option<Src>, cfg: &Cfg<'py>, keys: &mut Keys<'py>) -> PyResult<Bound<'py, PyAny>> {
        match s {
            None => Ok(cfg.empty.clone()),
            Some(s) => match self.val(s) {
                J::Int(x) => new_str(py, &x.to_string()), // str(int)
                J::UInt(x) => new_str(py, &x.to_string()),
                _ => self.obj(py, s, keys),
            },
        }
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// What the items of an upload share: meta's keys and values as Python objects (made once).
struct Meta<'m, 'a, 'py> {
    meta: &'m Obj<'a>,
    /// (popped_key code, text_index) of each meta key
    info: Vec<(usize, usize)>,
    keys: Vec<Bound<'py, PyAny>>,
    vals: Vec<Bound<'py, PyAny>>,
    index: Option<HashMap<&'m str, usize>>,
}

/// A payload time -> ms as Python's `_event_time` gives it (parse_event_time's units by magnitude), when
/// that is inside [t_lo, t_hi] (integer ms inside the skew bounds: accepted without a check). None: Python
/// decides (strings, float µs/ns, times its skew check may reject).
fn event_ms(cfg: &Cfg, v: &J) -> Option<i64> {
    const S: u64 = 100_000_000_000; // 1e11: below it, seconds
    const MS: u64 = 100_000_000_000_000; // 1e14: below it, ms
    const US: u64 = 100_000_000_000_000_000; // 1e17: below it, µs; else ns
    let ms = match *v {
        J::Int(x) if cfg.t_lo <= x && x <= cfg.t_hi => return Some(x), // the SDKs' format
        J::Int(x) => {
            let a = x.unsigned_abs();
            if a < S {
                x * 1000
            } else if a < MS {
                x
            } else if a < US {
                x.div_euclid(1000) // Python's // floors
            } else {
                x.div_euclid(1_000_000)
            }
        }
        J::UInt(u) => (u / 1_000_000) as i64, // > i64::MAX: nanoseconds
        J::Float(f) => {
            // int(v * 1000) / int(v): the same double product, truncated toward zero
            let a = f.abs();
            if a < 1e11 {
                (f * 1000.0).trunc() as i64
            } else if a < 1e14 {
                f.trunc() as i64
            } else {
                return None; // float // 1000 has its own rounding: Python's
            }
        }
        _ => return None,
    };
    (cfg.t_lo <= ms && ms <= cfg.t_hi).then_some(ms)
}

/// One event, or None (fallback) when Python would not build it exactly like this.
fn build<'py>(
    py: Python<'py>,
    cfg: &Cfg<'py>,
    rec: &Rec<'py>,
    meta: &Meta<'_, '_, 'py>,
    item: &Obj,
    index: usize,
    logs: bool,
    id_buf: &mut Vec<u8>,
    keys: &mut Keys<'py>,
) -> PyResult<Option<Bound<'py, PyDict>>> {
    if !cfg.types.is_empty() && !types_ok(cfg, item) {
        return Ok(None);
    }
    let mo = meta.meta;
    let mut m: Vec<(&str, Src)> = Vec::with_capacity(mo.len() + item.len());
    let mut info: Vec<(usize, usize)> = Vec::with_capacity(mo.len() + item.len());
    m.extend(mo.iter().enumerate().map(|(j, (k, _))| (k.as_ref(), Src::Meta(j))));
    info.extend_from_slice(&meta.info);
    for (j, (k, _)) in item.iter().enumerate() {
        let k = k.as_ref();
        // item keys are unique among themselves: only meta's can repeat them (merged.update(item))
        let pos = match &meta.index {
            Some(ix) => ix.get(k).copied(),
            None => mo.iter().position(|(mk, _)| key_eq(mk, k)),
        };
        match pos {
            Some(p) => m[p].1 = Src::Item(j),
            None => {
                m.push((k, Src::Item(j)));
                info.push((popped_key(k), cfg.text_index(k)));
            }
        }
    }
    let mut slots = [None; POPPED_KEYS];
    // text_fields index -> position in m (text_fields has no repeats: Python checks before using us)
    let mut tf_pos = [u32::MAX; 32];
    let mut tf_more: Vec<(usize, usize)> = Vec::new();
    for (pos, &(c, n)) in info.iter().enumerate() {
        if c != 0 {
            slots[c] = Some(pos);
        }
        // a popped key may be a text field too ("type" stays when event_name is set)
        if n < 32 {
            tf_pos[n] = pos as u32;
        } else if n != usize::MAX {
            tf_more.push((n, pos));
        }
    }
    tf_more.sort_unstable();
    let mut mg = Merged { meta: mo, meta_vals: &meta.vals, item, m, slots };

    let mut t = None;
    // TIME_KEYS, or LOGS_TIME_KEYS (mtime first) for the logs envelope
    let time_keys: &[usize] = if logs { &[MTIME, TIMESTAMP, TIME, TS] } else { &[TIMESTAMP, TIME, TS] };
    for &k in time_keys {
        t = mg.pop(k);
        if t.is_some() {
            break;
        }
    }
    let event_time = match t {
        None => rec.default_time,
        Some(s) => match event_ms(cfg, mg.val(s)) {
            Some(ms) => ms,
            None => return Ok(None), // strings, other units, out of bounds: Python's _event_time
        },
    };
    let app_id = mg.pop(APP_ID);
    let mut name = mg.pop(EVENT_NAME);
    if name.is_none() {
        name = mg.pop(NAME);
        if name.is_none() {
            name = mg.pop(TYPE);
        }
    }
    let platform = mg.pop(PLATFORM);
    let device_id = mg.pop(DEVICE_ID);
    let duration = match mg.pop(DURATION_MS).map(|s| mg.val(s)) {
        None => None,
        Some(J::Int(x)) => Some(*x as f64), // float(int): round half to even, as `as` does
        Some(J::UInt(x)) => Some(*x as f64),
        Some(J::Float(f)) => Some(*f),
        Some(_) => return Ok(None),
    };
    let (Some(app_id), Some(name), Some(platform), Some(device_id)) =
        (mg.scalar(app_id), mg.scalar(name), mg.scalar(platform), mg.scalar(device_id))
    else {
        return Ok(None);
    };
    if cfg.required != 0 {
        // Python: ev[k] is None or ev[k] == "" -> rejected ("required but missing")
        let empty = |s: Option<Src>| match s {
            None => true,
            Some(s) => matches!(mg.val(s), J::Str(t) if t.is_empty()),
        };
        let missing = (cfg.required & (1 << APP_ID) != 0 && empty(app_id))
            || (cfg.required & (1 << EVENT_NAME) != 0 && empty(name))
            || (cfg.required & (1 << PLATFORM) != 0 && empty(platform))
            || (cfg.required & (1 << DEVICE_ID) != 0 && empty(device_id))
            || (cfg.required & (1 << DURATION_MS) != 0 && duration.is_none());
        if missing {
            return Ok(None);
        }
    }

    // text fields, in text_fields order
    let mut fields: [(usize, Src); 16] = [(0, Src::Gone); 16];
    let mut n_fields = 0;
    let mut fields_more: Vec<(usize, Src)> = Vec::new();
    let found = (0..cfg.text_fields.len().min(32))
        .filter(|&n| tf_pos[n] != u32::MAX)
        .map(|n| (n, tf_pos[n] as usize))
        .chain(tf_more.iter().copied());
    for (n, pos) in found {
        let e = &mut mg.m[pos];
        let s = e.1;
        if s == Src::Gone {
            continue;
        }
        let v = match s {
            Src::Meta(j) => &mo[j].1,
            Src::Item(j) => &item[j].1,
            Src::Gone => unreachable!(),
        };
        if let J::Str(text) = v {
            if too_long(text, cfg.max_chars) {
                return Ok(None);
            }
            e.1 = Src::Gone;
            if n_fields < 16 {
                fields[n_fields] = (n, s);
                n_fields += 1;
            } else {
                fields_more.push((n, s));
            }
        }
    }
    let fd = new_dict(py, n_fields + fields_more.len())?;
    for &(n, s) in fields[..n_fields].iter().chain(fields_more.iter()) {
        set(py, &fd, &cfg.text_fields[n].1, &mg.obj(py, s, keys)?)?;
    }

    let n_attrs = mg.m.iter().filter(|(_, s)| *s != Src::Gone).count();
    let attrs = new_dict(py, n_attrs)?;
    for (pos, &(k, s)) in mg.m.iter().enumerate() {
        if s == Src::Gone {
            continue;
        }
        // keys keep meta's position (and key object) even when the item overrides the value
        let key = if pos < mo.len() { meta.keys[pos].clone() } else { keys.get(py, k)? };
        set(py, &attrs, &key, &mg.obj(py, s, keys)?)?;
    }

    // blake2b(b"<topic>:<partition>:<offset>:<index>").digest()[:16].hex()
    let pre = id_buf.len();
    push_int(id_buf, index as u64);
    let hash = blake2b_simd::blake2b(&id_buf[..]);
    let digest = hash.as_bytes();
    id_buf.truncate(pre);
    let mut hex = [0u8; 32];
    for (n, byte) in digest[..16].iter().enumerate() {
        hex[2 * n] = HEX[(byte >> 4) as usize];
        hex[2 * n + 1] = HEX[(byte & 15) as usize];
    }
    // SAFETY: hex digits are ASCII
    let event_id = new_str(py, unsafe { std::str::from_utf8_unchecked(&hex) })?;

    // SAFETY: see to_py
    let (duration, event_time, src) = unsafe {
        let duration = match duration {
            Some(f) => check(py, ffi::PyFloat_FromDouble(f))?,
            None => cfg.none.clone(),
        };
        let event_time = check(py, ffi::PyLong_FromLongLong(event_time))?;
        let src = check(py, ffi::PyList_New(4))?;
        let idx = check(py, ffi::PyLong_FromSsize_t(index as ffi::Py_ssize_t))?;
        for (n, o) in [rec.topic.clone(), rec.partition.clone(), rec.offset.clone(), idx].into_iter().enumerate() {
            ffi::PyList_SET_ITEM(src.as_ptr(), n as ffi::Py_ssize_t, o.into_ptr());
        }
        (duration, event_time, src)
    };
    let vals = [
        event_id,
        event_time,
        cfg.now_obj.clone(),
        mg.scalar_obj(py, app_id, cfg, keys)?,
        mg.scalar_obj(py, name, cfg, keys)?,
        mg.scalar_obj(py, platform, cfg, keys)?,
        mg.scalar_obj(py, device_id, cfg, keys)?,
        duration,
        fd.into_any(),
        attrs.into_any(),
        rec.tp.clone(),
        src,
        rec.envelope.clone(),
    ];
    let ev = new_dict(py, 13)?;
    for (k, v) in cfg.ev_keys.iter().zip(vals.iter()) {
        set(py, &ev, k, v)?;
    }
    Ok(Some(ev))
}

fn push_int(buf: &mut Vec<u8>, mut v: u64) {
    let mut d = [0u8; 20];
    let mut n = d.len();
    loop {
        n -= 1;
        d[n] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    buf.extend_from_slice(&d[n..]);
}

fn push_i64(buf: &mut Vec<u8>, v: i64) {
    if v < 0 {
        buf.push(b'-');
    }
    push_int(buf, v.unsigned_abs());
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

#[derive(Clone, Copy, PartialEq)]
enum Env {
    Json,
    Upload,
    Logs,
    Jsonl,     // the topic's envelope
    AutoJsonl, // auto-detected: at least two non-blank lines
}

/// The logs envelope's merged dict (Python's _logs), or None (fallback) when Python rejects the record:
/// headers' keys but app_id/log_name, updated with logs, then app_id from headers, then
/// event_name = "t_" + log_name.
fn logs_merged<'a>(obj: &mut Obj<'a>) -> Option<Members<'a>> {
    let mut take = |key: &str| obj.iter_mut().find(|(k, _)| key_eq(k, key)).map(|(_, v)| std::mem::replace(v, J::Null));
    let (Some(J::Obj(headers)), Some(J::Obj(logs))) = (take("headers"), take("logs")) else { return None };
    let mut m = Vec::with_capacity(headers.len() + logs.len() + 1);
    let mut index = None;
    let mut tags = [0u64; HASH_AT];
    let (mut app_id, mut log_name) = (None, None);
    for (k, v) in headers {
        match k.as_ref() {
            "app_id" => app_id = Some(v),
            "log_name" => log_name = Some(v),
            _ => insert(&mut m, &mut index, &mut tags, k, v),
        }
    }
    for (k, v) in logs {
        insert(&mut m, &mut index, &mut tags, k, v);
    }
    if let Some(v) = app_id {
        insert(&mut m, &mut index, &mut tags, Cow::Borrowed("app_id"), v);
    }
    let name = match log_name {
        None | Some(J::Null) => None,
        Some(J::Str(s)) if s.is_empty() => None,
        Some(J::Str(s)) => Some(format!("t_{s}")),
        Some(J::Int(x)) => Some(format!("t_{x}")), // "t_" + str(int)
        Some(J::UInt(x)) => Some(format!("t_{x}")),
        Some(_) => return None, // a float (Python's repr) or a rejected type
    };
    if let Some(name) = name {
        insert(&mut m, &mut index, &mut tags, Cow::Borrowed("event_name"), J::Str(Cow::Owned(name)));
    }
    Some(m)
}

/// bytes.strip(): ASCII whitespace as bytes.isspace knows it (not str's \x1c-\x1f).
fn strip_bytes(s: &[u8]) -> &[u8] {
    let ws = |c: &u8| matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c);
    let a = s.iter().position(|c| !ws(c)).unwrap_or(s.len());
    let b = s.iter().rposition(|c| !ws(c)).map_or(a, |p| p + 1);
    &s[a..b]
}

/// JSON Lines (Python's _jsonl): one event per non-blank line, index = its line number. Some(()) with the
/// events appended to `out`; None (fallback, `out` to be truncated by the caller) when a line is not one
/// object Python would build the same way, when there are more than max_items lines (TOO_LARGE) or fewer
/// non-blank lines than `min_lines` (auto-detection: 2). `first`: the line number and object of the first
/// non-blank line, parsed already.
#[allow(clippy::too_many_arguments)]
fn jsonl<'py>(
    py: Python<'py>,
    cfg: &Cfg<'py>,
    r: &Rec<'py>,
    no_meta: &Meta<'_, '_, 'py>,
    value: &[u8],
    first: Option<(usize, Members<'_>)>,
    min_lines: usize,
    out: &mut Vec<Bound<'py, PyAny>>,
    id_buf: &mut Vec<u8>,
    keys: &mut Keys<'py>,
) -> PyResult<Option<()>> {
    let mut n = 0usize;
    for (i, line) in value.split(|&c| c == b'\n').enumerate() {
        let parsed;
        let o: &Obj = match &first {
            Some((at, o)) if *at == i => o,
            _ => {
                let line = strip_bytes(line);
                if line.is_empty() {
                    continue;
                }
                if line[0] != b'{' {
                    return Ok(None);
                }
                let mut p = Parser { b: line, i: 0 };
                let Some(J::Obj(o)) = p.object(1) else { return Ok(None) };
                if p.i != line.len() {
                    return Ok(None);
                }
                parsed = o;
                &parsed
            }
        };
        n += 1;
        if n > cfg.max_items {
            return Ok(None);
        }
        match build(py, cfg, r, no_meta, o, i, false, id_buf, keys)? {
            Some(ev) => out.push(ev.into_any()),
            None => return Ok(None),
        }
    }
    Ok((n >= min_lines).then_some(()))
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
    id_buf: &mut Vec<u8>,
    keys: &mut Keys<'py>,
) -> PyResult<Option<bool>> {
    if !rec.get_type().is(record_type) {
        return Ok(None);
    }
    let t = rec.cast::<PyTuple>()?; // KafkaRecord is a NamedTuple: fields by position
    if t.len() != 7 {
        return Ok(None);
    }
    // SAFETY: a tuple of 7 items
    let field = |n| unsafe { t.get_borrowed_item_unchecked(n).to_owned() };
    let (topic, partition, offset, ts, value, headers) = (field(0), field(1), field(2), field(3), field(5), field(6));

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

    // The envelope, as Python's _record chooses it. Jsonl: the first line's object when auto-detection
    // has parsed it already, with its line number.
    let mut obj = Vec::new();
    let mut first = None;
    let kind = if env == "jsonl" {
        Env::Jsonl
    } else {
        let mut p = Parser { b: value, i: 0 };
        p.ws();
        let start = p.i;
        if p.b.get(p.i) != Some(&b'{') {
            return Ok(None);
        }
        let Some(J::Obj(o)) = p.object(1) else { return Ok(None) };
        let end = p.i;
        p.ws();
        if p.i != value.len() {
            // Content after the object: orjson.loads(value) fails. Only auto-detection makes events of it,
            // when the object is all of the first non-blank line (JSON whitespace around it on that line:
            // what _looks_like_jsonl's orjson.loads(first) accepts, and the stripped line _jsonl parses).
            if env != "auto" || value[start..end].contains(&b'\n') {
                return Ok(None);
            }
            let rest = &value[end..];
            let line_end = rest.iter().position(|&c| c == b'\n').unwrap_or(rest.len());
            if !rest[..line_end].iter().all(|c| matches!(c, b' ' | b'\t' | b'\r')) {
                return Ok(None);
            }
            first = Some((value[..start].iter().filter(|&&c| c == b'\n').count(), o));
            Env::AutoJsonl
        } else {
            obj = o;
            let has = |k: &str| obj.iter().any(|(x, _)| key_eq(x, k));
            match env {
                "auto" => {
                    if has("data") && has("meta") {
                        Env::Upload
                    } else if has("headers") && has("logs") {
                        Env::Logs
                    } else {
                        Env::Json
                    }
                }
                "upload" => Env::Upload,
                "logs" => Env::Logs,
                "json" => Env::Json,
                _ => return Ok(None),
            }
        }
    };

    id_buf.clear();
    id_buf.extend_from_slice(topic_str.as_bytes());
    id_buf.push(b':');
    push_i64(id_buf, part);
    id_buf.push(b':');
    push_i64(id_buf, off);
    id_buf.push(b':');
    let mut r = Rec {
        topic: topic.clone(),
        partition,
        offset,
        tp: tp.unwrap_or_else(|| cfg.none.clone()),
        envelope: intern!(py, "json").clone().into_any(),
        default_time,
    };
    let start = out.len();
    let no_meta = Meta { meta: &[], info: vec![], keys: vec![], vals: vec![], index: None };
    let one = |ev: Option<Bound<'py, PyDict>>, out: &mut Vec<Bound<'py, PyAny>>| {
        ev.map(|ev| {
            out.push(ev.into_any());
            false
        })
    };
    match kind {
        Env::Json => return Ok(one(build(py, cfg, &r, &no_meta, &obj, 0, false, id_buf, keys)?, out)),
        Env::Logs => {
            r.envelope = intern!(py, "logs").clone().into_any();
            let Some(merged) = logs_merged(&mut obj) else { return Ok(None) };
            return Ok(one(build(py, cfg, &r, &no_meta, &merged, 0, true, id_buf, keys)?, out));
        }
        Env::Jsonl | Env::AutoJsonl => {
            r.envelope = intern!(py, "jsonl").clone().into_any();
            let min_lines = if kind == Env::AutoJsonl { 2 } else { 1 };
            let done = jsonl(py, cfg, &r, &no_meta, value, first, min_lines, out, id_buf, keys)?;
            if done.is_none() {
                out.truncate(start);
            }
            return Ok(done.map(|()| false));
        }
        Env::Upload => {}
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
    if !types_ok(cfg, meta) {
        return Ok(None); // a bad meta: one dead letter for the record, from Python
    }
    r.envelope = intern!(py, "upload").clone().into_any();
    let m = Meta {
        meta,
        info: meta.iter().map(|(k, _)| (popped_key(k), cfg.text_index(k))).collect(),
        keys: meta.iter().map(|(k, _)| keys.get(py, k)).collect::<PyResult<_>>()?,
        vals: meta.iter().map(|(_, v)| to_py(py, v, keys)).collect::<PyResult<_>>()?,
        index: (meta.len() > HASH_AT).then(|| meta.iter().enumerate().map(|(n, (k, _))| (k.as_ref(), n)).collect()),
    };
    for (i, item) in data.iter().enumerate() {
        let J::Obj(item) = item else { unreachable!() };
        match build(py, cfg, &r, &m, item, i, false, id_buf, keys)? {
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
/// max_items, max_value, types=[(key, type name)], required=[event key]) -> (events, fallbacks, n_uploads)
///
/// `events`: the events of the records handled here, in record order. `fallbacks`: (record index,
/// position in `events` where that record's output belongs, uploads handled here before it) for
/// each record Python must unpack itself. `n_uploads`: upload records handled here (uploads.200).
#[pyfunction]
#[allow(clippy::too_many_arguments)]
#[pyo3(signature = (records, record_type, topics, topic_info, now, t_lo, t_hi, text_fields, max_chars,
                    max_items, max_value, types=Vec::new(), required=Vec::new()))]
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
    types: Vec<(String, String)>,
    required: Vec<String>,
) -> PyResult<(Bound<'py, PyList>, Vec<(usize, usize, usize)>, usize)> {
    let mut ty_masks = Vec::with_capacity(types.len());
    for (k, tname) in types {
        let mask = match tname.as_str() {
            "string" => TY_STR,
            "integer" => TY_INT,
            "number" => TY_INT | TY_FLOAT,
            "boolean" => TY_BOOL,
            "object" => TY_OBJ,
            "array" => TY_ARR,
            _ => return Err(PyTypeError::new_err(format!("types: unknown type {tname:?}"))),
        };
        ty_masks.push((k, mask));
    }
    let mut req = 0u16;
    for k in &required {
        match popped_key(k) {
            c @ (APP_ID | EVENT_NAME | PLATFORM | DEVICE_ID | DURATION_MS) if k != "name" && k != "type" => {
                req |= 1 << c
            }
            _ => return Err(PyTypeError::new_err(format!("required: {k:?} is not an event key"))),
        }
    }
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
        tfs.push((s.to_str()?.to_owned(), s.into_any()));
    }
    let mut ev_keys = Vec::with_capacity(EVENT_KEYS.len());
    for k in EVENT_KEYS {
        let s = PyString::intern(py, k).into_any();
        s.hash()?;
        ev_keys.push(s);
    }
    let tf_mask = tfs.iter().fold(0, |m, (tf, _)| m | 1 << (tf_hash(tf) & 63));
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
        none: py.None().into_bound(py),
        ev_keys,
        tf_mask,
        types: ty_masks,
        required: req,
    };
    let mut keys = Keys { map: HashMap::default() };
    let mut out: Vec<Bound<PyAny>> = Vec::with_capacity(recs.len() * 2);
    let mut fallbacks = Vec::new();
    let mut n_up = 0usize;
    let mut id_buf = Vec::with_capacity(128);
    for (ri, rec) in recs.iter().enumerate() {
        let start = out.len();
        match record(py, &cfg, rec, record_type, topics, topic_info, &mut out, &mut id_buf, &mut keys) {
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
    hs::register(m)?;
    rows::register(m)?;
    route::register(m)?;
    Ok(())
}
