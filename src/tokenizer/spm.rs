//! SentencePiece BPE (`tokenizer.ggml.model = "llama"`) as llama.cpp runs it on one fragment of
//! text whose spaces are already `▁`.
//!
//! This one is not the `tokenizers` crate's BPE: llama.cpp starts from UTF-8 characters (cut by
//! the lead byte's length, so invalid bytes stay raw and may swallow following bytes), merges any
//! adjacent pair whose concatenation is a vocabulary entry — highest score first, the leftmost
//! pair on equal scores — even from characters that are not tokens themselves, and sends what
//! is left over that is not a token to the byte tokens. A merge table ordered by rank cannot
//! express the equal-score rule, so the algorithm is written out here.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use super::cache::WordCache;
use super::vocab::Vocab;
use super::Token;
use crate::error::Result;

struct Sym {
    start: usize,
    len: usize,
    prev: isize,
    next: isize,
}

struct Bigram {
    left: usize,
    right: usize,
    score: f32,
    size: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Bigram {
    /// Max-heap order: higher score first, then the leftmost pair.
    fn cmp(&self, o: &Self) -> Ordering {
        self.score.partial_cmp(&o.score).unwrap_or(Ordering::Equal).then_with(|| o.left.cmp(&self.left))
    }
}

fn utf8_len(lead: u8) -> usize {
    match lead >> 4 {
        0xC | 0xD => 2,
        0xE => 3,
        0xF => 4,
        _ => 1,
    }
}

const SPACE: &[u8] = "\u{2581}".as_bytes();

/// Whether the text may be cut before every `▁` that follows another character without
/// changing the result: true when no vocabulary entry has a `▁` after anything but leading `▁`s,
/// so no merge can reach across such a cut. (llama.cpp runs one queue over the whole fragment;
/// the cut pieces' merges are independent, so their order between pieces does not matter.)
pub(crate) fn can_cut_at_spaces(vocab: &Vocab) -> bool {
    vocab.texts().iter().all(|t| {
        let lead = t.chunks(3).take_while(|c| *c == SPACE).count() * 3;
        memchr::memmem::find(&t[lead..], SPACE).is_none()
    })
}

pub(crate) fn tokenize(
    vocab: &Vocab,
    text: &[u8],
    cut_at_spaces: bool,
    cache: &WordCache,
    out: &mut Vec<Token>,
) -> Result<()> {
    if !cut_at_spaces {
        return tokenize_piece(vocab, text, out);
    }
    // Cut at character starts (as the whole text is cut into characters) before a `▁` that
    // follows a character that is not `▁`; the pieces are words, worth remembering.
    let piece = |p: &[u8], out: &mut Vec<Token>| -> Result<()> {
        if cache.get(p, out) {
            return Ok(());
        }
        let start = out.len();
        tokenize_piece(vocab, p, out)?;
        cache.insert(p, &out[start..]);
        Ok(())
    };
    let mut start = 0;
    let mut at = 0;
    let mut prev_space = true;
    while at < text.len() {
        let len = utf8_len(text[at]).min(text.len() - at);
        let is_space = &text[at..at + len] == SPACE;
        if is_space && !prev_space && at > start {
            piece(&text[start..at], out)?;
            start = at;
        }
        prev_space = is_space;
        at += len;
    }
    piece(&text[start..], out)
}

fn tokenize_piece(vocab: &Vocab, text: &[u8], out: &mut Vec<Token>) -> Result<()> {
    let mut syms: Vec<Sym> = Vec::with_capacity(text.len());
    let mut at = 0;
    while at < text.len() {
        let len = utf8_len(text[at]).min(text.len() - at);
        let i = syms.len() as isize;
        syms.push(Sym { start: at, len, prev: i - 1, next: if at + len == text.len() { -1 } else { i + 1 } });
        at += len;
    }
    let mut heap = BinaryHeap::with_capacity(syms.len());
    let try_add = |syms: &[Sym], heap: &mut BinaryHeap<Bigram>, left: isize, right: isize| {
        if left < 0 || right < 0 {
            return;
        }
        let (l, r) = (&syms[left as usize], &syms[right as usize]);
        let piece = &text[l.start..l.start + l.len + r.len];
        if let Some(id) = vocab.id_of(piece) {
            heap.push(Bigram { left: left as usize, right: right as usize, score: vocab.scores[id as usize], size: piece.len() });
        }
    };
    for i in 1..syms.len() {
        try_add(&syms, &mut heap, i as isize - 1, i as isize);
    }
    while let Some(b) = heap.pop() {
        let (ll, rl) = (syms[b.left].len, syms[b.right].len);
        if ll == 0 || rl == 0 || ll + rl != b.size {
            continue;
        }
        syms[b.left].len += rl;
        syms[b.right].len = 0;
        let rnext = syms[b.right].next;
        syms[b.left].next = rnext;
        if rnext >= 0 {
            syms[rnext as usize].prev = b.left as isize;
        }
        let lprev = syms[b.left].prev;
        try_add(&syms, &mut heap, lprev, b.left as isize);
        try_add(&syms, &mut heap, b.left as isize, rnext);
    }
    let mut i: isize = if syms.is_empty() { -1 } else { 0 };
    while i >= 0 {
        let s = &syms[i as usize];
        let piece = &text[s.start..s.start + s.len];
        match vocab.id_of(piece) {
            Some(id) => out.push(id),
            None => {
                for &b in piece {
                    out.push(vocab.byte_token(b)?);
                }
            }
        }
        i = s.next;
    }
    Ok(())
}
