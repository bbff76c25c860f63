//! Text forms of [`Objective`], [`BetaSchedule`] and [`Sampler`]: what command lines and config
//! files say. Each `Display` writes what its `FromStr` reads back, so a value survives a round
//! trip through a flag or a report.

use std::fmt;
use std::str::FromStr;

use crate::error::DiffusionError;
use crate::{BetaSchedule, Objective, Sampler};

fn unknown(what: &'static str, value: &str, expected: &'static str) -> DiffusionError {
    DiffusionError::UnknownName { what, value: value.to_string(), expected }
}

impl Objective {
    /// The name denoising-diffusion-pytorch uses: `pred_noise`, `pred_x0` or `pred_v`.
    pub const fn name(&self) -> &'static str {
        match self {
            Self::PredNoise => "pred_noise",
            Self::PredX0 => "pred_x0",
            Self::PredV => "pred_v",
        }
    }
}

impl FromStr for Objective {
    type Err = DiffusionError;
    fn from_str(s: &str) -> Result<Self, DiffusionError> {
        match s {
            "pred_noise" => Ok(Self::PredNoise),
            "pred_x0" => Ok(Self::PredX0),
            "pred_v" => Ok(Self::PredV),
            _ => Err(unknown("objective", s, "pred_noise, pred_x0 or pred_v")),
        }
    }
}

impl fmt::Display for Objective {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `linear`, `cosine`, `sigmoid`; parameters other than the defaults after a colon
/// (`cosine:s=0.01`, `sigmoid:start=-3,end=3,tau=1`).
impl FromStr for BetaSchedule {
    type Err = DiffusionError;
    fn from_str(s: &str) -> Result<Self, DiffusionError> {
        let expected = "linear, cosine or sigmoid (optionally `cosine:s=S` or `sigmoid:start=A,end=B,tau=T`)";
        let (name, params) = s.split_once(':').unwrap_or((s, ""));
        let mut schedule = match name {
            "linear" => Self::Linear,
            "cosine" => Self::cosine(),
            "sigmoid" => Self::sigmoid(),
            _ => return Err(unknown("schedule", s, expected)),
        };
        for kv in params.split(',').filter(|p| !p.is_empty()) {
            let (k, v) = kv.split_once('=').ok_or_else(|| unknown("schedule parameter", kv, "KEY=VALUE"))?;
            let v: f64 = v.parse().map_err(|_| unknown("schedule parameter value", kv, "a number"))?;
            match (&mut schedule, k) {
                (Self::Cosine { s }, "s") => *s = v,
                (Self::Sigmoid { start, .. }, "start") => *start = v,
                (Self::Sigmoid { end, .. }, "end") => *end = v,
                (Self::Sigmoid { tau, .. }, "tau") => *tau = v,
                _ => return Err(unknown("schedule parameter", kv, "s for cosine; start, end, tau for sigmoid")),
            }
        }
        Ok(schedule)
    }
}

impl fmt::Display for BetaSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Linear => f.write_str("linear"),
            c @ Self::Cosine { s } => {
                if c == Self::cosine() {
                    f.write_str("cosine")
                } else {
                    write!(f, "cosine:s={s}")
                }
            }
            g @ Self::Sigmoid { start, end, tau } => {
                if g == Self::sigmoid() {
                    f.write_str("sigmoid")
                } else {
                    write!(f, "sigmoid:start={start},end={end},tau={tau}")
                }
            }
        }
    }
}

/// The family of a [`Sampler`], without its step count: what `--sampler` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SamplerKind {
    /// Ancestral DDPM (all `T` steps).
    Ddpm,
    /// DDIM.
    Ddim,
    /// DPM-Solver++(2M).
    DpmSolverPp,
}

impl SamplerKind {
    /// The sampler of this family with `steps` model evaluations (ignored by DDPM) and DDIM's
    /// `eta` (ignored by the others).
    pub fn with_steps(self, steps: usize, eta: f64) -> Sampler {
        match self {
            Self::Ddpm => Sampler::Ddpm,
            Self::Ddim => Sampler::Ddim { steps, eta },
            Self::DpmSolverPp => Sampler::DpmSolverPp2M { steps },
        }
    }
}

impl FromStr for SamplerKind {
    type Err = DiffusionError;
    fn from_str(s: &str) -> Result<Self, DiffusionError> {
        match s.to_ascii_lowercase().as_str() {
            "ddpm" => Ok(Self::Ddpm),
            "ddim" => Ok(Self::Ddim),
            "dpmpp" | "dpm-solver++" | "dpmsolver++" => Ok(Self::DpmSolverPp),
            _ => Err(unknown("sampler", s, "ddpm, ddim or dpmpp")),
        }
    }
}

impl fmt::Display for SamplerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Ddpm => "ddpm",
            Self::Ddim => "ddim",
            Self::DpmSolverPp => "dpmpp",
        })
    }
}

impl Sampler {
    /// The family of this sampler.
    pub fn kind(&self) -> SamplerKind {
        match self {
            Self::Ddpm => SamplerKind::Ddpm,
            Self::Ddim { .. } => SamplerKind::Ddim,
            Self::DpmSolverPp2M { .. } => SamplerKind::DpmSolverPp,
        }
    }

    /// A label for people: `DPM-Solver++(2M), 20 steps`.
    pub fn describe(&self) -> String {
        match *self {
            Self::Ddpm => "ancestral DDPM (all T steps)".into(),
            Self::Ddim { steps, eta } => format!("DDIM, {steps} steps, eta {eta}"),
            Self::DpmSolverPp2M { steps } => format!("DPM-Solver++(2M), {steps} steps"),
        }
    }
}

/// `ddpm`, `ddim:STEPS[:ETA]` or `dpmpp:STEPS` (DDIM's eta defaults to 0).
impl FromStr for Sampler {
    type Err = DiffusionError;
    fn from_str(s: &str) -> Result<Self, DiffusionError> {
        let mut parts = s.split(':');
        let kind: SamplerKind = parts.next().unwrap_or_default().parse()?;
        let expected = "ddpm, ddim:STEPS[:ETA] or dpmpp:STEPS";
        let steps = match (kind, parts.next()) {
            (SamplerKind::Ddpm, None) => 0,
            (SamplerKind::Ddpm, Some(_)) => {
                return Err(unknown("sampler", s, "ddpm without a step count (it runs all T steps)"))
            }
            (_, Some(n)) => n.parse().map_err(|_| unknown("sampler steps", s, expected))?,
            (_, None) => return Err(unknown("sampler", s, expected)),
        };
        let eta = match (kind, parts.next()) {
            (SamplerKind::Ddim, Some(e)) => e.parse().map_err(|_| unknown("DDIM eta", s, expected))?,
            (_, Some(_)) => return Err(unknown("sampler", s, expected)),
            (_, None) => 0.0,
        };
        if parts.next().is_some() {
            return Err(unknown("sampler", s, expected));
        }
        Ok(kind.with_steps(steps, eta))
    }
}

impl fmt::Display for Sampler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Ddpm => f.write_str("ddpm"),
            Self::Ddim { steps, eta: 0.0 } => write!(f, "ddim:{steps}"),
            Self::Ddim { steps, eta } => write!(f, "ddim:{steps}:{eta}"),
            Self::DpmSolverPp2M { steps } => write!(f, "dpmpp:{steps}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for o in [Objective::PredNoise, Objective::PredX0, Objective::PredV] {
            assert_eq!(o.to_string().parse::<Objective>().unwrap(), o);
        }
        let schedules = [
            BetaSchedule::Linear,
            BetaSchedule::cosine(),
            BetaSchedule::sigmoid(),
            BetaSchedule::Cosine { s: 0.01 },
            BetaSchedule::Sigmoid { start: -2.0, end: 4.0, tau: 0.5 },
        ];
        for s in schedules {
            assert_eq!(s.to_string().parse::<BetaSchedule>().unwrap(), s, "{s}");
        }
        assert_eq!("cosine".parse::<BetaSchedule>().unwrap(), BetaSchedule::Cosine { s: 0.008 });
        let samplers = [
            Sampler::Ddpm,
            Sampler::Ddim { steps: 50, eta: 0.0 },
            Sampler::Ddim { steps: 7, eta: 0.5 },
            Sampler::DpmSolverPp2M { steps: 20 },
        ];
        for s in samplers {
            assert_eq!(s.to_string().parse::<Sampler>().unwrap(), s, "{s}");
        }
        assert_eq!("dpm-solver++".parse::<SamplerKind>().unwrap(), SamplerKind::DpmSolverPp);
        assert_eq!(SamplerKind::Ddim.with_steps(10, 0.3), Sampler::Ddim { steps: 10, eta: 0.3 });
    }

    #[test]
    fn bad_names_say_what_is_expected() {
        for (text, what) in [
            ("pred_eps", "objective"),
            ("quadratic", "schedule"),
            ("cosine:tau=1", "schedule parameter"),
            ("sigmoid:start=x", "schedule parameter value"),
            ("euler", "sampler"),
            ("ddim", "sampler"),
            ("ddim:ten", "sampler steps"),
            ("ddpm:5", "sampler"),
            ("dpmpp:10:0.5", "sampler"),
        ] {
            let err = match what {
                "objective" => text.parse::<Objective>().unwrap_err(),
                w if w.starts_with("schedule") => text.parse::<BetaSchedule>().unwrap_err(),
                _ => text.parse::<Sampler>().unwrap_err(),
            };
            match &err {
                DiffusionError::UnknownName { what: w, .. } => assert_eq!(*w, what, "{text}: {err}"),
                other => panic!("{text}: unexpected {other:?}"),
            }
            assert!(
                err.to_string().contains(text) || err.to_string().contains(text.split(':').nth(1).unwrap_or(text)),
                "{err}"
            );
        }
    }
}
