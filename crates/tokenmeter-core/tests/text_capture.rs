//! Opt-in text capture: nothing without it; with it, the redactor's output on the request-log
//! event and the span, bounded, and a panicking redactor contained.
//!
//! A small recording subscriber (scoped to each test's thread with `with_default`) keeps
//! every field recorded on spans and events, so the checks are exact.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::borrow::Cow;
use std::cell::Cell;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Debug;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use common::capture;
use metrics_util::debugging::DebuggingRecorder;
use tokenmeter_core::{
    ErrorKind, Finish, MaskEmailsAndNumbers, Meter, Redact, RequestGuard, TextKind, Truncate,
    Verbatim,
};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

// ---- allocation counting (this thread only) -------------------------------------------------

struct Counting;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

fn count_alloc() {
    let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
}

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count_alloc();
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, passed on as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` through this allocator with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count_alloc();
        // SAFETY: as for `dealloc`, and the caller upholds `realloc`'s contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn allocations_in(f: impl FnOnce()) -> u64 {
    let before = ALLOCS.with(Cell::get);
    f();
    ALLOCS.with(Cell::get) - before
}

// ---- a recording subscriber ------------------------------------------------------------------

type Fields = BTreeMap<String, String>;

#[derive(Debug, Clone)]
struct Recorded {
    level: Level,
    target: String,
    fields: Fields,
}

#[derive(Default)]
struct State {
    next_id: AtomicU64,
    spans: Mutex<HashMap<u64, Fields>>,
    events: Mutex<Vec<Recorded>>,
}

#[derive(Clone, Default)]
struct Rec(Arc<State>);

struct Visitor<'a>(&'a mut Fields);

impl Visit for Visitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), value.to_string());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

impl Subscriber for Rec {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &Attributes<'_>) -> Id {
        let id = self.0.next_id.fetch_add(1, Relaxed) + 1;
        let mut fields = Fields::new();
        span.record(&mut Visitor(&mut fields));
        self.0.spans.lock().expect("lock").insert(id, fields);
        Id::from_u64(id)
    }
    fn record(&self, span: &Id, values: &Record<'_>) {
        let mut spans = self.0.spans.lock().expect("lock");
        let fields = spans.entry(span.into_u64()).or_default();
        values.record(&mut Visitor(fields));
    }
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut fields = Fields::new();
        event.record(&mut Visitor(&mut fields));
        self.0.events.lock().expect("lock").push(Recorded {
            level: *event.metadata().level(),
            target: event.metadata().target().to_owned(),
            fields,
        });
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

impl Rec {
    /// The request-log events ("request finished"), in order.
    fn finished(&self) -> Vec<Fields> {
        self.0
            .events
            .lock()
            .expect("lock")
            .iter()
            .filter(|e| {
                e.target == "tokenmeter::request"
                    && e.fields.get("message").map(String::as_str) == Some("request finished")
            })
            .map(|e| e.fields.clone())
            .collect()
    }
    /// The request spans (those with a `gen_ai.response.id`), by request id.
    fn request_span(&self, request_id: &str) -> Fields {
        self.0
            .spans
            .lock()
            .expect("lock")
            .values()
            .find(|f| f.get("gen_ai.response.id").map(String::as_str) == Some(request_id))
            .cloned()
            .expect("request span")
    }
    fn warnings(&self) -> Vec<Recorded> {
        self.0
            .events
            .lock()
            .expect("lock")
            .iter()
            .filter(|e| e.level == Level::WARN)
            .cloned()
            .collect()
    }
}

/// Runs `f` with a fresh recording subscriber and a fresh metrics recorder on this thread.
fn run(f: impl FnOnce()) -> (Rec, common::Captured) {
    let rec = Rec::default();
    let metrics = DebuggingRecorder::new();
    let snap = metrics.snapshotter();
    tracing::subscriber::with_default(rec.clone(), || metrics::with_local_recorder(&metrics, f));
    (rec, capture(&snap))
}

const TEXT_FIELDS: [&str; 4] = ["prompt", "output", "prompt_truncated", "output_truncated"];
const SPAN_TEXT_FIELDS: [&str; 3] = [
    "gen_ai.input.messages",
    "gen_ai.output.messages",
    "tokenmeter.text_truncated",
];

fn messages(json: &str) -> serde_json::Value {
    serde_json::from_str(json).expect("messages are JSON")
}

fn one_message(role: &str, content: &str) -> serde_json::Value {
    serde_json::json!([{ "role": role, "parts": [{ "type": "text", "content": content }] }])
}

// ---- off by default --------------------------------------------------------------------------

#[test]
fn without_opt_in_no_text_reaches_the_log_or_the_span() {
    let meter = Meter::builder().model("m").build();
    assert!(!meter.captures_text());
    let (rec, _) = run(|| {
        let mut g = meter.request().request_id("r1").start();
        assert!(!g.captures_text());
        g.prompt_text("SECRET prompt ann@example.com");
        g.token();
        g.output_text("SECRET ");
        g.output_text("output");
        g.finish(Finish::Stop);
    });
    let log = rec.finished();
    assert_eq!(log.len(), 1);
    for f in TEXT_FIELDS {
        assert!(!log[0].contains_key(f), "{f} in {:?}", log[0]);
    }
    let span = rec.request_span("r1");
    for f in SPAN_TEXT_FIELDS {
        assert!(!span.contains_key(f), "{f} in {span:?}");
    }
    let all = format!("{:?} {:?}", rec.0.spans, rec.0.events);
    assert!(!all.contains("SECRET"), "{all}");
}

#[test]
fn without_opt_in_handing_in_text_does_not_allocate() {
    let meter = Meter::default();
    let mut g = meter.request().start();
    let big = "x".repeat(1 << 20);
    let n = allocations_in(|| {
        for _ in 0..10_000 {
            g.prompt_text("prompt");
            g.output_text("piece");
        }
        g.output_text(&big);
    });
    assert_eq!(n, 0);
    g.finish(Finish::Stop);

    // the counter does see allocations: with capture on, buffering text allocates
    let meter = Meter::builder().capture_text(Verbatim).build();
    let mut g = meter.request().start();
    assert!(allocations_in(|| g.output_text("piece")) > 0);
}

// ---- with opt-in -----------------------------------------------------------------------------

#[test]
fn the_redactor_is_applied_once_per_kind_and_reaches_log_and_span() {
    let meter = Meter::builder()
        .capture_text(MaskEmailsAndNumbers::new())
        .build();
    assert!(meter.captures_text());
    let (rec, misuse) = run(|| {
        let mut g = meter.request().request_id("r1").start();
        assert!(g.captures_text());
        g.prompt_text("Write to ann@example.com, ");
        g.prompt_text("my phone is 555-123-4567.");
        for piece in [
            "Sure",
            ", ",
            "I will write to ",
            "ann",
            "@",
            "example.com",
            "!",
        ] {
            g.token();
            g.output_text(piece);
        }
        g.finish(Finish::Stop);
        assert!(!g.captures_text(), "the text was taken at the end");
        g.output_text("after the end: ignored");
    });
    let log = rec.finished();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0]["prompt"], "Write to [email], my phone is [number].");
    // the e-mail arrived in four pieces: it is masked in the reassembled text
    assert_eq!(log[0]["output"], "Sure, I will write to [email]!");
    assert!(!log[0].contains_key("prompt_truncated"));
    assert!(!log[0].contains_key("output_truncated"));

    let span = rec.request_span("r1");
    assert_eq!(
        messages(&span["gen_ai.input.messages"]),
        one_message("user", "Write to [email], my phone is [number].")
    );
    assert_eq!(
        messages(&span["gen_ai.output.messages"]),
        one_message("assistant", "Sure, I will write to [email]!")
    );
    assert!(!span.contains_key("tokenmeter.text_truncated"));
    assert_eq!(misuse.counter("tokenmeter_misuse_total", &[]), 0);
}

#[test]
fn a_closure_redactor_sees_each_kind_once() {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&calls);
    let meter = Meter::builder()
        .capture_text(move |kind: TextKind, text: &str| {
            seen.lock().expect("lock").push((kind, text.to_owned()));
            format!("{}:{}", kind.as_str(), text.len())
        })
        .build();
    let (rec, _) = run(|| {
        let mut g = meter.request().start();
        g.prompt_text("abc");
        for _ in 0..100 {
            g.token();
            g.output_text("é"); // 2 bytes each
        }
        g.finish(Finish::Length);
    });
    assert_eq!(
        *calls.lock().expect("lock"),
        vec![
            (TextKind::Prompt, "abc".to_owned()),
            (TextKind::Output, "é".repeat(100)),
        ]
    );
    let log = rec.finished();
    assert_eq!(log[0]["prompt"], "prompt:3");
    assert_eq!(log[0]["output"], "output:200");
}

#[test]
fn many_pieces_reassemble_exactly() {
    let meter = Meter::builder().capture_text(Verbatim).build();
    let pieces: Vec<String> = (0..2000).map(|i| format!("{i}·")).collect();
    let want: String = pieces.concat();
    assert!(want.len() < tokenmeter_core::DEFAULT_TEXT_MAX_BYTES);
    let (rec, _) = run(|| {
        let mut g = meter.request().request_id("r").start();
        for p in &pieces {
            g.token();
            g.output_text(p);
        }
        g.finish(Finish::Stop);
    });
    let log = rec.finished();
    assert_eq!(log[0]["output"], want);
    assert!(!log[0].contains_key("prompt"), "no prompt handed in");
    assert_eq!(
        messages(&rec.request_span("r")["gen_ai.output.messages"]),
        one_message("assistant", &want)
    );
}

#[test]
fn the_byte_cap_holds_and_marks_the_text_truncated() {
    let meter = Meter::builder()
        .capture_text(Verbatim)
        .text_max_bytes(10)
        .build();
    let (rec, _) = run(|| {
        let mut g = meter.request().request_id("r").start();
        g.prompt_text(&"p".repeat(1 << 20)); // one huge piece
        g.token();
        g.output_text("ééééé"); // 10 bytes: exactly the cap
        g.output_text(""); // nothing
        g.finish(Finish::Stop);
    });
    let log = rec.finished();
    assert_eq!(log[0]["prompt"], "p".repeat(10));
    assert_eq!(log[0]["prompt_truncated"], "true");
    assert_eq!(log[0]["output"], "ééééé");
    assert!(!log[0].contains_key("output_truncated"));
    assert_eq!(rec.request_span("r")["tokenmeter.text_truncated"], "true");

    // a piece that crosses the cap keeps what fits, up to a character boundary
    let (rec, _) = run(|| {
        let mut g = meter.request().start();
        g.output_text("abcdefgh"); // 8 bytes
        g.output_text("xé"); // 'x' fits, 'é' (2 bytes) would cross the cap
        g.finish(Finish::Stop);
    });
    let log = rec.finished();
    assert_eq!(log[0]["output"], "abcdefghx");
    assert_eq!(log[0]["output_truncated"], "true");

    let (rec, _) = run(|| {
        let mut g = meter.request().start();
        g.output_text("abcdefghi"); // 9 bytes
        g.output_text("😀"); // 4 bytes: does not fit, not split
        g.output_text("j"); // would fit, but the text is already cut
        g.finish(Finish::Stop);
    });
    let log = rec.finished();
    assert_eq!(log[0]["output"], "abcdefghi");
    assert_eq!(log[0]["output_truncated"], "true");
}

#[test]
fn a_zero_cap_and_empty_text_record_no_text() {
    let meter = Meter::builder()
        .capture_text(Verbatim)
        .text_max_bytes(0)
        .build();
    let (rec, _) = run(|| {
        let mut g = meter.request().request_id("r").start();
        g.prompt_text("x");
        g.finish(Finish::Stop);
    });
    let log = rec.finished();
    assert!(!log[0].contains_key("prompt"));
    assert_eq!(log[0]["prompt_truncated"], "true");

    let meter = Meter::builder().capture_text(Verbatim).build();
    let (rec, _) = run(|| {
        let mut g = meter.request().request_id("r").start();
        g.prompt_text("");
        g.output_text("");
        g.finish(Finish::Stop);
    });
    let log = rec.finished();
    for f in TEXT_FIELDS {
        assert!(!log[0].contains_key(f), "{f}");
    }
    let span = rec.request_span("r");
    for f in SPAN_TEXT_FIELDS {
        assert!(!span.contains_key(f), "{f}");
    }
}

#[test]
fn failed_and_dropped_requests_carry_their_text_too() {
    let meter = Meter::builder().capture_text(Truncate::chars(3)).build();
    let (rec, _) = run(|| {
        let mut a = meter.request().start();
        a.output_text("partial");
        a.fail(ErrorKind::Timeout);
        let mut b = meter.request().start();
        b.prompt_text("left early");
        drop(b);
    });
    let log = rec.finished();
    assert_eq!(log.len(), 2);
    assert_eq!(
        (log[0]["error_type"].as_str(), log[0]["output"].as_str()),
        ("timeout", "par…")
    );
    assert_eq!(
        (log[1]["finish_reason"].as_str(), log[1]["prompt"].as_str()),
        ("cancelled", "lef…")
    );
}

#[test]
fn text_is_escaped_in_the_span_json() {
    let meter = Meter::builder().capture_text(Verbatim).build();
    let nasty = "quote \" backslash \\ newline \n tab \t nul \u{0} \u{1f} end </script> é 😀";
    let (rec, _) = run(|| {
        let mut g = meter.request().request_id("r").start();
        g.prompt_text(nasty);
        g.finish(Finish::Stop);
    });
    assert_eq!(rec.finished()[0]["prompt"], nasty);
    assert_eq!(
        messages(&rec.request_span("r")["gen_ai.input.messages"]),
        one_message("user", nasty)
    );
}

// ---- a redactor that panics ------------------------------------------------------------------

struct PanicsOnPrompts;

impl Redact for PanicsOnPrompts {
    fn redact<'a>(&self, kind: TextKind, text: &'a str) -> Cow<'a, str> {
        assert!(kind != TextKind::Prompt, "redactor bug");
        Cow::Borrowed(text)
    }
}

#[test]
fn a_panicking_redactor_drops_that_text_and_is_counted() {
    let meter = Meter::builder().capture_text(PanicsOnPrompts).build();
    let (rec, metrics) = run(|| {
        for id in ["r1", "r2"] {
            let mut g = meter.request().request_id(id).start();
            g.prompt_text("the prompt");
            g.token();
            g.output_text("the output");
            g.finish(Finish::Stop);
        }
    });
    let log = rec.finished();
    assert_eq!(log.len(), 2, "both requests ended and were logged");
    for l in &log {
        assert!(!l.contains_key("prompt"));
        assert_eq!(l["output"], "the output");
        assert_eq!(l["finish_reason"], "stop");
    }
    assert!(!rec.request_span("r1").contains_key("gen_ai.input.messages"));
    assert_eq!(
        metrics.counter("tokenmeter_misuse_total", &["kind=redactor_panic"]),
        2
    );
    assert_eq!(meter.totals().requests_ended, 2);
    let warnings = rec.warnings();
    assert_eq!(warnings.len(), 1, "warned once per meter: {warnings:?}");
    assert!(!format!("{warnings:?}").contains("the prompt"));
}

#[test]
fn a_panicking_redactor_during_unwinding_does_not_abort() {
    let meter = Meter::builder()
        .capture_text(|_: TextKind, _: &str| -> String { panic!("redactor bug") })
        .build();
    let (rec, metrics) = run(|| {
        let loop_panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut g: RequestGuard = meter.request().start();
            g.prompt_text("p");
            g.token();
            g.output_text("o");
            panic!("generation loop bug");
        }));
        assert!(loop_panicked.is_err(), "the loop's panic goes on unwinding");
    });
    let log = rec.finished();
    assert_eq!(log.len(), 1);
    assert_eq!(log[0]["error_type"], "panic");
    assert!(!log[0].contains_key("prompt") && !log[0].contains_key("output"));
    assert_eq!(
        metrics.counter("tokenmeter_misuse_total", &["kind=redactor_panic"]),
        2
    );
}

#[test]
fn guard_size() {
    // The no-capture guard holds one more pointer than before text capture (464 -> 472
    // bytes); the 512-byte budget with its heap is checked in timeline.rs.
    let size = std::mem::size_of::<RequestGuard>();
    assert!(size <= 512, "{size}");
    println!("RequestGuard: {size} bytes");
}
