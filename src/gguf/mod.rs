//! GGUF: the validated reader over a memory map, and the writer.

pub mod reader;
pub mod value;
pub mod writer;

pub use reader::{
    parse_header, Gguf, Header, TensorInfo, DEFAULT_ALIGNMENT, GGUF_MAGIC, MAX_ARRAY_LEN, MAX_DIMS,
    MAX_STRING_LEN, MAX_TENSOR_NAME_LEN,
};
pub use value::{Array, Value, ValueType};
pub use writer::GgufWriter;
