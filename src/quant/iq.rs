//! The lattice ("i-quant") formats: IQ2_XXS, IQ2_XS, IQ2_S, IQ3_XXS, IQ3_S, IQ1_S, IQ1_M, and the
//! non-linear IQ4_NL / IQ4_XS.
//!
//! Each group of 8 (or 4) weights is an index into a lattice table of unsigned magnitudes plus
//! sign bits; a per-32 integer scale and a per-block f16 scale complete the value. The
//! dequantizers evaluate exactly the float expressions of the format's reference, in its order,
//! so the results are bit-identical; the dots keep the lattice values as integers.

use super::block::{f16_to_f32, impl_block, u16_le, u32_le};
use super::grids::*;
use super::k_quants::BlockQ8K;
use super::legacy::BlockQ8_0;
use super::types::GgmlType;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct BlockIQ2XXS {
    pub d: [u8; 2],
    /// 8 groups of 32: two u32, the first holding 4 grid indices (bytes), the second 4×7 sign
    /// bits and a 4-bit scale in the top nibble.
    pub qs: [u8; 64],
}
impl_block!(BlockIQ2XXS, IQ2_XXS, 256);

#[repr(C)]
#[derive(Clone, Copy)]
pub struct BlockIQ2XS {
    pub d: [u8; 2],
    /// 32 u16: 9-bit grid index, 7 sign bits.
    pub qs: [u8; 64],
    /// Two 4-bit scales per group of 32 (one per 16).
    pub scales: [u8; 8],
}
impl_block!(BlockIQ2XS, IQ2_XS, 256);

#[repr(C)]
#[derive(Clone, Copy)]
pub struct BlockIQ2S {
    pub d: [u8; 2],
    /// 32 low bytes of the grid indices, then 32 sign bytes.
    pub qs: [u8; 64],
    /// The 2 high bits of each grid index, 4 indices per byte.
    pub qh: [u8; 8],
    pub scales: [u8; 8],
}
impl_block!(BlockIQ2S, IQ2_S, 256);

#[repr(C)]
#[derive(Clone, Copy)]
pub struct BlockIQ3XXS {
    pub d: [u8; 2],
    /// 64 grid indices (4 values each), then 8 u32 of 4×7 sign bits plus a 4-bit scale.
    pub qs: [u8; 96],
}
impl_block!(BlockIQ3XXS, IQ3_XXS, 256);

#[repr(C)]
#[derive(Clone, Copy)]
pub struct BlockIQ3S {
    pub d: [u8; 2],
    pub qs: [u8; 64],
    /// The 9th bit of each grid index.
    pub qh: [u8; 8],
    pub signs: [u8; 32],
    pub scales: [u8; 4],
}
impl_block!(BlockIQ3S, IQ3_S, 256);

#[repr(C)]
#[derive(Clone, Copy)]
pub struct BlockIQ1S {
    pub d: [u8; 2],
    pub qs: [u8; 32],
    /// 8 u16: 3 high index bits for each of 4 groups of 8, a 3-bit scale, the delta sign.
    pub qh: [u8; 16],
}
impl_block!(BlockIQ1S, IQ1_S, 256);

#[repr(C)]
#[derive(Clone, Copy)]
pub struct BlockIQ1M {
    pub qs: [u8; 32],
    /// Per group of 8: 3 high index bits and a delta-sign bit (two groups per byte).
    pub qh: [u8; 16],
    /// 4 u16: 3-bit scales (four per u16); the f16 block scale sits in their top nibbles.
    pub scales: [u8; 8],
}
impl_block!(BlockIQ1M, IQ1_M, 256);

#[repr(C)]
#[derive(Clone, Copy)]
pub struct BlockIQ4NL {
    pub d: [u8; 2],
    pub qs: [u8; 16],
}
impl_block!(BlockIQ4NL, IQ4_NL, 32);

#[repr(C)]
#[derive(Clone, Copy)]
pub struct BlockIQ4XS {
    pub d: [u8; 2],
    /// High 2 bits of the 8 6-bit scales.
    pub scales_h: [u8; 2],
    /// Low 4 bits of the 8 scales.
    pub scales_l: [u8; 4],
    pub qs: [u8; 128],
}
impl_block!(BlockIQ4XS, IQ4_XS, 256);

#[inline(always)]
fn sgn(signs: u8, j: usize) -> f32 {
    if signs & KMASK_IQ2XS[j] != 0 {
        -1.0
    } else {
        1.0
    }
}

#[inline(always)]
fn grid8(v: u64) -> [u8; 8] {
    v.to_le_bytes()
}

/// Applies sign bits to 8 lattice magnitudes.
#[inline(always)]
fn signed8(g: [u8; 8], signs: u8) -> [i8; 8] {
    let mut o = [0i8; 8];
    for j in 0..8 {
        let v = g[j] as i8; // magnitudes are < 128
        o[j] = if signs & (1 << j) != 0 { -v } else { v };
    }
    o
}

impl BlockIQ2XXS {
    pub fn dequantize(&self, y: &mut [f32]) {
        let d = f16_to_f32(self.d);
        for ib in 0..8 {
            let a0 = &self.qs[8 * ib..8 * ib + 4];
            let a1 = u32_le(&self.qs[8 * ib + 4..]);
            let db = d * (0.5 + (a1 >> 28) as f32) * 0.25;
            for l in 0..4 {
                let g = grid8(IQ2XXS_GRID[a0[l] as usize]);
                let s = KSIGNS_IQ2XS[((a1 >> (7 * l)) & 127) as usize];
                for j in 0..8 {
                    y[32 * ib + 8 * l + j] = db * g[j] as f32 * sgn(s, j);
                }
            }
        }
    }
    /// Group `ib` of 32: (odd integer scale 2s+1, signed lattice values).
    #[inline(always)]
    pub fn group(&self, ib: usize) -> (i32, [i8; 32]) {
        let a0 = &self.qs[8 * ib..8 * ib + 4];
        let a1 = u32_le(&self.qs[8 * ib + 4..]);
        let mut v = [0i8; 32];
        for l in 0..4 {
            let s = KSIGNS_IQ2XS[((a1 >> (7 * l)) & 127) as usize];
            v[8 * l..8 * l + 8].copy_from_slice(&signed8(grid8(IQ2XXS_GRID[a0[l] as usize]), s));
        }
        (2 * (a1 >> 28) as i32 + 1, v)
    }
}

impl BlockIQ2XS {
    #[inline(always)]
    fn q(&self, i: usize) -> u16 {
        u16_le([self.qs[2 * i], self.qs[2 * i + 1]])
    }
    pub fn dequantize(&self, y: &mut [f32]) {
        let d = f16_to_f32(self.d);
        for ib in 0..8 {
            let db = [
                d * (0.5 + (self.scales[ib] & 0xf) as f32) * 0.25,
                d * (0.5 + (self.scales[ib] >> 4) as f32) * 0.25,
            ];
            for l in 0..4 {
                let q = self.q(4 * ib + l);
                let g = grid8(IQ2XS_GRID[(q & 511) as usize]);
                let s = KSIGNS_IQ2XS[(q >> 9) as usize];
                for j in 0..8 {
                    y[32 * ib + 8 * l + j] = db[l / 2] * g[j] as f32 * sgn(s, j);
                }
            }
        }
    }
    /// Group `ib` of 32: (scale of the first 16, scale of the second 16, signed values).
    #[inline(always)]
    pub fn group(&self, ib: usize) -> (i32, i32, [i8; 32]) {
        let mut v = [0i8; 32];
        for l in 0..4 {
            let q = self.q(4 * ib + l);
            let s = KSIGNS_IQ2XS[(q >> 9) as usize];
            v[8 * l..8 * l + 8].copy_from_slice(&signed8(grid8(IQ2XS_GRID[(q & 511) as usize]), s));
        }
        let sc = self.scales[ib];
        (2 * (sc & 0xf) as i32 + 1, 2 * (sc >> 4) as i32 + 1, v)
    }
}

impl BlockIQ2S {
    #[inline(always)]
    fn index(&self, ib: usize, l: usize) -> usize {
        self.qs[4 * ib + l] as usize | (((self.qh[ib] as usize) << (8 - 2 * l)) & 0x300)
    }
    pub fn dequantize(&self, y: &mut [f32]) {
        let d = f16_to_f32(self.d);
        for ib in 0..8 {
            let db = [
                d * (0.5 + (self.scales[ib] & 0xf) as f32) * 0.25,
                d * (0.5 + (self.scales[ib] >> 4) as f32) * 0.25,
            ];
            for l in 0..4 {
                let dl = db[l / 2];
                let g = grid8(IQ2S_GRID[self.index(ib, l)]);
                let s = self.qs[32 + 4 * ib + l];
                for j in 0..8 {
                    y[32 * ib + 8 * l + j] = dl * g[j] as f32 * sgn(s, j);
                }
            }
        }
    }
    #[inline(always)]
    pub fn group(&self, ib: usize) -> (i32, i32, [i8; 32]) {
        let mut v = [0i8; 32];
        for l in 0..4 {
            let s = self.qs[32 + 4 * ib + l];
            v[8 * l..8 * l + 8].copy_from_slice(&signed8(grid8(IQ2S_GRID[self.index(ib, l)]), s));
        }
        let sc = self.scales[ib];
        (2 * (sc & 0xf) as i32 + 1, 2 * (sc >> 4) as i32 + 1, v)
    }
}

impl BlockIQ3XXS {
    pub fn dequantize(&self, y: &mut [f32]) {
        let d = f16_to_f32(self.d);
        for ib in 0..8 {
            let aux = u32_le(&self.qs[64 + 4 * ib..]);
            let db = d * (0.5 + (aux >> 28) as f32) * 0.5;
            let qs = &self.qs[8 * ib..8 * ib + 8];
            for l in 0..4 {
                let s = KSIGNS_IQ2XS[((aux >> (7 * l)) & 127) as usize];
                let g1 = IQ3XXS_GRID[qs[2 * l] as usize].to_le_bytes();
                let g2 = IQ3XXS_GRID[qs[2 * l + 1] as usize].to_le_bytes();
                for j in 0..4 {
                    y[32 * ib + 8 * l + j] = db * g1[j] as f32 * sgn(s, j);
                    y[32 * ib + 8 * l + j + 4] = db * g2[j] as f32 * sgn(s, j + 4);
                }
            }
        }
    }
    #[inline(always)]
    pub fn group(&self, ib: usize) -> (i32, [i8; 32]) {
        let aux = u32_le(&self.qs[64 + 4 * ib..]);
        let qs = &self.qs[8 * ib..8 * ib + 8];
        let mut v = [0i8; 32];
        for l in 0..4 {
            let s = KSIGNS_IQ2XS[((aux >> (7 * l)) & 127) as usize];
            let g1 = IQ3XXS_GRID[qs[2 * l] as usize].to_le_bytes();
            let g2 = IQ3XXS_GRID[qs[2 * l + 1] as usize].to_le_bytes();
            let g = [g1[0], g1[1], g1[2], g1[3], g2[0], g2[1], g2[2], g2[3]];
            v[8 * l..8 * l + 8].copy_from_slice(&signed8(g, s));
        }
        (2 * (aux >> 28) as i32 + 1, v)
    }
}

impl BlockIQ3S {
    /// Grid entries of group `ib` of 32: 8 indices of 9 bits.
    #[inline(always)]
    fn grid_bytes(&self, ib: usize, l: usize) -> [u8; 8] {
        let qs = &self.qs[8 * ib..8 * ib + 8];
        let qh = self.qh[ib] as usize;
        let i1 = qs[2 * l] as usize | ((qh << (8 - 2 * l)) & 256);
        let i2 = qs[2 * l + 1] as usize | ((qh << (7 - 2 * l)) & 256);
        let g1 = IQ3S_GRID[i1].to_le_bytes();
        let g2 = IQ3S_GRID[i2].to_le_bytes();
        [g1[0], g1[1], g1[2], g1[3], g2[0], g2[1], g2[2], g2[3]]
    }
    pub fn dequantize(&self, y: &mut [f32]) {
        let d = f16_to_f32(self.d);
        for ib in 0..8 {
            let sc = self.scales[ib / 2];
            let s4 = if ib % 2 == 0 { sc & 0xf } else { sc >> 4 };
            let db = d * (1 + 2 * s4 as i32) as f32;
            for l in 0..4 {
                let g = self.grid_bytes(ib, l);
                let s = self.signs[4 * ib + l];
                for j in 0..8 {
                    y[32 * ib + 8 * l + j] = db * g[j] as f32 * sgn(s, j);
                }
            }
        }
    }
    #[inline(always)]
    pub fn group(&self, ib: usize) -> (i32, [i8; 32]) {
        let mut v = [0i8; 32];
        for l in 0..4 {
            v[8 * l..8 * l + 8]
                .copy_from_slice(&signed8(self.grid_bytes(ib, l), self.signs[4 * ib + l]));
        }
        let sc = self.scales[ib / 2];
        let s4 = if ib % 2 == 0 { sc & 0xf } else { sc >> 4 };
        (1 + 2 * s4 as i32, v)
    }
}

impl BlockIQ1S {
    #[inline(always)]
    fn qh(&self, ib: usize) -> u16 {
        u16_le([self.qh[2 * ib], self.qh[2 * ib + 1]])
    }
    #[inline(always)]
    fn grid(&self, ib: usize, l: usize) -> [i8; 8] {
        let idx = self.qs[4 * ib + l] as usize | ((((self.qh(ib) >> (3 * l)) & 7) as usize) << 8);
        IQ1S_GRID[idx].to_le_bytes().map(|b| b as i8)
    }
    pub fn dequantize(&self, y: &mut [f32]) {
        let d = f16_to_f32(self.d);
        for ib in 0..8 {
            let qh = self.qh(ib);
            let dl = d * (2 * ((qh >> 12) & 7) as i32 + 1) as f32;
            let delta = if qh & 0x8000 != 0 { -IQ1S_DELTA } else { IQ1S_DELTA };
            for l in 0..4 {
                let g = self.grid(ib, l);
                for j in 0..8 {
                    y[32 * ib + 8 * l + j] = dl * (g[j] as f32 + delta);
                }
            }
        }
    }
    /// Group `ib`: (scale 2s+1, delta sign ±1, the 32 lattice values in {−1, 0, 1}).
    #[inline(always)]
    pub fn group(&self, ib: usize) -> (i32, i32, [i8; 32]) {
        let qh = self.qh(ib);
        let mut v = [0i8; 32];
        for l in 0..4 {
            v[8 * l..8 * l + 8].copy_from_slice(&self.grid(ib, l));
        }
        (2 * ((qh >> 12) & 7) as i32 + 1, if qh & 0x8000 != 0 { -1 } else { 1 }, v)
    }
}

impl BlockIQ1M {
    #[inline(always)]
    fn sc(&self, i: usize) -> u16 {
        u16_le([self.scales[2 * i], self.scales[2 * i + 1]])
    }
    /// The bits of the f16 block scale, assembled from the top nibbles of the 4 scale words.
    #[inline(always)]
    pub fn d_bits(&self) -> u16 {
        let (s0, s1, s2, s3) = (self.sc(0), self.sc(1), self.sc(2), self.sc(3));
        (s0 >> 12) | ((s1 >> 8) & 0x00f0) | ((s2 >> 4) & 0x0f00) | (s3 & 0xf000)
    }
    /// The f16 block scale.
    #[inline(always)]
    pub fn d(&self) -> f32 {
        super::block::f16_bits_to_f32(self.d_bits())
    }
    /// Group `ib` of 32: the two half scales (2s+1), per-8 delta signs, the lattice values.
    #[inline(always)]
    pub fn group(&self, ib: usize) -> (i32, i32, [i32; 4], [i8; 32]) {
        let sc = self.sc(ib / 2);
        let ls1 = 2 * ((sc >> (6 * (ib % 2))) & 7) as i32 + 1;
        let ls2 = 2 * ((sc >> (6 * (ib % 2) + 3)) & 7) as i32 + 1;
        let qs = &self.qs[4 * ib..4 * ib + 4];
        let qh = &self.qh[2 * ib..2 * ib + 2];
        let idx = [
            qs[0] as usize | (((qh[0] as usize) << 8) & 0x700),
            qs[1] as usize | (((qh[0] as usize) << 4) & 0x700),
            qs[2] as usize | (((qh[1] as usize) << 8) & 0x700),
            qs[3] as usize | (((qh[1] as usize) << 4) & 0x700),
        ];
        let ds = [
            if qh[0] & 0x08 != 0 { -1 } else { 1 },
            if qh[0] & 0x80 != 0 { -1 } else { 1 },
            if qh[1] & 0x08 != 0 { -1 } else { 1 },
            if qh[1] & 0x80 != 0 { -1 } else { 1 },
        ];
        let mut v = [0i8; 32];
        for l in 0..4 {
            v[8 * l..8 * l + 8].copy_from_slice(&IQ1S_GRID[idx[l]].to_le_bytes().map(|b| b as i8));
        }
        (ls1, ls2, ds, v)
    }
    pub fn dequantize(&self, y: &mut [f32]) {
        let d = self.d();
        for ib in 0..8 {
            let (ls1, ls2, ds, v) = self.group(ib);
            let dl1 = d * ls1 as f32;
            let dl2 = d * ls2 as f32;
            for l in 0..4 {
                let dl = if l < 2 { dl1 } else { dl2 };
                let delta = if ds[l] < 0 { -IQ1M_DELTA } else { IQ1M_DELTA };
                for j in 0..8 {
                    y[32 * ib + 8 * l + j] = dl * (v[8 * l + j] as f32 + delta);
                }
            }
        }
    }
}

impl BlockIQ4NL {
    pub fn dequantize(&self, y: &mut [f32]) {
        let d = f16_to_f32(self.d);
        for j in 0..16 {
            y[j] = d * KVALUES_IQ4NL[(self.qs[j] & 0xf) as usize] as f32;
            y[j + 16] = d * KVALUES_IQ4NL[(self.qs[j] >> 4) as usize] as f32;
        }
    }
}

impl BlockIQ4XS {
    /// The 6-bit scale of group `ib`, minus 32.
    #[inline(always)]
    pub fn ls(&self, ib: usize) -> i32 {
        let sh = u16_le(self.scales_h);
        let l = ((self.scales_l[ib / 2] >> (4 * (ib % 2))) & 0xf) as i32;
        (l | ((((sh >> (2 * ib)) & 3) as i32) << 4)) - 32
    }
    pub fn dequantize(&self, y: &mut [f32]) {
        let d = f16_to_f32(self.d);
        for ib in 0..8 {
            let dl = d * self.ls(ib) as f32;
            let qs = &self.qs[16 * ib..16 * ib + 16];
            for j in 0..16 {
                y[32 * ib + j] = dl * KVALUES_IQ4NL[(qs[j] & 0xf) as usize] as f32;
                y[32 * ib + j + 16] = dl * KVALUES_IQ4NL[(qs[j] >> 4) as usize] as f32;
            }
        }
    }
}

#[inline(always)]
fn idot(a: &[i8], b: &[i8]) -> i32 {
    a.iter().zip(b).map(|(x, y)| *x as i32 * *y as i32).sum()
}

/// A super-block whose 8 groups of 32 each carry one integer scale (IQ2_XXS, IQ3_XXS, IQ3_S).
trait OneScaleGroups {
    fn d(&self) -> [u8; 2];
    fn group(&self, ib: usize) -> (i32, [i8; 32]);
}

/// A super-block whose 8 groups of 32 carry a scale per half (IQ2_XS, IQ2_S).
trait TwoScaleGroups {
    fn d(&self) -> [u8; 2];
    fn group(&self, ib: usize) -> (i32, i32, [i8; 32]);
}

macro_rules! groups {
    ($trait:ident, $ret:ty: $($b:ty),*) => {$(
        impl $trait for $b {
            fn d(&self) -> [u8; 2] {
                self.d
            }
            fn group(&self, ib: usize) -> $ret {
                <$b>::group(self, ib)
            }
        }
    )*};
}
groups!(OneScaleGroups, (i32, [i8; 32]): BlockIQ2XXS, BlockIQ3XXS, BlockIQ3S);
groups!(TwoScaleGroups, (i32, i32, [i8; 32]): BlockIQ2XS, BlockIQ2S);

/// Σ d·d8·Σ_groups ls·(v·q8), times the format's fixed factor.
fn dot_one_scale<B: OneScaleGroups>(x: &[B], y: &[BlockQ8K], factor: f32) -> f32 {
    let mut sumf = 0f32;
    for (bx, by) in x.iter().zip(y) {
        let q8 = by.q();
        let mut bsum = 0i32;
        for ib in 0..8 {
            let (ls, v) = bx.group(ib);
            bsum += ls * idot(&v, &q8[32 * ib..32 * ib + 32]);
        }
        sumf += f16_to_f32(bx.d()) * by.d() * bsum as f32;
    }
    factor * sumf
}

/// As `dot_one_scale`, with a scale for each 16-element half of a group.
fn dot_two_scales<B: TwoScaleGroups>(x: &[B], y: &[BlockQ8K], factor: f32) -> f32 {
    let mut sumf = 0f32;
    for (bx, by) in x.iter().zip(y) {
        let q8 = by.q();
        let mut bsum = 0i32;
        for ib in 0..8 {
            let (ls1, ls2, v) = bx.group(ib);
            bsum += ls1 * idot(&v[..16], &q8[32 * ib..32 * ib + 16])
                + ls2 * idot(&v[16..], &q8[32 * ib + 16..32 * ib + 32]);
        }
        sumf += f16_to_f32(bx.d()) * by.d() * bsum as f32;
    }
    factor * sumf
}

pub fn dot_iq2_xxs_q8_k(x: &[BlockIQ2XXS], y: &[BlockQ8K]) -> f32 {
    dot_one_scale(x, y, 0.125)
}

pub fn dot_iq2_xs_q8_k(x: &[BlockIQ2XS], y: &[BlockQ8K]) -> f32 {
    dot_two_scales(x, y, 0.125)
}

pub fn dot_iq2_s_q8_k(x: &[BlockIQ2S], y: &[BlockQ8K]) -> f32 {
    dot_two_scales(x, y, 0.125)
}

pub fn dot_iq3_xxs_q8_k(x: &[BlockIQ3XXS], y: &[BlockQ8K]) -> f32 {
    dot_one_scale(x, y, 0.25)
}

pub fn dot_iq3_s_q8_k(x: &[BlockIQ3S], y: &[BlockQ8K]) -> f32 {
    dot_one_scale(x, y, 1.0)
}

pub fn dot_iq1_s_q8_k(x: &[BlockIQ1S], y: &[BlockQ8K]) -> f32 {
    let mut sumf = 0f32;
    for (bx, by) in x.iter().zip(y) {
        let q8 = by.q();
        let (mut sumi, mut sumd) = (0i32, 0i32);
        for ib in 0..8 {
            let (ls, ds, v) = bx.group(ib);
            sumi += ls * idot(&v, &q8[32 * ib..32 * ib + 32]);
            sumd += ls * ds * (by.bsum(2 * ib) + by.bsum(2 * ib + 1));
        }
        sumf += f16_to_f32(bx.d) * by.d() * (sumi as f32 + IQ1S_DELTA * sumd as f32);
    }
    sumf
}

pub fn dot_iq1_m_q8_k(x: &[BlockIQ1M], y: &[BlockQ8K]) -> f32 {
    let mut sumf = 0f32;
    for (bx, by) in x.iter().zip(y) {
        let q8 = by.q();
        let (mut sumi, mut sumd) = (0i32, 0i32);
        for ib in 0..8 {
            let (ls1, ls2, ds, v) = bx.group(ib);
            for l in 0..4 {
                let ls = if l < 2 { ls1 } else { ls2 };
                let yq = &q8[32 * ib + 8 * l..32 * ib + 8 * l + 8];
                sumi += ls * idot(&v[8 * l..8 * l + 8], yq);
                sumd += ls * ds[l] * yq.iter().map(|q| *q as i32).sum::<i32>();
            }
        }
        sumf += bx.d() * by.d() * (sumi as f32 + IQ1M_DELTA * sumd as f32);
    }
    sumf
}

pub fn dot_iq4_nl_q8_0(x: &[BlockIQ4NL], y: &[BlockQ8_0]) -> f32 {
    let mut sumf = 0f32;
    for (bx, by) in x.iter().zip(y) {
        let mut sumi = 0i32;
        for j in 0..16 {
            sumi += KVALUES_IQ4NL[(bx.qs[j] & 0xf) as usize] as i32 * (by.qs[j] as i8) as i32
                + KVALUES_IQ4NL[(bx.qs[j] >> 4) as usize] as i32 * (by.qs[j + 16] as i8) as i32;
        }
        sumf += f16_to_f32(bx.d) * f16_to_f32(by.d) * sumi as f32;
    }
    sumf
}

pub fn dot_iq4_xs_q8_k(x: &[BlockIQ4XS], y: &[BlockQ8K]) -> f32 {
    let mut sumf = 0f32;
    for (bx, by) in x.iter().zip(y) {
        let q8 = by.q();
        let mut sumi = 0i32;
        for ib in 0..8 {
            let qs = &bx.qs[16 * ib..16 * ib + 16];
            let mut s = 0i32;
            for j in 0..16 {
                s += KVALUES_IQ4NL[(qs[j] & 0xf) as usize] as i32 * q8[32 * ib + j] as i32
                    + KVALUES_IQ4NL[(qs[j] >> 4) as usize] as i32 * q8[32 * ib + j + 16] as i32;
            }
            sumi += bx.ls(ib) * s;
        }
        sumf += f16_to_f32(bx.d) * by.d() * sumi as f32;
    }
    sumf
}
