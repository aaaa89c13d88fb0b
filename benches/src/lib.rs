//! Shared measurement helpers for the benches: each bench measures its operation and its
//! floor in the same run with [`ns_per_op`] and prints both with [`report`].
//!
//! Criterion gives the detailed statistics; these helpers give the one number per operation
//! that the ratio needs (the fastest of several timed batches, which is the least disturbed by
//! other work on a shared machine).

use std::time::{Duration, Instant};

use tokenmeter_core::{Finish, Meter};

/// Nanoseconds per operation of `f`, which performs `ops_per_call` operations per call: the
/// fastest of 9 batches of calls, each batch about 20 ms long.
pub fn ns_per_op<F: FnMut()>(ops_per_call: u64, mut f: F) -> f64 {
    // Calibrate the batch size to about 20 ms.
    let mut calls: u64 = 1;
    loop {
        let t = Instant::now();
        for _ in 0..calls {
            f();
        }
        if t.elapsed().as_millis() >= 20 || calls >= 1 << 30 {
            break;
        }
        calls *= 2;
    }
    (0..9)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..calls {
                f();
            }
            t.elapsed().as_nanos() as f64 / (calls * ops_per_call) as f64
        })
        .fold(f64::INFINITY, f64::min)
}

/// Nanoseconds per call of `a` and of `b`, timed in alternating batches of about 2 ms, the
/// fastest of 31 batches each. On a busy shared machine the two see the same disturbances at
/// about the same times, so their ratio holds much better than that of two [`ns_per_op`] calls
/// made one after the other.
pub fn ns_per_call_pair<A: FnMut(), B: FnMut()>(mut a: A, mut b: B) -> (f64, f64) {
    fn calls_for_2ms(f: &mut dyn FnMut()) -> u64 {
        let mut calls: u64 = 1;
        loop {
            let t = Instant::now();
            for _ in 0..calls {
                f();
            }
            if t.elapsed().as_micros() >= 2000 || calls >= 1 << 30 {
                return calls;
            }
            calls *= 2;
        }
    }
    fn batch(f: &mut dyn FnMut(), calls: u64) -> f64 {
        let t = Instant::now();
        for _ in 0..calls {
            f();
        }
        t.elapsed().as_nanos() as f64 / calls as f64
    }
    let (ca, cb) = (calls_for_2ms(&mut a), calls_for_2ms(&mut b));
    let (mut best_a, mut best_b) = (f64::INFINITY, f64::INFINITY);
    for _ in 0..31 {
        best_a = best_a.min(batch(&mut a, ca));
        best_b = best_b.min(batch(&mut b, cb));
    }
    (best_a, best_b)
}

/// Prints one result line: the operation, its cost, its floor and the ratio (and a target, if
/// the issue sets one as a ratio).
pub fn report(what: &str, ns: f64, floor_what: &str, floor_ns: f64, target_ratio: Option<f64>) {
    let ratio = ns / floor_ns;
    let verdict = match target_ratio {
        Some(t) if ratio <= t => format!(" (target <= {t:.2}x: met)"),
        Some(t) => format!(" (target <= {t:.2}x: NOT met)"),
        None => String::new(),
    };
    println!("RATIO {what}: {ns:.2} ns vs {floor_what}: {floor_ns:.2} ns = {ratio:.2}x{verdict}");
}

/// Nanoseconds per `token()` on one guard of `meter` in a long generation (periodic and
/// bucket-full flushes included, so an installed exporter's flush cost is amortized in).
pub fn token_ns(meter: &Meter) -> f64 {
    let mut g = meter.request().start();
    g.token();
    let ns = ns_per_op(1, || g.token());
    g.finish(Finish::Stop);
    ns
}

fn cpu_clock(clock: libc::clockid_t) -> Duration {
    // SAFETY: `timespec` is plain old data; all-zero is a valid value.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// CPU time consumed by the calling thread so far.
pub fn thread_cpu() -> Duration {
    cpu_clock(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// CPU time consumed by the whole process (every thread) so far.
pub fn process_cpu() -> Duration {
    cpu_clock(libc::CLOCK_PROCESS_CPUTIME_ID)
}
