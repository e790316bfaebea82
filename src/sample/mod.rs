//! The sampler of the C ABI: penalties, temperature, top-k, top-p, min-p over one sequence's
//! logits, with a seeded, platform-independent PRNG.
//!
//! (Interface in place; the implementation lands with the engine work.)

#[allow(unused_imports)]
use crate::tokenizer::Token;


#[derive(Clone, Debug, PartialEq)]
pub struct SamplerParams {
    pub temperature: f32,
    pub top_k: i32,
    pub top_p: f32,
    pub min_p: f32,
    pub repeat_penalty: f32,
    pub repeat_last_n: i32,
    pub frequency_penalty: f32,
    pub presence_penalty: f32,
    pub seed: u64,
}

pub struct Sampler {
    pub params: SamplerParams,
}
