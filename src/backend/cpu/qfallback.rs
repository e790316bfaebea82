//! Stand-in for the `quant` kernels until they are available: Q8_0 weights only.
use half::f16;

use crate::error::{Error, Result};
use crate::quant::GgmlType;

pub fn vec_dot_type(w: GgmlType) -> GgmlType {
    match w {
        _ => GgmlType::Q8_0,
    }
}

pub fn vec_dot_supported(w: GgmlType) -> bool {
    w == GgmlType::Q8_0
}

pub fn quantize_act(a: GgmlType, x: &[f32], out: &mut [u8]) {
    assert_eq!(a, GgmlType::Q8_0);
    for (blk, o) in x.chunks_exact(32).zip(out.chunks_exact_mut(34)) {
        let amax = blk.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
        o[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
        for (q, v) in o[2..].iter_mut().zip(blk) {
            *q = (v * id).round_ties_even() as i8 as u8;
        }
    }
}

pub fn vec_dot(w: GgmlType, n: usize, wrow: &[u8], act: &[u8]) -> f32 {
    assert_eq!(w, GgmlType::Q8_0);
    let mut s = 0.0f32;
    for (a, b) in wrow.chunks_exact(34).zip(act.chunks_exact(34)).take(n / 32) {
        let da = f16::from_le_bytes([a[0], a[1]]).to_f32();
        let db = f16::from_le_bytes([b[0], b[1]]).to_f32();
        let mut si = 0i32;
        for i in 0..32 {
            si += (a[2 + i] as i8 as i32) * (b[2 + i] as i8 as i32);
        }
        s += da * db * si as f32;
    }
    s
}

pub fn dequantize(ty: GgmlType, data: &[u8], out: &mut [f32]) -> Result<()> {
    if ty != GgmlType::Q8_0 {
        return Err(Error::unsupported(format!("{ty} not available yet")));
    }
    for (b, o) in data.chunks_exact(34).zip(out.chunks_exact_mut(32)) {
        let d = f16::from_le_bytes([b[0], b[1]]).to_f32();
        for i in 0..32 {
            o[i] = d * (b[2 + i] as i8 as f32);
        }
    }
    Ok(())
}
