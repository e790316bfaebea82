//! Bad input to the tokenizer: unknown tokenizer kinds are refused at load, naming them; ids
//! outside the vocabulary are InvalidArg, naming the id; a committed vocab file matches the
//! real model it was cut from.

use std::path::PathBuf;

use xdan::gguf::{Gguf, GgufWriter, Value};
use xdan::tokenizer::Tokenizer;
use xdan::ErrorKind;

fn data(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(p)
}

/// gpt-2's vocabulary with some keys replaced (None = removed).
fn gpt2_with(changes: &[(&str, Option<Value>)]) -> Gguf {
    let g = Gguf::open(data("tokenizer/vocabs/ggml-vocab-gpt-2.gguf"), true).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in g.metadata() {
        if !changes.iter().any(|(c, _)| c == k) {
            w.set(k, v.clone());
        }
    }
    for (k, v) in changes {
        if let Some(v) = v {
            w.set(k, v.clone());
        }
    }
    Gguf::from_bytes(w.to_bytes()).unwrap()
}

fn s(v: &str) -> Option<Value> {
    Some(Value::String(v.as_bytes().to_vec()))
}

#[test]
fn unknown_pre_is_unsupported_and_named() {
    let e = Tokenizer::from_gguf(&gpt2_with(&[("tokenizer.ggml.pre", s("no-such-pre"))])).err().unwrap();
    assert_eq!(e.kind, ErrorKind::Unsupported);
    assert!(e.message.contains("'no-such-pre'"), "{}", e.message);
    // A name llama.cpp knows but that needs more than a regex list is refused too.
    let e = Tokenizer::from_gguf(&gpt2_with(&[("tokenizer.ggml.pre", s("kimi-k2"))])).err().unwrap();
    assert_eq!(e.kind, ErrorKind::Unsupported);
    assert!(e.message.contains("kimi-k2"), "{}", e.message);
}

#[test]
fn unknown_model_is_unsupported_and_named() {
    let e = Tokenizer::from_gguf(&gpt2_with(&[("tokenizer.ggml.model", s("t5"))])).err().unwrap();
    assert_eq!(e.kind, ErrorKind::Unsupported);
    assert!(e.message.contains("'t5'"), "{}", e.message);
}

#[test]
fn missing_or_malformed_vocabulary_is_a_format_error() {
    let e = Tokenizer::from_gguf(&gpt2_with(&[("tokenizer.ggml.tokens", None)])).err().unwrap();
    assert_eq!(e.kind, ErrorKind::Format);
    assert!(e.message.contains("tokenizer.ggml.tokens"), "{}", e.message);
    let e = Tokenizer::from_gguf(&gpt2_with(&[("tokenizer.ggml.merges", None)])).err().unwrap();
    assert_eq!(e.kind, ErrorKind::Format);
    assert!(e.message.contains("tokenizer.ggml.merges"), "{}", e.message);
    let dup = Value::Array(xdan::gguf::Array::String(vec![b"a".to_vec(), b"b".to_vec(), b"a".to_vec()]));
    let e = Tokenizer::from_gguf(&gpt2_with(&[
        ("tokenizer.ggml.tokens", Some(dup)),
        ("tokenizer.ggml.merges", Some(Value::Array(xdan::gguf::Array::String(vec![])))),
    ]))
    .err()
    .unwrap();
    assert_eq!(e.kind, ErrorKind::Format);
    assert!(e.message.contains("duplicate") && e.message.contains("ids 0 and 2"), "{}", e.message);
}

#[test]
fn out_of_range_ids_are_invalid_arg_and_named() {
    for vocab in ["gpt-2", "llama-spm"] {
        let g = Gguf::open(data(&format!("tokenizer/vocabs/ggml-vocab-{vocab}.gguf")), true).unwrap();
        let tok = Tokenizer::from_gguf(&g).unwrap();
        let n = tok.n_vocab() as i32;
        for bad in [n, -1, i32::MAX] {
            let e = tok.token_to_piece(bad, true).unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidArg);
            assert!(e.message.contains(&format!("token id {bad} ")), "{}", e.message);
            let e = tok.detokenize(&[1, bad, 2], false, true).unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidArg);
            assert!(e.message.contains(&format!("token id {bad} ")), "{}", e.message);
            assert!(!tok.is_eog(bad));
            assert!(tok.token_text(bad).is_err());
        }
        assert!(tok.token_to_piece(n - 1, true).is_ok());
    }
}

#[test]
fn eog_set_follows_llama_cpp() {
    let tok = Tokenizer::from_gguf(&Gguf::open(data("tokenizer/vocabs/smollm2-vocab.gguf"), true).unwrap()).unwrap();
    // SmolLM2: EOS 2 (<|im_end|>), <|endoftext|> 0 by text; <|im_start|> is not an end.
    assert!(tok.is_eog(2) && tok.is_eog(0) && !tok.is_eog(1));
    let tok = Tokenizer::from_gguf(&Gguf::open(data("tokenizer/vocabs/ggml-vocab-llama-bpe.gguf"), true).unwrap()).unwrap();
    // Llama 3: <|end_of_text|> (EOS 128001) and <|eot_id|> 128009 end; BOS does not.
    assert!(tok.is_eog(128001) && tok.is_eog(128009) && !tok.is_eog(128000));
}

/// The committed SmolLM2 vocab file carries exactly the tokenizer and general metadata of the
/// real model. Needs the model (scripts/fetch-smollm2.sh); without it the test says so and
/// fails only when XDAN_REQUIRE_SMOLLM2 is set.
#[test]
fn smollm2_vocab_file_matches_the_real_model() {
    let cache = std::env::var_os("XDAN_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/xdan")));
    let real = cache.map(|c| c.join("SmolLM2-135M-Instruct.Q4_1.gguf")).filter(|p| p.exists());
    let small = Gguf::open(data("tokenizer/vocabs/smollm2-vocab.gguf"), true).unwrap();
    assert!(small.tensors().is_empty(), "the vocab file has tensors");
    let Some(real) = real else {
        println!("NOT CHECKED: SmolLM2-135M-Instruct.Q4_1.gguf is not in the cache (scripts/fetch-smollm2.sh fetches it)");
        assert!(std::env::var_os("XDAN_REQUIRE_SMOLLM2").is_none(), "XDAN_REQUIRE_SMOLLM2 is set but the model is missing");
        return;
    };
    let big = Gguf::open(&real, true).unwrap();
    let pick = |g: &Gguf| -> Vec<(String, Value)> {
        g.metadata()
            .iter()
            .filter(|(k, _)| k.starts_with("general.") || k.starts_with("tokenizer."))
            .cloned()
            .collect()
    };
    let (a, b) = (pick(&small), pick(&big));
    assert!(b.iter().any(|(k, _)| k == "tokenizer.ggml.merges"));
    assert_eq!(a.len(), b.len());
    for ((ka, va), (kb, vb)) in a.iter().zip(&b) {
        assert_eq!(ka, kb);
        assert!(va == vb, "{ka} differs");
    }
    println!("checked: {} general.*/tokenizer.* keys equal to {}", a.len(), real.display());
}

/// Every supported `tokenizer.ggml.pre` loads (its regexes compile) and tokenizes mixed text;
/// only gpt-2, llama-bpe, qwen2 and smollm have llama.cpp references here.
#[test]
fn every_supported_pre_loads_and_tokenizes() {
    let text = "Hello, y'all! 123456 我想在apple工作 नमस्ते  \n\n\tcode_x = f(1.5e3) 🦙 \u{FFFD}";
    for pre in xdan::tokenizer::SUPPORTED_PRE {
        let tok = Tokenizer::from_gguf(&gpt2_with(&[("tokenizer.ggml.pre", s(pre))]))
            .unwrap_or_else(|e| panic!("pre '{pre}': {e}"));
        let ids = tok.tokenize(text.as_bytes(), false, false).unwrap_or_else(|e| panic!("pre '{pre}': {e}"));
        // Byte-level BPE loses nothing: the pieces give the text back.
        let mut back = Vec::new();
        for id in &ids {
            back.extend(tok.token_to_piece(*id, true).unwrap());
        }
        assert_eq!(String::from_utf8_lossy(&back), text, "pre '{pre}'");
    }
}

/// The tiny Mixtral model's truncated SentencePiece vocabulary (1024 tokens, bytes at 3..258)
/// loads, and text with characters outside it falls back to byte tokens and comes back whole.
#[test]
fn tiny_mixtral_vocab_loads() {
    let g = Gguf::open(data("tiny-mixtral/F16/tiny-mixtral-F16.gguf"), true).unwrap();
    let tok = Tokenizer::from_gguf(&g).unwrap();
    assert_eq!((tok.n_vocab(), tok.bos(), tok.eos(), tok.add_bos()), (1024, Some(1), Some(2), true));
    // (A space before a character outside the vocabulary would come back as the bytes of `▁`,
    // as in llama.cpp: the bare `▁` is not among the 1024 tokens.)
    let text = "Hello wörld,中文!";
    let ids = tok.tokenize(text.as_bytes(), true, false).unwrap();
    assert_eq!(ids[0], 1);
    assert!(ids.iter().all(|&i| (0..1024).contains(&i)));
    assert!(ids.iter().any(|&i| (3..259).contains(&i)), "no byte fallback in {ids:?}");
    assert_eq!(tok.detokenize(&ids, true, false).unwrap(), format!(" {text}").as_bytes());
    assert_eq!(tok.detokenize(&ids[1..], true, false).unwrap(), text.as_bytes());
}

/// A byte-level vocabulary whose merges pass through a string that is not a token, and that
/// lacks most byte characters: llama.cpp still merges through the missing string, and drops a
/// character that neither is a token nor has a single-byte token.
#[test]
fn merges_through_missing_strings_as_llama_cpp() {
    let strs = |v: &[&str]| Value::Array(xdan::gguf::Array::String(v.iter().map(|s| s.as_bytes().to_vec()).collect()));
    let mut w = GgufWriter::new();
    w.set("tokenizer.ggml.model", s("gpt2").unwrap());
    w.set("tokenizer.ggml.pre", s("gpt-2").unwrap());
    w.set("tokenizer.ggml.tokens", strs(&["a", "b", "c", "abc", "x", "\u{120}"]));
    w.set("tokenizer.ggml.merges", strs(&["a b", "ab c", "\u{120} x"]));
    w.set_u32("tokenizer.ggml.bos_token_id", 4);
    w.set_u32("tokenizer.ggml.eos_token_id", 4);
    let tok = Tokenizer::from_gguf(&Gguf::from_bytes(w.to_bytes()).unwrap()).unwrap();
    // "ab" is no token, yet "abc" comes out of it; "d" has no token and vanishes; " x" merges to
    // "Ġx", which is no token either, so it falls back to its single bytes: only "x" exists.
    assert_eq!(tok.tokenize(b"abc", false, false).unwrap(), vec![3]);
    assert_eq!(tok.tokenize(b"abd", false, false).unwrap(), vec![0, 1]);
    assert_eq!(tok.tokenize(b"ab", false, false).unwrap(), vec![0, 1]);
    assert_eq!(tok.tokenize(b"c x", false, false).unwrap(), vec![2, 4]);
}
