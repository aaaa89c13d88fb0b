//! Opt-in capture of prompt and output text, through a redaction hook.
//!
//! Off by default: a meter records no text at all. A server opts in with
//! [`MeterBuilder::capture_text`](crate::MeterBuilder::capture_text) and a [`Redact`]
//! implementation; the guard then buffers what it is handed with
//! [`RequestGuard::prompt_text`](crate::RequestGuard::prompt_text) and
//! [`RequestGuard::output_text`](crate::RequestGuard::output_text) (up to a byte cap per kind),
//! and when the request ends passes each text through the redactor once and puts the result
//! on the request-log event (`prompt`, `output`) and on the span (`gen_ai.input.messages`,
//! `gen_ai.output.messages`).

use std::borrow::Cow;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

/// Default cap on the text a guard buffers per kind: 16 KiB of prompt and 16 KiB of output
/// (see [`MeterBuilder::text_max_bytes`](crate::MeterBuilder::text_max_bytes)).
///
/// ```
/// assert_eq!(tokenmeter_core::DEFAULT_TEXT_MAX_BYTES, 16 * 1024);
/// ```
pub const DEFAULT_TEXT_MAX_BYTES: usize = 16 * 1024;

/// Which text a [`Redact`] implementation is looking at.
///
/// ```
/// use tokenmeter_core::TextKind;
/// assert_eq!(TextKind::Prompt.as_str(), "prompt");
/// assert_eq!(TextKind::Output.as_str(), "output");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TextKind {
    /// The prompt (input) text, from [`RequestGuard::prompt_text`](crate::RequestGuard::prompt_text).
    Prompt,
    /// The generated text, from [`RequestGuard::output_text`](crate::RequestGuard::output_text).
    Output,
}

impl TextKind {
    /// `"prompt"` or `"output"`: the request-log field that carries this text.
    pub fn as_str(self) -> &'static str {
        match self {
            TextKind::Prompt => "prompt",
            TextKind::Output => "output",
        }
    }
}

/// Turns captured prompt or output text into what may be recorded.
///
/// Called once per kind and request, when the request ends, on the thread that ends it
/// (`finish`, `fail` or the guard's drop), with the whole buffered text. Return
/// `Cow::Borrowed` to record the text unchanged without a copy. A panic is caught: that
/// text is dropped and counted in the `misuse` self-metric as `redactor_panic` (the
/// process's panic hook still runs and prints the panic message, so do not put the text in
/// it). With `panic = "abort"` a panic aborts, as everywhere.
///
/// Closures `Fn(TextKind, &str) -> String` implement it, and built-ins can be chained with
/// [`then`](Self::then):
///
/// ```
/// use std::borrow::Cow;
/// use tokenmeter_core::{MaskEmailsAndNumbers, Redact, TextKind, Truncate};
///
/// // a closure
/// let upper = |_: TextKind, s: &str| s.to_uppercase();
/// assert_eq!(upper.redact(TextKind::Output, "hi"), "HI");
///
/// // a type of one's own
/// struct DropPrompts;
/// impl Redact for DropPrompts {
///     fn redact<'a>(&self, kind: TextKind, text: &'a str) -> Cow<'a, str> {
///         match kind {
///             TextKind::Prompt => Cow::Borrowed("[prompt withheld]"),
///             _ => Cow::Borrowed(text),
///         }
///     }
/// }
/// assert_eq!(DropPrompts.redact(TextKind::Prompt, "secret"), "[prompt withheld]");
///
/// // built-ins, chained: mask first, then cut
/// let r = MaskEmailsAndNumbers::new().then(Truncate::chars(12));
/// assert_eq!(r.redact(TextKind::Prompt, "mail ann@example.com now"), "mail [email]…");
/// ```
pub trait Redact: Send + Sync {
    /// The text to record for `text` of kind `kind`.
    fn redact<'a>(&self, kind: TextKind, text: &'a str) -> Cow<'a, str>;

    /// Applies `self`, then `next` to its result.
    ///
    /// ```
    /// use tokenmeter_core::{Redact, TextKind, Truncate, Verbatim};
    /// let r = Verbatim.then(Truncate::chars(3));
    /// assert_eq!(r.redact(TextKind::Output, "abcdef"), "abc…");
    /// ```
    fn then<R: Redact>(self, next: R) -> Then<Self, R>
    where
        Self: Sized,
    {
        Then { first: self, next }
    }
}

impl<F> Redact for F
where
    F: Fn(TextKind, &str) -> String + Send + Sync,
{
    fn redact<'a>(&self, kind: TextKind, text: &'a str) -> Cow<'a, str> {
        Cow::Owned(self(kind, text))
    }
}

/// A shared redactor, e.g. one instance for the meters of several models.
///
/// ```
/// use std::sync::Arc;
/// use tokenmeter_core::{MaskEmailsAndNumbers, Meter};
/// let shared = Arc::new(MaskEmailsAndNumbers::new());
/// let a = Meter::builder().model("a").capture_text(Arc::clone(&shared)).build();
/// let b = Meter::builder().model("b").capture_text(shared).build();
/// assert!(a.captures_text() && b.captures_text());
/// ```
impl<R: Redact + ?Sized> Redact for std::sync::Arc<R> {
    fn redact<'a>(&self, kind: TextKind, text: &'a str) -> Cow<'a, str> {
        (**self).redact(kind, text)
    }
}

/// Two redactors in sequence; from [`Redact::then`].
///
/// ```
/// use tokenmeter_core::{MaskEmailsAndNumbers, Redact, TextKind, Truncate};
/// let r = MaskEmailsAndNumbers::new().then(Truncate::chars(100));
/// assert_eq!(r.redact(TextKind::Output, "call 555-123-4567"), "call [number]");
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct Then<A, B> {
    first: A,
    next: B,
}

impl<A: Redact, B: Redact> Redact for Then<A, B> {
    fn redact<'a>(&self, kind: TextKind, text: &'a str) -> Cow<'a, str> {
        match self.first.redact(kind, text) {
            Cow::Borrowed(s) => self.next.redact(kind, s),
            Cow::Owned(s) => match self.next.redact(kind, &s) {
                // `next` kept the text unchanged: keep the owned string, no second copy.
                Cow::Borrowed(t) if std::ptr::eq(t, s.as_str()) => Cow::Owned(s),
                other => Cow::Owned(other.into_owned()),
            },
        }
    }
}

/// Records the text exactly as handed in. For deployments that have decided raw prompts and
/// outputs may be stored (a development setup, or a log that is itself access-controlled);
/// naming it makes that decision explicit.
///
/// ```
/// use tokenmeter_core::{Redact, TextKind, Verbatim};
/// assert_eq!(Verbatim.redact(TextKind::Prompt, "as is"), "as is");
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Verbatim;

impl Redact for Verbatim {
    fn redact<'a>(&self, _kind: TextKind, text: &'a str) -> Cow<'a, str> {
        Cow::Borrowed(text)
    }
}

/// Keeps the first `n` characters (Unicode scalar values, never splitting one) and appends
/// `…` when it cut something.
///
/// ```
/// use tokenmeter_core::{Redact, TextKind, Truncate};
/// let t = Truncate::chars(4);
/// assert_eq!(t.redact(TextKind::Output, "héllo wörld"), "héll…");
/// assert_eq!(t.redact(TextKind::Output, "héll"), "héll");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Truncate {
    max_chars: usize,
}

impl Truncate {
    /// At most `n` characters of the text, then `…` if it was longer.
    pub fn chars(n: usize) -> Self {
        Truncate { max_chars: n }
    }
}

impl Redact for Truncate {
    fn redact<'a>(&self, _kind: TextKind, text: &'a str) -> Cow<'a, str> {
        match text.char_indices().nth(self.max_chars) {
            Some((cut, _)) => {
                let kept = text.get(..cut).unwrap_or_default();
                Cow::Owned(format!("{kept}…"))
            }
            None => Cow::Borrowed(text),
        }
    }
}

/// Masks e-mail addresses as `[email]` and runs of at least `min_digits` digits as
/// `[number]` (default 6; single spaces, hyphens or dots between digits join a run, as in
/// `4111 1111 1111 1111`, `555-123-4567` or `2024-01-31`).
///
/// A small baseline, not a PII detector: names, street addresses, non-ASCII (IDN) e-mail
/// addresses and anything else without digits or an `@` go through unchanged, and long plain
/// numbers (`3.14159265`) are masked too. Chain your own rules before or after it with
/// [`Redact::then`]. Text with nothing to mask is returned borrowed, without a copy.
///
/// ```
/// use tokenmeter_core::{MaskEmailsAndNumbers, Redact, TextKind};
/// let m = MaskEmailsAndNumbers::new();
/// assert_eq!(
///     m.redact(TextKind::Prompt, "I am jo.doe+x@mail.example.org, card 4111 1111 1111 1111."),
///     "I am [email], card [number]."
/// );
/// assert_eq!(m.redact(TextKind::Prompt, "order 12345 in 2024"), "order 12345 in 2024");
/// assert_eq!(m.min_digits(4).redact(TextKind::Prompt, "in 2024"), "in [number]");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaskEmailsAndNumbers {
    min_digits: usize,
}

impl Default for MaskEmailsAndNumbers {
    fn default() -> Self {
        MaskEmailsAndNumbers { min_digits: 6 }
    }
}

const EMAIL_MASK: &str = "[email]";
const NUMBER_MASK: &str = "[number]";

impl MaskEmailsAndNumbers {
    /// E-mail addresses and runs of 6 or more digits.
    pub fn new() -> Self {
        Self::default()
    }

    /// Masks digit runs of at least `n` digits (at least 1).
    pub fn min_digits(mut self, n: usize) -> Self {
        self.min_digits = n.max(1);
        self
    }
}

impl Redact for MaskEmailsAndNumbers {
    fn redact<'a>(&self, _kind: TextKind, text: &'a str) -> Cow<'a, str> {
        let b = text.as_bytes();
        // E-mail addresses first, so that digits in a local part do not split one.
        let mut emails = Vec::new();
        let mut floor = 0;
        for (at, _) in b.iter().enumerate().filter(|(_, c)| **c == b'@') {
            if at < floor {
                continue;
            }
            if let Some(span) = email_span(b, at, floor) {
                floor = span.1;
                emails.push(span);
            }
        }
        let mut edits = Edits::new(text);
        let mut pos = 0;
        let gaps = emails
            .iter()
            .map(|&(s, e)| (s, Some((s, e))))
            .chain(std::iter::once((b.len(), None)));
        for (gap_end, email) in gaps {
            let mut i = pos;
            while i < gap_end {
                if b[i].is_ascii_digit() {
                    let (end, digits) = digit_run(b, i, gap_end);
                    if digits >= self.min_digits {
                        edits.replace(i, end, NUMBER_MASK);
                    }
                    i = end;
                } else {
                    i += 1;
                }
            }
            if let Some((s, e)) = email {
                edits.replace(s, e, EMAIL_MASK);
                pos = e;
            }
        }
        edits.finish()
    }
}

/// Copy-on-first-edit output. Every index handed in lies on an ASCII byte or at the end, so
/// on a character boundary.
struct Edits<'a> {
    text: &'a str,
    out: String,
    copied: usize,
}

impl<'a> Edits<'a> {
    fn new(text: &'a str) -> Self {
        Edits {
            text,
            out: String::new(),
            copied: 0,
        }
    }

    fn replace(&mut self, start: usize, end: usize, with: &str) {
        self.out
            .push_str(self.text.get(self.copied..start).unwrap_or_default());
        self.out.push_str(with);
        self.copied = end;
    }

    fn finish(mut self) -> Cow<'a, str> {
        if self.copied == 0 {
            return Cow::Borrowed(self.text);
        }
        self.out
            .push_str(self.text.get(self.copied..).unwrap_or_default());
        Cow::Owned(self.out)
    }
}

fn is_local_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'%' | b'+' | b'-')
}

fn is_domain_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-')
}

/// The address around the `@` at `at`, not reaching before `floor`: a non-empty local part,
/// and a domain of dot-separated labels whose last is at least two letters. A trailing dot
/// (end of a sentence) is not part of it.
fn email_span(b: &[u8], at: usize, floor: usize) -> Option<(usize, usize)> {
    let mut start = at;
    while start > floor && is_local_char(b[start - 1]) {
        start -= 1;
    }
    while start < at && b[start] == b'.' {
        start += 1;
    }
    if start == at {
        return None;
    }
    let mut end = at + 1;
    while end < b.len() && is_domain_char(b[end]) {
        end += 1;
    }
    while end > at + 1 && matches!(b[end - 1], b'.' | b'-') {
        end -= 1;
    }
    let domain = b.get(at + 1..end)?;
    let labels_ok = domain.split(|c| *c == b'.').all(|l| !l.is_empty());
    let tld = domain.rsplit(|c| *c == b'.').next()?;
    let ok = labels_ok
        && domain.contains(&b'.')
        && tld.len() >= 2
        && tld.iter().all(u8::is_ascii_alphabetic);
    ok.then_some((start, end))
}

/// From a digit at `start`, the end of the run (digits, single separators between digits)
/// before `limit`, and how many digits it holds.
fn digit_run(b: &[u8], start: usize, limit: usize) -> (usize, usize) {
    let mut end = start;
    let mut digits = 0;
    loop {
        while end < limit && b[end].is_ascii_digit() {
            end += 1;
            digits += 1;
        }
        let joined =
            end + 1 < limit && matches!(b[end], b' ' | b'-' | b'.') && b[end + 1].is_ascii_digit();
        if !joined {
            return (end, digits);
        }
        end += 1;
    }
}

/// The meter's text-capture settings (present only when the user opted in).
pub(crate) struct TextCapture {
    redactor: Box<dyn Redact>,
    pub(crate) max_bytes: usize,
    /// Whether a redactor panic was already reported with a warning.
    warned: AtomicBool,
}

impl TextCapture {
    pub(crate) fn new(redactor: Box<dyn Redact>, max_bytes: usize) -> Self {
        TextCapture {
            redactor,
            max_bytes,
            warned: AtomicBool::new(false),
        }
    }
}

/// One kind's buffered text.
#[derive(Default)]
pub(crate) struct Piece {
    pub(crate) text: String,
    pub(crate) truncated: bool,
}

impl Piece {
    fn push(&mut self, s: &str, max: usize) {
        if s.is_empty() || self.truncated {
            return;
        }
        let room = max.saturating_sub(self.text.len());
        let cut = if s.len() <= room {
            s.len()
        } else {
            self.truncated = true;
            floor_char_boundary(s, room)
        };
        let Some(kept) = s.get(..cut) else { return };
        let need = self.text.len() + kept.len();
        if need > self.text.capacity() {
            // Grow geometrically, but never past the cap: the buffer's memory stays bounded.
            let want = need.max(self.text.capacity() * 2).min(max.max(need));
            self.text.reserve_exact(want - self.text.len());
        }
        self.text.push_str(kept);
    }
}

/// The largest character boundary at or below `i` (`str::floor_char_boundary`, stable only
/// after this crate's minimum Rust version).
fn floor_char_boundary(s: &str, i: usize) -> usize {
    if i >= s.len() {
        return s.len();
    }
    (0..=i).rev().find(|&j| s.is_char_boundary(j)).unwrap_or(0)
}

/// The text a guard buffers when capture is on; boxed in the guard so that a guard without
/// capture grows by one pointer only.
pub(crate) struct TextBuf {
    max_bytes: usize,
    pub(crate) prompt: Piece,
    pub(crate) output: Piece,
}

impl TextBuf {
    pub(crate) fn new(max_bytes: usize) -> Box<Self> {
        Box::new(TextBuf {
            max_bytes,
            prompt: Piece::default(),
            output: Piece::default(),
        })
    }

    // Out of line: the guard's no-capture path stays one branch, inlined.
    #[inline(never)]
    pub(crate) fn push(&mut self, kind: TextKind, s: &str) {
        let piece = match kind {
            TextKind::Prompt => &mut self.prompt,
            TextKind::Output => &mut self.output,
        };
        piece.push(s, self.max_bytes);
    }
}

/// Redacts one kind's buffered text once. `Ok(None)` when there is none; `Err(RedactorPanicked)`
/// when the redactor panicked (the text is dropped; warned about once per meter, and the caller
/// counts it as misuse `redactor_panic`).
pub(crate) fn redact<'b>(
    capture: &TextCapture,
    kind: TextKind,
    piece: &'b Piece,
) -> Result<Option<Cow<'b, str>>, RedactorPanicked> {
    if piece.text.is_empty() {
        return Ok(None);
    }
    let text = piece.text.as_str();
    match catch_unwind(AssertUnwindSafe(|| capture.redactor.redact(kind, text))) {
        Ok(s) => Ok(Some(s)),
        Err(payload) => {
            // The payload may hold the text: drop it unread. Its own drop panicking is
            // caught too.
            let _ = catch_unwind(AssertUnwindSafe(move || drop(payload)));
            if !capture.warned.swap(true, Relaxed) {
                tracing::warn!(
                    kind = kind.as_str(),
                    "tokenmeter: the text redactor panicked; the text was dropped \
                     (counted as misuse kind=redactor_panic; warned once per meter)"
                );
            }
            Err(RedactorPanicked)
        }
    }
}

/// The user's redactor panicked on a text; see [`redact`].
#[derive(Debug)]
pub(crate) struct RedactorPanicked;

#[cfg(test)]
mod tests {
    use super::*;

    fn mask(s: &str) -> String {
        MaskEmailsAndNumbers::new()
            .redact(TextKind::Prompt, s)
            .into_owned()
    }

    #[test]
    fn emails_are_masked() {
        assert_eq!(mask("a@b.co"), "[email]");
        assert_eq!(mask("write to ann.lee@example.com."), "write to [email].");
        assert_eq!(mask("<x_y%z+tag@sub-d.mail.example.org>"), "<[email]>");
        assert_eq!(mask("a@b.co and c@d.io"), "[email] and [email]");
        assert_eq!(mask("...ann@example.com"), "...[email]");
        // digits in the local part do not split the address
        assert_eq!(mask("user1234567@example.com"), "[email]");
        assert_eq!(mask("héllo ann@example.com ü"), "héllo [email] ü");
    }

    #[test]
    fn non_addresses_are_kept() {
        for s in [
            "@",
            "a@",
            "@b.co",
            "a@b",
            "a@b.",
            "a@.co",
            "a@b..co",
            "a@b.c",
            "a@b.c0m",
            "@@@",
            "x @ y.com",
            "ann@例え.jp",
        ] {
            assert_eq!(mask(s), s, "{s}");
            assert!(matches!(
                MaskEmailsAndNumbers::new().redact(TextKind::Output, s),
                Cow::Borrowed(_)
            ));
        }
    }

    #[test]
    fn digit_runs_are_masked() {
        assert_eq!(mask("4111 1111 1111 1111"), "[number]");
        assert_eq!(mask("call +1 555-123-4567 now"), "call +[number] now");
        assert_eq!(mask("born 1990-01-31."), "born [number].");
        assert_eq!(mask("id 123456"), "id [number]");
        assert_eq!(mask("id 12345"), "id 12345");
        assert_eq!(mask("v1.2.3 on 2024"), "v1.2.3 on 2024");
        assert_eq!(mask("12 34 56 7"), "[number]");
        assert_eq!(mask("1234--5678"), "1234--5678"); // a double separator ends a run
        assert_eq!(mask("123456-"), "[number]-");
        assert_eq!(mask("ab1234567cd"), "ab[number]cd");
        assert_eq!(mask("٣٤٥٦٧٨٩"), "٣٤٥٦٧٨٩"); // ASCII digits only
        let m = MaskEmailsAndNumbers::new().min_digits(0); // clamped to 1
        assert_eq!(m.redact(TextKind::Output, "a1b"), "a[number]b");
    }

    #[test]
    fn mixed_and_empty() {
        assert_eq!(mask(""), "");
        assert_eq!(
            mask("ann@example.com 0123456789 bob@example.org"),
            "[email] [number] [email]"
        );
    }

    #[test]
    fn truncate_cuts_on_char_boundaries() {
        let t = |n, s| Truncate::chars(n).redact(TextKind::Output, s).into_owned();
        assert_eq!(t(0, "abc"), "…");
        assert_eq!(t(0, ""), "");
        assert_eq!(t(3, "abc"), "abc");
        assert_eq!(t(2, "a😀b"), "a😀…");
        assert_eq!(t(1, "😀😀"), "😀…");
        assert!(matches!(
            Truncate::chars(5).redact(TextKind::Output, "short"),
            Cow::Borrowed(_)
        ));
    }

    #[test]
    fn then_chains_and_keeps_borrows() {
        let r = Verbatim.then(Verbatim);
        assert!(matches!(r.redact(TextKind::Output, "x"), Cow::Borrowed(_)));
        let r = MaskEmailsAndNumbers::new().then(Truncate::chars(8));
        assert_eq!(r.redact(TextKind::Output, "a@b.co 1234567"), "[email] …");
        let r = (|_: TextKind, s: &str| s.replace('x', "y")).then(Verbatim);
        assert_eq!(r.redact(TextKind::Output, "xx"), "yy");
        let boxed: Box<dyn Redact> = Box::new(r);
        assert_eq!(boxed.redact(TextKind::Prompt, "x"), "y");
    }

    #[test]
    fn pieces_stop_at_the_cap_on_a_char_boundary() {
        let mut p = Piece::default();
        p.push("ab", 5);
        p.push("", 5);
        assert!(!p.truncated);
        p.push("c😀", 5); // 1 + 4 bytes: only "c" fits
        assert_eq!((p.text.as_str(), p.truncated), ("abc", true));
        p.push("d", 5); // past the cap: nothing more
        assert_eq!(p.text, "abc");
        assert!(p.text.capacity() <= 5);

        let mut p = Piece::default();
        p.push(&"x".repeat(1 << 20), 100);
        assert_eq!((p.text.len(), p.truncated), (100, true));
        assert!(p.text.capacity() <= 100);

        let mut p = Piece::default();
        p.push("abc", 0);
        assert_eq!((p.text.as_str(), p.truncated), ("", true));
    }

    #[test]
    fn floor_char_boundary_matches_std() {
        let s = "a😀é";
        let got: Vec<usize> = (0..=8).map(|i| floor_char_boundary(s, i)).collect();
        assert_eq!(got, [0, 1, 1, 1, 1, 5, 5, 7, 7]);
    }
}
