//! Splitting the per-member work of a large pond across the CPUs.
//!
//! Planning a pond and rendering its outputs is one pass over the members
//! after discovery, on the critical path of every command. For 10,000
//! members that pass is a few hundred milliseconds on one thread while the
//! others wait; split in chunks it takes a fraction of that. Small ponds
//! stay on the calling thread: a thread costs more than their whole pass.

use std::num::NonZeroUsize;

/// `f` of each chunk of `items`, in order. `items` is split into as many
/// chunks as there are CPUs, but none smaller than `min_chunk`; the first
/// chunk runs on the calling thread, the others on scoped threads.
pub fn map_chunks<T: Sync, R: Send>(
    items: &[T],
    min_chunk: usize,
    f: impl Fn(&[T]) -> R + Sync,
) -> Vec<R> {
    let cpus = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
    chunked(items, min_chunk, cpus, f)
}

fn chunked<T: Sync, R: Send>(
    items: &[T],
    min_chunk: usize,
    threads: usize,
    f: impl Fn(&[T]) -> R + Sync,
) -> Vec<R> {
    let n = threads.min(items.len() / min_chunk.max(1)).max(1);
    if n == 1 {
        return vec![f(items)];
    }
    let size = items.len().div_ceil(n);
    let mut parts = items.chunks(size);
    let first = parts.next().unwrap_or_default();
    std::thread::scope(|scope| {
        let f = &f;
        let others: Vec<_> = parts.map(|part| scope.spawn(move || f(part))).collect();
        let mut out = vec![f(first)];
        out.extend(others.into_iter().map(|h| match h.join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }));
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_every_item_once_in_order() {
        let items: Vec<u32> = (0..10_001).collect();
        for threads in [1, 2, 3, 8] {
            for min_chunk in [1, 100, 5_000, 20_000] {
                let parts = chunked(&items, min_chunk, threads, <[u32]>::to_vec);
                let expected = threads.min(items.len() / min_chunk).max(1);
                assert_eq!(parts.len(), expected, "{threads} threads, chunks ≥ {min_chunk}");
                assert_eq!(parts.concat(), items);
            }
        }
        assert_eq!(chunked(&[] as &[u32], 10, 4, <[u32]>::len), vec![0]);
    }

    #[test]
    fn chunks_after_the_first_run_on_other_threads() {
        let items: Vec<u32> = (0..4).collect();
        let caller = std::thread::current().id();
        let ran_on = chunked(&items, 1, 4, |_| std::thread::current().id());
        assert_eq!(ran_on[0], caller);
        assert!(ran_on[1..].iter().all(|t| *t != caller));
    }
}
