//! Activation dumps for comparing a forward pass with llama.cpp's op by op: with
//! `XDAN_DUMP_DIR` set, every pass writes its per-layer activations as raw little-endian f32
//! files `[n_tokens][width]` into `DIR/pass-N/`, named like llama.cpp's graph tensors
//! (`attn_norm-L`, `Qcur-L` after RoPE, `Kcur-L`, `Vcur-L`, `kqv_out-L`, `attn_out-L`,
//! `ffn_inp-L`, `ffn_norm-L`, `ffn_out-L`, `l_out-L`). `scripts/llama-dump/` makes llama.cpp's
//! side and compares. A development aid: off unless the variable is set; a write that fails is
//! logged and the pass goes on.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::backend::Backend;

static PASS: AtomicUsize = AtomicUsize::new(0);

pub struct Dump {
    dir: Option<PathBuf>,
    rows: usize,
}

impl Dump {
    /// The dump of one pass of `rows` tokens, or a no-op when `XDAN_DUMP_DIR` is unset.
    pub fn from_env(rows: usize) -> Dump {
        let dir = std::env::var_os("XDAN_DUMP_DIR").map(|d| {
            let p = PathBuf::from(d).join(format!("pass-{}", PASS.fetch_add(1, Ordering::SeqCst)));
            if let Err(e) = std::fs::create_dir_all(&p) {
                crate::log::warning!("XDAN_DUMP_DIR: cannot create {}: {e}", p.display());
            }
            p
        });
        Dump { dir, rows }
    }

    /// Writes `a` (`cols` values per row) as `name-layer`.
    pub fn put<B: Backend>(&self, be: &B, a: &B::Act, name: &str, layer: usize, cols: usize) {
        let Some(dir) = &self.dir else { return };
        let mut v = vec![0f32; self.rows * cols];
        let read = v.chunks_exact_mut(cols).enumerate().try_for_each(|(r, row)| be.act_read_row(a, r, row));
        let path = dir.join(format!("{name}-{layer}.bin"));
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        if let Err(e) = read.map_err(|e| e.message).and_then(|_| std::fs::write(&path, bytes).map_err(|e| e.to_string())) {
            crate::log::warning!("XDAN_DUMP_DIR: {}: {e}", path.display());
        }
    }
}
