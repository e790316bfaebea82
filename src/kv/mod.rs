//! The paged KV-cache manager: a pool of fixed-size blocks ([`KV_BLOCK`] tokens; a block number
//! addresses the same slots in every layer), a block table per sequence, reference counts so
//! forked sequences share blocks, and copy-on-write of a shared, partly filled last block when a
//! sequence appends to it. It only does bookkeeping; the K/V bytes live in the backend.

pub mod file;

use crate::backend::KV_BLOCK;
use crate::error::{Error, ErrorKind, Result};
use crate::tokenizer::Token;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Seq {
    /// Blocks holding positions `[i * KV_BLOCK, (i + 1) * KV_BLOCK)`.
    pub blocks: Vec<u32>,
    /// The cached tokens (the sequence's length is their count).
    pub tokens: Vec<Token>,
}

/// The state of some sequences before an operation, to put back if it fails.
pub struct Snapshot {
    seqs: Vec<(usize, Seq)>,
}

pub struct KvManager {
    refcount: Vec<u32>,
    free: Vec<u32>,
    seqs: Vec<Seq>,
    n_ctx: usize,
}

/// A block copy the backend must do (copy-on-write): first `n` slots of `src` into `dst`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockCopy {
    pub src: u32,
    pub dst: u32,
    pub n: usize,
}

impl KvManager {
    pub fn new(n_blocks: usize, n_seq: usize, n_ctx: usize) -> KvManager {
        KvManager {
            refcount: vec![0; n_blocks],
            // Popped from the end: hand out low block numbers first.
            free: (0..n_blocks as u32).rev().collect(),
            seqs: vec![Seq::default(); n_seq],
            n_ctx,
        }
    }

    pub fn n_seq(&self) -> usize {
        self.seqs.len()
    }
    pub fn n_blocks(&self) -> usize {
        self.refcount.len()
    }
    pub fn n_free(&self) -> usize {
        self.free.len()
    }
    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    pub fn check_seq(&self, seq: u32) -> Result<usize> {
        if (seq as usize) < self.seqs.len() {
            Ok(seq as usize)
        } else {
            Err(Error::invalid_arg(format!("sequence {seq} is out of range (the context has {} sequence slots)", self.seqs.len())))
        }
    }

    pub fn seq(&self, seq: usize) -> &Seq {
        &self.seqs[seq]
    }
    pub fn len(&self, seq: usize) -> usize {
        self.seqs[seq].tokens.len()
    }

    /// The KV slot of position `p` of `seq`.
    pub fn slot(&self, seq: usize, p: usize) -> u32 {
        self.seqs[seq].blocks[p / KV_BLOCK] * KV_BLOCK as u32 + (p % KV_BLOCK) as u32
    }

    pub fn snapshot(&self, seqs: impl IntoIterator<Item = usize>) -> Snapshot {
        let mut v: Vec<(usize, Seq)> = Vec::new();
        for s in seqs {
            if !v.iter().any(|(i, _)| *i == s) {
                v.push((s, self.seqs[s].clone()));
            }
        }
        Snapshot { seqs: v }
    }

    /// Puts the snapshotted sequences back as they were. Blocks they held are never written by
    /// an append (only slots past the old length, or copies), so their contents are intact.
    pub fn rollback(&mut self, snap: Snapshot) {
        for (i, old) in snap.seqs {
            for &b in &old.blocks {
                self.refcount[b as usize] += 1;
            }
            let cur = std::mem::replace(&mut self.seqs[i], old);
            self.release(&cur.blocks);
        }
    }

    fn release(&mut self, blocks: &[u32]) {
        for &b in blocks {
            let r = &mut self.refcount[b as usize];
            *r -= 1;
            if *r == 0 {
                self.free.push(b);
            }
        }
    }

    fn alloc(&mut self) -> Option<u32> {
        let b = self.free.pop()?;
        self.refcount[b as usize] = 1;
        Some(b)
    }

    /// Appends `tokens` to `seq`: makes the partly filled last block exclusive (copy listed in
    /// `copies`), allocates the blocks needed, records the tokens. On `ContextFull` the caller
    /// rolls back its snapshot (this may have allocated some blocks already).
    pub fn append(&mut self, seq: usize, tokens: &[Token], copies: &mut Vec<BlockCopy>) -> Result<()> {
        let len = self.len(seq);
        let new_len = len + tokens.len();
        if new_len > self.n_ctx {
            return Err(Error::new(
                ErrorKind::ContextFull,
                format!("sequence {seq} would hold {new_len} tokens, more than n_ctx = {}", self.n_ctx),
            ));
        }
        let full = || Error::new(ErrorKind::ContextFull, "the KV cache has no free block left");
        if len % KV_BLOCK != 0 && !tokens.is_empty() {
            let last = *self.seqs[seq].blocks.last().expect("a partly filled sequence has a block");
            if self.refcount[last as usize] > 1 {
                let nb = self.alloc().ok_or_else(full)?;
                self.refcount[last as usize] -= 1;
                copies.push(BlockCopy { src: last, dst: nb, n: len % KV_BLOCK });
                *self.seqs[seq].blocks.last_mut().unwrap() = nb;
            }
        }
        while self.seqs[seq].blocks.len() * KV_BLOCK < new_len {
            let nb = self.alloc().ok_or_else(full)?;
            self.seqs[seq].blocks.push(nb);
        }
        self.seqs[seq].tokens.extend_from_slice(tokens);
        Ok(())
    }

    /// Keeps the first `len` tokens of `seq` (no-op when it is not longer).
    pub fn truncate(&mut self, seq: usize, len: usize) {
        if len >= self.len(seq) {
            return;
        }
        let keep = len.div_ceil(KV_BLOCK);
        let s = &mut self.seqs[seq];
        s.tokens.truncate(len);
        let dropped: Vec<u32> = s.blocks.drain(keep..).collect();
        self.release(&dropped);
    }

    pub fn clear(&mut self, seq: usize) {
        self.truncate(seq, 0);
    }

    /// `dst` becomes a copy of `src` sharing its blocks.
    pub fn fork(&mut self, src: usize, dst: usize) {
        if src == dst {
            return;
        }
        self.clear(dst);
        let s = self.seqs[src].clone();
        for &b in &s.blocks {
            self.refcount[b as usize] += 1;
        }
        self.seqs[dst] = s;
    }

    /// Replaces `seq` by a fresh sequence of `tokens` whose blocks are newly allocated (while the
    /// old ones are still held, so a failure changes nothing). Returns the new slots in order;
    /// the caller writes the K/V there and then calls [`KvManager::commit_replace`].
    pub fn alloc_fresh(&mut self, n_tokens: usize) -> Result<Vec<u32>> {
        if n_tokens > self.n_ctx {
            return Err(Error::new(ErrorKind::ContextFull, format!("{n_tokens} tokens exceed n_ctx = {}", self.n_ctx)));
        }
        let nb = n_tokens.div_ceil(KV_BLOCK);
        if nb > self.free.len() {
            return Err(Error::new(
                ErrorKind::ContextFull,
                format!("{n_tokens} tokens need {nb} KV blocks, {} are free", self.free.len()),
            ));
        }
        Ok((0..nb).map(|_| self.alloc().unwrap()).collect())
    }

    pub fn commit_replace(&mut self, seq: usize, blocks: Vec<u32>, tokens: Vec<Token>) {
        self.clear(seq);
        self.seqs[seq] = Seq { blocks, tokens };
    }

    /// Returns blocks from [`KvManager::alloc_fresh`] when the replacement is abandoned.
    pub fn free_blocks(&mut self, blocks: &[u32]) {
        self.release(blocks);
    }

    /// (used tokens, shared tokens): distinct cached positions, counting a shared block's
    /// positions once; shared = positions in blocks that several sequences hold.
    pub fn usage(&self) -> (u64, u64) {
        let mut fill = vec![0u8; self.refcount.len()];
        for s in &self.seqs {
            let len = s.tokens.len();
            for (i, &b) in s.blocks.iter().enumerate() {
                let f = (len - i * KV_BLOCK).min(KV_BLOCK) as u8;
                fill[b as usize] = fill[b as usize].max(f);
            }
        }
        let mut used = 0u64;
        let mut shared = 0u64;
        for (b, &f) in fill.iter().enumerate() {
            used += f as u64;
            if self.refcount[b] > 1 {
                shared += f as u64;
            }
        }
        (used, shared)
    }

    /// Blocks referenced by at least one sequence.
    pub fn used_blocks(&self) -> usize {
        self.refcount.iter().filter(|&&r| r > 0).count()
    }

    /// Checks the invariants (refcounts equal table references, free list = unreferenced).
    pub fn check_invariants(&self) -> Result<()> {
        let mut rc = vec![0u32; self.refcount.len()];
        for s in &self.seqs {
            if s.blocks.len() != s.tokens.len().div_ceil(KV_BLOCK) {
                return Err(Error::internal("a sequence's block table does not match its length"));
            }
            for &b in &s.blocks {
                rc[b as usize] += 1;
            }
        }
        if rc != self.refcount {
            return Err(Error::internal("KV block reference counts are inconsistent"));
        }
        let n_free_expected = rc.iter().filter(|&&r| r == 0).count();
        if n_free_expected != self.free.len() || self.free.iter().any(|&b| rc[b as usize] != 0) {
            return Err(Error::internal("KV free list is inconsistent"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fork_cow_truncate_and_rollback() {
        let mut m = KvManager::new(8, 3, 200);
        let mut copies = Vec::new();
        m.append(0, &[1; 20], &mut copies).unwrap();
        assert_eq!(m.used_blocks(), 2);
        m.fork(0, 1);
        assert_eq!(m.used_blocks(), 2);
        assert_eq!(m.usage(), (20, 20));
        // Appending to the fork copies the shared partly-filled block once.
        m.append(1, &[2; 3], &mut copies).unwrap();
        assert_eq!(copies, vec![BlockCopy { src: m.seq(0).blocks[1], dst: m.seq(1).blocks[1], n: 4 }]);
        assert_eq!(m.usage(), (27, 16));
        // Rollback puts things back exactly.
        let snap = m.snapshot([0]);
        m.append(0, &[3; 40], &mut copies).unwrap();
        m.rollback(snap);
        assert_eq!(m.len(0), 20);
        m.check_invariants().unwrap();
        // Context full: more than the free blocks.
        let snap = m.snapshot([2]);
        let e = m.append(2, &[1; 100], &mut copies).unwrap_err();
        assert_eq!(e.kind, ErrorKind::ContextFull);
        m.rollback(snap);
        m.check_invariants().unwrap();
        m.truncate(1, 5);
        m.clear(0);
        m.clear(1);
        assert_eq!(m.used_blocks(), 0);
        m.check_invariants().unwrap();
    }
}
