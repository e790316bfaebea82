//! The file format of one saved sequence (tokens, last logits, K/V rows of every layer).
//!
//! Little-endian: magic `XDANKVS\0`, version u32, model fingerprint u64, KV type id u32,
//! n_layer u32, n_embd_kv u32, n_vocab u32, n_tokens u32, has_logits u32, the tokens (i32 each),
//! the logits (n_vocab f32, when present), then per layer the K rows then the V rows of every
//! token (raw KV-type rows), then an FNV-1a 64 checksum of everything before it.

use crate::error::{Error, Result};
use crate::tokenizer::Token;

pub const MAGIC: &[u8; 8] = b"XDANKVS\0";
pub const VERSION: u32 = 1;
const HEADER: usize = 8 + 4 + 8 + 4 * 6;

#[derive(Clone, Debug, PartialEq)]
pub struct SavedSeq {
    pub fingerprint: u64,
    pub kv_type: u32,
    pub n_layer: u32,
    pub n_embd_kv: u32,
    pub n_vocab: u32,
    pub tokens: Vec<Token>,
    pub logits: Option<Vec<f32>>,
    /// Per layer: K rows then V rows.
    pub layers: Vec<Vec<u8>>,
}

pub fn fnv1a(b: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &x in b {
        h ^= x as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

impl SavedSeq {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut o = Vec::new();
        o.extend_from_slice(MAGIC);
        o.extend_from_slice(&VERSION.to_le_bytes());
        o.extend_from_slice(&self.fingerprint.to_le_bytes());
        for v in [self.kv_type, self.n_layer, self.n_embd_kv, self.n_vocab, self.tokens.len() as u32, self.logits.is_some() as u32] {
            o.extend_from_slice(&v.to_le_bytes());
        }
        for t in &self.tokens {
            o.extend_from_slice(&t.to_le_bytes());
        }
        if let Some(l) = &self.logits {
            for v in l {
                o.extend_from_slice(&v.to_le_bytes());
            }
        }
        for l in &self.layers {
            o.extend_from_slice(l);
        }
        let h = fnv1a(&o);
        o.extend_from_slice(&h.to_le_bytes());
        o
    }

    /// Parses and checks a saved sequence; `row_bytes(kv_type, n_embd_kv)` sizes the K/V rows.
    /// `what` names the file in messages.
    pub fn from_bytes(b: &[u8], what: &str, row_bytes: impl Fn(u32, u32) -> Option<usize>) -> Result<SavedSeq> {
        let bad = |m: String| Error::format(format!("{what}: {m}"));
        if b.len() < HEADER + 8 || &b[..8] != MAGIC {
            return Err(bad("not an xdan KV sequence file (bad magic or too short)".into()));
        }
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        let version = u32_at(8);
        if version != VERSION {
            return Err(bad(format!("KV file version {version} is not supported (expected {VERSION})")));
        }
        let body = &b[..b.len() - 8];
        let stored = u64::from_le_bytes(b[b.len() - 8..].try_into().unwrap());
        if fnv1a(body) != stored {
            return Err(bad("checksum mismatch: the file is truncated or corrupt".into()));
        }
        let fingerprint = u64::from_le_bytes(b[12..20].try_into().unwrap());
        let (kv_type, n_layer, n_embd_kv, n_vocab, n_tokens, has_logits) =
            (u32_at(20), u32_at(24), u32_at(28), u32_at(32), u32_at(36), u32_at(40));
        let rb = row_bytes(kv_type, n_embd_kv).ok_or_else(|| bad(format!("unknown KV type id {kv_type}")))?;
        let n = n_tokens as u64;
        let need = HEADER as u64
            + 4 * n
            + if has_logits != 0 { 4 * n_vocab as u64 } else { 0 }
            + 2 * n_layer as u64 * n * rb as u64;
        if need != body.len() as u64 {
            return Err(bad(format!("size {} does not match its header (expected {})", b.len(), need + 8)));
        }
        let mut off = HEADER;
        let tokens = (0..n_tokens as usize).map(|i| i32::from_le_bytes(b[off + 4 * i..off + 4 * i + 4].try_into().unwrap())).collect();
        off += 4 * n_tokens as usize;
        let logits = if has_logits != 0 {
            let l = (0..n_vocab as usize).map(|i| f32::from_le_bytes(b[off + 4 * i..off + 4 * i + 4].try_into().unwrap())).collect();
            off += 4 * n_vocab as usize;
            Some(l)
        } else {
            None
        };
        let per_layer = 2 * n_tokens as usize * rb;
        let layers = (0..n_layer as usize).map(|l| b[off + l * per_layer..off + (l + 1) * per_layer].to_vec()).collect();
        Ok(SavedSeq { fingerprint, kv_type, n_layer, n_embd_kv, n_vocab, tokens, logits, layers })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_corruption() {
        let s = SavedSeq {
            fingerprint: 42,
            kv_type: 0,
            n_layer: 2,
            n_embd_kv: 4,
            n_vocab: 3,
            tokens: vec![1, 2],
            logits: Some(vec![0.5, 1.0, -1.0]),
            layers: vec![vec![7u8; 2 * 2 * 16], vec![9u8; 2 * 2 * 16]],
        };
        let rb = |_t: u32, n: u32| Some(n as usize * 4);
        let b = s.to_bytes();
        assert_eq!(SavedSeq::from_bytes(&b, "f", rb).unwrap(), s);
        let e = SavedSeq::from_bytes(&b[..b.len() - 1], "f", rb).unwrap_err();
        assert_eq!(e.kind, crate::ErrorKind::Format);
        let mut c = b.clone();
        c[50] ^= 1;
        assert!(SavedSeq::from_bytes(&c, "f", rb).unwrap_err().message.contains("checksum"));
    }
}
