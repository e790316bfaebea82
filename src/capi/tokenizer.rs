//! Tokenizer: text to tokens and back, pieces, end-of-generation, chat templates.

use std::ffi::c_char;

use super::model::{model_ref, xdan_model};
use super::{
    c_str_utf8, guard, guard_value, in_slice, non_null_mut, write_bytes, write_items,
    xdan_status, xdan_token, XDAN_DETOKENIZE_SKIP_SPECIAL, XDAN_TOKENIZE_ADD_SPECIAL,
    XDAN_TOKENIZE_PARSE_SPECIAL,
};
use crate::error::{Error, Result};
use crate::tokenizer::ChatMessage;

fn check_flags(flags: u32, known: u32, what: &str) -> Result<()> {
    if flags & !known != 0 {
        return Err(Error::invalid_arg(format!(
            "{what}: unknown flag bits {:#x} in flags {flags:#x}",
            flags & !known
        )));
    }
    Ok(())
}

pub(crate) fn check_tokens(tokens: &[xdan_token], n_vocab: usize) -> Result<()> {
    match tokens.iter().enumerate().find(|&(_, &t)| t < 0 || t as usize >= n_vocab) {
        Some((i, &t)) => Err(Error::invalid_arg(format!(
            "token {t} (at index {i}) is outside the vocabulary [0, {n_vocab})"
        ))),
        None => Ok(()),
    }
}

/// Tokenizes `text` (`text_len` bytes of UTF-8; need not be NUL-terminated; NULL only with
/// length 0) into `tokens` (room for `cap`), exactly as llama.cpp does for the same vocabulary.
/// `flags`: `XDAN_TOKENIZE_ADD_SPECIAL`, `XDAN_TOKENIZE_PARSE_SPECIAL`. `*n_tokens` receives
/// the count; if it exceeds `cap` the call returns `XDAN_E_BUFFER_TOO_SMALL` and writes no token
/// (call again with `cap = *n_tokens`).
#[no_mangle]
pub unsafe extern "C" fn xdan_tokenize(
    m: *const xdan_model,
    text: *const c_char,
    text_len: usize,
    flags: u32,
    tokens: *mut xdan_token,
    cap: usize,
    n_tokens: *mut usize,
) -> xdan_status {
    guard(|| {
        let m = model_ref(m)?;
        let text = in_slice(text as *const u8, text_len, "text")?;
        non_null_mut(n_tokens, "n_tokens")?;
        check_flags(flags, XDAN_TOKENIZE_ADD_SPECIAL | XDAN_TOKENIZE_PARSE_SPECIAL, "xdan_tokenize")?;
        let ids = m.model.tokenizer().tokenize(
            text,
            flags & XDAN_TOKENIZE_ADD_SPECIAL != 0,
            flags & XDAN_TOKENIZE_PARSE_SPECIAL != 0,
        )?;
        write_items(&ids, tokens, cap, n_tokens, "tokens", "tokens")
    })
}

/// Turns `n` tokens back into text (the buffer protocol of `xdan_model_meta`). Without flags,
/// control tokens are rendered as their text (e.g. `<s>`); `XDAN_DETOKENIZE_SKIP_SPECIAL` drops
/// them. `XDAN_E_INVALID_ARG` for an id outside the vocabulary.
#[no_mangle]
pub unsafe extern "C" fn xdan_detokenize(
    m: *const xdan_model,
    tokens: *const xdan_token,
    n: usize,
    flags: u32,
    buf: *mut c_char,
    cap: usize,
    len: *mut usize,
) -> xdan_status {
    guard(|| {
        let m = model_ref(m)?;
        let tokens = in_slice(tokens, n, "tokens")?;
        non_null_mut(len, "len")?;
        check_flags(flags, XDAN_DETOKENIZE_SKIP_SPECIAL, "xdan_detokenize")?;
        check_tokens(tokens, m.model.n_vocab())?;
        let skip = flags & XDAN_DETOKENIZE_SKIP_SPECIAL != 0;
        let text = m.model.tokenizer().detokenize(tokens, skip, !skip)?;
        write_bytes(&text, buf, cap, len)
    })
}

/// The text of one token as it appears when streaming output (control tokens give their text,
/// e.g. `<|im_end|>`), through the buffer protocol of `xdan_model_meta`. A piece may be a
/// partial UTF-8 sequence (byte tokens); concatenated pieces form valid text.
#[no_mangle]
pub unsafe extern "C" fn xdan_token_piece(
    m: *const xdan_model,
    t: xdan_token,
    buf: *mut c_char,
    cap: usize,
    len: *mut usize,
) -> xdan_status {
    guard(|| {
        let m = model_ref(m)?;
        non_null_mut(len, "len")?;
        check_tokens(&[t], m.model.n_vocab())?;
        let piece = m.model.tokenizer().token_to_piece(t, true)?;
        write_bytes(&piece, buf, cap, len)
    })
}

/// Whether `t` ends generation (EOS, end-of-turn and the like). False for NULL `m` or an id
/// outside the vocabulary.
#[no_mangle]
pub unsafe extern "C" fn xdan_token_is_eog(m: *const xdan_model, t: xdan_token) -> bool {
    guard_value(false, || {
        let m = model_ref(m)?;
        check_tokens(&[t], m.model.n_vocab())?;
        Ok(m.model.tokenizer().is_eog(t))
    })
}

/// One message of a chat: `role` ("system", "user", "assistant", ...) and `content`, both
/// NUL-terminated UTF-8.
#[repr(C)]
pub struct xdan_chat_message {
    pub role: *const c_char,
    pub content: *const c_char,
}

/// Renders `n` chat messages with the model's chat template (GGUF `tokenizer.chat_template`,
/// Jinja), ending with the assistant's turn opener when `add_assistant_prompt`; the text goes
/// through the buffer protocol of `xdan_model_meta`. Tokenize the result with
/// `XDAN_TOKENIZE_PARSE_SPECIAL`. `XDAN_E_UNSUPPORTED` if the model has no template or it
/// cannot be rendered.
#[no_mangle]
pub unsafe extern "C" fn xdan_chat_apply(
    m: *const xdan_model,
    msgs: *const xdan_chat_message,
    n: usize,
    add_assistant_prompt: bool,
    buf: *mut c_char,
    cap: usize,
    len: *mut usize,
) -> xdan_status {
    guard(|| {
        let m = model_ref(m)?;
        let msgs = in_slice(msgs, n, "msgs")?;
        non_null_mut(len, "len")?;
        let mut list = Vec::with_capacity(msgs.len());
        for (i, msg) in msgs.iter().enumerate() {
            list.push(ChatMessage {
                role: c_str_utf8(msg.role, &format!("msgs[{i}].role"))?,
                content: c_str_utf8(msg.content, &format!("msgs[{i}].content"))?,
            });
        }
        let text = m.model.tokenizer().apply_chat_template(&list, add_assistant_prompt)?;
        write_bytes(text.as_bytes(), buf, cap, len)
    })
}
