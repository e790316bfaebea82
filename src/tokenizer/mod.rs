//! Tokenizer built from a GGUF's `tokenizer.ggml.*` metadata, token-for-token identical to
//! llama.cpp; chat templates.
//!
//! (Interface in place; the implementation lands with the tokenizer work.)

use crate::error::{Error, Result};
use crate::gguf::Gguf;

/// A token id, as in the C ABI (`xdan_token`).
pub type Token = i32;

pub struct Tokenizer {
    n_vocab: usize,
}

/// One chat message for [`Tokenizer::apply_chat_template`].
pub struct ChatMessage<'a> {
    pub role: &'a str,
    pub content: &'a str,
}

impl Tokenizer {
    /// Builds the tokenizer the GGUF's metadata describes; an unknown `tokenizer.ggml.model` or
    /// `tokenizer.ggml.pre` is `Unsupported`, naming it.
    pub fn from_gguf(g: &Gguf) -> Result<Tokenizer> {
        let n_vocab = g.get_str_array("tokenizer.ggml.tokens")?.len();
        Ok(Tokenizer { n_vocab })
    }
    pub fn n_vocab(&self) -> usize {
        self.n_vocab
    }
    pub fn bos(&self) -> Option<Token> {
        None
    }
    pub fn eos(&self) -> Option<Token> {
        None
    }
    /// `add_special`: BOS/EOS as the metadata says; `parse_special`: special-token text in
    /// `text` becomes those tokens.
    pub fn tokenize(&self, _text: &[u8], _add_special: bool, _parse_special: bool) -> Result<Vec<Token>> {
        Err(Error::unsupported("tokenizer not implemented"))
    }
    /// llama_detokenize(remove_special, unparse_special).
    pub fn detokenize(&self, _ids: &[Token], _remove_special: bool, _unparse_special: bool) -> Result<Vec<u8>> {
        Err(Error::unsupported("tokenizer not implemented"))
    }
    /// llama_token_to_piece(special).
    pub fn token_to_piece(&self, _id: Token, _special: bool) -> Result<Vec<u8>> {
        Err(Error::unsupported("tokenizer not implemented"))
    }
    pub fn is_eog(&self, _id: Token) -> bool {
        false
    }
    pub fn chat_template(&self) -> Option<&str> {
        None
    }
    pub fn apply_chat_template(&self, _msgs: &[ChatMessage], _add_generation_prompt: bool) -> Result<String> {
        Err(Error::unsupported("chat templates not implemented"))
    }
}
