//! The CPU backend's one-token paths (a decode step: a layer's matvecs, and a MoE layer's chosen
//! experts, in one parallel region each) against its batch paths. A token's row of a batch is
//! summed by the same dots in the same order as the token alone, so the two agree bit for bit:
//! checked below and above the size where the work goes parallel, with weights of different
//! activation types in one call, and with a host-experts filter.

use std::sync::Arc;

use xdan::backend::cpu::{CpuBackend, Mat};
use xdan::backend::{Backend, Ffn};
use xdan::gguf::{Gguf, GgufWriter};
use xdan::quant::{random_weights, GgmlType};

/// Deterministic pseudo-random numbers (a 64-bit LCG), uniform in [-1, 1).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

/// A GGUF in memory: per (name, type, rows, cols) random blocks (an F32 tensor small values).
fn gguf(tensors: &[(&str, GgmlType, usize, usize)], seed: u64) -> Arc<Gguf> {
    let mut w = GgufWriter::new();
    let mut rng = Rng(seed);
    for (i, &(name, ty, rows, cols)) in tensors.iter().enumerate() {
        let n = rows * cols;
        let data = if ty == GgmlType::F32 {
            (0..n).flat_map(|_| (0.2 * rng.next()).to_le_bytes()).collect()
        } else {
            let mut b = vec![0u8; n / ty.block_elems() * ty.block_bytes()];
            random_weights(ty, seed * 100 + i as u64, &mut b).unwrap();
            b
        };
        w.add_tensor(name, &[cols as u64, rows as u64], ty, data).unwrap();
    }
    Arc::new(Gguf::from_bytes(w.to_bytes()).unwrap())
}

fn acts(rows: usize, cols: usize, rng: &mut Rng) -> Mat {
    // Magnitudes that change from one 32-block to the next, as hidden states do.
    let data = (0..rows * cols).map(|i| rng.next() * (0.2 + ((i % cols) / 32 % 5) as f32)).collect();
    Mat { data, rows, cols }
}

fn one_row(x: &Mat, t: usize) -> Mat {
    Mat { data: x.row(t).to_vec(), rows: 1, cols: x.cols }
}

fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

#[test]
fn one_token_matmul_equals_its_batch_row() {
    let be = CpuBackend;
    // (rows, cols): 40 × 256 stays on the calling thread; 1000 × 512 goes parallel.
    for (rows, cols) in [(40usize, 256usize), (1000, 512)] {
        // Q8_K (Q4_K, Q6_K, IQ2_XXS), Q8_0 (Q8_0, IQ4_NL) and Q8_1 (Q4_1) activations in one call.
        let types = [GgmlType::Q4_K, GgmlType::Q8_0, GgmlType::Q6_K, GgmlType::Q4_1, GgmlType::IQ2_XXS, GgmlType::IQ4_NL];
        let names: Vec<String> = (0..types.len()).map(|i| format!("w{i}")).collect();
        let specs: Vec<_> = types.iter().zip(&names).map(|(&ty, n)| (n.as_str(), ty, rows, cols)).collect();
        let g = gguf(&specs, 7);
        let ws: Vec<_> = names.iter().map(|n| be.weight(&g, g.tensor(n).unwrap()).unwrap()).collect();
        let wr: Vec<_> = ws.iter().collect();
        let x = acts(3, cols, &mut Rng(11));
        let mut batch: Vec<Mat> = (0..ws.len()).map(|_| Mat::default()).collect();
        be.matmul(&x, &wr, &mut batch.iter_mut().collect::<Vec<_>>()).unwrap();
        for t in 0..x.rows {
            let mut one: Vec<Mat> = (0..ws.len()).map(|_| Mat::default()).collect();
            be.matmul(&one_row(&x, t), &wr, &mut one.iter_mut().collect::<Vec<_>>()).unwrap();
            for (i, (o, b)) in one.iter().zip(&batch).enumerate() {
                assert_eq!((o.rows, o.cols), (1, rows));
                assert!(same_bits(&o.data, b.row(t)), "{rows}x{cols}, {}: token {t} alone differs from its batch row", types[i]);
            }
        }
    }
}

#[test]
fn one_token_experts_equal_their_batch_row() {
    let be = CpuBackend;
    // (n_embd, n_ff, experts, top-k, gate, up, down): the first stays on the calling thread,
    // the others go parallel; gate and up of different activation types in the second.
    let cases = [
        (256usize, 256usize, 4usize, 2usize, GgmlType::Q8_0, GgmlType::Q8_0, GgmlType::Q8_0),
        (256, 512, 8, 2, GgmlType::Q4_K, GgmlType::Q8_0, GgmlType::Q6_K),
        (512, 768, 8, 3, GgmlType::IQ2_XXS, GgmlType::IQ2_XXS, GgmlType::Q4_K),
    ];
    for (d, n_ff, ne, k, gt, ut, dt) in cases {
        let g = gguf(
            &[
                ("router", GgmlType::F32, ne, d),
                ("gate", gt, ne * n_ff, d),
                ("up", ut, ne * n_ff, d),
                ("down", dt, ne * d, n_ff),
            ],
            3,
        );
        let wt = |n: &str| be.weight(&g, g.tensor(n).unwrap()).unwrap();
        let f = Ffn { router: Some(wt("router")), gate: wt("gate"), up: wt("up"), down: wt("down"), n_expert: ne, n_expert_used: k, n_ff };
        let x = acts(4, d, &mut Rng(5));
        let (mut batch, mut routes) = (Mat::default(), Vec::new());
        be.ffn(&x, &f, &mut batch, Some(&mut routes)).unwrap();
        let wts: Vec<f32> = (0..routes.len()).map(|i| 0.25 + 0.1 * i as f32).collect();
        // Experts a device would keep in host memory: the odd ones.
        let host = |e: usize| e % 2 == 1;
        let mut host_batch = Mat::default();
        be.moe_experts(&x, &f, &routes, &wts, &host, &mut host_batch).unwrap();
        for t in 0..x.rows {
            let xt = one_row(&x, t);
            let (mut one, mut r1) = (Mat::default(), Vec::new());
            be.ffn(&xt, &f, &mut one, Some(&mut r1)).unwrap();
            assert_eq!(r1, routes[t * k..(t + 1) * k], "{gt}/{ut}/{dt}: token {t} routed differently alone");
            assert!(same_bits(&one.data, batch.row(t)), "{gt}/{ut}/{dt} ({d}, {n_ff}): token {t}'s experts alone differ from its batch row");
            let mut host_one = Mat::default();
            be.moe_experts(&xt, &f, &r1, &wts[t * k..(t + 1) * k], &host, &mut host_one).unwrap();
            assert!(same_bits(&host_one.data, host_batch.row(t)), "{gt}/{ut}/{dt}: token {t}'s host experts alone differ from its batch row");
        }
        // A token none of whose experts the filter takes gets zeros.
        let mut none = Mat::default();
        be.moe_experts(&one_row(&x, 0), &f, &routes[..k], &wts[..k], &|_| false, &mut none).unwrap();
        assert!(none.data.iter().all(|&v| v == 0.0) && none.data.len() == d);
    }
}
