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
pub mod kernels;
pub mod nvrtc;

pub use backend::CudaBackend;
pub use device::{Device, EmuDevice};
pub use driver::{cuda_available, devices, DeviceInfo};
pub use gpu::GpuDevice;
