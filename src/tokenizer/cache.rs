//! A bounded memo of pre-token → ids. A pre-token's ids depend on its bytes alone, so repeated
//! words skip the merge work; the memo only fills up to its capacity (no eviction), and a writer
//! that would wait on another thread just skips the insert.

use parking_lot::RwLock;

use super::vocab::FxMap;
use super::Token;

const CAPACITY: usize = 1 << 16;
const MAX_KEY: usize = 64;

#[derive(Default)]
pub(crate) struct WordCache {
    map: RwLock<FxMap<Box<[u8]>, Box<[Token]>>>,
}

impl WordCache {
    /// Appends the ids of `key` to `out` if known.
    pub fn get(&self, key: &[u8], out: &mut Vec<Token>) -> bool {
        match self.map.read().get(key) {
            Some(ids) => {
                out.extend_from_slice(ids);
                true
            }
            None => false,
        }
    }

    pub fn insert(&self, key: &[u8], ids: &[Token]) {
        if key.len() > MAX_KEY {
            return;
        }
        if let Some(mut map) = self.map.try_write() {
            if map.len() < CAPACITY {
                map.insert(key.into(), ids.into());
            }
        }
    }
}
