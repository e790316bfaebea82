//! A shared library opened at run time with dlopen, and its symbols. The CUDA libraries are
//! optional: a machine without them must still load libxdan and run on the CPU, so nothing
//! links against them and a missing library or symbol is an error value, never a panic.

use crate::{Error, ErrorKind, Result};
use std::ffi::{CStr, CString};

pub struct Library {
    handle: *mut libc::c_void,
    pub path: String,
}

// The handle is only used for dlsym, which is thread-safe.
unsafe impl Send for Library {}
unsafe impl Sync for Library {}

fn dl_error() -> String {
    // SAFETY: dlerror returns null or a NUL-terminated string owned by libc.
    unsafe {
        let e = libc::dlerror();
        if e.is_null() {
            "unknown dlopen error".into()
        } else {
            CStr::from_ptr(e).to_string_lossy().into_owned()
        }
    }
}

impl Library {
    /// Opens `path` (a file path, or a bare soname for the loader's search). The library stays
    /// loaded for the life of the process: the CUDA libraries do not support being unloaded
    /// while their state is live.
    pub fn open(path: &str) -> Result<Library> {
        let c = CString::new(path).map_err(|_| Error::invalid_arg(format!("library path {path:?} has a NUL byte")))?;
        // SAFETY: dlopen with a valid C string; RTLD_LOCAL keeps its symbols to itself.
        let handle = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if handle.is_null() {
            return Err(Error::new(ErrorKind::Device, format!("cannot load {path}: {}", dl_error())));
        }
        Ok(Library { handle, path: path.to_string() })
    }

    /// The address of symbol `name`, as a function pointer of type `T`.
    ///
    /// # Safety
    /// `T` must be the function pointer type of the C declaration of `name`.
    pub unsafe fn sym<T: Copy>(&self, name: &str) -> Result<T> {
        assert_eq!(std::mem::size_of::<T>(), std::mem::size_of::<*mut libc::c_void>());
        let c = CString::new(name).expect("symbol names have no NUL");
        let p = libc::dlsym(self.handle, c.as_ptr());
        if p.is_null() {
            return Err(Error::new(ErrorKind::Device, format!("{}: missing symbol {name}", self.path)));
        }
        Ok(std::mem::transmute_copy::<*mut libc::c_void, T>(&p))
    }
}
