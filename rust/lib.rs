//! kernel-connect's Rust core.
//!
//! The logic lives in plain-Rust modules (testable with `cargo test`, no Python);
//! the `python` feature adds the `_native` extension module below, a thin layer
//! that converts arguments, releases the GIL around socket and file work, and
//! maps [`error::Error`] to Python exceptions in one place.

pub mod connfile;
pub mod error;
pub mod ifaddrs;
pub mod json;
pub mod jsonparse;
pub mod owners;
pub mod ports;
pub mod process;
pub mod scan;
pub mod sigbus;
pub mod slot;
pub mod table_file;

#[cfg(feature = "python")]
mod bindings {
    use std::path::{Path, PathBuf};
    use std::sync::Arc;

    use pyo3::create_exception;
    use pyo3::exceptions::{PyOSError, PyRuntimeError, PyTypeError, PyValueError};
    use pyo3::prelude::*;
    use pyo3::sync::PyOnceLock;
    use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};

    use crate::connfile::{self, ConnectionInfo};
    use crate::error::Error;
    use crate::json::{Text, Value};
    use crate::ports::{Kind, PortTable};
    use crate::scan;
    use crate::table_file::Access;

    /// Run a binding's body so that a Rust panic (a bug) reaches Python as an
    /// ordinary RuntimeError, which `except Exception` catches, instead of
    /// pyo3's PanicException (a BaseException). The payload is not quoted: a
    /// panic message can carry the data being handled, keys included.
    fn guarded<T>(body: impl FnOnce() -> PyResult<T>) -> PyResult<T> {
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
            Ok(result) => result,
            Err(_) => Err(PyRuntimeError::new_err(
                "internal error in kernel-connect's Rust core (a bug: please report it)",
            )),
        }
    }

    /// Panics in this crate print where they happened, never their message
    /// (which can quote a key); other panics go to the hook that was there.
    fn quiet_panics() {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                let ours = info
                    .location()
                    .is_some_and(|l| l.file().starts_with("rust/"));
                if ours {
                    if let Some(location) = info.location() {
                        eprintln!(
                            "kernel-connect: internal error at {}:{}",
                            location.file(),
                            location.line()
                        );
                    }
                } else {
                    previous(info);
                }
            }));
        });
    }

    create_exception!(
        _native,
        ConnectionFileError,
        PyValueError,
        "A connection file or connection info is invalid. `path` and `field` say where."
    );

    /// The one place core errors become Python exceptions.
    fn to_py(py: Python<'_>, err: Error) -> PyErr {
        let message = err.to_string();
        match err {
            Error::ConnectionFile { path, field, .. } => {
                let exc = ConnectionFileError::new_err(message);
                let value = exc.value(py);
                let path = path.map(|p| p.to_string_lossy().into_owned());
                // Attribute assignment on a fresh exception instance cannot fail
                // in practice; if it did, the message still says everything.
                let _ = value.setattr("path", path);
                let _ = value.setattr("field", field);
                exc
            }
            Error::Io {
                ref source,
                ref path,
                ..
            } => {
                let errno = source.raw_os_error().unwrap_or(0);
                match path {
                    Some(p) => {
                        PyOSError::new_err((errno, message, p.to_string_lossy().into_owned()))
                    }
                    None => PyOSError::new_err((errno, message)),
                }
            }
            Error::NoFreePort { .. } => PyOSError::new_err((libc::EADDRINUSE, message)),
            Error::InvalidArgument(_) => PyValueError::new_err(message),
        }
    }

    /// Digests usable as `hmac-<digest>`: hashlib attributes that hmac accepts,
    /// which is what jupyter_client's Session accepts. Computed once.
    fn digests(py: Python<'_>) -> PyResult<&'static Vec<String>> {
        static DIGESTS: PyOnceLock<Vec<String>> = PyOnceLock::new();
        DIGESTS.get_or_try_init(py, || {
            let hashlib = py.import("hashlib")?;
            let hmac = py.import("hmac")?;
            let mut names: Vec<String> = hashlib
                .getattr("algorithms_guaranteed")?
                .try_iter()?
                .map(|n| n.and_then(|n| n.extract::<String>()))
                .collect::<PyResult<_>>()?;
            names.sort();
            let mut usable = Vec::new();
            for name in names {
                let Ok(constructor) = hashlib.getattr(name.as_str()) else {
                    continue;
                };
                let works = hmac
                    .call_method1(
                        "new",
                        (pyo3::types::PyBytes::new(py, b"k"), py.None(), constructor),
                    )
                    .and_then(|mac| mac.call_method0("hexdigest"))
                    .is_ok();
                if works {
                    usable.push(name);
                }
            }
            Ok(usable)
        })
    }

    /// A Python object as a JSON value, following `json.dumps`' rules
    /// (bool before int, tuples as lists, non-string keys coerced).
    fn to_value(obj: &Bound<'_, PyAny>, depth: usize) -> PyResult<Value> {
        if depth > 200 {
            return Err(PyValueError::new_err("connection info nests too deeply"));
        }
        if obj.is_none() {
            return Ok(Value::Null);
        }
        if let Ok(b) = obj.cast::<PyBool>() {
            return Ok(Value::Bool(b.is_true()));
        }
        if obj.is_instance_of::<PyInt>() {
            return Ok(Value::Int(
                obj.call_method0("__index__")?.str()?.to_string(),
            ));
        }
        if let Ok(f) = obj.cast::<PyFloat>() {
            return Ok(Value::Float(f.value()));
        }
        if let Ok(s) = obj.cast::<PyString>() {
            return Ok(Value::Str(text_of(s)?));
        }
        if let Ok(d) = obj.cast::<PyDict>() {
            let mut entries = Vec::with_capacity(d.len());
            for (k, v) in d.iter() {
                entries.push((key_string(&k)?, to_value(&v, depth + 1)?));
            }
            return Ok(Value::Object(entries));
        }
        if obj.is_instance_of::<PyList>() || obj.is_instance_of::<PyTuple>() {
            let items = obj
                .try_iter()?
                .map(|item| to_value(&item?, depth + 1))
                .collect::<PyResult<Vec<_>>>()?;
            return Ok(Value::List(items));
        }
        Err(PyTypeError::new_err(format!(
            "Object of type {} is not JSON serializable",
            obj.get_type().name()?
        )))
    }

    /// A Python str as [`Text`]: lone surrogates kept, as `json.dumps` keeps
    /// them (it writes each as a `\udXXX` escape).
    fn text_of(s: &Bound<'_, PyString>) -> PyResult<Text> {
        if let Ok(utf8) = s.to_str() {
            return Ok(utf8.into());
        }
        let encoded = s.call_method1("encode", ("utf-8", "surrogatepass"))?;
        let bytes = encoded.cast::<PyBytes>()?.as_bytes().to_vec();
        Text::from_surrogatepass(bytes)
            .ok_or_else(|| PyValueError::new_err("a str that surrogatepass cannot encode"))
    }

    /// [`Text`] as a Python str: `bytes.decode("utf-8", "surrogatepass")`.
    fn str_of<'py>(py: Python<'py>, text: &Text) -> PyResult<Bound<'py, PyAny>> {
        match text.as_str() {
            Some(s) => Ok(PyString::new(py, s).into_any()),
            None => {
                PyBytes::new(py, text.as_bytes()).call_method1("decode", ("utf-8", "surrogatepass"))
            }
        }
    }

    /// `json.dumps` key coercion: str as is; int, float, bool, None as JSON text.
    fn key_string(key: &Bound<'_, PyAny>) -> PyResult<Text> {
        if let Ok(s) = key.cast::<PyString>() {
            return text_of(s);
        }
        let value = to_value(key, 0)?;
        match value {
            Value::Null => Ok("null".into()),
            Value::Bool(b) => Ok(if b { "true" } else { "false" }.into()),
            Value::Int(digits) => Ok(digits.into()),
            Value::Float(f) => {
                let mut s = String::new();
                crate::json::write_float(&mut s, f);
                Ok(s.into())
            }
            _ => Err(PyTypeError::new_err(format!(
                "keys must be str, int, float, bool or None, not {}",
                key.get_type().name()?
            ))),
        }
    }

    /// An integer's digits as a Python int. The reader already refused more
    /// digits than CPython's default limit; an interpreter set to a lower one
    /// (`sys.set_int_max_str_digits`) refuses here, as `json.loads` would, with
    /// a ConnectionFileError that names the file.
    fn int_of<'py>(
        py: Python<'py>,
        digits: &str,
        path: Option<&Path>,
    ) -> PyResult<Bound<'py, PyAny>> {
        if digits.len() <= 18 {
            if let Ok(small) = digits.parse::<i64>() {
                return Ok(small.into_pyobject(py)?.into_any());
            }
        }
        py.get_type::<PyInt>().call1((digits,)).map_err(|_| {
            let count = digits.trim_start_matches('-').len();
            let err = Error::file(format!(
                "an integer of {count} digits: more than this interpreter's \
                     sys.get_int_max_str_digits() allows"
            ));
            to_py(
                py,
                match path {
                    Some(p) => err.in_file(p),
                    None => err,
                },
            )
        })
    }

    fn to_object<'py>(
        py: Python<'py>,
        value: &Value,
        path: Option<&Path>,
    ) -> PyResult<Bound<'py, PyAny>> {
        Ok(match value {
            Value::Null => py.None().into_bound(py),
            Value::Bool(b) => PyBool::new(py, *b).to_owned().into_any(),
            Value::Int(digits) => int_of(py, digits, path)?,
            Value::Float(f) => PyFloat::new(py, *f).into_any(),
            Value::Str(text) => str_of(py, text)?,
            Value::List(items) => {
                let objects = items
                    .iter()
                    .map(|item| to_object(py, item, path))
                    .collect::<PyResult<Vec<_>>>()?;
                PyList::new(py, objects)?.into_any()
            }
            Value::Object(entries) => {
                let dict = PyDict::new(py);
                for (k, v) in entries {
                    dict.set_item(str_of(py, k)?, to_object(py, v, path)?)?;
                }
                dict.into_any()
            }
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn build_info(
        ports: [u16; 5],
        ip: String,
        key: String,
        transport: String,
        signature_scheme: String,
        kernel_name: String,
        curve_publickey: Option<String>,
        curve_secretkey: Option<String>,
        extra: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<ConnectionInfo> {
        let extra = match extra {
            None => Vec::new(),
            Some(d) => match to_value(d.as_any(), 0)? {
                Value::Object(entries) => entries,
                _ => Vec::new(),
            },
        };
        Ok(ConnectionInfo {
            ports,
            ip,
            key,
            transport,
            signature_scheme,
            kernel_name,
            curve_publickey,
            curve_secretkey,
            extra,
        })
    }

    /// Render connection info exactly as jupyter_client's write_connection_file
    /// would (validated; ports in shell, iopub, stdin, control, hb order).
    #[pyfunction]
    #[pyo3(signature = (ports, ip, key, transport, signature_scheme, kernel_name, curve_publickey=None, curve_secretkey=None, extra=None))]
    #[allow(clippy::too_many_arguments)]
    fn format_connection_info(
        py: Python<'_>,
        ports: [u16; 5],
        ip: String,
        key: String,
        transport: String,
        signature_scheme: String,
        kernel_name: String,
        curve_publickey: Option<String>,
        curve_secretkey: Option<String>,
        extra: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<String> {
        guarded(|| {
            let info = build_info(
                ports,
                ip,
                key,
                transport,
                signature_scheme,
                kernel_name,
                curve_publickey,
                curve_secretkey,
                extra,
            )?;
            info.to_json(digests(py)?).map_err(|e| to_py(py, e))
        })
    }

    /// Validate and write a connection file atomically (0600, temp + rename).
    #[pyfunction]
    #[pyo3(signature = (path, ports, ip, key, transport, signature_scheme, kernel_name, curve_publickey=None, curve_secretkey=None, extra=None))]
    #[allow(clippy::too_many_arguments)]
    fn write_connection_file(
        py: Python<'_>,
        path: PathBuf,
        ports: [u16; 5],
        ip: String,
        key: String,
        transport: String,
        signature_scheme: String,
        kernel_name: String,
        curve_publickey: Option<String>,
        curve_secretkey: Option<String>,
        extra: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<()> {
        guarded(|| {
            let info = build_info(
                ports,
                ip,
                key,
                transport,
                signature_scheme,
                kernel_name,
                curve_publickey,
                curve_secretkey,
                extra,
            )?;
            let digests = digests(py)?;
            py.detach(|| connfile::write(&path, &info, digests))
                .map_err(|e| to_py(py, e))
        })
    }

    /// Write bytes atomically and privately (0600, temp + rename).
    #[pyfunction]
    fn write_private_atomic(py: Python<'_>, path: PathBuf, data: Vec<u8>) -> PyResult<()> {
        guarded(|| {
            py.detach(|| connfile::write_atomic(&path, &data))
                .map_err(|e| to_py(py, e))
        })
    }

    /// Read, parse and validate a connection file; a dict in file order.
    #[pyfunction]
    fn read_connection_file<'py>(py: Python<'py>, path: PathBuf) -> PyResult<Bound<'py, PyAny>> {
        guarded(|| {
            let digests = digests(py)?;
            let value = py
                .detach(|| connfile::read(&path, digests))
                .map_err(|e| to_py(py, e))?;
            to_object(py, &value, Some(&path))
        })
    }

    /// Parse and validate connection-file text (`path` only names it in errors).
    /// Text with lone surrogates is read as `json.loads` reads it.
    #[pyfunction]
    #[pyo3(signature = (text, path=None))]
    fn parse_connection_info<'py>(
        py: Python<'py>,
        text: &Bound<'py, PyString>,
        path: Option<PathBuf>,
    ) -> PyResult<Bound<'py, PyAny>> {
        guarded(|| {
            let digests = digests(py)?;
            let parsed = match text.to_str() {
                Ok(utf8) => connfile::parse(utf8, digests),
                Err(_) => connfile::parse_text(&text_of(text)?, digests),
            };
            let value = parsed.map_err(|e| match &path {
                Some(p) => to_py(py, e.in_file(p)),
                None => to_py(py, e),
            })?;
            to_object(py, &value, path.as_deref())
        })
    }

    /// Check connection info (a dict as a connection file holds it) with the
    /// same rules as a file being read: the one validator of connection info.
    /// Raises ConnectionFileError naming the field, never quoting a secret.
    #[pyfunction]
    fn validate_connection_info(py: Python<'_>, info: &Bound<'_, PyDict>) -> PyResult<()> {
        guarded(|| {
            let digests = digests(py)?;
            let value = to_value(info.as_any(), 0)?;
            connfile::validate(&value, digests).map_err(|e| to_py(py, e))
        })
    }

    /// The signature digests accepted as `hmac-<digest>`.
    #[pyfunction]
    fn signature_digests(py: Python<'_>) -> PyResult<Vec<String>> {
        guarded(|| Ok(digests(py)?.clone()))
    }

    /// Names in `directory` matching the glob `pattern` (no stat), in directory order.
    #[pyfunction]
    fn glob_names(py: Python<'_>, directory: PathBuf, pattern: String) -> PyResult<Vec<String>> {
        guarded(|| Ok(py.detach(|| scan::glob_names(&directory, &pattern))))
    }

    /// `fnmatch.fnmatchcase(name, pattern)`.
    #[pyfunction]
    fn fnmatch(name: &str, pattern: &str) -> PyResult<bool> {
        guarded(|| Ok(scan::fnmatch(name, pattern)))
    }

    /// The only match of `pattern` across `directories`, or the newest by atime.
    #[pyfunction]
    fn find_newest(
        py: Python<'_>,
        directories: Vec<PathBuf>,
        pattern: String,
    ) -> PyResult<Option<String>> {
        guarded(|| {
            py.detach(|| scan::find_newest(&directories, &pattern))
                .map(|found| found.map(|p| p.to_string_lossy().into_owned()))
                .map_err(|e| to_py(py, e))
        })
    }

    /// Addresses of the host's interfaces that are up, as strings.
    #[pyfunction]
    fn interface_addresses(py: Python<'_>) -> PyResult<Vec<String>> {
        guarded(|| {
            py.detach(crate::ifaddrs::interface_addresses)
                .map(|addrs| addrs.into_iter().map(|a| a.to_string()).collect())
                .map_err(|e| to_py(py, e))
        })
    }

    /// (port, owner pid, protected, lease end) as `PortTable.held` lists them.
    type HeldRow = (u16, u32, bool, Option<u64>);

    /// The cross-process port reservation table.
    #[pyclass(name = "PortTable", module = "kernel_connect._native", frozen)]
    struct PyPortTable {
        table: Arc<PortTable>,
    }

    #[pymethods]
    impl PyPortTable {
        /// Open (creating if needed) the table at `path`, shared by every user
        /// of the host when `shared` (mode 0666) or this user's own (0600);
        /// with None, a table private to this process.
        #[new]
        #[pyo3(signature = (path=None, shared=false))]
        fn new(py: Python<'_>, path: Option<PathBuf>, shared: bool) -> PyResult<Self> {
            guarded(|| {
                let access = if shared { Access::Host } else { Access::User };
                let table = py
                    .detach(|| match &path {
                        Some(p) => PortTable::open(p, access),
                        None => PortTable::in_process(),
                    })
                    .map_err(|e| to_py(py, e))?;
                Ok(PyPortTable {
                    table: Arc::new(table),
                })
            })
        }

        /// The backing file, or None for an in-process table.
        #[getter]
        fn path(&self) -> Option<String> {
            self.table.path().map(|p| p.to_string_lossy().into_owned())
        }

        /// Reserve `count` distinct ports bindable on `ip`: held by this
        /// process, or with `lease` leased for that many seconds.
        #[pyo3(signature = (ip, count=1, port_range=None, lease=None))]
        fn reserve(
            &self,
            py: Python<'_>,
            ip: String,
            count: usize,
            port_range: Option<(u16, u16)>,
            lease: Option<u32>,
        ) -> PyResult<Vec<u16>> {
            guarded(|| {
                let table = Arc::clone(&self.table);
                let kind = match lease {
                    None => Kind::Held,
                    Some(seconds) => Kind::Lease { seconds },
                };
                py.detach(move || table.reserve(&ip, count, port_range, kind))
                    .map_err(|e| to_py(py, e))
            })
        }

        /// Free `port` if this process reserved it; False for ports it does not hold.
        fn release(&self, py: Python<'_>, port: u16) -> PyResult<bool> {
            guarded(|| self.table.release(port).map_err(|e| to_py(py, e)))
        }

        /// Free every port this process holds (leases run their course); how many.
        fn release_all(&self, py: Python<'_>) -> PyResult<usize> {
            guarded(|| {
                let table = Arc::clone(&self.table);
                py.detach(move || table.release_all())
                    .map_err(|e| to_py(py, e))
            })
        }

        /// True if this process holds `port` (or leases it, until the lease ends).
        fn holds(&self, py: Python<'_>, port: u16) -> PyResult<bool> {
            guarded(|| self.table.holds(port).map_err(|e| to_py(py, e)))
        }

        /// (pid, protected) of the reservation of `port`, or None if it is free.
        fn owner(&self, py: Python<'_>, port: u16) -> PyResult<Option<(u32, bool)>> {
            guarded(|| self.table.owner(port).map_err(|e| to_py(py, e)))
        }

        /// Every taken port as (port, owner pid, protected, lease end or None).
        /// The lease end is in `clock_seconds()` time.
        fn held(&self, py: Python<'_>) -> PyResult<Vec<HeldRow>> {
            guarded(|| {
                let table = Arc::clone(&self.table);
                py.detach(move || table.held())
                    .map(|held| {
                        held.into_iter()
                            .map(|h| (h.port, h.pid, h.alive, h.lease_until))
                            .collect()
                    })
                    .map_err(|e| to_py(py, e))
            })
        }

        /// Warnings since the last call: a table replaced under us, ports lost.
        fn take_notices(&self) -> Vec<String> {
            self.table.take_notices()
        }

        fn __repr__(&self) -> String {
            match self.table.path() {
                Some(p) => format!("PortTable({:?})", p.display().to_string()),
                None => "PortTable(None)".into(),
            }
        }
    }

    /// How many ports the default candidates hold: (above the OS's ephemeral
    /// range, the range's odd ports, its even ports).
    #[pyfunction]
    fn default_capacity() -> PyResult<(usize, usize, usize)> {
        guarded(|| Ok(crate::ports::default_capacity()))
    }

    /// The clock leases are written in (seconds, shared by all processes).
    #[pyfunction]
    fn clock_seconds() -> u64 {
        crate::process::clock_seconds()
    }

    #[pymodule(gil_used = false)]
    fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
        let py = m.py();
        quiet_panics();
        m.add("ConnectionFileError", py.get_type::<ConnectionFileError>())?;
        m.add("MAX_CONNECTION_FILE_BYTES", connfile::MAX_FILE_BYTES)?;
        m.add("PORT_NAMES", connfile::PORT_FIELDS.to_vec())?;
        m.add_class::<PyPortTable>()?;
        m.add_function(wrap_pyfunction!(format_connection_info, m)?)?;
        m.add_function(wrap_pyfunction!(write_connection_file, m)?)?;
        m.add_function(wrap_pyfunction!(write_private_atomic, m)?)?;
        m.add_function(wrap_pyfunction!(read_connection_file, m)?)?;
        m.add_function(wrap_pyfunction!(parse_connection_info, m)?)?;
        m.add_function(wrap_pyfunction!(signature_digests, m)?)?;
        m.add_function(wrap_pyfunction!(validate_connection_info, m)?)?;
        m.add_function(wrap_pyfunction!(glob_names, m)?)?;
        m.add_function(wrap_pyfunction!(fnmatch, m)?)?;
        m.add_function(wrap_pyfunction!(find_newest, m)?)?;
        m.add_function(wrap_pyfunction!(interface_addresses, m)?)?;
        m.add_function(wrap_pyfunction!(default_capacity, m)?)?;
        m.add_function(wrap_pyfunction!(clock_seconds, m)?)?;
        Ok(())
    }
}
