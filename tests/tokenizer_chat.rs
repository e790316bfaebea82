//! Chat templates: SmolLM2's own template reproduces llama.cpp's reference prompt; the helpers HF
//! templates use work; a failing template reports minijinja's message.

use std::path::PathBuf;

use serde_json::Value as Json;
use xdan::gguf::{Gguf, GgufWriter};
use xdan::tokenizer::{ChatMessage, Tokenizer};
use xdan::ErrorKind;

fn data(p: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(p)
}

fn smollm2_gguf() -> Gguf {
    Gguf::open(data("tokenizer/vocabs/smollm2-vocab.gguf"), true).unwrap()
}

/// The SmolLM2 vocabulary with another chat template.
fn with_template(tmpl: &str) -> Tokenizer {
    let g = smollm2_gguf();
    let mut w = GgufWriter::new();
    for (k, v) in g.metadata() {
        w.set(k, v.clone());
    }
    w.set_str("tokenizer.chat_template", tmpl);
    Tokenizer::from_gguf(&Gguf::from_bytes(w.to_bytes()).unwrap()).unwrap()
}

#[test]
fn smollm2_template_renders_the_reference_chat_prompt() {
    let refs: Json = serde_json::from_str(&std::fs::read_to_string(data("smollm2/refs.json")).unwrap()).unwrap();
    let chat = refs["prompts"].as_array().unwrap().iter().find(|p| p["name"] == "chat").unwrap();
    let msgs: Vec<ChatMessage> = chat["chat_messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| ChatMessage { role: m["role"].as_str().unwrap(), content: m["content"].as_str().unwrap() })
        .collect();
    let tok = Tokenizer::from_gguf(&smollm2_gguf()).unwrap();
    assert!(tok.chat_template().unwrap().contains("<|im_start|>"));
    let text = tok.apply_chat_template(&msgs, true).unwrap();
    assert_eq!(text, chat["text"].as_str().unwrap());
    // And llama.cpp's ids for it (add_special and parse_special, as the reference was made).
    let want: Vec<i32> = chat["ids"].as_array().unwrap().iter().map(|v| v.as_i64().unwrap() as i32).collect();
    assert_eq!(tok.tokenize(text.as_bytes(), true, true).unwrap(), want);
    // Without the generation prompt the assistant header is absent.
    let text = tok.apply_chat_template(&msgs, false).unwrap();
    assert!(text.ends_with("<|im_end|>\n") && !text.contains("<|im_start|>assistant"), "{text:?}");
}

#[test]
fn hf_helpers_are_available() {
    let tok = with_template(concat!(
        "{{ bos_token }}|{{ eos_token }}|",
        "{% for m in messages %}{% if loop.index0 == 1 %}{% continue %}{% endif %}",
        "{{ m.role | upper }}={{ m['content'].strip() }}{{ m | tojson }};{% endfor %}",
        "{{ strftime_now('%Y') | length }}",
    ));
    let msgs = [
        ChatMessage { role: "user", content: "  hi \"there\"\n " },
        ChatMessage { role: "assistant", content: "skipped" },
        ChatMessage { role: "user", content: "<é>" },
    ];
    let out = tok.apply_chat_template(&msgs, false).unwrap();
    assert_eq!(
        out,
        concat!(
            "<|im_start|>|<|im_end|>|",
            "USER=hi \"there\"{\"role\": \"user\", \"content\": \"  hi \\\"there\\\"\\n \"};",
            "USER=<é>{\"role\": \"user\", \"content\": \"<é>\"};",
            "4"
        )
    );
}

#[test]
fn trim_and_lstrip_blocks_as_in_hf() {
    let tok = with_template("{% for m in messages %}\n    {% if true %}\n{{ m.content }}\n    {% endif %}\n{% endfor %}\n");
    let out = tok.apply_chat_template(&[ChatMessage { role: "user", content: "a" }], false).unwrap();
    assert_eq!(out, "a\n");
}

#[test]
fn failing_template_reports_its_message() {
    let tok = with_template("{% if messages[0].role != 'system' %}{{ raise_exception('first message must be system') }}{% endif %}");
    let e = tok.apply_chat_template(&[ChatMessage { role: "user", content: "x" }], true).unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidArg);
    assert!(e.message.contains("first message must be system"), "{}", e.message);

    let tok = with_template("{% for m in messages %}");
    let e = tok.apply_chat_template(&[ChatMessage { role: "user", content: "x" }], true).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Format);
    assert!(e.message.contains("chat_template"), "{}", e.message);
}

#[test]
fn no_template_is_unsupported() {
    let g = smollm2_gguf();
    let mut w = GgufWriter::new();
    for (k, v) in g.metadata() {
        if k != "tokenizer.chat_template" {
            w.set(k, v.clone());
        }
    }
    let tok = Tokenizer::from_gguf(&Gguf::from_bytes(w.to_bytes()).unwrap()).unwrap();
    assert!(tok.chat_template().is_none());
    let e = tok.apply_chat_template(&[], true).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Unsupported);
}
