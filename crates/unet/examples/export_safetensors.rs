//! Converts any checkpoint the `unet` crate reads (PyTorch bare/GaussianDiffusion/Trainer,
//! burnpack, safetensors) into safetensors with PyTorch key names, or exports a freshly
//! initialised network.
//!
//! ```text
//! cargo run -p unet --example export_safetensors -- IN.pth OUT.safetensors [model|ema]
//! cargo run -p unet --example export_safetensors -- --init '{"dim":8,"dim_mults":[1,2],"channels":1}' OUT.safetensors
//! ```
//! Check the result in PyTorch with `scripts/check_safetensors_in_torch.py`.

use std::path::Path;
use std::process::ExitCode;

use burn::backend::Flex;
use unet::{load_checkpoint, UnetConfig, Weights};

fn run(args: &[String]) -> Result<(), String> {
    let device = Default::default();
    let model = match args {
        [flag, json, _out] if flag == "--init" => {
            let config: UnetConfig = serde_json::from_str(json).map_err(|e| format!("config: {e}"))?;
            config.init::<Flex>(&device).map_err(|e| e.to_string())?
        }
        [input, _out] | [input, _out, _] => {
            let weights: Weights = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or_default();
            load_checkpoint::<Flex>(Path::new(input), weights, None, &device).map_err(|e| e.to_string())?
        }
        _ => {
            return Err("usage: export_safetensors IN OUT.safetensors [model|ema]\n       \
                        export_safetensors --init CONFIG_JSON OUT.safetensors"
                .into())
        }
    };
    let out = Path::new(if args[0] == "--init" { &args[2] } else { &args[1] });
    model.export_safetensors(out).map_err(|e| e.to_string())?;
    println!("{} -> {} ({} parameters)", model.config().describe(), out.display(), model.config().num_params());
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
