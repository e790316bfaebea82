//! Writes a random-weight llama/Mixtral GGUF of a given shape and type mix, for benchmarks of a
//! real model's size without its weights (the mixes: examples/support/synth_model.rs).
//!
//!   make_model OUT.gguf [--mix iq2_xxs|q4_k_m|TYPE] [--seed 1]
//!              [--layers 32] [--embd 4096] [--ff 14336] [--heads 32] [--heads-kv 8]
//!              [--experts 8] [--experts-used 2] [--vocab 32000] [--rope-base 1e6]
//!              [--ctx 32768] [--eps 1e-5]
//!
//! Defaults: Mixtral 8x7B, mix iq2_xxs. Filled on all cores, streamed one tensor at a time.
//! Exits 2 on bad arguments, 1 when writing fails (the partial file is removed).

#[path = "support/synth_model.rs"]
mod synth_model;

use std::path::PathBuf;
use std::time::Instant;

use synth_model::{Mix, Shape};

fn die(msg: &str) -> ! {
    eprintln!("make_model: {msg}");
    std::process::exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut s = Shape::mixtral_8x7b();
    let (mut out, mut mix, mut seed) = (None, Mix::Iq2Xxs, 1u64);
    let mut i = 0;
    while i < args.len() {
        let a = args[i].as_str();
        if !a.starts_with("--") {
            out = Some(PathBuf::from(a));
            i += 1;
            continue;
        }
        let v = args.get(i + 1).unwrap_or_else(|| die(&format!("{a} needs a value")));
        let n = || v.parse::<usize>().unwrap_or_else(|_| die(&format!("{a} {v}: not a number")));
        let x = || v.parse::<f32>().unwrap_or_else(|_| die(&format!("{a} {v}: not a number")));
        match a {
            "--mix" => mix = Mix::parse(v).unwrap_or_else(|| die(&format!("--mix {v}: iq2_xxs, q4_k_m or a type name"))),
            "--seed" => seed = n() as u64,
            "--layers" => s.n_layer = n(),
            "--embd" => s.n_embd = n(),
            "--ff" => s.n_ff = n(),
            "--heads" => s.n_head = n(),
            "--heads-kv" => s.n_head_kv = n(),
            "--experts" => s.n_expert = n(),
            "--experts-used" => s.n_expert_used = n(),
            "--vocab" => s.n_vocab = n(),
            "--rope-base" => s.rope_base = x(),
            "--ctx" => s.n_ctx = n(),
            "--eps" => s.eps = x(),
            _ => die(&format!("unknown flag {a}")),
        }
        i += 2;
    }
    let out = out.unwrap_or_else(|| die("usage: make_model OUT.gguf [--mix iq2_xxs|q4_k_m|TYPE] [shape flags]"));
    let t = Instant::now();
    match synth_model::write(&out, &s, mix, seed) {
        Ok(bytes) => println!(
            "{}: {:?}, {} layers, embd {}, ff {}, {} experts (top {}), vocab {}: {:.2} GB in {:.1} s ({} threads)",
            out.display(),
            mix,
            s.n_layer,
            s.n_embd,
            s.n_ff,
            s.n_expert,
            s.n_expert_used,
            s.n_vocab,
            bytes as f64 / 1e9,
            t.elapsed().as_secs_f64(),
            rayon::current_num_threads()
        ),
        Err(e) => {
            let _ = std::fs::remove_file(&out);
            eprintln!("make_model: {}: {}", out.display(), e.message);
            std::process::exit(1);
        }
    }
}
