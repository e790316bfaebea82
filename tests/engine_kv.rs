//! The KV-cache manager through the engine: fork, truncate, save/load, all-or-nothing steps,
//! batching, and a random soak against a recompute-from-scratch oracle (tiny-mixtral).

mod engine_common;
use engine_common::*;

use std::collections::HashMap;

use xdan::engine::{Context, ContextParams, KvType, Model};
use xdan::ErrorKind;

const TIGHT: f32 = 1e-4;

fn model() -> Model {
    load(&tiny_mixtral("Q8_0"), 2)
}

/// Logits after stepping `passes` into a fresh context, one step each. The passes matter only
/// as far as a single token is summed like a decode step and two or more like a prompt batch.
fn fresh(m: &Model, passes: &[&[i32]], kv: KvType) -> Vec<f32> {
    let mut c = ctx(m, 128, 1, kv);
    for p in passes {
        c.step(0, p).unwrap();
    }
    c.logits(0).unwrap().to_vec()
}

fn toks(seed: u64, n: usize) -> Vec<i32> {
    let mut r = Rng(seed);
    (0..n).map(|_| 3 + (r.next() % 1000) as i32).collect()
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn fork_then_continue_equals_recompute() {
    let m = model();
    for kv in [KvType::F16, KvType::F32, KvType::Q8_0] {
        let mut c = ctx(&m, 128, 3, kv);
        let base = toks(1, 21); // ends inside the second block: the fork shares a partial block
        c.step(0, &base).unwrap();
        c.seq_fork(0, 1).unwrap();
        c.seq_fork(0, 2).unwrap();
        assert_eq!(c.logits(1).unwrap(), c.logits(0).unwrap());
        let s = c.kv_stats();
        assert_eq!((s.used_tokens, s.shared_tokens), (21, 21));
        let a = toks(2, 5);
        let b = toks(3, 14);
        c.step(0, &a).unwrap();
        c.step(1, &b).unwrap();
        let ra = fresh(&m, &[&base, &a], kv);
        let rb = fresh(&m, &[&base, &b], kv);
        assert!(max_abs_diff(c.logits(0).unwrap(), &ra) < TIGHT, "{kv:?}: seq 0 after fork");
        assert!(max_abs_diff(c.logits(1).unwrap(), &rb) < TIGHT, "{kv:?}: seq 1 after fork");
        // Seq 2 still shares the original blocks, untouched by the others' appends.
        c.step(2, &a).unwrap();
        assert!(max_abs_diff(c.logits(2).unwrap(), &ra) < TIGHT, "{kv:?}: seq 2 after fork");
        c.kv_check().unwrap();
        for s in 0..3 {
            c.seq_clear(s).unwrap();
        }
        assert_eq!(c.kv_used_blocks(), 0);
    }
}

#[test]
fn truncate_then_restep_equals_fresh() {
    let m = model();
    let mut c = ctx(&m, 128, 2, KvType::F16);
    let t = toks(4, 40);
    c.step(0, &t).unwrap();
    c.seq_fork(0, 1).unwrap();
    for &cut in &[33usize, 32, 17, 5, 1] {
        c.seq_truncate(0, cut as u32).unwrap();
        assert_eq!(c.seq_len(0), cut as u32);
        assert_eq!(c.logits(0).unwrap_err().kind, ErrorKind::InvalidArg);
        let more = toks(cut as u64 + 10, 3);
        c.step(0, &more).unwrap();
        let want = fresh(&m, &[&t[..cut], &more], KvType::F16);
        assert!(max_abs_diff(c.logits(0).unwrap(), &want) < TIGHT, "truncate to {cut}");
        c.seq_truncate(0, cut as u32).unwrap();
    }
    // The fork never saw any of it.
    c.step(1, &[7]).unwrap();
    let want = fresh(&m, &[&t, &[7]], KvType::F16);
    assert!(max_abs_diff(c.logits(1).unwrap(), &want) < TIGHT);
    c.kv_check().unwrap();
}

#[test]
fn save_load_continue_and_refusals() {
    let m = model();
    let dir = std::env::temp_dir().join(format!("xdan-kv-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("seq.kv");
    let t = toks(5, 27);
    let mut c = ctx(&m, 128, 2, KvType::F16);
    c.step(1, &t).unwrap();
    c.seq_save(1, &path).unwrap();
    // Load into another context (and another slot): same logits, continues identically.
    let mut d = ctx(&m, 128, 3, KvType::F16);
    d.step(2, &toks(6, 9)).unwrap();
    d.seq_load(2, &path).unwrap();
    assert_eq!(d.seq_tokens(2).unwrap(), &t[..]);
    assert_eq!(d.logits(2).unwrap(), c.logits(1).unwrap());
    let more = toks(7, 6);
    c.step(1, &more).unwrap();
    d.step(2, &more).unwrap();
    assert!(max_abs_diff(d.logits(2).unwrap(), c.logits(1).unwrap()) < TIGHT);
    d.kv_check().unwrap();
    // Another model's file: refused with a clear Format error, the target unchanged.
    let other = load(&tiny_mixtral("F16"), 2);
    let mut o = ctx(&other, 128, 1, KvType::F16);
    o.step(0, &[1, 2, 3]).unwrap();
    let before = o.logits(0).unwrap().to_vec();
    let e = o.seq_load(0, &path).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Format, "{}", e.message);
    assert!(e.message.contains("another model"), "{}", e.message);
    assert_eq!(o.seq_tokens(0).unwrap(), &[1, 2, 3]);
    assert_eq!(o.logits(0).unwrap(), &before[..]);
    // Another KV type: refused.
    let mut q = ctx(&m, 128, 1, KvType::F32);
    assert_eq!(q.seq_load(0, &path).unwrap_err().kind, ErrorKind::InvalidArg);
    // Truncated and corrupted files: refused.
    let bytes = std::fs::read(&path).unwrap();
    let bad = dir.join("bad.kv");
    std::fs::write(&bad, &bytes[..bytes.len() / 2]).unwrap();
    assert_eq!(d.seq_load(0, &bad).unwrap_err().kind, ErrorKind::Format);
    let mut flipped = bytes.clone();
    flipped[bytes.len() / 2] ^= 0x40;
    std::fs::write(&bad, &flipped).unwrap();
    assert_eq!(d.seq_load(0, &bad).unwrap_err().kind, ErrorKind::Format);
    std::fs::write(&bad, b"not a kv file").unwrap();
    assert_eq!(d.seq_load(0, &bad).unwrap_err().kind, ErrorKind::Format);
    assert_eq!(d.seq_load(0, &dir.join("missing.kv")).unwrap_err().kind, ErrorKind::Io);
    // Not enough room: ContextFull, unchanged.
    let mut small = Context::new(&m, &ContextParams { n_ctx: 16, kv_type: KvType::F16, n_threads: 2, ..Default::default() }).unwrap();
    small.step(0, &[1, 2]).unwrap();
    assert_eq!(small.seq_load(0, &path).unwrap_err().kind, ErrorKind::ContextFull);
    assert_eq!(small.seq_tokens(0).unwrap(), &[1, 2]);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn failed_steps_change_nothing() {
    let m = model();
    let mut c = Context::new(
        &m,
        &ContextParams { n_ctx: 40, n_seq_max: 2, n_kv_tokens: 48, kv_type: KvType::F16, n_threads: 2, ..Default::default() },
    )
    .unwrap();
    let t = toks(8, 30);
    c.step(0, &t).unwrap();
    let before = c.logits(0).unwrap().to_vec();
    let stats = c.kv_stats();
    let unchanged = |c: &Context| {
        assert_eq!(c.seq_tokens(0).unwrap(), &t[..]);
        assert_eq!(c.logits(0).unwrap(), &before[..]);
        assert_eq!(c.kv_stats(), stats);
        c.kv_check().unwrap();
    };
    // Past n_ctx.
    let e = c.step(0, &toks(9, 11)).unwrap_err();
    assert_eq!(e.kind, ErrorKind::ContextFull);
    unchanged(&c);
    // Pool exhausted by another sequence's step, in a batch: nothing of the batch happens.
    let e = c.step_batch(&[(0, &[5][..]), (1, &toks(10, 20)[..])]).unwrap_err();
    assert_eq!(e.kind, ErrorKind::ContextFull);
    unchanged(&c);
    assert_eq!(c.seq_len(1), 0);
    // Bad token id: InvalidArg naming it.
    let e = c.step(0, &[5, 1024]).unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidArg);
    assert!(e.message.contains("1024") && e.message.contains("n_vocab"), "{}", e.message);
    assert_eq!(c.step(0, &[-1]).unwrap_err().kind, ErrorKind::InvalidArg);
    unchanged(&c);
    // Bad sequence.
    let e = c.step(7, &[5]).unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidArg);
    assert!(e.message.contains('7'), "{}", e.message);
    // Abort: Cancelled, unchanged; the polling is counted.
    let polls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let p2 = polls.clone();
    c.set_abort(Some(Box::new(move || p2.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < 1)));
    let e = c.step(0, &[5, 6, 7]).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Cancelled);
    assert!(polls.load(std::sync::atomic::Ordering::SeqCst) >= 2);
    unchanged(&c);
    c.set_abort(None);
    // And the sequence still works.
    c.step(0, &[5]).unwrap();
    let want = fresh(&m, &[&t, &[5]], KvType::F16);
    assert!(max_abs_diff(c.logits(0).unwrap(), &want) < TIGHT);
}

#[test]
fn step_batch_equals_separate_steps() {
    let m = model();
    let prompts: Vec<Vec<i32>> = (0..4).map(|i| toks(20 + i, 3 + 5 * i as usize)).collect();
    let mut a = ctx(&m, 64, 4, KvType::F16);
    let mut b = ctx(&m, 64, 4, KvType::F16);
    let items: Vec<(u32, &[i32])> = prompts.iter().enumerate().map(|(i, p)| (i as u32, &p[..])).collect();
    a.step_batch(&items).unwrap();
    for (i, p) in prompts.iter().enumerate() {
        b.step(i as u32, p).unwrap();
    }
    // Then a decode round of all four at once.
    let next: Vec<[i32; 1]> = (0..4).map(|i| [100 + i]).collect();
    let items: Vec<(u32, &[i32])> = next.iter().enumerate().map(|(i, t)| (i as u32, &t[..])).collect();
    a.step_batch(&items).unwrap();
    for (i, t) in next.iter().enumerate() {
        b.step(i as u32, t).unwrap();
    }
    for s in 0..4 {
        assert!(max_abs_diff(a.logits(s).unwrap(), b.logits(s).unwrap()) < TIGHT, "seq {s}");
    }
}

#[test]
fn random_soak_against_recompute_oracle() {
    let m = model();
    let n_seq = 4u32;
    let n_ctx = 40usize;
    let mut c = Context::new(
        &m,
        &ContextParams { n_ctx: n_ctx as u32, n_seq_max: n_seq, n_kv_tokens: 112, kv_type: KvType::F16, n_threads: 2, ..Default::default() },
    )
    .unwrap();
    let mut oracle_ctx = ctx(&m, n_ctx as u32, 1, KvType::F16);
    let mut cache: HashMap<(Vec<i32>, Vec<bool>), Vec<f32>> = HashMap::new();
    // Recomputes a sequence from scratch with the same kind of pass per position: a token that
    // was stepped alone is stepped alone again, runs of tokens stepped two or more at a time
    // are stepped as one pass (a lone one with a throw-away token after it), since the
    // attention's summation order depends on that and nothing else.
    let mut oracle = |t: &[i32], single: &[bool]| -> Vec<f32> {
        cache
            .entry((t.to_vec(), single.to_vec()))
            .or_insert_with(|| {
                let c = &mut oracle_ctx;
                c.seq_clear(0).unwrap();
                let mut i = 0;
                while i < t.len() {
                    if single[i] {
                        c.step(0, &t[i..=i]).unwrap();
                        i += 1;
                        continue;
                    }
                    let j = (i..t.len()).find(|&j| single[j]).unwrap_or(t.len());
                    if j - i >= 2 {
                        c.step(0, &t[i..j]).unwrap();
                    } else {
                        assert!(j < t.len(), "no logits for a lone batched last token");
                        c.step(0, &[t[i], 3]).unwrap();
                        c.seq_truncate(0, j as u32).unwrap();
                    }
                    i = j;
                }
                c.logits(0).unwrap().to_vec()
            })
            .clone()
    };
    let dir = std::env::temp_dir().join(format!("xdan-kv-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut saved: Vec<(std::path::PathBuf, Vec<i32>, Vec<bool>)> = Vec::new();
    let mut want: Vec<Vec<i32>> = vec![Vec::new(); n_seq as usize];
    // Per position: stepped as the sequence's only token of its pass.
    let mut single: Vec<Vec<bool>> = vec![Vec::new(); n_seq as usize];
    let mut has_logits = vec![false; n_seq as usize];
    let mut rng = Rng(0x5eed);
    let mut counts = [0usize; 7];
    let n_ops = 2000;
    for op in 0..n_ops {
        let s = rng.below(n_seq as u64) as usize;
        let kind = rng.below(100);
        let kind = match kind {
            0..=44 => 0,  // step
            45..=54 => 1, // batch step
            55..=67 => 2, // fork
            68..=79 => 3, // truncate
            80..=85 => 4, // clear
            86..=92 => 5, // save
            _ => 6,       // load
        };
        counts[kind] += 1;
        match kind {
            0 => {
                // Short steps usually (stay fast), sometimes past n_ctx or the pool.
                let big = rng.below(10) == 0;
                let n = 1 + rng.below(if big { 24 } else { 4 }) as usize;
                let t: Vec<i32> = (0..n).map(|_| 3 + rng.below(1000) as i32).collect();
                let before_stats = c.kv_stats();
                match c.step(s as u32, &t) {
                    Ok(()) => {
                        want[s].extend_from_slice(&t);
                        single[s].extend(std::iter::repeat_n(t.len() == 1, t.len()));
                        has_logits[s] = true;
                        let o = oracle(&want[s], &single[s]);
                        assert!(max_abs_diff(c.logits(s as u32).unwrap(), &o) < TIGHT, "op {op}: step seq {s}");
                    }
                    Err(e) => {
                        assert_eq!(e.kind, ErrorKind::ContextFull, "op {op}: {}", e.message);
                        assert_eq!(c.kv_stats(), before_stats, "op {op}: failed step changed the cache");
                    }
                }
            }
            1 => {
                let mut seqs: Vec<usize> = (0..n_seq as usize).filter(|_| rng.below(2) == 0).collect();
                if seqs.is_empty() {
                    seqs.push(s);
                }
                let ts: Vec<Vec<i32>> = seqs.iter().map(|_| (0..1 + rng.below(3)).map(|_| 3 + rng.below(1000) as i32).collect()).collect();
                let items: Vec<(u32, &[i32])> = seqs.iter().zip(&ts).map(|(&q, t)| (q as u32, &t[..])).collect();
                match c.step_batch(&items) {
                    Ok(()) => {
                        for (&q, t) in seqs.iter().zip(&ts) {
                            want[q].extend_from_slice(t);
                            single[q].extend(std::iter::repeat_n(t.len() == 1, t.len()));
                            has_logits[q] = true;
                            let o = oracle(&want[q], &single[q]);
                            assert!(max_abs_diff(c.logits(q as u32).unwrap(), &o) < TIGHT, "op {op}: batch seq {q}");
                        }
                    }
                    Err(e) => assert_eq!(e.kind, ErrorKind::ContextFull, "op {op}: {}", e.message),
                }
            }
            2 => {
                let d = rng.below(n_seq as u64) as usize;
                c.seq_fork(s as u32, d as u32).unwrap();
                want[d] = want[s].clone();
                single[d] = single[s].clone();
                has_logits[d] = has_logits[s];
            }
            3 => {
                let len = rng.below(want[s].len() as u64 + 1) as usize;
                c.seq_truncate(s as u32, len as u32).unwrap();
                if len < want[s].len() {
                    has_logits[s] = false;
                }
                want[s].truncate(len);
                single[s].truncate(len);
            }
            4 => {
                c.seq_clear(s as u32).unwrap();
                want[s].clear();
                single[s].clear();
                has_logits[s] = false;
            }
            5 => {
                let p = dir.join(format!("s{op}.kv"));
                c.seq_save(s as u32, &p).unwrap();
                saved.push((p, want[s].clone(), single[s].clone()));
            }
            _ => {
                if saved.is_empty() {
                    continue;
                }
                let (p, t, f) = saved[rng.below(saved.len() as u64) as usize].clone();
                match c.seq_load(s as u32, &p) {
                    Ok(()) => {
                        want[s] = t;
                        single[s] = f;
                        has_logits[s] = c.logits(s as u32).is_ok();
                    }
                    Err(e) => assert_eq!(e.kind, ErrorKind::ContextFull, "op {op}: {}", e.message),
                }
            }
        }
        for q in 0..n_seq as usize {
            assert_eq!(c.seq_tokens(q as u32).unwrap(), &want[q][..], "op {op}: seq {q} tokens");
            if has_logits[q] && !want[q].is_empty() {
                let o = oracle(&want[q], &single[q]);
                assert!(max_abs_diff(c.logits(q as u32).unwrap(), &o) < TIGHT, "op {op}: seq {q} logits");
            }
        }
        c.kv_check().unwrap_or_else(|e| panic!("op {op}: {}", e.message));
        let st = c.kv_stats();
        assert!(st.used_tokens <= st.capacity_tokens);
    }
    for q in 0..n_seq {
        c.seq_clear(q).unwrap();
    }
    assert_eq!(c.kv_used_blocks(), 0);
    assert_eq!(c.kv_stats().used_tokens, 0);
    std::fs::remove_dir_all(&dir).ok();
    println!("soak: {n_ops} ops (step, batch, fork, truncate, clear, save, load) = {counts:?}");
}
