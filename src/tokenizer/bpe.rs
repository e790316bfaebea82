//! Byte-level BPE (`tokenizer.ggml.model = "gpt2"`): llama.cpp's pipeline around the `tokenizers`
//! crate's BPE model. The glue here matches llama.cpp where it differs from a plain
//! `tokenizers` pipeline:
//! - invalid UTF-8 is decoded by llama.cpp's rules (each byte that does not start a well-formed
//!   sequence becomes U+FFFD; overlong forms and surrogates are accepted as decoded);
//! - the pre-tokenizer regexes run one after the other, each on every piece the previous left,
//!   with both matches and the gaps between them kept as pieces;
//! - a pre-token that is a vocabulary entry is emitted whole when the pre-type ignores merges;
//! - merge ranks are the first occurrence of a pair in `tokenizer.ggml.merges`, and a merged
//!   symbol that is not a vocabulary entry falls back to the tokens of its single bytes.

use std::collections::HashMap;

use fancy_regex::Regex;
use tokenizers::models::bpe::{Vocab as BpeVocab, BPE};
use tokenizers::Model;

use super::cache::WordCache;
use super::pre::PreSpec;
use super::split::Custom;
use super::vocab::{FxMap, Vocab};
use super::Token;
use crate::error::{Error, Result};

/// GPT-2's printable stand-ins for the 256 byte values.
pub(crate) fn byte_chars() -> [char; 256] {
    let mut map = ['\0'; 256];
    let mut n = 0u32;
    for b in 0..256u32 {
        let printable = (0x21..=0x7E).contains(&b) || (0xA1..=0xAC).contains(&b) || (0xAE..=0xFF).contains(&b);
        map[b as usize] = if printable {
            char::from_u32(b).unwrap()
        } else {
            n += 1;
            char::from_u32(255 + n).unwrap()
        };
    }
    map
}

enum Splitter {
    Custom(Custom),
    Regex(Regex),
}

pub(crate) struct ByteLevelBpe {
    regexes: Vec<Splitter>,
    ignore_merges: bool,
    model: BPE,
    n_vocab: u32,
    /// Strings the merges or the byte alphabet need that are not vocabulary entries; the BPE
    /// model knows them by the ids `n_vocab + index`.
    synthetic: Vec<String>,
    byte_char: [char; 256],
    /// Ids of seen pre-tokens by their raw bytes (skips the byte mapping and the BPE model's
    /// own cache, which allocates a string per token).
    cache: WordCache,
}

impl ByteLevelBpe {
    pub fn new(vocab: &Vocab, merges: &[Vec<u8>], spec: &PreSpec, pre_name: &str) -> Result<ByteLevelBpe> {
        let mut regexes = Vec::with_capacity(spec.regexes.len());
        for r in spec.regexes {
            regexes.push(match Custom::for_regex(r) {
                Some(c) => Splitter::Custom(c),
                None => Splitter::Regex(Regex::new(r).map_err(|e| {
                    Error::internal(format!("pre-tokenizer '{pre_name}': regex {r:?} does not compile: {e}"))
                })?),
            });
        }
        let n_vocab = vocab.n_vocab() as u32;
        let mut map = BpeVocab::default();
        for (id, text) in vocab.texts().iter().enumerate() {
            if let Ok(s) = std::str::from_utf8(text) {
                map.insert(s.to_string(), id as u32);
            }
        }
        let mut synthetic = Vec::new();
        let mut intern = |map: &mut BpeVocab, s: &str| {
            if !map.contains_key(s) {
                map.insert(s.to_string(), n_vocab + synthetic.len() as u32);
                synthetic.push(s.to_string());
            }
        };
        let byte_char = byte_chars();
        for c in byte_char {
            intern(&mut map, c.encode_utf8(&mut [0; 4]));
        }
        // llama.cpp splits each merge at its first space after the first byte and keeps the
        // rank of a pair's first occurrence.
        let mut seen: FxMap<(&str, &str), ()> = FxMap::default();
        seen.reserve(merges.len());
        let mut pairs = Vec::with_capacity(merges.len());
        for m in merges {
            let Ok(m) = std::str::from_utf8(m) else { continue };
            let Some(pos) = m.as_bytes().iter().skip(1).position(|&c| c == b' ').map(|p| p + 1) else { continue };
            let (a, b) = (&m[..pos], &m[pos + 1..]);
            if a.is_empty() || b.is_empty() || seen.insert((a, b), ()).is_some() {
                continue;
            }
            pairs.push((a, b));
        }
        let mut ab = String::new();
        for &(a, b) in &pairs {
            intern(&mut map, a);
            intern(&mut map, b);
            ab.clear();
            ab.push_str(a);
            ab.push_str(b);
            intern(&mut map, &ab);
        }
        let merges: Vec<(String, String)> =
            pairs.into_iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
        let model = BPE::builder()
            .cache_capacity(0)
            .vocab_and_merges(map, merges)
            .build()
            .map_err(|e| Error::format(format!("tokenizer.ggml.merges: {e}")))?;
        Ok(ByteLevelBpe {
            regexes,
            ignore_merges: spec.ignore_merges,
            model,
            n_vocab,
            synthetic,
            byte_char,
            cache: WordCache::default(),
        })
    }

    /// Tokenizes one fragment of raw text (no special tokens in it).
    pub fn tokenize(&self, vocab: &Vocab, text: &[u8], out: &mut Vec<Token>) -> Result<()> {
        let decoded = decode_lossy(text)?;
        let (split_on, bytes): (&str, &[u8]) = match &decoded {
            Decoded::Valid(s) => (s, s.as_bytes()),
            Decoded::Repaired { text, bytes } => (text, bytes),
        };
        let pieces = self.split(split_on)?;
        let mut word = String::new();
        for (a, b) in pieces {
            let raw = &bytes[a..b];
            if self.cache.get(raw, out) {
                continue;
            }
            let start = out.len();
            word.clear();
            for &byte in raw {
                word.push(self.byte_char[byte as usize]);
            }
            self.encode_word(vocab, &word, out)?;
            self.cache.insert(raw, &out[start..]);
        }
        Ok(())
    }

    /// One pre-token (in the byte alphabet) to ids.
    fn encode_word(&self, vocab: &Vocab, word: &str, out: &mut Vec<Token>) -> Result<()> {
        if self.ignore_merges {
            if let Some(id) = vocab.id_of(word.as_bytes()) {
                out.push(id);
                return Ok(());
            }
        }
        let toks = self
            .model
            .tokenize(word)
            .map_err(|e| Error::internal(format!("BPE failed on pre-token {word:?}: {e}")))?;
        for t in toks {
            if t.id < self.n_vocab {
                out.push(t.id as Token);
            } else {
                // A symbol that is not a token: llama.cpp looks up each of its bytes alone.
                let s = &self.synthetic[(t.id - self.n_vocab) as usize];
                for &byte in s.as_bytes() {
                    if let Some(id) = vocab.id_of(&[byte]) {
                        out.push(id);
                    }
                }
            }
        }
        Ok(())
    }

    /// Byte ranges of the pre-tokens of `s`.
    fn split(&self, s: &str) -> Result<Vec<(usize, usize)>> {
        let mut pieces = vec![(0, s.len())];
        let mut next = Vec::new();
        for re in &self.regexes {
            next.clear();
            let re = match re {
                Splitter::Custom(c) => {
                    for &(a, b) in &pieces {
                        c.split(s, a, b, &mut next);
                    }
                    std::mem::swap(&mut pieces, &mut next);
                    continue;
                }
                Splitter::Regex(re) => re,
            };
            for &(a, b) in &pieces {
                let mut at = a;
                for m in re.find_iter(&s[a..b]) {
                    let m = m.map_err(|e| {
                        Error::invalid_arg(format!("pre-tokenizer regex failed on the text near byte {at}: {e}"))
                    })?;
                    let (ms, me) = (a + m.start(), a + m.end());
                    if ms > at {
                        next.push((at, ms));
                    }
                    if me > ms {
                        next.push((ms, me));
                    }
                    at = me;
                }
                if at < b {
                    next.push((at, b));
                }
            }
            std::mem::swap(&mut pieces, &mut next);
        }
        Ok(pieces)
    }
}

pub(crate) enum Decoded<'a> {
    Valid(&'a str),
    /// `text` is what the regexes see; `bytes` (same length, same char boundaries) is what the
    /// BPE encodes: they differ only where a surrogate stands in `bytes`.
    Repaired { text: String, bytes: Vec<u8> },
}

/// llama.cpp's UTF-8 decoding (`unicode_cpts_from_utf8`) re-encoded: a byte that does not start a
/// complete sequence becomes U+FFFD and decoding goes on at the next byte; a sequence's
/// continuation bytes are checked but not its value, so overlong forms decode to their value and
/// surrogates are kept. A value above U+10FFFF cannot be re-encoded (llama.cpp fails there too).
pub(crate) fn decode_lossy(text: &[u8]) -> Result<Decoded<'_>> {
    if let Ok(s) = std::str::from_utf8(text) {
        return Ok(Decoded::Valid(s));
    }
    let cont = |i: usize| i < text.len() && text[i] & 0xC0 == 0x80;
    let mut out = String::with_capacity(text.len() + 8);
    let mut bytes = Vec::with_capacity(text.len() + 8);
    let mut i = 0;
    while i < text.len() {
        let b0 = text[i] as u32;
        let (cp, n) = if b0 < 0x80 {
            (Some(b0), 1)
        } else if b0 & 0x40 == 0 {
            (None, 1)
        } else if b0 & 0x20 == 0 {
            if cont(i + 1) {
                (Some(((b0 & 0x1F) << 6) | (text[i + 1] as u32 & 0x3F)), 2)
            } else {
                (None, 1)
            }
        } else if b0 & 0x10 == 0 {
            if cont(i + 1) && cont(i + 2) {
                let v = ((b0 & 0x0F) << 12) | ((text[i + 1] as u32 & 0x3F) << 6) | (text[i + 2] as u32 & 0x3F);
                (Some(v), 3)
            } else {
                (None, 1)
            }
        } else if b0 & 0x08 == 0 {
            if cont(i + 1) && cont(i + 2) && cont(i + 3) {
                let v = ((b0 & 0x07) << 18)
                    | ((text[i + 1] as u32 & 0x3F) << 12)
                    | ((text[i + 2] as u32 & 0x3F) << 6)
                    | (text[i + 3] as u32 & 0x3F);
                (Some(v), 4)
            } else {
                (None, 1)
            }
        } else {
            (None, 1)
        };
        match cp {
            None => {
                out.push('\u{FFFD}');
                bytes.extend_from_slice("\u{FFFD}".as_bytes());
            }
            Some(v) if (0xD800..=0xDFFF).contains(&v) => {
                // A private-use stand-in of the same length and class for the regexes.
                out.push('\u{E000}');
                bytes.extend_from_slice(&[0xED, 0x80 | ((v >> 6) & 0x3F) as u8, 0x80 | (v & 0x3F) as u8]);
            }
            Some(v) => match char::from_u32(v) {
                Some(c) => {
                    out.push(c);
                    bytes.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
                }
                None => {
                    return Err(Error::invalid_arg(format!(
                        "text byte {i}: the sequence decodes to U+{v:X}, beyond Unicode; llama.cpp cannot tokenize it either"
                    )))
                }
            },
        }
        i += n;
    }
    Ok(Decoded::Repaired { text: out, bytes })
}

/// llama.cpp's `llama_decode_text`: a byte-level token's text back to bytes. A character outside
/// the byte alphabet is written as `[UNK_BYTE_0x<hex of its UTF-8>` + the whole text + `]`.
/// A text that decodes beyond Unicode is an error (llama.cpp fails to load such a vocabulary).
pub(crate) fn decode_token_text(text: &[u8], byte_of: &HashMap<char, u8>) -> Result<Vec<u8>> {
    let decoded = match decode_lossy(text)? {
        Decoded::Valid(s) => s.chars().map(|c| (c, None)).collect::<Vec<_>>(),
        Decoded::Repaired { text: t, bytes } => {
            // Walk both: a stand-in char maps to its surrogate bytes.
            let mut v = Vec::new();
            let mut at = 0;
            for c in t.chars() {
                let n = c.len_utf8();
                let orig = bytes[at..at + n].to_vec();
                at += n;
                v.push((c, if c == '\u{E000}' { Some(orig) } else { None }));
            }
            v
        }
    };
    let mut out = Vec::with_capacity(text.len());
    for (c, orig) in decoded {
        match (orig, byte_of.get(&c)) {
            (None, Some(&b)) => out.push(b),
            (orig, _) => {
                let utf8 = orig.unwrap_or_else(|| c.encode_utf8(&mut [0; 4]).as_bytes().to_vec());
                out.extend_from_slice(b"[UNK_BYTE_0x");
                for b in utf8 {
                    out.extend_from_slice(format!("{b:02x}").as_bytes());
                }
                out.extend_from_slice(text);
                out.push(b']');
            }
        }
    }
    Ok(out)
}
