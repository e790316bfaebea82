//! [`Device`] on an NVIDIA GPU through the driver API (libcuda, opened at run time): memory on
//! the device's primary context, kernels compiled by NVRTC for the device's architecture on first
//! use (through the CUBIN disk cache) and launched on the legacy default stream, so launches and
//! copies run in the order they are issued.
//!
//! The emulator exercises everything above this layer (see tests/cuda_emu_model.rs);
//! scripts/gpu-check.sh runs this one on a GPU machine (results in docs/perf.md).

use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};

use parking_lot::Mutex;

use super::cache::{compile_cached, CubinCache};
use super::device::{Arg, DevPtr, Device};
use super::dl::Library;
use super::graph::{graphs_enabled, Exec, Op, Recorder, Stats, COPY};
use super::kernels::{kernel_names, KernelSource, PROGRAMS};
use super::mmvq_shape::MmvqShape;
use super::nvrtc::Nvrtc;
use super::profile::Profile;
use crate::{Error, ErrorKind, Result};

type CuResult = c_int;
type Ctx = *mut c_void;
type Module = *mut c_void;
type Function = *mut c_void;

#[allow(clippy::type_complexity)]
struct Api {
    init: unsafe extern "C" fn(c_uint) -> CuResult,
    device_get: unsafe extern "C" fn(*mut c_int, c_int) -> CuResult,
    attr: unsafe extern "C" fn(*mut c_int, c_int, c_int) -> CuResult,
    name: unsafe extern "C" fn(*mut c_char, c_int, c_int) -> CuResult,
    primary_retain: unsafe extern "C" fn(*mut Ctx, c_int) -> CuResult,
    ctx_set: unsafe extern "C" fn(Ctx) -> CuResult,
    ctx_sync: unsafe extern "C" fn() -> CuResult,
    alloc: unsafe extern "C" fn(*mut u64, usize) -> CuResult,
    free: unsafe extern "C" fn(u64) -> CuResult,
    memset: unsafe extern "C" fn(u64, u8, usize) -> CuResult,
    h2d: unsafe extern "C" fn(u64, *const c_void, usize) -> CuResult,
    h2d_async: unsafe extern "C" fn(u64, *const c_void, usize, *mut c_void) -> CuResult,
    alloc_host: unsafe extern "C" fn(*mut *mut c_void, usize) -> CuResult,
    free_host: unsafe extern "C" fn(*mut c_void) -> CuResult,
    d2h: unsafe extern "C" fn(*mut c_void, u64, usize) -> CuResult,
    d2d: unsafe extern "C" fn(u64, u64, usize) -> CuResult,
    mem_info: unsafe extern "C" fn(*mut usize, *mut usize) -> CuResult,
    module_load: unsafe extern "C" fn(*mut Module, *const c_void) -> CuResult,
    get_function: unsafe extern "C" fn(*mut Function, Module, *const c_char) -> CuResult,
    #[allow(clippy::type_complexity)]
    launch: unsafe extern "C" fn(
        Function,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        c_uint,
        *mut c_void,
        *mut *mut c_void,
        *mut *mut c_void,
    ) -> CuResult,
    err_str: unsafe extern "C" fn(CuResult, *mut *const c_char) -> CuResult,
}

type Stream = *mut c_void;
type Graph = *mut c_void;
type GraphExec = *mut c_void;

/// cuda.h's CUlaunchAttribute: an id, padding to 8 bytes, a 64-byte union of values.
#[repr(C)]
struct LaunchAttribute {
    id: u32,
    pad: [u8; 4],
    value: [u64; 8],
}

/// cuda.h's CUlaunchConfig.
#[repr(C)]
struct LaunchConfig {
    grid: [c_uint; 3],
    block: [c_uint; 3],
    smem: c_uint,
    stream: Stream,
    attrs: *mut LaunchAttribute,
    num_attrs: c_uint,
}

/// CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION: the launch may begin while the kernel
/// before it finishes; the kernels' `xd_grid_dep_sync` (common.cuh) waits for it.
const LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION: u32 = 6;

type LaunchEx = unsafe extern "C" fn(*const LaunchConfig, Function, *mut *mut c_void, *mut *mut c_void) -> CuResult;

/// `XDAN_CUDA_PDL=1`: programmatic dependent launches (sm_90 and later).
fn pdl_requested() -> bool {
    std::env::var("XDAN_CUDA_PDL").is_ok_and(|v| v == "1")
}

/// The stream-capture and graph entry points (absent from drivers before CUDA 11.4: then every
/// queue is issued launch by launch).
struct GraphApi {
    stream_create: unsafe extern "C" fn(*mut Stream, c_uint) -> CuResult,
    stream_destroy: unsafe extern "C" fn(Stream) -> CuResult,
    begin_capture: unsafe extern "C" fn(Stream, c_int) -> CuResult,
    end_capture: unsafe extern "C" fn(Stream, *mut Graph) -> CuResult,
    instantiate: unsafe extern "C" fn(*mut GraphExec, Graph, u64) -> CuResult,
    graph_destroy: unsafe extern "C" fn(Graph) -> CuResult,
    exec_destroy: unsafe extern "C" fn(GraphExec) -> CuResult,
    launch: unsafe extern "C" fn(GraphExec, Stream) -> CuResult,
    d2d_async: unsafe extern "C" fn(u64, u64, usize, Stream) -> CuResult,
}

impl GraphApi {
    fn load(lib: &Library) -> Result<GraphApi> {
        // SAFETY: the types are those of cuda.h.
        unsafe {
            Ok(GraphApi {
                stream_create: lib.sym("cuStreamCreate")?,
                stream_destroy: lib.sym("cuStreamDestroy_v2")?,
                begin_capture: lib.sym("cuStreamBeginCapture_v2")?,
                end_capture: lib.sym("cuStreamEndCapture")?,
                instantiate: lib.sym("cuGraphInstantiateWithFlags")?,
                graph_destroy: lib.sym("cuGraphDestroy")?,
                exec_destroy: lib.sym("cuGraphExecDestroy")?,
                launch: lib.sym("cuGraphLaunch")?,
                d2d_async: lib.sym("cuMemcpyDtoDAsync_v2")?,
            })
        }
    }
}

/// A captured graph, ready to launch.
pub struct Captured(GraphExec);

/// One GPU.
pub struct GpuDevice {
    _lib: Library,
    api: Api,
    ctx: Ctx,
    ordinal: i32,
    /// Compute capability, 10 * major + minor.
    pub arch: u32,
    pub device_name: String,
    nvrtc: Nvrtc,
    cache: Option<CubinCache>,
    /// Kernel name -> program file.
    program_of: HashMap<String, &'static str>,
    /// The block shape the quantized matvecs are compiled for (`XDAN_CUDA_MMVQ`).
    mmvq: MmvqShape,
    /// Loaded programs and the functions looked up in them.
    loaded: Mutex<(HashMap<&'static str, usize>, HashMap<String, usize>)>,
    /// mmvq.cu compiled for other block shapes (`load_mmvq_variants`), by shape label: their
    /// kernels are named `kernel@label`.
    variants: Mutex<HashMap<String, usize>>,
    /// Pinned staging for `upload_async`, allocated on first use.
    staging: Mutex<Staging>,
    /// Launches, copies and metadata uploads not issued yet (see [`super::graph`]).
    rec: Mutex<Recorder<Captured>>,
    graph_api: Option<GraphApi>,
    /// The stream graphs are captured on (created on first use; nothing runs on it).
    capture_stream: Mutex<Stream>,
    /// GPU time by kernel (`XDAN_CUDA_PROFILE=1`, see [`super::profile`]).
    profile: Option<Mutex<Profile>>,
    /// cuLaunchKernelEx when launches carry the programmatic-serialization attribute
    /// (`XDAN_CUDA_PDL=1` on sm_90+): each kernel's launch overlaps the end of the one before it,
    /// its blocks waiting in `xd_grid_dep_sync` until that one has finished.
    pdl: Option<LaunchEx>,
}

/// A page-locked host buffer that asynchronous uploads copy from. Bytes handed to the driver
/// stay untouched until the stream has passed their copy: `used` only grows between points
/// where every issued operation is known complete (a download returned, a synchronize), and
/// a full buffer waits for the device before it starts over.
struct Staging {
    ptr: *mut u8,
    used: usize,
}

/// Bytes of pinned staging: a decode step's metadata (positions, slots, block tables) is a few
/// KiB; larger uploads go the synchronous way.
const STAGING_BYTES: usize = 1 << 20;

// The context and function handles are process-wide driver objects, usable from any thread
// once the context is made current (every call below does).
unsafe impl Send for GpuDevice {}
unsafe impl Sync for GpuDevice {}

impl GpuDevice {
    fn err(&self, what: &str, rc: CuResult) -> Error {
        let mut s: *const c_char = std::ptr::null();
        // SAFETY: cuGetErrorString writes a static string or leaves null.
        let msg = unsafe {
            (self.api.err_str)(rc, &mut s);
            if s.is_null() {
                format!("error {rc}")
            } else {
                CStr::from_ptr(s).to_string_lossy().into_owned()
            }
        };
        Error::new(ErrorKind::Device, format!("cuda:{}: {what}: {msg}", self.ordinal))
    }

    fn check(&self, what: &str, rc: CuResult) -> Result<()> {
        if rc == 0 {
            Ok(())
        } else {
            Err(self.err(what, rc))
        }
    }

    /// Opens GPU `ordinal` with NVRTC and the CUBIN cache at their default places.
    pub fn open(ordinal: i32) -> Result<GpuDevice> {
        let nvrtc = Nvrtc::load()?;
        GpuDevice::open_with(ordinal, nvrtc, CubinCache::default_location())
    }

    pub fn open_with(ordinal: i32, nvrtc: Nvrtc, cache: Option<CubinCache>) -> Result<GpuDevice> {
        let mmvq = MmvqShape::from_env()?;
        let lib = Library::open("libcuda.so.1").or_else(|_| Library::open("libcuda.so"))?;
        // SAFETY: the types are those of cuda.h (the _v2 entry points for memory).
        let api = unsafe {
            Api {
                init: lib.sym("cuInit")?,
                device_get: lib.sym("cuDeviceGet")?,
                attr: lib.sym("cuDeviceGetAttribute")?,
                name: lib.sym("cuDeviceGetName")?,
                primary_retain: lib.sym("cuDevicePrimaryCtxRetain")?,
                ctx_set: lib.sym("cuCtxSetCurrent")?,
                ctx_sync: lib.sym("cuCtxSynchronize")?,
                alloc: lib.sym("cuMemAlloc_v2")?,
                free: lib.sym("cuMemFree_v2")?,
                memset: lib.sym("cuMemsetD8_v2")?,
                h2d: lib.sym("cuMemcpyHtoD_v2")?,
                h2d_async: lib.sym("cuMemcpyHtoDAsync_v2")?,
                alloc_host: lib.sym("cuMemAllocHost_v2")?,
                free_host: lib.sym("cuMemFreeHost")?,
                d2h: lib.sym("cuMemcpyDtoH_v2")?,
                d2d: lib.sym("cuMemcpyDtoD_v2")?,
                mem_info: lib.sym("cuMemGetInfo_v2")?,
                module_load: lib.sym("cuModuleLoadData")?,
                get_function: lib.sym("cuModuleGetFunction")?,
                launch: lib.sym("cuLaunchKernel")?,
                err_str: lib.sym("cuGetErrorString")?,
            }
        };
        let fail = |what: &str, rc: CuResult| Error::new(ErrorKind::Device, format!("cuda:{ordinal}: {what} failed ({rc})"));
        let (ctx, arch, device_name) = unsafe {
            let rc = (api.init)(0);
            if rc != 0 {
                return Err(fail("cuInit", rc));
            }
            let mut dev = 0;
            let rc = (api.device_get)(&mut dev, ordinal);
            if rc != 0 {
                return Err(fail("cuDeviceGet", rc));
            }
            let (mut major, mut minor) = (0, 0);
            (api.attr)(&mut major, 75, dev);
            (api.attr)(&mut minor, 76, dev);
            let mut name = [0 as c_char; 256];
            (api.name)(name.as_mut_ptr(), 256, dev);
            let mut ctx: Ctx = std::ptr::null_mut();
            let rc = (api.primary_retain)(&mut ctx, dev);
            if rc != 0 {
                return Err(fail("cuDevicePrimaryCtxRetain", rc));
            }
            (ctx, (major * 10 + minor) as u32, CStr::from_ptr(name.as_ptr()).to_string_lossy().into_owned())
        };
        let graph_api = GraphApi::load(&lib).ok();
        let profile = Profile::from_env(&lib).map(Mutex::new);
        // SAFETY: the type is cuda.h's cuLaunchKernelEx.
        let pdl = if pdl_requested() && arch >= 90 { unsafe { lib.sym::<LaunchEx>("cuLaunchKernelEx").ok() } } else { None };
        let mut program_of = HashMap::new();
        for p in PROGRAMS {
            for k in kernel_names(p) {
                program_of.insert(k, p.name);
            }
        }
        Ok(GpuDevice {
            _lib: lib,
            api,
            ctx,
            ordinal,
            arch,
            device_name,
            nvrtc,
            cache,
            program_of,
            mmvq,
            loaded: Mutex::new((HashMap::new(), HashMap::new())),
            variants: Mutex::new(HashMap::new()),
            staging: Mutex::new(Staging { ptr: std::ptr::null_mut(), used: 0 }),
            // Profiling times each launch, which a replayed graph would not.
            rec: Mutex::new(Recorder::new(graph_api.is_some() && graphs_enabled() && profile.is_none())),
            graph_api,
            capture_stream: Mutex::new(std::ptr::null_mut()),
            profile,
            pdl,
        })
    }

    fn current(&self) -> Result<()> {
        // SAFETY: the primary context retained in open_with.
        self.check("cuCtxSetCurrent", unsafe { (self.api.ctx_set)(self.ctx) })
    }

    /// (free, total) bytes of device memory, as the driver reports them now.
    pub fn mem_info(&self) -> Result<(usize, usize)> {
        self.current()?;
        let (mut free, mut total) = (0usize, 0usize);
        // SAFETY: two valid out-pointers.
        self.check("cuMemGetInfo", unsafe { (self.api.mem_info)(&mut free, &mut total) })?;
        Ok((free, total))
    }

    /// How the launch queues were issued so far.
    pub fn graph_stats(&self) -> Stats {
        self.rec.lock().stats
    }

    /// Whether graph capture is possible here (the driver has the API, `XDAN_CUDA_GRAPHS` is not
    /// 0); `set_graphs(false)` turns it off for the process's later queues (a diagnostic).
    pub fn graphs_available(&self) -> bool {
        self.graph_api.is_some() && graphs_enabled()
    }
    pub fn set_graphs(&self, on: bool) {
        self.rec.lock().set_graphs(on && self.graphs_available() && self.profile.is_none());
    }


    /// Waits for every launch issued so far; reports an error a kernel raised.
    pub fn synchronize(&self) -> Result<()> {
        self.current()?;
        let mut rec = self.rec.lock();
        // SAFETY: the queued ops' memory is alive (a free issues the queue first).
        unsafe { rec.flush(self)? };
        let mut st = self.staging.lock();
        self.check("cuCtxSynchronize", unsafe { (self.api.ctx_sync)() })?;
        st.used = 0;
        if let Some(p) = &self.profile {
            // SAFETY: every issued launch has completed.
            unsafe { p.lock().harvest() };
        }
        Ok(())
    }

    /// The extra NVRTC options of a program: the matvec block shape for mmvq.cu.
    fn options(&self, program: &KernelSource) -> Vec<String> {
        if program.name == "mmvq.cu" {
            self.mmvq.nvrtc_options()
        } else {
            Vec::new()
        }
    }

    fn function(&self, name: &str) -> Result<Function> {
        let mut loaded = self.loaded.lock();
        if let Some(&f) = loaded.1.get(name) {
            return Ok(f as Function);
        }
        if let Some((kernel, tag)) = name.split_once('@') {
            let module = *self
                .variants
                .lock()
                .get(tag)
                .ok_or_else(|| Error::internal(format!("{name}: no matvec variant {tag} loaded")))? as Module;
            let c = CString::new(kernel).map_err(|_| Error::internal("kernel name with a NUL byte"))?;
            let mut f: Function = std::ptr::null_mut();
            // SAFETY: a loaded module and a C string.
            self.check(&format!("kernel {name}"), unsafe { (self.api.get_function)(&mut f, module, c.as_ptr()) })?;
            loaded.1.insert(name.to_string(), f as usize);
            return Ok(f);
        }
        let prog = *self
            .program_of
            .get(name)
            .ok_or_else(|| Error::internal(format!("no kernel named {name} in the embedded sources")))?;
        let module = match loaded.0.get(prog) {
            Some(&m) => m as Module,
            None => {
                let src = PROGRAMS.iter().find(|p| p.name == prog).unwrap();
                let (cubin, _) = compile_cached(&self.nvrtc, self.cache.as_ref(), src, self.arch, &self.options(src))?;
                let m = self.load_module(prog, &cubin)?;
                loaded.0.insert(prog, m as usize);
                m
            }
        };
        let c = CString::new(name).map_err(|_| Error::internal("kernel name with a NUL byte"))?;
        let mut f: Function = std::ptr::null_mut();
        // SAFETY: a loaded module and a C string.
        self.check(&format!("kernel {name}"), unsafe { (self.api.get_function)(&mut f, module, c.as_ptr()) })?;
        loaded.1.insert(name.to_string(), f as usize);
        Ok(f)
    }
}

impl Drop for GpuDevice {
    fn drop(&mut self) {
        if self.current().is_ok() {
            let mut rec = std::mem::replace(self.rec.get_mut(), Recorder::new(false));
            // SAFETY: whatever is still queued addresses live memory (frees issue the queue).
            let _ = unsafe { rec.flush(&*self) };
            rec.release_all(&*self);
            let st = *self.capture_stream.get_mut();
            if let (Some(g), false) = (&self.graph_api, st.is_null()) {
                // SAFETY: created by cuStreamCreate; nothing is captured on it now.
                unsafe { (g.stream_destroy)(st) };
            }
            if let Some(p) = self.profile.take() {
                let mut p = p.into_inner();
                // SAFETY: after a device-wide wait every event has been reached.
                unsafe {
                    (self.api.ctx_sync)();
                    p.harvest();
                }
                eprint!("{}", p.report(|h| self.kernel_name(h)));
                // SAFETY: as above.
                unsafe { p.release() };
            }
        }
        let ptr = self.staging.get_mut().ptr;
        if !ptr.is_null() && self.current().is_ok() {
            // SAFETY: allocated by cuMemAllocHost in upload_async; the device is going away, so
            // wait for the copies that may still read it.
            unsafe {
                (self.api.ctx_sync)();
                (self.api.free_host)(ptr as *mut c_void);
            }
        }
    }
}

impl GpuDevice {
    /// Compiles (or takes from the cache) and loads every program, and looks up every kernel:
    /// the number of kernels.
    pub fn preload(&self) -> Result<usize> {
        self.current()?;
        let cubins = self.compile_side_by_side(PROGRAMS.iter().map(|p| (p, self.options(p))).collect());
        {
            let mut loaded = self.loaded.lock();
            for (p, cubin) in PROGRAMS.iter().zip(cubins) {
                let (cubin, _) = cubin?;
                if loaded.0.contains_key(p.name) {
                    continue;
                }
                let m = self.load_module(p.name, &cubin)?;
                loaded.0.insert(p.name, m as usize);
            }
        }
        let mut n = 0;
        for p in PROGRAMS {
            for k in kernel_names(p) {
                self.function(&k)?;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Compiles (side by side, through the CUBIN cache) and loads mmvq.cu for each of `shapes`,
    /// whose kernels are then launched as `kernel@label` (`MmvqShape::label`), e.g.
    /// `mul_mat_vec_q4_k@4x1x1`: for comparing block shapes in one process. Returns each
    /// shape's compile seconds (None when the CUBIN came from the cache).
    pub fn load_mmvq_variants(&self, shapes: &[MmvqShape]) -> Result<Vec<Option<f64>>> {
        self.current()?;
        let src = PROGRAMS.iter().find(|p| p.name == "mmvq.cu").ok_or_else(|| Error::internal("mmvq.cu is not embedded"))?;
        let cubins = self.compile_side_by_side(shapes.iter().map(|sh| (src, sh.nvrtc_options())).collect());
        let mut times = Vec::new();
        for (sh, c) in shapes.iter().zip(cubins) {
            let (cubin, secs) = c.map_err(|e| e.context(format!("matvec shape {sh}")))?;
            let m = self.load_module(&format!("mmvq.cu for {sh}"), &cubin)?;
            self.variants.lock().insert(sh.label(), m as usize);
            times.push(secs);
        }
        Ok(times)
    }

    /// Compiles each (program, NVRTC options) through the CUBIN cache, side by side (NVRTC calls
    /// on distinct programs may run concurrently): each CUBIN with its compile seconds (None
    /// when it came from the cache).
    fn compile_side_by_side(&self, jobs: Vec<(&KernelSource, Vec<String>)>) -> Vec<Result<(Vec<u8>, Option<f64>)>> {
        std::thread::scope(|s| {
            let handles: Vec<_> = jobs
                .iter()
                .map(|(src, opts)| {
                    s.spawn(move || {
                        let t = std::time::Instant::now();
                        let (cubin, origin) = compile_cached(&self.nvrtc, self.cache.as_ref(), src, self.arch, opts)?;
                        Ok((cubin, (origin == super::cache::Origin::Compiled).then(|| t.elapsed().as_secs_f64())))
                    })
                })
                .collect();
            handles.into_iter().map(|j| j.join().unwrap_or_else(|_| Err(Error::internal("kernel compilation panicked")))).collect()
        })
    }

    /// Loads a CUBIN image into the context (`what` names it in errors).
    fn load_module(&self, what: &str, cubin: &[u8]) -> Result<Module> {
        let mut m: Module = std::ptr::null_mut();
        // SAFETY: a CUBIN image for this device's architecture.
        self.check(&format!("loading {what}"), unsafe { (self.api.module_load)(&mut m, cubin.as_ptr() as *const c_void) })?;
        Ok(m)
    }
}

impl GpuDevice {
    /// A host-to-device copy that waits for the device (nothing queued is issued first).
    unsafe fn upload_sync(&self, dst: DevPtr, src: &[u8]) -> Result<()> {
        self.current()?;
        self.check("cuMemcpyHtoD", (self.api.h2d)(dst, src.as_ptr() as *const c_void, src.len()))
    }

    /// Launches `f` with the op's parameters on `stream`.
    unsafe fn launch_on(&self, f: Function, op: &Op, stream: Stream) -> CuResult {
        let mut cells = op.args;
        let mut ptrs = op.param_ptrs(&mut cells);
        if let Some(launch_ex) = self.pdl {
            let mut attr = LaunchAttribute { id: LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION, pad: [0; 4], value: [0; 8] };
            attr.value[0] = 1; // programmaticStreamSerializationAllowed (an int at the union's start)
            let cfg = LaunchConfig { grid: op.grid, block: op.block, smem: op.smem, stream, attrs: &mut attr, num_attrs: 1 };
            return launch_ex(&cfg, f, ptrs.as_mut_ptr(), std::ptr::null_mut());
        }
        (self.api.launch)(
            f,
            op.grid[0],
            op.grid[1],
            op.grid[2],
            op.block[0],
            op.block[1],
            op.block[2],
            op.smem,
            stream,
            ptrs.as_mut_ptr(),
            std::ptr::null_mut(),
        )
    }

    /// The name of the kernel behind a function handle, for messages.
    fn kernel_name(&self, handle: usize) -> String {
        let loaded = self.loaded.lock();
        loaded.1.iter().find(|(_, &f)| f == handle).map_or_else(|| "a kernel".into(), |(n, _)| n.clone())
    }
}

impl Exec for GpuDevice {
    type Graph = Captured;

    fn resolve(&self, name: &str) -> Result<usize> {
        self.current()?;
        Ok(self.function(name)? as usize)
    }

    unsafe fn upload_now(&self, dst: DevPtr, src: &[u8]) -> Result<()> {
        // XDAN_CUDA_SYNC_UPLOADS=1: every upload waits (a diagnostic switch).
        static SYNC: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        if src.len() > STAGING_BYTES / 4 || *SYNC.get_or_init(|| std::env::var("XDAN_CUDA_SYNC_UPLOADS").is_ok_and(|v| v == "1")) {
            return self.upload_sync(dst, src);
        }
        self.current()?;
        let mut st = self.staging.lock();
        if st.ptr.is_null() {
            let mut p: *mut c_void = std::ptr::null_mut();
            self.check("cuMemAllocHost", (self.api.alloc_host)(&mut p, STAGING_BYTES))?;
            st.ptr = p as *mut u8;
            st.used = 0;
        }
        if st.used + src.len() > STAGING_BYTES {
            // Every byte of the buffer may still be waiting for its copy.
            self.check("cuCtxSynchronize", (self.api.ctx_sync)())?;
            st.used = 0;
        }
        let at = st.ptr.add(st.used);
        std::ptr::copy_nonoverlapping(src.as_ptr(), at, src.len());
        // Keep each staged range 16-byte aligned.
        st.used += src.len().div_ceil(16) * 16;
        // The legacy default stream (null): ordered with the launches and the other copies.
        self.check("cuMemcpyHtoDAsync", (self.api.h2d_async)(dst, at as *const c_void, src.len(), std::ptr::null_mut()))
    }

    unsafe fn issue(&self, handle: usize, op: &Op) -> Result<()> {
        self.current()?;
        if op.kernel == COPY {
            return self.check("cuMemcpyDtoD", (self.api.d2d)(op.args[0], op.args[1], op.args[2] as usize));
        }
        let launch = || {
            let rc = self.launch_on(handle as Function, op, std::ptr::null_mut());
            if rc != 0 {
                return Err(self.err(&format!("launching {}", self.kernel_name(handle)), rc));
            }
            Ok(())
        };
        match &self.profile {
            Some(p) => p.lock().time(handle, launch),
            None => launch(),
        }
    }

    unsafe fn capture(&self, ops: &[Op], handles: &[usize]) -> Result<Captured> {
        let g = self.graph_api.as_ref().ok_or_else(|| Error::internal("no graph API"))?;
        self.current()?;
        let mut stream = self.capture_stream.lock();
        if stream.is_null() {
            // CU_STREAM_NON_BLOCKING: capturing must not wait on the legacy stream.
            self.check("cuStreamCreate", (g.stream_create)(&mut *stream, 1))?;
        }
        let s = *stream;
        // CU_STREAM_CAPTURE_MODE_RELAXED: other threads' driver calls stay legal meanwhile.
        self.check("cuStreamBeginCapture", (g.begin_capture)(s, 2))?;
        let mut rc = 0;
        for (op, &h) in ops.iter().zip(handles) {
            rc = if op.kernel == COPY { (g.d2d_async)(op.args[0], op.args[1], op.args[2] as usize, s) } else { self.launch_on(h as Function, op, s) };
            if rc != 0 {
                break;
            }
        }
        let mut graph: Graph = std::ptr::null_mut();
        let end = (g.end_capture)(s, &mut graph);
        if rc != 0 || end != 0 {
            if !graph.is_null() {
                (g.graph_destroy)(graph);
            }
            return Err(self.err("capturing a graph", if rc != 0 { rc } else { end }));
        }
        let mut exec: GraphExec = std::ptr::null_mut();
        let rc = (g.instantiate)(&mut exec, graph, 0);
        (g.graph_destroy)(graph);
        self.check("cuGraphInstantiate", rc)?;
        Ok(Captured(exec))
    }

    unsafe fn replay(&self, c: &Captured) -> Result<()> {
        let g = self.graph_api.as_ref().ok_or_else(|| Error::internal("no graph API"))?;
        self.current()?;
        self.check("cuGraphLaunch", (g.launch)(c.0, std::ptr::null_mut()))
    }

    fn release(&self, c: Captured) {
        if let (Some(g), Ok(())) = (&self.graph_api, self.current()) {
            // SAFETY: an executable graph from `capture`, released once.
            unsafe { (g.exec_destroy)(c.0) };
        }
    }
}

impl Device for GpuDevice {
    fn name(&self) -> String {
        format!("cuda:{} ({}, sm_{})", self.ordinal, self.device_name, self.arch)
    }

    fn mmvq_shape(&self) -> MmvqShape {
        self.mmvq
    }

    fn alloc(&self, bytes: usize) -> Result<DevPtr> {
        self.current()?;
        let mut p = 0u64;
        // SAFETY: out-pointer valid; the memory is zeroed before use.
        unsafe {
            let rc = (self.api.alloc)(&mut p, bytes);
            if rc == 2 {
                return Err(Error::new(ErrorKind::OutOfMemory, format!("cuda:{}: cannot allocate {bytes} bytes", self.ordinal)));
            }
            self.check("cuMemAlloc", rc)?;
            self.check("cuMemsetD8", (self.api.memset)(p, 0, bytes))?;
        }
        Ok(p)
    }

    unsafe fn free(&self, p: DevPtr) {
        // Queued ops may still address the memory.
        self.rec.lock().flush_keeping_error(self);
        if self.current().is_ok() {
            (self.api.free)(p);
        }
    }

    unsafe fn upload(&self, dst: DevPtr, src: &[u8]) -> Result<()> {
        self.rec.lock().flush(self)?;
        self.upload_sync(dst, src)
    }

    unsafe fn upload_async(&self, dst: DevPtr, src: &[u8]) -> Result<()> {
        self.rec.lock().upload(self, dst, src)
    }

    unsafe fn download(&self, src: DevPtr, dst: &mut [u8]) -> Result<()> {
        // The queue's lock is held across the copy so that nothing is queued, and no upload
        // staged, between the flush and the copy's return: then every staged copy has run, and
        // the staging starts over.
        let mut rec = self.rec.lock();
        rec.flush(self)?;
        self.current()?;
        let mut st = self.staging.lock();
        self.check("cuMemcpyDtoH", (self.api.d2h)(dst.as_mut_ptr() as *mut c_void, src, dst.len()))?;
        st.used = 0;
        if let Some(p) = &self.profile {
            // The synchronous copy on the legacy stream returned after every launch before it.
            p.lock().harvest();
        }
        Ok(())
    }

    unsafe fn copy(&self, dst: DevPtr, src: DevPtr, bytes: usize) -> Result<()> {
        self.rec.lock().push(Op::copy(dst, src, bytes));
        Ok(())
    }

    unsafe fn launch(&self, name: &str, grid: [u32; 3], block: [u32; 3], smem: u32, args: &[Arg]) -> Result<()> {
        let mut rec = self.rec.lock();
        let id = rec.kernel_id(self, name)?;
        rec.push(Op::launch(id, grid, block, smem, args)?);
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        self.current()?;
        // SAFETY: the queued ops' memory is alive (a free issues the queue first).
        unsafe { self.rec.lock().flush(self) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The launch structs have cuda.h's layout on 64-bit hosts.
    #[test]
    fn launch_structs_match_cuda_h() {
        assert_eq!(std::mem::size_of::<LaunchAttribute>(), 72);
        assert_eq!(std::mem::offset_of!(LaunchAttribute, value), 8);
        assert_eq!(std::mem::size_of::<LaunchConfig>(), 56);
        assert_eq!(std::mem::offset_of!(LaunchConfig, smem), 24);
        assert_eq!(std::mem::offset_of!(LaunchConfig, stream), 32);
        assert_eq!(std::mem::offset_of!(LaunchConfig, attrs), 40);
        assert_eq!(std::mem::offset_of!(LaunchConfig, num_attrs), 48);
    }
}
