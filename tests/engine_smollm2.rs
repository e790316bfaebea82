//! SmolLM2-135M-Instruct Q4_1 (a real dense llama) against llama.cpp: last-position logits of
//! the three reference prompts, every position of the short one, greedy continuations.
//! The model is fetched by `scripts/fetch-smollm2.sh` (path from `XDAN_SMOLLM2`, else the cache).
//!
//! This model amplifies one-ulp differences: an activation that rounds to the other Q8 code moves
//! the logits by tenths (llama.cpp's own activation quantization moves them by ~0.8 against f32
//! activations). The engine reproduces llama.cpp's arithmetic for the 5-token prompt bit for bit;
//! for longer contexts its attention sums in a different order than llama.cpp's kernels, and the
//! 42- and 295-token prompts end 0.72 / 0.80 apart. llama.cpp's attention kernels differ by batch
//! size, and its references mix both: measured with llama.cpp's tokens fed back one at a time,
//! - a prompt batch sums `q·k` as one FMA chain per lane of 8 then `(l+4 onto l)`,
//!   `(t0+t2)+(t1+t3)`: with it the 5-token prompt is bit-exact (a single-query order is not);
//! - a single-token step sums `q·k` as `ggml_vec_dot_f32`: 4 FMA accumulators of 8 lanes, folded
//!   `(a0+a1)+(a2+a3)`, then `(t0+t1)+(t2+t3)`; with it the short prompt's greedy steps are
//!   bit-exact through context 19 and all 48 greedy ids of the short and chat prompts agree;
//! - the softmax row spans the KV view padded to 256 cells, so every score takes the vector
//!   `exp` (a libm tail breaks the 5-token prompt); the `weights·V` order barely matters here.
//! Even with all of that the 42- and 295-token prompts stay 1.16 / 0.57 apart, so another
//! batch-size-dependent difference remains unfound; and orders that depend on the batch size make
//! a step differ from a recompute of its prefix (tiny-mixtral: by 0.03), which the engine's KV
//! tests forbid (1e-4). So the engine keeps one order for both.
//! `smollm2_matches_llama_cpp` holds the full requirement and is ignored until that order is
//! matched; `smollm2_short_prompt_matches` checks what holds today.

mod engine_common;
use engine_common::*;

use std::path::PathBuf;

use xdan::engine::KvType;

fn model_path() -> PathBuf {
    if let Ok(p) = std::env::var("XDAN_SMOLLM2") {
        return PathBuf::from(p);
    }
    let cache = std::env::var("XDAN_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/xdan"));
    cache.join("SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// The 5-token prompt: every position within 0.05 of llama.cpp (observed: identical), and the
/// greedy continuation equal up to its first near-tie.
#[test]
fn smollm2_short_prompt_matches() {
    run(&["capital"], &["capital"]);
}

#[test]
#[ignore = "known gap: chat/paragraph last logits 0.72/0.80 from llama.cpp (> 0.05), chat greedy diverges at step 19 (attention summation order)"]
fn smollm2_matches_llama_cpp() {
    run(&["capital", "chat", "paragraph"], &["capital", "chat", "paragraph"]);
}

fn run(prompts: &[&str], greedy: &[&str]) {
    let path = model_path();
    assert!(
        path.exists(),
        "SmolLM2 model not found at {} — run scripts/fetch-smollm2.sh (or set XDAN_SMOLLM2)",
        path.display()
    );
    let dir = data_dir().join("smollm2");
    let refs = read_json(&dir.join("refs.json"));
    let m = load(&path, 2);
    let n_vocab = m.n_vocab();
    assert_eq!(n_vocab, 49152);
    let mut c = ctx(&m, 512, 1, KvType::F32);
    let mut failures = Vec::new();
    for p in refs["prompts"].as_array().unwrap() {
        let name = p["name"].as_str().unwrap();
        if !prompts.contains(&name) {
            continue;
        }
        let toks = ids(&p["ids"]);
        let want = read_f32(&dir.join(p["last_logits"]["file"].as_str().unwrap()));
        c.seq_clear(0).unwrap();
        c.step(0, &toks).unwrap();
        let d = max_abs_diff(c.logits(0).unwrap(), &want);
        println!("{name:<10} {} tokens: last-position max |xdan - llama.cpp| = {d:.4}", toks.len());
        if d > 0.05 {
            failures.push(format!("{name}: last logits differ by {d}"));
        }
        if let Some(all) = p.get("all_logits") {
            let want = read_f32(&dir.join(all["file"].as_str().unwrap()));
            // llama.cpp computed every position in one batch; a batch row does not depend on
            // later tokens, so position t is the last row of the prefix decoded as one batch.
            for t in 0..toks.len() {
                c.seq_clear(0).unwrap();
                c.step(0, &toks[..=t]).unwrap();
                let d = max_abs_diff(c.logits(0).unwrap(), &want[t * n_vocab..(t + 1) * n_vocab]);
                if d > 0.05 {
                    failures.push(format!("{name}: position {t} logits differ by {d}"));
                }
            }
        }
    }
    for g in refs["greedy"].as_array().unwrap() {
        let name = g["prompt"].as_str().unwrap();
        if !greedy.contains(&name) {
            continue;
        }
        let p = refs["prompts"].as_array().unwrap().iter().find(|p| p["name"] == g["prompt"]).unwrap();
        let want = ids(&g["ids"]);
        let steps = g["topk_per_step"].as_array().unwrap();
        let margins: Vec<f32> = steps
            .iter()
            .map(|s| {
                let l = f32s(&s["logits"]);
                l[0] - l[1]
            })
            .collect();
        let stop = margins.iter().position(|&m| m < 0.1).unwrap_or(want.len());
        c.seq_clear(0).unwrap();
        c.step(0, &ids(&p["ids"])).unwrap();
        let mut got = Vec::new();
        let mut top_err = 0.0f32;
        for i in 0..want.len() {
            let l = c.logits(0).unwrap();
            if i < stop {
                let s = &steps[i];
                for (id, v) in ids(&s["ids"]).iter().zip(f32s(&s["logits"])) {
                    top_err = top_err.max((l[*id as usize] - v).abs());
                }
            }
            let t = argmax(l) as i32;
            got.push(t);
            c.step(0, &[t]).unwrap();
        }
        let same = got.iter().zip(&want).take_while(|(a, b)| a == b).count();
        println!(
            "{name:<10} greedy: {same}/{} ids equal llama.cpp's (required: first {stop}, up to the first margin < 0.1); \
             max top-10 logit error over those steps {top_err:.4}",
            want.len()
        );
        if got[..stop] != want[..stop] {
            failures.push(format!("{name}: greedy ids {got:?} differ from llama.cpp's {want:?} before step {stop}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
