//! Where a model runs: its weights on one backend (the CPU, a GPU, or the emulated GPU the
//! tests use), and per context the KV store and activation scratch on that same backend.
//!
//! The engine holds these behind two small object-safe traits, [`Placed`] (per model) and
//! [`DeviceKv`] (per context), so `Model` and `Context` stay one type whatever the device;
//! the forward pass itself stays generic over [`Backend`] and is monomorphised per backend.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::backend::cpu::CpuBackend;
use crate::backend::cuda::host_experts::ExpertPlan;
use crate::backend::cuda::{CudaBackend, Device as _, EmuDevice, GpuDevice};
use crate::backend::{Backend, ExpertTraffic, KvLayout, RopeParams};
use crate::error::{Error, ErrorKind, Result};
use crate::gguf::Gguf;
use crate::model::forward::{forward, Batch, Scratch};
use crate::model::{HParams, Weights};

/// Device memory kept free when `vram_budget` is 0 ("free memory minus a margin"): room for
/// the driver's own allocations, the kernels' modules and other processes' small needs.
pub const VRAM_MARGIN: u64 = 512 << 20;

/// When an MoE model's experts do not all fit on the device, the experts placed there leave
/// room for a context of this many tokens (at most the training context): its F16 KV cache and
/// the activations of a batch of up to 512 tokens (the default `n_batch`).
pub const HOST_EXPERTS_CONTEXT: u64 = 4096;

/// A model's weights on one backend; makes the per-context device state.
pub(crate) trait Placed: Send + Sync {
    /// "cpu", "cuda:0 (NVIDIA H100 80GB HBM3, sm_90)", "cuda-emu".
    fn device_name(&self) -> String;
    /// Whether the forward pass computes on the host (then it runs on the context's threads).
    fn on_host(&self) -> bool;
    /// Whether the forward pass computes partly on the host (on the context's threads): on the
    /// host, or on a device that left experts in host memory.
    fn uses_host_threads(&self) -> bool;
    /// Device bytes still available to this model (None on the host).
    fn room(&self) -> Option<u64>;
    /// How the routed slots of layers with experts in host memory were served (None when no
    /// expert is in host memory).
    fn expert_traffic(&self) -> Option<ExpertTraffic>;
    /// A KV store of `layout` and fresh scratch; `act_bytes` is the estimated activation memory
    /// of one forward pass, checked against the device's budget together with the KV.
    fn new_kv(self: Arc<Self>, layout: &KvLayout, act_bytes: u64) -> Result<Box<dyn DeviceKv>>;
}

/// One context's K/V store and scratch on the model's backend.
pub(crate) trait DeviceKv: Send {
    #[allow(clippy::too_many_arguments)]
    fn forward(
        &mut self,
        hp: &HParams,
        rope: &RopeParams,
        b: &Batch,
        abort: &mut dyn FnMut() -> bool,
        routes: Option<&mut Vec<Vec<u32>>>,
        logits: &mut [f32],
    ) -> Result<()>;
    fn copy_block(&mut self, src: u32, dst: u32, n: usize) -> Result<()>;
    fn export(&self, layer: usize, slots: &[u32], out: &mut Vec<u8>) -> Result<()>;
    fn import(&mut self, layer: usize, slots: &[u32], data: &[u8]) -> Result<()>;
}

/// Accounting of a GPU's memory against `vram_budget`: the weights, then every live context's
/// KV cache and activations.
pub(crate) struct Vram {
    device: String,
    /// Bytes the model may use; 0 = what the device has free (minus [`VRAM_MARGIN`]) at each check.
    budget: u64,
    used: AtomicU64,
    /// Free device memory now, when the device can tell.
    free: Box<dyn Fn() -> Option<u64> + Send + Sync>,
}

fn mib(b: u64) -> String {
    format!("{b} bytes ({:.1} MiB)", b as f64 / (1u64 << 20) as f64)
}

impl Vram {
    /// Reserves `need` bytes for `what`, or says why they do not fit (`OutOfMemory`).
    fn reserve(&self, need: u64, what: &str) -> Result<()> {
        let used = self.used.load(Ordering::SeqCst);
        let oom = |m: String| Err(Error::new(ErrorKind::OutOfMemory, m));
        if self.budget != 0 {
            let left = self.budget.saturating_sub(used);
            if need > left {
                return oom(format!(
                    "{}: {what} would take {}, but only {} of vram_budget {} is left ({} already in use by this model)",
                    self.device,
                    mib(need),
                    mib(left),
                    mib(self.budget),
                    mib(used)
                ));
            }
        } else if let Some(free) = (self.free)() {
            let avail = free.saturating_sub(VRAM_MARGIN);
            if need > avail {
                return oom(format!(
                    "{}: {what} would take {}, but the device has {} free, {} after a margin of {} (set vram_budget to override)",
                    self.device,
                    mib(need),
                    mib(free),
                    mib(avail),
                    mib(VRAM_MARGIN)
                ));
            }
        }
        self.used.fetch_add(need, Ordering::SeqCst);
        Ok(())
    }

    /// Bytes a reservation may still take (None: the device cannot tell).
    fn room(&self) -> Option<u64> {
        if self.budget != 0 {
            Some(self.budget.saturating_sub(self.used.load(Ordering::SeqCst)))
        } else {
            (self.free)().map(|f| f.saturating_sub(VRAM_MARGIN))
        }
    }

    fn release(&self, n: u64) {
        self.used.fetch_sub(n, Ordering::SeqCst);
    }
}

/// A model on backend `B`.
pub(crate) struct OnBackend<B: Backend> {
    be: B,
    weights: Weights<B>,
    /// None on the host (the CPU backend maps the file instead of allocating).
    vram: Option<Vram>,
    /// Experts left in host memory, of all experts (0, 0 when every weight is on the device).
    host_experts: (usize, usize),
}

struct KvOn<B: Backend> {
    placed: Arc<OnBackend<B>>,
    store: B::Kv,
    scratch: Scratch<B>,
    reserved: u64,
}

impl<B: Backend> Drop for KvOn<B> {
    fn drop(&mut self) {
        if let Some(v) = &self.placed.vram {
            v.release(self.reserved);
        }
    }
}

impl<B: Backend> Placed for OnBackend<B> {
    fn device_name(&self) -> String {
        match self.host_experts {
            (0, _) => self.be.name(),
            (h, n) => format!("{} + cpu ({h} of {n} experts in host memory)", self.be.name()),
        }
    }
    fn on_host(&self) -> bool {
        self.vram.is_none()
    }
    fn uses_host_threads(&self) -> bool {
        self.on_host() || self.host_experts.0 > 0
    }
    fn room(&self) -> Option<u64> {
        self.vram.as_ref().and_then(|v| v.room())
    }
    fn expert_traffic(&self) -> Option<ExpertTraffic> {
        self.be.expert_traffic()
    }
    fn new_kv(self: Arc<Self>, layout: &KvLayout, act_bytes: u64) -> Result<Box<dyn DeviceKv>> {
        let mut reserved = 0;
        if let Some(v) = &self.vram {
            let kv = layout.total_bytes();
            reserved = kv + act_bytes;
            v.reserve(reserved, &format!("a context (KV cache {}, activations about {})", mib(kv), mib(act_bytes)))?;
        }
        let store = match self.be.kv_new(layout) {
            Ok(s) => s,
            Err(e) => {
                if let Some(v) = &self.vram {
                    v.release(reserved);
                }
                return Err(e);
            }
        };
        let scratch = Scratch::new(&self.be);
        Ok(Box::new(KvOn { placed: self, store, scratch, reserved }))
    }
}

impl<B: Backend> DeviceKv for KvOn<B> {
    fn forward(
        &mut self,
        hp: &HParams,
        rope: &RopeParams,
        b: &Batch,
        abort: &mut dyn FnMut() -> bool,
        routes: Option<&mut Vec<Vec<u32>>>,
        logits: &mut [f32],
    ) -> Result<()> {
        let p = &*self.placed;
        forward(&p.be, &p.weights, hp, rope, &mut self.store, b, &mut self.scratch, abort, routes, logits)
    }
    fn copy_block(&mut self, src: u32, dst: u32, n: usize) -> Result<()> {
        self.placed.be.kv_copy_block(&mut self.store, src, dst, n)
    }
    fn export(&self, layer: usize, slots: &[u32], out: &mut Vec<u8>) -> Result<()> {
        self.placed.be.kv_export(&self.store, layer, slots, out)
    }
    fn import(&mut self, layer: usize, slots: &[u32], data: &[u8]) -> Result<()> {
        self.placed.be.kv_import(&mut self.store, layer, slots, data)
    }
}

/// Where to put a model.
pub(crate) enum Target {
    Cpu,
    /// GPU ordinal.
    Gpu(i32),
    Emulated(Arc<EmuDevice>),
}

/// Bytes the weights take on a device: every tensor the engine uploads, once (a tied output
/// head shares the embedding table; `rope_freqs` stays on the host).
fn weight_bytes(g: &Gguf) -> u64 {
    g.tensors().iter().filter(|t| t.name != "rope_freqs.weight").map(|t| t.n_bytes).sum()
}

/// An MoE model's weights split between device and host memory.
#[derive(Default)]
struct Split {
    /// The experts each expert tensor keeps on the device (tensors not named keep all).
    plan: ExpertPlan,
    /// Experts in host memory, and their bytes.
    n_host: usize,
    host_bytes: u64,
    /// Device buffers for one layer's experts, assembled there for prefill-sized batches.
    stream_bytes: u64,
}

/// The names of layer `il`'s stacked expert tensors.
fn expert_tensors(il: usize) -> [String; 3] {
    ["gate", "up", "down"].map(|p| format!("blk.{il}.ffn_{p}_exps.weight"))
}

/// Where the experts go when the weights (`total` bytes) do not all fit in `room`: the other
/// weights, buffers for one layer's experts (a prefill batch assembles a layer there) and room
/// for a [`HOST_EXPERTS_CONTEXT`]-token context first, then experts while they
/// fit, one per layer in turn (expert 0 of every layer, then expert 1, ...), so every layer keeps
/// about the same share on the device; the rest stay in host memory. Returns the split; or,
/// when even the weights without experts, the buffers and that context do not fit, why not.
fn plan_experts(g: &Gguf, hp: &HParams, total: u64, room: u64) -> std::result::Result<Split, String> {
    let n_exp = hp.n_expert;
    // Bytes of one expert of each layer (its rows of gate, up and down).
    let mut per = vec![0u64; hp.n_layer];
    for (il, p) in per.iter_mut().enumerate() {
        for name in expert_tensors(il) {
            *p += g.tensor(&name).map_or(0, |t| t.n_bytes / n_exp.max(1) as u64);
        }
    }
    let experts: u64 = per.iter().sum::<u64>() * n_exp as u64;
    // The buffers a prefill-sized batch assembles one layer's experts in on the device
    // (CudaBackend::with_stream_min_tokens), beside the other weights.
    let stream_bytes = per.iter().max().copied().unwrap_or(0) * n_exp as u64;
    let fixed = total.saturating_sub(experts) + stream_bytes;
    let ctx = HOST_EXPERTS_CONTEXT.min(hp.n_ctx_train.max(1) as u64);
    let reserve = ctx * 2 * hp.n_layer as u64 * hp.n_embd_kv() as u64 * 2 + super::act_bytes(hp, ctx.min(512), 1, ctx);
    if experts == 0 || fixed + reserve > room {
        return Err(format!(
            "with every expert in host memory the other weights and the buffers of one layer's experts would still take {}, and a {ctx}-token context about {}",
            mib(fixed),
            mib(reserve)
        ));
    }
    let mut avail = room - fixed - reserve;
    // Experts 0..kept[il] of layer il stay on the device, given out one per layer per round.
    let mut kept = vec![0usize; hp.n_layer];
    for _ in 0..n_exp {
        for (k, &p) in kept.iter_mut().zip(&per) {
            if p <= avail {
                *k += 1;
                avail -= p;
            }
        }
    }
    let mut plan = ExpertPlan::new();
    let (mut n_host, mut host_bytes) = (0, 0);
    for (il, &k) in kept.iter().enumerate().filter(|&(_, &k)| k < n_exp) {
        n_host += n_exp - k;
        host_bytes += (n_exp - k) as u64 * per[il];
        let resident: Vec<bool> = (0..n_exp).map(|e| e < k).collect();
        for name in expert_tensors(il) {
            plan.insert(name, resident.clone());
        }
    }
    Ok(Split { plan, n_host, host_bytes, stream_bytes })
}

fn on_device<D: crate::backend::cuda::Device>(
    dev: Arc<D>,
    free: Box<dyn Fn() -> Option<u64> + Send + Sync>,
    budget: u64,
    g: &Arc<Gguf>,
    hp: &HParams,
    progress: &mut dyn FnMut(f32) -> bool,
) -> Result<Arc<dyn Placed>> {
    let be = CudaBackend::new(dev);
    let vram = Vram { device: be.name(), budget, used: AtomicU64::new(0), free };
    let total = weight_bytes(g);
    // An MoE model too big for the device keeps some experts in host memory.
    let split = match vram.room() {
        Some(room) if total > room && hp.n_expert > 0 => match plan_experts(g, hp, total, room) {
            Ok(p) => p,
            Err(why) => {
                let e = vram.reserve(total, "the weights").err().unwrap_or_else(|| Error::new(ErrorKind::OutOfMemory, "the weights do not fit"));
                return Err(Error::new(e.kind, format!("{}; {why}", e.message)));
            }
        },
        _ => Split::default(),
    };
    vram.reserve(total - split.host_bytes + split.stream_bytes, "the weights")?;
    let n_host = split.n_host;
    if n_host > 0 {
        crate::log::info!(
            "{}: {n_host} of {} experts ({}) stay in host memory and run on the CPU (prefill batches bring a layer's to the device, through {} of buffers)",
            be.name(),
            hp.n_layer * hp.n_expert,
            mib(split.host_bytes),
            mib(split.stream_bytes)
        );
    }
    let be = be.with_expert_plan(split.plan);
    let weights = Weights::load(&be, g, hp, progress)?;
    Ok(Arc::new(OnBackend { be, weights, vram: Some(vram), host_experts: (n_host, hp.n_layer * hp.n_expert) }))
}

/// Loads the weights of `g` onto `target`. The path is only for messages.
pub(crate) fn place(
    target: &Target,
    budget: u64,
    path: &Path,
    g: &Arc<Gguf>,
    hp: &HParams,
    progress: &mut dyn FnMut(f32) -> bool,
) -> Result<Arc<dyn Placed>> {
    let shown = path.display();
    match target {
        Target::Cpu => {
            let weights = Weights::load(&CpuBackend, g, hp, progress).map_err(|e| e.context(&shown))?;
            Ok(Arc::new(OnBackend { be: CpuBackend, weights, vram: None, host_experts: (0, 0) }))
        }
        Target::Emulated(dev) => {
            on_device(dev.clone(), Box::new(|| None), budget, g, hp, progress).map_err(|e| e.context(&shown))
        }
        Target::Gpu(ordinal) => {
            let dev = Arc::new(GpuDevice::open(*ordinal)?);
            // Compile (or take from the disk cache) and load every kernel now, so a driver or
            // NVRTC problem fails the load rather than the first step.
            let n = dev.preload()?;
            crate::log::debug!("{}: {n} kernels loaded", dev.name());
            let d = dev.clone();
            let free = Box::new(move || d.mem_info().ok().map(|(f, _)| f as u64));
            on_device(dev, free, budget, g, hp, progress).map_err(|e| e.context(&shown))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::GgufWriter;

    /// Two layers of 4 experts; layer 1's experts twice the size of layer 0's. Everything else:
    /// a 64-byte tensor.
    fn model() -> (Arc<Gguf>, HParams) {
        let mut w = GgufWriter::new();
        w.add_f32("token_embd.weight", &[4, 4], &[0.0; 16]).unwrap();
        for (il, rows) in [(0usize, 2u64), (1, 4)] {
            for p in ["gate", "up", "down"] {
                w.add_f32(&format!("blk.{il}.ffn_{p}_exps.weight"), &[4, rows, 4], &vec![0.0; 16 * rows as usize]).unwrap();
            }
        }
        let g = Arc::new(Gguf::from_bytes(w.to_bytes()).unwrap());
        let hp = HParams {
            arch: "llama".into(),
            n_vocab: 4,
            n_ctx_train: 1,
            n_embd: 4,
            n_layer: 2,
            n_head: 1,
            n_head_kv: 1,
            head_dim: 4,
            n_ff: 2,
            n_expert: 4,
            n_expert_used: 2,
            rms_eps: 1e-5,
            rope: RopeParams { n_rot: 4, freq_base: 1e4, freq_scale: 1.0, freq_factors: None },
        };
        (g, hp)
    }

    #[test]
    fn experts_go_to_the_device_one_per_layer_in_turn() {
        let (g, hp) = model();
        let total = weight_bytes(&g);
        // One expert: 3 x 32 bytes in layer 0, 3 x 64 in layer 1.
        let (p0, p1) = (96u64, 192u64);
        assert_eq!(total, 64 + 4 * (p0 + p1));
        let ctx = 2 * hp.n_layer as u64 * hp.n_embd_kv() as u64 * 2 + super::super::act_bytes(&hp, 1, 1, 1);
        // The other weights, a context, and buffers for the 4 experts of the larger layer.
        let fixed = 64 + 4 * p1 + ctx;
        // Room for experts 0 and 1 of both layers and expert 2 of layer 0, not of layer 1.
        let s = plan_experts(&g, &hp, total, fixed + 3 * p0 + 2 * p1 + 10).unwrap();
        assert_eq!((s.n_host, s.host_bytes, s.stream_bytes), (3, p0 + 2 * p1, 4 * p1));
        for p in ["gate", "up", "down"] {
            assert_eq!(s.plan[&format!("blk.0.ffn_{p}_exps.weight")], [true, true, true, false]);
            assert_eq!(s.plan[&format!("blk.1.ffn_{p}_exps.weight")], [true, true, false, false]);
        }
        // A layer that keeps every expert is not in the plan.
        let s = plan_experts(&g, &hp, total, fixed + 4 * p0 + 3 * p1).unwrap();
        assert_eq!(s.n_host, 1);
        assert!(!s.plan.contains_key("blk.0.ffn_gate_exps.weight"));
        assert_eq!(s.plan["blk.1.ffn_down_exps.weight"], [true, true, true, false]);
        // Nothing on the device but the rest; then not even that.
        assert_eq!(plan_experts(&g, &hp, total, fixed).unwrap().n_host, 8);
        let why = plan_experts(&g, &hp, total, fixed - 1).err().unwrap();
        assert!(why.contains(&format!("would still take {} bytes", 64 + 4 * p1)), "{why}");
    }
}
