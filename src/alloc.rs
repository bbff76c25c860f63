//! Allocator settings for the commands and benchmarks.
//!
//! burn allocates every intermediate tensor afresh. With glibc's defaults, blocks above the
//! (dynamic, at most 32 MiB) mmap threshold are `mmap`ed and unmapped on free, and the top of
//! the heap is trimmed back to the OS above 128 KiB free, so each large activation is faulted in
//! page by page on every use: on the pipeline preset ~10 % of a training step's profile was page
//! faults, and the U-Net forward at batch 100 ran 1.8x faster with the settings below
//! (docs/performance-history.md, "Allocator settings"). Memory that is freed stays with the process
//! (up to [`TRIM_THRESHOLD`] at the top of the heap) for the next step to reuse; peak RSS of a
//! DeepLense batch-24 training step went from 18.4 to 18.9 GB.

/// Blocks above this size are still `mmap`ed (1 GiB).
pub const MMAP_THRESHOLD: usize = 1 << 30;
/// Free memory at the top of the heap beyond this is returned to the OS (1 GiB).
pub const TRIM_THRESHOLD: usize = 1 << 30;

/// Applies [`MMAP_THRESHOLD`] and [`TRIM_THRESHOLD`] to glibc's malloc (Linux/glibc only; a
/// no-op elsewhere, or when the environment already sets malloc tunables through
/// `GLIBC_TUNABLES`, or when `LENSING_DIFFUSION_DEFAULT_MALLOC` is set). Call it first thing in
/// `main`. Returns whether the settings were applied.
pub fn tune_allocator() -> bool {
    !opted_out() && imp()
}

/// Whether the environment asks for glibc's own malloc settings.
fn opted_out() -> bool {
    std::env::var_os("LENSING_DIFFUSION_DEFAULT_MALLOC").is_some()
        || std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("glibc.malloc."))
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn imp() -> bool {
    let to_int = |v: usize| libc::c_int::try_from(v).unwrap_or(libc::c_int::MAX);
    // SAFETY: mallopt only changes allocator parameters; it is called before other threads start
    // allocating in earnest and returns 0 for a value it rejects.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, to_int(MMAP_THRESHOLD)) == 1
            && libc::mallopt(libc::M_TRIM_THRESHOLD, to_int(TRIM_THRESHOLD)) == 1
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn imp() -> bool {
    false
}

#[cfg(test)]
mod tests {
    #[test]
    fn settings_apply_on_glibc() {
        let glibc = cfg!(all(target_os = "linux", target_env = "gnu"));
        assert_eq!(super::tune_allocator(), glibc && !super::opted_out());
        // Large allocations still work and are usable afterwards.
        let v = vec![1u8; 64 << 20];
        assert_eq!(v.iter().map(|&b| b as usize).sum::<usize>(), 64 << 20);
    }
}
