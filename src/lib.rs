//! lensing-diffusion
pub use diffusion_core;
pub use gen_metrics;
pub use lens_data;
pub use unet;
