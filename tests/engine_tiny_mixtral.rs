//! Parity of the engine with llama.cpp and with the exact math on tiny-mixtral, every stored
//! quantization variant: per-position logits, routing, batching invariance, greedy decoding.
//! Prints one table row per variant. `XDAN_VARIANTS=Q8_0,F16` restricts the variants (for
//! development only; CI runs them all).

mod engine_common;
use engine_common::*;

use xdan::engine::KvType;

const N_VOCAB: usize = 1024;
const NEAR_TIE: f32 = 2e-3;

struct Row {
    variant: String,
    positions: usize,
    positions_total: usize,
    ours: f32,
    llama: f32,
    worst_slack: f32,
    routing_checked: usize,
    routing_equal: usize,
    greedy_checked: usize,
    greedy_equal: usize,
    same_route_positions: usize,
    /// max |token-by-token − whole prompt| over the prompts' last logits.
    stepwise: f32,
    failures: Vec<String>,
}

fn variants() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(data_dir().join("tiny-mixtral"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| tiny_mixtral(name).exists())
        .collect();
    v.sort();
    if let Ok(only) = std::env::var("XDAN_VARIANTS") {
        let keep: Vec<&str> = only.split(',').collect();
        v.retain(|x| keep.contains(&x.as_str()));
    }
    v
}

fn check_variant(variant: &str) -> Row {
    let dir = data_dir().join("tiny-mixtral").join(variant);
    let refs = read_json(&dir.join("refs.json"));
    let exact_ref = exact::exact_reference(variant);
    let ideal = &exact_ref.summary;
    let model = load(&tiny_mixtral(variant), 2);
    let hp = model.hparams().unwrap().clone();
    let (n_layer, k) = (hp.n_layer, hp.n_expert_used);
    let n_exp = hp.n_expert;
    assert_eq!(hp.n_vocab, N_VOCAB);
    let tol = if variant == "F16" || variant == "F32" { 0.005 } else { 0.02 };
    let mut row = Row {
        variant: variant.into(),
        positions: 0,
        positions_total: 0,
        ours: 0.0,
        llama: 0.0,
        worst_slack: f32::NEG_INFINITY,
        routing_checked: 0,
        routing_equal: 0,
        greedy_checked: 0,
        greedy_equal: 0,
        same_route_positions: 0,
        stepwise: 0.0,
        failures: Vec::new(),
    };
    let mut c = ctx(&model, 64, 1, KvType::F32);
    c.set_record_routing(true);
    for (pi, p) in refs["prompts"].as_array().unwrap().iter().enumerate() {
        let toks = ids(&p["ids"]);
        let n = toks.len();
        let llama = read_f32(&dir.join(format!("logits_p{pi}.bin")));
        let exact = &exact_ref.logits[pi];
        let order = read_i32(&dir.join(format!("routing_order_p{pi}.bin")));
        let probs = read_f32(&dir.join(format!("routing_probs_p{pi}.bin")));
        let imargin = &exact_ref.router_margin[pi];
        let llama_vs_exact = f32s(&ideal["prompts"][pi]["llama_vs_ideal_maxabs_per_pos"]);
        // Per-position logits and routing, one token per step.
        c.seq_clear(0).unwrap();
        let mut ours = Vec::new();
        let mut routes = vec![Vec::new(); n_layer];
        for &t in &toks {
            c.step(0, &[t]).unwrap();
            ours.push(c.logits(0).unwrap().to_vec());
            for l in 0..n_layer {
                routes[l].extend_from_slice(&c.routing()[l]);
            }
        }
        // The first position with a router near-tie in any layer (by llama.cpp's probabilities or
        // by the exact math's margin).
        let mut first_tie = n;
        let mut first_route_diff = n;
        for t in 0..n {
            for l in 0..n_layer {
                let o = &order[(l * n + t) * n_exp..(l * n + t + 1) * n_exp];
                let pr = &probs[(l * n + t) * n_exp..(l * n + t + 1) * n_exp];
                let lm = pr[o[k - 1] as usize] - pr[o[k] as usize];
                let im = imargin[l * n + t];
                if lm < NEAR_TIE || im < NEAR_TIE {
                    first_tie = first_tie.min(t);
                }
                {
                    let mut a: Vec<u32> = o[..k].iter().map(|&x| x as u32).collect();
                    let mut b: Vec<u32> = routes[l][t * k..(t + 1) * k].to_vec();
                    a.sort();
                    b.sort();
                    if a != b {
                        first_route_diff = first_route_diff.min(t);
                    }
                }
                if lm >= NEAR_TIE {
                    row.routing_checked += 1;
                    let mut a: Vec<u32> = o[..k].iter().map(|&x| x as u32).collect();
                    let mut b: Vec<u32> = routes[l][t * k..(t + 1) * k].to_vec();
                    a.sort();
                    b.sort();
                    if a == b {
                        row.routing_equal += 1;
                    } else {
                        row.failures.push(format!("p{pi} layer {l} token {t}: experts {b:?}, llama.cpp {a:?} (margin {lm})"));
                    }
                }
            }
        }
        row.positions_total += n;
        for t in 0..first_tie {
            let e = &exact[t * N_VOCAB..(t + 1) * N_VOCAB];
            let ours_err = max_abs_diff(&ours[t], e);
            let llama_err = max_abs_diff(&llama[t * N_VOCAB..(t + 1) * N_VOCAB], e);
            assert!((llama_err - llama_vs_exact[t]).abs() < 1e-4, "fixture consistency p{pi} pos {t}");
            row.positions += 1;
            row.ours = row.ours.max(ours_err);
            row.llama = row.llama.max(llama_err);
            row.worst_slack = row.worst_slack.max(ours_err - llama_err);
            if ours_err > llama_err + tol {
                row.failures.push(format!(
                    "p{pi} position {t}: max|xdan - exact| = {ours_err:.4} > max|llama.cpp - exact| {llama_err:.4} + {tol}"
                ));
            }
        }
        // Beyond the first near-tie: wherever the experts chosen so far (every layer, every
        // position up to this one) are llama.cpp's, the same bound holds.
        for t in first_tie..first_route_diff {
            let e = &exact[t * N_VOCAB..(t + 1) * N_VOCAB];
            let ours_err = max_abs_diff(&ours[t], e);
            let llama_err = max_abs_diff(&llama[t * N_VOCAB..(t + 1) * N_VOCAB], e);
            row.same_route_positions += 1;
            row.ours = row.ours.max(ours_err);
            row.llama = row.llama.max(llama_err);
            row.worst_slack = row.worst_slack.max(ours_err - llama_err);
            if ours_err > llama_err + tol {
                row.failures.push(format!(
                    "p{pi} position {t} (same routing as llama.cpp): max|xdan - exact| = {ours_err:.4} > {llama_err:.4} + {tol}"
                ));
            }
        }
        // Whole prompt at once, in two chunks, and split by a small n_batch. A pass of two or more
        // tokens of a sequence is summed like llama.cpp's prompt batches, a single token like its
        // decode steps (see `vmath::SumOrder`), so passes of ≥ 2 tokens give identical results
        // however the prompt is cut, and token-by-token stepping agrees to rounding: it must be
        // as faithful to the exact math as llama.cpp is, like every other position.
        let last = &ours[n - 1];
        c.seq_clear(0).unwrap();
        c.step(0, &toks).unwrap();
        let whole = c.logits(0).unwrap().to_vec();
        row.stepwise = row.stepwise.max(max_abs_diff(&whole, last));
        if n - 1 < first_route_diff {
            let e = &exact[(n - 1) * N_VOCAB..n * N_VOCAB];
            let (ours_err, llama_err) = (max_abs_diff(&whole, e), max_abs_diff(&llama[(n - 1) * N_VOCAB..n * N_VOCAB], e));
            if ours_err > llama_err + tol {
                row.failures.push(format!(
                    "p{pi}: whole-prompt step: max|xdan - exact| = {ours_err:.4} > {llama_err:.4} + {tol}"
                ));
            }
        }
        if n > 3 {
            c.seq_clear(0).unwrap();
            c.step(0, &toks[..n / 2]).unwrap();
            c.step(0, &toks[n / 2..]).unwrap();
            let d = max_abs_diff(c.logits(0).unwrap(), &whole);
            if d > 1e-4 {
                row.failures.push(format!("p{pi}: two-chunk step differs from the whole prompt by {d}"));
            }
            let mut cb = xdan::engine::Context::new(
                &model,
                &xdan::engine::ContextParams { n_ctx: 64, n_batch: 3, kv_type: KvType::F32, n_threads: 2, ..Default::default() },
            )
            .unwrap();
            cb.step(0, &toks).unwrap();
            // With n % 3 == 1 the last pass holds one token: the whole prompt less one, then it.
            let want = if n % 3 == 1 {
                c.seq_clear(0).unwrap();
                c.step(0, &toks[..n - 1]).unwrap();
                c.step(0, &toks[n - 1..]).unwrap();
                c.logits(0).unwrap().to_vec()
            } else {
                whole.clone()
            };
            let d = max_abs_diff(cb.logits(0).unwrap(), &want);
            if d > 1e-4 {
                row.failures.push(format!("p{pi}: n_batch = 3 differs from the same passes made by hand by {d}"));
            }
        }
    }
    // Greedy 24 from p1: equal to llama.cpp's or to the exact math's ids up to the first step
    // whose top1 - top2 margin is under 0.1.
    let g = &refs["greedy"];
    let p1 = ids(&refs["prompts"][1]["ids"]);
    c.seq_clear(0).unwrap();
    c.step(0, &p1).unwrap();
    let mut got = Vec::new();
    for _ in 0..24 {
        let t = argmax(c.logits(0).unwrap()) as i32;
        got.push(t);
        c.step(0, &[t]).unwrap();
    }
    let agree_until = |want: &[i32], margins: &[f32]| -> (bool, usize) {
        let stop = margins.iter().position(|&m| m < 0.1).unwrap_or(want.len());
        (got[..stop] == want[..stop], stop)
    };
    let (ok_l, n_l) = agree_until(&ids(&g["ids"]), &f32s(&g["top1_minus_top2"]));
    let (ok_i, n_i) = agree_until(&ids(&ideal["greedy"]["ids"]), &f32s(&ideal["greedy"]["top1_minus_top2"]));
    row.greedy_checked = if ok_l { n_l } else { n_i };
    row.greedy_equal = got.iter().zip(ids(&g["ids"])).take_while(|(a, b)| **a == *b).count();
    if !ok_l && !ok_i {
        row.failures.push(format!(
            "greedy ids {got:?} differ from llama.cpp's {:?} (first {n_l}) and the exact math's {:?} (first {n_i})",
            ids(&g["ids"]),
            ids(&ideal["greedy"]["ids"])
        ));
    }
    row
}

#[test]
fn tiny_mixtral_parity_every_variant() {
    let vs = variants();
    assert!(!vs.is_empty(), "no tiny-mixtral variant with a .gguf under tests/data/tiny-mixtral");
    println!(
        "{:<8} {:>9} {:>11} {:>12} {:>9} {:>10} {:>10} {:>14} {:>9}",
        "variant", "positions", "xdan-exact", "llama-exact", "slack", "routing=", "+same-route", "greedy req/eq", "stepwise"
    );
    let mut failures = Vec::new();
    for v in &vs {
        let r = check_variant(v);
        println!(
            "{:<8} {:>4}/{:<4} {:>11.4} {:>12.4} {:>9.4} {:>4}/{:<5} {:>10} {:>8}/{:<2}/24 {:>9.4}",
            r.variant,
            r.positions,
            r.positions_total,
            r.ours,
            r.llama,
            r.worst_slack,
            r.routing_equal,
            r.routing_checked,
            r.same_route_positions,
            r.greedy_checked,
            r.greedy_equal,
            r.stepwise
        );
        for f in &r.failures {
            failures.push(format!("{}: {f}", r.variant));
        }
    }
    assert!(failures.is_empty(), "parity failures:\n{}", failures.join("\n"));
}
