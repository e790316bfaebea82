//! The CUDA driver API (libcuda), opened at run time, for device discovery.
//!
//! Opened with dlopen (see dl.rs) rather than cudarc's driver module, which panics when
//! libcuda is missing: `cuda_available()` must answer false on a machine without a GPU, and
//! discovery needs five C functions.

use super::dl::Library;
use crate::{Error, ErrorKind, Result};
use std::ffi::{c_char, c_int, c_uint};
use std::sync::OnceLock;

const ATTR_CC_MAJOR: c_int = 75;
const ATTR_CC_MINOR: c_int = 76;

struct Driver {
    _lib: Library,
    version: i32,
    count: fn_types::Count,
    get: fn_types::Get,
    attr: fn_types::Attr,
    name: fn_types::Name,
    mem: fn_types::Mem,
}

mod fn_types {
    use super::*;
    pub type Init = unsafe extern "C" fn(c_uint) -> c_int;
    pub type Version = unsafe extern "C" fn(*mut c_int) -> c_int;
    pub type Count = unsafe extern "C" fn(*mut c_int) -> c_int;
    pub type Get = unsafe extern "C" fn(*mut c_int, c_int) -> c_int;
    pub type Attr = unsafe extern "C" fn(*mut c_int, c_int, c_int) -> c_int;
    pub type Name = unsafe extern "C" fn(*mut c_char, c_int, c_int) -> c_int;
    pub type Mem = unsafe extern "C" fn(*mut usize, c_int) -> c_int;
}

/// One CUDA device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    pub ordinal: i32,
    pub name: String,
    /// Compute capability as 10 * major + minor (89 for an L4/RTX 40xx, 90 for an H100).
    pub arch: u32,
    pub total_mem: usize,
}

fn load_driver() -> Result<Driver> {
    let lib = Library::open("libcuda.so.1").or_else(|_| Library::open("libcuda.so"))?;
    let fail = |what: &str, rc: c_int| Error::new(ErrorKind::Device, format!("CUDA driver: {what} failed ({rc})"));
    // SAFETY: the types are those of cuda.h (CUdevice is an int; the _v2 memory query).
    unsafe {
        let init: fn_types::Init = lib.sym("cuInit")?;
        let rc = init(0);
        if rc != 0 {
            return Err(fail("cuInit", rc));
        }
        let ver: fn_types::Version = lib.sym("cuDriverGetVersion")?;
        let mut version = 0;
        let rc = ver(&mut version);
        if rc != 0 {
            return Err(fail("cuDriverGetVersion", rc));
        }
        Ok(Driver {
            count: lib.sym("cuDeviceGetCount")?,
            get: lib.sym("cuDeviceGet")?,
            attr: lib.sym("cuDeviceGetAttribute")?,
            name: lib.sym("cuDeviceGetName")?,
            mem: lib.sym("cuDeviceTotalMem_v2")?,
            version,
            _lib: lib,
        })
    }
}

fn driver() -> Result<&'static Driver> {
    static DRIVER: OnceLock<Result<Driver>> = OnceLock::new();
    DRIVER.get_or_init(load_driver).as_ref().map_err(|e| e.clone())
}

/// The driver's CUDA version as 1000 * major + 10 * minor (12040 for 12.4).
pub fn driver_version() -> Result<i32> {
    Ok(driver()?.version)
}

/// Every CUDA device, or an error when there is no usable driver.
pub fn devices() -> Result<Vec<DeviceInfo>> {
    let d = driver()?;
    let fail = |what: &str, rc: c_int| Error::new(ErrorKind::Device, format!("CUDA driver: {what} failed ({rc})"));
    let mut n = 0;
    // SAFETY: out-pointers are valid; ordinals are below the count the driver gave.
    unsafe {
        let rc = (d.count)(&mut n);
        if rc != 0 {
            return Err(fail("cuDeviceGetCount", rc));
        }
        let mut out = Vec::new();
        for ordinal in 0..n {
            let mut dev = 0;
            let rc = (d.get)(&mut dev, ordinal);
            if rc != 0 {
                return Err(fail("cuDeviceGet", rc));
            }
            let (mut major, mut minor) = (0, 0);
            let rc = (d.attr)(&mut major, ATTR_CC_MAJOR, dev);
            let rc2 = (d.attr)(&mut minor, ATTR_CC_MINOR, dev);
            if rc != 0 || rc2 != 0 {
                return Err(fail("cuDeviceGetAttribute(compute capability)", rc.max(rc2)));
            }
            let mut name = [0 as c_char; 256];
            let rc = (d.name)(name.as_mut_ptr(), name.len() as c_int, dev);
            if rc != 0 {
                return Err(fail("cuDeviceGetName", rc));
            }
            let name = std::ffi::CStr::from_ptr(name.as_ptr()).to_string_lossy().into_owned();
            let mut total_mem = 0usize;
            let rc = (d.mem)(&mut total_mem, dev);
            if rc != 0 {
                return Err(fail("cuDeviceTotalMem", rc));
            }
            out.push(DeviceInfo { ordinal, name, arch: (major * 10 + minor) as u32, total_mem });
        }
        Ok(out)
    }
}

/// True when a CUDA driver loads, initialises, and reports at least one device. Never panics.
pub fn cuda_available() -> bool {
    std::panic::catch_unwind(|| devices().map(|d| !d.is_empty()).unwrap_or(false)).unwrap_or(false)
}
