//! The tokenizer against llama.cpp's own results (tests/data/tokenizer): for every vocabulary,
//! every text of the corpus and every mode, the ids, the pieces and both detokenizations must be
//! byte-identical; llama.cpp's .inp/.out vectors must pass too.

use std::path::PathBuf;

use serde_json::Value as Json;
use xdan::gguf::Gguf;
use xdan::tokenizer::Tokenizer;

fn data(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(p)
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

fn show(b: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(b))
}

fn gguf_of(vocab: &str) -> PathBuf {
    if vocab == "smollm2" {
        data("tokenizer/vocabs/smollm2-vocab.gguf")
    } else {
        data(&format!("tokenizer/vocabs/ggml-vocab-{vocab}.gguf"))
    }
}

fn load(vocab: &str) -> Tokenizer {
    let path = gguf_of(vocab);
    let g = Gguf::open(&path, true).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    Tokenizer::from_gguf(&g).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

const VOCABS: &[&str] = &["llama-spm", "llama-bpe", "gpt-2", "qwen2", "smollm2"];
const MODES: &[&str] = &["add_special", "parse_special", "plain"];

/// Checks one case in one mode; returns what differs.
fn check_case(tok: &Tokenizer, text: &[u8], m: &Json) -> Vec<String> {
    let mut errs = Vec::new();
    let add = m["add_special"].as_bool().unwrap();
    let parse = m["parse_special"].as_bool().unwrap();
    let want: Vec<i32> = m["ids"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap() as i32).collect();
    match tok.tokenize(text, add, parse) {
        Ok(ids) if ids == want => {}
        Ok(ids) => errs.push(format!("ids {ids:?}, llama.cpp {want:?}")),
        Err(e) => errs.push(format!("tokenize failed: {e}")),
    }
    // Detokenization is checked on llama.cpp's ids, so it is tested on its own.
    let pieces: Vec<Vec<u8>> = m["pieces_hex"].as_array().unwrap().iter().map(|v| unhex(v.as_str().unwrap())).collect();
    for (id, want_piece) in want.iter().zip(&pieces) {
        let got = tok.token_to_piece(*id, true).unwrap();
        if &got != want_piece {
            errs.push(format!("piece of {id}: {} vs llama.cpp {}", show(&got), show(want_piece)));
        }
    }
    let mut nospecial = Vec::new();
    for id in &want {
        nospecial.extend(tok.token_to_piece(*id, false).unwrap());
    }
    let want_nospecial = unhex(m["concat_pieces_nospecial_hex"].as_str().unwrap());
    if nospecial != want_nospecial {
        errs.push(format!("pieces(special=false) {} vs {}", show(&nospecial), show(&want_nospecial)));
    }
    let d = tok.detokenize(&want, false, true).unwrap();
    let want_d = unhex(m["detokenize_hex"].as_str().unwrap());
    if d != want_d {
        errs.push(format!("detokenize {} vs {}", show(&d), show(&want_d)));
    }
    let d = tok.detokenize(&want, true, false).unwrap();
    let want_d = unhex(m["detokenize_nospecial_hex"].as_str().unwrap());
    if d != want_d {
        errs.push(format!("detokenize_nospecial {} vs {}", show(&d), show(&want_d)));
    }
    errs
}

#[test]
fn corpus_matches_llama_cpp_for_every_vocab_and_mode() {
    let mut table = Vec::new();
    let mut failures = Vec::new();
    for vocab in VOCABS {
        let path = data(&format!("tokenizer/{vocab}.json"));
        let j: Json = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let tok = load(vocab);
        let info = &j["llama_cpp_vocab_info"];
        assert_eq!(tok.n_vocab() as i64, info["n_vocab"].as_i64().unwrap(), "{vocab}: n_vocab");
        assert_eq!(tok.add_bos(), info["add_bos"].as_bool().unwrap(), "{vocab}: add_bos");
        assert_eq!(tok.add_eos(), info["add_eos"].as_bool().unwrap(), "{vocab}: add_eos");
        assert_eq!(tok.bos().map(i64::from), info["bos"].as_i64(), "{vocab}: bos");
        assert_eq!(tok.eos().map(i64::from), info["eos"].as_i64(), "{vocab}: eos");
        let cases = j["cases"].as_array().unwrap();
        let mut row = vec![0usize; MODES.len()];
        for c in cases {
            let text = unhex(c["text_hex"].as_str().unwrap());
            for (k, mode) in MODES.iter().enumerate() {
                let errs = check_case(&tok, &text, &c[*mode]);
                if errs.is_empty() {
                    row[k] += 1;
                } else {
                    failures.push(format!("{vocab} case {} {mode} text {}: {}", c["id"], show(&text), errs.join("; ")));
                }
            }
        }
        table.push((vocab, cases.len(), row));
    }
    println!("\nllama.cpp tokenizer corpus: cases passing (ids, pieces, detokenize, detokenize_nospecial)");
    println!("{:<10} {:>6} {:>12} {:>14} {:>8}", "vocab", "cases", "add_special", "parse_special", "plain");
    for (vocab, n, row) in &table {
        println!("{vocab:<10} {n:>6} {:>12} {:>14} {:>8}", row[0], row[1], row[2]);
    }
    for f in failures.iter().take(40) {
        println!("FAIL {f}");
    }
    assert!(failures.is_empty(), "{} case/mode combinations differ from llama.cpp", failures.len());
}

#[test]
fn llama_cpp_vocab_test_vectors() {
    let mut report = Vec::new();
    let mut failures = Vec::new();
    for vocab in ["llama-spm", "llama-bpe", "gpt-2", "qwen2"] {
        let tok = load(vocab);
        let inp = std::fs::read(data(&format!("tokenizer/vocabs/ggml-vocab-{vocab}.gguf.inp"))).unwrap();
        let out = std::fs::read_to_string(data(&format!("tokenizer/vocabs/ggml-vocab-{vocab}.gguf.out"))).unwrap();
        let sep = b"\n__ggml_vocab_test__\n";
        let mut texts = Vec::new();
        let mut rest = &inp[..];
        while let Some(p) = rest.windows(sep.len()).position(|w| w == sep) {
            texts.push(&rest[..p]);
            rest = &rest[p + sep.len()..];
        }
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(texts.len(), lines.len(), "{vocab}: .inp and .out disagree on the number of tests");
        assert!(!texts.is_empty());
        let mut pass = 0;
        for (text, line) in texts.iter().zip(&lines) {
            let want: Vec<i32> = line.split_whitespace().map(|s| s.parse().unwrap()).collect();
            let got = tok.tokenize(text, false, false).unwrap();
            if got == want {
                pass += 1;
            } else {
                failures.push(format!("{vocab} {}: {got:?} vs {want:?}", show(text)));
            }
        }
        report.push(format!("{vocab}: {pass}/{}", texts.len()));
    }
    println!("llama.cpp .inp/.out vectors: {}", report.join(", "));
    for f in failures.iter().take(20) {
        println!("FAIL {f}");
    }
    assert!(failures.is_empty(), "{} vectors differ", failures.len());
}
