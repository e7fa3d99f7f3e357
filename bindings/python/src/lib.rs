//! The `asheville._asheville` Python extension: a thin layer over the Rust
//! API (through `asheville-c`'s Rust side). The friendly Python API is in
//! `python/asheville/__init__.py`. The GIL is released during every call
//! that does I/O.

use std::path::Path;
use std::sync::Arc;

use asheville_c::AshRepo;
use asheville_storage::{Error, ErrorKind, FileMeta};
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::task::JoinHandle;

create_exception!(
    _asheville,
    AshevilleError,
    PyException,
    "An Asheville error; `.kind` names its kind."
);
create_exception!(
    _asheville,
    NotFoundError,
    AshevilleError,
    "No such file, version, tenant or job."
);
create_exception!(
    _asheville,
    AlreadyExistsError,
    AshevilleError,
    "It exists already."
);
create_exception!(
    _asheville,
    InvalidInputError,
    AshevilleError,
    "A bad argument."
);
create_exception!(
    _asheville,
    IntegrityError,
    AshevilleError,
    "Stored data failed verification."
);
create_exception!(
    _asheville,
    WrongKeyError,
    AshevilleError,
    "Wrong passphrase or key."
);
create_exception!(
    _asheville,
    QuotaExceededError,
    AshevilleError,
    "The write would pass the quota; nothing was written."
);

fn to_py(e: Error) -> PyErr {
    let msg = format!("{}: {e}", e.kind());
    let err = match e.kind() {
        ErrorKind::NotFound => NotFoundError::new_err(msg),
        ErrorKind::AlreadyExists => AlreadyExistsError::new_err(msg),
        ErrorKind::InvalidInput => InvalidInputError::new_err(msg),
        ErrorKind::Integrity => IntegrityError::new_err(msg),
        ErrorKind::WrongKey => WrongKeyError::new_err(msg),
        ErrorKind::QuotaExceeded => QuotaExceededError::new_err(msg),
        _ => AshevilleError::new_err(msg),
    };
    Python::attach(|py| {
        let _ = err.value(py).setattr("kind", e.kind().as_str());
    });
    err
}

fn closed() -> PyErr {
    to_py(Error::new(
        ErrorKind::InvalidInput,
        "the repository is closed",
    ))
}

/// An open repository acting as one tenant.
#[pyclass(module = "asheville._asheville")]
struct Repository {
    inner: Option<Arc<AshRepo>>,
}

impl Repository {
    fn repo(&self) -> PyResult<Arc<AshRepo>> {
        self.inner.clone().ok_or_else(closed)
    }
}

#[pymethods]
impl Repository {
    /// Makes a repository in `dir` (three local backends, rs(2,1), unless
    /// `config_json` says otherwise) with `tenant` under `passphrase`.
    #[staticmethod]
    #[pyo3(signature = (dir, tenant, passphrase, config_json=None))]
    fn create(
        py: Python<'_>,
        dir: &str,
        tenant: &str,
        passphrase: &str,
        config_json: Option<&str>,
    ) -> PyResult<Self> {
        let r = py
            .detach(|| {
                asheville_c::open_repo(Path::new(dir), config_json, tenant, passphrase, true)
            })
            .map_err(to_py)?;
        Ok(Repository {
            inner: Some(Arc::new(r)),
        })
    }

    /// Opens the repository in `dir` as `tenant`.
    #[staticmethod]
    fn open(py: Python<'_>, dir: &str, tenant: &str, passphrase: &str) -> PyResult<Self> {
        let r = py
            .detach(|| asheville_c::open_repo(Path::new(dir), None, tenant, passphrase, false))
            .map_err(to_py)?;
        Ok(Repository {
            inner: Some(Arc::new(r)),
        })
    }

    /// Stores `data` as the next version of `path`.
    fn put(&self, py: Python<'_>, path: &str, data: &[u8]) -> PyResult<()> {
        let r = self.repo()?;
        py.detach(|| r.rt.block_on(r.tenant.put(path, data, FileMeta::default())))
            .map_err(to_py)?;
        Ok(())
    }

    /// The latest version of `path`, read straight into the new `bytes`.
    fn get<'py>(&self, py: Python<'py>, path: &str) -> PyResult<Bound<'py, PyBytes>> {
        let r = self.repo()?;
        let v = r.tenant.stat(path).map_err(to_py)?;
        let len = usize::try_from(v.size)
            .map_err(|_| to_py(Error::new(ErrorKind::InvalidInput, "the file is too large")))?;
        PyBytes::new_with(py, len, |buf| {
            // The bytes object is not visible to Python code yet.
            py.detach(|| {
                let mut out = std::io::Cursor::new(buf);
                r.rt.block_on(r.tenant.get_version(path, v.version, &mut out))
            })
            .map_err(to_py)?;
            Ok(())
        })
    }

    /// Stores a local file or directory under `path`.
    fn put_file(&self, py: Python<'_>, path: &str, local: &str) -> PyResult<()> {
        let r = self.repo()?;
        py.detach(|| {
            r.rt.block_on(asheville_storage::tree::put_tree(
                &r.tenant,
                Path::new(local),
                path,
                asheville_storage::tree::PutOptions::default(),
                &asheville_storage::tree::NoProgress,
            ))
        })
        .map_err(to_py)?;
        Ok(())
    }

    /// Restores `path` (file or directory) to `local`.
    fn get_file(&self, py: Python<'_>, path: &str, local: &str) -> PyResult<()> {
        let r = self.repo()?;
        py.detach(|| {
            r.rt.block_on(asheville_storage::tree::get_tree(
                &r.tenant,
                path,
                Path::new(local),
                &asheville_storage::tree::NoProgress,
            ))
        })
        .map_err(to_py)?;
        Ok(())
    }

    /// The latest version's metadata, as JSON.
    fn stat_json(&self, path: &str) -> PyResult<String> {
        let r = self.repo()?;
        let v = r.tenant.stat(path).map_err(to_py)?;
        Ok(serde_json::json!({
            "path": v.path, "version": v.version, "size": v.size,
            "mtime_ns": v.meta.mtime_ns, "mode": v.meta.mode,
            "created_ns": v.created_ns, "chunks": v.chunks.len(),
        })
        .to_string())
    }

    /// One page of a listing, as JSON `{"entries": [...], "cursor": ...}`.
    #[pyo3(signature = (path, depth, cursor, limit))]
    fn list_json(
        &self,
        path: &str,
        depth: usize,
        cursor: Option<&str>,
        limit: usize,
    ) -> PyResult<String> {
        let r = self.repo()?;
        let depth = if depth == 0 { usize::MAX } else { depth };
        let page = r.tenant.list(path, depth, cursor, limit).map_err(to_py)?;
        serde_json::to_string(&page).map_err(|e| AshevilleError::new_err(e.to_string()))
    }

    /// Deletes `path`.
    fn delete(&self, py: Python<'_>, path: &str) -> PyResult<()> {
        let r = self.repo()?;
        py.detach(|| r.rt.block_on(r.tenant.delete(path)))
            .map_err(to_py)
    }

    /// Syncs the local directory `dir` as `source` of `user`, now; the
    /// finished job as JSON.
    fn sync_dir_json(
        &self,
        py: Python<'_>,
        user: &str,
        source: &str,
        dir: &str,
    ) -> PyResult<String> {
        let r = self.repo()?;
        let job = py
            .detach(|| r.rt.block_on(asheville_c::sync_dir(&r, user, source, dir)))
            .map_err(|e| to_py(asheville_c::sync_err(e)))?;
        serde_json::to_string(&job).map_err(|e| AshevilleError::new_err(e.to_string()))
    }

    /// The sources of `user` with their newest job, as JSON.
    fn sync_status_json(&self, py: Python<'_>, user: &str) -> PyResult<String> {
        let r = self.repo()?;
        let st = py
            .detach(|| r.rt.block_on(asheville_c::sync_status(&r, user)))
            .map_err(|e| to_py(asheville_c::sync_err(e)))?;
        serde_json::to_string(&st).map_err(|e| AshevilleError::new_err(e.to_string()))
    }

    /// Daily usage rows of `meter`, as JSON.
    fn usage_json(&self, meter: &str) -> PyResult<String> {
        let r = self.repo()?;
        let rows = asheville_c::usage_rows(&r, meter).map_err(to_py)?;
        serde_json::to_string(&rows).map_err(|e| AshevilleError::new_err(e.to_string()))
    }

    /// A streaming reader of the latest version of `path`.
    fn open_reader(&self, path: &str) -> PyResult<Reader> {
        let r = self.repo()?;
        let (rx, task) = asheville_c::spawn_reader(&r, path).map_err(to_py)?;
        Ok(Reader {
            repo: r,
            pipe: Some(rx),
            task: Some(task),
        })
    }

    /// A streaming writer of the next version of `path`; nothing is
    /// visible until `close()`.
    fn open_writer(&self, path: &str) -> PyResult<Writer> {
        let r = self.repo()?;
        asheville_storage::RepoPath::parse(path).map_err(to_py)?;
        let (tx, rx) = tokio::io::duplex(1 << 20);
        let t = r.tenant.clone();
        let p = path.to_owned();
        let task = r.rt.spawn(async move {
            t.put(&p, rx, FileMeta::default()).await?;
            Ok(())
        });
        Ok(Writer {
            repo: r,
            pipe: Some(tx),
            task: Some(task),
        })
    }

    /// Closes the repository (also done when it is garbage-collected).
    fn close(&mut self) {
        self.inner = None;
    }

    /// Whether `close()` was called.
    #[getter]
    fn closed(&self) -> bool {
        self.inner.is_none()
    }
}

/// A streaming read.
#[pyclass(module = "asheville._asheville")]
struct Reader {
    repo: Arc<AshRepo>,
    pipe: Option<DuplexStream>,
    task: Option<JoinHandle<Result<(), Error>>>,
}

#[pymethods]
impl Reader {
    /// Up to `n` bytes (`b""` at the end). Errors of the read surface here.
    fn read<'py>(&mut self, py: Python<'py>, n: usize) -> PyResult<Bound<'py, PyBytes>> {
        let r = self.repo.clone();
        let Some(pipe) = self.pipe.as_mut() else {
            return Ok(PyBytes::new(py, b""));
        };
        let task = &mut self.task;
        let buf = py
            .detach(|| -> Result<Vec<u8>, Error> {
                let mut buf = vec![0u8; n];
                let got =
                    r.rt.block_on(pipe.read(&mut buf))
                        .map_err(|e| Error::io("reading failed", e))?;
                buf.truncate(got);
                if got == 0
                    && n > 0
                    && let Some(t) = task.take()
                {
                    r.rt.block_on(t).map_err(|e| {
                        Error::new(ErrorKind::Other, "the read task failed").set_source(e)
                    })??;
                }
                Ok(buf)
            })
            .map_err(to_py)?;
        Ok(PyBytes::new(py, &buf))
    }

    /// Stops reading.
    fn close(&mut self) {
        self.pipe = None;
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// A streaming write.
#[pyclass(module = "asheville._asheville")]
struct Writer {
    repo: Arc<AshRepo>,
    pipe: Option<DuplexStream>,
    task: Option<JoinHandle<Result<(), Error>>>,
}

impl Writer {
    fn task_error(&mut self) -> Error {
        match self.task.take() {
            Some(t) => match self.repo.rt.block_on(t) {
                Ok(Err(e)) => e,
                Ok(Ok(())) => Error::new(ErrorKind::Other, "the write ended early"),
                Err(e) => Error::new(ErrorKind::Other, "the write task failed").set_source(e),
            },
            None => Error::new(ErrorKind::InvalidInput, "the writer is closed"),
        }
    }
}

#[pymethods]
impl Writer {
    /// Appends `data`.
    fn write(&mut self, py: Python<'_>, data: &[u8]) -> PyResult<usize> {
        let n = data.len();
        py.detach(|| -> Result<(), Error> {
            let Some(pipe) = self.pipe.as_mut() else {
                return Err(Error::new(ErrorKind::InvalidInput, "the writer is closed"));
            };
            let rt = self.repo.rt.handle().clone();
            if rt.block_on(pipe.write_all(data)).is_err() {
                self.pipe = None;
                return Err(self.task_error());
            }
            Ok(())
        })
        .map_err(to_py)?;
        Ok(n)
    }

    /// Ends the file and commits it.
    fn close(&mut self, py: Python<'_>) -> PyResult<()> {
        py.detach(|| -> Result<(), Error> {
            let rt = self.repo.rt.handle().clone();
            if let Some(mut p) = self.pipe.take() {
                let _ = rt.block_on(p.shutdown());
            }
            match self.task.take() {
                Some(t) => rt.block_on(t).map_err(|e| {
                    Error::new(ErrorKind::Other, "the write task failed").set_source(e)
                })?,
                None => Ok(()),
            }
        })
        .map_err(to_py)
    }

    /// Drops the write; nothing is committed.
    fn abort(&mut self) {
        self.pipe = None;
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// The `asheville._asheville` module.
#[pymodule]
fn _asheville(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<Repository>()?;
    m.add_class::<Reader>()?;
    m.add_class::<Writer>()?;
    m.add("AshevilleError", py.get_type::<AshevilleError>())?;
    m.add("NotFoundError", py.get_type::<NotFoundError>())?;
    m.add("AlreadyExistsError", py.get_type::<AlreadyExistsError>())?;
    m.add("InvalidInputError", py.get_type::<InvalidInputError>())?;
    m.add("IntegrityError", py.get_type::<IntegrityError>())?;
    m.add("WrongKeyError", py.get_type::<WrongKeyError>())?;
    m.add("QuotaExceededError", py.get_type::<QuotaExceededError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
