//! A disk cache of compiled CUBINs, so NVRTC runs once per kernel source, GPU architecture
//! and NVRTC version. Files live in `$XDAN_CACHE_DIR/cubin`, else `~/.cache/xdan/cubin`.

use super::kernels::{KernelSource, HEADERS};
use super::nvrtc::Nvrtc;
use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// FNV-1a, 64 bits: stable across Rust versions and platforms (std's hashers are not), and
/// enough to tell source revisions apart in a cache key.
fn fnv1a(h: &mut u64, bytes: &[u8]) {
    for &b in bytes {
        *h ^= b as u64;
        *h = h.wrapping_mul(0x100000001b3);
    }
}

/// The hash of a program: its text, every header's name and text, and the options.
pub fn source_hash(src: &str, headers: &[(&str, &str)], options: &[&str]) -> u64 {
    let mut h = 0xcbf29ce484222325u64;
    for part in [src].into_iter().chain(headers.iter().flat_map(|(n, t)| [*n, *t])).chain(options.iter().copied()) {
        fnv1a(&mut h, &(part.len() as u64).to_le_bytes());
        fnv1a(&mut h, part.as_bytes());
    }
    h
}

pub struct CubinCache {
    dir: PathBuf,
}

impl CubinCache {
    pub fn new(dir: impl Into<PathBuf>) -> CubinCache {
        CubinCache { dir: dir.into() }
    }

    /// The cache under `$XDAN_CACHE_DIR`, else `$HOME/.cache/xdan`; None without either.
    pub fn default_location() -> Option<CubinCache> {
        let root = match std::env::var_os("XDAN_CACHE_DIR") {
            Some(d) if !d.is_empty() => PathBuf::from(d),
            _ => PathBuf::from(std::env::var_os("HOME")?).join(".cache").join("xdan"),
        };
        Some(CubinCache::new(root.join("cubin")))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file name for a program compiled for `sm_<arch>` by NVRTC `version`.
    pub fn key(program: &str, hash: u64, arch: u32, version: (i32, i32)) -> String {
        let stem: String = program.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
        format!("{stem}-{hash:016x}-sm{arch}-nvrtc{}.{}.cubin", version.0, version.1)
    }

    /// The cached CUBIN for `key`, if there is one that looks like an ELF file (a truncated
    /// or foreign file counts as absent and is rewritten on the next `put`).
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        let bytes = std::fs::read(self.dir.join(key)).ok()?;
        (bytes.len() > 4 && bytes.starts_with(b"\x7fELF")).then_some(bytes)
    }

    /// Stores a CUBIN; written to a temporary file and renamed, so a reader never sees half.
    pub fn put(&self, key: &str, cubin: &[u8]) -> Result<()> {
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| Error::io(format!("cannot create cache folder {}: {e}", self.dir.display())))?;
        let tmp = self.dir.join(format!(".{key}.{}.tmp", std::process::id()));
        std::fs::write(&tmp, cubin).map_err(|e| Error::io(format!("cannot write {}: {e}", tmp.display())))?;
        let dst = self.dir.join(key);
        std::fs::rename(&tmp, &dst).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            Error::io(format!("cannot rename {} to {}: {e}", tmp.display(), dst.display()))
        })
    }
}

/// Whether a CUBIN came from the cache or from NVRTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Cache,
    Compiled,
}

/// The CUBIN of `program` for `sm_<arch>` compiled with the extra NVRTC `options` (part of the
/// cache key): from `cache` when present there, else compiled by NVRTC and stored (a failed
/// store is not an error: the CUBIN is still good).
pub fn compile_cached(nvrtc: &Nvrtc, cache: Option<&CubinCache>, program: &KernelSource, arch: u32, options: &[String]) -> Result<(Vec<u8>, Origin)> {
    let headers: Vec<(&str, &str)> = HEADERS.iter().map(|h| (h.name, h.text)).collect();
    let options: Vec<&str> = options.iter().map(String::as_str).collect();
    let key = CubinCache::key(program.name, source_hash(program.text, &headers, &options), arch, nvrtc.version());
    if let Some(c) = cache {
        if let Some(bin) = c.get(&key) {
            return Ok((bin, Origin::Cache));
        }
    }
    let compiled = nvrtc.compile(program.name, program.text, &headers, arch, &options)?;
    if let Some(c) = cache {
        let _ = c.put(&key, &compiled.cubin);
    }
    Ok((compiled.cubin, Origin::Compiled))
}
