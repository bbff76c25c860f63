//! The training driver shared by the `train` and `pipeline` commands: the step loop with a
//! progress bar, the loss log (CSV) and curve (PNG), sample grids from the EMA weights,
//! periodic atomic checkpoints, a time budget and clean stops on Ctrl-C.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use diffusion_core::Sampler;
use indicatif::{ProgressBar, ProgressStyle};
use lens_data::dataset::ImageSet;
use unet::UnetAutodiffBackend;

use crate::error::TrainError;
use crate::trainer::Trainer;

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// `total_steps` reached.
    Finished,
    /// The time budget ran out.
    TimeBudget,
    /// Interrupted (Ctrl-C); a checkpoint was written.
    Interrupted,
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// Why it stopped.
    pub reason: StopReason,
    /// Optimizer steps done in total (including resumed ones).
    pub steps: usize,
    /// Wall time spent in this process's training loop.
    pub train_seconds: f64,
    /// Images processed per second in this process.
    pub images_per_second: f64,
    /// The last checkpoint written.
    pub last_checkpoint: Option<PathBuf>,
    /// Loss of the final step.
    pub final_loss: f32,
    /// The length fitted to the time budget ([`RunOptions::fit_to_budget`]), when it was.
    pub fitted_steps: Option<usize>,
}

/// Options of [`run`].
pub struct RunOptions<'a> {
    /// Output folder: `checkpoints/`, `loss.csv`, `loss.png`, `samples/step-N.png`, `config.json`.
    pub out_dir: &'a Path,
    /// Stop (with a checkpoint) after this much training time.
    pub time_budget: Option<Duration>,
    /// Set to true (e.g. by a Ctrl-C handler) to stop with a checkpoint.
    pub interrupt: Option<&'a AtomicBool>,
    /// Show a progress bar.
    pub progress: bool,
    /// Fit `total_steps` to `time_budget` from the speed of the first steps, measured within the
    /// learning rate's warm-up (see [`fit_steps`]); the budget still stops the run if the machine
    /// slows down later. Only a fresh run (step 0) is fitted; a resumed one keeps its length.
    pub fit_to_budget: bool,
}

/// First step of the timed window: the first steps also allocate and warm caches (timed from
/// step 3, the window overestimated the main job's step time by 13%).
const FIT_FROM: usize = 10;
/// Last step of the timed window, unless the warm-up ends earlier.
const FIT_UNTIL: usize = 50;
/// Shortest timed window that is trusted.
const FIT_MIN_WINDOW: usize = 5;

/// A line for the user above the progress bar; indicatif drops the lines of a hidden bar (output
/// not a terminal), so those go to stderr as they are.
fn say(bar: &ProgressBar, progress: bool, line: String) {
    if !progress {
        return;
    }
    if bar.is_hidden() {
        eprintln!("{line}");
    } else {
        bar.println(line);
    }
}

/// The run length that fills a time budget: `done` steps taken in `elapsed` seconds, then
/// `per_step` seconds each. 7% of the remaining time is kept back for checkpoints and the
/// machine's drift (the main job's steps ran 6% slower after the timed window than in it),
/// and the result is rounded down to a multiple of 10 (a length people can type), never below
/// `done + 1`.
pub fn fit_steps(done: usize, elapsed: f64, per_step: f64, budget: f64) -> usize {
    let remaining = (budget - elapsed).max(0.0) * 0.93;
    let extra = if per_step > 0.0 && per_step.is_finite() { (remaining / per_step).floor() as usize } else { 0 };
    let n = (done + extra) / 10 * 10;
    n.max(done + 1)
}

/// The window of steps whose speed sets the fitted length, or why there is none.
fn fit_window(config: &crate::config::TrainConfig) -> Result<(usize, usize), String> {
    let until = if config.cosine_decay { config.warmup_steps.min(FIT_UNTIL) } else { FIT_UNTIL };
    if until < FIT_FROM + FIT_MIN_WINDOW {
        return Err(format!(
            "the warm-up ({} steps) is too short to time before the cosine decay starts",
            config.warmup_steps
        ));
    }
    Ok((FIT_FROM, until))
}

/// The run's `config.json`, written whole (at the start, and again once the length is fitted).
fn write_config(config: &crate::config::TrainConfig, path: &Path) -> Result<(), TrainError> {
    let json = serde_json::to_string_pretty(config).expect("serialisable");
    atomic_file::write(path, json.as_bytes()).map_err(io_err(path))
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> TrainError + '_ {
    move |source| TrainError::Io { path: path.to_path_buf(), source }
}

/// Read `loss.csv` (step, loss) written by earlier runs in `out_dir`, for the curve.
pub fn read_loss_log(path: &Path) -> Vec<(usize, f32)> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter_map(|l| {
            let mut it = l.split(',');
            Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
        })
        .collect()
}

/// Write a sample grid from the EMA weights with a fixed seed (the run's seed). A
/// class-conditional model shows its classes in turn, one row per class, guided at scale 3.
pub fn write_sample_grid<B: UnetAutodiffBackend>(trainer: &Trainer<B>, path: &Path) -> Result<(), TrainError> {
    let c = trainer.config();
    let s = c.image_size;
    let sampler = Sampler::DpmSolverPp2M { steps: c.sample_steps };
    let device = Default::default();
    let shape = |n| [n, c.unet.channels, s, s];
    let (images, labels) = match c.unet.num_classes {
        None => {
            let n = c.sample_count.max(1);
            let x = trainer.diffusion().sample::<B::InnerBackend, _>(
                trainer.ema(),
                sampler,
                shape(n),
                c.seed,
                &device,
                &mut |_| {},
            )?;
            (x, None)
        }
        Some(k) => {
            let per_class = c.sample_count.div_ceil(k).clamp(1, 8);
            let labels: Vec<usize> = (0..k * per_class).map(|i| i / per_class).collect();
            let guided = diffusion_core::Guided::new(
                trainer.ema(),
                labels.iter().map(|&l| Some(l)).collect(),
                diffusion_core::Guidance::new(3.0, 0.7),
            )?;
            let x = trainer.diffusion().sample::<B::InnerBackend, _>(
                &guided,
                sampler,
                shape(labels.len()),
                c.seed,
                &device,
                &mut |_| {},
            )?;
            (x, Some((labels, k)))
        }
    };
    let n = images.dims()[0];
    let v: Vec<f32> = images
        .into_data()
        .to_vec()
        .map_err(|e| TrainError::Io { path: path.to_path_buf(), source: std::io::Error::other(format!("{e:?}")) })?;
    let cols = (n as f64).sqrt().ceil() as usize;
    // Multi-channel models: show the first channel.
    let per = c.unet.channels * s * s;
    let first: Vec<f32> = (0..n).flat_map(|i| v[i * per..i * per + s * s].to_vec()).collect();
    match &labels {
        Some((labels, k)) => crate::images::save_class_grid(&first, labels, *k, s, s, labels.len() / k, path),
        None => crate::images::save_grid(&first, n, s, s, cols, path),
    }
    .map_err(|e| TrainError::Io { path: path.to_path_buf(), source: std::io::Error::other(e.to_string()) })
}

/// Train until `total_steps`, the time budget or an interrupt. Writes `config.json`, appends to
/// `loss.csv`, redraws `loss.png`, writes checkpoints every `checkpoint_every` steps and at the
/// end, and sample grids every `sample_every` steps.
pub fn run<B: UnetAutodiffBackend>(
    trainer: &mut Trainer<B>,
    data: &ImageSet,
    opts: &RunOptions,
) -> Result<RunSummary, TrainError> {
    let out = opts.out_dir;
    fs::create_dir_all(out).map_err(io_err(out))?;
    let config_path = out.join("config.json");
    write_config(trainer.config(), &config_path)?;
    let ckpt_dir = out.join("checkpoints");
    let log_path = out.join("loss.csv");
    // A resumed run truncates the log to its step so the curve has no duplicate segments; the
    // truncated log replaces the old one whole (a crash here keeps the old log), then grows by
    // appends (a crash can cut only the last line, which `read_loss_log` skips).
    let mut log: Vec<(usize, f32)> =
        read_loss_log(&log_path).into_iter().filter(|(s, _)| *s <= trainer.step()).collect();
    let mut text = String::from("step,loss\n");
    for (s, l) in &log {
        text.push_str(&format!("{s},{l}\n"));
    }
    atomic_file::write(&log_path, text.as_bytes()).map_err(io_err(&log_path))?;
    let mut log_file = fs::OpenOptions::new().append(true).open(&log_path).map_err(io_err(&log_path))?;

    let total = trainer.config().total_steps;
    let bar = if opts.progress { ProgressBar::new(total as u64) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} train [{elapsed_precise}] {wide_bar} {pos}/{len} steps  {msg}  ETA {eta}",
        )
        .expect("valid template"),
    );
    bar.set_position(trainer.step() as u64);

    let start = Instant::now();
    let first_step = trainer.step();
    let mut last_checkpoint: Option<PathBuf> = crate::checkpoint::list_checkpoints(&ckpt_dir).pop();
    let mut final_loss = f32::NAN;
    let mut reason = StopReason::Finished;
    let batch = trainer.config().batch_size;
    let mut total = total;
    // (first timed step, last timed step, time at the first) while the length is being fitted.
    let mut fitting: Option<(usize, usize, Option<f64>)> = None;
    let mut fitted_steps = None;
    if let (true, Some(_), 0) = (opts.fit_to_budget, opts.time_budget, first_step) {
        match fit_window(trainer.config()) {
            Ok((from, until)) => fitting = Some((from, until, None)),
            Err(why) => say(&bar, opts.progress, format!("not fitting the steps to the time budget: {why}")),
        }
    }
    while trainer.step() < total {
        if opts.interrupt.is_some_and(|f| f.load(Ordering::SeqCst)) {
            reason = StopReason::Interrupted;
            break;
        }
        if opts.time_budget.is_some_and(|b| start.elapsed() >= b) {
            reason = StopReason::TimeBudget;
            break;
        }
        let (x, labels) = trainer.batch_for_step(data, trainer.step())?;
        let stats = match trainer.train_step(x, labels.as_deref()) {
            Ok(s) => s,
            Err(TrainError::NonFiniteLoss { step, loss, .. }) => {
                bar.abandon_with_message("stopped: non-finite loss");
                let last = last_checkpoint
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "none (no checkpoint had been written yet)".into());
                return Err(TrainError::NonFiniteLoss { step, loss, last_checkpoint: last });
            }
            Err(e) => return Err(e),
        };
        final_loss = stats.loss;
        if let (Some((from, until, t0)), Some(budget)) = (&mut fitting, opts.time_budget) {
            let now = start.elapsed().as_secs_f64();
            if stats.step == *from {
                *t0 = Some(now);
            } else if stats.step == *until {
                let per_step = (now - t0.unwrap_or(0.0)) / (*until - *from) as f64;
                let n = fit_steps(stats.step, now, per_step, budget.as_secs_f64());
                trainer.set_total_steps(n)?;
                total = n;
                fitted_steps = Some(n);
                bar.set_length(n as u64);
                say(
                    &bar,
                    opts.progress,
                    format!(
                    "{n} steps fit the {:.1}-minute budget ({:.0} ms per step); `--steps {n}` repeats this run exactly",
                    budget.as_secs_f64() / 60.0,
                    per_step * 1e3
                ),
                );
                write_config(trainer.config(), &config_path)?;
                fitting = None;
            }
        }
        writeln!(log_file, "{},{}", stats.step, stats.loss).map_err(io_err(&log_path))?;
        log.push((stats.step, stats.loss));
        let secs = start.elapsed().as_secs_f64().max(1e-9);
        let ips = (trainer.step() - first_step) as f64 * batch as f64 / secs;
        bar.set_position(stats.step as u64);
        bar.set_message(format!(
            "loss {:.4}  |g| {:.3}  lr {:.2e}  {:.1} img/s",
            stats.loss, stats.grad_norm, stats.lr, ips
        ));
        let c = trainer.config();
        if stats.step % c.checkpoint_every == 0 && stats.step < total {
            last_checkpoint = Some(trainer.save_checkpoint(&ckpt_dir)?);
            let _ = crate::plot::loss_curve(&log, &out.join("loss.png"));
        }
        if c.sample_every > 0 && stats.step % c.sample_every == 0 {
            write_sample_grid(trainer, &out.join("samples").join(format!("step-{:07}.png", stats.step)))?;
        }
    }
    if trainer.step() > first_step || last_checkpoint.is_none() {
        last_checkpoint = Some(trainer.save_checkpoint(&ckpt_dir)?);
    }
    if let Err(e) = crate::plot::loss_curve(&log, &out.join("loss.png")) {
        say(&bar, opts.progress, format!("warning: could not draw loss.png: {e}"));
    }
    let train_seconds = start.elapsed().as_secs_f64();
    bar.finish_with_message(format!("{reason:?} at step {}, loss {final_loss:.4}", trainer.step()));
    Ok(RunSummary {
        reason,
        steps: trainer.step(),
        train_seconds,
        images_per_second: (trainer.step() - first_step) as f64 * batch as f64 / train_seconds.max(1e-9),
        last_checkpoint,
        final_loss,
        fitted_steps,
    })
}
