//! Native fast path of `Classifier.classify_batch` (transforms/classify.py).
//!
//! The same decision as the Python loop, for events whose text fields are all ASCII `str`: one
//! Hyperscan scan per field (Debian's libhs, database compiled here from the expressions, ids and
//! flags the Python side compiled), the smallest allowed hit wins, prefilter hits and `re`-only rules
//! are confirmed by calling the rules' compiled Python regexes. Any other event (non-ASCII or non-str
//! text, `fields` not a dict) is handed back so Python decides it: Python stays the one definition.
//! Saves the per-match Python callback and the per-field `encode()` of the Python loop.

use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_uint, c_ulonglong, c_void, CStr, CString};
use std::ptr;

use pyo3::exceptions::PyValueError;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString};

#[repr(C)]
struct HsDatabase {
    _p: [u8; 0],
}
#[repr(C)]
struct HsScratch {
    _p: [u8; 0],
}
#[repr(C)]
struct HsCompileError {
    message: *const c_char,
    expression: c_int,
}

type MatchHandler = unsafe extern "C" fn(c_uint, c_ulonglong, c_ulonglong, c_uint, *mut c_void) -> c_int;

#[link(name = "hs")]
extern "C" {
    fn hs_compile_multi(
        expressions: *const *const c_char,
        flags: *const c_uint,
        ids: *const c_uint,
        elements: c_uint,
        mode: c_uint,
        platform: *const c_void,
        db: *mut *mut HsDatabase,
        error: *mut *mut HsCompileError,
    ) -> c_int;
    fn hs_free_compile_error(error: *mut HsCompileError) -> c_int;
    fn hs_free_database(db: *mut HsDatabase) -> c_int;
    fn hs_alloc_scratch(db: *const HsDatabase, scratch: *mut *mut HsScratch) -> c_int;
    fn hs_free_scratch(scratch: *mut HsScratch) -> c_int;
    fn hs_scan(
        db: *const HsDatabase,
        data: *const c_char,
        length: c_uint,
        flags: c_uint,
        scratch: *mut HsScratch,
        on_event: Option<MatchHandler>,
        context: *mut c_void,
    ) -> c_int;
    fn hs_version() -> *const c_char;
}

const HS_MODE_BLOCK: c_uint = 1;

unsafe extern "C" fn on_match(id: c_uint, _from: c_ulonglong, _to: c_ulonglong, _flags: c_uint, ctx: *mut c_void) -> c_int {
    // SAFETY: ctx is the &mut Vec<u32> passed to hs_scan by `scan`, alive for the call
    unsafe { (*(ctx as *mut Vec<u32>)).push(id) };
    0
}

/// `fields` restriction of each rank: `None` = every field.
type Allowed = Option<Vec<String>>;

/// The compiled database and its scratch space.
struct Hs {
    db: *mut HsDatabase,
    scratch: *mut HsScratch,
}

// SAFETY: the database is read-only once compiled (Hyperscan allows sharing it between threads); the scratch
// is only used by `HsClassifier::scan`, through `&mut self`, which PyO3's borrow checking gives to one caller
// at a time. Beam runs a DoFn's bundles one at a time but not always on the same thread (the SDK harness's
// thread pool on Prism): an `unsendable` class panicked there when a bundle ran on another thread.
unsafe impl Send for Hs {}
unsafe impl Sync for Hs {}

#[pyclass]
pub struct HsClassifier {
    hs: Hs,
    /// The "no match" rank.
    none: usize,
    /// Per rank: `search` of the rule's regex when a Hyperscan hit is only a prefilter hit.
    confirm: Vec<Option<Py<PyAny>>>,
    /// Rules that run on `re` for ASCII text, in rank order: (rank, `search`, allowed fields).
    re_items: Vec<(usize, Py<PyAny>, Allowed)>,
    allowed: Vec<Allowed>,
    restricted: bool,
    /// Per field name: 1 per rank allowed in it.
    tables: HashMap<String, Vec<u8>>,
    /// Per rank: (category, rule_id) and the engine strings.
    names: Vec<(Py<PyAny>, Py<PyAny>)>,
    eng_hs: Py<PyAny>,
    eng_re: Py<PyAny>,
    default: (Py<PyAny>, Py<PyAny>, Py<PyAny>),
    keys: [Py<PyAny>; 4], // fields, category, rule_id, engine
    hits: Vec<u32>,
}

impl Drop for HsClassifier {
    fn drop(&mut self) {
        // SAFETY: allocated by hs_alloc_scratch / hs_compile_multi, freed once
        unsafe {
            hs_free_scratch(self.hs.scratch);
            hs_free_database(self.hs.db);
        }
    }
}

/// What a field's value asks for: nothing (empty or falsy), a scan of its ASCII bytes, or Python.
enum Field {
    Skip,
    Ascii(*const u8, usize),
    Python,
}

#[inline]
fn field_kind(v: &Bound<'_, PyAny>) -> PyResult<Field> {
    let p = v.as_ptr();
    // SAFETY: p is a live object; the unicode accessors are used on exact str only
    unsafe {
        if ffi::PyUnicode_CheckExact(p) != 0 {
            let n = ffi::PyUnicode_GET_LENGTH(p) as usize;
            if n == 0 {
                return Ok(Field::Skip);
            }
            if ffi::PyUnicode_IS_COMPACT_ASCII(p) != 0 {
                return Ok(Field::Ascii(ffi::PyUnicode_1BYTE_DATA(p), n));
            }
            return Ok(Field::Python);
        }
    }
    Ok(if v.is_truthy()? { Field::Python } else { Field::Skip })
}

impl HsClassifier {
    fn scan(&mut self, data: *const u8, len: usize) -> PyResult<()> {
        self.hits.clear();
        // SAFETY: db and scratch are valid; data points at len bytes kept alive by the caller
        let rc = unsafe {
            hs_scan(self.hs.db, data.cast(), len as c_uint, 0, self.hs.scratch, Some(on_match),
                    (&mut self.hits as *mut Vec<u32>).cast())
        };
        if rc != 0 {
            return Err(PyValueError::new_err(format!("hs_scan failed: error {rc}")));
        }
        Ok(())
    }

    fn table(&mut self, name: &str) -> &[u8] {
        if !self.tables.contains_key(name) {
            let t = self.allowed.iter()
                .map(|a| a.as_ref().is_none_or(|fs| fs.iter().any(|f| f == name)) as u8)
                .collect();
            self.tables.insert(name.to_owned(), t);
        }
        &self.tables[name]
    }

    /// Best of the hits below `limit`: (rank, confirmed by re). `use_table`: drop hits of rules
    /// restricted to other fields (Classifier._pick).
    fn pick(&mut self, py: Python<'_>, text: &Bound<'_, PyAny>, name: &str, limit: usize,
            use_table: bool) -> PyResult<(usize, bool)> {
        let mut hits = std::mem::take(&mut self.hits);
        hits.sort_unstable();
        let mut found = (limit, false);
        for &h in &hits {
            let h = h as usize;
            if h >= limit {
                break;
            }
            if use_table && self.table(name)[h] == 0 {
                continue;
            }
            match &self.confirm[h] {
                None => {
                    found = (h, false);
                    break;
                }
                Some(search) => {
                    if search.bind(py).call1((text,))?.is_truthy()? {
                        found = (h, true);
                        break;
                    }
                }
            }
        }
        self.hits = hits;
        Ok(found)
    }

    /// The event's (best rank, by re), or None when Python must decide it.
    fn best(&mut self, py: Python<'_>, fields: &Bound<'_, PyDict>) -> PyResult<Option<(usize, bool)>> {
        let mut best = self.none;
        let mut via_re = false;
        for (name, text) in fields.iter() {
            let (data, len) = match field_kind(&text)? {
                Field::Skip => continue,
                Field::Python => return Ok(None),
                Field::Ascii(d, n) => (d, n),
            };
            let name_str;
            let name_ref: &str = if self.restricted || !self.re_items.is_empty() {
                match name.cast::<PyString>() {
                    Ok(s) => {
                        name_str = s;
                        name_str.to_str()?
                    }
                    Err(_) => return Ok(None),
                }
            } else {
                ""
            };
            self.scan(data, len)?;
            if let Some(&k) = self.hits.iter().min() {
                let k = k as usize;
                let restricted_out = self.restricted && self.table(name_ref)[k] == 0;
                if self.confirm[k].is_some() || restricted_out {
                    let (k, by_re) = self.pick(py, &text, name_ref, best, self.restricted)?;
                    if k < best {
                        best = k;
                        via_re = by_re;
                    }
                } else if k < best {
                    best = k;
                    via_re = false;
                }
            }
            for (k, search, allowed) in &self.re_items {
                if *k >= best {
                    break;
                }
                let ok = allowed.as_ref().is_none_or(|fs| fs.iter().any(|f| f == name_ref));
                if ok && search.bind(py).call1((&text,))?.is_truthy()? {
                    best = *k;
                    via_re = true;
                    break;
                }
            }
        }
        Ok(Some((best, via_re)))
    }
}

fn hs_error(err: *mut HsCompileError) -> String {
    if err.is_null() {
        return "unknown error".into();
    }
    // SAFETY: err is a compile error from hs_compile_multi, freed once here
    unsafe {
        let msg = CStr::from_ptr((*err).message).to_string_lossy().into_owned();
        let at = (*err).expression;
        hs_free_compile_error(err);
        if at >= 0 { format!("expression {at}: {msg}") } else { msg }
    }
}

#[pymethods]
impl HsClassifier {
    /// `expressions`/`ids`/`flags`: the database's patterns as given to python-hyperscan (ids =
    /// ranks). `confirm`: per rank, `search` of the regex when its hits must be confirmed, else None.
    /// `re_items`: (rank, search, allowed fields or None) run on `re`. `allowed`: per rank, the
    /// fields it may match in, or None. `results`: per rank (category, rule_id). `default`:
    /// (category, rule_id, engine) of no match.
    #[new]
    #[allow(clippy::too_many_arguments)]
    fn new(py: Python<'_>, expressions: Vec<Vec<u8>>, ids: Vec<u32>, flags: Vec<u32>,
           confirm: Vec<Option<Py<PyAny>>>, re_items: Vec<(usize, Py<PyAny>, Allowed)>,
           allowed: Vec<Allowed>, results: Vec<(Py<PyAny>, Py<PyAny>)>,
           default: (Py<PyAny>, Py<PyAny>, Py<PyAny>)) -> PyResult<Self> {
        let none = results.len();
        if confirm.len() != none || allowed.len() != none {
            return Err(PyValueError::new_err("confirm, allowed and results need one entry per rank"));
        }
        if expressions.is_empty() || ids.len() != expressions.len() || flags.len() != expressions.len() {
            return Err(PyValueError::new_err("expressions, ids and flags: same non-zero length"));
        }
        if ids.iter().any(|&i| i as usize >= none) || re_items.iter().any(|(k, _, _)| *k >= none) {
            return Err(PyValueError::new_err("a rank out of range"));
        }
        let cs: Vec<CString> = expressions.into_iter().map(CString::new).collect::<Result<_, _>>()
            .map_err(|_| PyValueError::new_err("an expression holds a NUL byte"))?;
        let ptrs: Vec<*const c_char> = cs.iter().map(|c| c.as_ptr()).collect();
        let mut db = ptr::null_mut();
        let mut err = ptr::null_mut();
        // SAFETY: arrays of `elements` entries, alive for the call
        let rc = unsafe {
            hs_compile_multi(ptrs.as_ptr(), flags.as_ptr(), ids.as_ptr(), ptrs.len() as c_uint,
                             HS_MODE_BLOCK, ptr::null(), &mut db, &mut err)
        };
        if rc != 0 {
            return Err(PyValueError::new_err(format!("hs_compile_multi: {}", hs_error(err))));
        }
        let mut scratch = ptr::null_mut();
        // SAFETY: db was just compiled
        if unsafe { hs_alloc_scratch(db, &mut scratch) } != 0 {
            unsafe { hs_free_database(db) };
            return Err(PyValueError::new_err("hs_alloc_scratch failed"));
        }
        let mut re_items = re_items;
        re_items.sort_by_key(|(k, _, _)| *k);
        let s = |t: &str| PyString::intern(py, t).into_any().unbind();
        Ok(HsClassifier {
            hs: Hs { db, scratch },
            none,
            confirm,
            re_items,
            restricted: allowed.iter().any(|a| a.is_some()),
            allowed,
            tables: HashMap::new(),
            names: results,
            eng_hs: s("hyperscan"),
            eng_re: s("re"),
            default,
            keys: [s("fields"), s("category"), s("rule_id"), s("engine")],
            hits: Vec::with_capacity(16),
        })
    }

    /// Annotate `events` (a list of dicts) with category, rule_id and engine: in place, or on
    /// copies. Returns (the annotated events in order, indices Python must classify itself; the
    /// list holds the untouched input event at those).
    fn classify<'py>(&mut self, py: Python<'py>, events: &Bound<'py, PyList>, inplace: bool)
                     -> PyResult<(Bound<'py, PyList>, Vec<usize>)> {
        let mut out: Vec<Bound<'py, PyAny>> = Vec::with_capacity(events.len());
        let mut back = Vec::new();
        let keys: Vec<Bound<'py, PyAny>> = self.keys.iter().map(|k| k.bind(py).clone()).collect();
        for (i, ev) in events.iter().enumerate() {
            let decided = match ev.cast::<PyDict>() {
                Ok(d) => match d.get_item(&keys[0])? {
                    Some(f) => match f.cast::<PyDict>() {
                        Ok(fd) => self.best(py, fd)?,
                        Err(_) => None,
                    },
                    None => None,
                },
                Err(_) => None,
            };
            let Some((best, via_re)) = decided else {
                back.push(i);
                out.push(ev);
                continue;
            };
            let (cat, rid, eng) = if best >= self.none {
                (self.default.0.bind(py), self.default.1.bind(py), self.default.2.bind(py))
            } else {
                let (c, r) = &self.names[best];
                (c.bind(py), r.bind(py), if via_re { self.eng_re.bind(py) } else { self.eng_hs.bind(py) })
            };
            // SAFETY: cast checked above (decided is Some only for dicts)
            let d: Bound<'py, PyDict> = if inplace {
                unsafe { ev.cast_into_unchecked() }
            } else {
                unsafe { ev.cast_unchecked::<PyDict>() }.copy()?
            };
            d.set_item(&keys[1], cat)?;
            d.set_item(&keys[2], rid)?;
            d.set_item(&keys[3], eng)?;
            out.push(d.into_any());
        }
        Ok((PyList::new(py, out)?, back))
    }
}

/// The linked Hyperscan library's version string.
#[pyfunction]
pub fn hs_library_version() -> String {
    // SAFETY: a static NUL-terminated string
    unsafe { CStr::from_ptr(hs_version()) }.to_string_lossy().into_owned()
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<HsClassifier>()?;
    m.add_function(wrap_pyfunction!(hs_library_version, m)?)?;
    Ok(())
}
