//! GPU time by kernel, when `XDAN_CUDA_PROFILE=1`: each directly issued launch gets a pair of
//! events around it; their times are read whenever the host has waited for the device anyway
//! (a synchronize, a download), summed by kernel, and printed to stderr when the device is
//! dropped. A diagnostic for where a decode step's time goes where Nsight Systems is not
//! installed. Graph replay is off while it runs (a replayed graph has no per-launch events), and
//! the events add a little time between launches.

use std::collections::HashMap;
use std::ffi::{c_int, c_uint, c_void};

use super::dl::Library;
use crate::Result;

type CuResult = c_int;
type Event = *mut c_void;
type Stream = *mut c_void;

struct EventApi {
    create: unsafe extern "C" fn(*mut Event, c_uint) -> CuResult,
    record: unsafe extern "C" fn(Event, Stream) -> CuResult,
    elapsed: unsafe extern "C" fn(*mut f32, Event, Event) -> CuResult,
    destroy: unsafe extern "C" fn(Event) -> CuResult,
}

/// Launch count and summed milliseconds per kernel handle.
pub(super) struct Profile {
    api: EventApi,
    /// Events ready for reuse.
    free: Vec<Event>,
    /// (kernel handle, start, end) of launches not read yet.
    pending: Vec<(usize, Event, Event)>,
    totals: HashMap<usize, (u64, f64)>,
}

// SAFETY: events are plain driver handles, used under the device's lock.
unsafe impl Send for Profile {}

impl Profile {
    /// A profile when `XDAN_CUDA_PROFILE=1` and the driver has the event API.
    pub fn from_env(lib: &Library) -> Option<Profile> {
        if std::env::var("XDAN_CUDA_PROFILE").ok().as_deref() != Some("1") {
            return None;
        }
        // SAFETY: the types are those of cuda.h (CUDA 12.8+ also names the timer _v2).
        let api = unsafe {
            EventApi {
                create: lib.sym("cuEventCreate").ok()?,
                record: lib.sym("cuEventRecord").ok()?,
                elapsed: lib.sym("cuEventElapsedTime_v2").or_else(|_| lib.sym("cuEventElapsedTime")).ok()?,
                destroy: lib.sym("cuEventDestroy_v2").ok()?,
            }
        };
        Some(Profile { api, free: Vec::new(), pending: Vec::new(), totals: HashMap::new() })
    }

    unsafe fn event(&mut self) -> Option<Event> {
        if let Some(e) = self.free.pop() {
            return Some(e);
        }
        let mut e: Event = std::ptr::null_mut();
        ((self.api.create)(&mut e, 0) == 0).then_some(e)
    }

    /// Runs `launch` (on the legacy stream) between two events; a launch whose events cannot be
    /// made or recorded is run untimed.
    pub unsafe fn time(&mut self, handle: usize, launch: impl FnOnce() -> Result<()>) -> Result<()> {
        let (Some(a), Some(b)) = (self.event(), self.event()) else { return launch() };
        if (self.api.record)(a, std::ptr::null_mut()) != 0 {
            self.free.extend([a, b]);
            return launch();
        }
        let r = launch();
        if r.is_ok() && (self.api.record)(b, std::ptr::null_mut()) == 0 {
            self.pending.push((handle, a, b));
        } else {
            self.free.extend([a, b]);
        }
        r
    }

    /// Adds the pending launches' times; the caller has waited for every issued launch.
    pub unsafe fn harvest(&mut self) {
        for (h, a, b) in std::mem::take(&mut self.pending) {
            let mut ms = 0f32;
            if (self.api.elapsed)(&mut ms, a, b) == 0 {
                let t = self.totals.entry(h).or_insert((0, 0.0));
                t.0 += 1;
                t.1 += ms as f64;
            }
            self.free.extend([a, b]);
        }
    }

    /// The table by kernel, most time first: launches, total ms, µs per launch, share.
    pub fn report(&self, name_of: impl Fn(usize) -> String) -> String {
        let mut rows: Vec<(String, u64, f64)> = self.totals.iter().map(|(&h, &(n, ms))| (name_of(h), n, ms)).collect();
        rows.sort_by(|a, b| b.2.total_cmp(&a.2));
        let all: f64 = rows.iter().map(|r| r.2).sum();
        let mut s = format!("GPU time by kernel (XDAN_CUDA_PROFILE, direct launches), {all:.3} ms in all:\n");
        s.push_str("| kernel | launches | ms | µs per launch | share |\n|---|---:|---:|---:|---:|\n");
        for (name, n, ms) in rows {
            s.push_str(&format!(
                "| {name} | {n} | {ms:.3} | {:.2} | {:.1} % |\n",
                1000.0 * ms / n.max(1) as f64,
                100.0 * ms / all.max(1e-12)
            ));
        }
        s
    }

    /// Destroys every event; the caller has waited for the device.
    pub unsafe fn release(&mut self) {
        for (_, a, b) in std::mem::take(&mut self.pending) {
            self.free.extend([a, b]);
        }
        for e in self.free.drain(..) {
            (self.api.destroy)(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A stand-in driver: events are counters, each "launch" lasts its end event's number in ms.
    unsafe extern "C" fn create(e: *mut Event, _: c_uint) -> CuResult {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(1);
        *e = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) as Event;
        0
    }
    unsafe extern "C" fn record(_: Event, _: Stream) -> CuResult {
        0
    }
    unsafe extern "C" fn elapsed(ms: *mut f32, _: Event, b: Event) -> CuResult {
        *ms = (b as usize % 7) as f32;
        0
    }
    unsafe extern "C" fn destroy(_: Event) -> CuResult {
        0
    }

    #[test]
    fn sums_by_kernel_and_reuses_events() {
        let mut p = Profile {
            api: EventApi { create, record, elapsed, destroy },
            free: Vec::new(),
            pending: Vec::new(),
            totals: HashMap::new(),
        };
        unsafe {
            for h in [1usize, 2, 1] {
                p.time(h, || Ok(())).unwrap();
            }
            // A failed launch is not timed, and its error comes back.
            assert!(p.time(3, || Err(crate::Error::internal("no"))).is_err());
            assert_eq!(p.pending.len(), 3);
            p.harvest();
            assert!(p.pending.is_empty());
            assert_eq!(p.free.len(), 8, "every event back in the pool");
            assert_eq!(p.totals[&1].0, 2);
            assert_eq!(p.totals[&2].0, 1);
            assert!(!p.totals.contains_key(&3));
            let want: f64 = p.totals.values().map(|t| t.1).sum();
            let table = p.report(|h| format!("k{h}"));
            assert!(table.contains(&format!("{want:.3} ms in all")), "{table}");
            assert_eq!(table.lines().filter(|l| l.starts_with("| k") && !l.starts_with("| kernel")).count(), 2, "{table}");
            p.release();
            assert!(p.free.is_empty());
        }
    }
}
