//! Cutting special-token texts out of the input before the model sees it, as llama.cpp's
//! `tokenizer_st_partition` does: special tokens are taken longest first, each one cut out of
//! every text fragment left by the longer ones, left to right. Control and unknown tokens are
//! only cut when parse_special is set; user-defined tokens always are. A token marked
//! lstrip/rstrip also removes the whitespace (C `isspace`) before/after it.

use aho_corasick::AhoCorasick;
use memchr::memmem;

use super::vocab::{Vocab, ATTR_CONTROL, ATTR_LSTRIP, ATTR_RSTRIP, ATTR_UNKNOWN};
use super::Token;
use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fragment {
    Text(usize, usize),
    Token(Token),
}

pub(crate) struct Partitioner {
    /// Finds every special text in one pass; pattern i is `vocab.specials[i]`.
    finder: Option<AhoCorasick>,
}

fn c_isspace(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0B | 0x0C | b'\r')
}

impl Partitioner {
    pub fn new(vocab: &Vocab) -> Result<Partitioner> {
        if vocab.specials.is_empty() {
            return Ok(Partitioner { finder: None });
        }
        let pats: Vec<&[u8]> = vocab.specials.iter().map(|&id| vocab.text(id)).collect();
        let finder = AhoCorasick::new(pats)
            .map_err(|e| Error::internal(format!("special-token matcher: {e}")))?;
        Ok(Partitioner { finder: Some(finder) })
    }

    pub fn split(&self, vocab: &Vocab, text: &[u8], parse_special: bool) -> Vec<Fragment> {
        let mut frags = Vec::new();
        if text.is_empty() {
            return frags;
        }
        frags.push(Fragment::Text(0, text.len()));
        let Some(finder) = &self.finder else { return frags };
        // Which special texts occur at all (a shorter one can only lose occurrences to longer
        // ones, never gain any), so the ordered cutting below visits only those.
        let mut present = vec![false; vocab.specials.len()];
        let mut any = false;
        for m in finder.find_overlapping_iter(text) {
            present[m.pattern().as_usize()] = true;
            any = true;
        }
        if !any {
            return frags;
        }
        let mut next = Vec::new();
        for (k, &id) in vocab.specials.iter().enumerate() {
            if !present[k] {
                continue;
            }
            let attr = vocab.attr(id);
            if !parse_special && attr & (ATTR_CONTROL | ATTR_UNKNOWN) != 0 {
                continue;
            }
            let pat = vocab.text(id);
            let finder = memmem::Finder::new(pat);
            next.clear();
            for &f in &frags {
                let Fragment::Text(mut a, b) = f else {
                    next.push(f);
                    continue;
                };
                loop {
                    let Some(p) = finder.find(&text[a..b]) else {
                        if a < b {
                            next.push(Fragment::Text(a, b));
                        }
                        break;
                    };
                    let m = a + p;
                    let mut left_end = m;
                    if attr & ATTR_LSTRIP != 0 {
                        while left_end > a && c_isspace(text[left_end - 1]) {
                            left_end -= 1;
                        }
                    }
                    if left_end > a {
                        next.push(Fragment::Text(a, left_end));
                    }
                    next.push(Fragment::Token(id));
                    a = m + pat.len();
                    if attr & ATTR_RSTRIP != 0 {
                        while a < b && c_isspace(text[a]) {
                            a += 1;
                        }
                    }
                    if a >= b {
                        break;
                    }
                }
            }
            std::mem::swap(&mut frags, &mut next);
        }
        frags
    }
}
