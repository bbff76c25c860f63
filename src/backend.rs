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
}

impl BackendKind {
    /// Threads for independent sampling batches: `requested` (at least 1), else every core on
    /// the CPU backends and 1 on cuda (one device, one stream of work).
    pub fn sample_workers(self, requested: Option<usize>) -> usize {
        match (requested, self) {
            (Some(t), _) => t.max(1),
            (None, Self::Cuda) => 1,
            (None, _) => crate::parallel::available_workers(),
        }
    }

    /// Data-parallel training shards for a preset's `data_parallel` on this backend: at least 2
    /// on the CPU backends (burn's CPU kernels leave a core idle on small operations; measured
    /// gains for both presets in docs/performance-history.md), 1 on cuda.
    pub fn training_shards(self, preset: usize) -> usize {
        match self {
            Self::Cuda => 1,
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
            other => Err(format!("unknown backend `{other}` (expected flex, ndarray or cuda)")),
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Flex => "flex",
            Self::NdArray => "ndarray",
            Self::Cuda => "cuda",
        })
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
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_dependent_defaults() {
        assert_eq!(BackendKind::Flex.training_shards(1), 2);
        assert_eq!(BackendKind::NdArray.training_shards(3), 3);
        assert_eq!(BackendKind::Cuda.training_shards(2), 1);
        assert_eq!(BackendKind::Cuda.sample_workers(None), 1);
        assert_eq!(BackendKind::Flex.sample_workers(Some(0)), 1);
        assert_eq!(BackendKind::Cuda.sample_workers(Some(3)), 3);
        assert_eq!(BackendKind::Flex.sample_workers(None), crate::parallel::available_workers());
    }
}
