//! Experts kept in host memory, for MoE models whose experts do not all fit on the GPU: which
//! experts of a stacked expert tensor the device buffer holds, and the whole tensor as the CPU
//! backend reads it (from the file's memory map, no copy) so that the CPU computes the others.
//!
//! A layer's feed-forward then routes on the GPU, brings the chosen ids and the normalized input
//! to the host, and splits the work: the GPU runs the routed slots whose expert it holds while
//! the CPU runs the others; the CPU's weighted sum is added to the GPU's.
//!
//! Which experts the device holds follows the routing: each layer counts how often the router
//! picks each expert, and at intervals an expert the host computes that the router picks
//! clearly more often than one the device holds takes that one's place in the device buffer
//! ([`HostExperts::moves`]); the other returns to being read from the memory map.

use std::collections::HashMap;

use parking_lot::Mutex;

use crate::backend::cpu::CpuWeight;
use crate::error::{Error, Result};

/// Which experts of each stacked expert tensor (by tensor name) the device holds first. A
/// tensor not named keeps all of its experts there.
pub type ExpertPlan = HashMap<String, Vec<bool>>;

/// Routed slots per layer between two looks at its counts (see [`HostExperts::moves`]), unless
/// `XDAN_CUDA_REBALANCE_SLOTS` says otherwise (0: experts never move): 128 decode tokens of a
/// top-2 model, few enough that a prompt's or a conversation's experts come over early, many
/// enough that one expert's upload per layer (a few ms over PCIe) is rare beside the tokens.
pub const REBALANCE_SLOTS: u64 = 256;

/// A host expert takes a device expert's place only when picked more than
/// `LEAD_NUM / LEAD_DEN` times as often, plus [`LEAD_MIN`]: two experts about as hot would
/// otherwise trade places back and forth, each time at the cost of an upload.
const LEAD_NUM: u64 = 3;
const LEAD_DEN: u64 = 2;
const LEAD_MIN: u64 = 2;

/// Which experts a device buffer holds, at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slots(
    /// Per expert id: its place among the experts in the device buffer, or None where it stays
    /// in host memory.
    pub Vec<Option<u32>>,
);

impl Slots {
    /// Experts in the device buffer.
    pub fn n_resident(&self) -> usize {
        self.0.iter().flatten().count()
    }

    /// Whether expert `e` stays in host memory.
    pub fn on_host(&self, e: usize) -> bool {
        self.0.get(e).is_some_and(|s| s.is_none())
    }

    /// The routing as the device's kernels must see it: a resident expert's id becomes its
    /// place in the device buffer; a slot routed to a host expert gets the first resident
    /// expert and weight 0, so the device computes a share that its weighted sum drops (it never
    /// reads an expert it does not hold, and its launches keep their shape). Returns whether any
    /// slot was routed to the host; an id outside the tensor is an error naming it.
    pub fn device_route(&self, ids: &[u32], wts: &[f32], dev_ids: &mut Vec<u32>, dev_wts: &mut Vec<f32>) -> Result<bool> {
        let first = self.0.iter().flatten().next().copied().unwrap_or(0);
        dev_ids.clear();
        dev_wts.clear();
        let mut any = false;
        for (&id, &w) in ids.iter().zip(wts) {
            match self.0.get(id as usize) {
                Some(Some(s)) => {
                    dev_ids.push(*s);
                    dev_wts.push(w);
                }
                Some(None) => {
                    dev_ids.push(first);
                    dev_wts.push(0.0);
                    any = true;
                }
                None => return Err(Error::internal(format!("router chose expert {id} of {}", self.0.len()))),
            }
        }
        Ok(any)
    }
}

/// The placement of one tensor's experts and the layer's routing counts.
struct State {
    slots: Slots,
    /// Per expert: how often the router picked it, halved at each look.
    hits: Vec<u64>,
    /// Slots routed since the last look.
    since: u64,
}

/// An expert tensor's split between device and host.
pub struct HostExperts {
    state: Mutex<State>,
    /// Places in the device buffer: the experts first placed there. A place stays in use while
    /// experts trade places (one left empty by a failed upload is never routed to again).
    pub n_places: usize,
    /// The whole tensor (every expert) as the CPU backend reads it; the CPU computes only the
    /// experts without a place on the device.
    pub cpu: CpuWeight,
}

impl HostExperts {
    /// The split of a tensor whose experts `resident[e]` stay on the device, in id order.
    pub fn new(resident: &[bool], cpu: CpuWeight) -> HostExperts {
        let mut next = 0u32;
        let slots = Slots(
            resident
                .iter()
                .map(|&r| {
                    r.then(|| {
                        next += 1;
                        next - 1
                    })
                })
                .collect(),
        );
        let state = State { hits: vec![0; resident.len()], since: 0, slots };
        HostExperts { state: Mutex::new(state), n_places: next as usize, cpu }
    }

    /// Which experts the device buffer holds now.
    pub fn slots(&self) -> Slots {
        self.state.lock().slots.clone()
    }

    /// Counts the experts of routed slots `ids` (ids outside the tensor are left to
    /// [`Slots::device_route`] to refuse).
    pub fn record(&self, ids: &[u32]) {
        let mut s = self.state.lock();
        for &id in ids {
            if let Some(h) = s.hits.get_mut(id as usize) {
                *h += 1;
            }
        }
        s.since += ids.len() as u64;
    }

    /// Once `every` routed slots have been counted since the last look (never for 0): the
    /// trades of place due, as (host expert, device expert) pairs, the hottest host expert with
    /// the coldest device one first, at most one pair per `every` slots counted, each only where
    /// the host expert was picked clearly more often ([`LEAD_NUM`]). The counts are then halved,
    /// so they follow a routing that changes. The caller moves the data and then records each
    /// trade with [`Self::trade`] on every tensor of the layer.
    pub fn moves(&self, every: u64) -> Vec<(usize, usize)> {
        let mut s = self.state.lock();
        if every == 0 || s.since < every {
            return Vec::new();
        }
        let n = s.hits.len();
        let mut host: Vec<usize> = (0..n).filter(|&e| s.slots.0[e].is_none()).collect();
        let mut dev: Vec<usize> = (0..n).filter(|&e| s.slots.0[e].is_some()).collect();
        // Stable sorts: among equal counts the lower id goes first to the device and last
        // to the host.
        host.sort_by_key(|&e| std::cmp::Reverse(s.hits[e]));
        dev.sort_by_key(|&e| (s.hits[e], std::cmp::Reverse(e)));
        let budget = (s.since / every) as usize;
        let out: Vec<(usize, usize)> = host
            .iter()
            .zip(&dev)
            .take(budget)
            .take_while(|&(&h, &d)| s.hits[h] * LEAD_DEN > s.hits[d] * LEAD_NUM + LEAD_MIN * LEAD_DEN)
            .map(|(&h, &d)| (h, d))
            .collect();
        for h in s.hits.iter_mut() {
            *h /= 2;
        }
        s.since = 0;
        out
    }

    /// Host expert `to_device` takes device expert `to_host`'s place (its data already there).
    pub fn trade(&self, to_device: usize, to_host: usize) {
        let mut s = self.state.lock();
        let p = s.slots.0[to_host].take();
        s.slots.0[to_device] = p;
    }

    /// Device expert `e` gives up its place without another taking it (its place's data is no
    /// longer its own: an upload into it failed).
    pub fn evict(&self, e: usize) {
        self.state.lock().slots.0[e] = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::CpuBackend;
    use crate::backend::Backend;
    use crate::gguf::{Gguf, GgufWriter};
    use std::sync::Arc;

    /// Four experts of 2 rows of 4 values.
    fn weight() -> CpuWeight {
        let mut w = GgufWriter::new();
        w.add_f32("t", &[4, 2, 4], &[0.0; 32]).unwrap();
        let g = Arc::new(Gguf::from_bytes(w.to_bytes()).unwrap());
        CpuBackend.weight(&g, &g.tensors()[0]).unwrap()
    }

    #[test]
    fn device_route_maps_resident_experts_and_drops_host_ones() {
        let h = HostExperts::new(&[false, true, false, true], weight());
        let s = h.slots();
        assert_eq!(s.0, [None, Some(0), None, Some(1)]);
        assert_eq!((s.n_resident(), h.n_places), (2, 2));
        assert!(s.on_host(0) && !s.on_host(1) && !s.on_host(9));
        let (mut di, mut dw) = (Vec::new(), Vec::new());
        assert!(!s.device_route(&[3, 1], &[0.75, 0.25], &mut di, &mut dw).unwrap());
        assert_eq!((di.as_slice(), dw.as_slice()), (&[1, 0][..], &[0.75, 0.25][..]));
        assert!(s.device_route(&[3, 0, 2, 1], &[0.5, 0.5, 0.9, 0.1], &mut di, &mut dw).unwrap());
        assert_eq!((di.as_slice(), dw.as_slice()), (&[1, 0, 0, 0][..], &[0.5, 0.0, 0.0, 0.1][..]));
        let e = s.device_route(&[4, 1], &[0.5, 0.5], &mut di, &mut dw).unwrap_err();
        assert!(e.message.contains("expert 4 of 4"), "{}", e.message);
    }

    #[test]
    fn hot_host_experts_trade_places_with_cold_device_ones() {
        // Experts 1 and 3 on the device.
        let h = HostExperts::new(&[false, true, false, true], weight());
        // Fewer slots than the interval: no look yet.
        h.record(&[0, 0, 0, 2, 2, 0]);
        assert!(h.moves(8).is_empty());
        // 8 counted: 0 picked 5 times, 2 twice, 3 once, 1 never; 0 leads 1 clearly, 2 does
        // not lead 3 clearly (2 <= 1.5 + 2), and one trade per 8 slots.
        h.record(&[3, 0]);
        assert_eq!(h.moves(8), [(0, 1)]);
        h.trade(0, 1);
        assert_eq!(h.slots().0, [Some(0), None, None, Some(1)]);
        // The counts were halved (0: 2, 2: 1, 3: 0): 16 more slots allow two trades; 2 now
        // leads both device experts, 1 leads none.
        h.record(&[2; 10]);
        h.record(&[0, 0, 0, 0, 3, 3]);
        assert_eq!(h.moves(8), [(2, 3)]);
        h.trade(2, 3);
        assert_eq!(h.slots().0, [Some(0), None, Some(1), None]);
        // A failed upload leaves the place empty; the other device expert stays.
        h.evict(2);
        assert_eq!(h.slots().n_resident(), 1);
        assert_eq!(h.n_places, 2);
        // 0 means never.
        h.record(&[1; 100]);
        assert!(h.moves(0).is_empty());
        // Two host experts far hotter than the one expert left on the device: one trade.
        h.record(&[1; 20]);
        h.record(&[3; 20]);
        assert_eq!(h.moves(20).len(), 1);
    }
}
