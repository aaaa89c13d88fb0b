//! Feeding a request's monitors allocates nothing per token: a counting global allocator
//! watches every call between `request()` and `finish()`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use tokenmeter_core::Meter;
use tokenmeter_quality::drift::{BaselineRecorder, DriftMonitor};
use tokenmeter_quality::{LexiconSentiment, LogitsExt, QualityConfig, QualityMonitor, TokenSet};

struct Counting;
static ALLOCS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Only this test's thread, inside the measured section, counts.
    static COUNTING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn count() {
    if COUNTING.with(std::cell::Cell::get) {
        ALLOCS.fetch_add(1, Relaxed);
    }
}

// SAFETY: forwards to the system allocator unchanged; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller's contract is passed through.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn feeding_tokens_does_not_allocate() {
    let meter = Meter::default();
    let mut rec = BaselineRecorder::new();
    rec.observe_request(1, 1);
    let drift = Arc::new(DriftMonitor::new(&meter, rec.baseline(), 64));
    let config = QualityConfig::default()
        .keywords(["alpha", "beta"])
        .allowed_tokens(TokenSet::from_ids(0..50_000))
        .scorer(Arc::new(LexiconSentiment::default()))
        .drift(drift)
        .expected_tokens(4096);
    let quality = QualityMonitor::new(&meter, config).expect("monitor");
    let mut req = meter.request().start();
    let mut q = quality.request();
    let logits = vec![0.5f32; 4096];
    let top = [-0.1f32, -2.5, -4.0];
    COUNTING.with(|c| c.set(true));
    for i in 0..4000u32 {
        req.token();
        req.logits(&logits);
        q.piece(
            i.wrapping_mul(2_654_435_761) % 60_000,
            b" I cannot help with alpha \xE2\x82",
        );
        q.bytes(b"\xAC");
        q.logprob_top_k(-0.1, &top);
    }
    COUNTING.with(|c| c.set(false));
    assert_eq!(
        ALLOCS.load(Relaxed),
        0,
        "allocations while feeding 4000 tokens"
    );
    let r = q.finish(&req);
    assert!(r.refusal && r.tokens == 4000);
}
