//! Feeds arbitrary bytes to the GGUF reader. Any input must either be refused with an error or
//! give a file whose every part can be used: tensor bytes of the stated size, every accessor
//! answering, and a writer round trip that reproduces the same file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use xdan::gguf::{parse_header, Gguf, GgufWriter};

fn rewrite(g: &Gguf) -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.set_version(g.version());
    for (k, v) in g.metadata() {
        w.set(k, v.clone());
    }
    for t in g.tensors() {
        w.add_tensor(&t.name, &t.dims, t.ty, g.tensor_data(t).to_vec())
            .expect("a tensor the reader accepted is one the writer accepts");
    }
    w.to_bytes()
}

fuzz_target!(|data: &[u8]| {
    let header = parse_header(data);
    let g = match Gguf::from_bytes(data.to_vec()) {
        Ok(g) => g,
        Err(e) => {
            assert_eq!(header.err().map(|h| h.message), Some(e.message));
            return;
        }
    };
    let header = header.expect("parse_header and Gguf::from_bytes agree");
    assert_eq!(header.tensors, g.tensors());
    for t in g.tensors() {
        assert_eq!(g.tensor_data(t).len() as u64, t.n_bytes);
        assert_eq!(g.tensor(&t.name), Some(t));
        assert_eq!(t.n_rows() * t.row_bytes() as u64, t.n_bytes);
    }
    for (k, v) in g.metadata() {
        assert!(g.get(k).is_some());
        let _ = v.to_text(8);
        let _ = (
            g.get_u32(k),
            g.get_u64(k),
            g.get_i64(k),
            g.get_f32(k),
            g.get_bool(k),
        );
        let _ = (
            g.get_str(k),
            g.get_str_array(k),
            g.get_f32_array(k),
            g.get_i32_array(k),
        );
    }
    // The writer lays tensors out afresh, so compare a rewrite with the rewrite of its reading.
    let once = rewrite(&g);
    let again = Gguf::from_bytes(once.clone()).expect("the writer's output reads back");
    assert!(
        rewrite(&again) == once,
        "writer round trip changed the file"
    );
});
