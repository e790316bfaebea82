//! The 256-element K-quant super-block formats Q2_K, Q3_K, Q4_K, Q5_K, Q6_K and the activation
//! format Q8_K they are dotted with.

use super::block::{f16_to_f32, impl_block, nearest_int};
use super::types::GgmlType;

pub const QK_K: usize = 256;

/// Q2_K: 16 groups of 16; `x = d * (sc & 15) * q - dmin * (sc >> 4)`, q 2-bit.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct BlockQ2K {
    pub scales: [u8; 16],
    pub qs: [u8; 64],
    pub d: [u8; 2],
    pub dmin: [u8; 2],
}
impl_block!(BlockQ2K, Q2_K, 256);

/// Q3_K: 16 groups of 16; 6-bit signed scales (offset 32) packed in 12 bytes; q = low 2 bits
/// from `qs` minus 4 unless the `hmask` bit is set.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct BlockQ3K {
    pub hmask: [u8; 32],
    pub qs: [u8; 64],
    pub scales: [u8; 12],
    pub d: [u8; 2],
}
impl_block!(BlockQ3K, Q3_K, 256);

/// Q4_K: 8 groups of 32; 6-bit scale and min per group packed in 12 bytes.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct BlockQ4K {
    pub d: [u8; 2],
    pub dmin: [u8; 2],
    pub scales: [u8; 12],
    pub qs: [u8; 128],
}
impl_block!(BlockQ4K, Q4_K, 256);

/// Q5_K: Q4_K plus a fifth bit per element in `qh`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct BlockQ5K {
    pub d: [u8; 2],
    pub dmin: [u8; 2],
    pub scales: [u8; 12],
    pub qh: [u8; 32],
    pub qs: [u8; 128],
}
impl_block!(BlockQ5K, Q5_K, 256);

/// Q6_K: 16 groups of 16, int8 scales; q 6-bit (4 low bits in `ql`, 2 high in `qh`) minus 32.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct BlockQ6K {
    pub ql: [u8; 128],
    pub qh: [u8; 64],
    pub scales: [u8; 16],
    pub d: [u8; 2],
}
impl_block!(BlockQ6K, Q6_K, 256);

/// Q8_K: f32 scale, 256 int8, and the sums of each 16 (they fold K-quant minimums in cheaply).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct BlockQ8K {
    pub d: [u8; 4],
    pub qs: [u8; 256],
    pub bsums: [u8; 32],
}
impl_block!(BlockQ8K, Q8_K, 256);

/// The 6-bit (scale, min) of group `j` of a Q4_K/Q5_K block (`get_scale_min_k4`).
#[inline(always)]
pub fn scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xf) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// The 16 signed scales (−32..31) of a Q3_K block.
#[inline(always)]
pub fn q3k_scales(s: &[u8; 12]) -> [i8; 16] {
    let r = q3k_scale_words(s);
    let mut out = [0i8; 16];
    for (i, w) in r.iter().enumerate() {
        for (k, b) in w.to_le_bytes().iter().enumerate() {
            out[4 * i + k] = (*b as i8) - 32;
        }
    }
    out
}

/// The 16 scales of a Q3_K block plus 32 (0..63), as bytes of four little-endian words.
#[inline(always)]
pub fn q3k_scale_words(s: &[u8; 12]) -> [u32; 4] {
    const KMASK1: u32 = 0x0303_0303;
    const KMASK2: u32 = 0x0f0f_0f0f;
    let a0 = u32::from_le_bytes([s[0], s[1], s[2], s[3]]);
    let a1 = u32::from_le_bytes([s[4], s[5], s[6], s[7]]);
    let tmp = u32::from_le_bytes([s[8], s[9], s[10], s[11]]);
    [
        (a0 & KMASK2) | ((tmp & KMASK1) << 4),
        (a1 & KMASK2) | (((tmp >> 2) & KMASK1) << 4),
        ((a0 >> 4) & KMASK2) | (((tmp >> 4) & KMASK1) << 4),
        ((a1 >> 4) & KMASK2) | (((tmp >> 6) & KMASK1) << 4),
    ]
}

impl BlockQ2K {
    pub fn dequantize(&self, y: &mut [f32]) {
        let d = f16_to_f32(self.d);
        let min = f16_to_f32(self.dmin);
        let mut is = 0;
        let mut yi = 0;
        for n in 0..2 {
            let q = &self.qs[32 * n..32 * n + 32];
            for shift in [0u32, 2, 4, 6] {
                for half in 0..2 {
                    let sc = self.scales[is];
                    is += 1;
                    let dl = d * (sc & 0xf) as f32;
                    let ml = min * (sc >> 4) as f32;
                    for l in 0..16 {
                        y[yi] = dl * ((q[l + 16 * half] >> shift) & 3) as f32 - ml;
                        yi += 1;
                    }
                }
            }
        }
    }
    /// The 256 2-bit codes in element order.
    #[inline(always)]
    pub fn codes(&self) -> [u8; 256] {
        let mut out = [0u8; 256];
        for n in 0..2 {
            for (j, shift) in [0u32, 2, 4, 6].into_iter().enumerate() {
                for l in 0..32 {
                    out[128 * n + 32 * j + l] = (self.qs[32 * n + l] >> shift) & 3;
                }
            }
        }
        out
    }
}

impl BlockQ3K {
    /// The 256 signed codes (−4..3) in element order.
    #[inline(always)]
    pub fn codes(&self) -> [i8; 256] {
        let mut out = [0i8; 256];
        let mut m = 1u8;
        for n in 0..2 {
            for (j, shift) in [0u32, 2, 4, 6].into_iter().enumerate() {
                for l in 0..32 {
                    let lo = ((self.qs[32 * n + l] >> shift) & 3) as i8;
                    let hi = if self.hmask[l] & m != 0 { 0 } else { 4 };
                    out[128 * n + 32 * j + l] = lo - hi;
                }
                m = m.wrapping_shl(1);
            }
        }
        out
    }
    pub fn dequantize(&self, y: &mut [f32]) {
        let d_all = f16_to_f32(self.d);
        let sc = q3k_scales(&self.scales);
        let q = self.codes();
        for g in 0..16 {
            let dl = d_all * sc[g] as f32;
            for l in 0..16 {
                y[16 * g + l] = dl * q[16 * g + l] as f32;
            }
        }
    }
}

impl BlockQ4K {
    pub fn dequantize(&self, y: &mut [f32]) {
        let d = f16_to_f32(self.d);
        let min = f16_to_f32(self.dmin);
        for c in 0..4 {
            let (sc1, m1) = scale_min_k4(2 * c, &self.scales);
            let (sc2, m2) = scale_min_k4(2 * c + 1, &self.scales);
            let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
            let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
            let q = &self.qs[32 * c..32 * c + 32];
            for l in 0..32 {
                y[64 * c + l] = d1 * (q[l] & 0xf) as f32 - m1;
                y[64 * c + 32 + l] = d2 * (q[l] >> 4) as f32 - m2;
            }
        }
    }
}

impl BlockQ5K {
    #[inline(always)]
    pub fn codes(&self) -> [u8; 256] {
        let mut out = [0u8; 256];
        for c in 0..4 {
            let (u1, u2) = (1u8 << (2 * c), 2u8 << (2 * c));
            for l in 0..32 {
                let ql = self.qs[32 * c + l];
                let qh = self.qh[l];
                out[64 * c + l] = (ql & 0xf) + if qh & u1 != 0 { 16 } else { 0 };
                out[64 * c + 32 + l] = (ql >> 4) + if qh & u2 != 0 { 16 } else { 0 };
            }
        }
        out
    }
    pub fn dequantize(&self, y: &mut [f32]) {
        let d = f16_to_f32(self.d);
        let min = f16_to_f32(self.dmin);
        let q = self.codes();
        for c in 0..4 {
            let (sc1, m1) = scale_min_k4(2 * c, &self.scales);
            let (sc2, m2) = scale_min_k4(2 * c + 1, &self.scales);
            let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
            let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
            for l in 0..32 {
                y[64 * c + l] = d1 * q[64 * c + l] as f32 - m1;
                y[64 * c + 32 + l] = d2 * q[64 * c + 32 + l] as f32 - m2;
            }
        }
    }
}

impl BlockQ6K {
    /// The 256 signed codes (−32..31) in element order.
    #[inline(always)]
    pub fn codes(&self) -> [i8; 256] {
        let mut out = [0i8; 256];
        for n in 0..2 {
            let ql = &self.ql[64 * n..64 * n + 64];
            let qh = &self.qh[32 * n..32 * n + 32];
            for l in 0..32 {
                let o = 128 * n + l;
                out[o] = ((ql[l] & 0xf) | ((qh[l] & 3) << 4)) as i8 - 32;
                out[o + 32] = ((ql[l + 32] & 0xf) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
                out[o + 64] = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
                out[o + 96] = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
            }
        }
        out
    }
    pub fn dequantize(&self, y: &mut [f32]) {
        let d = f16_to_f32(self.d);
        let q = self.codes();
        for g in 0..16 {
            // (d * scale) * q, in that order, as the format's reference does.
            let ds = d * (self.scales[g] as i8) as f32;
            for l in 0..16 {
                y[16 * g + l] = ds * q[16 * g + l] as f32;
            }
        }
    }
}

impl BlockQ8K {
    #[inline(always)]
    pub fn d(&self) -> f32 {
        f32::from_le_bytes(self.d)
    }
    #[inline(always)]
    pub fn q(&self) -> &[i8; 256] {
        // SAFETY: same size/alignment; every bit pattern is a valid i8.
        unsafe { &*(&self.qs as *const [u8; 256] as *const [i8; 256]) }
    }
    #[inline(always)]
    pub fn bsum(&self, j: usize) -> i32 {
        i16::from_le_bytes([self.bsums[2 * j], self.bsums[2 * j + 1]]) as i32
    }
    pub fn dequantize(&self, y: &mut [f32]) {
        let d = self.d();
        for (o, q) in y.iter_mut().zip(self.q()) {
            *o = d * *q as f32;
        }
    }
    /// ggml's reference Q8_K quantizer: scale from the element of largest magnitude so that it
    /// maps to ∓127, round to nearest even.
    pub fn quantize(x: &[f32]) -> BlockQ8K {
        let x = &x[..QK_K];
        let mut amax = 0f32;
        let mut max = 0f32;
        for &v in x {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        let mut b = BlockQ8K { d: [0; 4], qs: [0; 256], bsums: [0; 32] };
        if amax == 0.0 {
            return b;
        }
        let iscale = -127.0 / max;
        for (j, &v) in x.iter().enumerate() {
            b.qs[j] = nearest_int(iscale * v).min(127) as i8 as u8;
        }
        for j in 0..16 {
            let s: i32 = (0..16).map(|i| b.qs[16 * j + i] as i8 as i32).sum();
            b.bsums[2 * j..2 * j + 2].copy_from_slice(&(s as i16).to_le_bytes());
        }
        b.d = (1.0 / iscale).to_le_bytes();
        b
    }
}

pub fn dot_q2_k_q8_k(x: &[BlockQ2K], y: &[BlockQ8K]) -> f32 {
    let mut sumf = 0f32;
    for (bx, by) in x.iter().zip(y) {
        let q8 = by.q();
        let q = bx.codes();
        let mut summs = 0i32;
        let mut isum = 0i32;
        for g in 0..16 {
            let sc = bx.scales[g];
            summs += (sc >> 4) as i32 * by.bsum(g);
            let mut s = 0i32;
            for l in 0..16 {
                s += q[16 * g + l] as i32 * q8[16 * g + l] as i32;
            }
            isum += (sc & 0xf) as i32 * s;
        }
        let dall = by.d() * f16_to_f32(bx.d);
        let dmin = by.d() * f16_to_f32(bx.dmin);
        sumf += dall * isum as f32 - dmin * summs as f32;
    }
    sumf
}

pub fn dot_q3_k_q8_k(x: &[BlockQ3K], y: &[BlockQ8K]) -> f32 {
    let mut sumf = 0f32;
    for (bx, by) in x.iter().zip(y) {
        let q8 = by.q();
        let q = bx.codes();
        let sc = q3k_scales(&bx.scales);
        let mut isum = 0i32;
        for g in 0..16 {
            let mut s = 0i32;
            for l in 0..16 {
                s += q[16 * g + l] as i32 * q8[16 * g + l] as i32;
            }
            isum += sc[g] as i32 * s;
        }
        sumf += f16_to_f32(bx.d) * by.d() * isum as f32;
    }
    sumf
}

pub fn dot_q4_k_q8_k(x: &[BlockQ4K], y: &[BlockQ8K]) -> f32 {
    let mut sumf = 0f32;
    for (bx, by) in x.iter().zip(y) {
        let q8 = by.q();
        // Unpack the nibbles first: fixed-size loops the compiler vectorises.
        let mut q = [0u8; 256];
        for c in 0..4 {
            for l in 0..32 {
                q[64 * c + l] = bx.qs[32 * c + l] & 0xf;
                q[64 * c + 32 + l] = bx.qs[32 * c + l] >> 4;
            }
        }
        let mut isum = 0i32;
        let mut summ = 0i32;
        for g in 0..8 {
            let (sc, m) = scale_min_k4(g, &bx.scales);
            let mut s = 0i32;
            for l in 0..32 {
                s += q[32 * g + l] as i32 * q8[32 * g + l] as i32;
            }
            isum += sc as i32 * s;
            summ += m as i32 * (by.bsum(2 * g) + by.bsum(2 * g + 1));
        }
        let d = f16_to_f32(bx.d) * by.d();
        let dmin = f16_to_f32(bx.dmin) * by.d();
        sumf += d * isum as f32 - dmin * summ as f32;
    }
    sumf
}

pub fn dot_q5_k_q8_k(x: &[BlockQ5K], y: &[BlockQ8K]) -> f32 {
    let mut sumf = 0f32;
    for (bx, by) in x.iter().zip(y) {
        let q8 = by.q();
        let q = bx.codes();
        let mut isum = 0i32;
        let mut summ = 0i32;
        for g in 0..8 {
            let (sc, m) = scale_min_k4(g, &bx.scales);
            let mut s = 0i32;
            for l in 0..32 {
                s += q[32 * g + l] as i32 * q8[32 * g + l] as i32;
            }
            isum += sc as i32 * s;
            summ += m as i32 * (by.bsum(2 * g) + by.bsum(2 * g + 1));
        }
        let d = f16_to_f32(bx.d) * by.d();
        let dmin = f16_to_f32(bx.dmin) * by.d();
        sumf += d * isum as f32 - dmin * summ as f32;
    }
    sumf
}

pub fn dot_q6_k_q8_k(x: &[BlockQ6K], y: &[BlockQ8K]) -> f32 {
    let mut sumf = 0f32;
    for (bx, by) in x.iter().zip(y) {
        let q8 = by.q();
        let q = bx.codes();
        let mut isum = 0i32;
        for g in 0..16 {
            let mut s = 0i32;
            for l in 0..16 {
                s += q[16 * g + l] as i32 * q8[16 * g + l] as i32;
            }
            isum += (bx.scales[g] as i8) as i32 * s;
        }
        sumf += f16_to_f32(bx.d) * by.d() * isum as f32;
    }
    sumf
}

pub fn dot_q8_k_q8_k(x: &[BlockQ8K], y: &[BlockQ8K]) -> f32 {
    let mut sumf = 0f32;
    for (bx, by) in x.iter().zip(y) {
        let s: i32 = bx.q().iter().zip(by.q()).map(|(a, b)| *a as i32 * *b as i32).sum();
        sumf += bx.d() * by.d() * s as f32;
    }
    sumf
}
