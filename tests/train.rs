//! Training loop: exact resume, fault handling, learning-rate and EMA schedules.

use burn::backend::{Autodiff, Flex};
use lens_data::dataset::ImageSet;
use lensing_diffusion::config::TrainConfig;
use lensing_diffusion::run::{run, RunOptions, StopReason};
use lensing_diffusion::trainer::Trainer;
use lensing_diffusion::TrainError;
use ndarray::Array3;
use unet::UnetConfig;

type B = Autodiff<Flex>;

fn tiny_config() -> TrainConfig {
    let mut c = TrainConfig::small();
    c.unet = UnetConfig::new(8, vec![1, 2], 1);
    c.image_size = 8;
    c.batch_size = 4;
    c.grad_accum = 2;
    c.total_steps = 6;
    c.warmup_steps = 2;
    c.checkpoint_every = 3;
    c.sample_every = 0;
    c.ema.start_step = 1;
    c.ema.update_every = 1;
    c.seed = 11;
    c
}

fn data() -> ImageSet {
    // Deterministic smooth blobs so the loss is meaningful.
    let images = Array3::from_shape_fn((12, 8, 8), |(n, i, j)| {
        let (ci, cj) = (2.0 + (n % 4) as f32, 3.0 + (n % 3) as f32);
        (-((i as f32 - ci).powi(2) + (j as f32 - cj).powi(2)) / 4.0).exp()
    });
    ImageSet::from_images(images)
}

fn losses(trainer: &mut Trainer<B>, data: &ImageSet, until: usize) -> Vec<f32> {
    let mut v = vec![];
    while trainer.step() < until {
        let (x, y) = trainer.batch_for_step(data, trainer.step()).unwrap();
        v.push(trainer.train_step(x, y.as_deref()).unwrap().loss);
    }
    v
}

fn ema_values(t: &Trainer<B>) -> Vec<f32> {
    t.ema().torch_state_dict().into_iter().flat_map(|(_, _, v)| v).collect()
}

#[test]
fn interrupted_and_resumed_run_reproduces_the_uninterrupted_one() {
    let device = Default::default();
    let data = data();
    let mut straight = Trainer::<B>::new(tiny_config(), &device).unwrap();
    let reference = losses(&mut straight, &data, 6);
    assert!(reference.iter().all(|l| l.is_finite()));

    let dir = tempfile::tempdir().unwrap();
    let mut first = Trainer::<B>::new(tiny_config(), &device).unwrap();
    let mut resumed_losses = losses(&mut first, &data, 3);
    let ckpt = first.save_checkpoint(dir.path()).unwrap();
    drop(first);
    let mut second = Trainer::<B>::resume(&ckpt, &device).unwrap();
    assert_eq!(second.step(), 3);
    resumed_losses.extend(losses(&mut second, &data, 6));
    assert_eq!(resumed_losses, reference, "loss trajectory after resume");
    assert_eq!(ema_values(&second), ema_values(&straight), "EMA weights after resume");
}

#[test]
fn run_writes_logs_checkpoints_and_resumes_through_the_driver() {
    let device = Default::default();
    let data = data();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = tiny_config();
    cfg.sample_every = 3;
    cfg.sample_count = 4;
    cfg.sample_steps = 3;
    cfg.keep_last = 1;
    let mut t = Trainer::<B>::new(cfg, &device).unwrap();
    let opts =
        RunOptions { out_dir: dir.path(), time_budget: None, interrupt: None, progress: false, fit_to_budget: false };
    let s = run(&mut t, &data, &opts).unwrap();
    assert_eq!((s.reason, s.steps), (StopReason::Finished, 6));
    for f in ["config.json", "loss.csv", "loss.png", "samples/step-0000003.png", "samples/step-0000006.png"] {
        assert!(dir.path().join(f).is_file(), "{f} missing");
    }
    let ckpts = lensing_diffusion::checkpoint::list_checkpoints(&dir.path().join("checkpoints"));
    assert_eq!(ckpts.len(), 1, "keep_last = 1: {ckpts:?}");
    assert!(ckpts[0].join("ema.bpk").is_file() && ckpts[0].join("model.bpk").is_file());
    // The EMA checkpoint loads with the U-Net loader the sample command uses.
    let ema = unet::load_checkpoint::<Flex>(&ckpts[0].join("ema.bpk"), unet::Weights::Model, None, &device).unwrap();
    assert_eq!(ema.config(), t.ema().config());
    let log = std::fs::read_to_string(dir.path().join("loss.csv")).unwrap();
    assert_eq!(log.lines().count(), 7, "{log}");

    // An interrupt flag stops at once and checkpoints.
    let flag = std::sync::atomic::AtomicBool::new(true);
    let mut t2 = Trainer::<B>::resume(&ckpts[0], &device).unwrap();
    t2.extend_to(9);
    let opts = RunOptions { interrupt: Some(&flag), ..opts };
    let s = run(&mut t2, &data, &opts).unwrap();
    assert_eq!((s.reason, s.steps), (StopReason::Interrupted, 6));
}

#[test]
fn non_finite_loss_stops_with_a_clear_error() {
    let device = Default::default();
    let mut images = Array3::<f32>::zeros((8, 8, 8));
    images[[0, 0, 0]] = f32::NAN;
    let data = ImageSet::from_images(images);
    let mut cfg = tiny_config();
    cfg.grad_accum = 1;
    cfg.batch_size = 8;
    let mut t = Trainer::<B>::new(cfg, &device).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let opts =
        RunOptions { out_dir: dir.path(), time_budget: None, interrupt: None, progress: false, fit_to_budget: false };
    let e = run(&mut t, &data, &opts).unwrap_err();
    assert!(matches!(e, TrainError::NonFiniteLoss { step: 1, .. }), "{e}");
    assert!(e.to_string().contains("non-finite") && e.to_string().contains("no checkpoint"), "{e}");
}

#[test]
fn corrupt_or_missing_checkpoints_are_clear_errors() {
    let device = Default::default();
    let dir = tempfile::tempdir().unwrap();
    let e = Trainer::<B>::resume(&dir.path().join("nope"), &device).err().unwrap();
    assert!(e.to_string().contains("state.json"), "{e}");

    let mut t = Trainer::<B>::new(tiny_config(), &device).unwrap();
    let data = data();
    losses(&mut t, &data, 1);
    let ckpt = t.save_checkpoint(dir.path()).unwrap();
    std::fs::write(ckpt.join("resume/optim.mpk"), b"garbage").unwrap();
    let e = Trainer::<B>::resume(&ckpt, &device).err().unwrap();
    assert!(matches!(e, TrainError::Resume { .. }) && e.to_string().contains("optim"), "{e}");
    std::fs::write(ckpt.join("state.json"), b"{not json").unwrap();
    let e = Trainer::<B>::resume(&ckpt, &device).err().unwrap();
    assert!(e.to_string().contains("corrupt"), "{e}");
}

#[test]
fn an_interrupted_checkpoint_write_leaves_the_last_good_one() {
    let device = Default::default();
    let dir = tempfile::tempdir().unwrap();
    let data = data();
    let mut t = Trainer::<B>::new(tiny_config(), &device).unwrap();
    losses(&mut t, &data, 1);
    let good = t.save_checkpoint(dir.path()).unwrap();
    losses(&mut t, &data, 2);
    // What a kill -9 in the middle of the next write leaves: a half-filled temporary folder
    // (atomic-file's naming). Nothing reads it; resume still finds the good checkpoint.
    let partial = dir.path().join(".step-0000002.tmp-99999-0");
    std::fs::create_dir_all(partial.join("resume")).unwrap();
    std::fs::write(partial.join("model.bpk"), b"half a file").unwrap();
    assert_eq!(lensing_diffusion::checkpoint::list_checkpoints(dir.path()), vec![good.clone()]);
    assert_eq!(lensing_diffusion::checkpoint::find_checkpoint(dir.path()).unwrap(), good);
    Trainer::<B>::resume(&good, &device).unwrap();
    // The next write succeeds beside the leftover, and the old checkpoint is pruned only then.
    let next = t.save_checkpoint(dir.path()).unwrap();
    assert!(next.ends_with("step-0000002") && next.join("state.json").is_file());
    // A write that cannot even start (the folder is a file) fails with an error, not a panic.
    let blocked = dir.path().join("blocked");
    std::fs::write(&blocked, b"not a folder").unwrap();
    assert!(t.save_checkpoint(&blocked).is_err());
    assert!(next.join("resume/optim.mpk").is_file());
}

#[test]
fn schedules_and_validation() {
    let c = TrainConfig::small();
    assert!((c.lr_at(1) - c.lr / 50.0).abs() < 1e-15);
    assert!((c.lr_at(50) - c.lr).abs() < 1e-15);
    assert!((c.lr_at(c.total_steps) - c.lr * c.min_lr_ratio).abs() < 1e-12);
    let d = TrainConfig::deeplense();
    assert_eq!(d.lr_at(1), 1e-5);
    assert_eq!(d.total_steps, 31_275);
    // ema-pytorch: copy until start, then warm-up decay capped at `decay`.
    assert_eq!(d.ema.decay_at(95), None);
    assert_eq!(d.ema.decay_at(100), Some(0.0));
    let early = d.ema.decay_at(110).unwrap();
    assert!(early > 0.0 && early < 0.995);
    assert_eq!(d.ema.decay_at(1_000_000), Some(0.995));

    let mut bad = TrainConfig::small();
    bad.grad_accum = 3;
    assert!(bad.validate().unwrap_err().to_string().contains("grad_accum"));
    let mut bad = TrainConfig::small();
    bad.image_size = 30;
    assert!(bad.validate().unwrap_err().to_string().contains("image_size"));
    let mut bad = TrainConfig::small();
    bad.data_parallel = 0;
    assert!(bad.validate().unwrap_err().to_string().contains("data_parallel"));
    let mut bad = TrainConfig::small();
    bad.lr = f64::NAN;
    assert!(bad.validate().unwrap_err().to_string().contains("`lr`"));
}

#[test]
fn a_length_set_within_the_warm_up_gives_the_run_configured_with_it() {
    let device = Default::default();
    let data = data();
    let mut cfg = tiny_config();
    cfg.warmup_steps = 4;
    cfg.total_steps = 9;
    let mut fixed = Trainer::<B>::new(cfg.clone(), &device).unwrap();
    let reference = losses(&mut fixed, &data, 9);

    // Started as a 30-step run, shortened to 9 at the end of the warm-up.
    cfg.total_steps = 30;
    let mut fitted = Trainer::<B>::new(cfg, &device).unwrap();
    let mut l = losses(&mut fitted, &data, 4);
    fitted.set_total_steps(9).unwrap();
    l.extend(losses(&mut fitted, &data, 9));
    assert_eq!(l, reference, "loss trajectory");
    assert_eq!(ema_values(&fitted), ema_values(&fixed), "EMA weights");

    // Past the warm-up the cosine decay has used the length: changing it is refused, as is a
    // length at or below the steps done.
    let e = fitted.set_total_steps(20).unwrap_err();
    assert!(matches!(e, TrainError::Config { field: "total_steps", .. }) && e.to_string().contains("cosine"), "{e}");
    let mut c = tiny_config();
    c.cosine_decay = false;
    let mut t = Trainer::<B>::new(c, &device).unwrap();
    losses(&mut t, &data, 5);
    assert!(t.set_total_steps(5).unwrap_err().to_string().contains("more than the steps done"));
    t.set_total_steps(7).unwrap();
    assert_eq!(t.config().total_steps, 7);
}

#[test]
fn fitted_lengths_fill_the_budget_and_round_down() {
    use lensing_diffusion::run::fit_steps;
    // 40 steps in 10 s, then 0.25 s per step, budget 100 s: 0.93 * 90 / 0.25 = 334.8 more steps.
    assert_eq!(fit_steps(40, 10.0, 0.25, 100.0), 370);
    // The budget already spent: one more step than done, never fewer.
    assert_eq!(fit_steps(40, 120.0, 0.25, 100.0), 41);
    assert_eq!(fit_steps(40, 10.0, 0.0, 100.0), 41);
    assert_eq!(fit_steps(40, 10.0, f64::NAN, 100.0), 41);
}

#[test]
fn a_run_fitted_to_its_budget_records_the_length_it_chose() {
    let device = Default::default();
    let data = data();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = tiny_config();
    cfg.warmup_steps = 20;
    cfg.total_steps = 1_000_000;
    cfg.checkpoint_every = 1_000_000;
    let mut t = Trainer::<B>::new(cfg, &device).unwrap();
    let opts = RunOptions {
        out_dir: dir.path(),
        time_budget: Some(std::time::Duration::from_secs(2)),
        interrupt: None,
        progress: false,
        fit_to_budget: true,
    };
    let s = run(&mut t, &data, &opts).unwrap();
    let n = s.fitted_steps.expect("fitted within the warm-up");
    assert!(n > 20 && n < 1_000_000, "{n}");
    // Normally the fitted length is reached; a machine that slowed down stops at the budget.
    assert!(s.reason == StopReason::Finished && s.steps == n || s.reason == StopReason::TimeBudget, "{s:?}");
    let saved: TrainConfig =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap()).unwrap();
    assert_eq!(saved.total_steps, n, "config.json gives the fitted length");

    // A warm-up too short to time leaves the length alone.
    let mut c = tiny_config();
    c.total_steps = 8;
    let mut t = Trainer::<B>::new(c, &device).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let s = run(&mut t, &data, &RunOptions { out_dir: dir.path(), ..opts }).unwrap();
    assert_eq!((s.fitted_steps, s.steps), (None, 8));
}
