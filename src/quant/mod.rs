//! GGML block formats: the type table, one block struct per type, dequantization bit-exact with
//! llama.cpp, and the row·vector dot products the matmuls use.

pub mod types;

pub use types::{GgmlType, TypeFacts, TYPE_FACTS};
