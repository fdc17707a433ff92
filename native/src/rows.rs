//! Native fast path of transforms/clickhouse_rows.py's `event_rows` (the ClickHouse sink's row building).
//!
//! Only the common events are converted here: the same 21-value row tuples the Python fast path builds,
//! with `fields` and `attrs` serialized byte-for-byte as `orjson.dumps(x).decode()`. Any event this code
//! is not sure about (missing key, odd type, float or non-UTF-8 text in the JSON, ...) is handed back by
//! index and the Python code converts it (or fails it): the Python code stays the one definition.

use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString, PyTuple};

/// Deeper JSON goes to Python.
const MAX_DEPTH: u32 = 16;
/// Columns of the events table (transforms/clickhouse_rows.py EVENTS).
const NCOLS: usize = 21;

/// Why an event is not converted here: hand it back to Python, or a real error (memory).
pub(crate) enum Back {
    Hand,
    Err(PyErr),
}

impl From<PyErr> for Back {
    fn from(e: PyErr) -> Self {
        Back::Err(e)
    }
}

pub(crate) type R<T> = Result<T, Back>;

/// `d.get(k)` (None when missing); a lookup error hands the event back.
pub(crate) fn opt<'py>(d: &Bound<'py, PyDict>, k: &Bound<'py, PyString>) -> R<Option<Bound<'py, PyAny>>> {
    // SAFETY: valid dict and key; the borrowed result is made a new reference at once
    unsafe {
        let p = ffi::PyDict_GetItemWithError(d.as_ptr(), k.as_ptr());
        if p.is_null() {
            if !ffi::PyErr_Occurred().is_null() {
                ffi::PyErr_Clear();
                return Err(Back::Hand);
            }
            return Ok(None);
        }
        Ok(Some(Bound::from_borrowed_ptr(d.py(), p)))
    }
}

pub(crate) fn exact_dict<'py>(o: Bound<'py, PyAny>) -> R<Bound<'py, PyDict>> {
    // SAFETY: type check of a valid object
    if unsafe { ffi::PyDict_CheckExact(o.as_ptr()) } != 0 {
        // SAFETY: checked just above
        Ok(unsafe { o.cast_into_unchecked() })
    } else {
        Err(Back::Hand)
    }
}

/// UTF-8 of an exact str; a str that is not valid UTF-8 (lone surrogates) hands the event back.
///
/// SAFETY: `o` is a valid exact str that outlives the returned slice (the UTF-8 is cached in it).
pub(crate) unsafe fn utf8<'a>(o: *mut ffi::PyObject) -> R<&'a [u8]> {
    if ffi::PyUnicode_IS_COMPACT_ASCII(o) != 0 {
        let n = ffi::PyUnicode_GET_LENGTH(o) as usize;
        return Ok(std::slice::from_raw_parts(ffi::PyUnicode_1BYTE_DATA(o), n));
    }
    let mut n: ffi::Py_ssize_t = 0;
    let p = ffi::PyUnicode_AsUTF8AndSize(o, &mut n);
    if p.is_null() {
        ffi::PyErr_Clear();
        return Err(Back::Hand);
    }
    Ok(std::slice::from_raw_parts(p.cast::<u8>(), n as usize))
}

/// A JSON string as orjson writes it: `"`, `\` and control chars escaped, everything else raw.
fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let mut chunks = s.chunks_exact(8);
    let clean = chunks.by_ref().all(|c| super::special(u64::from_le_bytes(c.try_into().unwrap())) == 0)
        && chunks.remainder().iter().all(|&c| c >= 0x20 && c != b'"' && c != b'\\');
    if clean {
        out.extend_from_slice(s);
        out.push(b'"');
        return;
    }
    let mut start = 0;
    for (i, &c) in s.iter().enumerate() {
        let short = match c {
            b'"' => b'"',
            b'\\' => b'\\',
            b'\n' => b'n',
            b'\r' => b'r',
            b'\t' => b't',
            0x08 => b'b',
            0x0c => b'f',
            0..=0x1f => 0,
            _ => continue,
        };
        out.extend_from_slice(&s[start..i]);
        if short != 0 {
            out.extend_from_slice(&[b'\\', short]);
        } else {
            out.extend_from_slice(&[b'\\', b'u', b'0', b'0', HEX[(c >> 4) as usize], HEX[(c & 15) as usize]]);
        }
        start = i + 1;
    }
    out.extend_from_slice(&s[start..]);
    out.push(b'"');
}

fn put_int(out: &mut Vec<u8>, v: i64) {
    if v < 0 {
        out.push(b'-');
    }
    super::push_int(out, v.unsigned_abs());
}

/// `o` as orjson.dumps writes it, for exact str / int (i64) / bool / None / dict (exact str keys) / list.
///
/// SAFETY: `o` is a valid object; no Python code runs here (type checks, PyDict_Next, UTF-8 and int
/// conversions of exact types), so the borrowed items stay alive.
unsafe fn put(out: &mut Vec<u8>, o: *mut ffi::PyObject, depth: u32) -> R<()> {
    if ffi::PyUnicode_CheckExact(o) != 0 {
        put_str(out, utf8(o)?);
    } else if o == ffi::Py_None() {
        out.extend_from_slice(b"null");
    } else if o == ffi::Py_True() {
        out.extend_from_slice(b"true");
    } else if o == ffi::Py_False() {
        out.extend_from_slice(b"false");
    } else if ffi::PyLong_CheckExact(o) != 0 {
        let mut overflow = 0;
        let v = ffi::PyLong_AsLongLongAndOverflow(o, &mut overflow);
        if overflow != 0 || (v == -1 && !ffi::PyErr_Occurred().is_null()) {
            ffi::PyErr_Clear();
            return Err(Back::Hand);
        }
        put_int(out, v);
    } else if ffi::PyDict_CheckExact(o) != 0 {
        put_obj(out, o, depth + 1)?;
    } else if ffi::PyList_CheckExact(o) != 0 {
        if depth + 1 > MAX_DEPTH {
            return Err(Back::Hand);
        }
        out.push(b'[');
        let mut i = 0;
        while i < ffi::PyList_GET_SIZE(o) {
            if i > 0 {
                out.push(b',');
            }
            put(out, ffi::PyList_GET_ITEM(o, i), depth + 1)?;
            i += 1;
        }
        out.push(b']');
    } else {
        return Err(Back::Hand);
    }
    Ok(())
}

/// An exact dict as a JSON object.
///
/// SAFETY: as `put`; `d` is an exact dict.
unsafe fn put_obj(out: &mut Vec<u8>, d: *mut ffi::PyObject, depth: u32) -> R<()> {
    if depth > MAX_DEPTH {
        return Err(Back::Hand);
    }
    out.push(b'{');
    let mut pos: ffi::Py_ssize_t = 0;
    let mut k: *mut ffi::PyObject = std::ptr::null_mut();
    let mut v: *mut ffi::PyObject = std::ptr::null_mut();
    let mut first = true;
    while ffi::PyDict_Next(d, &mut pos, &mut k, &mut v) != 0 {
        if ffi::PyUnicode_CheckExact(k) == 0 {
            return Err(Back::Hand);
        }
        if !first {
            out.push(b',');
        }
        first = false;
        put_str(out, utf8(k)?);
        out.push(b':');
        put(out, v, depth)?;
    }
    out.push(b'}');
    Ok(())
}

/// `orjson.dumps(d).decode()` of an exact dict.
fn dumps<'py>(py: Python<'py>, d: &Bound<'py, PyDict>, buf: &mut Vec<u8>) -> R<Bound<'py, PyAny>> {
    buf.clear();
    // SAFETY: `d` is a valid exact dict, held by the caller
    unsafe { put_obj(buf, d.as_ptr(), 1)? };
    // SAFETY: the buffer is UTF-8: JSON punctuation plus the UTF-8 of Python strs
    Ok(super::new_str(py, unsafe { std::str::from_utf8_unchecked(buf) })?)
}

/// Truthiness of None / an exact str; anything else hands the event back (its __bool__ is Python's).
fn truthy_str(o: &Bound<'_, PyAny>) -> R<bool> {
    if o.is_none() {
        return Ok(false);
    }
    // SAFETY: type check and length of a valid object
    unsafe {
        if ffi::PyUnicode_CheckExact(o.as_ptr()) != 0 {
            return Ok(ffi::PyUnicode_GET_LENGTH(o.as_ptr()) != 0);
        }
    }
    Err(Back::Hand)
}

/// The event keys read, in the order the pipeline's events have them (so the scan below mostly hits at once).
const KEYS: [&str; NKEYS] = [
    "event_id", "event_time", "ingest_time", "app_id", "event_name", "platform", "device_id", "duration_ms",
    "fields", "attrs", "traceparent", "src", "category", "rule_id", "engine", "version",
];
const NKEYS: usize = 16;

type Slots<'py> = [Option<Bound<'py, PyAny>>; NKEYS];

/// One pass over the event's items, matching keys by identity with the interned KEYS (the keys of the
/// events unpack builds are interned); a key not matched here is looked up by the caller.
fn scan<'py>(py: Python<'py>, e: &Bound<'py, PyDict>, keys: &[Bound<'py, PyString>; NKEYS]) -> Slots<'py> {
    let mut v: Slots<'py> = Default::default();
    let mut pos: ffi::Py_ssize_t = 0;
    let mut k: *mut ffi::PyObject = std::ptr::null_mut();
    let mut val: *mut ffi::PyObject = std::ptr::null_mut();
    let mut next = 0;
    // SAFETY: no Python code runs during the iteration (pointer compares); values get new references
    unsafe {
        while ffi::PyDict_Next(e.as_ptr(), &mut pos, &mut k, &mut val) != 0 {
            let j = if keys[next].as_ptr() == k {
                next
            } else if let Some(j) = keys.iter().position(|x| x.as_ptr() == k) {
                j
            } else {
                continue;
            };
            v[j] = Some(Bound::from_borrowed_ptr(py, val));
            next = if j + 1 == NKEYS { 0 } else { j + 1 };
        }
    }
    v
}

/// The row of one event, exactly as the Python fast path builds it, or Back::Hand.
fn event_row<'py>(
    py: Python<'py>,
    e: &Bound<'py, PyAny>,
    keys: &[Bound<'py, PyString>; NKEYS],
    buf: &mut Vec<u8>,
) -> R<Bound<'py, PyTuple>> {
    let e = exact_dict(e.clone())?;
    let mut v = scan(py, &e, keys);
    // a key not found by identity (not interned): a plain lookup; missing -> hand back / None
    for (slot, k) in v.iter_mut().zip(keys.iter()) {
        if slot.is_none() {
            *slot = opt(&e, k)?;
        }
    }
    let [event_id, ms_obj, ingest, app_id, event_name, platform, device_id, duration, fields, attrs, traceparent,
        src, category, rule_id, engine, version] = v;
    let ms_obj = ms_obj.ok_or(Back::Hand)?;
    // SAFETY: type check of a valid object
    if unsafe { ffi::PyLong_CheckExact(ms_obj.as_ptr()) } == 0 {
        return Err(Back::Hand);
    }
    let mut overflow = 0;
    // SAFETY: an exact int
    let ms = unsafe { ffi::PyLong_AsLongLongAndOverflow(ms_obj.as_ptr(), &mut overflow) };
    if overflow != 0 || (ms == -1 && PyErr::take(py).is_some()) {
        return Err(Back::Hand);
    }
    let ingest = ingest.ok_or(Back::Hand)?;
    let fields = exact_dict(fields.ok_or(Back::Hand)?)?;
    let src = src.ok_or(Back::Hand)?;
    let src: [Bound<'py, PyAny>; 4] = {
        let p = src.as_ptr();
        // SAFETY: type checks, then items of an exact list/tuple of length 4 (new references)
        unsafe {
            if ffi::PyList_CheckExact(p) != 0 && ffi::PyList_GET_SIZE(p) == 4 {
                std::array::from_fn(|i| Bound::from_borrowed_ptr(py, ffi::PyList_GET_ITEM(p, i as ffi::Py_ssize_t)))
            } else if ffi::PyTuple_CheckExact(p) != 0 && ffi::PyTuple_GET_SIZE(p) == 4 {
                std::array::from_fn(|i| Bound::from_borrowed_ptr(py, ffi::PyTuple_GET_ITEM(p, i as ffi::Py_ssize_t)))
            } else {
                return Err(Back::Hand);
            }
        }
    };
    let event_id = event_id.ok_or(Back::Hand)?;
    let app_id = app_id.ok_or(Back::Hand)?;
    let event_name = event_name.ok_or(Back::Hand)?;
    let platform = platform.ok_or(Back::Hand)?;
    let device_id = device_id.ok_or(Back::Hand)?;
    let category = category.ok_or(Back::Hand)?;
    let rule_id = rule_id.ok_or(Back::Hand)?;
    let engine = engine.ok_or(Back::Hand)?;
    let duration = duration.unwrap_or_else(|| py.None().into_bound(py));
    // fields.get("message") or fields.get("content"): only an exact str is handled here
    let mut message = None;
    for k in [intern!(py, "message"), intern!(py, "content")] {
        if let Some(m) = opt(&fields, k)? {
            if truthy_str(&m)? {
                message = Some(m);
                break;
            }
        }
    }
    let message = message.ok_or(Back::Hand)?; // neither: _message(fields) is Python's
    let fields_json = dumps(py, &fields, buf)?;
    let attrs = exact_dict(attrs.ok_or(Back::Hand)?)?;
    let attrs_json = dumps(py, &attrs, buf)?;
    let traceparent = match traceparent {
        Some(t) if truthy_str(&t)? => t,
        _ => PyString::new(py, "").into_any(),
    };
    let version = version.unwrap_or_else(|| ingest.clone());
    let [src_topic, src_partition, src_offset, src_index] = src;
    let Ok(secs) = ms.div_euclid(1000).into_pyobject(py);
    let secs = secs.into_any();
    let items: [Bound<'py, PyAny>; NCOLS] = [
        event_id, secs, ms_obj, ingest, app_id, event_name, platform, device_id, category, rule_id, engine,
        duration, message, fields_json, attrs_json, traceparent, src_topic, src_partition, src_offset,
        src_index, version,
    ];
    // SAFETY: a new tuple of NCOLS slots, each set once with a new reference
    unsafe {
        let t = ffi::PyTuple_New(NCOLS as ffi::Py_ssize_t);
        if t.is_null() {
            return Err(PyErr::fetch(py).into());
        }
        let mut atoms = true;
        for (i, v) in items.into_iter().enumerate() {
            atoms &= ffi::PyType_HasFeature(ffi::Py_TYPE(v.as_ptr()), ffi::Py_TPFLAGS_HAVE_GC) == 0;
            ffi::PyTuple_SET_ITEM(t, i as ffi::Py_ssize_t, v.into_ptr());
        }
        if atoms {
            // as CPython's own GC does to such tuples (_PyTuple_MaybeUntrack): no cycle can go through it
            ffi::PyObject_GC_UnTrack(t.cast());
        }
        Ok(Bound::from_owned_ptr(py, t).cast_into_unchecked())
    }
}

/// Rows of the events this code converts (in input order), and the indices of the events handed back
/// to the Python code (transforms/clickhouse_rows.py converts or fails them).
#[pyfunction]
pub fn event_rows<'py>(events: &Bound<'py, PyList>) -> PyResult<(Bound<'py, PyList>, Vec<usize>)> {
    let py = events.py();
    let rows = PyList::empty(py);
    let mut back = Vec::new();
    let mut buf = Vec::with_capacity(1024);
    let keys: [Bound<'py, PyString>; NKEYS] = std::array::from_fn(|i| PyString::intern(py, KEYS[i]));
    for (i, e) in events.iter().enumerate() {
        match event_row(py, &e, &keys, &mut buf) {
            Ok(row) => rows.append(row)?,
            Err(Back::Hand) => back.push(i),
            Err(Back::Err(err)) => return Err(err),
        }
    }
    Ok((rows, back))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(event_rows, m)?)?;
    Ok(())
}
