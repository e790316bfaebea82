//! xdan: run quantized Mixture-of-Experts LLMs (GGUF, llama architecture) in-process, behind a
//! stable C ABI (`include/xdan.h`), on an NVIDIA GPU or on the CPU.
//!
//! Layers, each depending only on those listed after it:
//! `capi` → `engine` → (`model`, `kv`, `sample`, `tokenizer`, `backend`) → `quant` / `gguf` → `error`.

pub mod error;
pub mod gguf;
pub mod quant;

pub use error::{Error, ErrorKind, Result};
pub mod tokenizer;
pub mod sample;
pub mod engine;
pub mod backend;
pub mod kv;
pub mod model;
pub mod log;
pub mod capi;
