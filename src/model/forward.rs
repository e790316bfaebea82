//! The llama forward pass over one batch of tokens, written once against [`Backend`].

use super::dump::Dump;
use super::{HParams, Weights};
use crate::backend::{AttnBatch, Backend, RopeParams};
use crate::error::{Error, ErrorKind, Result};

/// One forward pass's tokens. Token `t` is `tokens[t]` at position `pos[t]` of sequence
/// `tok_seq[t]` (an index into `tables`), its K/V go to KV slot `slots[t]`; logits are computed
/// for the tokens listed in `out_rows`.
pub struct Batch<'a> {
    pub tokens: &'a [u32],
    pub pos: &'a [u32],
    pub slots: &'a [u32],
    pub tok_seq: &'a [u32],
    pub tables: &'a [&'a [u32]],
    pub out_rows: &'a [u32],
}

/// Activation buffers kept across steps so a decode step allocates nothing on the device.
pub struct Scratch<B: Backend> {
    x: B::Act,
    xn: B::Act,
    q: B::Act,
    k: B::Act,
    v: B::Act,
    att: B::Act,
    o: B::Act,
    last: B::Act,
    logits: B::Act,
    n_kv: Vec<u32>,
}

impl<B: Backend> Scratch<B> {
    pub fn new(be: &B) -> Scratch<B> {
        Scratch {
            x: be.act_new(),
            xn: be.act_new(),
            q: be.act_new(),
            k: be.act_new(),
            v: be.act_new(),
            att: be.act_new(),
            o: be.act_new(),
            last: be.act_new(),
            logits: be.act_new(),
            n_kv: Vec::new(),
        }
    }
}

fn cancelled() -> Error {
    Error::new(ErrorKind::Cancelled, "step cancelled by the abort callback")
}

/// Runs the model on `b`, writing K/V into `kv` and the logits of `b.out_rows` (row after row,
/// `n_vocab` each) into `logits`. `abort` is polled between layers. When `routes` is given, the
/// chosen experts of every layer are appended to `routes[layer]` (token-major).
#[allow(clippy::too_many_arguments)]
pub fn forward<B: Backend>(
    be: &B,
    w: &Weights<B>,
    hp: &HParams,
    rope: &RopeParams,
    kv: &mut B::Kv,
    b: &Batch,
    s: &mut Scratch<B>,
    abort: &mut dyn FnMut() -> bool,
    mut routes: Option<&mut Vec<Vec<u32>>>,
    logits: &mut [f32],
) -> Result<()> {
    let n = b.tokens.len();
    s.n_kv.clear();
    s.n_kv.extend(b.pos.iter().map(|p| p + 1));
    let ab = AttnBatch {
        tok_seq: b.tok_seq,
        tok_n_kv: &s.n_kv,
        tables: b.tables,
        n_head: hp.n_head,
        n_head_kv: hp.n_head_kv,
        head_dim: hp.head_dim,
    };
    be.embed(&w.tok_embd, b.tokens, &mut s.x)?;
    // Each residual add is fused with the norm after it (a device may run the two as one op):
    // the first layer's attention norm stands alone, the last layer's add too.
    if let Some(l) = w.layers.first() {
        be.rms_norm(&s.x, &l.attn_norm, hp.rms_eps, &mut s.xn)?;
    }
    let dump = Dump::from_env(n);
    let (e, ekv) = (hp.n_head * hp.head_dim, hp.n_head_kv * hp.head_dim);
    for (il, l) in w.layers.iter().enumerate() {
        if !abort() {
            return Err(cancelled());
        }
        // Attention block (s.xn holds the normed input).
        dump.put(be, &s.xn, "attn_norm", il, hp.n_embd);
        be.matmul(&s.xn, &[&l.wq, &l.wk, &l.wv], &mut [&mut s.q, &mut s.k, &mut s.v])?;
        be.rope_kv_store(&mut s.q, &mut s.k, &s.v, hp.n_head, hp.n_head_kv, b.pos, rope, kv, il, b.slots)?;
        dump.put(be, &s.q, "Qcur", il, e);
        dump.put(be, &s.k, "Kcur", il, ekv);
        dump.put(be, &s.v, "Vcur", il, ekv);
        be.attention(kv, il, &s.q, &ab, &mut s.att)?;
        dump.put(be, &s.att, "kqv_out", il, e);
        be.matmul(&s.att, &[&l.wo], &mut [&mut s.o])?;
        dump.put(be, &s.o, "attn_out", il, hp.n_embd);
        // Feed-forward block.
        be.add_rms_norm(&mut s.x, &s.o, &l.ffn_norm, hp.rms_eps, &mut s.xn)?;
        dump.put(be, &s.x, "ffn_inp", il, hp.n_embd);
        dump.put(be, &s.xn, "ffn_norm", il, hp.n_embd);
        let r = routes.as_deref_mut().map(|r| &mut r[il]);
        be.ffn(&s.xn, &l.ffn, &mut s.o, r)?;
        dump.put(be, &s.o, "ffn_out", il, hp.n_embd);
        match w.layers.get(il + 1) {
            Some(next) => be.add_rms_norm(&mut s.x, &s.o, &next.attn_norm, hp.rms_eps, &mut s.xn)?,
            None => be.add(&mut s.x, &s.o)?,
        }
        dump.put(be, &s.x, "l_out", il, hp.n_embd);
        debug_assert_eq!(n, b.pos.len());
    }
    if !abort() {
        return Err(cancelled());
    }
    if b.out_rows.is_empty() {
        return Ok(());
    }
    be.gather_rows(&s.x, b.out_rows, &mut s.last)?;
    be.rms_norm(&s.last, &w.output_norm, hp.rms_eps, &mut s.xn)?;
    be.matmul(&s.xn, &[&w.output], &mut [&mut s.logits])?;
    for (i, chunk) in logits.chunks_exact_mut(hp.n_vocab).enumerate().take(b.out_rows.len()) {
        be.act_read_row(&s.logits, i, chunk)?;
    }
    Ok(())
}
