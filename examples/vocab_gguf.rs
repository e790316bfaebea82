//! Writes a vocab-only GGUF: the `general.*` and `tokenizer.*` metadata of a model GGUF, no
//! tensors. This is how `tests/data/tokenizer/vocabs/smollm2-vocab.gguf` was made:
//!
//! ```text
//! cargo run --release --example vocab_gguf -- "$(scripts/fetch-smollm2.sh)" tests/data/tokenizer/vocabs/smollm2-vocab.gguf
//! ```

use xdan::gguf::{Gguf, GgufWriter};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        eprintln!("usage: vocab_gguf MODEL.gguf OUT.gguf");
        std::process::exit(2);
    }
    let g = Gguf::open(&args[1], true).unwrap_or_else(|e| {
        eprintln!("{}: {e}", args[1]);
        std::process::exit(1)
    });
    let mut w = GgufWriter::new();
    let mut n = 0;
    for (k, v) in g.metadata() {
        if k.starts_with("general.") || k.starts_with("tokenizer.") {
            w.set(k, v.clone());
            n += 1;
        }
    }
    w.write_to(&args[2]).unwrap_or_else(|e| {
        eprintln!("{}: {e}", args[2]);
        std::process::exit(1)
    });
    println!("{}: {n} metadata keys, no tensors", args[2]);
}
