//! Backend selection at the edge (commands pick one with `--backend`).

use std::fmt;
use std::str::FromStr;

/// The compute backends this build supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// burn's Flex CPU backend (the default; fastest on the CPU, especially for training).
    Flex,
    /// burn's NdArray CPU backend (convolution backward is ~50x slower than Flex; fine for inference).
    NdArray,
    /// burn's CUDA backend (needs the `cuda` feature and an NVIDIA GPU at run time).
    Cuda,
    /// burn's LibTorch backend (needs the `tch` feature and libtorch 2.9 at build and run time):
    /// the first CUDA GPU when libtorch sees one, else libtorch's CPU.
    Tch,
}

impl BackendKind {
    /// Threads for independent sampling batches: `requested` (at least 1), else every core on
    /// the CPU backends and 1 on cuda (one device, one stream of work).
    pub fn sample_workers(self, requested: Option<usize>) -> usize {
        match (requested, self) {
            (Some(t), _) => t.max(1),
            // One device, one stream of work; libtorch's CPU kernels use every core themselves.
            (None, Self::Cuda | Self::Tch) => 1,
            (None, _) => crate::parallel::available_workers(),
        }
    }

    /// Data-parallel training shards for a preset's `data_parallel` on this backend: at least 2
    /// on the CPU backends (burn's CPU kernels leave a core idle on small operations; measured
    /// gains for both presets in docs/performance-history.md), 1 on cuda.
    pub fn training_shards(self, preset: usize) -> usize {
        match self {
            Self::Cuda | Self::Tch => 1,
            Self::Flex | Self::NdArray => preset.max(2),
        }
    }
}

impl FromStr for BackendKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "flex" => Ok(Self::Flex),
            "ndarray" => Ok(Self::NdArray),
            "cuda" => {
                if cfg!(feature = "cuda-untuned") {
                    Ok(Self::Cuda)
                } else {
                    Err("this build has no CUDA backend: rebuild with `--features cuda`".into())
                }
            }
            "tch" | "libtorch" => {
                if cfg!(feature = "tch") {
                    Ok(Self::Tch)
                } else {
                    Err("this build has no LibTorch backend: rebuild with `--features tch` (docs/GPU.md)".into())
                }
            }
            other => Err(format!("unknown backend `{other}` (expected flex, ndarray, cuda or tch)")),
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Flex => "flex",
            Self::NdArray => "ndarray",
            Self::Cuda => "cuda",
            Self::Tch => "tch",
        })
    }
}

/// The LibTorch device `--backend tch` runs on: the first CUDA GPU when libtorch sees one, else
/// its CPU.
#[cfg(feature = "tch")]
pub fn tch_device() -> burn::backend::libtorch::LibTorchDevice {
    if tch::Cuda::is_available() {
        burn::backend::libtorch::LibTorchDevice::Cuda(0)
    } else {
        burn::backend::libtorch::LibTorchDevice::Cpu
    }
}

/// Lines of cubecl's compilation log that announce one kernel compiled (its `Basic` level writes
/// `[Compiling kernel] NAME` per kernel; kernels found in the cache are not compiled again and
/// not logged).
pub fn count_compiled_kernels(log: &str) -> usize {
    log.lines().filter(|l| l.starts_with("[Compiling kernel]")).count()
}

/// cubecl's settings for `--backend cuda`, chosen by the command so that no user has to write a
/// `cubecl.toml`:
/// - the compilation cache is on, in `dir` (cubecl's default is off: every run compiled every
///   kernel again, the 100-200 s first step of docs/performance-history.md "GPU"); autotune
///   results are cached there too;
/// - compilations are logged (one line each) to `dir/compile.log`, which
///   [`KernelCompileWatch`] counts to show warm-up progress.
///
/// A `cubecl.toml` the user did write (and `CUBECL_*` variables) still wins for anything it sets.
/// Call once, before the first CUDA device is created: cubecl reads its settings once per process.
#[cfg(feature = "cuda-untuned")]
pub fn configure_cubecl(dir: &std::path::Path) -> std::io::Result<std::path::PathBuf> {
    use cubecl_runtime::config::cache::CacheConfig;
    use cubecl_runtime::config::compilation::CompilationLogLevel;
    use cubecl_runtime::config::{CubeClRuntimeConfig, RuntimeConfig};

    std::fs::create_dir_all(dir)?;
    let log = dir.join("compile.log");
    let mut cfg = CubeClRuntimeConfig::from_current_dir().override_from_env();
    if cfg.compilation.cache.is_none() {
        cfg.compilation.cache = Some(CacheConfig::File(dir.to_path_buf()));
    }
    if matches!(cfg.autotune.cache, CacheConfig::Target) {
        cfg.autotune.cache = CacheConfig::File(dir.to_path_buf());
    }
    let logger = &mut cfg.compilation.logger;
    if matches!(logger.level, CompilationLogLevel::Disabled) && logger.file.is_none() {
        logger.level = CompilationLogLevel::Basic;
        logger.file = Some(log.clone());
        logger.append = false;
    }
    let log = logger.file.clone().unwrap_or(log);
    CubeClRuntimeConfig::set(cfg);
    Ok(log)
}

/// Shows CUDA warm-up progress: a thread that counts the kernels cubecl compiles (from its
/// compilation log, see [`configure_cubecl`]) and prints `compiling kernels: n` while the count
/// grows. Stops when dropped.
pub struct KernelCompileWatch {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl KernelCompileWatch {
    /// Watches `log`, printing at most every `every`.
    pub fn start(log: std::path::PathBuf, every: std::time::Duration) -> Self {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut shown = 0;
            let start = std::time::Instant::now();
            while !flag.load(Ordering::Relaxed) {
                std::thread::sleep(std::time::Duration::from_millis(200).min(every));
                let n = std::fs::read_to_string(&log).map(|s| count_compiled_kernels(&s)).unwrap_or(0);
                if n > shown {
                    eprintln!("compiling kernels: {n} ({:.0} s; cached for later runs)", start.elapsed().as_secs_f64());
                    shown = n;
                    std::thread::sleep(every);
                }
            }
        });
        Self { stop, thread: Some(thread) }
    }
}

impl Drop for KernelCompileWatch {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Run a generic function body with the backend chosen at run time.
///
/// `$f` is a generic function `fn<B: AutodiffBackend>(device: B::Device, ...) -> R`;
/// the macro calls it with `Autodiff<Backend>` for the selected kind.
#[macro_export]
macro_rules! with_autodiff_backend {
    ($kind:expr, $f:ident ( $($arg:expr),* )) => {{
        use ::burn::backend::Autodiff;
        match $kind {
            $crate::backend::BackendKind::Flex => $f::<Autodiff<::burn::backend::Flex>>(Default::default(), $($arg),*),
            $crate::backend::BackendKind::NdArray => $f::<Autodiff<::burn::backend::NdArray>>(Default::default(), $($arg),*),
            #[cfg(feature = "cuda-untuned")]
            $crate::backend::BackendKind::Cuda => $f::<Autodiff<::burn::backend::Cuda>>(Default::default(), $($arg),*),
            #[cfg(not(feature = "cuda-untuned"))]
            $crate::backend::BackendKind::Cuda => unreachable!("parsing rejects cuda without the feature"),
            #[cfg(feature = "tch")]
            $crate::backend::BackendKind::Tch => {
                $f::<Autodiff<::burn::backend::LibTorch>>($crate::backend::tch_device(), $($arg),*)
            }
            #[cfg(not(feature = "tch"))]
            $crate::backend::BackendKind::Tch => unreachable!("parsing rejects tch without the feature"),
        }
    }};
}

/// Like [`with_autodiff_backend!`] for inference (no autodiff).
#[macro_export]
macro_rules! with_backend {
    ($kind:expr, $f:ident ( $($arg:expr),* )) => {{
        match $kind {
            $crate::backend::BackendKind::Flex => $f::<::burn::backend::Flex>(Default::default(), $($arg),*),
            $crate::backend::BackendKind::NdArray => $f::<::burn::backend::NdArray>(Default::default(), $($arg),*),
            #[cfg(feature = "cuda-untuned")]
            $crate::backend::BackendKind::Cuda => $f::<::burn::backend::Cuda>(Default::default(), $($arg),*),
            #[cfg(not(feature = "cuda-untuned"))]
            $crate::backend::BackendKind::Cuda => unreachable!("parsing rejects cuda without the feature"),
            #[cfg(feature = "tch")]
            $crate::backend::BackendKind::Tch => $f::<::burn::backend::LibTorch>($crate::backend::tch_device(), $($arg),*),
            #[cfg(not(feature = "tch"))]
            $crate::backend::BackendKind::Tch => unreachable!("parsing rejects tch without the feature"),
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compiled_kernels_are_counted_from_the_log() {
        let log = "[Compiling kernel] matmul\n[Compiling kernel] conv2d<f32>\nsomething else\n";
        assert_eq!(count_compiled_kernels(log), 2);
        assert_eq!(count_compiled_kernels(""), 0);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("compile.log");
        std::fs::write(&path, log).unwrap();
        // The watcher reads the file and stops when dropped (no hang).
        drop(KernelCompileWatch::start(path, std::time::Duration::from_millis(10)));
    }

    #[test]
    fn backend_dependent_defaults() {
        assert_eq!(BackendKind::Flex.training_shards(1), 2);
        assert_eq!(BackendKind::NdArray.training_shards(3), 3);
        assert_eq!(BackendKind::Cuda.training_shards(2), 1);
        assert_eq!(BackendKind::Cuda.sample_workers(None), 1);
        assert_eq!(BackendKind::Flex.sample_workers(Some(0)), 1);
        assert_eq!(BackendKind::Cuda.sample_workers(Some(3)), 3);
        assert_eq!(BackendKind::Flex.sample_workers(None), crate::parallel::available_workers());
        assert_eq!(BackendKind::Tch.sample_workers(None), 1);
        assert_eq!(BackendKind::Tch.training_shards(2), 1);
        assert_eq!("libtorch".parse::<BackendKind>().is_ok(), cfg!(feature = "tch"));
        if !cfg!(feature = "tch") {
            let e = "tch".parse::<BackendKind>().unwrap_err();
            assert!(e.contains("--features tch"), "{e}");
        }
    }
}
