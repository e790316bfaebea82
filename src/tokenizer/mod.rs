//! Tokenizer built from a GGUF's `tokenizer.ggml.*` metadata, token-for-token identical to
//! llama.cpp; chat templates.
//!
//! Supported: `tokenizer.ggml.model = "llama"` (SentencePiece BPE by scores with `<0xXX>` byte
//! fallback and the space prefix) and `"gpt2"` (byte-level BPE) with the `tokenizer.ggml.pre`
//! values in [`SUPPORTED_PRE`]. Anything else is refused at load (`Unsupported`, naming it).
//!
//! Invalid UTF-8 input is handled as llama.cpp handles it: byte-level BPE vocabularies see each
//! byte that does not start a well-formed sequence as U+FFFD (so it tokenizes as the replacement
//! character), while SentencePiece vocabularies keep the raw bytes and emit them as byte tokens.

mod bpe;
mod cache;
mod chat;
mod partition;
mod pre;
mod split;
mod spm;
mod vocab;

use crate::error::{Error, ErrorKind, Result};
use crate::gguf::Gguf;

use bpe::ByteLevelBpe;
use partition::{Fragment, Partitioner};
pub use pre::SUPPORTED_PRE;
use vocab::{Defaults, Kind, Vocab};
use vocab::{ATTR_BYTE, ATTR_CONTROL, ATTR_NORMAL, ATTR_UNKNOWN, ATTR_USER_DEFINED};

/// A token id, as in the C ABI (`xdan_token`).
pub type Token = i32;

enum Model {
    Spm { cut_at_spaces: bool, cache: cache::WordCache },
    Bpe(Box<ByteLevelBpe>),
}

pub struct Tokenizer {
    vocab: Vocab,
    model: Model,
    partition: Partitioner,
    /// `llama_token_to_piece(id, special = true)` of every token.
    pieces: Vec<Vec<u8>>,
    chat_template: Option<String>,
    model_name: String,
    pre_name: Option<String>,
}

// A model and its tokenizer are shared between threads.
const _: fn() = || {
    fn shared<T: Send + Sync>() {}
    shared::<Tokenizer>();
};

/// One chat message for [`Tokenizer::apply_chat_template`].
pub struct ChatMessage<'a> {
    pub role: &'a str,
    pub content: &'a str,
}

const SPACE_ESCAPE: &str = "\u{2581}";

impl Tokenizer {
    /// Builds the tokenizer the GGUF's metadata describes; an unknown `tokenizer.ggml.model` or
    /// `tokenizer.ggml.pre` is `Unsupported`, naming it.
    pub fn from_gguf(g: &Gguf) -> Result<Tokenizer> {
        let model_name = g
            .get_str("tokenizer.ggml.model")
            .map_err(|e| e.context("tokenizer"))?
            .to_string();
        let pre_name = match g.get("tokenizer.ggml.pre") {
            None => None,
            Some(_) => Some(g.get_str("tokenizer.ggml.pre")?.to_string()),
        };
        let (vocab, model) = match model_name.as_str() {
            "llama" => {
                let d = Defaults {
                    bos: Some(1),
                    eos: Some(2),
                    add_bos: true,
                    add_eos: false,
                    add_space_prefix: true,
                    clean_spaces: false,
                };
                (Vocab::load(g, Kind::Spm, d)?, None)
            }
            "gpt2" => {
                // llama.cpp goes on with "default" (and a warning) when the key is missing.
                let pre = pre_name.as_deref().unwrap_or("default");
                let spec = pre::pre_spec(pre).ok_or_else(|| {
                    Error::unsupported(format!(
                        "tokenizer.ggml.pre '{pre}' is not supported (tokenizer.ggml.model 'gpt2'); supported: {}",
                        SUPPORTED_PRE.join(", ")
                    ))
                })?;
                let d = Defaults {
                    bos: if spec.no_default_bos { None } else { Some(11) },
                    eos: Some(11),
                    add_bos: spec.add_bos,
                    add_eos: false,
                    add_space_prefix: false,
                    clean_spaces: spec.clean_spaces,
                };
                let vocab = Vocab::load(g, Kind::Bpe, d)?;
                let merges = g.get_str_array("tokenizer.ggml.merges").map_err(|e| e.context("tokenizer"))?;
                let bpe = ByteLevelBpe::new(&vocab, merges, &spec, pre)?;
                (vocab, Some(bpe))
            }
            other => {
                return Err(Error::unsupported(format!(
                    "tokenizer.ggml.model '{other}' is not supported (supported: 'llama', 'gpt2')"
                )))
            }
        };
        let model = match model {
            None => Model::Spm { cut_at_spaces: spm::can_cut_at_spaces(&vocab), cache: Default::default() },
            Some(b) => Model::Bpe(Box::new(b)),
        };
        let pieces = build_pieces(&vocab)?;
        let partition = Partitioner::new(&vocab)?;
        let chat_template = match g.get("tokenizer.chat_template") {
            None => None,
            Some(_) => Some(g.get_str("tokenizer.chat_template")?.to_string()),
        };
        Ok(Tokenizer { vocab, model, partition, pieces, chat_template, model_name, pre_name })
    }

    pub fn n_vocab(&self) -> usize {
        self.vocab.n_vocab()
    }
    pub fn bos(&self) -> Option<Token> {
        self.vocab.bos
    }
    pub fn eos(&self) -> Option<Token> {
        self.vocab.eos
    }
    /// End of turn (metadata, else found by text as llama.cpp does).
    pub fn eot(&self) -> Option<Token> {
        self.vocab.eot
    }
    /// Whether `tokenize(.., add_special = true, ..)` starts with BOS / ends with EOS.
    pub fn add_bos(&self) -> bool {
        self.vocab.add_bos
    }
    pub fn add_eos(&self) -> bool {
        self.vocab.add_eos
    }
    /// `tokenizer.ggml.model`.
    pub fn model_name(&self) -> &str {
        &self.model_name
    }
    /// `tokenizer.ggml.pre`, if the GGUF has it.
    pub fn pre_name(&self) -> Option<&str> {
        self.pre_name.as_deref()
    }
    /// The token's text as stored in the vocabulary.
    pub fn token_text(&self, id: Token) -> Result<&[u8]> {
        self.check(id)?;
        Ok(self.vocab.text(id))
    }
    /// The end-of-generation set (EOS, EOT, EOM, FIM pad/repo/sep and the texts llama.cpp
    /// treats as ends), in id order.
    pub fn eog_ids(&self) -> Vec<Token> {
        self.vocab.eog.iter().copied().collect()
    }

    fn check(&self, id: Token) -> Result<()> {
        if id < 0 || id as usize >= self.vocab.n_vocab() {
            return Err(Error::invalid_arg(format!(
                "token id {id} is outside the vocabulary (0..{})",
                self.vocab.n_vocab()
            )));
        }
        Ok(())
    }

    /// `add_special`: BOS/EOS as the metadata says; `parse_special`: special-token text in
    /// `text` becomes those tokens.
    pub fn tokenize(&self, text: &[u8], add_special: bool, parse_special: bool) -> Result<Vec<Token>> {
        let v = &self.vocab;
        let frags = self.partition.split(v, text, parse_special);
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if add_special && v.add_bos {
            out.push(v.bos.expect("checked at load"));
        }
        match &self.model {
            Model::Spm { cut_at_spaces, cache } => {
                // A raw fragment at the start or right after a special token gets the space
                // prefix (llama.cpp's is_prev_special rule).
                let mut prev_special = true;
                let mut buf = Vec::new();
                for f in frags {
                    match f {
                        Fragment::Text(a, b) => {
                            buf.clear();
                            if v.add_space_prefix && prev_special {
                                buf.extend_from_slice(SPACE_ESCAPE.as_bytes());
                            }
                            for &c in &text[a..b] {
                                if c == b' ' {
                                    buf.extend_from_slice(SPACE_ESCAPE.as_bytes());
                                } else {
                                    buf.push(c);
                                }
                            }
                            spm::tokenize(v, &buf, *cut_at_spaces, cache, &mut out)?;
                            prev_special = false;
                        }
                        Fragment::Token(id) => {
                            out.push(id);
                            prev_special = true;
                        }
                    }
                }
            }
            Model::Bpe(bpe) => {
                for f in frags {
                    match f {
                        Fragment::Text(a, b) => bpe.tokenize(v, &text[a..b], &mut out)?,
                        Fragment::Token(id) => out.push(id),
                    }
                }
            }
        }
        if add_special && v.add_eos {
            out.push(v.eos.expect("checked at load"));
        }
        Ok(out)
    }

    /// llama_detokenize(remove_special, unparse_special).
    pub fn detokenize(&self, ids: &[Token], remove_special: bool, unparse_special: bool) -> Result<Vec<u8>> {
        for &id in ids {
            self.check(id)?;
        }
        let v = &self.vocab;
        let mut ids = ids;
        // The first piece loses one leading space when the vocabulary adds a space prefix,
        // except after a BOS that remove_special drops.
        let mut lstrip = v.add_space_prefix;
        if remove_special && v.add_bos && !ids.is_empty() && Some(ids[0]) == v.bos {
            lstrip = false;
            ids = &ids[1..];
        }
        if remove_special && v.add_eos && !ids.is_empty() && Some(ids[ids.len() - 1]) == v.eos {
            ids = &ids[..ids.len() - 1];
        }
        let mut out = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            let piece = self.piece(id, unparse_special);
            let piece = if lstrip && piece.first() == Some(&b' ') { &piece[1..] } else { piece };
            lstrip = false;
            out.extend_from_slice(piece);
        }
        if v.clean_spaces {
            clean_spaces(&mut out);
        }
        Ok(out)
    }

    /// llama_token_to_piece(special).
    pub fn token_to_piece(&self, id: Token, special: bool) -> Result<Vec<u8>> {
        self.check(id)?;
        Ok(self.piece(id, special).to_vec())
    }

    fn piece(&self, id: Token, special: bool) -> &[u8] {
        if !special && self.vocab.attr(id) & (ATTR_UNKNOWN | ATTR_CONTROL) != 0 {
            return &[];
        }
        &self.pieces[id as usize]
    }

    pub fn is_eog(&self, id: Token) -> bool {
        self.vocab.eog.contains(&id)
    }

    /// `tokenizer.chat_template`, if the GGUF has one.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// Renders the GGUF's chat template (Jinja, as Hugging Face renders it) for `msgs`.
    pub fn apply_chat_template(&self, msgs: &[ChatMessage], add_generation_prompt: bool) -> Result<String> {
        let tmpl = self.chat_template.as_deref().ok_or_else(|| {
            Error::new(ErrorKind::Unsupported, "the model has no tokenizer.chat_template")
        })?;
        let text = |id: Option<Token>| {
            id.map(|i| String::from_utf8_lossy(self.vocab.text(i)).into_owned()).unwrap_or_default()
        };
        chat::render(tmpl, msgs, add_generation_prompt, &text(self.vocab.bos), &text(self.vocab.eos))
    }
}

/// Every token's piece with special = true, as llama.cpp caches it at load.
fn build_pieces(v: &Vocab) -> Result<Vec<Vec<u8>>> {
    let byte_of: std::collections::HashMap<char, u8> =
        bpe::byte_chars().iter().enumerate().map(|(b, &c)| (c, b as u8)).collect();
    let mut pieces = Vec::with_capacity(v.n_vocab());
    for id in 0..v.n_vocab() as Token {
        let attr = v.attr(id);
        let text = v.text(id);
        let piece = if attr & (ATTR_UNKNOWN | ATTR_CONTROL | ATTR_USER_DEFINED) != 0 {
            text.to_vec()
        } else if attr & ATTR_NORMAL != 0 {
            match v.kind {
                Kind::Spm => unescape_spaces(text),
                Kind::Bpe => bpe::decode_token_text(text, &byte_of)
                    .map_err(|e| e.context(format!("tokenizer.ggml.tokens[{id}]")))?,
            }
        } else if attr & ATTR_BYTE != 0 {
            vec![v.token_byte(id)]
        } else {
            // Unused and undefined tokens render as nothing.
            Vec::new()
        };
        pieces.push(piece);
    }
    Ok(pieces)
}

fn unescape_spaces(text: &[u8]) -> Vec<u8> {
    let esc = SPACE_ESCAPE.as_bytes();
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        if text[i..].starts_with(esc) {
            out.push(b' ');
            i += esc.len();
        } else {
            out.push(text[i]);
            i += 1;
        }
    }
    out
}

/// llama_detokenize's clean_up_tokenization_spaces, three in-place passes over the bytes:
/// drop the space before `?!.,`; drop the spaces around a lone `'`; drop the space before the
/// contractions `'s 'm 're 've` (not `'t 'd 'll`).
fn clean_spaces(t: &mut Vec<u8>) {
    // Pass 1.
    let n = t.len();
    let mut w = usize::from(n > 0);
    for i in 1..n {
        let x = t[i];
        if t[i - 1] == b' ' && matches!(x, b'?' | b'!' | b'.' | b',') {
            w -= 1;
        }
        t[w] = x;
        w += 1;
    }
    t.truncate(w);
    // Pass 2: the byte after a lone apostrophe is zeroed in place and skipped.
    let n = t.len();
    let mut w = usize::from(n > 0);
    let mut i = 1;
    while i < n {
        let x = t[i];
        if x == b'\'' && i + 1 < n && t[i - 1] == b' ' && t[i + 1] == b' ' {
            w -= 1;
            i += 1;
            t[i] = 0;
        }
        t[w] = x;
        w += 1;
        i += 1;
    }
    t.truncate(w);
    // Pass 3.
    let n = t.len();
    let mut w = usize::from(n > 0);
    for i in 1..n {
        let x = t[i];
        if t[i - 1] == b' ' && x == b'\'' && i + 1 < n {
            let x1 = t[i + 1];
            if x1 == b's' || x1 == b'm' {
                w -= 1;
            } else if x1 != b't' && x1 != b'd' && i + 2 < n {
                let x2 = t[i + 2];
                if (x1 == b'r' || x1 == b'v') && x2 == b'e' {
                    w -= 1;
                }
            }
        }
        t[w] = x;
        w += 1;
    }
    t.truncate(w);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cutting SentencePiece input before spaces gives what one queue over the whole text gives.
    #[test]
    fn spm_cut_at_spaces_changes_nothing() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/tokenizer/vocabs/ggml-vocab-llama-spm.gguf");
        let tok = Tokenizer::from_gguf(&Gguf::open(path, true).unwrap()).unwrap();
        let Model::Spm { cut_at_spaces: true, cache } = &tok.model else { panic!("not cut at spaces") };
        let mut text = Vec::new();
        let parts: [&[u8]; 9] = [
            b"Hello   world,  it's ", "我们今天去公园散步 ".as_bytes(), b"\xff\xfe\xe2\x96 x", b"  \t\n  ",
            b"fn main() { let v = 0x7f; }", " \u{2581}\u{2581}a\u{2581} ".as_bytes(), b"\xf0 a", "é ".as_bytes(), b"1234 5678",
        ];
        let mut seed = 12345u64;
        for _ in 0..3000 {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            text.extend_from_slice(parts[(seed >> 33) as usize % parts.len()]);
        }
        let esc: Vec<u8> = text
            .iter()
            .flat_map(|&c| if c == b' ' { SPACE_ESCAPE.as_bytes().to_vec() } else { vec![c] })
            .collect();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        spm::tokenize(&tok.vocab, &esc, true, cache, &mut a).unwrap();
        spm::tokenize(&tok.vocab, &esc, false, cache, &mut b).unwrap();
        // Again, now from the memo.
        let mut c = Vec::new();
        spm::tokenize(&tok.vocab, &esc, true, cache, &mut c).unwrap();
        assert_eq!(a, c);
        assert!(a.len() > 10_000);
        assert_eq!(a, b);
    }
}
