//! The CUDA backend: kernel sources (compiled at run time by NVRTC, cached on disk), device
//! discovery through the driver API. Nothing links against CUDA: the libraries are opened at
//! run time, so the same libxdan runs on machines without a GPU.

pub mod cache;
mod dl;
pub mod driver;
pub mod kernels;
pub mod nvrtc;

pub use driver::{cuda_available, devices, DeviceInfo};
