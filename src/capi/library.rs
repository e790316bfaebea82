//! Library-wide functions: versions, status names, the last error, logging, CUDA presence.

use std::ffi::{c_char, c_void, CString};

use super::{guard_value, last_error_ptr, xdan_log_fn, xdan_log_level, UserPtr};
use crate::log::{self, Level, Sink};

/// The ABI version of the loaded library (`XDAN_ABI_VERSION` of its build, 1 for this one).
/// Compare it with `XDAN_ABI_VERSION` of the header the program was compiled with.
#[no_mangle]
pub extern "C" fn xdan_abi_version() -> u32 {
    super::XDAN_ABI_VERSION
}

// Every build runs on the CPU and, where the driver and NVRTC load at run time, on CUDA.
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (cuda)\0");

/// The library's version and build, e.g. `"0.1.0 (cuda)"` (CUDA support built in; whether a
/// GPU is usable here is `xdan_cuda_available()`): a static string, never freed.
#[no_mangle]
pub extern "C" fn xdan_version() -> *const c_char {
    VERSION.as_ptr() as *const c_char
}

/// A status raw value as passed through C (an out-of-range value must not become a Rust enum).
pub type xdan_status_value = u32;

/// The name of a status code as a static string, e.g. `"XDAN_E_FORMAT"`;
/// `"XDAN_E_UNKNOWN"` for a value that is not a status.
#[no_mangle]
pub extern "C" fn xdan_status_name(s: xdan_status_value) -> *const c_char {
    let name: &'static str = match s {
        0 => "XDAN_OK\0",
        1 => "XDAN_E_INVALID_ARG\0",
        2 => "XDAN_E_IO\0",
        3 => "XDAN_E_FORMAT\0",
        4 => "XDAN_E_UNSUPPORTED\0",
        5 => "XDAN_E_OUT_OF_MEMORY\0",
        6 => "XDAN_E_CONTEXT_FULL\0",
        7 => "XDAN_E_DEVICE\0",
        8 => "XDAN_E_CANCELLED\0",
        9 => "XDAN_E_BUFFER_TOO_SMALL\0",
        10 => "XDAN_E_BUSY\0",
        11 => "XDAN_E_INTERNAL\0",
        _ => "XDAN_E_UNKNOWN\0",
    };
    name.as_ptr() as *const c_char
}

/// Human-readable detail of the last failed call on the calling thread: what was wrong,
/// where, and which value, e.g. `tensor 'blk.3.ffn_up_exps.weight': data range [123, 456)
/// exceeds file size 400`. The empty string after a successful call. The pointer stays valid
/// until the next xdan call on this thread; never NULL; do not free it.
#[no_mangle]
pub extern "C" fn xdan_last_error() -> *const c_char {
    last_error_ptr()
}

/// Sends the library's log messages to `fn` (all levels; filter in the callback), with `user`
/// passed back on every call. NULL `fn` restores the default: warnings and errors to stderr.
/// The callback may be called from any thread, concurrently; it must not unwind.
#[no_mangle]
pub extern "C" fn xdan_set_log_callback(r#fn: xdan_log_fn, user: *mut c_void) {
    let user = UserPtr(user);
    guard_value((), || {
        let sink = r#fn.map(|f| Sink {
            max_level: Level::Debug,
            write: Box::new(move |level, msg| {
                let user = user;
                let level = match level {
                    Level::Error => xdan_log_level::XDAN_LOG_ERROR,
                    Level::Warn => xdan_log_level::XDAN_LOG_WARN,
                    Level::Info => xdan_log_level::XDAN_LOG_INFO,
                    Level::Debug => xdan_log_level::XDAN_LOG_DEBUG,
                };
                let msg = CString::new(msg.replace('\0', "\\0")).unwrap_or_default();
                // SAFETY: the host gave this callback for exactly this use.
                unsafe { f(level, msg.as_ptr(), user.0) };
            }),
        });
        log::set_sink(sink);
        Ok(())
    })
}

/// Whether a usable CUDA device, driver and NVRTC are present (what `XDAN_DEVICE_AUTO`
/// decides on).
#[no_mangle]
pub extern "C" fn xdan_cuda_available() -> bool {
    guard_value(false, || Ok(crate::backend::cuda::probe().is_ok()))
}
