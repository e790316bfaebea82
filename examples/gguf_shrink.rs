//! Rewrites GGUF files small: the same metadata with every array cut to a few items, and every
//! tensor kept with its name and type but reduced to a single block of zeros. The result has the
//! structure of a real model in a few kilobytes: seeds for the fuzzer, fixtures for parser tests.
//!
//! Usage: gguf_shrink OUT_DIR FILE.gguf...   (writes OUT_DIR/<file name>)

use xdan::gguf::{Array, Gguf, GgufWriter, Value};

const KEEP: usize = 8;

fn cut(v: &Value) -> Value {
    fn c<T: Clone>(v: &[T]) -> Vec<T> {
        v[..v.len().min(KEEP)].to_vec()
    }
    let Value::Array(a) = v else { return v.clone() };
    Value::Array(match a {
        Array::U8(v) => Array::U8(c(v)),
        Array::I8(v) => Array::I8(c(v)),
        Array::U16(v) => Array::U16(c(v)),
        Array::I16(v) => Array::I16(c(v)),
        Array::U32(v) => Array::U32(c(v)),
        Array::I32(v) => Array::I32(c(v)),
        Array::F32(v) => Array::F32(c(v)),
        Array::Bool(v) => Array::Bool(c(v)),
        Array::String(v) => Array::String(c(v)),
        Array::U64(v) => Array::U64(c(v)),
        Array::I64(v) => Array::I64(c(v)),
        Array::F64(v) => Array::F64(c(v)),
    })
}

fn shrink(path: &str) -> xdan::Result<Vec<u8>> {
    let g = Gguf::open(path, true)?;
    let mut w = GgufWriter::new();
    w.set_version(g.version());
    for (k, v) in g.metadata() {
        w.set(k, cut(v));
    }
    for t in g.tensors() {
        let block = t.ty.block_elems() as u64;
        w.add_tensor(&t.name, &[block], t.ty, vec![0; t.ty.block_bytes()])?;
    }
    Ok(w.to_bytes())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((out_dir, files)) = args.split_first().filter(|(_, f)| !f.is_empty()) else {
        eprintln!("usage: gguf_shrink OUT_DIR FILE.gguf...");
        std::process::exit(2);
    };
    let mut failed = false;
    for path in files {
        let name = std::path::Path::new(path).file_name().unwrap_or_default();
        let out = std::path::Path::new(out_dir).join(name);
        match shrink(path).and_then(|b| {
            std::fs::write(&out, &b)
                .map(|_| b.len())
                .map_err(|e| xdan::Error::io(format!("{}: {e}", out.display())))
        }) {
            Ok(n) => println!("{} -> {} ({n} bytes)", path, out.display()),
            Err(e) => {
                eprintln!("gguf_shrink: {path}: {e}");
                failed = true;
            }
        }
    }
    std::process::exit(failed as i32);
}
