//! The lever study behind the main job's recipe (issue 21): what limits the realism of the default
//! `pipeline` run within its budget. Each lever changes one thing of the small preset; every
//! variant trains on the same simulated images, samples with the same seeds and is measured
//! against the same held-out real set, with the pipeline's extractor, so rows compare directly.
//!
//! ```text
//! cargo run --release --example lever_study -- [--steps N] [--out DIR] [LEVER ...]
//! cargo run --release --example lever_study -- --list
//! ```
//!
//! Rows are appended to `DIR/levers.csv` as they are measured (default `runs/levers`); a rerun
//! skips the (lever, steps, weights, sampler) rows already there, so an interrupted study resumes.
//! Each row gives the FID of the generated set against the held-out real set with its bootstrap
//! interval, next to the real-vs-real floor and the CDM-vs-axion FID at the same set sizes.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use burn::backend::{Autodiff, Flex};
use diffusion_core::{BetaSchedule, LossWeighting, Objective, Sampler};
use gen_metrics::{fid_interval, BootstrapConfig};
use gen_metrics::{frechet_distance_from_features, prdc, FeatureExtractor};
use lens_data::simulate::LensClass;
use lensing_diffusion::classifier::ExtractorRecipe;
use lensing_diffusion::config::TrainConfig;
use lensing_diffusion::run::{run, RunOptions};
use lensing_diffusion::sample::{generate, SampleOptions};
use lensing_diffusion::trainer::Trainer;
use lensing_diffusion::Error;
use ndarray::{Array2, Axis};
use unet::Unet;

type B = Autodiff<Flex>;

/// One lever: a name, what it changes, and the change.
struct Lever {
    name: &'static str,
    what: &'static str,
    apply: fn(&mut TrainConfig, &mut usize),
}

/// The levers, each one change from the small preset. `steps` is the study's step count (the
/// short runs' length); a lever may scale it, to keep the images seen or the wall time comparable.
const LEVERS: &[Lever] = &[
    Lever { name: "baseline", what: "the small preset (pipeline default)", apply: |_, _| {} },
    Lever { name: "lr-2e-3", what: "peak learning rate 2e-3 (from 1e-3)", apply: |c, _| c.lr = 2e-3 },
    Lever { name: "lr-5e-4", what: "peak learning rate 5e-4", apply: |c, _| c.lr = 5e-4 },
    Lever { name: "const-lr", what: "no cosine decay after warm-up", apply: |c, _| c.cosine_decay = false },
    Lever {
        name: "ema-0.99",
        what: "EMA decay 0.99 (from 0.995), from step 50",
        apply: |c, _| {
            c.ema.decay = 0.99;
            c.ema.start_step = 50;
        },
    },
    Lever { name: "ema-0.999", what: "EMA decay 0.999", apply: |c, _| c.ema.decay = 0.999 },
    Lever {
        name: "batch-32",
        what: "batch 32 at half the steps (same images seen)",
        apply: |c, s| {
            c.batch_size = 32;
            *s /= 2;
        },
    },
    Lever {
        name: "batch-8",
        what: "batch 8 at twice the steps (same images seen)",
        apply: |c, s| {
            c.batch_size = 8;
            *s *= 2;
        },
    },
    Lever {
        name: "cosine",
        what: "cosine beta schedule (s 0.008) instead of sigmoid",
        apply: |c, _| c.diffusion.schedule = BetaSchedule::Cosine { s: 0.008 },
    },
    Lever { name: "linear", what: "linear beta schedule", apply: |c, _| c.diffusion.schedule = BetaSchedule::Linear },
    Lever {
        name: "pred-noise",
        what: "predict the noise instead of v",
        apply: |c, _| c.diffusion.objective = Objective::PredNoise,
    },
    Lever {
        name: "min-snr-5",
        what: "min-SNR-5 loss weighting",
        apply: |c, _| c.diffusion.loss_weighting = LossWeighting::MinSnr { gamma: 5.0 },
    },
    Lever { name: "no-augment", what: "no dihedral augmentation", apply: |c, _| c.augment = false },
    Lever {
        name: "dim-32",
        what: "U-Net width 32 (from 16) at half the steps (about the same time)",
        apply: |c, s| {
            c.unet.dim = 32;
            *s /= 2;
        },
    },
    Lever { name: "dim-24", what: "U-Net width 24 (from 16)", apply: |c, _| c.unet.dim = 24 },
    Lever { name: "steps-x2", what: "twice the steps", apply: |_, s| *s *= 2 },
];

struct Args {
    steps: usize,
    out: PathBuf,
    levers: Vec<String>,
    samplers: Vec<Sampler>,
    raw_weights: bool,
}

fn parse_args() -> Result<Option<Args>, Error> {
    let mut args = Args {
        steps: 1500,
        out: PathBuf::from("runs/levers"),
        levers: vec![],
        samplers: vec![Sampler::DpmSolverPp2M { steps: 10 }],
        raw_weights: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |flag: &str| it.next().ok_or_else(|| Error::invalid(flag, "missing", "needs a value"));
        match a.as_str() {
            "--list" => {
                for l in LEVERS {
                    println!("{:<14} {}", l.name, l.what);
                }
                return Ok(None);
            }
            "--steps" => {
                let v = value("--steps")?;
                args.steps = v.parse().map_err(|_| Error::invalid("--steps", &v, "a whole number"))?;
            }
            "--out" => args.out = PathBuf::from(value("--out")?),
            "--samplers" => {
                let v = value("--samplers")?;
                args.samplers = v
                    .split(',')
                    .map(|s| s.parse::<Sampler>().map_err(|e| Error::invalid("--samplers", s, e.to_string())))
                    .collect::<Result<_, _>>()?;
            }
            "--raw-weights" => args.raw_weights = true,
            name if !name.starts_with('-') => {
                if !LEVERS.iter().any(|l| l.name == name) {
                    return Err(Error::invalid("lever", name, "unknown; see --list"));
                }
                args.levers.push(name.to_string());
            }
            other => return Err(Error::invalid("flag", other, "unknown")),
        }
    }
    if args.levers.is_empty() {
        args.levers = LEVERS.iter().map(|l| l.name.to_string()).collect();
    }
    Ok(Some(args))
}

const N_TRAIN: usize = 2000;
const N_REAL: usize = 1000;
const N_GEN: usize = 600;
const SEED: u64 = 0;

fn main() -> Result<(), Error> {
    let Some(args) = parse_args()? else { return Ok(()) };
    std::fs::create_dir_all(&args.out).map_err(Error::io(&args.out))?;
    let device = Default::default();
    let base = TrainConfig::small();
    let size = base.image_size;

    // The pipeline's data and reference rows, exactly as `pipeline` makes them, and the 64x64
    // extractor the study was measured with (its CSV rows stay comparable).
    let train = lensing_diffusion::data::simulate_resized(N_TRAIN, 150, size, &LensClass::ALL, SEED)?;
    let real = lensing_diffusion::data::simulate_resized(N_REAL, 150, size, &LensClass::ALL, SEED + 1_000_003)?;
    let ex: FeatureExtractor<Flex> =
        lensing_diffusion::evaluate::load_extractor_for::<B>(None, &ExtractorRecipe::legacy_s64(), &device, true)?;
    let real_f = lensing_diffusion::evaluate::embed(&ex, real.images.view(), 100, "real", false)?;
    let half = N_REAL / 2;
    let floor =
        frechet_distance_from_features(real_f.slice(ndarray::s![..half, ..]), real_f.slice(ndarray::s![half.., ..]))?
            .value;
    let between = lensing_diffusion::between_classes::fid_between_classes(
        &ex,
        N_REAL,
        N_GEN,
        150,
        size,
        SEED ^ 0xB7C1_A55E,
        false,
    )?;
    eprintln!(
        "real-vs-real floor {floor:.3}; CDM vs axion {:.3}; no_sub vs CDM {:.3}",
        between.cdm_vs_axion, between.no_sub_vs_cdm
    );

    let csv = args.out.join("levers.csv");
    let header = "lever,what,steps,train_s,img_per_s,final_loss,weights,sampler,sample_s,fid,fid_low,fid_high,\
                  precision,recall,floor,cdm_vs_axion\n";
    let mut done = std::fs::read_to_string(&csv).unwrap_or_default();
    if done.is_empty() {
        done.push_str(header);
    }
    let key = |lever: &str, steps: usize, weights: &str, sampler: &Sampler| {
        format!("{lever},{steps},{weights},{}", sampler_name(sampler))
    };
    let have: Vec<String> = done
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f.len() > 8).then(|| format!("{},{},{},{}", f[0], f[2], f[6], f[7]))
        })
        .collect();

    for name in &args.levers {
        let lever = LEVERS.iter().find(|l| l.name == name).expect("checked while parsing");
        let mut config = base.clone();
        let mut steps = args.steps;
        (lever.apply)(&mut config, &mut steps);
        config.total_steps = steps;
        config.sample_every = 0;
        config.checkpoint_every = steps;
        config.seed = SEED;
        let weights: &[&str] = if args.raw_weights { &["ema", "raw"] } else { &["ema"] };
        let todo: Vec<(&str, Sampler)> = weights
            .iter()
            .flat_map(|w| args.samplers.iter().map(move |s| (*w, *s)))
            .filter(|(w, s)| !have.contains(&key(name, steps, w, s)))
            .collect();
        if todo.is_empty() {
            eprintln!("{name}: measured already");
            continue;
        }
        eprintln!("{name}: {} ({steps} steps)", lever.what);
        let dir = args.out.join(format!("{name}-{steps}"));
        let summary_path = dir.join("summary.csv");
        // A variant trained by an earlier invocation is reloaded, not retrained.
        let last = lensing_diffusion::checkpoint::list_checkpoints(&dir.join("checkpoints")).pop();
        let reuse = std::fs::read_to_string(&summary_path).ok().zip(last);
        let (trainer, (train_s, img_per_s, final_loss)) = match reuse {
            Some((text, ckpt)) => {
                let t = Trainer::<B>::resume(&ckpt, &device)?;
                let f: Vec<f64> = text.trim().split(',').filter_map(|v| v.parse().ok()).collect();
                if t.step() != steps || f.len() != 3 {
                    return Err(Error::invalid("variant folder", dir.display(), "holds another run; delete it"));
                }
                eprintln!("  reusing {}", ckpt.display());
                (t, (f[0], f[1], f[2]))
            }
            None => {
                if dir.is_dir() {
                    std::fs::remove_dir_all(&dir).map_err(Error::io(&dir))?;
                }
                let mut trainer = Trainer::<B>::new(config.clone(), &device)?;
                let ro = RunOptions {
                    out_dir: &dir,
                    time_budget: Some(Duration::from_secs(3600)),
                    interrupt: None,
                    progress: true,
                    fit_to_budget: false,
                };
                let s = run(&mut trainer, &train, &ro)?;
                let v = (s.train_seconds, s.images_per_second, s.final_loss as f64);
                atomic_file::write(&summary_path, format!("{},{},{}\n", v.0, v.1, v.2).as_bytes())
                    .map_err(Error::io(&summary_path))?;
                (trainer, v)
            }
        };
        let raw = trainer.model();
        for (w, sampler) in todo {
            let model: &Unet<Flex> = if w == "raw" { &raw } else { trainer.ema() };
            let t = Instant::now();
            let so = SampleOptions { sampler, batch_size: 100, workers: 2, seed: SEED ^ 0x5A3D_1E5E };
            let images = generate(model, trainer.diffusion(), [N_GEN, 1, size, size], None, None, &so, &|| {})?;
            let sample_s = t.elapsed().as_secs_f64();
            let generated = images.index_axis_move(Axis(1), 0);
            let gen_f = lensing_diffusion::evaluate::embed(&ex, generated.view(), 100, "generated", false)?;
            let row = measure(&real_f, &gen_f)?;
            let line = format!(
                "{name},{what},{steps},{:.1},{:.1},{:.5},{w},{},{sample_s:.1},{:.3},{:.3},{:.3},{:.3},{:.3},{floor:.3},{:.3}\n",
                train_s,
                img_per_s,
                final_loss,
                sampler_name(&sampler),
                row.0,
                row.1,
                row.2,
                row.3,
                row.4,
                between.cdm_vs_axion,
                what = lever.what.replace(',', ";"),
            );
            eprint!("  {line}");
            done.push_str(&line);
            atomic_file::write(&csv, done.as_bytes()).map_err(Error::io(&csv))?;
        }
    }
    let table = markdown(&done);
    let md = args.out.join("levers.md");
    atomic_file::write(&md, table.as_bytes()).map_err(Error::io(&md))?;
    println!("{table}");
    Ok(())
}

fn sampler_name(s: &Sampler) -> String {
    match s {
        Sampler::Ddpm => "ddpm".into(),
        Sampler::Ddim { steps, eta } => format!("ddim:{steps}:{eta}"),
        Sampler::DpmSolverPp2M { steps } => format!("dpmpp:{steps}"),
    }
}

/// FID with its 95% bootstrap interval (50 resamples, as the pipeline), precision and recall.
fn measure(real: &Array2<f64>, generated: &Array2<f64>) -> Result<(f64, f64, f64, f64, f64), Error> {
    let cfg = BootstrapConfig { resamples: 50, seed: SEED, ..BootstrapConfig::default() };
    let fid = fid_interval(real.view(), generated.view(), &cfg)?;
    let pr = prdc(real.view(), generated.view(), 3)?;
    Ok((fid.estimate, fid.low, fid.high, pr.precision, pr.recall))
}

/// The CSV as a markdown table, best FID first.
fn markdown(csv: &str) -> String {
    let mut rows: Vec<Vec<&str>> = csv.lines().skip(1).map(|l| l.split(',').collect()).collect();
    rows.sort_by(|a, b| a[9].parse::<f64>().unwrap_or(f64::MAX).total_cmp(&b[9].parse::<f64>().unwrap_or(f64::MAX)));
    let mut s = String::from(
        "| lever | change | steps | train s | weights | sampler | FID (95% CI) | precision | recall |\n\
         |---|---|---:|---:|---|---|---|---:|---:|\n",
    );
    for r in rows.iter().filter(|r| r.len() >= 16) {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} [{}, {}] | {} | {} |",
            r[0], r[1], r[2], r[3], r[6], r[7], r[9], r[10], r[11], r[12], r[13]
        );
    }
    if let Some(r) = rows.first().filter(|r| r.len() >= 16) {
        let _ = writeln!(s, "\nreal-vs-real floor {}; CDM vs axion at the same set sizes {}", r[14], r[15]);
    }
    s
}
