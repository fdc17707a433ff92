//! Native fast path of transforms/route.py's `_EventsToMessagesFn` (classified event -> KafkaMessage).
//!
//! For each common event: the category's topic from the caller's cache, key = app_id's UTF-8, value =
//! `orjson.dumps(event)` (called from here: orjson's writer is faster than any we would write), and a
//! child `traceparent` header when the event carries a valid version-00 W3C traceparent. Anything else
//! (a category not in the cache yet, another traceparent form, odd types, an event orjson rejects, ...)
//! is handed back by index and route.py builds that message: the Python code stays the one definition.

use std::cell::Cell;
use std::hash::{BuildHasher, Hasher};

use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple, PyType};

use crate::rows::{exact_dict, opt, utf8, Back, R};

thread_local! {
    // span ids need uniqueness, not unpredictability (as route.py's random.getrandbits)
    static RNG: Cell<u64> = Cell::new(std::collections::hash_map::RandomState::new().build_hasher().finish());
}

/// splitmix64: a new 64-bit span id, never 0 (an all-zero span id is invalid).
fn span_id() -> u64 {
    RNG.with(|s| {
        let x = s.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        s.set(x);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)).max(1)
    })
}

/// The child of a valid `00-<32 hex>-<16 hex>-<2 hex>` traceparent (the only form unpack lets through:
/// lib.rs's valid_traceparent); anything else, including surrounding whitespace and other versions, goes
/// back to transforms/tracing.py.
fn child_traceparent(p: &[u8]) -> R<[u8; 55]> {
    if !crate::valid_traceparent(p) {
        return Err(Back::Hand);
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    // the parent's version and trace id, a new span id, and of its flags only the sampled bit (the low
    // bit of the last hex digit)
    let mut out: [u8; 55] = p.try_into().map_err(|_| Back::Hand)?;
    let id = span_id();
    for (i, o) in out[36..52].iter_mut().enumerate() {
        *o = HEX[((id >> (60 - 4 * i)) & 15) as usize];
    }
    let last = out[54];
    let digit = if last.is_ascii_digit() { last - b'0' } else { last - b'a' + 10 };
    out[53] = b'0';
    out[54] = b'0' + (digit & 1);
    Ok(out)
}

fn message<'py>(
    py: Python<'py>,
    e: &Bound<'py, PyAny>,
    topics: &Bound<'py, PyDict>,
    dumps: &Bound<'py, PyAny>,
    message_type: &Bound<'py, PyType>,
) -> R<Bound<'py, PyAny>> {
    let e = exact_dict(e.clone())?;
    let category = opt(&e, intern!(py, "category"))?.ok_or(Back::Hand)?;
    if !category.is_exact_instance_of::<PyString>() {
        return Err(Back::Hand);
    }
    let topic = topics.get_item(&category).map_err(|_| Back::Hand)?.ok_or(Back::Hand)?;
    if !topic.is_exact_instance_of::<PyString>() {
        return Err(Back::Hand);
    }
    let app_id = opt(&e, intern!(py, "app_id"))?.ok_or(Back::Hand)?;
    if !app_id.is_exact_instance_of::<PyString>() {
        return Err(Back::Hand);
    }
    // SAFETY: an exact str, alive while the slice is used
    let key = PyBytes::new(py, unsafe { utf8(app_id.as_ptr())? });
    let headers = match opt(&e, intern!(py, "traceparent"))? {
        None => PyTuple::empty(py),
        Some(tp) if tp.is_none() => PyTuple::empty(py),
        Some(tp) if tp.is_exact_instance_of::<PyString>() => {
            // SAFETY: as above
            let raw = unsafe { utf8(tp.as_ptr())? };
            if raw.is_empty() {
                PyTuple::empty(py)
            } else {
                let child = PyBytes::new(py, &child_traceparent(raw)?);
                PyTuple::new(py, [PyTuple::new(py, [intern!(py, "traceparent").as_any(), child.as_any()])?])?
            }
        }
        Some(_) => return Err(Back::Hand),
    };
    // SAFETY: a one-argument call of a valid callable; an error (orjson rejects the event) hands it back
    let value = unsafe {
        let v = ffi::PyObject_CallOneArg(dumps.as_ptr(), e.as_ptr());
        if v.is_null() {
            ffi::PyErr_Clear();
            return Err(Back::Hand);
        }
        Bound::from_owned_ptr(py, v)
    };
    let items = [topic, key.into_any(), value, headers.into_any()];
    // KafkaMessage(*items) as tuple.__new__ builds a subclass instance (tuple_subtype_new): tp_alloc of
    // the NamedTuple type (a tuple layout: __slots__ = ()), then the items. No Python-level __new__ call.
    // SAFETY: `message_type` is a tuple subclass without extra fields (checked by route_messages)
    unsafe {
        let t = message_type.as_ptr().cast::<ffi::PyTypeObject>();
        let alloc = (*t).tp_alloc.ok_or(Back::Hand)?;
        let m = alloc(t, 4);
        if m.is_null() {
            return Err(PyErr::fetch(py).into());
        }
        for (i, v) in items.into_iter().enumerate() {
            ffi::PyTuple_SET_ITEM(m, i as ffi::Py_ssize_t, v.into_ptr());
        }
        Ok(Bound::from_owned_ptr(py, m))
    }
}

/// Messages for `events` (a list the length of `events`, None where handed back) and the indices handed
/// back. `topics`: category -> topic (route.py's cache); `dumps`: orjson.dumps; `message_type`:
/// KafkaMessage (a NamedTuple of 4 fields).
#[pyfunction]
pub fn route_messages<'py>(
    events: &Bound<'py, PyList>,
    topics: &Bound<'py, PyDict>,
    dumps: &Bound<'py, PyAny>,
    message_type: &Bound<'py, PyType>,
) -> PyResult<(Bound<'py, PyList>, Vec<usize>)> {
    let py = events.py();
    let tuple_type = py.get_type::<PyTuple>();
    // tp_alloc below writes a tuple layout: only a tuple subclass with no fields of its own qualifies
    // SAFETY: reading the type's size fields
    let plain = unsafe {
        let t = message_type.as_ptr().cast::<ffi::PyTypeObject>();
        let base = tuple_type.as_ptr().cast::<ffi::PyTypeObject>();
        (*t).tp_basicsize == (*base).tp_basicsize && (*t).tp_itemsize == (*base).tp_itemsize
    };
    if !message_type.is_subclass(&tuple_type)? || !plain {
        return Err(pyo3::exceptions::PyTypeError::new_err("message_type must be a NamedTuple type"));
    }
    let out = PyList::empty(py);
    let mut back = Vec::new();
    for (i, e) in events.iter().enumerate() {
        match message(py, &e, topics, dumps, message_type) {
            Ok(m) => out.append(m)?,
            Err(Back::Hand) => {
                back.push(i);
                out.append(py.None())?;
            }
            Err(Back::Err(err)) => return Err(err),
        }
    }
    Ok((out, back))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(route_messages, m)?)?;
    Ok(())
}
