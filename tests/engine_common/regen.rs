//! Regenerates the tiny-mixtral F32 and BF16 GGUFs, which the fixtures do not store (size cap),
//! bit-exactly from their recipe (`tests/data/FIXTURES.md`, `models/tiny-mixtral/`), and checks
//! each against the sha256 and size recorded in its `refs.json`.
//!
//! F32: the weights come from NumPy's legacy `RandomState(1234)` stream (MT19937 and the polar
//! Gaussian, frozen by NumPy's compatibility policy), drawn in file order: `token_embd` N(0, 1),
//! linear layers and the router N(0, 1/fan_in), norms 1 + N(0, 0.1²), each value cast to f32.
//! The metadata and tensor order are those of the stored F16 file (written by the same script),
//! with `general.file_type` = 0.
//! BF16: what `llama-quantize ... BF16` makes of the F32 file: the tensors listed as BF16 in its
//! `refs.json` rounded with ggml's f32→bf16 (nearest even), the others kept as F32, in the
//! quantizer's tensor order; `general.quantization_version` and `general.file_type` (32) moved to
//! the end of the metadata, as the quantizer re-sets them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest, Sha256};
use xdan::gguf::{Gguf, GgufWriter};
use xdan::quant::float::f32_to_bf16;
use xdan::quant::GgmlType;

use super::{data_dir, read_json};

/// NumPy's legacy `RandomState`: MT19937 seeded by `init_genrand`, doubles from two draws,
/// and the polar Box–Muller Gaussian that keeps its second value for the next call.
struct LegacyRandomState {
    mt: [u32; 624],
    pos: usize,
    gauss: Option<f64>,
}

impl LegacyRandomState {
    fn new(seed: u32) -> Self {
        let mut mt = [0u32; 624];
        mt[0] = seed;
        for i in 1..624 {
            mt[i] = 1812433253u32
                .wrapping_mul(mt[i - 1] ^ (mt[i - 1] >> 30))
                .wrapping_add(i as u32);
        }
        LegacyRandomState {
            mt,
            pos: 624,
            gauss: None,
        }
    }

    fn next_u32(&mut self) -> u32 {
        if self.pos == 624 {
            for i in 0..624 {
                let y = (self.mt[i] & 0x8000_0000) | (self.mt[(i + 1) % 624] & 0x7fff_ffff);
                let mag = if y & 1 == 1 { 0x9908_b0df } else { 0 };
                self.mt[i] = self.mt[(i + 397) % 624] ^ (y >> 1) ^ mag;
            }
            self.pos = 0;
        }
        let mut y = self.mt[self.pos];
        self.pos += 1;
        y ^= y >> 11;
        y ^= (y << 7) & 0x9d2c_5680;
        y ^= (y << 15) & 0xefc6_0000;
        y ^ (y >> 18)
    }

    fn next_f64(&mut self) -> f64 {
        let a = (self.next_u32() >> 5) as f64;
        let b = (self.next_u32() >> 6) as f64;
        (a * 67108864.0 + b) / 9007199254740992.0
    }

    fn gauss(&mut self) -> f64 {
        if let Some(g) = self.gauss.take() {
            return g;
        }
        loop {
            let x1 = 2.0 * self.next_f64() - 1.0;
            let x2 = 2.0 * self.next_f64() - 1.0;
            let r2 = x1 * x1 + x2 * x2;
            if r2 < 1.0 && r2 != 0.0 {
                let f = (-2.0 * r2.ln() / r2).sqrt();
                self.gauss = Some(f * x1);
                return f * x2;
            }
        }
    }

    /// `normal(loc, scale)`: `loc + scale * gauss()`.
    fn normal(&mut self, loc: f64, scale: f64) -> f64 {
        loc + scale * self.gauss()
    }
}

struct TensorRef {
    name: String,
    ty: GgmlType,
    ne: Vec<u64>,
}

struct Refs {
    sha256: String,
    size: u64,
    tensors: Vec<TensorRef>,
}

fn refs(variant: &str) -> Refs {
    let p = data_dir().join(format!("tiny-mixtral/{variant}/refs.json"));
    let r = read_json(&p);
    let tensors = r["tensors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| TensorRef {
            name: t["name"].as_str().unwrap().to_string(),
            ty: GgmlType::from_name(t["type"].as_str().unwrap())
                .unwrap_or_else(|| panic!("{}: unknown type {}", p.display(), t["type"])),
            ne: t["ne"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap())
                .collect(),
        })
        .collect();
    Refs {
        sha256: r["model_sha256"].as_str().unwrap().to_string(),
        size: r["model_size_bytes"].as_u64().unwrap(),
        tensors,
    }
}

/// The F32 weights of every tensor, drawn in the F32 file's tensor order.
fn f32_weights(tensors: &[TensorRef]) -> HashMap<String, Vec<f32>> {
    let mut rng = LegacyRandomState::new(1234);
    let mut out = HashMap::new();
    for t in tensors {
        let n: u64 = t.ne.iter().product();
        // NumPy's shape is `ne` reversed, so its row-major draw order is the GGML element order,
        // and a linear layer's fan_in is `ne[0]` (for the 3-D expert tensors too).
        let (loc, scale) = if t.name == "token_embd.weight" {
            (0.0, 1.0)
        } else if t.name.ends_with("_norm.weight") {
            (1.0, 0.1)
        } else {
            (0.0, (1.0 / t.ne[0] as f64).sqrt())
        };
        let v: Vec<f32> = (0..n).map(|_| rng.normal(loc, scale) as f32).collect();
        out.insert(t.name.clone(), v);
    }
    out
}

fn template() -> Gguf {
    let p = super::tiny_mixtral("F16");
    Gguf::open(&p, false).unwrap_or_else(|e| panic!("{}: {}", p.display(), e.message))
}

fn build(
    variant: &str,
    template: &Gguf,
    weights: &HashMap<String, Vec<f32>>,
    tensors: &[TensorRef],
) -> Vec<u8> {
    let mut w = GgufWriter::new();
    match variant {
        "F32" => {
            for (k, v) in template.metadata() {
                w.set(k, v.clone());
            }
            w.set_u32("general.file_type", 0);
        }
        "BF16" => {
            for (k, v) in template.metadata() {
                if k != "general.quantization_version" && k != "general.file_type" {
                    w.set(k, v.clone());
                }
            }
            w.set_u32("general.quantization_version", 2);
            w.set_u32("general.file_type", 32);
        }
        _ => panic!("no regeneration recipe for tiny-mixtral {variant}"),
    }
    for t in tensors {
        let v = &weights[&t.name];
        let data: Vec<u8> = match t.ty {
            GgmlType::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            GgmlType::BF16 => v
                .iter()
                .flat_map(|&x| f32_to_bf16(x).to_le_bytes())
                .collect(),
            other => panic!(
                "{variant}: tensor {} has type {other:?}, which this recipe does not make",
                t.name
            ),
        };
        w.add_tensor(&t.name, &t.ne, t.ty, data).unwrap();
    }
    w.to_bytes()
}

/// Names the first tensor whose regenerated values, rounded to F16, differ from the stored F16
/// file: the place to look when the F32 hash does not match.
fn first_f16_mismatch(
    template: &Gguf,
    weights: &HashMap<String, Vec<f32>>,
    tensors: &[TensorRef],
) -> String {
    for t in tensors {
        let info = template.tensor(&t.name).unwrap();
        let data = template.tensor_data(info);
        let v = &weights[&t.name];
        for (i, &x) in v.iter().enumerate() {
            let ok = match info.ty {
                GgmlType::F16 => {
                    half::f16::from_f32(x).to_bits()
                        == u16::from_le_bytes([data[2 * i], data[2 * i + 1]])
                }
                GgmlType::F32 => {
                    x.to_bits()
                        == u32::from_le_bytes([
                            data[4 * i],
                            data[4 * i + 1],
                            data[4 * i + 2],
                            data[4 * i + 3],
                        ])
                }
                _ => true,
            };
            if !ok {
                return format!(
                    "tensor {} element {i} (value {x:e}) differs from the F16 file",
                    t.name
                );
            }
        }
    }
    "every tensor agrees with the F16 file".into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn fixtures_dir() -> PathBuf {
    // CARGO_TARGET_TMPDIR is `<target>/tmp`; the regenerated models go beside it.
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent().unwrap_or(tmp).join("fixtures")
}

/// Writes the regenerated F32 and BF16 files (once per process), checks both against their
/// `refs.json` and returns their paths.
fn regenerate_all() -> HashMap<String, PathBuf> {
    let tmpl = template();
    let f32_refs = refs("F32");
    let weights = f32_weights(&f32_refs.tensors);
    let dir = fixtures_dir();
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut out = HashMap::new();
    for variant in ["F32", "BF16"] {
        let r = if variant == "F32" {
            refs("F32")
        } else {
            refs("BF16")
        };
        let bytes = build(variant, &tmpl, &weights, &r.tensors);
        let sha = hex(&Sha256::digest(&bytes));
        if sha != r.sha256 || bytes.len() as u64 != r.size {
            panic!(
                "regenerated tiny-mixtral {variant}: sha256 {sha}, {} bytes; refs.json wants {}, {} bytes ({})",
                bytes.len(),
                r.sha256,
                r.size,
                first_f16_mismatch(&tmpl, &weights, &f32_refs.tensors)
            );
        }
        // Written under a per-process name, then renamed: test binaries running at the same
        // time never see a partial file.
        let path = dir.join(format!("tiny-mixtral-{variant}.gguf"));
        let part = dir.join(format!(
            "tiny-mixtral-{variant}.gguf.{}",
            std::process::id()
        ));
        std::fs::write(&part, &bytes).unwrap_or_else(|e| panic!("{}: {e}", part.display()));
        std::fs::rename(&part, &path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        out.insert(variant.to_string(), path);
    }
    out
}

static REGENERATED: Mutex<Option<HashMap<String, PathBuf>>> = Mutex::new(None);

/// The path of the regenerated, sha256-checked tiny-mixtral `variant` (`F32` or `BF16`).
/// Panics with the hashes if the regenerated file is not the reference one.
pub fn regenerated(variant: &str) -> PathBuf {
    let mut g = REGENERATED.lock().unwrap_or_else(|e| e.into_inner());
    let files = g.get_or_insert_with(regenerate_all);
    files
        .get(variant)
        .unwrap_or_else(|| panic!("tiny-mixtral {variant} is stored, not regenerated"))
        .clone()
}
