//! The CUDA backend: kernel sources (compiled at run time by NVRTC, cached on disk), device
//! discovery through the driver API, and the engine's `Backend` over a [`Device`] (the GPU, or
//! the emulator the tests use). Nothing links against CUDA: the libraries are opened at
//! run time, so the same libxdan runs on machines without a GPU.

pub mod backend;
pub mod cache;
pub mod device;
mod dl;
pub mod driver;
pub mod gpu;
pub mod graph;
pub mod host_experts;
pub mod kernels;
pub mod mmvq_shape;
pub mod nvrtc;
mod profile;

pub use backend::CudaBackend;
pub use device::{Device, EmuDevice};
pub use driver::{cuda_available, devices, DeviceInfo};
pub use gpu::GpuDevice;
pub use mmvq_shape::MmvqShape;

/// The CUDA devices when this process can use CUDA (a driver reporting at least one device, and
/// NVRTC to compile the kernels); otherwise why not. Never panics.
pub fn probe() -> crate::error::Result<Vec<DeviceInfo>> {
    use crate::error::{Error, ErrorKind};
    let devs = std::panic::catch_unwind(devices)
        .map_err(|_| Error::internal("the CUDA driver probe panicked"))??;
    if devs.is_empty() {
        return Err(Error::new(ErrorKind::Device, "the CUDA driver reports no device"));
    }
    std::panic::catch_unwind(nvrtc::Nvrtc::load)
        .map_err(|_| Error::internal("the NVRTC probe panicked"))??;
    Ok(devs)
}
