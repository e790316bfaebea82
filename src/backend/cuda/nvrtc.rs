//! NVRTC, the CUDA runtime compiler: CUDA C source to CUBIN for one GPU architecture.
//!
//! Loaded with dlopen rather than through cudarc's nvrtc module: cudarc looks the library up
//! only by bare sonames on the loader's search path and panics when it is missing, while
//! NVRTC commonly lives where the loader does not look (the `nvidia-cuda-nvrtc` Python wheel's
//! `site-packages/nvidia/*/lib`, a CUDA toolkit outside ld.so.conf) and its absence must be a
//! plain error. The API used is eight stable C functions.

use super::dl::Library;
use crate::{Error, ErrorKind, Result};
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::PathBuf;

type Program = *mut c_void;
type FnVersion = unsafe extern "C" fn(*mut c_int, *mut c_int) -> c_int;
type FnCreate = unsafe extern "C" fn(
    *mut Program,
    *const c_char,
    *const c_char,
    c_int,
    *const *const c_char,
    *const *const c_char,
) -> c_int;
type FnCompile = unsafe extern "C" fn(Program, c_int, *const *const c_char) -> c_int;
type FnSize = unsafe extern "C" fn(Program, *mut usize) -> c_int;
type FnGet = unsafe extern "C" fn(Program, *mut c_char) -> c_int;
type FnDestroy = unsafe extern "C" fn(*mut Program) -> c_int;
type FnErrStr = unsafe extern "C" fn(c_int) -> *const c_char;

/// A loaded NVRTC.
pub struct Nvrtc {
    lib: Library,
    version: (i32, i32),
    create: FnCreate,
    compile: FnCompile,
    log_size: FnSize,
    log: FnGet,
    cubin_size: FnSize,
    cubin: FnGet,
    destroy: FnDestroy,
    err_str: FnErrStr,
}

/// A compiled program: the CUBIN and NVRTC's log (with `-Xptxas -v`, ptxas' register and
/// spill report per kernel).
pub struct Compiled {
    pub cubin: Vec<u8>,
    pub log: String,
}

/// Where NVRTC may be, in the order tried: `$XDAN_NVRTC` (a file), the loader's search path by
/// soname, /usr/local/cuda, then the `nvidia-cuda-nvrtc` wheels of the `python3` on PATH.
pub fn candidates() -> Vec<String> {
    let mut c = Vec::new();
    if let Ok(p) = std::env::var("XDAN_NVRTC") {
        if !p.is_empty() {
            c.push(p);
        }
    }
    for name in ["libnvrtc.so", "libnvrtc.so.13", "libnvrtc.so.12"] {
        c.push(name.to_string());
    }
    // A CUDA toolkit installed where the loader does not look.
    for dir in ["/usr/local/cuda/lib64", "/usr/local/cuda/targets/x86_64-linux/lib"] {
        c.push(format!("{dir}/libnvrtc.so"));
    }
    c.extend(wheel_libraries().into_iter().map(|p| p.display().to_string()));
    c
}

/// `libnvrtc.so.*` files of the NVIDIA Python wheels (`nvidia/<pkg>/lib/`), found by asking
/// `python3` where its `nvidia` namespace package lies. Empty when there is no python3 or no
/// wheel.
pub fn wheel_libraries() -> Vec<PathBuf> {
    let out = std::process::Command::new("python3")
        .args(["-c", "import nvidia, sys; print('\\n'.join(list(nvidia.__path__)))"])
        .stderr(std::process::Stdio::null())
        .output();
    let Ok(out) = out else { return Vec::new() };
    if !out.status.success() {
        return Vec::new();
    }
    let mut found = Vec::new();
    for root in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(pkgs) = std::fs::read_dir(root.trim()) else { continue };
        for pkg in pkgs.flatten() {
            let Ok(libs) = std::fs::read_dir(pkg.path().join("lib")) else { continue };
            for f in libs.flatten() {
                let name = f.file_name().to_string_lossy().into_owned();
                // libnvrtc.so.12 / libnvrtc.so.13, not libnvrtc-builtins or the .alt variant.
                if name.starts_with("libnvrtc.so") {
                    found.push(f.path());
                }
            }
        }
    }
    found.sort();
    found.reverse(); // the newest major version first
    found
}

impl Nvrtc {
    /// Loads the first NVRTC of `candidates()` that opens and has every function.
    pub fn load() -> Result<Nvrtc> {
        let mut tried = Vec::new();
        for c in candidates() {
            match Nvrtc::load_from(&c) {
                Ok(n) => return Ok(n),
                Err(e) => tried.push(e.message),
            }
        }
        Err(Error::new(
            ErrorKind::Device,
            format!(
                "NVRTC not found (set XDAN_NVRTC to libnvrtc.so, or pip install nvidia-cuda-nvrtc-cu12); tried: {}",
                tried.join("; ")
            ),
        ))
    }

    /// Loads NVRTC from `path` (a file or a soname).
    pub fn load_from(path: &str) -> Result<Nvrtc> {
        let lib = Library::open(path)?;
        // SAFETY: the types are those of nvrtc.h.
        unsafe {
            let version_fn: FnVersion = lib.sym("nvrtcVersion")?;
            let mut major = 0;
            let mut minor = 0;
            if version_fn(&mut major, &mut minor) != 0 {
                return Err(Error::new(ErrorKind::Device, format!("{path}: nvrtcVersion failed")));
            }
            Ok(Nvrtc {
                create: lib.sym("nvrtcCreateProgram")?,
                compile: lib.sym("nvrtcCompileProgram")?,
                log_size: lib.sym("nvrtcGetProgramLogSize")?,
                log: lib.sym("nvrtcGetProgramLog")?,
                cubin_size: lib.sym("nvrtcGetCUBINSize")?,
                cubin: lib.sym("nvrtcGetCUBIN")?,
                destroy: lib.sym("nvrtcDestroyProgram")?,
                err_str: lib.sym("nvrtcGetErrorString")?,
                version: (major, minor),
                lib,
            })
        }
    }

    /// (major, minor) of this NVRTC.
    pub fn version(&self) -> (i32, i32) {
        self.version
    }

    /// The file or soname it was loaded from.
    pub fn path(&self) -> &str {
        &self.lib.path
    }

    fn check(&self, what: &str, name: &str, rc: c_int) -> Result<()> {
        if rc == 0 {
            return Ok(());
        }
        // SAFETY: nvrtcGetErrorString returns a static string for any code.
        let s = unsafe { CStr::from_ptr((self.err_str)(rc)) }.to_string_lossy().into_owned();
        Err(Error::new(ErrorKind::Device, format!("NVRTC {what} of {name}: {s} ({rc})")))
    }

    /// Compiles `src` (program `name`, including `headers` by name) to a CUBIN for `sm_<arch>`
    /// (`arch` = 10 * major + minor, e.g. 89, 90). `extra` options are appended. A compile
    /// error is an error whose message holds NVRTC's log.
    pub fn compile(&self, name: &str, src: &str, headers: &[(&str, &str)], arch: u32, extra: &[&str]) -> Result<Compiled> {
        let cstr = |s: &str, what: &str| {
            CString::new(s).map_err(|_| Error::invalid_arg(format!("{name}: {what} has a NUL byte")))
        };
        let c_src = cstr(src, "source")?;
        let c_name = cstr(name, "name")?;
        let h_text: Vec<CString> = headers.iter().map(|h| cstr(h.1, h.0)).collect::<Result<_>>()?;
        let h_name: Vec<CString> = headers.iter().map(|h| cstr(h.0, "header name")).collect::<Result<_>>()?;
        let h_text_p: Vec<*const c_char> = h_text.iter().map(|s| s.as_ptr()).collect();
        let h_name_p: Vec<*const c_char> = h_name.iter().map(|s| s.as_ptr()).collect();
        let mut opts = vec![format!("--gpu-architecture=sm_{arch}"), "-std=c++17".to_string()];
        opts.extend(extra.iter().map(|s| s.to_string()));
        let c_opts: Vec<CString> = opts.iter().map(|o| cstr(o, "option")).collect::<Result<_>>()?;
        let c_opts_p: Vec<*const c_char> = c_opts.iter().map(|s| s.as_ptr()).collect();

        let mut prog: Program = std::ptr::null_mut();
        // SAFETY: every pointer is valid for the call; the program is destroyed below.
        unsafe {
            self.check(
                "program creation",
                name,
                (self.create)(
                    &mut prog,
                    c_src.as_ptr(),
                    c_name.as_ptr(),
                    headers.len() as c_int,
                    h_text_p.as_ptr(),
                    h_name_p.as_ptr(),
                ),
            )?;
            let result = (|| {
                let rc = (self.compile)(prog, c_opts_p.len() as c_int, c_opts_p.as_ptr());
                let mut n = 0usize;
                self.check("log size", name, (self.log_size)(prog, &mut n))?;
                let mut log = vec![0u8; n.max(1)];
                self.check("log", name, (self.log)(prog, log.as_mut_ptr() as *mut c_char))?;
                let log = String::from_utf8_lossy(&log[..log.iter().position(|&b| b == 0).unwrap_or(log.len())])
                    .into_owned();
                if rc != 0 {
                    return Err(Error::new(
                        ErrorKind::Device,
                        format!("NVRTC failed to compile {name} for sm_{arch}:\n{log}"),
                    ));
                }
                let mut n = 0usize;
                self.check("CUBIN size", name, (self.cubin_size)(prog, &mut n))?;
                let mut cubin = vec![0u8; n];
                self.check("CUBIN", name, (self.cubin)(prog, cubin.as_mut_ptr() as *mut c_char))?;
                Ok(Compiled { cubin, log })
            })();
            (self.destroy)(&mut prog);
            result
        }
    }
}
