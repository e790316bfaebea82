//! The one error type of the crate. Its kind maps one-to-one onto the C ABI's `xdan_status`;
//! its message is what `xdan_last_error()` shows: what was wrong, where, and which value.

use std::fmt;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    InvalidArg,
    Io,
    Format,
    Unsupported,
    OutOfMemory,
    ContextFull,
    Device,
    Cancelled,
    BufferTooSmall,
    Busy,
    Internal,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error { kind, message: message.into() }
    }
    pub fn invalid_arg(m: impl Into<String>) -> Error {
        Error::new(ErrorKind::InvalidArg, m)
    }
    pub fn io(m: impl Into<String>) -> Error {
        Error::new(ErrorKind::Io, m)
    }
    pub fn format(m: impl Into<String>) -> Error {
        Error::new(ErrorKind::Format, m)
    }
    pub fn unsupported(m: impl Into<String>) -> Error {
        Error::new(ErrorKind::Unsupported, m)
    }
    pub fn internal(m: impl Into<String>) -> Error {
        Error::new(ErrorKind::Internal, m)
    }
    /// The same error with `context` put in front of the message ("file.gguf: …").
    pub fn context(mut self, context: impl fmt::Display) -> Error {
        self.message = format!("{context}: {}", self.message);
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}
