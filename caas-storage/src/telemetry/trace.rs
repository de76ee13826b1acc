//! Trace context: which trace a repository call, the outbox events it records and the
//! handling of those events belong to, carried as a W3C `traceparent`
//! (`00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`).
//!
//! # Design
//!
//! caas-storage does not depend on OpenTelemetry. It keeps the one thing a trace needs to
//! cross process boundaries, the [`TraceContext`], and exposes it where a collector can pick
//! it up:
//!
//! - **In the process**: a task-scoped *current* context. A service sets it from its incoming
//!   request with [`TraceContext::scope`] (parsing the request's `traceparent` header with
//!   [`TraceContext::parse`]); every repository call made inside the scope is a child of it
//!   (same trace id, a new span id). Outside any scope each repository call starts a new root.
//!   The repository call's `tracing` span (`caas_storage.repository`) records `trace_id`,
//!   `span_id` and `parent_span_id` as fields, and while the call runs its own context is the
//!   current one.
//! - **Through the outbox**: the events a write records carry the write's context (the
//!   outbox record's `traceparent` field), and the relay sends it as the `traceparent` Kafka
//!   header of each message.
//! - **In the consumer**: [`handle_traced`](crate::outbox::handle_traced) reads the header and
//!   runs the handler inside a `caas_storage.consume` span with the same trace id, as the
//!   current context: writes the handler makes continue the trace, and their events carry it
//!   on to the next consumer. So one trace covers request → MongoDB → cache → outbox → Kafka →
//!   consumer → ... .
//!
//! # Bridging to OpenTelemetry
//!
//! The spans are plain `tracing` spans with the OpenTelemetry semantic-convention field names
//! (`db.system`, `db.operation`, `db.collection.name`, `db.namespace`, `otel.name`,
//! `otel.kind`, `otel.status_code`, `error.type`). With `tracing-opentelemetry` as a layer
//! these become OpenTelemetry spans with those attributes. To make them join the propagated
//! trace, either
//!
//! - run the call under a `tracing` span whose OpenTelemetry parent is the incoming context
//!   *and* under `TraceContext::scope` with the same context (so both agree), or
//! - in the exporter (or a custom layer), take the `trace_id`/`span_id`/`parent_span_id`
//!   fields of `caas_storage.*` spans as the span's identity.
//!
//! The library records the ids either way; which of the two a service uses is its choice.

use std::cell::Cell;
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::str::FromStr;

tokio::task_local! {
    static CURRENT: TraceContext;
}

/// A W3C trace context: trace id, the id of the span it was issued for, and the trace flags.
/// See the [module docs](self).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceContext {
    trace_id: u128,
    span_id: u64,
    flags: u8,
}

/// A 128-bit trace id, displayed as 32 lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId(pub u128);

/// A 64-bit span id, displayed as 16 lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanId(pub u64);

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:032x}", self.0)
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Why a `traceparent` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid traceparent {value:?}: {reason}")]
pub struct TraceparentError {
    /// The text refused (at most its first 64 characters).
    pub value: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// The `sampled` trace flag.
pub const SAMPLED: u8 = 0x01;

impl TraceContext {
    /// A new trace: random trace and span ids, flagged sampled.
    pub fn new_root() -> Self {
        let trace_id = loop {
            let id = (u128::from(next_random()) << 64) | u128::from(next_random());
            if id != 0 {
                break id;
            }
        };
        TraceContext {
            trace_id,
            span_id: new_span_id(),
            flags: SAMPLED,
        }
    }

    /// The context of a span inside this one: same trace id and flags, a new span id.
    pub fn child(&self) -> Self {
        TraceContext {
            span_id: new_span_id(),
            ..*self
        }
    }

    /// A context from its parts; `None` if an id is zero (invalid in W3C trace context).
    pub fn from_parts(trace_id: u128, span_id: u64, flags: u8) -> Option<Self> {
        (trace_id != 0 && span_id != 0).then_some(TraceContext {
            trace_id,
            span_id,
            flags,
        })
    }

    /// Parses a W3C `traceparent` header value. Version `00` must be exactly
    /// `00-<32 hex>-<16 hex>-<2 hex>` in lowercase; later versions may append fields (they are
    /// ignored); version `ff` and all-zero ids are refused.
    pub fn parse(traceparent: &str) -> Result<Self, TraceparentError> {
        let bad = |reason| TraceparentError {
            value: traceparent.chars().take(64).collect(),
            reason,
        };
        let s = traceparent.trim();
        let b = s.as_bytes();
        if b.len() < 55 {
            return Err(bad("shorter than 55 characters"));
        }
        if b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
            return Err(bad(
                "expected version-traceid-spanid-flags separated by '-'",
            ));
        }
        let version = hex(&s[0..2]).ok_or_else(|| bad("version is not 2 lowercase hex digits"))?;
        if version == 0xff {
            return Err(bad("version ff is invalid"));
        }
        if version == 0 && b.len() != 55 {
            return Err(bad("version 00 has exactly 55 characters"));
        }
        if version != 0 && b.len() > 55 && b[55] != b'-' {
            return Err(bad("fields after the flags must follow a '-'"));
        }
        let trace_id =
            hex(&s[3..35]).ok_or_else(|| bad("trace id is not 32 lowercase hex digits"))?;
        let span_id =
            hex(&s[36..52]).ok_or_else(|| bad("span id is not 16 lowercase hex digits"))?;
        let flags = hex(&s[53..55]).ok_or_else(|| bad("flags are not 2 lowercase hex digits"))?;
        if trace_id == 0 {
            return Err(bad("the trace id is all zeros"));
        }
        if span_id == 0 {
            return Err(bad("the span id is all zeros"));
        }
        Ok(TraceContext {
            trace_id,
            span_id: span_id as u64,
            flags: flags as u8,
        })
    }

    /// The `traceparent` header value: `00-<trace id>-<span id>-<flags>`.
    pub fn traceparent(&self) -> String {
        self.to_string()
    }

    /// The trace id.
    pub fn trace_id(&self) -> TraceId {
        TraceId(self.trace_id)
    }

    /// The span id.
    pub fn span_id(&self) -> SpanId {
        SpanId(self.span_id)
    }

    /// The trace flags (bit 0: sampled).
    pub fn flags(&self) -> u8 {
        self.flags
    }

    /// Whether the `sampled` flag is set.
    pub fn is_sampled(&self) -> bool {
        self.flags & SAMPLED != 0
    }

    /// The context of the running task, if it runs inside [`scope`](Self::scope) (or inside
    /// a repository call, or an event handler run by
    /// [`handle_traced`](crate::outbox::handle_traced)).
    pub fn current() -> Option<Self> {
        CURRENT.try_with(|c| *c).ok()
    }

    /// Runs `f` with this as the current context: repository calls inside are its children.
    /// The scope is the future's, not the thread's: tasks `f` spawns do not inherit it (wrap
    /// them in a scope of their own with `TraceContext::current()`).
    pub fn scope<F: Future>(self, f: F) -> impl Future<Output = F::Output> {
        CURRENT.scope(self, f)
    }

    /// The current context's child, or a new root outside any scope: what a repository call
    /// runs as.
    pub(crate) fn for_call() -> (Self, Option<SpanId>) {
        match Self::current() {
            Some(parent) => (parent.child(), Some(parent.span_id())),
            None => (Self::new_root(), None),
        }
    }
}

impl fmt::Display for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id, self.span_id, self.flags
        )
    }
}

impl fmt::Debug for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceContext({self})")
    }
}

impl FromStr for TraceContext {
    type Err = TraceparentError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Lowercase hex only (W3C trace context refuses uppercase).
fn hex(s: &str) -> Option<u128> {
    if s.is_empty()
        || !s
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
    {
        return None;
    }
    u128::from_str_radix(s, 16).ok()
}

fn new_span_id() -> u64 {
    loop {
        let id = next_random();
        if id != 0 {
            return id;
        }
    }
}

thread_local! {
    /// SplitMix64 state, seeded per thread from the standard library's random hasher keys.
    static RNG: Cell<u64> = Cell::new(RandomState::new().hash_one(std::thread::current().id()));
}

/// SplitMix64: fast, well distributed; ids need to be unique, not secret.
fn next_random() -> u64 {
    RNG.with(|s| {
        let x = s.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        s.set(x);
        let mut z = x;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparents_round_trip_and_bad_ones_are_refused() {
        let t = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let c = TraceContext::parse(t).unwrap();
        assert_eq!(c.to_string(), t);
        assert_eq!(c.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(c.span_id().to_string(), "00f067aa0ba902b7");
        assert!(c.is_sampled());
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ] {
            assert!(TraceContext::parse(bad).is_err(), "{bad:?} accepted");
        }
        // A later version may append fields.
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-ever";
        assert_eq!(TraceContext::parse(later).unwrap().trace_id(), c.trace_id());
    }

    #[test]
    fn children_keep_the_trace_and_roots_differ() {
        let root = TraceContext::new_root();
        let child = root.child();
        assert_eq!(child.trace_id(), root.trace_id());
        assert_ne!(child.span_id(), root.span_id());
        assert_ne!(TraceContext::new_root().trace_id(), root.trace_id());
        assert_eq!(TraceContext::parse(&root.traceparent()).unwrap(), root);
    }

    #[tokio::test]
    async fn the_scope_sets_the_current_context() {
        assert_eq!(TraceContext::current(), None);
        let root = TraceContext::new_root();
        let seen = root.scope(async { TraceContext::current() }).await;
        assert_eq!(seen, Some(root));
        let (call, parent) = root.scope(async { TraceContext::for_call() }).await;
        assert_eq!(call.trace_id(), root.trace_id());
        assert_eq!(parent, Some(root.span_id()));
    }
}
