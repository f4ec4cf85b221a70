//! The one error type of the core. Every fallible function returns
//! [`Result`]; `lib.rs` maps each variant to a Python exception in one place.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// Everything the core can fail with.
#[derive(Debug)]
pub enum Error {
    /// An operating-system call failed; `context` says what we were doing.
    Io {
        context: String,
        path: Option<PathBuf>,
        source: io::Error,
    },
    /// A connection file (or connection info about to be written) is invalid.
    /// `field` names the offending key; the message never echoes secrets.
    ConnectionFile {
        path: Option<PathBuf>,
        field: Option<String>,
        reason: String,
    },
    /// No bindable, unreserved port could be found within the attempt budget.
    NoFreePort { ip: String, attempts: usize },
    /// A caller passed something the core cannot accept (bad ip, bad range...).
    InvalidArgument(String),
}

/// Result alias used by every fallible core function.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// An I/O error with what we were doing and the path involved.
    pub fn io(context: impl Into<String>, path: &Path, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            path: Some(path.to_path_buf()),
            source,
        }
    }

    /// An I/O error that concerns no particular path (sockets, mmap...).
    pub fn os(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            path: None,
            source,
        }
    }

    /// A connection-file validation error for `field`.
    pub fn field(field: &str, reason: impl Into<String>) -> Self {
        Error::ConnectionFile {
            path: None,
            field: Some(field.to_owned()),
            reason: reason.into(),
        }
    }

    /// A connection-file error that concerns the file as a whole.
    pub fn file(reason: impl Into<String>) -> Self {
        Error::ConnectionFile {
            path: None,
            field: None,
            reason: reason.into(),
        }
    }

    /// Attach the file path to a connection-file error that lacks one.
    pub fn in_file(self, file: &Path) -> Self {
        match self {
            Error::ConnectionFile {
                path: None,
                field,
                reason,
            } => Error::ConnectionFile {
                path: Some(file.to_path_buf()),
                field,
                reason,
            },
            other => other,
        }
    }

    /// The OS error number, when there is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Io { source, .. } => source.raw_os_error(),
            Error::NoFreePort { .. } => Some(libc::EADDRINUSE),
            _ => None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io {
                context,
                path: Some(path),
                source,
            } => write!(f, "{context} {}: {source}", path.display()),
            Error::Io {
                context,
                path: None,
                source,
            } => write!(f, "{context}: {source}"),
            Error::ConnectionFile {
                path,
                field,
                reason,
            } => {
                if let Some(path) = path {
                    write!(f, "connection file {}: ", path.display())?;
                } else {
                    write!(f, "connection info: ")?;
                }
                if let Some(field) = field {
                    write!(f, "field '{field}': ")?;
                }
                write!(f, "{reason}")
            }
            Error::NoFreePort { ip, attempts } => write!(
                f,
                "no free port on {ip} after {attempts} attempts: every candidate was \
                 reserved by a live process or already bound"
            ),
            Error::InvalidArgument(msg) => write!(f, "{msg}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
