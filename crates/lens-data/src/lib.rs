//! placeholder (being written)
#![warn(missing_docs)]
pub mod error;
pub mod npy;
pub mod render;
pub mod simulate;
pub mod spec;
pub use error::{LensDataError, Result};
