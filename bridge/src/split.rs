//! Splits the independent parts of one big history answer (the series of a rollup query,
//! their JSON) over the machine's cores: on a 2-core edge box a 24 h x 100 series rollup
//! otherwise runs on one core while the other idles.

use std::num::NonZeroUsize;

/// Most threads one answer uses.
const MAX_THREADS: usize = 4;

/// `f` over `items` in order, on up to [`MAX_THREADS`] scoped threads (the calling thread
/// included) when there are at least `min_per_thread` items per thread; else on the calling
/// thread. The first error wins.
pub(crate) fn map<T, R, E, F>(items: Vec<T>, min_per_thread: usize, f: F) -> Result<Vec<R>, E>
where
    T: Send,
    R: Send,
    E: Send,
    F: Fn(T) -> Result<R, E> + Sync,
{
    let cores = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
    let threads = cores
        .min(MAX_THREADS)
        .min(items.len() / min_per_thread.max(1))
        .max(1);
    if threads == 1 {
        return items.into_iter().map(f).collect();
    }
    let per = items.len().div_ceil(threads);
    let mut parts: Vec<Vec<T>> = Vec::with_capacity(threads);
    let mut items = items.into_iter();
    for _ in 0..threads {
        parts.push(items.by_ref().take(per).collect());
    }
    let f = &f;
    std::thread::scope(|scope| {
        let mut parts = parts.into_iter();
        let first = parts.next().unwrap_or_default();
        let others: Vec<_> = parts
            .map(|part| scope.spawn(move || part.into_iter().map(f).collect::<Result<Vec<R>, E>>()))
            .collect();
        let mut out: Vec<R> = first.into_iter().map(f).collect::<Result<_, E>>()?;
        for h in others {
            match h.join() {
                Ok(part) => out.extend(part?),
                // A panic in `f` is re-raised on the calling thread, as it would be unsplit.
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        Ok(out)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn keeps_order_and_reports_errors() {
        for n in [0usize, 1, 2, 3, 7, 100, 1001] {
            let items: Vec<usize> = (0..n).collect();
            let out: Result<Vec<usize>, ()> = super::map(items, 2, |i| Ok(i * 2));
            assert_eq!(out.unwrap(), (0..n).map(|i| i * 2).collect::<Vec<_>>());
        }
        let items: Vec<usize> = (0..100).collect();
        let out = super::map(items, 1, |i| if i == 77 { Err(i) } else { Ok(i) });
        assert_eq!(out, Err(77));
    }
}
