//! Splitting the model's large products over threads where candle cannot.
//!
//! Natively candle threads its own kernels, so the model runs every product whole (its policy's
//! `parts()` is 1). In the threaded WebAssembly build candle's kernels stay single-threaded (it
//! sees one CPU), so once the page has started the thread pool (`startThreads` in src/wasm.rs sets
//! the part count of the models loaded afterwards) the model itself shares out each large linear
//! layer's output columns and each attention's heads over the rayon threads: the model's own
//! matrix kernel hands out blocks of columns of one output as threads come free
//! (`for_each_piece_over`); other products (candle's, for weight types the kernel
//! does not take) and attention heads are cut into pieces (`split`, `map`) and joined.
//! Through the own kernels the split changes nothing (every output value is computed the same way
//! whichever thread computes it; tests/split.rs checks bit equality); through candle's products
//! only float rounding: on the test fixtures at most 1.3e-5 in the image features and 1.4e-4 in
//! the logits, with identical token ids.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::policy::{Policy, Stats};
use crate::Result;

/// Each thread's share of a split product is cut into this many pieces, which the pool hands out
/// as threads come free: with one piece per thread the product waits for the slowest thread, and a
/// browser's threads are not equally fast (other tabs, a shared or throttled core).
const PIECES_PER_THREAD: usize = 8;

/// How to split `total` columns or heads of a product of `macs` multiply-adds over `rows` input
/// rows under `policy`: ranges for the pool to share out, each starting at a multiple of `align`
/// (the matrix kernel's column panel), or `None` to run it whole (one thread, too small to be
/// worth handing out, or decoding's few rows).
pub fn split(
    policy: &Policy,
    total: usize,
    rows: usize,
    macs: usize,
    align: usize,
) -> Option<Vec<(usize, usize)>> {
    if total <= 1 || !splits_product(policy, rows, policy.min_split_rows(), macs) {
        return None;
    }
    Some(pieces_over(policy.parts(), total, align, 1))
}

/// `total` cut into about `PIECES_PER_THREAD` ranges (start, len) per worker, each starting at a
/// multiple of `align` and at least `min_units` × `align` long but the last.
fn pieces_over(
    workers: usize,
    total: usize,
    align: usize,
    min_units: usize,
) -> Vec<(usize, usize)> {
    let align = align.max(1);
    let units = total.div_ceil(align);
    let pieces = (workers * PIECES_PER_THREAD)
        .min(units / min_units.max(1))
        .max(1);
    ranges(units, pieces)
        .into_iter()
        .map(|(start, len)| {
            let (start, end) = (start * align, ((start + len) * align).min(total));
            (start, end - start)
        })
        .collect()
}

/// `f(start, len)` over ranges that cover 0..total once: the pieces of `pieces_over(workers,
/// total, align, min_units)` handed out over `workers` threads of the pool as they come free
/// (counted in `stats`) when there is more than one, else one call for all of it. The model's
/// kernels share out a split product's columns this way; natively, where candle threads its own
/// kernels and the model runs whole, so does the integer kernel with its large products.
pub fn for_each_piece_over<F>(
    stats: &Stats,
    workers: usize,
    total: usize,
    align: usize,
    min_units: usize,
    f: F,
) where
    F: Fn(usize, usize) + Sync,
{
    let pieces = if workers > 1 {
        pieces_over(workers, total, align, min_units)
    } else {
        Vec::new()
    };
    if pieces.len() > 1 {
        let order = spread_order(pieces.len(), workers);
        for_each_dynamic(stats, workers, pieces.len(), |i| {
            let (start, len) = pieces[order[i]];
            f(start, len)
        });
    } else {
        f(0, total);
    }
}

/// The order in which `n` pieces are handed out to `workers` threads: the first `workers` claims
/// start `n / workers` pieces apart and each thread's next claim is most likely the piece after
/// its last, so threads working at the same time write far-apart columns. Neighbouring pieces
/// taken at once share a cache line of every output row at their boundary (a column panel is
/// rarely a whole number of lines: 12 floats in wasm), and the two threads, going down the rows
/// in step, passed it back and forth once per row tile: in Chromium on 2 threads the relaxed
/// SIMD integer kernel, whose tiles are shortest, gained only 1.13× from its second thread.
fn spread_order(n: usize, workers: usize) -> Vec<usize> {
    let workers = workers.clamp(1, n.max(1));
    let runs = ranges(n, workers);
    let longest = runs.iter().map(|&(_, len)| len).max().unwrap_or(0);
    (0..longest)
        .flat_map(|step| {
            runs.iter()
                .filter(move |&&(_, len)| step < len)
                .map(move |&(start, _)| start + step)
        })
        .collect()
}

/// Whether a product of `macs` multiply-adds over `rows` input rows is worth sharing out over the
/// threads under `policy`: there is more than one, it is large enough, and it has at least
/// `min_rows` rows (`Policy::min_split_rows`: decoding's few rows run whole, unless their kernel
/// gains from splitting them).
pub fn splits_product(policy: &Policy, rows: usize, min_rows: usize, macs: usize) -> bool {
    policy.parts() > 1 && rows >= min_rows && macs >= policy.min_split_macs()
}

/// `f(0..n)`, on the rayon pool (counted in `stats`) when there is more than one part.
pub fn map<T, F>(stats: &Stats, n: usize, f: F) -> Result<Vec<T>>
where
    T: Send,
    F: Fn(usize) -> Result<T> + Sync + Send,
{
    if n <= 1 {
        return (0..n).map(f).collect();
    }
    stats.count_split();
    use rayon::prelude::*;
    (0..n).into_par_iter().map(f).collect()
}

/// `f(i)` for every i in 0..n, shared out over the pool: each of the `workers` (the calling
/// thread among them) takes the next i until none is left, so a thread that is slowed down simply
/// takes fewer. A worker that starts after the others have taken everything does nothing.
/// Counted in `stats` as one split.
fn for_each_dynamic<F>(stats: &Stats, workers: usize, n: usize, f: F)
where
    F: Fn(usize) + Sync,
{
    stats.count_split();
    let next = AtomicUsize::new(0);
    let work = || loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= n {
            break;
        }
        f(i);
    };
    rayon::scope(|s| {
        for _ in 1..workers.min(n) {
            s.spawn(|_| work());
        }
        work();
    });
}

/// Runs `f` on a thread of the pool when `policy` splits the model, so that its parallel sections
/// start from a pool thread (which works on one part itself and hands the rest to the others)
/// rather than from an outside thread that must wake the pool and sleep until it is done, once per
/// product. The caller blocks until `f` returns.
pub fn on_pool<R, F>(policy: &Policy, f: F) -> R
where
    R: Send,
    F: FnOnce() -> R + Send,
{
    if policy.parts() > 1 {
        rayon::scope(|_| f())
    } else {
        f()
    }
}

/// `total` split into `n` nearly equal contiguous ranges (start, len); empty ranges are dropped.
fn ranges(total: usize, n: usize) -> Vec<(usize, usize)> {
    let n = n.clamp(1, total.max(1));
    (0..n)
        .map(|i| {
            let start = total * i / n;
            let end = total * (i + 1) / n;
            (start, end - start)
        })
        .filter(|&(_, len)| len > 0)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_everything_once() {
        for total in [1usize, 7, 16, 30522] {
            for n in 1..6 {
                let r = ranges(total, n);
                assert_eq!(r.len(), n.min(total));
                let mut next = 0;
                for (start, len) in r {
                    assert_eq!(start, next);
                    assert!(len > 0);
                    next = start + len;
                }
                assert_eq!(next, total);
            }
        }
    }

    #[test]
    fn split_pieces_are_aligned_and_cover_everything_once() {
        let three = Policy::default().with_parts(3);
        for (total, align) in [(1024usize, 12usize), (30522, 12), (16, 1), (5, 12), (2, 1)] {
            let pieces = split(&three, total, 257, usize::MAX, align).unwrap();
            assert!(pieces.len() <= 3 * PIECES_PER_THREAD && !pieces.is_empty());
            let mut next = 0;
            for (start, len) in pieces {
                assert_eq!(start, next);
                assert!(len > 0 && start % align == 0);
                next = start + len;
            }
            assert_eq!(next, total);
        }
        // Decoding's rows are not split.
        assert!(split(&three, 1024, 1, usize::MAX, 12).is_none());
        let whole = Policy::default();
        assert!(split(&whole, 1024, 257, usize::MAX, 12).is_none());
    }

    #[test]
    fn pieces_cover_everything_once_and_are_long_enough() {
        use std::sync::Mutex;
        for (total, align, min_units) in [(1000usize, 12usize, 4usize), (100, 1, 32), (13, 1, 32)] {
            let seen = Mutex::new(Vec::new());
            let stats = Stats::default();
            for_each_piece_over(&stats, 2, total, align, min_units, |start, len| {
                seen.lock().unwrap().push((start, len));
            });
            let mut seen = seen.into_inner().unwrap();
            seen.sort();
            let mut next = 0;
            for &(start, len) in &seen {
                assert_eq!(start, next);
                assert!(start % align == 0 && (len >= min_units * align || start + len == total));
                next = start + len;
            }
            assert_eq!(next, total);
            assert_eq!(
                seen.len() > 1,
                total.div_ceil(align) >= 2 * min_units,
                "{total}"
            );
            assert_eq!(stats.splits(), usize::from(seen.len() > 1), "{total}");
        }
    }

    #[test]
    fn spread_order_is_a_permutation_that_starts_the_threads_apart() {
        for n in [1usize, 2, 5, 16, 17, 24] {
            for workers in 1..5 {
                let order = spread_order(n, workers);
                let mut sorted = order.clone();
                sorted.sort();
                assert_eq!(
                    sorted,
                    (0..n).collect::<Vec<_>>(),
                    "n {n} workers {workers}"
                );
            }
        }
        assert_eq!(spread_order(6, 2), vec![0, 3, 1, 4, 2, 5]);
        assert_eq!(spread_order(7, 3), vec![0, 2, 4, 1, 3, 5, 6]);
    }

    #[test]
    fn for_each_dynamic_runs_every_index_once() {
        use std::sync::atomic::AtomicU32;
        let seen: Vec<AtomicU32> = (0..37).map(|_| AtomicU32::new(0)).collect();
        let stats = Stats::default();
        for_each_dynamic(&stats, 3, seen.len(), |i| {
            seen[i].fetch_add(1, Ordering::Relaxed);
        });
        assert!(seen.iter().all(|c| c.load(Ordering::Relaxed) == 1));
        assert_eq!(stats.splits(), 1);
    }

    #[test]
    fn map_keeps_order_and_errors() {
        let stats = Stats::default();
        assert_eq!(map(&stats, 4, |i| Ok(i * 10)).unwrap(), vec![0, 10, 20, 30]);
        let failed = map(&stats, 3, |i| {
            if i == 1 {
                Err(crate::Error::invalid("part 1 failed"))
            } else {
                Ok(i)
            }
        });
        assert!(failed.unwrap_err().to_string().contains("part 1 failed"));
        assert_eq!(stats.splits(), 2);
    }
}
