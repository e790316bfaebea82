//! The C ABI (`include/xdan.h`, generated from this module by cbindgen; contract in the
//! project's API document). A thin layer: it checks arguments, catches panics, maps
//! [`crate::Error`] to [`xdan_status`], and owns the opaque handles. Every exported function
//! runs inside [`guard`], so no unwinding ever crosses into C.
//!
//! The documentation comments of the public items here become the header's documentation.

#![allow(non_camel_case_types)]
#![allow(clippy::missing_safety_doc)]

use std::cell::RefCell;
use std::ffi::{c_char, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::error::{Error, ErrorKind, Result};

pub mod library;
pub mod model;
pub mod tokenizer;
pub mod context;
pub mod sequences;
pub mod sampler;
pub mod debug;

/// The version of the ABI described by this header. `xdan_abi_version()` returns the
/// version of the library actually loaded; a program should check that they are equal.
pub const XDAN_ABI_VERSION: u32 = 1;

/// `xdan_tokenize` flag: add BOS (and EOS) as the model's metadata says
/// (`tokenizer.ggml.add_bos_token` / `add_eos_token`).
pub const XDAN_TOKENIZE_ADD_SPECIAL: u32 = 1;
/// `xdan_tokenize` flag: text of special tokens (`<s>`, `<|im_start|>`, ...) in the input
/// becomes those tokens; without it such text is tokenized as plain text.
pub const XDAN_TOKENIZE_PARSE_SPECIAL: u32 = 2;
/// `xdan_detokenize` flag: control tokens (BOS, EOS, `<|im_end|>`, ...) produce no text and a
/// leading BOS / trailing EOS that the tokenizer adds are removed.
pub const XDAN_DETOKENIZE_SKIP_SPECIAL: u32 = 1;

/// A token id: an index into the model's vocabulary, `0 .. n_vocab-1`.
pub type xdan_token = i32;
/// A sequence slot in a context: `0 .. n_seq_max-1`.
pub type xdan_seq = u32;

/// The result of every fallible call. `XDAN_OK` is 0; on any other value
/// `xdan_last_error()` tells what went wrong, and out-pointers were not written.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum xdan_status {
    /// Success.
    XDAN_OK = 0,
    /// A NULL pointer where one is required, a token or sequence out of range, an unknown
    /// flag, a bad length or a parameter out of its domain.
    XDAN_E_INVALID_ARG = 1,
    /// A file cannot be opened, read, mapped or written (the message names it).
    XDAN_E_IO = 2,
    /// A malformed or truncated GGUF or sequence-state file (the message says where).
    XDAN_E_FORMAT = 3,
    /// A valid file, but an architecture, tensor type or tokenizer xdan does not run.
    XDAN_E_UNSUPPORTED = 4,
    /// A host or device allocation failed.
    XDAN_E_OUT_OF_MEMORY = 5,
    /// No KV-cache room for the tokens; nothing was changed.
    XDAN_E_CONTEXT_FULL = 6,
    /// A CUDA driver or NVRTC failure, or CUDA was asked for but is not available.
    XDAN_E_DEVICE = 7,
    /// A progress or abort callback returned false; nothing was changed and nothing leaks.
    XDAN_E_CANCELLED = 8,
    /// The caller's buffer is too small; the length out-argument tells the size needed.
    XDAN_E_BUFFER_TOO_SMALL = 9,
    /// The context or sampler is in use by another thread; nothing was done. Retry later.
    XDAN_E_BUSY = 10,
    /// A bug in xdan (a caught panic or a broken invariant). The process is unharmed; a
    /// context that reported it should be freed.
    XDAN_E_INTERNAL = 11,
}

/// The compute device of a model.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum xdan_device {
    /// CUDA when `xdan_cuda_available()`, else the CPU.
    XDAN_DEVICE_AUTO = 0,
    /// The CPU only.
    XDAN_DEVICE_CPU = 1,
    /// CUDA; loading fails with `XDAN_E_DEVICE` if it is not available.
    XDAN_DEVICE_CUDA = 2,
}

/// Element type of the KV cache.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum xdan_kv_type {
    /// 16-bit floats (default).
    XDAN_KV_F16 = 0,
    /// 32-bit floats.
    XDAN_KV_F32 = 1,
    /// 8-bit blocks (GGML Q8_0): half the memory of F16.
    XDAN_KV_Q8_0 = 2,
}

/// Severity of a log message.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum xdan_log_level {
    XDAN_LOG_ERROR = 0,
    XDAN_LOG_WARN = 1,
    XDAN_LOG_INFO = 2,
    XDAN_LOG_DEBUG = 3,
}

/// Progress (and abort) callback: `fraction_done` in [0, 1] (0 when not known, as in the
/// abort check of a step); `user` is the pointer given alongside. Return true to go on,
/// false to cancel: the call then returns `XDAN_E_CANCELLED` and nothing leaks.
pub type xdan_progress_fn =
    Option<unsafe extern "C" fn(fraction_done: f32, user: *mut c_void) -> bool>;

/// Log callback: one message per call, NUL-terminated, without a trailing newline; valid
/// only during the call. It may be called from any thread the library uses, concurrently.
pub type xdan_log_fn =
    Option<unsafe extern "C" fn(level: xdan_log_level, message: *const c_char, user: *mut c_void)>;

// ---------------------------------------------------------------------------------------------
// Shared machinery of the exported functions (not part of the header).

// The handles' promises rest on these: a model is shared by any threads at once, a context
// and a sampler move between threads (one at a time, behind their locks).
const _: () = {
    const fn shared<T: Send + Sync>() {}
    const fn movable<T: Send>() {}
    shared::<crate::engine::Model>();
    movable::<crate::engine::Context>();
    movable::<crate::sample::Sampler>();
};
const _: () = assert!(std::mem::size_of::<xdan_status>() == 4);
const _: () = assert!(std::mem::size_of::<xdan_device>() == 4);
const _: () = assert!(std::mem::size_of::<xdan_kv_type>() == 4);

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

pub(crate) fn set_last_error(msg: &str) {
    let c = CString::new(msg.replace('\0', "\\0")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

pub(crate) fn clear_last_error() {
    LAST_ERROR.with(|e| {
        let mut e = e.borrow_mut();
        if !e.as_bytes().is_empty() {
            *e = CString::default();
        }
    });
}

pub(crate) fn last_error_ptr() -> *const c_char {
    // The CString lives in the thread-local until the next failing call replaces it.
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

pub(crate) fn status_of(kind: ErrorKind) -> xdan_status {
    use xdan_status::*;
    match kind {
        ErrorKind::InvalidArg => XDAN_E_INVALID_ARG,
        ErrorKind::Io => XDAN_E_IO,
        ErrorKind::Format => XDAN_E_FORMAT,
        ErrorKind::Unsupported => XDAN_E_UNSUPPORTED,
        ErrorKind::OutOfMemory => XDAN_E_OUT_OF_MEMORY,
        ErrorKind::ContextFull => XDAN_E_CONTEXT_FULL,
        ErrorKind::Device => XDAN_E_DEVICE,
        ErrorKind::Cancelled => XDAN_E_CANCELLED,
        ErrorKind::BufferTooSmall => XDAN_E_BUFFER_TOO_SMALL,
        ErrorKind::Busy => XDAN_E_BUSY,
        ErrorKind::Internal => XDAN_E_INTERNAL,
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_string()
    }
}

/// Runs the body of an exported function: a panic becomes `XDAN_E_INTERNAL`, an error its
/// status, and the thread's last error is set or cleared accordingly.
pub(crate) fn guard(f: impl FnOnce() -> Result<()>) -> xdan_status {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => {
            clear_last_error();
            xdan_status::XDAN_OK
        }
        Ok(Err(e)) => {
            set_last_error(&e.message);
            status_of(e.kind)
        }
        Err(payload) => {
            let msg = format!("internal error (caught panic): {}", panic_message(&*payload));
            crate::log::error!("{msg}");
            set_last_error(&msg);
            xdan_status::XDAN_E_INTERNAL
        }
    }
}

/// [`guard`] for functions that return a value instead of a status: `fallback` on an error
/// or a panic (with the last error set), the value otherwise (last error cleared).
pub(crate) fn guard_value<T>(fallback: T, f: impl FnOnce() -> Result<T>) -> T {
    let mut out = None;
    guard(|| {
        out = Some(f()?);
        Ok(())
    });
    out.unwrap_or(fallback)
}

/// The pointer, or `XDAN_E_INVALID_ARG` naming the argument.
pub(crate) fn non_null<T>(p: *const T, name: &str) -> Result<*const T> {
    if p.is_null() {
        Err(Error::invalid_arg(format!("{name} is NULL")))
    } else {
        Ok(p)
    }
}

pub(crate) fn non_null_mut<T>(p: *mut T, name: &str) -> Result<*mut T> {
    if p.is_null() {
        Err(Error::invalid_arg(format!("{name} is NULL")))
    } else {
        Ok(p)
    }
}

/// A NUL-terminated C string argument, as bytes.
pub(crate) unsafe fn c_str<'a>(p: *const c_char, name: &str) -> Result<&'a [u8]> {
    non_null(p, name)?;
    Ok(CStr::from_ptr(p).to_bytes())
}

/// A C string argument that must be UTF-8.
pub(crate) unsafe fn c_str_utf8<'a>(p: *const c_char, name: &str) -> Result<&'a str> {
    let b = c_str(p, name)?;
    std::str::from_utf8(b).map_err(|e| Error::invalid_arg(format!("{name} is not UTF-8: {e}")))
}

/// A (pointer, count) input array; NULL is allowed only with a count of 0.
pub(crate) unsafe fn in_slice<'a, T>(p: *const T, n: usize, name: &str) -> Result<&'a [T]> {
    if n == 0 {
        return Ok(&[]);
    }
    non_null(p, name)?;
    Ok(std::slice::from_raw_parts(p, n))
}

/// A file path argument.
pub(crate) unsafe fn c_path(p: *const c_char, name: &str) -> Result<std::path::PathBuf> {
    let b = c_str(p, name)?;
    if b.is_empty() {
        return Err(Error::invalid_arg(format!("{name} is empty")));
    }
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        Ok(std::path::PathBuf::from(std::ffi::OsStr::from_bytes(b)))
    }
    #[cfg(not(unix))]
    {
        let s = std::str::from_utf8(b)
            .map_err(|e| Error::invalid_arg(format!("{name} is not UTF-8: {e}")))?;
        Ok(std::path::PathBuf::from(s))
    }
}

/// The buffer protocol for output strings `(buf, cap, len)`: `*len` = full length; if it does
/// not fit, `XDAN_E_BUFFER_TOO_SMALL` and nothing else is written; a NUL follows when there is
/// room. `len` must be non-NULL; `buf` may be NULL only with `cap == 0`.
pub(crate) unsafe fn write_bytes(
    bytes: &[u8],
    buf: *mut c_char,
    cap: usize,
    len: *mut usize,
) -> Result<()> {
    write_items(bytes, buf as *mut u8, cap, len, "buf", "bytes")?;
    if cap > bytes.len() {
        *buf.add(bytes.len()) = 0;
    }
    Ok(())
}

/// The same protocol for arrays (tokens): `*n` = element count.
pub(crate) unsafe fn write_items<T: Copy>(
    items: &[T],
    buf: *mut T,
    cap: usize,
    n: *mut usize,
    buf_name: &str,
    unit: &str,
) -> Result<()> {
    if cap > 0 && buf.is_null() {
        return Err(Error::invalid_arg(format!("{buf_name} is NULL with a capacity of {cap}")));
    }
    *n = items.len();
    if items.len() > cap {
        return Err(Error::new(
            ErrorKind::BufferTooSmall,
            format!("the result needs {} {unit}, {buf_name} holds {cap}", items.len()),
        ));
    }
    if !items.is_empty() {
        std::ptr::copy_nonoverlapping(items.as_ptr(), buf, items.len());
    }
    Ok(())
}

/// Reads the caller's `size` field of a parameter struct; the rest is read field by field with
/// [`read_field`], only where the field lies within that size.
pub(crate) unsafe fn struct_size<T>(p: *const T, name: &str) -> Result<usize> {
    let size = std::ptr::read_unaligned(p as *const u32) as usize;
    if size < std::mem::size_of::<u32>() {
        return Err(Error::invalid_arg(format!(
            "{name}->size is {size}: set it to sizeof(*{name}) (the *_init function does)"
        )));
    }
    Ok(size)
}

/// Field at byte `offset` of the caller's struct read as `R` (a plain integer, float or
/// pointer type: enums are read as u32 and bools as u8, so no invalid value is ever formed),
/// or `None` if the caller's struct (of `size` bytes) ends before it.
pub(crate) unsafe fn read_field<R: Copy>(base: *const u8, size: usize, offset: usize) -> Option<R> {
    if offset + std::mem::size_of::<R>() <= size {
        Some(std::ptr::read_unaligned(base.wrapping_add(offset) as *const R))
    } else {
        None
    }
}

/// Writes `value` at byte `offset` of the caller's struct if it fits within `size`.
pub(crate) unsafe fn write_field<R: Copy>(base: *mut u8, size: usize, offset: usize, value: R) {
    if offset + std::mem::size_of::<R>() <= size {
        std::ptr::write_unaligned(base.wrapping_add(offset) as *mut R, value);
    }
}

/// `read_field` for a named field of a `#[repr(C)]` struct: `field!(p, size, T, f as R)`.
macro_rules! field {
    ($p:expr, $size:expr, $T:ty, $f:ident as $R:ty) => {
        $crate::capi::read_field::<$R>($p as *const u8, $size, std::mem::offset_of!($T, $f))
    };
}
pub(crate) use field;

/// A raw pointer that may travel to another thread with the callback it belongs to; the
/// caller of the C API promised the callback and its user data can be used from there.
#[derive(Clone, Copy)]
pub(crate) struct UserPtr(pub *mut c_void);
unsafe impl Send for UserPtr {}
unsafe impl Sync for UserPtr {}
