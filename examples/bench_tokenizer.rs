//! Tokenizer throughput: tokenize and detokenize ~1 MB of mixed text (English prose, Chinese,
//! code) with the SmolLM2 (byte-level BPE) and llama-spm (SentencePiece) vocabularies.
//!
//! `cargo run --release --example bench_tokenizer`
//!
//! The text is generated from a fixed seed so runs compare. "cold" is a fresh tokenizer's first
//! pass (its word memo empty); "warm" the median of the next passes.

use std::time::Instant;

use xdan::gguf::Gguf;
use xdan::tokenizer::Tokenizer;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[(self.next() % v.len() as u64) as usize]
    }
}

const WORDS: &[&str] = &[
    "the", "of", "and", "to", "in", "model", "expert", "router", "token", "layer", "weight", "quantized",
    "memory", "bandwidth", "inference", "throughput", "latency", "context", "attention", "mixture",
    "sparse", "dense", "activation", "gradient", "matrix", "vector", "kernel", "cache", "batch", "sequence",
    "probability", "distribution", "temperature", "sampling", "efficient", "accurate", "reference",
    "implementation", "benchmark", "measurement", "although", "however", "therefore", "because", "while",
    "Paris", "London", "September", "Wednesday", "nineteen", "isn't", "they're", "we've", "it's",
];
const HANZI: &str = "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面而方后多定行学法所民得经十三之进着等部度家电力里如水化高自二理起小物现实加量都两体制机当使点从业本去把性好应开它合还因由其些然前外天政四日那社义事平形相全表间样与关各重新线内数正心反你明看原又么利比或但质气第向道命此变条只没结解问意建月公无系军很情者最立代想已通并提直题党程展五果料象员革位入常文总次品式活设及管特件长求老头基资边流路级少图山统接知较将组见计别她手角期根论运农指几九区强放决西被干做必战先回则任取据处理府研质";
const IDENTS: &[&str] = &[
    "n_tokens", "kv_cache", "logits", "expert_ids", "row", "col", "scale", "i", "j", "buf", "out", "len",
    "ctx", "batch", "weights", "tensor", "offset", "stride", "block", "qs", "d", "m",
];

fn mixed_text(target: usize) -> String {
    let mut r = Rng(0x9E37_79B9_7F4A_7C15);
    let hanzi: Vec<char> = HANZI.chars().collect();
    let mut s = String::with_capacity(target + 4096);
    while s.len() < target {
        match r.next() % 3 {
            0 => {
                for k in 0..(40 + r.next() % 80) {
                    if k > 0 {
                        s.push(' ');
                    }
                    let w = r.pick(WORDS);
                    if k == 0 {
                        let mut c = w.chars();
                        s.extend(c.next().unwrap().to_uppercase());
                        s.push_str(c.as_str());
                    } else {
                        s.push_str(w);
                    }
                    match r.next() % 12 {
                        0 => s.push(','),
                        1 => s.push_str(&format!(" {}", r.next() % 10_000)),
                        _ => {}
                    }
                }
                s.push_str(".\n\n");
            }
            1 => {
                for k in 0..(60 + r.next() % 120) {
                    s.push(*r.pick(&hanzi));
                    if k % 17 == 16 {
                        s.push(if r.next() % 2 == 0 { '，' } else { '。' });
                    }
                }
                s.push_str("。\n\n");
            }
            _ => {
                let f = r.pick(IDENTS);
                s.push_str(&format!("fn {f}_{}(x: &[f32], {}: usize) -> Vec<f32> {{\n", r.next() % 100, r.pick(IDENTS)));
                for _ in 0..(3 + r.next() % 8) {
                    let (a, b, c) = (r.pick(IDENTS), r.pick(IDENTS), r.pick(IDENTS));
                    s.push_str(&format!("    let {a} = {b}[{}] * {c} + 0x{:x}; // {}\n", r.next() % 64, r.next() % 4096, r.pick(WORDS)));
                }
                s.push_str("    vec![0.0; 16]\n}\n\n");
            }
        }
    }
    s
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| c.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string()))
        .unwrap_or_else(|| "unknown CPU".into());
    let n = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    // The load average says how much the numbers are worth on a shared machine.
    let load = std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into());
    format!("{cpu}, {n} threads available, {} {}, load average {load}", std::env::consts::OS, std::env::consts::ARCH)
}

fn main() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tokenizer/vocabs");
    let text = mixed_text(1 << 20);
    let mb = text.len() as f64 / 1e6;
    println!("machine: {}", machine());
    println!("text: {} bytes of English, Chinese and code (one call per pass, single thread)", text.len());
    println!(
        "{:<10} {:>8} {:>9} {:>16} {:>16} {:>18}",
        "vocab", "load", "tokens", "tokenize cold", "tokenize warm", "detokenize warm"
    );
    for (name, file) in [("smollm2", "smollm2-vocab.gguf"), ("llama-spm", "ggml-vocab-llama-spm.gguf")] {
        let g = Gguf::open(root.join(file), true).expect("vocab file");
        let t = Instant::now();
        let tok = Tokenizer::from_gguf(&g).expect("tokenizer");
        let load_ms = t.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        let ids = tok.tokenize(text.as_bytes(), false, false).unwrap();
        let cold = mb / t.elapsed().as_secs_f64();
        let mut warm = Vec::new();
        let mut detok = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            let again = tok.tokenize(text.as_bytes(), false, false).unwrap();
            warm.push(mb / t.elapsed().as_secs_f64());
            assert_eq!(again, ids);
            let t = Instant::now();
            let back = tok.detokenize(&ids, false, false).unwrap();
            detok.push(back.len() as f64 / 1e6 / t.elapsed().as_secs_f64());
            assert!(back == text.as_bytes(), "{name}: the round trip is not exact");
        }
        println!(
            "{name:<10} {:>5.0} ms {:>9} {:>11.2} MB/s {:>11.2} MB/s {:>13.1} MB/s",
            load_ms,
            ids.len(),
            cold,
            median(warm),
            median(detok)
        );
    }
}
