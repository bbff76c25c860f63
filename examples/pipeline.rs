//! The end-to-end job from Rust: the library call behind `lensing-diffusion pipeline`.
//!
//! ```text
//! cargo run --release --example pipeline      # same as `cargo run --release -- pipeline`
//! ```

use burn::backend::{Autodiff, Flex};
use lensing_diffusion::pipeline::{run_pipeline, PipelineOptions};

fn main() -> Result<(), lensing_diffusion::Error> {
    lensing_diffusion::alloc::tune_allocator();
    let outcome = run_pipeline::<Autodiff<Flex>>(&PipelineOptions::default(), &Default::default())?;
    println!("{}", outcome.report.to_table());
    println!(
        "FID {:.2}, pure-noise baseline {:.2}; report: {}",
        outcome.report.fid,
        outcome.fid_noise,
        outcome.report_path.display()
    );
    Ok(())
}
