//! The exact-math reference a tiny-mixtral variant is judged against.
//!
//! F16 and the quantized variants store a float64 forward pass over their own dequantized
//! weights (`ideal.json`, `ideal_logits_p<i>.bin`, `ideal_router_margin_p<i>.bin`).
//! F32 stores the float64 NumPy forward pass of its weights instead (`numpy_f64_logits_p<i>.bin`),
//! which matches llama.cpp's F32 run within 1.2e-6, so its router margins and greedy ids are
//! taken from that run. BF16 stores no exact math of its own: it is judged against the F32
//! model's (the unquantized weights), like a quantized type would be against its source.

use serde_json::{json, Value};

use super::{data_dir, f32s, ids, max_abs_diff, read_f32, read_i32, read_json};

pub struct Exact {
    /// Shaped like `ideal.json`: `prompts[i].llama_vs_ideal_maxabs_per_pos`, `greedy.{ids,
    /// top1_minus_top2}`.
    pub summary: Value,
    /// Per prompt, float32 `[n_tokens][n_vocab]`.
    pub logits: Vec<Vec<f32>>,
    /// Per prompt, `[n_layer][n_tokens]`: router probability of the last selected expert minus
    /// that of the first unselected one.
    pub router_margin: Vec<Vec<f32>>,
}

pub fn exact_reference(variant: &str) -> Exact {
    let dir = data_dir().join("tiny-mixtral").join(variant);
    if variant != "F32" && variant != "BF16" {
        let n = read_json(&dir.join("refs.json"))["prompts"]
            .as_array()
            .unwrap()
            .len();
        return Exact {
            summary: read_json(&dir.join("ideal.json")),
            logits: (0..n)
                .map(|i| read_f32(&dir.join(format!("ideal_logits_p{i}.bin"))))
                .collect(),
            router_margin: (0..n)
                .map(|i| read_f32(&dir.join(format!("ideal_router_margin_p{i}.bin"))))
                .collect(),
        };
    }
    let f32_dir = data_dir().join("tiny-mixtral/F32");
    let f32_refs = read_json(&f32_dir.join("refs.json"));
    let refs = read_json(&dir.join("refs.json"));
    let k = 2; // llama.expert_used_count of tiny-mixtral
    let mut logits = Vec::new();
    let mut router_margin = Vec::new();
    let mut prompts = Vec::new();
    for (i, p) in f32_refs["prompts"].as_array().unwrap().iter().enumerate() {
        let n = ids(&p["ids"]).len();
        let exact = read_f32(&f32_dir.join(format!("numpy_f64_logits_p{i}.bin")));
        let n_vocab = exact.len() / n;
        // The stored summary of the NumPy pass against llama.cpp's F32 logits must hold for the
        // files read here, up to the rounding of the float64 logits to the stored f32 (half an
        // ulp: < 5e-7 for |logits| < 16).
        let f32_llama = read_f32(&f32_dir.join(format!("logits_p{i}.bin")));
        let stated = f32_refs["numpy_reference"]["max_abs_diff_vs_llama_cpp"][format!("p{i}")]
            .as_f64()
            .unwrap();
        let d = max_abs_diff(&f32_llama, &exact) as f64;
        assert!(
            (d - stated).abs() < 5e-7,
            "F32 numpy_f64_logits_p{i}: max diff to llama.cpp {d}, refs.json says {stated}"
        );
        let llama = read_f32(&dir.join(format!("logits_p{i}.bin")));
        let per_pos: Vec<f32> = (0..n)
            .map(|t| {
                max_abs_diff(
                    &llama[t * n_vocab..(t + 1) * n_vocab],
                    &exact[t * n_vocab..(t + 1) * n_vocab],
                )
            })
            .collect();
        prompts.push(json!({ "n": n, "llama_vs_ideal_maxabs_per_pos": per_pos }));
        let order = read_i32(&f32_dir.join(format!("routing_order_p{i}.bin")));
        let probs = read_f32(&f32_dir.join(format!("routing_probs_p{i}.bin")));
        let n_exp = 8;
        router_margin.push(
            (0..order.len() / n_exp)
                .map(|r| {
                    let (o, pr) = (
                        &order[r * n_exp..(r + 1) * n_exp],
                        &probs[r * n_exp..(r + 1) * n_exp],
                    );
                    pr[o[k - 1] as usize] - pr[o[k] as usize]
                })
                .collect(),
        );
        logits.push(exact);
    }
    assert_eq!(refs["prompts"].as_array().unwrap().len(), prompts.len());
    let g = &f32_refs["greedy"];
    let summary = json!({
        "prompts": prompts,
        "greedy": { "ids": ids(&g["ids"]), "top1_minus_top2": f32s(&g["top1_minus_top2"]) },
    });
    Exact {
        summary,
        logits,
        router_margin,
    }
}
