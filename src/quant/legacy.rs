//! The 32-element legacy formats: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1.
//!
//! Q8_0 and Q8_1 double as the activation formats of the legacy weight types; their quantizers
//! follow ggml's reference ones (scale = amax/127, round half away from zero).

use super::block::{f16_to_f32, f32_to_f16, impl_block, round_away, u32_le};
use super::types::GgmlType;

pub const QK: usize = 32;

/// Q4_0: `x = d * (q - 8)`, q 4-bit; low nibbles are elements 0..16, high nibbles 16..32.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct BlockQ4_0 {
    pub d: [u8; 2],
    pub qs: [u8; 16],
}
impl_block!(BlockQ4_0, Q4_0, 32);

/// Q4_1: `x = d * q + m`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct BlockQ4_1 {
    pub d: [u8; 2],
    pub m: [u8; 2],
    pub qs: [u8; 16],
}
impl_block!(BlockQ4_1, Q4_1, 32);

/// Q5_0: `x = d * (q - 16)`, the 5th bit of element j in bit j of `qh` (u32 LE).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct BlockQ5_0 {
    pub d: [u8; 2],
    pub qh: [u8; 4],
    pub qs: [u8; 16],
}
impl_block!(BlockQ5_0, Q5_0, 32);

/// Q5_1: `x = d * q + m`, 5-bit q.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct BlockQ5_1 {
    pub d: [u8; 2],
    pub m: [u8; 2],
    pub qh: [u8; 4],
    pub qs: [u8; 16],
}
impl_block!(BlockQ5_1, Q5_1, 32);

/// Q8_0: `x = d * q`, q int8.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct BlockQ8_0 {
    pub d: [u8; 2],
    pub qs: [u8; 32],
}
impl_block!(BlockQ8_0, Q8_0, 32);

/// Q8_1: Q8_0 plus `s = d * sum(q)` (f16), which lets the Q4_1/Q5_1 dots fold in the minimum.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct BlockQ8_1 {
    pub d: [u8; 2],
    pub s: [u8; 2],
    pub qs: [u8; 32],
}
impl_block!(BlockQ8_1, Q8_1, 32);

impl BlockQ4_0 {
    pub fn dequantize(&self, y: &mut [f32]) {
        let d = f16_to_f32(self.d);
        for j in 0..16 {
            let x0 = (self.qs[j] & 0x0f) as i32 - 8;
            let x1 = (self.qs[j] >> 4) as i32 - 8;
            y[j] = x0 as f32 * d;
            y[j + 16] = x1 as f32 * d;
        }
    }
}

impl BlockQ4_1 {
    pub fn dequantize(&self, y: &mut [f32]) {
        let d = f16_to_f32(self.d);
        let m = f16_to_f32(self.m);
        for j in 0..16 {
            let x0 = (self.qs[j] & 0x0f) as f32;
            let x1 = (self.qs[j] >> 4) as f32;
            y[j] = x0 * d + m;
            y[j + 16] = x1 * d + m;
        }
    }
}

impl BlockQ5_0 {
    /// The 32 unsigned 5-bit codes (0..32).
    #[inline(always)]
    pub fn codes(&self) -> [u8; 32] {
        let qh = u32_le(&self.qh);
        let mut q = [0u8; 32];
        for j in 0..16 {
            let h0 = (((qh >> j) << 4) & 0x10) as u8;
            let h1 = ((qh >> (j + 12)) & 0x10) as u8;
            q[j] = (self.qs[j] & 0x0f) | h0;
            q[j + 16] = (self.qs[j] >> 4) | h1;
        }
        q
    }
    pub fn dequantize(&self, y: &mut [f32]) {
        let d = f16_to_f32(self.d);
        let q = self.codes();
        for j in 0..32 {
            y[j] = (q[j] as i32 - 16) as f32 * d;
        }
    }
}

impl BlockQ5_1 {
    #[inline(always)]
    pub fn codes(&self) -> [u8; 32] {
        let qh = u32_le(&self.qh);
        let mut q = [0u8; 32];
        for j in 0..16 {
            let h0 = (((qh >> j) << 4) & 0x10) as u8;
            let h1 = ((qh >> (j + 12)) & 0x10) as u8;
            q[j] = (self.qs[j] & 0x0f) | h0;
            q[j + 16] = (self.qs[j] >> 4) | h1;
        }
        q
    }
    pub fn dequantize(&self, y: &mut [f32]) {
        let d = f16_to_f32(self.d);
        let m = f16_to_f32(self.m);
        let q = self.codes();
        for j in 0..32 {
            y[j] = q[j] as f32 * d + m;
        }
    }
}

impl BlockQ8_0 {
    pub fn dequantize(&self, y: &mut [f32]) {
        let d = f16_to_f32(self.d);
        for j in 0..32 {
            y[j] = (self.qs[j] as i8) as f32 * d;
        }
    }
    /// ggml's reference quantizer: d = amax/127, q = round(x/d).
    pub fn quantize(x: &[f32]) -> BlockQ8_0 {
        let amax = x[..32].iter().fold(0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut qs = [0u8; 32];
        for j in 0..32 {
            qs[j] = round_away(x[j] * id) as i8 as u8;
        }
        BlockQ8_0 { d: f32_to_f16(d), qs }
    }
}

impl BlockQ8_1 {
    pub fn dequantize(&self, y: &mut [f32]) {
        let d = f16_to_f32(self.d);
        for j in 0..32 {
            y[j] = (self.qs[j] as i8) as f32 * d;
        }
    }
    pub fn quantize(x: &[f32]) -> BlockQ8_1 {
        let amax = x[..32].iter().fold(0f32, |a, v| a.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut qs = [0u8; 32];
        let mut sum = 0i32;
        for j in 0..32 {
            let q = round_away(x[j] * id) as i8;
            qs[j] = q as u8;
            sum += q as i32;
        }
        BlockQ8_1 { d: f32_to_f16(d), s: f32_to_f16(sum as f32 * d), qs }
    }
}

#[inline(always)]
fn q8(b: &[u8; 32]) -> &[i8; 32] {
    // SAFETY: same size and alignment; i8 and u8 share every bit pattern.
    unsafe { &*(b as *const [u8; 32] as *const [i8; 32]) }
}

pub fn dot_q4_0_q8_0(x: &[BlockQ4_0], y: &[BlockQ8_0]) -> f32 {
    let mut sumf = 0f32;
    for (bx, by) in x.iter().zip(y) {
        let yq = q8(&by.qs);
        let mut sumi = 0i32;
        for j in 0..16 {
            let v0 = (bx.qs[j] & 0x0f) as i32 - 8;
            let v1 = (bx.qs[j] >> 4) as i32 - 8;
            sumi += v0 * yq[j] as i32 + v1 * yq[j + 16] as i32;
        }
        sumf += sumi as f32 * (f16_to_f32(bx.d) * f16_to_f32(by.d));
    }
    sumf
}

pub fn dot_q4_1_q8_1(x: &[BlockQ4_1], y: &[BlockQ8_1]) -> f32 {
    let mut sumf = 0f32;
    for (bx, by) in x.iter().zip(y) {
        let yq = q8(&by.qs);
        let mut sumi = 0i32;
        for j in 0..16 {
            let v0 = (bx.qs[j] & 0x0f) as i32;
            let v1 = (bx.qs[j] >> 4) as i32;
            sumi += v0 * yq[j] as i32 + v1 * yq[j + 16] as i32;
        }
        sumf += sumi as f32 * (f16_to_f32(bx.d) * f16_to_f32(by.d))
            + f16_to_f32(bx.m) * f16_to_f32(by.s);
    }
    sumf
}

pub fn dot_q5_0_q8_0(x: &[BlockQ5_0], y: &[BlockQ8_0]) -> f32 {
    let mut sumf = 0f32;
    for (bx, by) in x.iter().zip(y) {
        let yq = q8(&by.qs);
        let q = bx.codes();
        let mut sumi = 0i32;
        for j in 0..32 {
            sumi += (q[j] as i32 - 16) * yq[j] as i32;
        }
        sumf += sumi as f32 * (f16_to_f32(bx.d) * f16_to_f32(by.d));
    }
    sumf
}

pub fn dot_q5_1_q8_1(x: &[BlockQ5_1], y: &[BlockQ8_1]) -> f32 {
    let mut sumf = 0f32;
    for (bx, by) in x.iter().zip(y) {
        let yq = q8(&by.qs);
        let q = bx.codes();
        let mut sumi = 0i32;
        for j in 0..32 {
            sumi += q[j] as i32 * yq[j] as i32;
        }
        sumf += sumi as f32 * (f16_to_f32(bx.d) * f16_to_f32(by.d))
            + f16_to_f32(bx.m) * f16_to_f32(by.s);
    }
    sumf
}

pub fn dot_q8_0_q8_0(x: &[BlockQ8_0], y: &[BlockQ8_0]) -> f32 {
    let mut sumf = 0f32;
    for (bx, by) in x.iter().zip(y) {
        let (xq, yq) = (q8(&bx.qs), q8(&by.qs));
        let mut sumi = 0i32;
        for j in 0..32 {
            sumi += xq[j] as i32 * yq[j] as i32;
        }
        sumf += sumi as f32 * (f16_to_f32(bx.d) * f16_to_f32(by.d));
    }
    sumf
}

/// Q8_1 weights (rare: ggml uses Q8_1 only for activations) against Q8_0 activations.
pub fn dot_q8_1_q8_0(x: &[BlockQ8_1], y: &[BlockQ8_0]) -> f32 {
    let mut sumf = 0f32;
    for (bx, by) in x.iter().zip(y) {
        let (xq, yq) = (q8(&bx.qs), q8(&by.qs));
        let mut sumi = 0i32;
        for j in 0..32 {
            sumi += xq[j] as i32 * yq[j] as i32;
        }
        sumf += sumi as f32 * (f16_to_f32(bx.d) * f16_to_f32(by.d));
    }
    sumf
}
