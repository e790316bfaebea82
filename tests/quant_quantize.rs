//! Weight quantizers: quantize → dequantize round trips stay within one quantization step
//! (plus, for the K-quants, one step of the quantized minimum) of the input, for every type
//! `quantize_weights` supports. Packing slips give errors of the order of the whole range.

use xdan::quant::{can_quantize, dequantize, quantize_weights, GgmlType};

fn data(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..n)
        .map(|i| {
            let z = (-2.0 * next().max(1e-300).ln()).sqrt() * (6.283185307179586 * next()).cos();
            // Blocks of different scales, a few outliers, an all-positive stretch.
            let scale = [0.01, 1.0, 30.0][(i / 512) % 3];
            let v = if next() < 0.01 { 8.0 * z } else { z };
            (if (i / 256) % 5 == 4 { v.abs() + 0.5 } else { v } * scale) as f32
        })
        .collect()
}

fn f16(b: &[u8]) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()
}

/// Per-element error bound from the decoded block (see the module comment).
fn bounds(ty: GgmlType, q: &[u8], n: usize) -> Vec<f32> {
    let bb = ty.block_bytes();
    let be = ty.block_elems();
    let mut e = vec![0f32; n];
    for (b, blk) in q.chunks(bb).enumerate() {
        let out = &mut e[b * be..(b + 1) * be];
        match ty {
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q8_0 => {
                out.fill(f16(blk).abs() * 1.02)
            }
            GgmlType::IQ4_NL => out.fill(f16(blk).abs() * 14.01),
            GgmlType::Q4_K | GgmlType::Q5_K => {
                let (d, dmin) = (f16(&blk[0..]), f16(&blk[2..]));
                let sc: &[u8] = &blk[4..16];
                for g in 0..8 {
                    let (s, m) = if g < 4 {
                        (sc[g] & 63, sc[g + 4] & 63)
                    } else {
                        (
                            (sc[g + 4] & 0xf) | ((sc[g - 4] >> 6) << 4),
                            (sc[g + 4] >> 4) | ((sc[g] >> 6) << 4),
                        )
                    };
                    let _ = m;
                    out[32 * g..32 * g + 32].fill(d * s as f32 * 1.01 + dmin * 1.01);
                }
            }
            GgmlType::Q6_K => {
                let d = f16(&blk[208..]);
                for g in 0..16 {
                    out[16 * g..16 * g + 16].fill((d * (blk[192 + g] as i8) as f32).abs() * 1.01);
                }
            }
            GgmlType::IQ4_XS => {
                let d = f16(blk);
                let sh = u16::from_le_bytes([blk[2], blk[3]]);
                for g in 0..8 {
                    let l = ((blk[4 + g / 2] >> (4 * (g % 2))) & 0xf) as i32
                        | ((((sh >> (2 * g)) & 3) as i32) << 4);
                    out[32 * g..32 * g + 32].fill((d * (l - 32) as f32).abs() * 14.01);
                }
            }
            GgmlType::F32 => out.fill(0.0),
            GgmlType::F16 | GgmlType::BF16 => {}
            _ => unreachable!(),
        }
    }
    e
}

#[test]
fn weight_quantizers_round_trip() {
    let n = 256 * 24;
    let x = data(n, 17);
    let mut tested = Vec::new();
    for ty in [
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::IQ4_NL,
        GgmlType::IQ4_XS,
        GgmlType::F32,
    ] {
        assert!(can_quantize(ty));
        let mut q = vec![0x5a]; // appends after existing bytes
        quantize_weights(ty, &x, &mut q).unwrap();
        let q = &q[1..];
        assert_eq!(q.len() as u64, ty.row_bytes(n as u64).unwrap(), "{ty}");
        let mut y = vec![0f32; n];
        dequantize(ty, q, &mut y).unwrap();
        let e = bounds(ty, q, n);
        let mut sq = 0f64;
        for i in 0..n {
            let err = (x[i] - y[i]).abs();
            assert!(
                err <= e[i] + 1e-6 * x[i].abs(),
                "{ty} [{i}]: {} -> {} (err {err} > {})",
                x[i],
                y[i],
                e[i]
            );
            sq += (err as f64).powi(2);
        }
        tested.push(format!("{ty} rms err {:.3e}", (sq / n as f64).sqrt()));
    }
    eprintln!("{tested:?}");
    let mut out = Vec::new();
    assert!(quantize_weights(GgmlType::Q4_K, &x[..100], &mut out).is_err());
    assert!(quantize_weights(GgmlType::IQ2_XXS, &x[..256], &mut out).is_err());
    assert!(out.is_empty());
}

/// Zero blocks quantize to zeros, not NaN.
#[test]
fn weight_quantizers_zero_blocks() {
    let x = vec![0f32; 256];
    for ty in [
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::IQ4_NL,
        GgmlType::IQ4_XS,
    ] {
        let mut q = Vec::new();
        quantize_weights(ty, &x, &mut q).unwrap();
        let mut y = vec![1f32; 256];
        dequantize(ty, &q, &mut y).unwrap();
        assert!(y.iter().all(|v| v.abs() < 1e-30), "{ty}: {:?}", &y[..4]);
    }
}
