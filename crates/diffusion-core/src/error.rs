//! The crate's error type.

/// Everything that can go wrong in `diffusion-core`. Each variant names the value at fault.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum DiffusionError {
    /// The number of diffusion timesteps `T` must be at least 1.
    #[error("number of diffusion timesteps must be >= 1, got {0}")]
    ZeroTimesteps(usize),
    /// A schedule parameter is out of its valid range.
    #[error("invalid schedule parameter `{name}` = {value}: {reason}")]
    InvalidScheduleParameter {
        /// Parameter name.
        name: &'static str,
        /// Offending value.
        value: f64,
        /// Why it is rejected.
        reason: &'static str,
    },
    /// The number of sampling steps must lie in `1..=T`.
    #[error("sampling steps must be in 1..={max}, got {steps}")]
    InvalidSamplingSteps {
        /// Requested steps.
        steps: usize,
        /// The number of diffusion timesteps `T`.
        max: usize,
    },
    /// DDIM's eta must be finite and non-negative.
    #[error("eta must be finite and >= 0, got {0}")]
    InvalidEta(f64),
    /// A loss-weighting or noise parameter is out of range.
    #[error("invalid parameter `{name}` = {value}: {reason}")]
    InvalidParameter {
        /// Parameter name.
        name: &'static str,
        /// Offending value.
        value: f64,
        /// Why it is rejected.
        reason: &'static str,
    },
    /// A timestep index is not below `T`.
    #[error("timestep {t} out of range for a schedule with T = {max}")]
    TimestepOutOfRange {
        /// The offending timestep.
        t: usize,
        /// The number of diffusion timesteps.
        max: usize,
    },
    /// Two tensors (or a tensor and a list) that must agree in shape do not.
    #[error("shape mismatch for {what}: expected {expected:?}, found {found:?}")]
    ShapeMismatch {
        /// Which input.
        what: &'static str,
        /// The expected shape.
        expected: Vec<usize>,
        /// The shape that was given.
        found: Vec<usize>,
    },
    /// A name (objective, schedule, sampler) that is not one of the known ones.
    #[error("unknown {what} `{value}` (expected {expected})")]
    UnknownName {
        /// What was being parsed.
        what: &'static str,
        /// The text given.
        value: String,
        /// The accepted forms.
        expected: &'static str,
    },
    /// A class label is not below the number of classes of the model.
    #[error("class label {label} out of range: the model knows {num_classes} classes (0..{num_classes})")]
    LabelOutOfRange {
        /// The offending label.
        label: usize,
        /// Classes the model knows.
        num_classes: usize,
    },
    /// The denoiser returned NaN or infinite values while sampling or computing the loss.
    #[error("the denoiser returned non-finite values at timestep t = {t} (sampling step {step} of {total})")]
    NonFiniteModelOutput {
        /// The diffusion timestep at which it happened.
        t: usize,
        /// 1-based sampling step.
        step: usize,
        /// Total sampling steps.
        total: usize,
    },
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, DiffusionError>;
