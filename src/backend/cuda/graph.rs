//! Deferred launches and graph replay: a device's launches and device-to-device copies are
//! queued instead of issued, and the queue is issued when the host next needs a result (a
//! download, a synchronize, a free). A queue identical to the previous one — a decode step is
//! the same launches with the same arguments step after step, only the metadata the kernels read
//! from device memory changes — is captured once as a CUDA graph and from then on replayed
//! with one call, which removes the per-launch cost of the host and the driver.
//!
//! Uploads of per-step metadata (`upload_async`) are queued too and issued before the queue's
//! launches. That reordering is safe because a metadata upload always fills a whole buffer
//! which kernels receive by its start address: the upload is held back only when no queued op
//! was given an address inside its destination; otherwise the queue is issued first.
//!
//! The recorder is device-independent: the GPU captures real graphs ([`super::gpu`]), the
//! emulator keeps the captured op list and replays it, so the tests exercise the same decisions.

use std::collections::HashMap;

use super::device::{Arg, DevPtr};
use crate::error::{Error, Result};

/// Kernel parameters one launch may carry.
pub const MAX_ARGS: usize = 16;
/// Queues shorter than this are issued directly (capturing costs more than it saves).
const MIN_GRAPH_OPS: usize = 8;
/// Captured graphs kept (least recently used dropped): a few contexts' decode shapes.
const MAX_GRAPHS: usize = 6;
/// The kernel id of a device-to-device copy (`args`: dst, src, bytes).
pub const COPY: u32 = u32::MAX;

/// One queued launch or copy, plain data so that queues compare with one memory comparison.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Op {
    /// An id from [`Recorder::kernel_id`], or [`COPY`].
    pub kernel: u32,
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub smem: u32,
    pub n_args: u32,
    /// Each parameter in an 8-byte cell, its value at the cell's start (little-endian), as the
    /// driver reads parameters of any size from the cell its pointer points at.
    pub args: [u64; MAX_ARGS],
}

impl Op {
    pub fn launch(kernel: u32, grid: [u32; 3], block: [u32; 3], smem: u32, args: &[Arg]) -> Result<Op> {
        if args.len() > MAX_ARGS {
            return Err(Error::internal(format!("a launch with {} parameters (at most {MAX_ARGS})", args.len())));
        }
        let mut cells = [0u64; MAX_ARGS];
        for (c, a) in cells.iter_mut().zip(args) {
            *c = match *a {
                Arg::Ptr(p) => p,
                Arg::I64(v) => v as u64,
                Arg::I32(v) => v as u32 as u64,
                Arg::F32(v) => v.to_bits() as u64,
            };
        }
        Ok(Op { kernel, grid, block, smem, n_args: args.len() as u32, args: cells })
    }

    pub fn copy(dst: DevPtr, src: DevPtr, bytes: usize) -> Op {
        let mut args = [0u64; MAX_ARGS];
        args[0] = dst;
        args[1] = src;
        args[2] = bytes as u64;
        Op { kernel: COPY, grid: [0; 3], block: [0; 3], smem: 0, n_args: 3, args }
    }

    /// The driver's parameter array for this op's launch: a pointer to each of `cells` (a copy
    /// of [`Op::args`] that outlives the call).
    pub fn param_ptrs(&self, cells: &mut [u64; MAX_ARGS]) -> Vec<*mut std::ffi::c_void> {
        cells[..self.n_args as usize].iter_mut().map(|c| c as *mut u64 as *mut std::ffi::c_void).collect()
    }

    /// Whether this op was handed an address in `[p, p + len)` (for a copy: its ranges meet it).
    fn touches(&self, p: DevPtr, len: u64) -> bool {
        let end = p + len.max(1);
        if self.kernel == COPY {
            let n = self.args[2];
            return [self.args[0], self.args[1]].iter().any(|&a| a < end && p < a + n.max(1));
        }
        self.args[..self.n_args as usize].iter().any(|&c| c >= p && c < end)
    }
}

/// What the recorder needs from a device to issue its queue.
pub trait Exec {
    type Graph;
    /// A handle for kernel `name`, or an error naming it when the device has no such kernel.
    fn resolve(&self, name: &str) -> Result<usize>;
    /// Issues an upload now, without waiting for it.
    ///
    /// # Safety
    /// `[dst, dst + bytes.len())` lies inside one allocation.
    unsafe fn upload_now(&self, dst: DevPtr, bytes: &[u8]) -> Result<()>;
    /// Issues one op now; `handle` is its kernel's [`Exec::resolve`] result (unused for a copy).
    ///
    /// # Safety
    /// The op's arguments match its kernel and address valid memory.
    unsafe fn issue(&self, handle: usize, op: &Op) -> Result<()>;
    /// Captures `ops` (with their kernels' handles) as a graph, without running them.
    ///
    /// # Safety
    /// As `issue`, for every op.
    unsafe fn capture(&self, ops: &[Op], handles: &[usize]) -> Result<Self::Graph>;
    /// Runs a captured graph after everything issued before.
    ///
    /// # Safety
    /// The memory the graph's ops address is still valid.
    unsafe fn replay(&self, g: &Self::Graph) -> Result<()>;
    /// Releases a graph.
    fn release(&self, g: Self::Graph);
}

struct Cached<G> {
    ops: Vec<Op>,
    graph: G,
    used: u64,
}

/// A device's queue of ops and its captured graphs.
pub struct Recorder<G> {
    ids: HashMap<String, u32>,
    handles: Vec<usize>,
    pending: Vec<Op>,
    uploads: Vec<(DevPtr, Vec<u8>)>,
    /// The previously issued queue: a queue seen twice in a row is worth capturing.
    prev: Vec<Op>,
    graphs: Vec<Cached<G>>,
    graphs_on: bool,
    clock: u64,
    /// An error raised while issuing the queue where no caller could take it (a free): the
    /// next flush reports it.
    error: Option<Error>,
    /// Counters for tests and diagnostics.
    pub stats: Stats,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Queues issued op by op.
    pub direct: u64,
    /// Queues captured as a graph.
    pub captured: u64,
    /// Queues run by replaying a captured graph.
    pub replayed: u64,
}

impl<G> Recorder<G> {
    /// `graphs`: whether repeated queues may be captured as graphs.
    pub fn new(graphs: bool) -> Recorder<G> {
        Recorder {
            ids: HashMap::new(),
            handles: Vec::new(),
            pending: Vec::new(),
            uploads: Vec::new(),
            prev: Vec::new(),
            graphs: Vec::new(),
            graphs_on: graphs,
            clock: 0,
            error: None,
            stats: Stats::default(),
        }
    }

    /// The id of kernel `name`, resolved by the device the first time (an unknown kernel fails
    /// here, at the launch that names it).
    pub fn kernel_id<E: Exec<Graph = G>>(&mut self, e: &E, name: &str) -> Result<u32> {
        if let Some(&id) = self.ids.get(name) {
            return Ok(id);
        }
        let h = e.resolve(name)?;
        let id = self.handles.len() as u32;
        self.handles.push(h);
        self.ids.insert(name.to_string(), id);
        Ok(id)
    }

    pub fn push(&mut self, op: Op) {
        self.pending.push(op);
    }

    /// Queues an upload ahead of the queued ops, or — when one of them addresses the
    /// destination — issues the queue and then the upload.
    ///
    /// # Safety
    /// As [`Exec::upload_now`].
    pub unsafe fn upload<E: Exec<Graph = G>>(&mut self, e: &E, dst: DevPtr, bytes: &[u8]) -> Result<()> {
        let len = bytes.len() as u64;
        let clash = self.pending.iter().any(|op| op.touches(dst, len)) || self.uploads.iter().any(|(d, b)| *d < dst + len.max(1) && dst < d + (b.len() as u64).max(1));
        if clash {
            self.flush(e)?;
            return e.upload_now(dst, bytes);
        }
        self.uploads.push((dst, bytes.to_vec()));
        Ok(())
    }

    /// Issues everything queued: the uploads, then the ops — by replaying a graph captured from
    /// an identical queue, by capturing one when the previous queue was identical, or one by one.
    ///
    /// # Safety
    /// Every queued op's memory is still valid.
    pub unsafe fn flush<E: Exec<Graph = G>>(&mut self, e: &E) -> Result<()> {
        let uploads = std::mem::take(&mut self.uploads);
        let ops = std::mem::take(&mut self.pending);
        for (dst, b) in &uploads {
            if let Err(err) = e.upload_now(*dst, b) {
                self.prev.clear();
                return Err(err);
            }
        }
        // An empty queue (a second download, a free) leaves the previous queue in place.
        let r = if ops.is_empty() {
            self.pending = ops;
            Ok(())
        } else {
            let r = self.run(e, &ops);
            let mut old = std::mem::replace(&mut self.prev, ops);
            old.clear();
            self.pending = old;
            r
        };
        match self.error.take() {
            Some(err) => Err(err),
            None => r,
        }
    }

    /// [`Recorder::flush`] where the caller cannot report an error: it is kept for the next flush.
    ///
    /// # Safety
    /// As `flush`.
    pub unsafe fn flush_keeping_error<E: Exec<Graph = G>>(&mut self, e: &E) {
        if let Err(err) = self.flush(e) {
            self.error.get_or_insert(err);
        }
    }

    unsafe fn run<E: Exec<Graph = G>>(&mut self, e: &E, ops: &[Op]) -> Result<()> {
        self.clock += 1;
        if self.graphs_on && ops.len() >= MIN_GRAPH_OPS {
            if let Some(c) = self.graphs.iter_mut().find(|c| c.ops == ops) {
                c.used = self.clock;
                self.stats.replayed += 1;
                return e.replay(&c.graph);
            }
            if ops == self.prev.as_slice() {
                let handles: Vec<usize> = ops.iter().map(|o| if o.kernel == COPY { 0 } else { self.handles[o.kernel as usize] }).collect();
                match e.capture(ops, &handles) {
                    Ok(graph) => {
                        if self.graphs.len() >= MAX_GRAPHS {
                            let (i, _) = self.graphs.iter().enumerate().min_by_key(|(_, c)| c.used).unwrap();
                            e.release(self.graphs.swap_remove(i).graph);
                        }
                        self.stats.captured += 1;
                        self.graphs.push(Cached { ops: ops.to_vec(), graph, used: self.clock });
                        return e.replay(&self.graphs.last().unwrap().graph);
                    }
                    Err(err) => {
                        // Graphs are an optimization: without them every queue goes op by op.
                        crate::log::debug!("CUDA graphs off: {}", err.message);
                        self.graphs_on = false;
                    }
                }
            }
        }
        self.stats.direct += 1;
        for o in ops {
            let h = if o.kernel == COPY { 0 } else { self.handles[o.kernel as usize] };
            e.issue(h, o)?;
        }
        Ok(())
    }

    /// Turns capturing (and replaying) on or off from now on.
    pub fn set_graphs(&mut self, on: bool) {
        self.graphs_on = on;
    }

    /// Releases every captured graph (before the device goes away).
    pub fn release_all<E: Exec<Graph = G>>(&mut self, e: &E) {
        for c in self.graphs.drain(..) {
            e.release(c.graph);
        }
    }
}

/// `XDAN_CUDA_GRAPHS=0` issues every queue op by op (a diagnostic switch).
pub fn graphs_enabled() -> bool {
    static V: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *V.get_or_init(|| std::env::var("XDAN_CUDA_GRAPHS").map_or(true, |v| v != "0"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// Memory of 8-byte words addressed from 1000; "kernels": `set` writes args[1] at args[0],
    /// `add` adds the word at args[1] into the word at args[0].
    struct Fake {
        mem: RefCell<Vec<u64>>,
        log: RefCell<Vec<String>>,
    }
    impl Fake {
        fn at(&self, p: u64) -> usize {
            ((p - 1000) / 8) as usize
        }
        fn run(&self, h: usize, op: &Op) {
            let mut m = self.mem.borrow_mut();
            match h {
                0 => {
                    let i = self.at(op.args[0]);
                    m[i] = op.args[1];
                }
                _ => {
                    let (i, j) = (self.at(op.args[0]), self.at(op.args[1]));
                    m[i] += m[j];
                }
            }
        }
    }
    impl Exec for Fake {
        type Graph = Vec<(usize, Op)>;
        fn resolve(&self, name: &str) -> Result<usize> {
            match name {
                "set" => Ok(0),
                "add" => Ok(1),
                _ => Err(Error::internal(format!("no kernel named {name}"))),
            }
        }
        unsafe fn upload_now(&self, dst: DevPtr, bytes: &[u8]) -> Result<()> {
            let i = self.at(dst);
            self.mem.borrow_mut()[i] = u64::from_le_bytes(bytes.try_into().unwrap());
            self.log.borrow_mut().push("upload".into());
            Ok(())
        }
        unsafe fn issue(&self, h: usize, op: &Op) -> Result<()> {
            self.run(h, op);
            self.log.borrow_mut().push("op".into());
            Ok(())
        }
        unsafe fn capture(&self, ops: &[Op], handles: &[usize]) -> Result<Self::Graph> {
            self.log.borrow_mut().push("capture".into());
            Ok(handles.iter().copied().zip(ops.iter().copied()).collect())
        }
        unsafe fn replay(&self, g: &Self::Graph) -> Result<()> {
            for (h, op) in g {
                self.run(*h, op);
            }
            self.log.borrow_mut().push("replay".into());
            Ok(())
        }
        fn release(&self, _: Self::Graph) {}
    }

    /// One "step": upload a value to word 0, then 9 ops that accumulate it into word 1
    /// (`n` adds) — kernels read the uploaded metadata by address, as the backend's do.
    unsafe fn step(r: &mut Recorder<Vec<(usize, Op)>>, f: &Fake, value: u64, n: usize) {
        let add = r.kernel_id(f, "add").unwrap();
        let set = r.kernel_id(f, "set").unwrap();
        r.push(Op::launch(set, [1; 3], [1; 3], 0, &[Arg::Ptr(1008), Arg::I64(0)]).unwrap());
        r.upload(f, 1000, &value.to_le_bytes()).unwrap();
        for _ in 0..n {
            r.push(Op::launch(add, [1; 3], [1; 3], 0, &[Arg::Ptr(1008), Arg::Ptr(1000)]).unwrap());
        }
        r.flush(f).unwrap();
    }

    #[test]
    fn repeated_queues_are_captured_then_replayed_with_new_metadata() {
        let f = Fake { mem: RefCell::new(vec![0; 4]), log: RefCell::new(vec![]) };
        let mut r = Recorder::new(true);
        unsafe {
            step(&mut r, &f, 3, 9);
            assert_eq!(f.mem.borrow()[1], 27);
            step(&mut r, &f, 5, 9);
            assert_eq!(f.mem.borrow()[1], 45);
            step(&mut r, &f, 7, 9);
            assert_eq!(f.mem.borrow()[1], 63);
            assert_eq!(r.stats, Stats { direct: 1, captured: 1, replayed: 1 });
            // Another shape: issued directly, the captured graph kept for when it comes back.
            step(&mut r, &f, 2, 10);
            assert_eq!(f.mem.borrow()[1], 20);
            step(&mut r, &f, 4, 9);
            assert_eq!(f.mem.borrow()[1], 36);
            assert_eq!(r.stats, Stats { direct: 2, captured: 1, replayed: 2 });
        }
        // The upload went ahead of the queued ops (they never addressed word 0).
        assert_eq!(f.log.borrow()[..2], ["upload".to_string(), "op".to_string()]);
    }

    #[test]
    fn an_upload_into_memory_a_queued_op_addresses_waits_for_the_queue() {
        let f = Fake { mem: RefCell::new(vec![0; 4]), log: RefCell::new(vec![]) };
        let mut r: Recorder<Vec<(usize, Op)>> = Recorder::new(true);
        unsafe {
            let add = r.kernel_id(&f, "add").unwrap();
            r.upload(&f, 1000, &2u64.to_le_bytes()).unwrap();
            r.push(Op::launch(add, [1; 3], [1; 3], 0, &[Arg::Ptr(1008), Arg::Ptr(1000)]).unwrap());
            // The queued add must see 2, not 10.
            r.upload(&f, 1000, &10u64.to_le_bytes()).unwrap();
            r.push(Op::launch(add, [1; 3], [1; 3], 0, &[Arg::Ptr(1008), Arg::Ptr(1000)]).unwrap());
            r.flush(&f).unwrap();
        }
        assert_eq!(f.mem.borrow()[1], 12);
    }

    #[test]
    fn graphs_off_and_unknown_kernels() {
        let f = Fake { mem: RefCell::new(vec![0; 4]), log: RefCell::new(vec![]) };
        let mut r = Recorder::new(false);
        unsafe {
            for v in [1, 1, 1] {
                step(&mut r, &f, v, 9);
            }
        }
        assert_eq!(r.stats, Stats { direct: 3, captured: 0, replayed: 0 });
        let e = r.kernel_id(&f, "nope").unwrap_err();
        assert!(e.message.contains("nope"), "{}", e.message);
    }

    #[test]
    fn op_address_ranges() {
        let op = Op::launch(0, [1; 3], [1; 3], 0, &[Arg::Ptr(5000), Arg::I32(7)]).unwrap();
        assert!(op.touches(5000, 16));
        assert!(op.touches(4992, 16));
        assert!(!op.touches(5008, 16));
        let c = Op::copy(100, 200, 50);
        assert!(c.touches(140, 4) && c.touches(249, 4) && !c.touches(250, 4) && !c.touches(60, 40));
        assert!(Op::launch(0, [1; 3], [1; 3], 0, &[Arg::I32(0); 17]).is_err());
    }
}
