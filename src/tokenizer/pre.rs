//! Pre-tokenizers of byte-level BPE vocabularies, chosen by `tokenizer.ggml.pre` exactly as
//! llama.cpp chooses them: the split regexes (applied in order, each to every piece the one before
//! left, matches and the gaps between them both becoming pieces) and the flags llama.cpp ties to
//! each name. Names llama.cpp knows but whose behaviour needs more than a regex list (custom
//! splitters, no byte encoding, extra separator tokens) are not listed, so they are refused.

/// What one `tokenizer.ggml.pre` value means.
pub(crate) struct PreSpec {
    pub regexes: &'static [&'static str],
    /// A whole pre-token that is in the vocabulary is emitted without merging (llama3-style).
    pub ignore_merges: bool,
    /// llama_detokenize's clean-up of spaces before punctuation and contractions.
    pub clean_spaces: bool,
    /// The add_bos default when the GGUF has no `tokenizer.ggml.add_bos_token`.
    pub add_bos: bool,
    /// The vocabulary has no BOS unless the metadata names one.
    pub no_default_bos: bool,
}

// GPT-2's regex (llama.cpp matches it with a hand-written splitter of the same meaning).
pub(crate) const GPT2: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";

// Llama 3's regex with the case-insensitive group spelled out, as llama.cpp writes it.
pub(crate) const LLAMA3: &str = concat!(
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])",
    r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
);

pub(crate) const QWEN2: &str = concat!(
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])",
    r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
);

const QWEN35: &str = concat!(
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])",
    r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
);

const SEED_CODER: &str = concat!(
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])",
    r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+"
);

const BAILINGMOE: &str = concat!(
    "'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])",
    r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"
);

// Mistral's tekken: upper/lower-case runs written with lookaheads, as llama.cpp adapts them.
const TEKKEN: &str = concat!(
    r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+",
    r"|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*",
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
);

const GPT4O: &str = concat!(
    r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+",
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?",
    r"|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*",
    "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?",
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
);

const CJK_HANGUL: &str = "[\u{4E00}-\u{9FA5}\u{0800}-\u{4E00}\u{AC00}-\u{D7FF}]+";

// DeepSeek LLM's letter class: the cased-letter (L&) ranges of its tokenizer.json.
const DEEPSEEK_LLM_LETTERS: &str = "\\s?[A-Za-z\u{B5}\u{C0}-\u{D6}\u{D8}-\u{F6}\u{F8}-\u{1BA}\u{1BC}-\u{1BF}\u{1C4}-\u{293}\u{295}-\u{2AF}\u{370}-\u{373}\u{376}\u{377}\u{37B}-\u{37D}\u{37F}\u{386}\u{388}-\u{38A}\u{38C}\u{38E}-\u{3A1}\u{3A3}-\u{3F5}\u{3F7}-\u{481}\u{48A}-\u{52F}\u{531}-\u{556}\u{10A0}-\u{10C5}\u{13A0}-\u{13F5}\u{13F8}-\u{13FD}\u{1C90}-\u{1CBA}\u{1CBD}-\u{1CBF}\u{1D00}-\u{1D2B}\u{1D6B}-\u{1D77}\u{1D79}-\u{1D9A}\u{1E00}-\u{1F15}\u{1F18}-\u{1F1D}\u{1F20}-\u{1F45}\u{1F48}-\u{1F4D}\u{1F50}-\u{1F57}\u{1F59}\u{1F5B}\u{1F5D}\u{1F5F}-\u{1F7D}\u{1F80}-\u{1FB4}\u{1FB6}-\u{1FBC}\u{1FBE}\u{1FC2}-\u{1FC4}\u{1FC6}-\u{1FCC}\u{1FD0}-\u{1FD3}\u{1FD6}-\u{1FDB}\u{1FE0}-\u{1FEC}\u{1FF2}-\u{1FF4}\u{1FF6}-\u{1FFC}\u{2102}\u{2107}\u{210A}-\u{2113}\u{2115}\u{2119}-\u{211D}\u{2124}\u{2126}\u{2128}\u{212A}-\u{212D}\u{212F}-\u{2134}\u{2139}\u{213C}-\u{213F}\u{2145}-\u{2149}\u{214E}\u{2183}\u{2184}\u{2C00}-\u{2C7B}\u{2C7E}-\u{2CE4}\u{2CEB}-\u{2CEE}\u{2CF2}\u{2CF3}\u{A640}-\u{A66D}\u{A680}-\u{A69B}\u{A722}-\u{A76F}\u{A771}-\u{A787}\u{A78B}-\u{A78E}\u{AB70}-\u{ABBF}\u{FB00}-\u{FB06}\u{FB13}-\u{FB17}\u{FF21}-\u{FF3A}\u{FF41}-\u{FF5A}\u{10400}-\u{1044F}\u{104B0}-\u{104D3}\u{104D8}-\u{104FB}\u{10C80}-\u{10CB2}\u{10CC0}-\u{10CF2}\u{118A0}-\u{118DF}\u{1E900}-\u{1E943}]+";

const DEEPSEEK_LLM: &[&str] = &[
    "[\r\n]",
    DEEPSEEK_LLM_LETTERS,
    "\\s?[!-/:-~\u{FF01}-\u{FF0F}\u{FF1A}-\u{FF5E}\u{2018}-\u{201F}\u{3000}-\u{3002}]+",
    r"\s+$",
    CJK_HANGUL,
    r"\p{N}+",
];

const DEEPSEEK_CODER: &[&str] = &["[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", CJK_HANGUL, r"\p{N}"];

const DEEPSEEK_V3: &[&str] = &[
    r"\p{N}{1,3}",
    "[\u{4E00}-\u{9FA5}\u{3040}-\u{309F}\u{30A0}-\u{30FF}]+",
    concat!(
        r##"[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+"##,
        r"|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    ),
];

const BLOOM_WORDS: &str = " ?[^(\\s|.,!?\u{2026}\u{3002}\u{FF0C}\u{3001}\u{0964}\u{06D4}\u{060C})]+";

const CHAMELEON: &[&str] = &[
    "<sentinel:[0-9]+>",
    "(IMGIMG)((A|B|C|D|E|F|G|H|I){1,4})Z",
    "([\\t\\n]|    |  )",
    r"\p{N}",
    r"[\p{P}!-/:-@\[-`{-~]",
    GPT2,
];

fn spec(regexes: &'static [&'static str]) -> PreSpec {
    PreSpec { regexes, ignore_merges: false, clean_spaces: true, add_bos: false, no_default_bos: false }
}

/// llama.cpp's meaning of `tokenizer.ggml.pre` for a `gpt2` (byte-level BPE) vocabulary; `None`
/// for a name it does not support. A missing key is llama.cpp's "default" (it warns and goes on).
pub(crate) fn pre_spec(name: &str) -> Option<PreSpec> {
    let keep = |mut s: PreSpec| {
        s.clean_spaces = false;
        s
    };
    Some(match name {
        "default" => spec(&[r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", "[0-9][0-9][0-9]"]),
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" => PreSpec { ignore_merges: true, add_bos: true, ..spec(&[LLAMA3]) },
        "dbrx" | "smaug-bpe" => spec(&[LLAMA3]),
        "glm4" | "chatglm-bpe" => PreSpec { no_default_bos: true, ..spec(&[LLAMA3]) },
        "deepseek-llm" => keep(spec(DEEPSEEK_LLM)),
        "deepseek-coder" => keep(spec(DEEPSEEK_CODER)),
        "deepseek-v3" => keep(spec(DEEPSEEK_V3)),
        "falcon" => spec(&[r"[\p{P}\$\+<=>\^~\|`]+", GPT2, "[0-9][0-9][0-9]"]),
        "gpt-2" | "phi-2" | "gigachat" | "a.x-4.0" | "mellum" | "exaone4" | "mpt" | "olmo"
        | "jais" => spec(&[GPT2]),
        "trillion" | "granite-docling" => keep(spec(&[GPT2])),
        "starcoder" | "refact" | "codeshell" | "exaone" | "minerva-7b" | "mellum2" => {
            spec(&[r"\p{N}", GPT2])
        }
        "command-r" | "smollm" => keep(spec(&[r"\p{N}", GPT2])),
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "hunyuan" | "solar-open" => {
            keep(spec(&[QWEN2]))
        }
        "stablelm2" | "megrez" => spec(&[QWEN2]),
        "qwen35" => keep(spec(&[QWEN35])),
        "grok-2" => keep(spec(&[QWEN2])),
        "seed-coder" => keep(spec(&[SEED_CODER])),
        "bailingmoe" | "bailingmoe2" | "llada-moe" => keep(spec(&[BAILINGMOE])),
        "tekken" => PreSpec { ignore_merges: true, add_bos: true, ..keep(spec(&[TEKKEN])) },
        "gpt-4o" | "llama4" | "kanana2" | "talkie" | "minimax-m2" => keep(spec(&[GPT4O])),
        "viking" => keep(spec(&[BLOOM_WORDS, r"\p{N}"])),
        "poro-chat" => keep(spec(&[BLOOM_WORDS])),
        "bloom" | "gpt3-finnish" => spec(&[BLOOM_WORDS]),
        "chameleon" => PreSpec { add_bos: true, ..keep(spec(CHAMELEON)) },
        _ => return None,
    })
}

/// Every name [`pre_spec`] accepts (for documentation and tests).
pub const SUPPORTED_PRE: &[&str] = &[
    "default", "llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0",
    "lfm2", "dbrx", "smaug-bpe", "glm4", "chatglm-bpe", "deepseek-llm", "deepseek-coder",
    "deepseek-v3", "falcon", "gpt-2", "phi-2", "gigachat", "a.x-4.0", "mellum", "exaone4", "mpt",
    "olmo", "jais", "trillion", "granite-docling", "starcoder", "refact", "codeshell", "exaone",
    "minerva-7b", "mellum2", "command-r", "smollm", "qwen2", "deepseek-r1-qwen", "kormo",
    "f2llmv2", "hunyuan", "solar-open", "stablelm2", "megrez", "qwen35", "grok-2", "seed-coder",
    "bailingmoe", "bailingmoe2", "llada-moe", "tekken", "gpt-4o", "llama4", "kanana2", "talkie",
    "minimax-m2", "viking", "poro-chat", "bloom", "gpt3-finnish", "chameleon",
];
