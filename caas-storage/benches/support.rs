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
