//! The vocabulary as llama.cpp loads it from `tokenizer.ggml.*`: token texts, scores, attributes
//! (from `token_type`, then llama.cpp's by-text corrections), special ids, the end-of-generation
//! set and the flags that steer tokenization and detokenization.

use std::collections::{BTreeSet, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

use super::Token;
use crate::error::{Error, Result};
use crate::gguf::Gguf;

pub(crate) const ATTR_UNKNOWN: u32 = 1 << 0;
pub(crate) const ATTR_UNUSED: u32 = 1 << 1;
pub(crate) const ATTR_NORMAL: u32 = 1 << 2;
pub(crate) const ATTR_CONTROL: u32 = 1 << 3;
pub(crate) const ATTR_USER_DEFINED: u32 = 1 << 4;
pub(crate) const ATTR_BYTE: u32 = 1 << 5;
pub(crate) const ATTR_LSTRIP: u32 = 1 << 7;
pub(crate) const ATTR_RSTRIP: u32 = 1 << 8;

/// A fast hash for byte-string keys (token lookups dominate tokenization time).
#[derive(Default, Clone, Copy)]
pub(crate) struct FxHasher(u64);

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        const K: u64 = 0x517c_c1b7_2722_0a95;
        let mut h = self.0;
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            h = (h.rotate_left(5) ^ u64::from_le_bytes(c.try_into().unwrap())).wrapping_mul(K);
        }
        for &b in chunks.remainder() {
            h = (h.rotate_left(5) ^ b as u64).wrapping_mul(K);
        }
        self.0 = h;
    }
    fn write_usize(&mut self, n: usize) {
        self.0 = (self.0.rotate_left(5) ^ n as u64).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

pub(crate) type FxMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `tokenizer.ggml.model = "llama"`: SentencePiece BPE by scores with byte fallback.
    Spm,
    /// `tokenizer.ggml.model = "gpt2"`: byte-level BPE by merge ranks.
    Bpe,
}

pub(crate) struct Vocab {
    pub kind: Kind,
    texts: Vec<Vec<u8>>,
    pub scores: Vec<f32>,
    pub attrs: Vec<u32>,
    ids: FxMap<Vec<u8>, Token>,
    pub bos: Option<Token>,
    pub eos: Option<Token>,
    pub eot: Option<Token>,
    pub eog: BTreeSet<Token>,
    /// Control, user-defined and unknown tokens, longest text first: the order in which
    /// llama.cpp cuts them out of the text.
    pub specials: Vec<Token>,
    pub add_bos: bool,
    pub add_eos: bool,
    pub add_space_prefix: bool,
    pub clean_spaces: bool,
}

/// Per-model defaults that `tokenizer.ggml.*` keys then override.
pub(crate) struct Defaults {
    pub bos: Option<Token>,
    pub eos: Option<Token>,
    pub add_bos: bool,
    pub add_eos: bool,
    pub add_space_prefix: bool,
    pub clean_spaces: bool,
}

const KEY_PREFIX: &str = "tokenizer.ggml.";

// Texts llama.cpp recognises when the metadata does not name the token (EOT, EOM, FIM).
const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>",
    "<EOT>", "_<EOT>", "[EOT]", "<\u{FF5C}end\u{2581}of\u{2581}sentence\u{FF5C}>", "<end_of_utterance>",
];
const EOM_TEXTS: &[&str] = &["<|eom_id|>"];
const FIM_PRE_TEXTS: &[&str] = &[
    "<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<\u{FF5C}fim\u{2581}begin\u{FF5C}>", "<PRE>",
    "\u{2581}<PRE>", "<|code_prefix|>", "<|prefix|>",
];
const FIM_SUF_TEXTS: &[&str] = &[
    "<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<\u{FF5C}fim\u{2581}hole\u{FF5C}>", "<SUF>",
    "\u{2581}<SUF>", "<|code_suffix|>", "<|suffix|>",
];
const FIM_MID_TEXTS: &[&str] = &[
    "<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<\u{FF5C}fim\u{2581}end\u{FF5C}>", "<MID>",
    "\u{2581}<MID>", "<|code_middle|>", "<|middle|>",
];
const FIM_PAD_TEXTS: &[&str] = &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"];
const FIM_REP_TEXTS: &[&str] = &["<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"];
const FIM_SEP_TEXTS: &[&str] = &["<|file_sep|>"];
// Texts that end generation whatever the metadata says.
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
    "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
    "<\u{FF5C}end\u{2581}of\u{2581}sentence\u{FF5C}>", "[e~[",
];

fn key(name: &str) -> String {
    format!("{KEY_PREFIX}{name}")
}

impl Vocab {
    pub fn load(g: &Gguf, kind: Kind, d: Defaults) -> Result<Vocab> {
        let texts_raw = g.get_str_array(&key("tokens"))?;
        let n = texts_raw.len();
        if n == 0 {
            return Err(Error::format("tokenizer.ggml.tokens is empty"));
        }
        if n > i32::MAX as usize {
            return Err(Error::format(format!("tokenizer.ggml.tokens has {n} entries, more than token ids can name")));
        }
        let scores: Vec<f32> = match g.get(&key("scores")) {
            None => vec![0.0; n],
            Some(_) => {
                let s: Vec<f32> = match g.get_f32_array(&key("scores")) {
                    Ok(s) => s.to_vec(),
                    Err(_) => g.get_i32_array(&key("scores"))?.iter().map(|&v| v as f32).collect(),
                };
                if s.len() < n {
                    return Err(Error::format(format!(
                        "tokenizer.ggml.scores has {} entries for {n} tokens",
                        s.len()
                    )));
                }
                s[..n].to_vec()
            }
        };
        let types: Option<&[i32]> = match g.get(&key("token_type")) {
            None => None,
            Some(_) => {
                let t = g.get_i32_array(&key("token_type"))?;
                if t.len() < n {
                    return Err(Error::format(format!(
                        "tokenizer.ggml.token_type has {} entries for {n} tokens",
                        t.len()
                    )));
                }
                Some(t)
            }
        };
        let mut texts = Vec::with_capacity(n);
        let mut ids: FxMap<Vec<u8>, Token> = FxMap::default();
        ids.reserve(n);
        let mut attrs = Vec::with_capacity(n);
        for (i, t) in texts_raw.iter().enumerate() {
            // llama.cpp names an empty entry so that it stays addressable.
            let t = if t.is_empty() { format!("[EMPTY_{i}]").into_bytes() } else { t.clone() };
            if let Some(prev) = ids.insert(t.clone(), i as Token) {
                return Err(Error::format(format!(
                    "duplicate token in tokenizer.ggml.tokens: {:?} has ids {prev} and {i}",
                    String::from_utf8_lossy(&t)
                )));
            }
            texts.push(t);
            attrs.push(match types.map(|t| t[i]) {
                None | Some(1) => ATTR_NORMAL,
                Some(2) => ATTR_UNKNOWN,
                Some(3) => ATTR_CONTROL,
                Some(4) => ATTR_USER_DEFINED,
                Some(5) => ATTR_UNUSED,
                Some(6) => ATTR_BYTE,
                Some(_) => 0,
            });
        }

        let in_range = |id: Option<Token>| id.filter(|&i| i >= 0 && (i as usize) < n);
        let read_id = |name: &str, default: Option<Token>| -> Option<Token> {
            match g.get(&key(name)).and_then(|v| v.as_u64()) {
                Some(v) if (v as usize) < n => Some(v as Token),
                // llama.cpp keeps the default for an out-of-range id.
                _ => default,
            }
        };
        let bos = read_id("bos_token_id", in_range(d.bos));
        let eos = read_id("eos_token_id", in_range(d.eos));
        let mut eot = read_id("eot_token_id", None);
        let mut eom = read_id("eom_token_id", None);
        let mut fim_pre = read_id("fim_pre_token_id", None);
        let mut fim_suf = read_id("fim_suf_token_id", None);
        let mut fim_mid = read_id("fim_mid_token_id", None);
        let mut fim_pad = read_id("fim_pad_token_id", None);
        let mut fim_rep = read_id("fim_rep_token_id", None);
        let mut fim_sep = read_id("fim_sep_token_id", None);
        fim_pre = read_id("prefix_token_id", fim_pre);
        fim_suf = read_id("suffix_token_id", fim_suf);
        fim_mid = read_id("middle_token_id", fim_mid);

        let flag = |name: &str, default: bool| -> Result<bool> {
            match g.get(&key(name)) {
                None => Ok(default),
                Some(_) => g.get_bool(&key(name)),
            }
        };
        let add_bos = flag("add_bos_token", d.add_bos)?;
        let add_eos = flag("add_eos_token", d.add_eos)?;
        let add_space_prefix = flag("add_space_prefix", d.add_space_prefix)?;
        if add_bos && bos.is_none() {
            return Err(Error::format("tokenizer.ggml.add_bos_token is true, but the vocabulary has no BOS token"));
        }
        if add_eos && eos.is_none() {
            return Err(Error::format("tokenizer.ggml.add_eos_token is true, but the vocabulary has no EOS token"));
        }

        // llama.cpp finds unnamed EOT/EOM/FIM tokens by their text and makes them control tokens.
        // It walks a hash map, so when several texts match, which one it takes is unspecified;
        // here the lowest id wins.
        let find = |slot: &mut Option<Token>, names: &[&str], attrs: &mut Vec<u32>| {
            if slot.is_some() {
                return;
            }
            let found = names.iter().filter_map(|t| ids.get(t.as_bytes()).copied()).min();
            if let Some(id) = found {
                *slot = Some(id);
                attrs[id as usize] |= ATTR_CONTROL;
            }
        };
        find(&mut eot, EOT_TEXTS, &mut attrs);
        find(&mut eom, EOM_TEXTS, &mut attrs);
        find(&mut fim_pre, FIM_PRE_TEXTS, &mut attrs);
        find(&mut fim_suf, FIM_SUF_TEXTS, &mut attrs);
        find(&mut fim_mid, FIM_MID_TEXTS, &mut attrs);
        find(&mut fim_pad, FIM_PAD_TEXTS, &mut attrs);
        find(&mut fim_rep, FIM_REP_TEXTS, &mut attrs);
        find(&mut fim_sep, FIM_SEP_TEXTS, &mut attrs);

        let mut eog = BTreeSet::new();
        eog.extend(fim_pad);
        eog.extend(fim_rep);
        eog.extend(fim_sep);
        for t in EOG_TEXTS {
            if let Some(&id) = ids.get(t.as_bytes()) {
                eog.insert(id);
                attrs[id as usize] |= ATTR_CONTROL;
            }
        }
        // gpt-oss: these are always rendered.
        for t in ["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"] {
            if let Some(&id) = ids.get(t.as_bytes()) {
                attrs[id as usize] = ATTR_USER_DEFINED;
            }
        }
        eog.extend(eos);
        eog.extend(eot);
        eog.extend(eom);
        // o200k_harmony / solar-open: "<|end|>" does not end generation when these are present.
        let has = |eog: &BTreeSet<Token>, t: &str| ids.get(t.as_bytes()).is_some_and(|id| eog.contains(id));
        if let Some(&end) = ids.get(b"<|end|>".as_slice()) {
            if eog.contains(&end)
                && ((has(&eog, "<|return|>") && (has(&eog, "<|call|>") || has(&eog, "<|calls|>")))
                    || ((has(&eog, "<|call|>") || has(&eog, "<|calls|>")) && has(&eog, "<|flush|>")))
            {
                eog.remove(&end);
                attrs[end as usize] = ATTR_USER_DEFINED;
            }
        }
        // gemma4 / paddleocr: "</s>" is not an end of generation next to "<|tool_response>".
        if has(&eog, "<|tool_response>") {
            if let Some(&s) = ids.get(b"</s>".as_slice()) {
                if eog.remove(&s) {
                    attrs[s as usize] = ATTR_NORMAL;
                }
            }
        }

        let mut specials: Vec<Token> = (0..n as Token)
            .filter(|&i| attrs[i as usize] & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN) != 0)
            .collect();
        // Longest first; llama.cpp's sort is not stable, equal lengths keep id order here.
        specials.sort_by(|&a, &b| texts[b as usize].len().cmp(&texts[a as usize].len()));

        // Phi-3: special tokens swallow the whitespace after them (set by model name).
        let name = g.get_str("general.name").map(|s| s.to_lowercase()).unwrap_or_default();
        if name.contains("phi-3") || name.contains("phi3") {
            for &id in &specials {
                attrs[id as usize] |= ATTR_RSTRIP;
            }
            if let Some(&id) = ids.get(b"</s>".as_slice()) {
                attrs[id as usize] |= ATTR_RSTRIP;
            }
            for t in ["<unk>", "<s>", "<|endoftext|>"] {
                if let Some(&id) = ids.get(t.as_bytes()) {
                    attrs[id as usize] &= !ATTR_RSTRIP;
                }
            }
        }

        Ok(Vocab {
            kind,
            texts,
            scores,
            attrs,
            ids,
            bos,
            eos,
            eot,
            eog,
            specials,
            add_bos,
            add_eos,
            add_space_prefix,
            clean_spaces: d.clean_spaces,
        })
    }

    pub fn n_vocab(&self) -> usize {
        self.texts.len()
    }
    pub fn texts(&self) -> &[Vec<u8>] {
        &self.texts
    }
    pub fn text(&self, id: Token) -> &[u8] {
        &self.texts[id as usize]
    }
    pub fn id_of(&self, text: &[u8]) -> Option<Token> {
        self.ids.get(text).copied()
    }
    pub fn attr(&self, id: Token) -> u32 {
        self.attrs[id as usize]
    }

    /// SentencePiece's byte fallback: `<0xXX>`, else the byte itself as a token.
    pub fn byte_token(&self, b: u8) -> Result<Token> {
        let hex = format!("<0x{b:02X}>");
        self.id_of(hex.as_bytes()).or_else(|| self.id_of(&[b])).ok_or_else(|| {
            Error::unsupported(format!("the vocabulary has no token for byte 0x{b:02X} (neither {hex} nor the byte)"))
        })
    }

    /// The byte a BYTE-type token stands for: llama.cpp reads the two characters after `<0x` as
    /// hex (as `strtol` would, stopping at the first non-hex character).
    pub fn token_byte(&self, id: Token) -> u8 {
        let t = self.text(id);
        let mut v: u32 = 0;
        for &c in t.iter().skip(3).take(2) {
            match (c as char).to_digit(16) {
                Some(d) => v = v * 16 + d,
                None => break,
            }
        }
        v as u8
    }
}
