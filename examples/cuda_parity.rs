//! CUDA against the CPU backend on every weight type, tiny-mixtral-shaped (scripts/gpu-check.sh
//! runs it on a GPU machine):
//! - every `tiny-mixtral-*.gguf` fixture found under DATA/tiny-mixtral (llama.cpp's quantized
//!   files) — against the CPU and against llama.cpp's greedy continuation (`refs.json`);
//! - for every weight type, a tiny-mixtral-shaped model with random weights written here in that
//!   type for every matrix (examples/support/synth_model.rs), so the types whose fixtures are
//!   not carried are covered too — against the CPU.
//!
//! Each check: the prompt's logits at every position, then the CPU's 16 greedy tokens decoded
//! one per forward pass on both backends (through the paged KV cache, F32 KV), so every step is
//! compared even after a near-tie. Passes when the logits are finite, agree within `tol` × the
//! largest |CPU logit| (tol per type below, from the activation rounding: the GPU quantizes
//! activations to q8_1, the CPU to Q8_K/Q8_0 or not at all), and the GPU's argmax is the CPU's
//! greedy token at every step — except where the CPU's top1−top2 margin is under twice the
//! largest logit difference (a near-tie, counted and reported). So the GPU's own greedy run would
//! be the CPU's up to near-ties. Fixtures also match llama.cpp's greedy tokens up to its first
//! margin under 0.1 (the CPU engine's rule).
//!
//! The experts each token chose are recorded on both sides. Where they first differ (a router
//! near-tie, which the two backends' different activation rounding can tip), the logits after it
//! part legitimately, so the prompt positions before it and the steps up to it are compared, and
//! the line says where the split is. A model whose experts differ from its first token on has
//! nothing to compare and is reported `n/c` (neither pass nor failure).
//!
//!   cuda_parity [DATA_DIR] [--types Q4_0,IQ2_XXS,...] [--no-fixtures] [--no-synthetic]
//!               [--steps 16] [--lazy] [--emu LIB]
//!
//! DATA_DIR defaults to tests/data. `--lazy` skips compiling and loading every kernel up front.
//! `--emu` runs the kernels on the CUDA emulator instead
//! (kernels/emu; slow) to try the tool without a GPU. Exits 0 when every check passes, 1 when
//! one fails, 2 when there is no GPU.

#[path = "support/synth_model.rs"]
mod synth_model;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use xdan::backend::cpu::CpuBackend;
use xdan::backend::cuda::device::Device;
use xdan::backend::cuda::{probe, CudaBackend, EmuDevice, GpuDevice};
use xdan::backend::{Backend, KvLayout, KV_BLOCK};
use xdan::gguf::Gguf;
use xdan::model::forward::{forward, Batch, Scratch};
use xdan::model::{HParams, Weights};
use xdan::quant::{can_randomize, GgmlType, TYPE_FACTS};

const PROMPT: [u32; 7] = [1, 832, 165, 251, 189, 895, 149];

/// A model on one backend with a paged F32 KV cache of one sequence.
struct Runner<'a, B: Backend> {
    be: &'a B,
    hp: HParams,
    w: Weights<B>,
    kv: B::Kv,
    s: Scratch<B>,
    table: Vec<u32>,
}

impl<'a, B: Backend> Runner<'a, B> {
    fn new(be: &'a B, g: &Arc<Gguf>, n_max: usize) -> xdan::Result<Self> {
        let hp = HParams::from_gguf(g)?;
        let w = Weights::load(be, g, &hp, &mut |_| true)?;
        let n_blocks = n_max.div_ceil(KV_BLOCK) + 2;
        let layout = KvLayout { n_layer: hp.n_layer, n_slots: n_blocks * KV_BLOCK, n_embd_kv: hp.n_embd_kv(), ty: GgmlType::F32 };
        let kv = be.kv_new(&layout)?;
        // The sequence's blocks out of order, as the paged cache hands them out.
        let table = (0..n_max.div_ceil(KV_BLOCK)).map(|b| (n_blocks - 1 - b) as u32).collect();
        Ok(Runner { be, hp, w, kv, s: Scratch::new(be), table })
    }

    /// Logits of every position of `tokens`, placed at positions `pos0..`, and the experts each
    /// token chose in each layer (token-major).
    fn step(&mut self, tokens: &[u32], pos0: usize) -> xdan::Result<(Vec<f32>, Vec<Vec<u32>>)> {
        let n = tokens.len();
        let pos: Vec<u32> = (pos0 as u32..(pos0 + n) as u32).collect();
        let kb = KV_BLOCK as u32;
        let slots: Vec<u32> = pos.iter().map(|&p| self.table[(p / kb) as usize] * kb + p % kb).collect();
        let tok_seq = vec![0u32; n];
        let tables: [&[u32]; 1] = [&self.table];
        let out_rows: Vec<u32> = (0..n as u32).collect();
        let b = Batch { tokens, pos: &pos, slots: &slots, tok_seq: &tok_seq, tables: &tables, out_rows: &out_rows };
        let mut logits = vec![0f32; n * self.hp.n_vocab];
        let mut routes = vec![Vec::new(); self.hp.n_layer];
        forward(self.be, &self.w, &self.hp, &self.hp.rope, &mut self.kv, &b, &mut self.s, &mut || true, Some(&mut routes), &mut logits)?;
        Ok((logits, routes))
    }
}

fn argmax(v: &[f32]) -> usize {
    v.iter().enumerate().fold(0, |b, (i, &x)| if x > v[b] { i } else { b })
}

fn margin(v: &[f32]) -> f32 {
    let a = argmax(v);
    v[a] - v.iter().enumerate().filter(|&(i, _)| i != a).map(|(_, &x)| x).fold(f32::NEG_INFINITY, f32::max)
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, |m, d| if d.is_nan() { f32::INFINITY } else { m.max(d) })
}

/// Prompt logits and a greedy continuation on one backend: (prompt logits, [(token, logits it
/// was chosen from)]). With `forced`, those tokens are fed instead of the backend's own choices
/// (so both backends decode the same sequence and every step can be compared).
/// Expert choices of every forward pass: `[pass][layer]`, token-major within a layer.
type Routes = Vec<Vec<Vec<u32>>>;

fn greedy<B: Backend>(be: &B, g: &Arc<Gguf>, prompt: &[u32], steps: usize, forced: Option<&[u32]>) -> xdan::Result<(Vec<f32>, Vec<(u32, Vec<f32>)>, Routes)> {
    let mut r = Runner::new(be, g, prompt.len() + steps + 1)?;
    let nv = r.hp.n_vocab;
    let (lp, rp) = r.step(prompt, 0)?;
    let mut routes = vec![rp];
    let mut last = lp[(prompt.len() - 1) * nv..].to_vec();
    let mut out = Vec::new();
    for i in 0..steps {
        let t = forced.map(|f| f[i]).unwrap_or(argmax(&last) as u32);
        let (l, rs) = r.step(&[t], prompt.len() + i)?;
        routes.push(rs);
        out.push((t, last));
        last = l;
    }
    Ok((lp, out, routes))
}

/// The first (pass, token of the pass) whose expert choice differs between `a` and `b`.
fn first_route_diff(a: &Routes, b: &Routes, n_prompt: usize) -> Option<(usize, usize)> {
    for (pass, (la, lb)) in a.iter().zip(b).enumerate() {
        let mut first: Option<usize> = None;
        for (ra, rb) in la.iter().zip(lb) {
            let k = ra.len() / if pass == 0 { n_prompt } else { 1 };
            if let Some(i) = ra.iter().zip(rb).position(|(x, y)| x != y) {
                let t = i / k.max(1);
                first = Some(first.map_or(t, |f| f.min(t)));
            }
        }
        if let Some(t) = first {
            return Some((pass, t));
        }
    }
    None
}

/// Relative logit tolerance of a model whose matrices are mostly `ty`.
fn tol_of(ty: GgmlType) -> f32 {
    use GgmlType::*;
    match ty {
        F32 | F16 | BF16 => 1e-3,
        Q8_0 => 5e-3,
        _ => 5e-2,
    }
}

/// The matrix type most of a model's bytes are in.
fn main_type(g: &Gguf) -> GgmlType {
    let mut by: Vec<(GgmlType, u64)> = Vec::new();
    for t in g.tensors() {
        match by.iter_mut().find(|(ty, _)| *ty == t.ty) {
            Some(e) => e.1 += t.n_bytes,
            None => by.push((t.ty, t.n_bytes)),
        }
    }
    by.into_iter().max_by_key(|e| e.1).map(|e| e.0).unwrap_or(GgmlType::F32)
}

/// llama.cpp's greedy continuation of its prompt p1 and its margins, from `refs.json`.
fn llama_greedy(dir: &Path) -> Option<(Vec<u32>, Vec<u32>, Vec<f32>)> {
    let j: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("refs.json")).ok()?).ok()?;
    let g = &j["greedy"];
    let pname = g["prompt"].as_str()?;
    let prompt = j["prompts"].as_array()?.iter().find(|p| p["name"] == pname)?;
    let ids = |v: &serde_json::Value| v.as_array().map(|a| a.iter().filter_map(|x| x.as_u64().map(|x| x as u32)).collect::<Vec<_>>());
    let margins = g["top1_minus_top2"].as_array()?.iter().filter_map(|x| x.as_f64().map(|x| x as f32)).collect();
    Some((ids(&prompt["ids"])?, ids(&g["ids"])?, margins))
}

/// One model through both backends; false when a check fails.
fn check<D: Device>(gpu: &CudaBackend<D>, name: &str, path: &Path, steps: usize, refs: Option<&Path>) -> bool {
    let t = Instant::now();
    let g = match Gguf::open(path, true) {
        Ok(g) => Arc::new(g),
        Err(e) => {
            println!("FAIL {name}: {}", e.message);
            return false;
        }
    };
    let ty = main_type(&g);
    let llama = refs.and_then(llama_greedy);
    let prompt: Vec<u32> = llama.as_ref().map(|l| l.0.clone()).unwrap_or(PROMPT.to_vec());
    let (lc, sc, rc) = match greedy(&CpuBackend, &g, &prompt, steps, None) {
        Ok(r) => r,
        Err(e) => {
            println!("FAIL {name}: the CPU forward pass failed: {}", e.message);
            return false;
        }
    };
    let cpu_tokens: Vec<u32> = sc.iter().map(|s| s.0).collect();
    let (lg, sg, rg) = match greedy(gpu, &g, &prompt, steps, Some(&cpu_tokens)) {
        Ok(r) => r,
        Err(e) if e.kind == xdan::ErrorKind::Unsupported => {
            println!("n/a  {name}: the CUDA backend does not run it: {}", e.message);
            return true;
        }
        Err(e) => {
            println!("FAIL {name}: the GPU forward pass failed: {}", e.message);
            return false;
        }
    };
    let finite = lg.iter().chain(sg.iter().flat_map(|s| s.1.iter())).all(|v| v.is_finite());
    let scale = lc.iter().fold(0f32, |m, v| m.max(v.abs()));
    let tol = tol_of(ty) * scale;
    // Where the two backends' experts first differ (a router near-tie: the q8_1 activations of
    // the GPU against the CPU's Q8_K/Q8_1 ones move router logits by a little), the logits
    // after it legitimately part: compare the prompt positions before it and the steps up to it.
    let split = first_route_diff(&rc, &rg, prompt.len());
    let nv = lc.len() / prompt.len();
    let prompt_upto = match split {
        Some((0, t)) => t,
        _ => prompt.len(),
    };
    let steps_upto = match split {
        Some((0, _)) => 0,
        Some((p, _)) => p, // sg[i] holds the logits of pass i (0: the prompt's last position)
        None => steps,
    };
    if prompt_upto == 0 {
        // Nothing before the split: neither a pass nor a failure, and said so.
        println!("n/c  {name} ({ty}): not compared: the experts differ from the first prompt token on (all logits: {:.2e})", max_diff(&lg, &lc));
        return true;
    }
    let d_prompt = max_diff(&lg[..prompt_upto * nv], &lc[..prompt_upto * nv]);
    // Both decode the CPU's greedy tokens; the GPU's choice at each step must be the CPU's,
    // unless the CPU's top1-top2 margin is under twice the largest logit difference (a near-tie).
    let d_steps = sg.iter().zip(&sc).take(steps_upto).map(|(g, c)| max_diff(&g.1, &c.1)).fold(0f32, f32::max);
    let d_all = sg.iter().zip(&sc).map(|(g, c)| max_diff(&g.1, &c.1)).fold(0f32, f32::max);
    let routing = match split {
        None => "experts = CPU in every pass".to_string(),
        Some((0, t)) => format!("experts first differ at prompt token {t}: compared before it (all steps after: {d_all:.2e})"),
        Some((p, _)) => format!("experts first differ at step {}: {steps_upto}/{steps} steps compared (all: {d_all:.2e})", p - 1),
    };
    let gpu_choice: Vec<u32> = sg.iter().map(|s| argmax(&s.1) as u32).collect();
    let (mut same, mut ties, mut wrong) = (0, 0, Vec::new());
    for (i, (g, c)) in gpu_choice.iter().zip(&sc).enumerate().take(steps_upto) {
        if *g == c.0 {
            same += 1;
        } else if margin(&c.1) < 2.0 * d_prompt.max(d_steps) {
            ties += 1;
        } else {
            wrong.push(format!("step {i}: {g} vs CPU {} (margin {:.2e})", c.0, margin(&c.1)));
        }
    }
    let greedy_ok = wrong.is_empty();
    let verdict = if greedy_ok { String::new() } else { format!(" [{}]", wrong.join("; ")) };
    let mut ok = finite && d_prompt <= tol && d_steps <= tol && greedy_ok;
    let mut extra = String::new();
    if let Some((_, ids, margins)) = &llama {
        // Up to llama.cpp's first margin under 0.1, the continuation must be its own.
        let upto = margins.iter().position(|&m| m < 0.1).unwrap_or(margins.len()).min(steps);
        let agree = gpu_choice.iter().zip(ids).take_while(|(g, i)| g == i).count();
        let llama_ok = agree >= upto;
        ok &= llama_ok;
        extra = format!("; greedy = llama.cpp for {agree}/{upto} steps before its first margin < 0.1");
    }
    println!(
        "{} {name} ({ty}): max|logit diff| prompt {d_prompt:.2e}, steps {d_steps:.2e} (tol {tol:.2e} = {} x max|logit| {scale:.2}); argmax = CPU {same}/{steps_upto} ({ties} near-ties); {routing}{verdict}{extra}{} [{:.1} s]",
        if ok { "ok  " } else { "FAIL" },
        tol_of(ty),
        if finite { "" } else { "; NON-FINITE logits" },
        t.elapsed().as_secs_f64()
    );
    ok
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |f: &str| args.iter().position(|a| a == f).and_then(|i| args.get(i + 1)).cloned();
    // The one argument that is neither a flag nor a flag's value.
    let valued = ["--types", "--steps", "--emu"];
    let data = (0..args.len())
        .find(|&i| !args[i].starts_with("--") && (i == 0 || !valued.contains(&args[i - 1].as_str())))
        .map(|i| PathBuf::from(&args[i]))
        .unwrap_or_else(|| PathBuf::from(format!("{}/tests/data", env!("CARGO_MANIFEST_DIR"))));
    let steps: usize = flag("--steps").and_then(|s| s.parse().ok()).unwrap_or(16);
    let only: Option<Vec<String>> = flag("--types").map(|s| s.split(',').map(|t| t.trim().to_ascii_uppercase()).collect());
    let want = |n: &str| only.as_ref().map(|o| o.iter().any(|x| x == &n.to_ascii_uppercase())).unwrap_or(true);
    let fixtures = !args.iter().any(|a| a == "--no-fixtures");
    let synthetic = !args.iter().any(|a| a == "--no-synthetic");

    if let Some(lib) = flag("--emu") {
        match EmuDevice::open(&lib) {
            Ok(d) => std::process::exit(run_all(&CudaBackend::new(Arc::new(d)), &data, steps, fixtures, synthetic, &want)),
            Err(e) => {
                println!("FAIL the emulator {lib}: {}", e.message);
                std::process::exit(1)
            }
        }
    }
    match probe() {
        Ok(d) => {
            for x in &d {
                println!("device {}: {} (sm_{}), {} MiB", x.ordinal, x.name, x.arch, x.total_mem >> 20);
            }
        }
        Err(e) => {
            println!("no GPU: {}", e.message);
            std::process::exit(2);
        }
    }
    let dev = match GpuDevice::open(0) {
        Ok(d) => Arc::new(d),
        Err(e) => {
            println!("FAIL opening the GPU: {}", e.message);
            std::process::exit(1);
        }
    };
    // --lazy: load only the programs a launch needs (under compute-sanitizer each module load
    // is instrumented, and a small run needs few of them).
    if !args.iter().any(|a| a == "--lazy") {
        let t = Instant::now();
        if let Err(e) = dev.preload() {
            println!("FAIL loading the kernels: {}", e.message);
            std::process::exit(1);
        }
        println!("kernels ready in {:.1} s", t.elapsed().as_secs_f64());
    }
    let code = run_all(&CudaBackend::new(dev.clone()), &data, steps, fixtures, synthetic, &want);
    if let Err(e) = dev.synchronize() {
        println!("FAIL at the end: {}", e.message);
        std::process::exit(1);
    }
    std::process::exit(code);
}

fn run_all<D: Device>(gpu: &CudaBackend<D>, data: &Path, steps: usize, fixtures: bool, synthetic: bool, want: &dyn Fn(&str) -> bool) -> i32 {
    let (mut n, mut failed) = (0, Vec::new());
    if fixtures {
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(data.join("tiny-mixtral")).map(|r| r.flatten().map(|e| e.path()).collect()).unwrap_or_default();
        dirs.sort();
        for dir in dirs {
            let v = dir.file_name().unwrap().to_string_lossy().into_owned();
            let file = dir.join(format!("tiny-mixtral-{v}.gguf"));
            if !file.exists() || !want(&v) {
                continue;
            }
            n += 1;
            let refs = dir.join("refs.json");
            if !check(gpu, &format!("fixture {v}"), &file, steps, refs.exists().then_some(&dir)) {
                failed.push(format!("fixture {v}"));
            }
        }
    }
    if synthetic {
        let tmp = std::env::temp_dir().join(format!("xdan-parity-{}", std::process::id()));
        if let Err(e) = std::fs::create_dir_all(&tmp) {
            println!("FAIL {}: {e}", tmp.display());
            return 1;
        }
        for f in TYPE_FACTS.iter().filter(|f| can_randomize(f.ty) && want(f.name)) {
            n += 1;
            let path = tmp.join(format!("random-{}.gguf", f.name));
            let name = format!("random {}", f.name);
            let made = synth_model::write(&path, &synth_model::Shape::tiny_mixtral(), synth_model::Mix::All(f.ty), 7);
            let ok = match made {
                Ok(_) => check(gpu, &name, &path, steps, None),
                Err(e) => {
                    println!("FAIL {name}: writing the model: {}", e.message);
                    false
                }
            };
            let _ = std::fs::remove_file(&path);
            if !ok {
                failed.push(name);
            }
        }
        let _ = std::fs::remove_dir_all(&tmp);
    }
    if failed.is_empty() {
        println!("parity: all {n} models pass");
        0
    } else {
        println!("parity: {} of {n} FAILED: {}", failed.len(), failed.join(", "));
        1
    }
}
