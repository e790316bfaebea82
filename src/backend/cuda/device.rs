//! What the CUDA backend needs from a device: memory, copies, and kernel launches by name with
//! the driver API's argument convention (an array of pointers to the argument values).
//!
//! Two implementations: the GPU through the driver API, and [`EmuDevice`], the kernels built
//! by the host compiler (kernels/emu/launch.cpp) with host memory as device memory, which lets
//! the backend's host code run and be tested on a machine without a GPU.

use super::dl::Library;
use super::graph::{graphs_enabled, Exec, Op, Recorder, Stats, COPY};
use super::mmvq_shape::MmvqShape;
use crate::{Error, ErrorKind, Result};
use parking_lot::Mutex;
use std::ffi::{c_char, c_int, c_uint, c_void, CString};
use std::sync::Arc;

/// A device address.
pub type DevPtr = u64;

/// One kernel argument, passed by value.
#[derive(Clone, Copy, Debug)]
pub enum Arg {
    Ptr(DevPtr),
    I32(i32),
    I64(i64),
    F32(f32),
}

pub trait Device: Send + Sync + 'static {
    /// For messages: "cuda:0 (NVIDIA H100)", "cuda-emu".
    fn name(&self) -> String;
    /// The block shape this device's quantized matvec kernels were compiled for; the launches
    /// must use it.
    fn mmvq_shape(&self) -> MmvqShape {
        MmvqShape::DEFAULT
    }
    /// `bytes` of device memory, zeroed.
    fn alloc(&self, bytes: usize) -> Result<DevPtr>;
    /// # Safety
    /// `p` came from `alloc` of this device and is not used afterwards.
    unsafe fn free(&self, p: DevPtr);
    /// # Safety
    /// `[dst, dst + src.len())` lies inside one allocation.
    unsafe fn upload(&self, dst: DevPtr, src: &[u8]) -> Result<()>;
    /// As `upload`, but the host need not wait: the bytes are taken now and land on the device
    /// in order with the launches around the call. For small per-step metadata.
    ///
    /// # Safety
    /// As `upload`.
    unsafe fn upload_async(&self, dst: DevPtr, src: &[u8]) -> Result<()> {
        self.upload(dst, src)
    }
    /// # Safety
    /// `[src, src + dst.len())` lies inside one allocation.
    unsafe fn download(&self, src: DevPtr, dst: &mut [u8]) -> Result<()>;
    /// # Safety
    /// Both ranges lie inside allocations and do not overlap.
    unsafe fn copy(&self, dst: DevPtr, src: DevPtr, bytes: usize) -> Result<()>;
    /// Runs kernel `name` on `grid` blocks of `block` threads. Launches run in order; a
    /// download sees every launch before it.
    ///
    /// # Safety
    /// `args` match the kernel's parameters in number and type, and every pointer argument and
    /// every address the kernel derives from the arguments is valid.
    unsafe fn launch(&self, name: &str, grid: [u32; 3], block: [u32; 3], smem: u32, args: &[Arg]) -> Result<()>;
    /// Issues the queued launches without waiting for them (so the device works while the host
    /// does something else).
    fn flush(&self) -> Result<()> {
        Ok(())
    }
}

/// A device that passes everything to `inner` and counts the launches of each kernel (for
/// diagnostics and tests: what a decode step launches).
pub struct Counting<D: Device> {
    pub inner: Arc<D>,
    launches: Mutex<std::collections::BTreeMap<String, usize>>,
}

impl<D: Device> Counting<D> {
    pub fn new(inner: Arc<D>) -> Counting<D> {
        Counting { inner, launches: Mutex::new(Default::default()) }
    }
    /// The launches per kernel name since the last call.
    pub fn take_counts(&self) -> std::collections::BTreeMap<String, usize> {
        std::mem::take(&mut *self.launches.lock())
    }
}

impl<D: Device> Device for Counting<D> {
    fn name(&self) -> String {
        self.inner.name()
    }
    fn mmvq_shape(&self) -> MmvqShape {
        self.inner.mmvq_shape()
    }
    fn alloc(&self, bytes: usize) -> Result<DevPtr> {
        self.inner.alloc(bytes)
    }
    unsafe fn free(&self, p: DevPtr) {
        self.inner.free(p)
    }
    unsafe fn upload(&self, dst: DevPtr, src: &[u8]) -> Result<()> {
        self.inner.upload(dst, src)
    }
    unsafe fn upload_async(&self, dst: DevPtr, src: &[u8]) -> Result<()> {
        self.inner.upload_async(dst, src)
    }
    unsafe fn download(&self, src: DevPtr, dst: &mut [u8]) -> Result<()> {
        self.inner.download(src, dst)
    }
    unsafe fn copy(&self, dst: DevPtr, src: DevPtr, bytes: usize) -> Result<()> {
        self.inner.copy(dst, src, bytes)
    }
    unsafe fn launch(&self, name: &str, grid: [u32; 3], block: [u32; 3], smem: u32, args: &[Arg]) -> Result<()> {
        *self.launches.lock().entry(name.to_string()).or_default() += 1;
        self.inner.launch(name, grid, block, smem, args)
    }
    fn flush(&self) -> Result<()> {
        self.inner.flush()
    }
}

/// Device memory that frees itself.
pub struct DevBuf<D: Device> {
    dev: Arc<D>,
    pub ptr: DevPtr,
    pub bytes: usize,
}

impl<D: Device> DevBuf<D> {
    pub fn new(dev: &Arc<D>, bytes: usize) -> Result<DevBuf<D>> {
        // A zero-byte buffer still gets a distinct address.
        let ptr = dev.alloc(bytes.max(1))?;
        Ok(DevBuf { dev: dev.clone(), ptr, bytes })
    }
}

impl<D: Device> Drop for DevBuf<D> {
    fn drop(&mut self) {
        // SAFETY: allocated by this device in `new`, and this is its only owner.
        unsafe { self.dev.free(self.ptr) }
    }
}

type EmuLaunch = unsafe extern "C" fn(*const c_char, c_uint, c_uint, c_uint, c_uint, c_uint, c_uint, c_uint, *mut *mut c_void) -> c_int;
type EmuHas = unsafe extern "C" fn(*const c_char) -> c_int;
type EmuShape = unsafe extern "C" fn(*mut c_int);

/// The kernels compiled for the host (kernels/emu/launch.cpp as a shared library), run by the
/// CUDA emulator: blocks in turn, one OS thread per CUDA thread. Device memory is host memory.
/// Launches are queued and captured like the GPU's ([`super::graph`]); a "graph" here is the
/// captured op list, replayed with its captured arguments as a GPU graph would be.
pub struct EmuDevice {
    _lib: Library,
    launch: EmuLaunch,
    has: EmuHas,
    rec: Mutex<Recorder<Vec<(usize, Op)>>>,
    /// Kernel names by handle.
    names: Mutex<Vec<CString>>,
    mmvq: MmvqShape,
}

impl EmuDevice {
    /// Opens the emulator library at `path`.
    pub fn open(path: &str) -> Result<EmuDevice> {
        let lib = Library::open(path)?;
        // SAFETY: the types are those of kernels/emu/launch.cpp.
        unsafe {
            // The matvec shape the library was built with (-D XD_MMVQ_*).
            let shape: EmuShape = lib.sym("xd_emu_mmvq_shape")?;
            let mut s = [0 as c_int; 3];
            shape(s.as_mut_ptr());
            let mmvq = MmvqShape::new(s[0] as u32, s[1] as u32, s[2] as u32).map_err(|e| e.context(path))?;
            Ok(EmuDevice {
                launch: lib.sym("xd_emu_launch")?,
                has: lib.sym("xd_emu_has")?,
                _lib: lib,
                rec: Mutex::new(Recorder::new(graphs_enabled())),
                names: Mutex::new(Vec::new()),
                mmvq,
            })
        }
    }

    /// Whether the library has kernel `name`.
    pub fn has(&self, name: &str) -> bool {
        let c = CString::new(name).unwrap_or_default();
        // SAFETY: a valid C string.
        unsafe { (self.has)(c.as_ptr()) == 1 }
    }

    /// How the launch queues were issued so far.
    pub fn graph_stats(&self) -> Stats {
        self.rec.lock().stats
    }

    unsafe fn run(&self, handle: usize, op: &Op) -> Result<()> {
        if op.kernel == COPY {
            std::ptr::copy_nonoverlapping(op.args[1] as *const u8, op.args[0] as *mut u8, op.args[2] as usize);
            return Ok(());
        }
        let mut cells = op.args;
        let mut ptrs = op.param_ptrs(&mut cells);
        let names = self.names.lock();
        let name = &names[handle];
        let rc = (self.launch)(name.as_ptr(), op.grid[0], op.grid[1], op.grid[2], op.block[0], op.block[1], op.block[2], op.smem, ptrs.as_mut_ptr());
        if rc != 0 {
            return Err(Error::new(ErrorKind::Device, format!("cuda-emu: no kernel named {}", name.to_string_lossy())));
        }
        Ok(())
    }
}

impl Exec for EmuDevice {
    type Graph = Vec<(usize, Op)>;

    fn resolve(&self, name: &str) -> Result<usize> {
        if !self.has(name) {
            return Err(Error::new(ErrorKind::Device, format!("cuda-emu: no kernel named {name}")));
        }
        let mut names = self.names.lock();
        names.push(CString::new(name).map_err(|_| Error::internal("kernel name with a NUL byte"))?);
        Ok(names.len() - 1)
    }

    unsafe fn upload_now(&self, dst: DevPtr, src: &[u8]) -> Result<()> {
        std::ptr::copy_nonoverlapping(src.as_ptr(), dst as *mut u8, src.len());
        Ok(())
    }

    unsafe fn issue(&self, handle: usize, op: &Op) -> Result<()> {
        self.run(handle, op)
    }

    unsafe fn capture(&self, ops: &[Op], handles: &[usize]) -> Result<Self::Graph> {
        Ok(handles.iter().copied().zip(ops.iter().copied()).collect())
    }

    unsafe fn replay(&self, g: &Self::Graph) -> Result<()> {
        for (h, op) in g {
            self.run(*h, op)?;
        }
        Ok(())
    }

    fn release(&self, _: Self::Graph) {}
}

const EMU_ALIGN: usize = 256;

impl Device for EmuDevice {
    fn name(&self) -> String {
        "cuda-emu".into()
    }

    fn mmvq_shape(&self) -> MmvqShape {
        self.mmvq
    }

    fn alloc(&self, bytes: usize) -> Result<DevPtr> {
        let mut p: *mut c_void = std::ptr::null_mut();
        // SAFETY: posix_memalign with a power-of-two alignment; the memory is zeroed below.
        let rc = unsafe { libc::posix_memalign(&mut p, EMU_ALIGN, bytes) };
        if rc != 0 || p.is_null() {
            return Err(Error::new(ErrorKind::OutOfMemory, format!("cuda-emu: cannot allocate {bytes} bytes")));
        }
        unsafe { std::ptr::write_bytes(p as *mut u8, 0, bytes) };
        Ok(p as DevPtr)
    }

    unsafe fn free(&self, p: DevPtr) {
        // Queued ops may still address the memory.
        self.rec.lock().flush_keeping_error(self);
        libc::free(p as *mut c_void)
    }

    unsafe fn upload(&self, dst: DevPtr, src: &[u8]) -> Result<()> {
        self.rec.lock().flush(self)?;
        std::ptr::copy_nonoverlapping(src.as_ptr(), dst as *mut u8, src.len());
        Ok(())
    }

    unsafe fn upload_async(&self, dst: DevPtr, src: &[u8]) -> Result<()> {
        self.rec.lock().upload(self, dst, src)
    }

    unsafe fn download(&self, src: DevPtr, dst: &mut [u8]) -> Result<()> {
        self.rec.lock().flush(self)?;
        std::ptr::copy_nonoverlapping(src as *const u8, dst.as_mut_ptr(), dst.len());
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
        // SAFETY: the queued ops' memory is alive (a free issues the queue first).
        unsafe { self.rec.lock().flush(self) }
    }
}
