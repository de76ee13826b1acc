//! Shared bench harness: alternate a candidate and its baseline in rounds, in one process,
//! and report the ratio of their medians (robust to drift of the machine during the run).
#![allow(dead_code)]

use std::future::Future;
use std::time::{Duration, Instant};

/// One comparison's result.
pub struct Ratio {
    pub name: String,
    pub candidate: Duration,
    pub baseline: Duration,
}

impl Ratio {
    pub fn ratio(&self) -> f64 {
        self.candidate.as_secs_f64() / self.baseline.as_secs_f64()
    }

    /// This ratio as a row of the `scripts/bench` table: see [`Row`].
    pub fn row(&self, target: &str, max: Option<f64>) -> Row {
        Row {
            name: self.name.clone(),
            ratio: self.ratio(),
            target: target.to_owned(),
            limit: max.map(Limit::AtMost),
            detail: format!(
                "{:.1} us vs {:.1} us",
                self.candidate.as_secs_f64() * 1e6,
                self.baseline.as_secs_f64() * 1e6
            ),
        }
    }

    pub fn print(&self, target: &str) {
        println!(
            "{:<28} candidate {:>9.1} us/op  baseline {:>9.1} us/op  ratio {:.3}  (target {target})",
            self.name,
            self.candidate.as_secs_f64() * 1e6,
            self.baseline.as_secs_f64() * 1e6,
            self.ratio()
        );
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Runs `rounds` rounds; each round times `batch` calls of the candidate then `batch` calls of
/// the baseline (swapping the order every other round). `i` is a running call number.
pub async fn alternate<C, CF, B, BF>(
    name: &str,
    rounds: usize,
    batch: usize,
    mut candidate: C,
    mut baseline: B,
) -> Ratio
where
    C: FnMut(usize) -> CF,
    CF: Future<Output = ()>,
    B: FnMut(usize) -> BF,
    BF: Future<Output = ()>,
{
    let mut c_times = Vec::with_capacity(rounds);
    let mut b_times = Vec::with_capacity(rounds);
    let mut i = 0;
    for round in 0..rounds {
        for pass in 0..2 {
            let run_candidate = (pass == 0) == (round % 2 == 0);
            let start = Instant::now();
            for _ in 0..batch {
                if run_candidate {
                    candidate(i).await;
                } else {
                    baseline(i).await;
                }
                i += 1;
            }
            let per_op = start.elapsed() / batch as u32;
            if run_candidate {
                c_times.push(per_op);
            } else {
                b_times.push(per_op);
            }
        }
    }
    Ratio {
        name: name.to_owned(),
        candidate: median(c_times),
        baseline: median(b_times),
    }
}

/// `name` from the environment as a number, or `default`.
pub fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A collection of `db` with the concerns of a `strong` entity: what a hand-written baseline
/// uses to compare like with like.
pub fn strong_collection(
    db: &mongodb::Database,
    name: &str,
) -> mongodb::Collection<caas_storage::bson::Document> {
    use caas_storage::Consistency;
    db.collection_with_options(
        name,
        mongodb::options::CollectionOptions::builder()
            .write_concern(Consistency::Strong.write_concern())
            .read_concern(Consistency::Strong.read_concern())
            .selection_criteria(Consistency::Strong.read_preference())
            .build(),
    )
}

/// What a ratio must be.
#[derive(Clone, Copy)]
pub enum Limit {
    /// At most this.
    AtMost(f64),
    /// At least this.
    AtLeast(f64),
}

/// One row of the `scripts/bench` table: a ratio, its target in words and, if it is a
/// target (not a report), the limit it is checked against.
pub struct Row {
    pub name: String,
    pub ratio: f64,
    pub target: String,
    pub limit: Option<Limit>,
    pub detail: String,
}

impl Row {
    /// A row with a lower bound (throughput ratios).
    pub fn at_least(name: &str, ratio: f64, min: f64, detail: String) -> Row {
        Row {
            name: name.to_owned(),
            ratio,
            target: format!(">= {min}"),
            limit: Some(Limit::AtLeast(min)),
            detail,
        }
    }

    /// A row with an upper bound.
    pub fn at_most(name: &str, ratio: f64, max: f64, detail: String) -> Row {
        Row {
            name: name.to_owned(),
            ratio,
            target: format!("<= {max}"),
            limit: Some(Limit::AtMost(max)),
            detail,
        }
    }

    /// A reported figure with no target.
    pub fn report(name: &str, ratio: f64, detail: String) -> Row {
        Row {
            name: name.to_owned(),
            ratio,
            target: "report".to_owned(),
            limit: None,
            detail,
        }
    }
}

/// Appends `rows` to the file named by `BENCH_RESULTS` (what `scripts/bench` reads), one
/// tab-separated line each: name, ratio, target, check (`max:x`, `min:x` or `-`), detail.
/// Without `BENCH_RESULTS` it does nothing (the bench's own output has the figures).
pub fn record(rows: &[Row]) {
    use std::io::Write;
    let Ok(path) = std::env::var("BENCH_RESULTS") else {
        return;
    };
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("BENCH_RESULTS={path}: {e}"));
    for r in rows {
        let check = match r.limit {
            Some(Limit::AtMost(x)) => format!("max:{x}"),
            Some(Limit::AtLeast(x)) => format!("min:{x}"),
            None => "-".to_owned(),
        };
        writeln!(
            f,
            "{}\t{:.3}\t{}\t{}\t{}",
            r.name, r.ratio, r.target, check, r.detail
        )
        .unwrap();
    }
}
