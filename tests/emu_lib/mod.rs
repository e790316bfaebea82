//! The CUDA emulator library: kernels/emu/launch.cpp (the unchanged kernel sources) built by the
//! host C++ compiler, once per test process. Tests of one binary run in parallel threads; each
//! building the library would rewrite the file another one has just opened.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The library's path, under `CARGO_TARGET_TMPDIR/<dir>` (one folder per test binary).
pub fn emulator_lib(dir: &str) -> PathBuf {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(dir);
        std::fs::create_dir_all(&dir).unwrap();
        let lib = dir.join("libxdan_cuda_emu.so");
        let out = Command::new(std::env::var("CXX").unwrap_or_else(|_| "g++".into()))
            .args(["-std=c++20", "-O2", "-g", "-fno-strict-aliasing", "-pthread", "-shared", "-fPIC", "-Wall", "-Werror"])
            .args(["-Wno-unknown-pragmas", "-Wno-unused-function", "-Wno-unused-variable"])
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/kernels/emu/launch.cpp"))
            .arg("-o")
            .arg(&lib)
            .output()
            .unwrap_or_else(|e| panic!("cannot run the C++ compiler (g++ >= 12 is required): {e}"));
        assert!(out.status.success(), "building the emulator library failed:\n{}", String::from_utf8_lossy(&out.stderr));
        lib
    })
    .clone()
}
