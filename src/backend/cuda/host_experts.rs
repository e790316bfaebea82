//! Experts kept in host memory, for MoE models whose experts do not all fit on the GPU: which
//! experts of a stacked expert tensor the device buffer holds, and the whole tensor as the CPU
//! backend reads it (from the file's memory map, no copy) so that the CPU computes the others.
//!
//! A layer's feed-forward then routes on the GPU, brings the chosen ids and the normalized input
//! to the host, and splits the work: the GPU runs the routed slots whose expert it holds while
//! the CPU runs the others; the CPU's weighted sum is added to the GPU's.

use std::collections::HashMap;

use crate::backend::cpu::CpuWeight;
use crate::error::{Error, Result};

/// Which experts of each stacked expert tensor (by tensor name) stay on the device. A tensor
/// not named keeps all of its experts there.
pub type ExpertPlan = HashMap<String, Vec<bool>>;

/// An expert tensor's split between device and host.
pub struct HostExperts {
    /// Per expert id: its index among the experts in the device buffer, or None where it
    /// stays in host memory.
    pub slot: Vec<Option<u32>>,
    /// The whole tensor (every expert) as the CPU backend reads it; the CPU computes only the
    /// experts without a slot.
    pub cpu: CpuWeight,
}

impl HostExperts {
    /// The split of a tensor whose experts `resident[e]` stay on the device, in id order.
    pub fn new(resident: &[bool], cpu: CpuWeight) -> HostExperts {
        let mut next = 0u32;
        let slot = resident
            .iter()
            .map(|&r| {
                r.then(|| {
                    next += 1;
                    next - 1
                })
            })
            .collect();
        HostExperts { slot, cpu }
    }

    /// Experts in the device buffer.
    pub fn n_resident(&self) -> usize {
        self.slot.iter().flatten().count()
    }

    /// Whether expert `e` stays in host memory.
    pub fn on_host(&self, e: usize) -> bool {
        self.slot.get(e).is_some_and(|s| s.is_none())
    }

    /// The routing as the device's kernels must see it: a resident expert's id becomes its
    /// index in the device buffer; a slot routed to a host expert gets the first resident
    /// expert and weight 0, so the device computes a share that its weighted sum drops (it never
    /// reads an expert it does not hold, and its launches keep their shape). Returns whether any
    /// slot was routed to the host; an id outside the tensor is an error naming it.
    pub fn device_route(&self, ids: &[u32], wts: &[f32], dev_ids: &mut Vec<u32>, dev_wts: &mut Vec<f32>) -> Result<bool> {
        let first = self.slot.iter().flatten().next().copied().unwrap_or(0);
        dev_ids.clear();
        dev_wts.clear();
        let mut any = false;
        for (&id, &w) in ids.iter().zip(wts) {
            match self.slot.get(id as usize) {
                Some(Some(s)) => {
                    dev_ids.push(*s);
                    dev_wts.push(w);
                }
                Some(None) => {
                    dev_ids.push(first);
                    dev_wts.push(0.0);
                    any = true;
                }
                None => return Err(Error::internal(format!("router chose expert {id} of {}", self.slot.len()))),
            }
        }
        Ok(any)
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
        assert_eq!(h.slot, [None, Some(0), None, Some(1)]);
        assert_eq!(h.n_resident(), 2);
        assert!(h.on_host(0) && !h.on_host(1) && !h.on_host(9));
        let (mut di, mut dw) = (Vec::new(), Vec::new());
        assert!(!h.device_route(&[3, 1], &[0.75, 0.25], &mut di, &mut dw).unwrap());
        assert_eq!((di.as_slice(), dw.as_slice()), (&[1, 0][..], &[0.75, 0.25][..]));
        assert!(h.device_route(&[3, 0, 2, 1], &[0.5, 0.5, 0.9, 0.1], &mut di, &mut dw).unwrap());
        assert_eq!((di.as_slice(), dw.as_slice()), (&[1, 0, 0, 0][..], &[0.5, 0.0, 0.0, 0.1][..]));
        let e = h.device_route(&[4, 1], &[0.5, 0.5], &mut di, &mut dw).unwrap_err();
        assert!(e.message.contains("expert 4 of 4"), "{}", e.message);
    }
}
