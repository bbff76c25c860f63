//! Independent pieces of work (sampling batches) on several threads.
//!
//! burn's CPU backends parallelise inside large operations only; a small U-Net's sampling step
//! is a chain of small operations that run on one core. Sampling batches are independent (each
//! is seeded by its index), so running them on separate threads uses every core and gives
//! exactly the images of a sequential run.

/// Threads to use on this machine (`std::thread::available_parallelism`, at least 1).
pub fn available_workers() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Runs `f(i)` for `i in 0..count` on `workers` threads (thread `w` takes `i = w, w + workers,
/// ...`) and returns the results in order of `i`. `init(w)` builds each thread's state (e.g. its
/// copy of the model) before it starts. The first error in order of `i` is returned.
pub fn map_in_threads<S, T, E>(
    count: usize,
    workers: usize,
    init: impl Fn(usize) -> S,
    f: impl Fn(&mut S, usize) -> Result<T, E> + Sync,
) -> Result<Vec<T>, E>
where
    S: Send,
    T: Send,
    E: Send,
{
    let workers = workers.clamp(1, count.max(1));
    let mut slots: Vec<Option<Result<T, E>>> = (0..count).map(|_| None).collect();
    if workers == 1 {
        let mut state = init(0);
        for (i, slot) in slots.iter_mut().enumerate() {
            *slot = Some(f(&mut state, i));
        }
    } else {
        let f = &f;
        let done: Vec<Vec<(usize, Result<T, E>)>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..workers)
                .map(|w| {
                    let mut state = init(w);
                    scope.spawn(move || (w..count).step_by(workers).map(|i| (i, f(&mut state, i))).collect::<Vec<_>>())
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("a worker thread panicked")).collect()
        });
        for (i, r) in done.into_iter().flatten() {
            slots[i] = Some(r);
        }
    }
    slots.into_iter().map(|r| r.expect("every index ran")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_come_back_in_order_and_errors_surface() {
        for workers in [1, 2, 3, 8] {
            let v: Result<Vec<usize>, String> = map_in_threads(7, workers, |w| w, |_, i| Ok(i * i));
            assert_eq!(v.unwrap(), vec![0, 1, 4, 9, 16, 25, 36]);
            let e: Result<Vec<usize>, String> = map_in_threads(
                7,
                workers,
                |_| (),
                |_, i| {
                    if i % 3 == 2 {
                        Err(format!("bad {i}"))
                    } else {
                        Ok(i)
                    }
                },
            );
            assert_eq!(e.unwrap_err(), "bad 2");
        }
        let empty: Result<Vec<u8>, ()> = map_in_threads(0, 4, |_| (), |_, _| Ok(1));
        assert!(empty.unwrap().is_empty());
    }
}
