//! xdan's side of an op-by-op comparison with llama.cpp (`scripts/llama-dump/`): steps the given
//! token passes into one sequence (KV F32, 2 threads, on the CPU) with `XDAN_DUMP_DIR=DIR`, so
//! each pass writes its activations to `DIR/pass-N/`, plus `last_logits.bin` there.
//!
//!   cargo run --release --example dump_passes -- MODEL DIR TOKEN... [-- TOKEN...]...

use std::path::PathBuf;

use xdan::engine::{Context, ContextParams, KvType, Model, ModelParams};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        eprintln!("usage: dump_passes MODEL DIR TOKEN... [-- TOKEN...]...");
        std::process::exit(2);
    }
    let dir = PathBuf::from(&args[1]);
    let mut passes: Vec<Vec<i32>> = vec![Vec::new()];
    for a in &args[2..] {
        if a == "--" {
            passes.push(Vec::new());
        } else {
            passes.last_mut().unwrap().push(a.parse().unwrap_or_else(|_| panic!("not a token id: {a}")));
        }
    }
    // Set before the first forward pass reads it (nothing else runs yet).
    std::env::set_var("XDAN_DUMP_DIR", &dir);
    let m = Model::load(&PathBuf::from(&args[0]), &ModelParams { n_threads: 2, ..Default::default() }, None)
        .unwrap_or_else(|e| panic!("{}: {}", args[0], e.message));
    let cp = ContextParams { n_ctx: 512, n_batch: 512, kv_type: KvType::F32, n_threads: 2, ..Default::default() };
    let mut c = Context::new(&m, &cp).unwrap_or_else(|e| panic!("context: {}", e.message));
    for (i, p) in passes.iter().enumerate() {
        c.step(0, p).unwrap_or_else(|e| panic!("pass {i}: {}", e.message));
        let bytes: Vec<u8> = c.logits(0).unwrap().iter().flat_map(|x| x.to_le_bytes()).collect();
        std::fs::write(dir.join(format!("pass-{i}/last_logits.bin")), bytes).unwrap();
    }
}
