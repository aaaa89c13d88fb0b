//! Per-engine state, reported once per engine step (never per token): the batch, the KV
//! cache, waiting requests by reason, and the engine's liveness, read back by
//! [`Meter::health`].

use quanta::Instant;

use crate::handles::stalled_gauge;
use crate::liveness::Health;
use crate::meter::Meter;

/// What one engine step looked like; [`Meter::engine_step`] records it.
///
/// ```
/// use tokenmeter_core::{EngineStep, Meter};
/// let meter = Meter::default();
/// // 12 sequences in the batch, 140 tokens scheduled (one prompt of 129 + 11 decodes),
/// // 300 of 1024 KV blocks in use, 3 requests waiting for room
/// let step = EngineStep::new(12, 140).kv_blocks(300, 1024).waiting_by_reason(3, 0);
/// meter.engine_step(&step);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq)]
#[must_use]
pub struct EngineStep {
    sequences: u64,
    tokens: u64,
    kv_usage: Option<f64>,
    kv_blocks: Option<(u64, u64)>,
    waiting: Option<(u64, u64)>,
}

impl EngineStep {
    /// A step that ran `sequences` sequences (its batch size) and scheduled `tokens` tokens
    /// (prompt tokens prefilled plus tokens decoded: vLLM's `iteration_tokens_total`).
    pub fn new(sequences: u64, tokens: u64) -> Self {
        EngineStep {
            sequences,
            tokens,
            ..Self::default()
        }
    }

    /// The fraction of the KV cache in use after the step, 0 to 1 (vLLM's
    /// `kv_cache_usage_perc`, despite its name a fraction). A value outside 0–1, or NaN, is
    /// not recorded and counts as misuse `kv_usage_out_of_range`.
    pub fn kv_usage(mut self, fraction: f64) -> Self {
        self.kv_usage = Some(fraction);
        self
    }

    /// KV blocks in use and in all, where the engine has blocks. Also sets
    /// [`kv_usage`](Self::kv_usage) to `used / total` unless that was given. `used > total`
    /// (or `total = 0`) is not recorded and counts as misuse `kv_blocks_above_total`.
    pub fn kv_blocks(mut self, used: u64, total: u64) -> Self {
        self.kv_blocks = Some((used, total));
        self
    }

    /// Waiting requests by reason: `capacity` waits for room in the batch or the KV cache,
    /// `deferred` is blocked on something else (an adapter, a KV transfer). vLLM's
    /// `num_requests_waiting_by_reason`.
    pub fn waiting_by_reason(mut self, capacity: u64, deferred: u64) -> Self {
        self.waiting = Some((capacity, deferred));
        self
    }
}

impl Meter {
    /// Records one engine step now: one clock read. See [`engine_step_at`](Self::engine_step_at).
    pub fn engine_step(&self, step: &EngineStep) {
        let now = self.now();
        self.engine_step_at(now, step);
    }

    /// Records one engine step at `now` (read once per step with [`Meter::now`]): the batch
    /// size and iteration tokens, the KV cache, waiting requests by reason, and the instant
    /// of the step (`engine.last_step`, which [`health`](Self::health) judges by). About once
    /// a second it also refreshes the stalled-requests gauge.
    ///
    /// A step at an instant not after the previous one (the same step reported twice, or a
    /// clock gone backwards) is ignored and counts as misuse `step_repeated`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tokenmeter_core::{EngineStep, Meter};
    /// let (clock, mock) = quanta::Clock::mock();
    /// let meter = Meter::builder().clock(clock).build();
    /// let now = meter.now();
    /// meter.engine_step_at(now, &EngineStep::new(4, 4).kv_usage(0.25));
    /// mock.increment(Duration::from_millis(30));
    /// assert_eq!(meter.health().since_last_step, Some(Duration::from_millis(30)));
    /// ```
    pub fn engine_step_at(&self, now: Instant, step: &EngineStep) {
        let live = self.liveness();
        if !live.step(now) {
            self.misuse("step_repeated");
            return;
        }
        let kv_usage = match (step.kv_usage, step.kv_blocks) {
            (Some(f), _) => Some(f),
            (None, Some((used, total))) if total > 0 => Some(used as f64 / total as f64),
            _ => None,
        };
        let kv_usage = kv_usage.filter(|f| {
            let ok = (0.0..=1.0).contains(f);
            if !ok {
                self.misuse("kv_usage_out_of_range");
            }
            ok
        });
        let blocks = step.kv_blocks.filter(|(used, total)| {
            let ok = *total > 0 && used <= total;
            if !ok {
                self.misuse("kv_blocks_above_total");
            }
            ok
        });
        let stalled = live.refresh_due(now).then(|| live.scan(now).stalled as f64);
        let unix = self.unix_seconds(now);
        self.with_engine_handles(|h, names| {
            h.batch_sequences.set(step.sequences as f64);
            h.iteration_tokens.record(step.tokens as f64);
            h.last_step.set(unix);
            if let Some(f) = kv_usage {
                h.kv_usage(names).set(f);
            }
            if let Some((used, total)) = blocks {
                let (u, t) = h.kv_blocks(names);
                u.set(used as f64);
                t.set(total as f64);
            }
            if let Some((capacity, deferred)) = step.waiting {
                let (c, d) = h.waiting(names);
                c.set(capacity as f64);
                d.set(deferred as f64);
            }
        });
        if let Some(s) = stalled {
            stalled_gauge(self.metric_names()).set(s);
        }
    }

    /// Whether the engine is alive now; see [`Health`]. Also refreshes the stalled-requests
    /// gauge. Mount it on the server's `/health` with [`Health::http_status`].
    pub fn health(&self) -> Health {
        let now = self.now();
        self.health_at(now)
    }

    /// [`health`](Self::health) at an instant read with [`Meter::now`].
    pub fn health_at(&self, now: Instant) -> Health {
        let live = self.liveness();
        let scan = live.scan(now);
        let (running, waiting) = self.live_totals().in_flight();
        let health = Health::judge(
            live.since_last_step(now),
            running,
            waiting,
            scan,
            live.threshold(),
        );
        stalled_gauge(self.metric_names()).set(scan.stalled as f64);
        health
    }
}
