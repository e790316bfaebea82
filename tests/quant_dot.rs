//! vec_dot against a float64 reference over the dequantized weights, on real and random blocks
//! from the fixtures; SIMD against scalar; activation quantizer round trips.
//!
//! Error model. With x the f32 activations, x̂ = dequantize(quantize_act(x)) and w the exactly
//! dequantized weights, the kernels compute Σ w_i x̂_i with exact integer sums inside each block
//! and f32 arithmetic across blocks, so
//!   |vec_dot − Σ w_i x̂_i| ≤ (k + 4) · 2⁻²⁴ · Σ |w_i x̂_i|          (k = blocks, or n/8 for floats)
//! (+ for Q8_1 activations |m_b| · |s_b| · 2⁻¹¹ per block: the block sum s is stored as f16), and
//!   |Σ w_i (x_i − x̂_i)| ≤ Σ |w_i| e_i,  e_i the activation rounding bound of x_i's block:
//!   Q8_0/Q8_1: d/2 + 127·|d − f16(d)| (q is rounded with the unrounded d = amax/127),
//!   Q8_K: d·(1/2 + 2⁻¹⁶), F32: 0.

use std::path::PathBuf;
use xdan::quant::{dequantize, quantize_act, vec_dot, vec_dot_scalar, vec_dot_type, GgmlType};

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/quant")
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn unif(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.unif().max(1e-300), self.unif());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

/// Activations with a heavy-ish tail: mostly N(0,1), some ×10 outliers, some exact zeros.
fn activations(n: usize, seed: u64) -> Vec<f32> {
    let mut r = Rng(seed | 1);
    (0..n)
        .map(|_| {
            let u = r.unif();
            let z = r.normal() as f32;
            if u < 0.02 {
                10.0 * z
            } else if u < 0.03 {
                0.0
            } else {
                z
            }
        })
        .collect()
}

fn f16(x: f32) -> f32 {
    half::f16::from_f32(x).to_f32()
}

/// Per-element activation rounding bound e_i (see the module comment).
fn act_bounds(act_ty: GgmlType, x: &[f32]) -> Vec<f64> {
    let be = act_ty.block_elems();
    let mut e = vec![0f64; x.len()];
    if act_ty == GgmlType::F32 {
        return e;
    }
    for (b, chunk) in x.chunks(be).enumerate() {
        let amax = chunk.iter().fold(0f32, |a, v| a.max(v.abs()));
        let bound = match act_ty {
            GgmlType::Q8_0 | GgmlType::Q8_1 => {
                let d = amax / 127.0;
                d as f64 / 2.0 + 127.0 * (d as f64 - f16(d) as f64).abs()
            }
            GgmlType::Q8_K => amax as f64 / 127.0 * (0.5 + 1.0 / 65536.0),
            _ => unreachable!(),
        };
        for i in 0..chunk.len() {
            e[b * be + i] = bound;
        }
    }
    e
}

struct Outcome {
    got: f32,
    scalar: f32,
}

/// Checks one weight row against the reference; returns a description of a failure.
fn check_row(ty: GgmlType, w: &[u8], n: usize, seed: u64, label: &str) -> Result<Outcome, String> {
    let at = vec_dot_type(ty);
    let x = activations(n, seed);
    let mut act = Vec::new();
    quantize_act(at, &x, &mut act).unwrap();
    let mut wf = vec![0f32; n];
    dequantize(ty, w, &mut wf).unwrap();
    let mut xh = vec![0f32; n];
    dequantize(at, &act, &mut xh).unwrap();

    let got = vec_dot(ty, n, w, &act);
    let scalar = vec_dot_scalar(ty, n, w, &act);
    let abs_wx: f64 = wf.iter().zip(&xh).map(|(a, b)| (*a as f64 * *b as f64).abs()).sum();
    if abs_wx >= f32::MAX as f64 / 4.0 {
        // Partial sums may leave the f32 range (BF16's exhaustive case holds values up to 3e38):
        // not a kernel property; such rows only have to agree between SIMD and scalar.
        assert!(
            got.to_bits() == scalar.to_bits() || (got.is_nan() && scalar.is_nan()) || got == scalar,
            "{label} {ty}: out-of-range row: SIMD {got} vs scalar {scalar}"
        );
        return Err(String::from("skip"));
    }

    let exact_q: f64 = wf.iter().zip(&xh).map(|(a, b)| *a as f64 * *b as f64).sum();
    let exact: f64 = wf.iter().zip(&x).map(|(a, b)| *a as f64 * *b as f64).sum();
    let k = if ty.block_elems() == 1 { n / 8 } else { n / ty.block_elems() };
    let mut tol_arith = (k as f64 + 4.0) * 2f64.powi(-24) * abs_wx * 1.01 + 1e-30;
    if at == GgmlType::Q8_1 {
        // The f16 block sum s multiplies the weight block's minimum m.
        let bb = ty.block_bytes();
        for (b, blk) in w.chunks(bb).enumerate() {
            let m = half::f16::from_bits(u16::from_le_bytes([blk[2], blk[3]])).to_f32() as f64;
            let a = &act[b * 36..];
            let s = half::f16::from_bits(u16::from_le_bytes([a[2], a[3]])).to_f32() as f64;
            tol_arith += m.abs() * s.abs() * 2f64.powi(-11);
        }
    }
    let e = act_bounds(at, &x);
    let tol_act: f64 = wf.iter().zip(&e).map(|(a, b)| (*a as f64).abs() * b).sum();

    for (name, v) in [("dispatch", got), ("scalar", scalar)] {
        if !v.is_finite() || (v as f64 - exact_q).abs() > tol_arith {
            return Err(format!(
                "{label} {ty} ({name}): dot {v} vs f64 over quantized activations {exact_q} (|diff| {} > {tol_arith})",
                (v as f64 - exact_q).abs()
            ));
        }
        if (v as f64 - exact).abs() > tol_act + tol_arith {
            return Err(format!(
                "{label} {ty} ({name}): dot {v} vs exact {exact} (|diff| {} > {})",
                (v as f64 - exact).abs(),
                tol_act + tol_arith
            ));
        }
    }
    // The SIMD kernel, called directly: present for every type it claims, on a CPU that has it.
    #[cfg(target_arch = "x86_64")]
    {
        use xdan::quant::avx2;
        let direct = avx2::vec_dot(ty, n, w, &act);
        assert_eq!(direct.is_some(), avx2::available() && avx2::has_kernel(ty), "{label} {ty}");
        if let Some(v) = direct {
            assert_eq!(
                v.to_bits(),
                got.to_bits(),
                "{label} {ty}: dispatch did not use the SIMD kernel"
            );
        }
    }
    // SIMD and scalar differ only in f32 summation order.
    if (got as f64 - scalar as f64).abs() > 2.0 * tol_arith {
        return Err(format!("{label} {ty}: SIMD {got} vs scalar {scalar}"));
    }
    Ok(Outcome { got, scalar })
}

#[test]
fn vec_dot_matches_f64_reference_on_fixture_blocks() {
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data_dir().join("manifest.json")).unwrap()).unwrap();
    let mut failures = Vec::new();
    let mut checked = 0;
    let mut skipped = Vec::new();
    for t in manifest["types"].as_array().unwrap() {
        let ty = GgmlType::from_name(t["type"].as_str().unwrap()).unwrap();
        for c in t["cases"].as_array().unwrap() {
            let kind = c["kind"].as_str().unwrap();
            let w = std::fs::read(data_dir().join(c["bin"].as_str().unwrap())).unwrap();
            let n = c["n_elements"].as_u64().unwrap() as usize;
            // Whole buffer as one row, and the first block alone (catches per-block slips
            // that long sums might average out).
            let be = ty.block_elems().max(256);
            let rows: Vec<(usize, usize)> = vec![(0, n), (0, be.min(n))];
            for (i, (start, len)) in rows.into_iter().enumerate() {
                let b0 = ty.row_bytes(start as u64).unwrap() as usize;
                let b1 = ty.row_bytes((start + len) as u64).unwrap() as usize;
                for seed in [1u64, 77, 4242] {
                    let label = format!("{kind}/row{i}/seed{seed}");
                    match check_row(ty, &w[b0..b1], len, seed * 7919 + i as u64, &label) {
                        Ok(_) => checked += 1,
                        Err(e) if e == "skip" => skipped.push(format!("{ty} {label}")),
                        Err(e) => failures.push(e),
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
    eprintln!("{checked} rows checked; out of f32 range, not checked: {skipped:?}");
    // Only BF16's exhaustive whole-buffer row (3 seeds) overflows f32.
    assert!(skipped.len() <= 3, "{skipped:?}");
    assert!(checked >= 44 * 6 - 3);
}

/// Weight types without fixtures (F32, Q8_1, Q8_K): rows built by the activation quantizers.
#[test]
fn vec_dot_other_weight_types() {
    for (ty, n) in [(GgmlType::F32, 1000), (GgmlType::Q8_1, 4096), (GgmlType::Q8_K, 4096)] {
        let w = activations(n, 99);
        let mut wb = Vec::new();
        quantize_act(ty, &w, &mut wb).unwrap();
        for seed in [3u64, 5] {
            if let Err(e) = check_row(ty, &wb, n, seed, "synthetic") {
                panic!("{e}");
            }
        }
    }
}

/// Runs every kernel on rows whose lengths exercise odd block counts (1, 3, 5 blocks).
#[test]
fn simd_equals_scalar_on_short_rows() {
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data_dir().join("manifest.json")).unwrap()).unwrap();
    for t in manifest["types"].as_array().unwrap() {
        let ty = GgmlType::from_name(t["type"].as_str().unwrap()).unwrap();
        let c = &t["cases"][1];
        let w = std::fs::read(data_dir().join(c["bin"].as_str().unwrap())).unwrap();
        let be = if ty.block_elems() == 1 { 37 } else { ty.block_elems() };
        for nb in [1usize, 3, 5] {
            let n = be * nb;
            let bytes = ty.row_bytes(n as u64).unwrap() as usize;
            if bytes > w.len() {
                continue;
            }
            let o = check_row(ty, &w[..bytes], n, 11 + nb as u64, "short")
                .unwrap_or_else(|e| panic!("{e}"));
            assert!(o.got.is_finite() && o.scalar.is_finite());
        }
    }
}

/// Many rows at once (the loop with the kernel inlined) give each row's own `vec_dot`, bit for
/// bit, for every type: the fixture's blocks cut into rows of one block each, then of two.
#[test]
fn vec_dot_rows_equals_row_by_row_for_every_type() {
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data_dir().join("manifest.json")).unwrap()).unwrap();
    let mut checked = 0;
    for t in manifest["types"].as_array().unwrap() {
        let ty = GgmlType::from_name(t["type"].as_str().unwrap()).unwrap();
        let w = std::fs::read(data_dir().join(t["cases"][1]["bin"].as_str().unwrap())).unwrap();
        // Rows of three blocks, so a kernel that takes a token's block j from the wrong place fails.
        let be = if ty.block_elems() == 1 { 64 } else { 3 * ty.block_elems() };
        for nb in [1usize, 2] {
            let n = be * nb;
            let rb = ty.row_bytes(n as u64).unwrap() as usize;
            let rows = w.len() / rb;
            if rows < 2 {
                continue;
            }
            let mut act = Vec::new();
            quantize_act(vec_dot_type(ty), &activations(n, 5 + nb as u64), &mut act).unwrap();
            let mut out = vec![0f32; rows];
            xdan::quant::vec_dot_rows(ty, n, &w[..rows * rb], &act, &mut out);
            for (r, o) in out.iter().enumerate() {
                let want = vec_dot(ty, n, &w[r * rb..(r + 1) * rb], &act);
                assert_eq!(o.to_bits(), want.to_bits(), "{ty}, {nb} block(s) per row, row {r} of {rows}");
            }
            checked += 1;
        }
    }
    assert!(checked >= 20, "only {checked} (type, row length) cases had two rows or more");
}

/// Rows × tokens at once (Q2_K … Q6_K and the IQ1, IQ2, IQ3 and IQ4_XS types decode a pair of
/// rows once for all tokens; others go token by token) give each (row, token)'s own `vec_dot`,
/// bit for bit.
#[test]
fn vec_dot_rows_tokens_equals_each_dot() {
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data_dir().join("manifest.json")).unwrap()).unwrap();
    let mut checked = Vec::new();
    for t in manifest["types"].as_array().unwrap() {
        let ty = GgmlType::from_name(t["type"].as_str().unwrap()).unwrap();
        use GgmlType::*;
        let prompt = [IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ4_XS, IQ1_S, IQ1_M, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K];
        let prompt32 = [Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL, MXFP4];
        // F16 and BF16 go token by token.
        if !prompt.contains(&ty) && !prompt32.contains(&ty) && ![F16, BF16].contains(&ty) {
            continue;
        }
        let w = std::fs::read(data_dir().join(t["cases"][1]["bin"].as_str().unwrap())).unwrap();
        // Rows of three blocks, so a kernel that takes a token's block j from the wrong place fails.
        let be = if ty.block_elems() == 1 { 64 } else { 3 * ty.block_elems() };
        let rb = ty.row_bytes(be as u64).unwrap() as usize;
        // An odd number of rows (a last row without its pair) and token counts from 1 to 65.
        let rows = (w.len() / rb).min(19);
        assert!(rows >= 2, "{ty}: the fixture holds {rows} rows of {be}");
        for n_tok in [1usize, 2, 3, 8, 9, 17, 65] {
            let mut acts = Vec::new();
            for k in 0..n_tok {
                let mut a = Vec::new();
                quantize_act(vec_dot_type(ty), &activations(be, 100 + k as u64), &mut a).unwrap();
                acts.extend(a);
            }
            let arb = acts.len() / n_tok;
            let mut out = vec![0f32; rows * n_tok];
            xdan::quant::vec_dot_rows_tokens(ty, be, &w[..rows * rb], &acts, n_tok, &mut out);
            for r in 0..rows {
                for k in 0..n_tok {
                    let want = vec_dot(ty, be, &w[r * rb..(r + 1) * rb], &acts[k * arb..(k + 1) * arb]);
                    assert_eq!(out[r * n_tok + k].to_bits(), want.to_bits(), "{ty}: row {r} of {rows}, token {k} of {n_tok}");
                }
            }
        }
        checked.push(ty);
    }
    assert_eq!(checked.len(), 22, "types found in the fixtures: {checked:?}");
}

/// The machine this is developed on has AVX2; make sure the SIMD kernels really ran there.
#[cfg(target_arch = "x86_64")]
#[test]
fn simd_kernels_cover_the_hot_types() {
    use xdan::quant::avx2;
    for ty in [
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::Q2_K,
        GgmlType::IQ2_XXS,
        GgmlType::IQ4_XS,
    ] {
        assert!(avx2::has_kernel(ty), "{ty}");
    }
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        assert!(avx2::available());
    }
}

#[test]
fn activation_quantizers_round_trip() {
    for (ty, n) in [
        (GgmlType::Q8_0, 4096),
        (GgmlType::Q8_1, 4096),
        (GgmlType::Q8_K, 4096),
        (GgmlType::F16, 1000),
        (GgmlType::BF16, 1000),
        (GgmlType::F32, 1000),
    ] {
        let mut x = activations(n, 5);
        // An all-zero block must give zeros, not NaN.
        for v in &mut x[..ty.block_elems().max(32)] {
            *v = 0.0;
        }
        let mut q = Vec::new();
        quantize_act(ty, &x, &mut q).unwrap();
        assert_eq!(q.len(), ty.row_bytes(n as u64).unwrap() as usize);
        let mut y = vec![0f32; n];
        dequantize(ty, &q, &mut y).unwrap();
        let e = match ty {
            GgmlType::Q8_0 | GgmlType::Q8_1 | GgmlType::Q8_K => act_bounds(ty, &x),
            GgmlType::F16 => {
                x.iter().map(|v| (v.abs() as f64 * 2f64.powi(-11)).max(2f64.powi(-25))).collect()
            }
            GgmlType::BF16 => x.iter().map(|v| v.abs() as f64 * 2f64.powi(-8)).collect(),
            _ => vec![0.0; n],
        };
        for i in 0..n {
            let err = (x[i] as f64 - y[i] as f64).abs();
            assert!(err <= e[i], "{ty} [{i}]: {} -> {} (err {err} > {})", x[i], y[i], e[i]);
        }
        // The largest magnitude of each quantized block maps to ±127.
        if matches!(ty, GgmlType::Q8_0 | GgmlType::Q8_1 | GgmlType::Q8_K) {
            let be = ty.block_elems();
            let bb = ty.block_bytes();
            let qoff = match ty {
                GgmlType::Q8_0 => 2,
                GgmlType::Q8_1 => 4,
                _ => 4,
            };
            for b in 1..n / be {
                let m = q[b * bb + qoff..b * bb + qoff + be]
                    .iter()
                    .map(|v| (*v as i8 as i32).abs())
                    .max()
                    .unwrap();
                assert_eq!(m, 127, "{ty} block {b}");
            }
        }
        if ty == GgmlType::Q8_K {
            // bsums are the sums of each 16 quants.
            for b in 0..n / 256 {
                let blk = &q[b * 292..(b + 1) * 292];
                for j in 0..16 {
                    let s: i32 =
                        blk[4 + 16 * j..4 + 16 * j + 16].iter().map(|v| *v as i8 as i32).sum();
                    let bs = i16::from_le_bytes([blk[260 + 2 * j], blk[261 + 2 * j]]) as i32;
                    assert_eq!(s, bs);
                }
            }
        }
        if ty == GgmlType::Q8_1 {
            for b in 0..n / 32 {
                let blk = &q[b * 36..(b + 1) * 36];
                let d = half::f16::from_bits(u16::from_le_bytes([blk[0], blk[1]])).to_f32();
                let s = half::f16::from_bits(u16::from_le_bytes([blk[2], blk[3]])).to_f32();
                let sum: i32 = blk[4..].iter().map(|v| *v as i8 as i32).sum();
                // s = f16(sum * d_unrounded); |d_unrounded - d| <= 2^-11 d.
                let want = sum as f64 * d as f64;
                assert!(
                    (s as f64 - want).abs() <= want.abs() * 2.0 * 2f64.powi(-11) + 1e-30,
                    "Q8_1 s block {b}: {s} vs {want}"
                );
            }
        }
    }
    // The slice variant writes the same bytes and refuses a wrong-sized slice.
    for ty in [
        GgmlType::Q8_0,
        GgmlType::Q8_1,
        GgmlType::Q8_K,
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::BF16,
    ] {
        let x = activations(512, 9);
        let mut v = vec![0xAA];
        quantize_act(ty, &x, &mut v).unwrap();
        let mut s = vec![0u8; v.len() - 1];
        xdan::quant::quantize_act_into(ty, &x, &mut s).unwrap();
        assert_eq!(&v[1..], &s[..], "{ty}");
        assert!(xdan::quant::quantize_act_into(ty, &x, &mut s[1..]).is_err());
    }
    let mut out = Vec::new();
    assert!(quantize_act(GgmlType::Q8_0, &[1.0; 31], &mut out).is_err());
    assert!(quantize_act(GgmlType::Q4_0, &[1.0; 32], &mut out).is_err());
    assert!(out.is_empty());
}

#[test]
fn vec_dot_rows_and_size_checks() {
    let w = std::fs::read(data_dir().join("Q4_K_real.bin")).unwrap();
    let n = 1024;
    let rows = w.len() / GgmlType::Q4_K.row_bytes(n as u64).unwrap() as usize;
    let x = activations(n, 21);
    let mut act = Vec::new();
    quantize_act(GgmlType::Q8_K, &x, &mut act).unwrap();
    let mut out = vec![0f32; rows];
    xdan::quant::vec_dot_rows(GgmlType::Q4_K, n, &w, &act, &mut out);
    let rb = w.len() / rows;
    for r in 0..rows {
        assert_eq!(
            out[r].to_bits(),
            vec_dot(GgmlType::Q4_K, n, &w[r * rb..(r + 1) * rb], &act).to_bits()
        );
    }
    let e = xdan::quant::check_dot(GgmlType::Q4_K, n, &w[..rb - 1], &act).unwrap_err();
    assert!(e.message.contains("Q4_K"), "{}", e.message);
    assert!(xdan::quant::check_dot(GgmlType::Q4_K, n, &w[..rb], &act[1..]).is_err());
    assert!(xdan::quant::check_dot(GgmlType::Q4_K, 100, &w[..rb], &act).is_err());
    assert!(xdan::quant::check_dot(GgmlType::Q4_K, n, &w[..rb], &act).is_ok());
    let r = std::panic::catch_unwind(|| vec_dot(GgmlType::Q4_K, n, &w[..rb], &act[..10]));
    assert!(r.is_err(), "a size mismatch must not compute garbage");
}
