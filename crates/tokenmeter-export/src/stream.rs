//! Metering a stream of response chunks from outside the engine (feature `stream`).
//!
//! A server that does not own its engine's generation loop (a router in front of an engine, an
//! OpenAI-compatible proxy, a binding whose loop lives in C++) still sees the engine's output as
//! a stream of chunks. [`MeteredStream`] wraps that stream: it passes every item through
//! unchanged, counts the tokens each chunk carries with a [`ChunkCounter`] you supply, and ends
//! the request it owns when the stream ends, fails or is dropped.
//!
//! # Chunks are not tokens
//!
//! Counting one token per chunk is wrong in three common ways, so the counter says how many
//! tokens each chunk carries instead:
//!
//! - **The end-of-sequence token has no text.** Engines that stream only text never send a
//!   chunk for it, or send an empty one with a finish reason: it is still a generated token
//!   (OpenAI's `usage.completion_tokens` counts it).
//! - **A token that ends inside a UTF-8 character produces no chunk.** A detokenizer holds back
//!   the bytes until the character is complete, so one chunk may carry the text of several
//!   tokens (emoji, CJK, byte-fallback tokens).
//! - **With `n > 1` (several choices), each step yields one token per choice**, often as
//!   separate chunks with a `choices[].index`, or as one chunk carrying every choice.
//!
//! Count from what the engine says about tokens, not from the text: token ids in the chunk,
//! per-choice logprob entries, or running usage totals (vLLM's
//! `stream_options: {include_usage: true, continuous_usage_stats: true}` puts
//! `usage.completion_tokens` on every chunk; [`Cumulative`] turns such totals into per-chunk
//! counts). Without any of these, a chunk count is only an estimate of the token count.
//!
//! # What it cannot see
//!
//! Only what the stream shows: TTFT (from the guard's arrival to the first chunk with tokens),
//! TPOT and ITL between chunks, E2E, output tokens and finish reasons. Queue time, prefill time
//! and per-step batching need hooks inside the engine (`scheduled()`, `token_at` once per
//! step); [`MeteredStream::guard_mut`] reaches the guard if the engine reports any of them.
//! Tokens the engine produced but the stream delivers in one chunk (server-side batching of
//! SSE events) count as one step: k inter-token latencies of gap/k each.
//!
//! ```
//! use futures_util::StreamExt;
//! use tokenmeter_core::{Finish, Meter};
//! use tokenmeter_export::stream::{ChunkCount, StreamMeterExt};
//!
//! struct Chunk { token_ids: Vec<u32>, finish_reason: Option<&'static str> }
//!
//! let meter = Meter::default();
//! let guard = meter.request().prompt_tokens(7).start();
//! let chunks = futures_util::stream::iter([
//!     Chunk { token_ids: vec![9906], finish_reason: None },
//!     Chunk { token_ids: vec![11, 1917], finish_reason: None }, // two tokens, one chunk
//!     Chunk { token_ids: vec![2], finish_reason: Some("stop") }, // EOS: no text, one token
//! ]);
//! let metered = chunks.metered(guard, |c: &Chunk| {
//!     let n = ChunkCount::tokens(c.token_ids.len() as u32);
//!     match c.finish_reason.map(str::parse::<Finish>) {
//!         Some(Ok(f)) => n.finished(f),
//!         Some(Err(_)) => ChunkCount::failed(tokenmeter_core::ErrorKind::Internal), // "error"
//!         None => n,
//!     }
//! });
//! let items: Vec<Chunk> = futures_util::FutureExt::now_or_never(metered.collect()).unwrap();
//! assert_eq!(items.len(), 3);
//! assert_eq!(meter.totals().output_tokens, 4);
//! ```

use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;
use pin_project_lite::pin_project;
use tokenmeter_core::{ErrorKind, Finish, RequestGuard, RequestSummary};

/// What one chunk carries, as a [`ChunkCounter`] reports it: the tokens in it, and whether
/// the request ends with it.
///
/// ```
/// use tokenmeter_core::{ErrorKind, Finish};
/// use tokenmeter_export::stream::ChunkCount;
/// let c = ChunkCount::tokens(2).finished(Finish::Length);
/// assert_eq!(c.token_count(), 2);
/// assert_eq!(c.finish(), Some(Finish::Length));
/// assert_eq!(ChunkCount::failed(ErrorKind::Internal).error(), Some(ErrorKind::Internal));
/// assert_eq!(ChunkCount::default(), ChunkCount::NONE);
/// // The prompt length, once the engine reports it (e.g. `usage.prompt_tokens`):
/// assert_eq!(ChunkCount::tokens(1).prompt_tokens(12).prompt(), Some(12));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChunkCount {
    tokens: u32,
    end: Option<End>,
    prompt: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    Finish(Finish),
    Fail(ErrorKind),
}

impl ChunkCount {
    /// A chunk with no token and no end (a role header, a keep-alive, a usage-only chunk).
    pub const NONE: ChunkCount = ChunkCount {
        tokens: 0,
        end: None,
        prompt: None,
    };

    /// A chunk carrying `k` output tokens (summed over choices when `n > 1`).
    pub const fn tokens(k: u32) -> Self {
        ChunkCount {
            tokens: k,
            end: None,
            prompt: None,
        }
    }

    /// The request ends with this chunk, for `reason` (its tokens are counted first). With
    /// `n > 1`, report it on the chunk that ends the last running choice. Chunks after it
    /// pass through uncounted.
    pub const fn finished(self, reason: Finish) -> Self {
        ChunkCount {
            tokens: self.tokens,
            end: Some(End::Finish(reason)),
            prompt: self.prompt,
        }
    }

    /// The request's prompt length, when the engine tokenizes the prompt itself and reports
    /// it only in its output (OpenAI's `usage.prompt_tokens` on the last chunk, an engine hook
    /// that saw the tokenized prompt). The stream sets it on the guard
    /// ([`RequestGuard::set_prompt_tokens`]) the first time a chunk reports it, before that
    /// chunk's end; later reports are ignored. Leave it unset when the guard was started with
    /// `prompt_tokens(..)`.
    pub const fn prompt_tokens(self, n: u64) -> Self {
        ChunkCount {
            tokens: self.tokens,
            end: self.end,
            prompt: Some(n),
        }
    }

    /// The request failed with this chunk (an error event in the stream).
    pub const fn failed(kind: ErrorKind) -> Self {
        ChunkCount {
            tokens: 0,
            end: Some(End::Fail(kind)),
            prompt: None,
        }
    }

    /// The tokens this chunk carries.
    pub const fn token_count(&self) -> u32 {
        self.tokens
    }

    /// The finish reason, if the request finishes with this chunk.
    pub const fn finish(&self) -> Option<Finish> {
        match self.end {
            Some(End::Finish(f)) => Some(f),
            _ => None,
        }
    }

    /// The error, if the request fails with this chunk.
    pub const fn error(&self) -> Option<ErrorKind> {
        match self.end {
            Some(End::Fail(e)) => Some(e),
            _ => None,
        }
    }

    /// The prompt length this chunk reports, if any (see [`prompt_tokens`](Self::prompt_tokens)).
    pub const fn prompt(&self) -> Option<u64> {
        self.prompt
    }
}

/// Says what a stream item carries. Implemented for every `FnMut(&T) -> ChunkCount`, for
/// [`TryCounter`] (items that are `Result`s) and for [`Cumulative`] (running totals).
pub trait ChunkCounter<T> {
    /// The tokens in `item` and whether the request ends with it.
    fn count(&mut self, item: &T) -> ChunkCount;
}

impl<T, F: FnMut(&T) -> ChunkCount> ChunkCounter<T> for F {
    fn count(&mut self, item: &T) -> ChunkCount {
        self(item)
    }
}

/// Counts the `Ok` items of a fallible stream with `ok` and ends the request as failed, with
/// the [`ErrorKind`] that `err` maps the error to, at the first `Err` item. Built by
/// [`StreamMeterExt::metered_try`].
#[derive(Clone, Debug)]
pub struct TryCounter<F, M> {
    ok: F,
    err: M,
}

impl<T, E, F, M> ChunkCounter<Result<T, E>> for TryCounter<F, M>
where
    F: ChunkCounter<T>,
    M: FnMut(&E) -> ErrorKind,
{
    fn count(&mut self, item: &Result<T, E>) -> ChunkCount {
        match item {
            Ok(v) => self.ok.count(v),
            Err(e) => ChunkCount::failed((self.err)(e)),
        }
    }
}

/// Turns running totals into per-chunk counts: `total` returns the output tokens generated so
/// far as of this chunk (e.g. `usage.completion_tokens` with vLLM's continuous usage stats),
/// or `None` when the chunk carries no total. The exact way to count from outside the engine:
/// totals include the end-of-sequence token and tokens that produced no text.
///
/// A total lower than the previous one counts nothing. The finish reason still comes from the
/// chunk: `finish` returns it when the chunk ends the request.
///
/// ```
/// use tokenmeter_core::Finish;
/// use tokenmeter_export::stream::{ChunkCount, ChunkCounter, Cumulative};
/// // (completion tokens so far, finished?)
/// let mut c = Cumulative::new(|x: &(Option<u64>, bool)| x.0, |x: &(Option<u64>, bool)| x.1.then_some(Finish::Stop));
/// assert_eq!(c.count(&(Some(3), false)), ChunkCount::tokens(3));
/// assert_eq!(c.count(&(None, false)), ChunkCount::NONE);
/// assert_eq!(c.count(&(Some(5), true)), ChunkCount::tokens(2).finished(Finish::Stop));
/// ```
#[derive(Clone, Debug)]
pub struct Cumulative<T, R> {
    total: T,
    finish: R,
    seen: u64,
}

impl<T, R> Cumulative<T, R> {
    /// Counts from running totals read by `total`, with finish reasons read by `finish`.
    pub fn new<I>(total: T, finish: R) -> Self
    where
        T: FnMut(&I) -> Option<u64>,
        R: FnMut(&I) -> Option<Finish>,
    {
        Cumulative {
            total,
            finish,
            seen: 0,
        }
    }
}

impl<I, T, R> ChunkCounter<I> for Cumulative<T, R>
where
    T: FnMut(&I) -> Option<u64>,
    R: FnMut(&I) -> Option<Finish>,
{
    fn count(&mut self, item: &I) -> ChunkCount {
        let delta = match (self.total)(item) {
            Some(t) if t > self.seen => {
                let d = t - self.seen;
                self.seen = t;
                // More than u32::MAX in one chunk is a caller bug; the guard clamps and counts it.
                u32::try_from(d).unwrap_or(u32::MAX)
            }
            _ => 0,
        };
        let c = ChunkCount::tokens(delta);
        match (self.finish)(item) {
            Some(f) => c.finished(f),
            None => c,
        }
    }
}

pin_project! {
    /// A stream whose chunks are metered as the output of one request. Items pass through
    /// unchanged. Built by [`StreamMeterExt::metered`] or [`StreamMeterExt::metered_try`].
    ///
    /// - Each item with tokens records them with one clock read
    ///   ([`RequestGuard::tokens`]): the first gives TTFT, later ones ITL and TPOT.
    /// - An item the counter reports as finished ends the request with its reason; one
    ///   reported as failed ends it with [`RequestGuard::fail`]. Later items pass through
    ///   uncounted.
    /// - The end of the stream finishes a request not yet ended, as [`Finish::Stop`].
    /// - Dropping the stream before either (the client went away) drops the guard: the
    ///   request counts as cancelled.
    pub struct MeteredStream<S, C> {
        #[pin]
        inner: S,
        guard: RequestGuard,
        counter: C,
        summary: Option<RequestSummary>,
        prompt_set: bool,
    }
}

impl<S, C> MeteredStream<S, C> {
    /// Wraps `inner`: `guard` is the request it delivers, `counter` says what each item
    /// carries.
    pub fn new(inner: S, guard: RequestGuard, counter: C) -> Self {
        MeteredStream {
            inner,
            guard,
            counter,
            summary: None,
            prompt_set: false,
        }
    }

    /// The request's guard.
    pub fn guard(&self) -> &RequestGuard {
        &self.guard
    }

    /// The request's guard, to report what the stream cannot show (`scheduled()`, quality
    /// scans, text). Ending it here is fine: the stream then counts nothing more.
    pub fn guard_mut(&mut self) -> &mut RequestGuard {
        &mut self.guard
    }

    /// The request's measured values, once the stream ended it (finished or failed).
    pub fn summary(&self) -> Option<RequestSummary> {
        self.summary
    }
}

impl<S, C> Stream for MeteredStream<S, C>
where
    S: Stream,
    C: ChunkCounter<S::Item>,
{
    type Item = S::Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let this = self.project();
        let item = match this.inner.poll_next(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(item) => item,
        };
        let guard = this.guard;
        if guard.is_finished() {
            return Poll::Ready(item);
        }
        match &item {
            Some(it) => {
                let c = this.counter.count(it);
                if let (Some(n), false) = (c.prompt, *this.prompt_set) {
                    *this.prompt_set = true;
                    guard.set_prompt_tokens(usize::try_from(n).unwrap_or(usize::MAX));
                }
                guard.tokens(c.tokens);
                match c.end {
                    Some(End::Finish(f)) => *this.summary = Some(guard.finish(f)),
                    Some(End::Fail(e)) => *this.summary = Some(guard.fail(e)),
                    None => {}
                }
            }
            None => *this.summary = Some(guard.finish(Finish::Stop)),
        }
        Poll::Ready(item)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}

/// Meters any stream: `stream.metered(guard, counter)`.
pub trait StreamMeterExt: Stream + Sized {
    /// Meters this stream as the output of the request `guard`; `counter` says how many
    /// tokens each item carries (see the [module docs](self) for why that is not one per
    /// item) and which item ends the request.
    fn metered<C>(self, guard: RequestGuard, counter: C) -> MeteredStream<Self, C>
    where
        C: ChunkCounter<Self::Item>,
    {
        MeteredStream::new(self, guard, counter)
    }

    /// Meters a stream of `Result`s: `ok` counts the `Ok` items, and the first `Err` item
    /// fails the request with the kind `err` maps it to (e.g. `|_| ErrorKind::Internal`).
    ///
    /// ```
    /// use futures_util::StreamExt;
    /// use tokenmeter_core::{ErrorKind, Meter};
    /// use tokenmeter_export::stream::{ChunkCount, StreamMeterExt};
    /// let meter = Meter::default();
    /// let s = futures_util::stream::iter([Ok("a"), Err("engine died"), Ok("b")])
    ///     .metered_try(meter.request().start(), |_: &&str| ChunkCount::tokens(1), |_: &&str| ErrorKind::Internal);
    /// let items: Vec<_> = futures_util::FutureExt::now_or_never(s.collect()).unwrap();
    /// assert_eq!(items.len(), 3);          // every item passes through
    /// assert_eq!(meter.totals().output_tokens, 1); // nothing counted after the failure
    /// ```
    fn metered_try<T, E, F, M>(
        self,
        guard: RequestGuard,
        ok: F,
        err: M,
    ) -> MeteredStream<Self, TryCounter<F, M>>
    where
        Self: Stream<Item = Result<T, E>>,
        F: ChunkCounter<T>,
        M: FnMut(&E) -> ErrorKind,
    {
        MeteredStream::new(self, guard, TryCounter { ok, err })
    }
}

impl<S: Stream> StreamMeterExt for S {}

#[cfg(test)]
mod tests {
    use std::task::Waker;
    use std::time::Duration;

    use futures_util::stream;
    use tokenmeter_core::Meter;
    use tokenmeter_core::clock::{Clock, Mock};

    use super::*;

    fn meter() -> (Meter, std::sync::Arc<Mock>) {
        let (clock, mock) = Clock::mock();
        (Meter::builder().clock(clock).build(), mock)
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Polls once (every test stream is ready), advancing the mock clock first.
    fn next<S: Stream + Unpin>(s: &mut S, mock: &Mock, advance: Duration) -> Option<S::Item> {
        mock.increment(advance);
        let mut cx = Context::from_waker(Waker::noop());
        match Pin::new(s).poll_next(&mut cx) {
            Poll::Ready(v) => v,
            Poll::Pending => panic!("test streams are always ready"),
        }
    }

    /// (tokens, finish) per chunk.
    fn by_tuple(c: &(u32, Option<Finish>)) -> ChunkCount {
        let n = ChunkCount::tokens(c.0);
        c.1.map_or(n, |f| n.finished(f))
    }

    #[test]
    fn chunks_with_several_tokens_an_empty_chunk_and_eos_give_exact_latencies() {
        let (meter, mock) = meter();
        let guard = meter.request().prompt_tokens(3).start();
        // t=100: 1 token; t=130: a role-only chunk; t=160: 2 tokens (one UTF-8 character);
        // t=200: EOS (no text, one token) with the finish reason.
        let chunks = [(1, None), (0, None), (2, None), (1, Some(Finish::Length))];
        let mut s = stream::iter(chunks).metered(guard, by_tuple);
        assert_eq!(next(&mut s, &mock, ms(100)), Some((1, None)));
        assert_eq!(next(&mut s, &mock, ms(30)), Some((0, None)));
        assert_eq!(next(&mut s, &mock, ms(30)), Some((2, None)));
        assert!(s.summary().is_none());
        assert_eq!(next(&mut s, &mock, ms(40)), Some((1, Some(Finish::Length))));
        let sum = s.summary().expect("finished at the EOS chunk");
        assert_eq!(sum.output_tokens, 4);
        assert_eq!(sum.ttft, Some(ms(100)));
        // last - first = 100 ms over n - 1 = 3 tokens
        assert_eq!(sum.tpot, Some(Duration::from_nanos(100_000_000 / 3)));
        assert_eq!(sum.e2e, ms(200));
        // The stream's end after the finish changes nothing.
        assert_eq!(next(&mut s, &mock, ms(10)), None);
        assert_eq!(meter.totals().requests_ended, 1);
        assert_eq!(meter.totals().output_tokens, 4);
    }

    #[test]
    fn stream_end_without_a_finish_reason_finishes_as_stop() {
        let (meter, mock) = meter();
        let mut s = stream::iter([(1, None), (1, None)]).metered(meter.request().start(), by_tuple);
        next(&mut s, &mock, ms(10));
        next(&mut s, &mock, ms(20));
        assert!(s.summary().is_none());
        assert_eq!(next(&mut s, &mock, ms(5)), None);
        let sum = s.summary().expect("ended");
        assert_eq!(sum.e2e, ms(35));
        assert_eq!(sum.tpot, Some(ms(20)));
        let snap = meter.snapshot();
        assert_eq!((snap.requests_succeeded, snap.requests_cancelled), (1, 0));
    }

    #[test]
    fn dropping_the_stream_before_its_end_cancels_the_request() {
        let (meter, mock) = meter();
        let mut s = stream::iter([(1, None), (1, None), (1, Some(Finish::Stop))])
            .metered(meter.request().start(), by_tuple);
        next(&mut s, &mock, ms(10));
        drop(s);
        let t = meter.totals();
        assert_eq!((t.requests_ended, t.output_tokens), (1, 1));
        let snap = meter.snapshot();
        assert_eq!((snap.requests_cancelled, snap.requests_succeeded), (1, 0));
    }

    #[test]
    fn an_err_item_fails_the_request_and_later_items_pass_uncounted() {
        let (meter, mock) = meter();
        let items: [Result<u32, &str>; 3] = [Ok(2), Err("upstream 500"), Ok(5)];
        let mut s = stream::iter(items).metered_try(
            meter.request().start(),
            |k: &u32| ChunkCount::tokens(*k),
            |_: &&str| ErrorKind::Internal,
        );
        assert_eq!(next(&mut s, &mock, ms(50)), Some(Ok(2)));
        assert_eq!(next(&mut s, &mock, ms(50)), Some(Err("upstream 500")));
        let sum = s.summary().expect("failed");
        assert_eq!(
            (sum.output_tokens, sum.e2e, sum.ttft),
            (2, ms(100), Some(ms(50)))
        );
        assert_eq!(next(&mut s, &mock, ms(50)), Some(Ok(5)));
        assert_eq!(next(&mut s, &mock, ms(50)), None);
        assert_eq!(meter.totals().output_tokens, 2);
        let snap = meter.snapshot();
        assert_eq!(
            (
                snap.requests_failed,
                snap.requests_succeeded,
                snap.requests_cancelled
            ),
            (1, 0, 0)
        );
    }

    #[test]
    fn cumulative_totals_count_tokens_that_produced_no_chunk() {
        let (meter, mock) = meter();
        // vLLM continuous usage stats: completion_tokens so far on each chunk. Between the
        // second and third chunk two tokens produced no text (a split UTF-8 character).
        let chunks: [(Option<u64>, bool); 4] = [
            (Some(1), false),
            (Some(2), false),
            (Some(5), false),
            (Some(6), true),
        ];
        let counter = Cumulative::new(
            |c: &(Option<u64>, bool)| c.0,
            |c: &(Option<u64>, bool)| c.1.then_some(Finish::Stop),
        );
        let mut s = stream::iter(chunks).metered(meter.request().start(), counter);
        for gap in [10, 10, 30, 10] {
            assert!(next(&mut s, &mock, ms(gap)).is_some());
        }
        let sum = s.summary().expect("finished");
        assert_eq!(sum.output_tokens, 6);
        assert_eq!(sum.ttft, Some(ms(10)));
        assert_eq!(sum.tpot, Some(ms(10))); // (60 - 10) ms over 5
    }

    #[test]
    fn a_prompt_length_reported_late_is_set_once_before_the_end() {
        let (meter, mock) = meter();
        // The engine tokenizes the prompt itself: the length comes with the first chunk (an
        // engine hook) and again with the usage on the last one.
        let chunks = [
            ChunkCount::tokens(1).prompt_tokens(9),
            ChunkCount::tokens(1),
            ChunkCount::tokens(1)
                .prompt_tokens(9)
                .finished(Finish::Stop),
        ];
        let mut s = stream::iter(chunks).metered(meter.request().start(), |c: &ChunkCount| *c);
        assert_eq!(s.guard().prompt_tokens(), 0);
        next(&mut s, &mock, ms(10));
        assert_eq!(s.guard().prompt_tokens(), 9);
        next(&mut s, &mock, ms(10));
        next(&mut s, &mock, ms(10));
        let sum = s.summary().expect("finished");
        assert_eq!((sum.input_tokens, sum.output_tokens), (9, 3));
        let t = meter.totals();
        assert_eq!((t.input_tokens, t.output_tokens), (9, 3));

        // Only on the finishing chunk (OpenAI's usage): set before the request ends.
        let chunks = [ChunkCount::tokens(2)
            .prompt_tokens(4)
            .finished(Finish::Length)];
        let mut s = stream::iter(chunks).metered(meter.request().start(), |c: &ChunkCount| *c);
        next(&mut s, &mock, ms(10));
        assert_eq!(s.summary().map(|x| x.input_tokens), Some(4));
        assert_eq!(meter.totals().input_tokens, 13);
    }

    #[test]
    fn the_guard_can_report_what_the_stream_cannot_show() {
        let (meter, mock) = meter();
        let mut s =
            stream::iter([(1, Some(Finish::Stop))]).metered(meter.request().start(), by_tuple);
        mock.increment(ms(15));
        s.guard_mut().scheduled();
        next(&mut s, &mock, ms(25));
        let sum = s.summary().expect("finished");
        assert_eq!(sum.queue, Some(ms(15)));
        assert_eq!(sum.ttft, Some(ms(40)));
        assert!(s.guard().is_finished());
    }
}
