//! The CPU backend: weights read in place from the GGUF map, activations in host vectors, ops
//! parallel over rows (rayon; the caller picks the pool with `ThreadPool::install`).

pub mod qops;
pub mod vmath;

use vmath::{Rows, SumOrder};

use std::cell::RefCell;
use std::sync::Arc;

use half::f16;
use rayon::prelude::*;

use super::{route_top_k, AttnBatch, Backend, Ffn, KvLayout, RopeParams, KV_BLOCK};
use crate::error::{Error, Result};
use crate::gguf::{Gguf, TensorInfo};
use crate::quant::GgmlType;

/// Below this many multiply-adds an op runs on the calling thread: a rayon dispatch costs more.
const PAR_MIN_WORK: usize = 1 << 18;

/// A row-major f32 matrix.
#[derive(Default, Clone, Debug)]
pub struct Mat {
    pub data: Vec<f32>,
    pub rows: usize,
    pub cols: usize,
}

impl Mat {
    pub fn row(&self, r: usize) -> &[f32] {
        &self.data[r * self.cols..(r + 1) * self.cols]
    }
    pub fn row_mut(&mut self, r: usize) -> &mut [f32] {
        &mut self.data[r * self.cols..(r + 1) * self.cols]
    }
    fn resize(&mut self, rows: usize, cols: usize) {
        self.rows = rows;
        self.cols = cols;
        self.data.resize(rows * cols, 0.0);
    }
}

/// A tensor of the mapped file seen as `rows` rows of `cols` elements, starting at row `row0`
/// (an expert's slab of a 3-D tensor is such a sub-view).
#[derive(Clone)]
pub struct CpuWeight {
    gguf: Arc<Gguf>,
    info: Arc<TensorInfo>,
    pub ty: GgmlType,
    pub cols: usize,
    pub rows: usize,
    row0: usize,
    row_bytes: usize,
}

impl CpuWeight {
    /// The stored blocks of this view's rows.
    pub fn bytes(&self) -> &[u8] {
        let all = self.gguf.tensor_data(&self.info);
        &all[self.row0 * self.row_bytes..(self.row0 + self.rows) * self.row_bytes]
    }
    #[inline]
    fn row<'a>(&self, all: &'a [u8], r: usize) -> &'a [u8] {
        &all[r * self.row_bytes..(r + 1) * self.row_bytes]
    }
    /// Rows `[r0, r0 + n)` of this view.
    pub fn sub_rows(&self, r0: usize, n: usize) -> CpuWeight {
        let mut w = self.clone();
        w.row0 += r0;
        w.rows = n;
        w
    }
}

/// K and V rows of every layer, in the KV type.
pub struct CpuKv {
    layout: KvLayout,
    row_bytes: usize,
    k: Vec<Vec<u8>>,
    v: Vec<Vec<u8>>,
}

#[derive(Default)]
pub struct CpuBackend;

thread_local! {
    /// Per-thread buffer of converted activations.
    static QBUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// Per-thread buffer of a batch matmul's transposed results.
    static TRANSPOSED: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// Per-thread attention scratch reused across calls.
    static SCRATCH: RefCell<AttnScratch> = RefCell::new(AttnScratch::default());
    /// A pass's K and V rows as f32 for its sequences of several tokens (see `attention`).
    static KV_F32: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// One token's attention buffers: its heads' scores and the per-lane sums of the weighted V
/// rows.
#[derive(Default)]
struct AttnScratch {
    scores: Vec<f32>,
    acc: Vec<f32>,
}

/// The query heads that share one KV head, for one token that sees `n` positions.
struct Heads<'q> {
    q: &'q [f32],
    n: usize,
    hd: usize,
    scale: f32,
    order: SumOrder,
}

impl Heads<'_> {
    /// Each head's scores against the K rows, softmax, and the weighted sum of the V rows into
    /// its `hd` columns of `out`; `k.row(p)`, `v.row(p)` are position p's head columns.
    fn attend<'a, E: vmath::KvElem>(
        &self,
        k: impl Rows<'a>,
        v: impl Rows<'a>,
        sc: &mut Vec<f32>,
        acc: &mut Vec<f32>,
        out: &mut [f32],
    ) {
        let (n, hd) = (self.n, self.hd);
        // Each head's scores padded to whole groups of 8 with -inf (weight 0), as llama.cpp's
        // softmax runs over its padded KV view: every score takes the vector exp. All heads'
        // scores first, so each K row is read once for the group.
        let np = n.div_ceil(8).max(1) * 8; // chunks of 0 would panic
        sc.clear();
        sc.resize(self.q.len() / hd * np, f32::NEG_INFINITY);
        vmath::dot_rows_heads::<E>(self.q, hd, k, n, sc, np);
        for sh in sc.chunks_exact_mut(np) {
            for sp in sh[..n].iter_mut() {
                *sp *= self.scale;
            }
            vmath::softmax(sh);
        }
        vmath::weighted_rows_heads::<E>(sc, np, n, v, self.order, acc, out);
    }
}

/// One KV head's columns (`len` bytes from `off`) of a sequence's rows in a layer's paged
/// cache (`data`, rows of `row_bytes` at their slots), for attention to read in place.
#[derive(Clone, Copy)]
struct PagedRows<'a> {
    data: &'a [u8],
    table: &'a [u32],
    row_bytes: usize,
    off: usize,
    len: usize,
}

impl<'a> PagedRows<'a> {
    /// Columns `c0..c0 + n` of the rows of a cache of type `ty` (for Q8_0, whole blocks: `c0`
    /// and `n` are multiples of 32, as a head of a Q8_0 cache is).
    fn cols(data: &'a [u8], table: &'a [u32], row_bytes: usize, ty: GgmlType, c0: usize, n: usize) -> Self {
        let (off, len) = match ty {
            GgmlType::F32 => (c0 * 4, n * 4),
            GgmlType::F16 => (c0 * 2, n * 2),
            _ => (c0 / 32 * 34, n / 32 * 34),
        };
        PagedRows { data, table, row_bytes, off, len }
    }
}

impl<'a> Rows<'a> for PagedRows<'a> {
    #[inline(always)]
    fn row(&self, p: usize) -> &'a [u8] {
        let at = kv_slot(self.table, p) * self.row_bytes + self.off;
        &self.data[at..at + self.len]
    }
}

/// The cache slot of position `p` of a sequence whose block table is `table`.
#[inline(always)]
fn kv_slot(table: &[u32], p: usize) -> usize {
    table[p / KV_BLOCK] as usize * KV_BLOCK + p % KV_BLOCK
}

/// A KV row (F32, F16 or Q8_0) as f32: the quant module's dequantization (F16C for F16), which
/// attention runs once per pass for the rows a prompt's tokens see.
fn kv_row_to_f32(ty: GgmlType, b: &[u8], out: &mut [f32]) {
    match ty {
        GgmlType::F32 => out.copy_from_slice(&qops::as_f32(b)[..out.len()]),
        _ => crate::quant::dequantize(ty, b, out).expect("a KV row holds whole blocks of its type"),
    }
}

fn f32_to_kv_row(ty: GgmlType, x: &[f32], out: &mut [u8]) {
    match ty {
        GgmlType::F32 => out.copy_from_slice(qops::f32_bytes(x)),
        GgmlType::F16 => {
            for (o, v) in out.chunks_exact_mut(2).zip(x) {
                o.copy_from_slice(&f16::from_f32(*v).to_le_bytes());
            }
        }
        _ => {
            // Q8_0 as ggml's reference quantizer: d = amax / 127, q = round(x / d).
            for (blk, o) in x.chunks_exact(32).zip(out.chunks_exact_mut(34)) {
                let amax = blk.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                let d = amax / 127.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                o[..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
                for (q, v) in o[2..].iter_mut().zip(blk) {
                    *q = (v * id).round() as i8 as u8;
                }
            }
        }
    }
}

impl CpuBackend {
    /// `out[t][r] = dot(w[r], xq[t])` with `xq` the quantized rows (`arb` bytes each), for two
    /// or more tokens (one goes through [`Self::matvecs_one_token`]).
    fn matmul_q(&self, w: &CpuWeight, xq: &[u8], arb: usize, n_tok: usize, out: &mut Mat) {
        let all = w.bytes();
        let (k, rows) = (w.cols, w.rows);
        out.resize(n_tok, rows);
        let work = rows * k * n_tok;
        // Each task takes a band of weight rows and every token, so a row is read once per band;
        // results land transposed and are put back in token-major order.
        TRANSPOSED.with(|s| {
            let tr = &mut *s.borrow_mut();
            tr.resize(rows * n_tok, 0.0);
            let band = 16usize;
            let rb = w.row_bytes;
            let f = |(bi, o): (usize, &mut [f32])| {
                let r0 = bi * band;
                let nr = o.len() / n_tok;
                let wb = &all[r0 * rb..(r0 + nr) * rb];
                qops::dot_rows_tokens(w.ty, k, wb, &xq[..n_tok * arb], n_tok, o);
            };
            if work < PAR_MIN_WORK {
                tr.chunks_mut(band * n_tok).enumerate().for_each(f);
            } else {
                tr.par_chunks_mut(band * n_tok).enumerate().for_each(f);
            }
            for r in 0..rows {
                for t in 0..n_tok {
                    out.data[t * rows + r] = tr[r * n_tok + t];
                }
            }
        });
    }

    /// One token's product `out[r] = dot(w[r], xq)`, in bands of 16 rows, each band one
    /// `dot_rows` call; the bands run in parallel when `par`. Independent matvecs of a decode step
    /// nest their calls in one parallel region (see [`Self::matvecs_one_token`],
    /// [`Self::experts_one_token`]): one dispatch and one wait for the slowest band instead of one
    /// per weight.
    fn matvec(w: &CpuWeight, xq: &[u8], out: &mut [f32], par: bool) {
        let all = w.bytes();
        let (band, rb) = (16usize, w.row_bytes);
        let f = |(bi, o): (usize, &mut [f32])| {
            let r0 = bi * band;
            qops::dot_rows(w.ty, w.cols, &all[r0 * rb..(r0 + o.len()) * rb], xq, o)
        };
        if par {
            out.par_chunks_mut(band).enumerate().for_each(f);
        } else {
            out.chunks_mut(band).enumerate().for_each(f);
        }
    }

    /// Where the input of weight `i` of `n` (weight j of type `ty(j)`) lies in a one-token
    /// buffer of [`Self::quantize_segments`]: (offset, bytes). One segment per activation type,
    /// in the order of the weights that first need it.
    fn act_segment(ty: impl Fn(usize) -> GgmlType, n: usize, cols: usize, i: usize) -> (usize, usize) {
        let a = qops::act_type(ty(i));
        let mut off = 0;
        for j in 0..n {
            let b = qops::act_type(ty(j));
            if (0..j).any(|v| qops::act_type(ty(v)) == b) {
                continue;
            }
            if b == a {
                return (off, qops::act_row_bytes(a, cols));
            }
            off += qops::act_row_bytes(b, cols);
        }
        unreachable!("weight {i}'s own activation type comes first at or before it")
    }

    /// `row` converted into `buf` once per activation type of the `n` weights (weight j of type
    /// `ty(j)`), at the segments of [`Self::act_segment`].
    fn quantize_segments(ty: impl Fn(usize) -> GgmlType + Copy, n: usize, row: &[f32], buf: &mut Vec<u8>) {
        buf.clear();
        for i in 0..n {
            let (off, arb) = Self::act_segment(ty, n, row.len(), i);
            if off == buf.len() {
                buf.resize(off + arb, 0);
                qops::quantize_act(qops::act_type(ty(i)), row, &mut buf[off..]);
            }
        }
    }

    /// [`Backend::matmul`] of one token: `x` converted once per activation type (segments of
    /// `buf`), then every weight's matvec in one parallel region.
    fn matvecs_one_token(x: &Mat, ws: &[&CpuWeight], outs: &mut [&mut Mat], buf: &mut Vec<u8>) {
        let ty = |j: usize| ws[j].ty;
        Self::quantize_segments(ty, ws.len(), x.row(0), buf);
        let work: usize = ws.iter().map(|w| w.rows * w.cols).sum();
        for (w, out) in ws.iter().zip(outs.iter_mut()) {
            out.resize(1, w.rows);
        }
        let buf = &buf[..];
        let job = |(i, out): (usize, &mut &mut Mat)| {
            let (off, arb) = Self::act_segment(ty, ws.len(), x.cols, i);
            Self::matvec(ws[i], &buf[off..off + arb], &mut out.data, work >= PAR_MIN_WORK);
        };
        if work >= PAR_MIN_WORK {
            outs.par_iter_mut().enumerate().for_each(job);
        } else {
            outs.iter_mut().enumerate().for_each(job);
        }
    }

    /// Converts every row of `x` for weight type `wty` into `buf`; returns the bytes per row.
    fn quantize_rows(x: &Mat, wty: GgmlType, buf: &mut Vec<u8>) -> usize {
        let a = qops::act_type(wty);
        let arb = qops::act_row_bytes(a, x.cols);
        buf.resize(arb * x.rows, 0);
        let f = |(t, o): (usize, &mut [u8])| qops::quantize_act(a, x.row(t), o);
        if x.rows * x.cols < PAR_MIN_WORK / 16 {
            buf.chunks_exact_mut(arb).enumerate().for_each(f);
        } else {
            buf.par_chunks_exact_mut(arb).enumerate().for_each(f);
        }
        arb
    }

    fn check_weight(w: &CpuWeight, x: &Mat) -> Result<()> {
        if w.cols != x.cols {
            return Err(Error::internal(format!(
                "matmul: weight '{}' has rows of {} elements, input has {}",
                w.info.name, w.cols, x.cols
            )));
        }
        Ok(())
    }
}

impl Backend for CpuBackend {
    type Weight = CpuWeight;
    type Act = Mat;
    type Kv = CpuKv;

    fn name(&self) -> String {
        "cpu".into()
    }

    fn weight(&self, gguf: &Arc<Gguf>, t: &TensorInfo) -> Result<CpuWeight> {
        let cols = t.dims[0] as usize;
        let rows = t.n_rows() as usize;
        Ok(CpuWeight {
            gguf: gguf.clone(),
            info: Arc::new(t.clone()),
            ty: t.ty,
            cols,
            rows,
            row0: 0,
            row_bytes: t.row_bytes(),
        })
    }

    fn act_new(&self) -> Mat {
        Mat::default()
    }
    fn act_resize(&self, a: &mut Mat, rows: usize, cols: usize) -> Result<()> {
        a.resize(rows, cols);
        Ok(())
    }
    fn act_read_row(&self, a: &Mat, row: usize, out: &mut [f32]) -> Result<()> {
        out.copy_from_slice(a.row(row));
        Ok(())
    }

    fn embed(&self, table: &CpuWeight, ids: &[u32], out: &mut Mat) -> Result<()> {
        out.resize(ids.len(), table.cols);
        let all = table.bytes();
        for (t, &id) in ids.iter().enumerate() {
            qops::dequant_row(table.ty, table.row(all, id as usize), out.row_mut(t))?;
        }
        Ok(())
    }

    fn rms_norm(&self, x: &Mat, w: &CpuWeight, eps: f32, out: &mut Mat) -> Result<()> {
        out.resize(x.rows, x.cols);
        let wv = qops::as_f32(w.bytes());
        let n = x.cols;
        for t in 0..x.rows {
            let xr = x.row(t);
            // Squares rounded to f32, summed in f64 (ggml_compute_forward_rms_norm_f32).
            let ss: f64 = xr.iter().map(|&v| (v * v) as f64).sum();
            let scale = 1.0 / ((ss / n as f64) as f32 + eps).sqrt();
            for ((o, &v), &g) in out.row_mut(t).iter_mut().zip(xr).zip(wv.iter()) {
                *o = v * scale * g;
            }
        }
        Ok(())
    }

    fn matmul(&self, x: &Mat, ws: &[&CpuWeight], outs: &mut [&mut Mat]) -> Result<()> {
        for w in ws {
            Self::check_weight(w, x)?;
        }
        let mut buf = QBUF.with(|b| std::mem::take(&mut *b.borrow_mut()));
        if x.rows == 1 {
            Self::matvecs_one_token(x, ws, outs, &mut buf);
        } else {
            let mut cur: Option<GgmlType> = None;
            let mut arb = 0;
            for (w, out) in ws.iter().zip(outs.iter_mut()) {
                let a = qops::act_type(w.ty);
                if cur != Some(a) {
                    arb = Self::quantize_rows(x, w.ty, &mut buf);
                    cur = Some(a);
                }
                self.matmul_q(w, &buf, arb, x.rows, out);
            }
        }
        QBUF.with(|b| *b.borrow_mut() = buf);
        Ok(())
    }

    fn add(&self, x: &mut Mat, y: &Mat) -> Result<()> {
        for (a, b) in x.data.iter_mut().zip(&y.data) {
            *a += *b;
        }
        Ok(())
    }

    fn gather_rows(&self, x: &Mat, rows: &[u32], out: &mut Mat) -> Result<()> {
        out.resize(rows.len(), x.cols);
        for (i, &r) in rows.iter().enumerate() {
            out.row_mut(i).copy_from_slice(x.row(r as usize));
        }
        Ok(())
    }

    fn rope(&self, x: &mut Mat, n_head: usize, pos: &[u32], p: &RopeParams) -> Result<()> {
        let hd = x.cols / n_head;
        let half = p.n_rot / 2;
        let mut cs = vec![(0.0f32, 0.0f32); half];
        for t in 0..x.rows {
            // As llama.cpp computes it (f32 throughout): theta_i = pos * base^(-2i/n_rot) by
            // repeated multiplication, scaled, divided by the frequency factor; libm cos/sin.
            let theta_scale = p.freq_base.powf(-2.0 / p.n_rot as f32);
            let mut theta = pos[t] as f32;
            for (i, c) in cs.iter_mut().enumerate() {
                let ff = p.freq_factors.as_ref().map_or(1.0, |f| f[i]);
                let th = p.freq_scale * (theta / ff);
                *c = (th.cos(), th.sin());
                theta *= theta_scale;
            }
            let row = x.row_mut(t);
            for h in 0..n_head {
                let hv = &mut row[h * hd..h * hd + p.n_rot];
                for (i, &(c, s)) in cs.iter().enumerate() {
                    let (a, b) = (hv[2 * i], hv[2 * i + 1]);
                    // The rounding of llama.cpp's compiled rotation: the first product of each
                    // line fused, the second rounded (checked against its dumped RoPE outputs).
                    hv[2 * i] = a.mul_add(c, -(b * s));
                    hv[2 * i + 1] = a.mul_add(s, b * c);
                }
            }
        }
        Ok(())
    }

    fn kv_new(&self, layout: &KvLayout) -> Result<CpuKv> {
        let rb = layout.row_bytes();
        let n = layout.n_slots.checked_mul(rb).ok_or_else(|| Error::new(crate::ErrorKind::OutOfMemory, "KV cache size overflows"))?;
        let alloc = || -> Result<Vec<u8>> {
            let mut v = Vec::new();
            v.try_reserve_exact(n).map_err(|_| {
                Error::new(crate::ErrorKind::OutOfMemory, format!("cannot allocate {n} bytes of KV cache"))
            })?;
            v.resize(n, 0);
            Ok(v)
        };
        let mut k = Vec::with_capacity(layout.n_layer);
        let mut v = Vec::with_capacity(layout.n_layer);
        for _ in 0..layout.n_layer {
            k.push(alloc()?);
            v.push(alloc()?);
        }
        Ok(CpuKv { layout: *layout, row_bytes: rb, k, v })
    }

    fn kv_store(&self, kv: &mut CpuKv, layer: usize, slots: &[u32], k: &Mat, v: &Mat) -> Result<()> {
        let (rb, ty) = (kv.row_bytes, kv.layout.ty);
        for (t, &s) in slots.iter().enumerate() {
            let s = s as usize;
            f32_to_kv_row(ty, k.row(t), &mut kv.k[layer][s * rb..(s + 1) * rb]);
            f32_to_kv_row(ty, v.row(t), &mut kv.v[layer][s * rb..(s + 1) * rb]);
        }
        Ok(())
    }

    fn kv_copy_block(&self, kv: &mut CpuKv, src: u32, dst: u32, n: usize) -> Result<()> {
        let rb = kv.row_bytes;
        let (s, d) = (src as usize * KV_BLOCK * rb, dst as usize * KV_BLOCK * rb);
        for l in 0..kv.layout.n_layer {
            kv.k[l].copy_within(s..s + n * rb, d);
            kv.v[l].copy_within(s..s + n * rb, d);
        }
        Ok(())
    }

    fn kv_export(&self, kv: &CpuKv, layer: usize, slots: &[u32], out: &mut Vec<u8>) -> Result<()> {
        let rb = kv.row_bytes;
        for buf in [&kv.k[layer], &kv.v[layer]] {
            for &s in slots {
                out.extend_from_slice(&buf[s as usize * rb..(s as usize + 1) * rb]);
            }
        }
        Ok(())
    }

    fn kv_import(&self, kv: &mut CpuKv, layer: usize, slots: &[u32], data: &[u8]) -> Result<()> {
        let rb = kv.row_bytes;
        if data.len() != 2 * slots.len() * rb {
            return Err(Error::internal("kv_import: data size does not match the slots"));
        }
        let (kd, vd) = data.split_at(slots.len() * rb);
        for (i, &s) in slots.iter().enumerate() {
            let s = s as usize;
            kv.k[layer][s * rb..(s + 1) * rb].copy_from_slice(&kd[i * rb..(i + 1) * rb]);
            kv.v[layer][s * rb..(s + 1) * rb].copy_from_slice(&vd[i * rb..(i + 1) * rb]);
        }
        Ok(())
    }

    fn attention(&self, kv: &CpuKv, layer: usize, q: &Mat, b: &AttnBatch, out: &mut Mat) -> Result<()> {
        let (nh, nkv, hd) = (b.n_head, b.n_head_kv, b.head_dim);
        let group = nh / nkv;
        let (rb, ty) = (kv.row_bytes, kv.layout.ty);
        let (kl, vl) = (&kv.k[layer], &kv.v[layer]);
        let scale = 1.0 / (hd as f32).sqrt();
        out.resize(q.rows, nh * hd);
        // llama.cpp sums weights·V with its GEMM for a batch of two or more tokens and with
        // ggml_vec_dot_f32 for a single token. Decided per sequence here (one token of this
        // sequence in the pass, or more), so a sequence's results do not depend on which other
        // sequences share the pass; a single-sequence pass is summed exactly as llama.cpp does.
        let mut per_seq = vec![0u32; b.tables.len()];
        for &s in b.tok_seq {
            per_seq[s as usize] += 1;
        }
        let work: usize = b.tok_n_kv.iter().map(|&n| n as usize).sum::<usize>() * nh * hd;
        let par = work >= PAR_MIN_WORK / 4;
        // Head g's K (then V) columns of positions 0..n of a sequence's table, as f32.
        let convert = |table: &[u32], g: usize, n: usize, kf: &mut [f32], vf: &mut [f32]| {
            let kr = PagedRows::cols(kl, table, rb, ty, g * hd, hd);
            let vr = PagedRows { data: vl, ..kr };
            for p in 0..n {
                kv_row_to_f32(ty, kr.row(p), &mut kf[p * hd..(p + 1) * hd]);
                kv_row_to_f32(ty, vr.row(p), &mut vf[p * hd..(p + 1) * hd]);
            }
        };
        // A sequence with several tokens in the pass (a prompt) has its K and V rows, up to the
        // furthest any of its tokens sees, converted to f32 once per KV head for all of them:
        // per token that would be O(prompt²) conversions. At `shared[s]` in `conv`: per head, K
        // rows then V rows. A sequence with one token reads the rows where they are
        // (`vmath::KvElem`).
        if !matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::Q8_0) {
            return Err(Error::internal(format!("attention: no kernel for a {ty:?} KV cache")));
        }
        let mut seen = vec![0usize; b.tables.len()];
        for (&s, &n) in b.tok_seq.iter().zip(b.tok_n_kv) {
            if per_seq[s as usize] > 1 {
                seen[s as usize] = seen[s as usize].max(n as usize);
            }
        }
        let mut shared = vec![0usize; b.tables.len()];
        let mut total = 0;
        for (sh, &n) in shared.iter_mut().zip(&seen) {
            *sh = total;
            total += 2 * nkv * n * hd;
        }
        let mut conv = KV_F32.with(|c| std::mem::take(&mut *c.borrow_mut()));
        conv.resize(total, 0.0);
        {
            let mut parts = Vec::new();
            let mut rest = &mut conv[..];
            for (s, &n) in seen.iter().enumerate().filter(|(_, &n)| n > 0) {
                for g in 0..nkv {
                    let (kv, r) = rest.split_at_mut(2 * n * hd);
                    rest = r;
                    parts.push((s, g, kv));
                }
            }
            let fill = |(s, g, kv): &mut (usize, usize, &mut [f32])| {
                let n = seen[*s];
                let (kf, vf) = kv.split_at_mut(n * hd);
                convert(b.tables[*s], *g, n, kf, vf);
            };
            if par {
                parts.par_iter_mut().for_each(fill);
            } else {
                parts.iter_mut().for_each(fill);
            }
        }
        // One task per (token, KV head): the K/V columns of that head serve the query heads that
        // share them, and a single token's heads still run in parallel.
        let f = |(i, orow): (usize, &mut [f32])| {
            let (t, g) = (i / nkv, i % nkv);
            let n = b.tok_n_kv[t] as usize;
            let seq = b.tok_seq[t] as usize;
            let order = if per_seq[seq] == 1 { SumOrder::VecDot } else { SumOrder::Gemm };
            SCRATCH.with(|s| {
                let mut s = s.borrow_mut();
                let AttnScratch { scores: sc, acc } = &mut *s;
                let qg = &q.row(t)[g * group * hd..(g + 1) * group * hd];
                let heads = Heads { q: qg, n, hd, scale, order };
                if seen[seq] == 0 {
                    let kr = PagedRows::cols(kl, b.tables[seq], rb, ty, g * hd, hd);
                    let vr = PagedRows { data: vl, ..kr };
                    match ty {
                        GgmlType::F16 => heads.attend::<vmath::F16>(kr, vr, sc, acc, orow),
                        GgmlType::Q8_0 => heads.attend::<vmath::Q8_0>(kr, vr, sc, acc, orow),
                        _ => heads.attend::<vmath::F32>(kr, vr, sc, acc, orow),
                    }
                    return;
                }
                let at = shared[seq] + 2 * g * seen[seq] * hd;
                let (kf, vf) = (&conv[at..at + n * hd], &conv[at + seen[seq] * hd..][..n * hd]);
                let (kb, vb) = (qops::f32_bytes(kf), qops::f32_bytes(vf));
                let (kr, vr) = (vmath::Strided { data: kb, stride: hd * 4 }, vmath::Strided { data: vb, stride: hd * 4 });
                heads.attend::<vmath::F32>(kr, vr, sc, acc, orow);
            });
        };
        if par {
            out.data.par_chunks_mut(group * hd).enumerate().for_each(f);
        } else {
            out.data.chunks_mut(group * hd).enumerate().for_each(f);
        }
        KV_F32.with(|c| *c.borrow_mut() = conv);
        Ok(())
    }

    fn ffn(&self, x: &Mat, f: &Ffn<CpuWeight>, out: &mut Mat, routes: Option<&mut Vec<u32>>) -> Result<()> {
        let mut s = FFN_SCRATCH.with(|c| std::mem::take(&mut *c.borrow_mut()));
        let r = self.ffn_with(x, f, out, routes, &mut s);
        FFN_SCRATCH.with(|c| *c.borrow_mut() = s);
        r
    }
}

impl CpuBackend {
    /// The experts of an already routed MoE feed-forward, for a device that keeps some of a
    /// layer's experts in host memory: `out` = per token, the weighted sum of the outputs of its
    /// chosen experts that `take` accepts (`ids`, `wts`: `f.n_expert_used` per row of `x`).
    /// The same arithmetic as [`Backend::ffn`] after its routing.
    pub fn moe_experts(&self, x: &Mat, f: &Ffn<CpuWeight>, ids: &[u32], wts: &[f32], take: &dyn Fn(usize) -> bool, out: &mut Mat) -> Result<()> {
        let mut s = FFN_SCRATCH.with(|c| std::mem::take(&mut *c.borrow_mut()));
        let r = self.experts_with(x, f, ids, wts, take, out, &mut s);
        FFN_SCRATCH.with(|c| *c.borrow_mut() = s);
        r
    }
}

impl CpuBackend {
    /// [`Self::experts_with`] for one token (a decode step): the chosen experts' gates and ups
    /// in one parallel region, SwiGLU, their down projections in a second, then the weighted sum
    /// in expert order as the batch path adds them. The same dots in the same order: its bits.
    #[allow(clippy::too_many_arguments)]
    fn experts_one_token(x: &Mat, f: &Ffn<CpuWeight>, ids: &[u32], wts: &[f32], take: &dyn Fn(usize) -> bool, out: &mut Mat, s: &mut FfnScratch) {
        let FfnScratch { toks: experts, tw, g, u, y, .. } = s;
        // The chosen slots in expert order (the batch path's loop over experts).
        experts.clear();
        tw.clear();
        for e in (0..f.n_expert).filter(|&e| take(e)) {
            for (&id, &w) in ids.iter().zip(wts) {
                if id as usize == e {
                    experts.push(id);
                    tw.push(w);
                }
            }
        }
        let (n, n_ff, d) = (experts.len(), f.n_ff, x.cols);
        if n == 0 {
            return;
        }
        let par = 3 * n * n_ff * d >= PAR_MIN_WORK;
        let mut buf = QBUF.with(|b| std::mem::take(&mut *b.borrow_mut()));
        // The input converted for the gates' and the ups' activation types.
        let tys = [f.gate.ty, f.up.ty];
        let ty = |j: usize| tys[j];
        Self::quantize_segments(ty, 2, x.row(0), &mut buf);
        let ((go, gb), (uo, ub)) = (Self::act_segment(ty, 2, d, 0), Self::act_segment(ty, 2, d, 1));
        g.resize(n, n_ff);
        u.resize(n, n_ff);
        {
            let (xg, xu) = (&buf[go..go + gb], &buf[uo..uo + ub]);
            let gate_up = |(i, (gr, ur)): (usize, (&mut [f32], &mut [f32]))| {
                let e = experts[i] as usize;
                let gate = f.gate.sub_rows(e * n_ff, n_ff);
                let up = f.up.sub_rows(e * n_ff, n_ff);
                if par {
                    rayon::join(|| Self::matvec(&gate, xg, gr, true), || Self::matvec(&up, xu, ur, true));
                } else {
                    Self::matvec(&gate, xg, gr, false);
                    Self::matvec(&up, xu, ur, false);
                }
            };
            if par {
                g.data.par_chunks_mut(n_ff).zip(u.data.par_chunks_mut(n_ff)).enumerate().for_each(gate_up);
            } else {
                g.data.chunks_mut(n_ff).zip(u.data.chunks_mut(n_ff)).enumerate().for_each(gate_up);
            }
        }
        for (gr, ur) in g.data.chunks_exact_mut(n_ff).zip(u.data.chunks_exact(n_ff)) {
            vmath::swiglu(gr, ur);
        }
        let db = Self::quantize_rows(g, f.down.ty, &mut buf);
        y.resize(n, d);
        {
            let buf = &buf[..];
            let down = |(i, yr): (usize, &mut [f32])| {
                let w = f.down.sub_rows(experts[i] as usize * d, d);
                Self::matvec(&w, &buf[i * db..(i + 1) * db], yr, par);
            };
            if par {
                y.data.par_chunks_mut(d).enumerate().for_each(down);
            } else {
                y.data.chunks_mut(d).enumerate().for_each(down);
            }
        }
        QBUF.with(|b| *b.borrow_mut() = buf);
        for (i, &w) in tw.iter().enumerate() {
            for (o, &v) in out.row_mut(0).iter_mut().zip(y.row(i)) {
                *o += w * v;
            }
        }
    }
}

/// Buffers of the feed-forward kept per thread, so a decode step allocates nothing.
#[derive(Default)]
struct FfnScratch {
    ids: Vec<u32>,
    wts: Vec<f32>,
    probs: Vec<f32>,
    logits: Mat,
    xe: Mat,
    g: Mat,
    u: Mat,
    y: Mat,
    toks: Vec<u32>,
    tw: Vec<f32>,
}

thread_local! {
    static FFN_SCRATCH: RefCell<FfnScratch> = RefCell::new(FfnScratch::default());
}

impl CpuBackend {
    fn ffn_with(&self, x: &Mat, f: &Ffn<CpuWeight>, out: &mut Mat, routes: Option<&mut Vec<u32>>, s: &mut FfnScratch) -> Result<()> {
        let n_tok = x.rows;
        let k = f.n_expert_used;
        // Routing: per token its experts and weights (dense: expert 0, weight 1).
        s.ids.clear();
        s.ids.resize(n_tok * k, 0);
        s.wts.clear();
        s.wts.resize(n_tok * k, 1.0);
        if let Some(router) = &f.router {
            self.matmul(x, &[router], &mut [&mut s.logits])?;
            s.probs.resize(f.n_expert, 0.0);
            for t in 0..n_tok {
                route_top_k(s.logits.row(t), k, &mut s.probs, &mut s.ids[t * k..(t + 1) * k], &mut s.wts[t * k..(t + 1) * k]);
            }
            if let Some(r) = routes {
                r.extend_from_slice(&s.ids);
            }
        }
        let (ids, wts) = (std::mem::take(&mut s.ids), std::mem::take(&mut s.wts));
        let r = self.experts_with(x, f, &ids, &wts, &|_| true, out, s);
        (s.ids, s.wts) = (ids, wts);
        r
    }

    /// `out` = for each token, the weighted sum of its chosen experts' SwiGLU outputs, over the
    /// experts `take` accepts (`ids`/`wts`: `n_expert_used` per token, as routed). Each expert
    /// runs once over the tokens that chose it.
    #[allow(clippy::too_many_arguments)]
    fn experts_with(
        &self,
        x: &Mat,
        f: &Ffn<CpuWeight>,
        ids: &[u32],
        wts: &[f32],
        take: &dyn Fn(usize) -> bool,
        out: &mut Mat,
        s: &mut FfnScratch,
    ) -> Result<()> {
        let (n_tok, k) = (x.rows, f.n_expert_used);
        if ids.len() != n_tok * k || wts.len() != ids.len() {
            return Err(Error::internal(format!("experts: {} ids, {} weights for {n_tok} tokens x {k}", ids.len(), wts.len())));
        }
        out.resize(n_tok, x.cols);
        out.data.fill(0.0);
        if n_tok == 1 {
            Self::experts_one_token(x, f, ids, wts, take, out, s);
            return Ok(());
        }
        // Group the tokens by expert; only the chosen experts are touched.
        for e in (0..f.n_expert).filter(|&e| take(e)) {
            s.toks.clear();
            s.tw.clear();
            for (i, &id) in ids.iter().enumerate() {
                if id as usize == e {
                    s.toks.push((i / k) as u32);
                    s.tw.push(wts[i]);
                }
            }
            if s.toks.is_empty() {
                continue;
            }
            let all = s.toks.len() == n_tok && s.toks.iter().enumerate().all(|(i, &t)| i as u32 == t);
            if !all {
                self.gather_rows(x, &s.toks, &mut s.xe)?;
            }
            let xin: &Mat = if all { x } else { &s.xe };
            let gate = f.gate.sub_rows(e * f.n_ff, f.n_ff);
            let up = f.up.sub_rows(e * f.n_ff, f.n_ff);
            let down = f.down.sub_rows(e * x.cols, x.cols);
            self.matmul(xin, &[&gate, &up], &mut [&mut s.g, &mut s.u])?;
            for (gr, ur) in s.g.data.chunks_exact_mut(f.n_ff).zip(s.u.data.chunks_exact(f.n_ff)) {
                vmath::swiglu(gr, ur);
            }
            self.matmul(&s.g, &[&down], &mut [&mut s.y])?;
            for (i, &t) in s.toks.iter().enumerate() {
                let w = s.tw[i];
                for (o, &v) in out.row_mut(t as usize).iter_mut().zip(s.y.row(i)) {
                    *o += w * v;
                }
            }
        }
        Ok(())
    }
}
