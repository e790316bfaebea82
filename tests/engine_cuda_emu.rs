//! The engine's GPU path end to end without a GPU: tiny-mixtral Q8_0 loaded through
//! `Model::load_emulated` onto `CudaBackend<EmuDevice>` (weights uploaded, KV cache in device
//! memory, every op a launch of the kernels in kernels/), driven through the same Rust engine API
//! as the CPU engine and compared with it: prompt, greedy steps, fork + copy-on-write continue,
//! a two-sequence step_batch, truncate, save → load (also across devices), a cancelled step, the
//! VRAM budget, and the load progress. The emulator runs each CUDA thread as an OS thread, so
//! the sequences are kept short.

mod emu_lib;
mod engine_common;

use std::path::PathBuf;
use std::sync::Arc;

use engine_common::{argmax, max_abs_diff, tiny_mixtral};
use xdan::backend::cuda::EmuDevice;
use xdan::engine::{Context, ContextParams, Device, ExpertTraffic, KvType, Model, ModelParams};
use xdan::ErrorKind;

/// Max |logit difference| allowed between the emulated GPU and the CPU engine (logits have a
/// standard deviation of about 1): both quantize activations to 8 bits the same way for Q8_0,
/// so what differs is float summation order (tests/cuda_emu_model.rs measures ~1e-5 here).
const TOL: f32 = 1e-3;

fn build_emulator() -> PathBuf {
    emu_lib::emulator_lib("cuda-emu-engine")
}

fn params() -> ModelParams {
    ModelParams { device: Device::Cpu, n_threads: 2, ..Default::default() }
}

fn ctx(m: &Model, n_seq: u32, kv: KvType) -> Result<Context, xdan::Error> {
    Context::new(m, &ContextParams { n_ctx: 48, n_seq_max: n_seq, n_batch: 16, kv_type: kv, n_threads: 2, ..Default::default() })
}

/// Logits of `seq` on both engines agree within TOL and pick the same greedy token.
fn same(what: &str, cpu: &Context, gpu: &Context, seq: u32) -> i32 {
    let (a, b) = (cpu.logits(seq).unwrap(), gpu.logits(seq).unwrap());
    let d = max_abs_diff(a, b);
    assert!(d < TOL, "{what}: logits differ from the CPU engine's by {d} (> {TOL})");
    let (ta, tb) = (argmax(a), argmax(b));
    assert_eq!(ta, tb, "{what}: greedy token {tb} on the emulated GPU, {ta} on the CPU");
    println!("{what}: max |logit diff| {d:.1e}, greedy {ta}");
    ta as i32
}

#[test]
fn engine_runs_tiny_mixtral_on_the_emulated_gpu() {
    let emu = Arc::new(EmuDevice::open(build_emulator().to_str().unwrap()).unwrap());
    let path = tiny_mixtral("Q8_0");

    // Load progress advances while the weights are uploaded, and ends at 1.
    let mut seen = Vec::new();
    let mut cb = |f: f32| {
        seen.push(f);
        true
    };
    let gm = Model::load_emulated(&path, &params(), emu.clone(), Some(&mut cb)).unwrap();
    assert!(seen.len() > 10 && seen.windows(2).all(|w| w[0] <= w[1]), "progress: {seen:?}");
    assert_eq!(*seen.last().unwrap(), 1.0);
    assert!(seen.iter().filter(|&&f| f > 0.0 && f < 1.0).count() > 5);
    let cm = Model::load(&path, &params(), None).unwrap();
    assert_eq!((cm.device_name().as_str(), gm.device_name().as_str()), ("cpu", "cuda-emu"));
    assert_eq!(gm.info().device, "cuda-emu");
    same_as_cpu(&cm, &gm);
    // The decode steps ran as replayed graphs (and matched the CPU above).
    let xdan::backend::cuda::graph::Stats { direct, captured, replayed } = emu.graph_stats();
    println!("queues: {direct} op by op, {captured} captured, {replayed} replayed");
    assert!(captured >= 1 && replayed >= 2, "decode steps were not replayed: {direct}/{captured}/{replayed}");
}

/// The same on a real GPU (`XDAN_DEVICE_CUDA` through the engine API): run it on a GPU machine
/// with `cargo test --release --test engine_cuda_emu -- --ignored`; without one it fails.
#[test]
#[ignore = "needs a CUDA GPU"]
fn engine_runs_tiny_mixtral_on_the_gpu() {
    let path = tiny_mixtral("Q8_0");
    let mut seen = 0;
    let mut cb = |_f: f32| {
        seen += 1;
        true
    };
    let gm = Model::load(&path, &ModelParams { device: Device::Cuda, ..params() }, Some(&mut cb))
        .unwrap_or_else(|e| panic!("{:?}: {}", e.kind, e.message));
    assert!(seen > 10);
    assert!(gm.device_name().starts_with("cuda:0 ("), "{}", gm.device_name());
    println!("device: {}", gm.device_name());
    let cm = Model::load(&path, &params(), None).unwrap();
    same_as_cpu(&cm, &gm);
    let e = Model::load(&path, &ModelParams { device: Device::Cuda, vram_budget: 1 << 20, ..params() }, None).err();
    let e = e.expect("weights over a 1 MiB budget");
    assert_eq!(e.kind, ErrorKind::OutOfMemory);
    println!("1 MiB budget: {}", e.message);
}

/// Drives the CPU model `cm` and the GPU model `gm` through the same calls, comparing logits.
fn same_as_cpu(cm: &Model, gm: &Model) {

    // KV F32 on both sides: the cache holds what the GPU computed, nothing rounds it.
    let (mut c, mut g) = (ctx(cm, 3, KvType::F32).unwrap(), ctx(gm, 3, KvType::F32).unwrap());
    let prompt = [1, 832, 165, 251, 189, 895, 149];
    for e in [&mut c, &mut g] {
        e.step(0, &prompt).unwrap();
    }
    let mut t = same("prompt", &c, &g, 0);
    // Decode steps repeat the same launches: from the second on they run as a captured graph.
    for i in 0..4 {
        for e in [&mut c, &mut g] {
            e.step(0, &[t]).unwrap();
        }
        t = same(&format!("greedy step {i}"), &c, &g, 0);
    }
    // 11 tokens: the fork shares a partly filled block, which the next appends copy. (Token 17
    // at position 11 would put one activation of this random model on a q8 rounding boundary,
    // where the two backends' summation orders round it to neighbouring codes: 0.02 apart.)
    for e in [&mut c, &mut g] {
        e.seq_fork(0, 1).unwrap();
        e.step_batch(&[(0, &[t]), (1, &[18, 42])]).unwrap();
    }
    same("step_batch seq 0 after fork", &c, &g, 0);
    same("step_batch seq 1 after fork", &c, &g, 1);
    assert_eq!(g.kv_stats(), c.kv_stats());
    g.kv_check().unwrap();

    // Truncate back into the shared block and step again.
    for e in [&mut c, &mut g] {
        e.seq_truncate(1, 5).unwrap();
        e.step(1, &[300]).unwrap();
    }
    same("truncate + step", &c, &g, 1);

    // A cancelled step leaves the sequence (tokens, KV, logits) as it was.
    let before = g.logits(0).unwrap().to_vec();
    let len = g.seq_len(0);
    g.set_abort(Some(Box::new(|| false)));
    let e = g.step(0, &[5, 6, 7]).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Cancelled);
    g.set_abort(None);
    assert_eq!((g.seq_len(0), g.logits(0).unwrap()), (len, &before[..]));

    // Save from the emulated GPU; load into another sequence there and into the CPU engine.
    let file = std::env::temp_dir().join(format!("xdan-engine-{}-{}-seq0.kv", std::process::id(), gm.device_name().split(' ').next().unwrap()));
    g.seq_save(0, &file).unwrap();
    g.seq_load(2, &file).unwrap();
    c.seq_load(2, &file).unwrap();
    assert_eq!(g.seq_tokens(2).unwrap(), c.seq_tokens(0).unwrap());
    for e in [&mut c, &mut g] {
        e.step(2, &[99]).unwrap();
        e.step(0, &[99]).unwrap();
    }
    same("loaded seq 2", &c, &g, 2);
    assert_eq!(g.logits(2).unwrap(), g.logits(0).unwrap(), "loaded copy continues exactly like the original");
    let d = max_abs_diff(c.logits(2).unwrap(), c.logits(0).unwrap());
    assert!(d < TOL, "the GPU-saved KV continued on the CPU differs from the CPU's own by {d}");
    for s in 0..3 {
        g.seq_clear(s).unwrap();
    }
    assert_eq!(g.kv_used_blocks(), 0);
    let _ = std::fs::remove_file(&file);

    // A Q8_0 cache on the device: the same blocks as the CPU's wherever the stored values are
    // the same; RoPE's angles (double on the GPU, llama.cpp's f32 recurrence on the CPU) may
    // part by an ulp and move a K value by a code, so the bound is the Q8_0 step's.
    let (mut c, mut g) = (ctx(cm, 1, KvType::Q8_0).unwrap(), ctx(gm, 1, KvType::Q8_0).unwrap());
    let mut t = vec![1, 832, 165, 251, 189, 895, 149];
    for step in 0..3 {
        c.step(0, &t).unwrap();
        g.step(0, &t).unwrap();
        let (a, b) = (c.logits(0).unwrap(), g.logits(0).unwrap());
        let d = max_abs_diff(a, b);
        assert!(d < 2e-2, "Q8_0 KV, step {step}: logits differ from the CPU engine's by {d}");
        assert_eq!(argmax(a), argmax(b), "Q8_0 KV, step {step}: greedy token");
        println!("Q8_0 KV step {step}: max |logit diff| {d:.1e}, greedy {}", argmax(a));
        t = vec![argmax(a) as i32];
    }
}

#[test]
fn vram_budget_is_enforced_with_a_clear_error() {
    let emu = Arc::new(EmuDevice::open(build_emulator().to_str().unwrap()).unwrap());
    let path = tiny_mixtral("Q8_0");
    let p = |budget: u64| ModelParams { vram_budget: budget, ..params() };

    let e = Model::load_emulated(&path, &p(1 << 20), emu.clone(), None).err().expect("1 MiB budget");
    assert_eq!(e.kind, ErrorKind::OutOfMemory);
    assert!(e.message.contains("the weights would take") && e.message.contains("vram_budget 1048576"), "{}", e.message);

    // The weights fit with a little room, which a context's KV cache does not.
    let vocab = Model::load(&path, &ModelParams { vocab_only: true, ..params() }, None).unwrap();
    let weights: u64 = vocab.gguf().tensors().iter().map(|t| t.n_bytes).sum();
    let m = Model::load_emulated(&path, &p(weights + (64 << 10)), emu.clone(), None).unwrap();
    let e = ctx(&m, 1, KvType::F16).err().expect("KV over the budget");
    assert_eq!(e.kind, ErrorKind::OutOfMemory);
    assert!(e.message.contains("KV cache") && e.message.contains("is left"), "{}", e.message);

    // Room for one context of 4096 tokens (2 MiB of F16 KV + about 1 MiB of activations), not
    // for two at once: the second fits once the first is dropped.
    let big = ContextParams { n_ctx: 4096, n_batch: 16, ..Default::default() };
    let m = Model::load_emulated(&path, &p(weights + (9 << 19)), emu, None).unwrap();
    let c1 = Context::new(&m, &big).unwrap();
    assert_eq!(c1.kv_stats().bytes, 2 << 20);
    let e = Context::new(&m, &big).err().expect("a second context over the budget");
    assert_eq!(e.kind, ErrorKind::OutOfMemory, "{}", e.message);
    drop(c1);
    let mut c2 = Context::new(&m, &big).unwrap();
    c2.step(0, &[1, 2]).unwrap();
    assert_eq!(c2.logits(0).unwrap().len(), 1024);
}

/// tiny-mixtral Q8_0 with a 64-token training context, written to a temporary file: the room a
/// model with experts in host memory keeps for a context is then small beside its experts
/// (~1.5 MB against 16 experts of 408 KiB), as it is for a large model on a real card. (The
/// device buffers for one layer's experts, which it also keeps, are half of them here; on a
/// real model one layer's of 32 to 60.)
fn tiny_mixtral_short_context() -> PathBuf {
    use xdan::gguf::{Gguf, GgufWriter, Value};
    let g = Gguf::open(tiny_mixtral("Q8_0"), false).unwrap();
    let mut w = GgufWriter::new();
    for (k, v) in g.metadata() {
        w.set(k, if k == "llama.context_length" { Value::U32(64) } else { v.clone() });
    }
    for t in g.tensors() {
        w.add_tensor(&t.name, &t.dims, t.ty, g.tensor_data(t).to_vec()).unwrap();
    }
    let path = std::env::temp_dir().join(format!("xdan-tiny-mixtral-ctx64-{}.gguf", std::process::id()));
    w.write_to(&path).unwrap();
    path
}

/// The experts in host memory, from the device name ("cuda-emu + cpu (5 of 16 experts in host
/// memory)"); 0 when every weight is on the device.
fn host_experts(m: &Model) -> usize {
    let name = m.device_name();
    match name.split_once(" + cpu (") {
        None => 0,
        Some((_, rest)) => rest.split(' ').next().unwrap().parse().unwrap(),
    }
}

/// An MoE model over the VRAM budget keeps as many experts on the device as fit beside the
/// other weights and room for a context, and computes the rest on the CPU: fewer experts on the
/// device as the budget shrinks by one expert's bytes at a time, down to none, then a clear
/// out-of-memory error; and the same logits and routing as the CPU engine with a layer split
/// between both and with every expert on the host (decode steps, the CPU computing the host
/// experts), and the GPU-alone logits for a prompt that brings the host experts over.
#[test]
fn experts_beyond_the_vram_budget_run_on_the_cpu() {
    let emu = Arc::new(EmuDevice::open(build_emulator().to_str().unwrap()).unwrap());
    let path = tiny_mixtral_short_context();
    let cm = Model::load(&path, &params(), None).unwrap();
    let g = cm.gguf();
    let total: u64 = g.tensors().iter().map(|t| t.n_bytes).sum();
    let per: u64 = ["gate", "up", "down"].iter().map(|p| g.tensor(&format!("blk.0.ffn_{p}_exps.weight")).unwrap().n_bytes / 8).sum();
    let load = |budget: u64| Model::load_emulated(&path, &ModelParams { vram_budget: budget, ..params() }, emu.clone(), None);

    let fits = load(total).unwrap();
    assert_eq!((host_experts(&fits), fits.expert_traffic()), (0, None), "the weights fit the budget exactly");
    let mut counts = Vec::new();
    let mut j = 1;
    let err = loop {
        match load(total - j * per) {
            Ok(m) => counts.push(host_experts(&m)),
            Err(e) => break e,
        }
        j += 1;
    };
    println!("budget = weights - j experts' bytes, j = 1, 2, ...: experts in host memory {counts:?}");
    println!("then: {}", err.message);
    assert_eq!(err.kind, ErrorKind::OutOfMemory);
    assert!(err.message.contains("with every expert in host memory"), "{}", err.message);
    assert!(counts[0] >= 1 && *counts.last().unwrap() == 16, "{counts:?}");
    assert!(counts.windows(2).all(|w| w[1] == (w[0] + 1).min(16)), "one expert fewer on the device per step: {counts:?}");

    // A 34-token prompt is a batch that brings each layer's host experts to the device
    // (CudaBackend::with_stream_min_tokens): the GPU alone is the reference, bit for bit.
    let ctxp = ContextParams { n_ctx: 64, n_seq_max: 1, n_batch: 64, kv_type: KvType::F32, n_threads: 2, ..Default::default() };
    let long: Vec<i32> = (0..34).map(|i| (i * 37 + 11) % 1000 + 3).collect();
    let full = load(0).unwrap();
    let mut fc = Context::new(&full, &ctxp).unwrap();
    fc.step(0, &long).unwrap();
    // The largest budget below the weights: some experts of each layer still on the device.
    let mixed = 1;
    assert!(counts[0] < 16, "{counts:?}");
    let all = counts.iter().position(|&c| c == 16).unwrap() as u64 + 1;
    for j in [mixed, all] {
        let gm = load(total - j * per).unwrap();
        let h = host_experts(&gm);
        // The plan: experts 0, 1, ... in turn over the layers, so layer 1 holds the lower
        // half of the resident ones; its first host expert is the one after.
        let first_host = [(16 - h).div_ceil(2), (16 - h) / 2];
        // A context fits beside the device's experts.
        let (mut c, mut gc) = (Context::new(&cm, &ctxp).unwrap(), Context::new(&gm, &ctxp).unwrap());
        gc.set_record_routing(true);
        c.set_record_routing(true);
        let mut host_hits = 0;
        let (mut slots, mut host_slots) = (0, 0);
        let mut t = vec![1, 832, 165, 251, 189, 895, 149];
        for step in 0..4 {
            c.step(0, &t).unwrap();
            gc.step(0, &t).unwrap();
            assert_eq!(gc.routing(), c.routing(), "{h} host experts, step {step}: routing");
            host_hits += gc.routing()[1].iter().filter(|&&e| e as usize >= first_host[1]).count();
            for (r, first) in gc.routing().iter().zip(first_host) {
                slots += r.len() as u64;
                host_slots += r.iter().filter(|&&e| e as usize >= first).count() as u64;
            }
            let tok = same(&format!("{h} experts on the host, step {step}"), &c, &gc, 0);
            t = vec![tok];
        }
        assert!(host_hits > 0, "{h} host experts: no token was routed to one");
        // Model::expert_traffic counts the same; 10 tokens are too few for experts to move.
        let want = ExpertTraffic { device_slots: slots - host_slots, host_slots, moves: 0 };
        assert_eq!(gm.expert_traffic(), Some(want), "{h} host experts");
        if j == mixed {
            gc.seq_clear(0).unwrap();
            gc.step(0, &long).unwrap();
            assert!(fc.logits(0).unwrap() == gc.logits(0).unwrap(), "{h} experts on the host, 34-token prompt: not the GPU-alone logits");
            println!("{h} experts on the host, 34-token prompt (experts brought to the device): the GPU-alone logits, bit for bit");
        }
    }
    let _ = std::fs::remove_file(&path);
}

