//! [`UnetConfig`]: the hyper-parameters of the denoising-diffusion-pytorch 2.x `Unet`.

use burn::tensor::backend::Backend;
use serde::{Deserialize, Serialize};

use crate::error::UnetError;
use crate::model::Unet;

/// Number of learned memory key/value slots of every attention layer (`num_mem_kv` in
/// denoising-diffusion-pytorch; the `Unet` constructor does not expose it, it is always 4).
pub const NUM_MEM_KV: usize = 4;

/// Hyper-parameters of the U-Net, named as in `denoising_diffusion_pytorch.Unet(...)`.
///
/// `None` in an `Option` field means "the library default" (see each field), exactly as
/// `default(...)` does in the Python constructor. The JSON form of this struct (serde) is stored in
/// our checkpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnetConfig {
    /// Base width `dim` (channels of the first stage); the time embedding has `4 * dim` features.
    pub dim: usize,
    /// Width of the 7x7 input convolution; `None` = `dim`.
    #[serde(default)]
    pub init_dim: Option<usize>,
    /// Output channels; `None` = `channels`.
    #[serde(default)]
    pub out_dim: Option<usize>,
    /// Width multiplier of each stage (`dim_mults`); one stage per entry.
    pub dim_mults: Vec<usize>,
    /// Image channels.
    pub channels: usize,
    /// Attention heads (`attn_heads`), the same at every stage.
    #[serde(default = "default_heads")]
    pub attn_heads: usize,
    /// Width of one attention head (`attn_dim_head`), the same at every stage.
    #[serde(default = "default_dim_head")]
    pub attn_dim_head: usize,
    /// Per stage (outermost first): full softmax attention (`true`) or linear attention (`false`).
    /// `None` = full attention at the innermost stage only, the library default. The middle block
    /// always uses full attention; up stages mirror the down stages.
    #[serde(default)]
    pub full_attn: Option<Vec<bool>>,
    /// Dropout probability after the first block of every resnet block (training only).
    #[serde(default)]
    pub dropout: f64,
    /// `theta` of the sinusoidal time embedding (`sinusoidal_pos_emb_theta`).
    #[serde(default = "default_theta")]
    pub sinusoidal_pos_emb_theta: f64,
    /// Class conditioning: `Some(n)` builds the class-conditional U-Net of the library's
    /// `classifier_free_guidance.Unet(dim, num_classes, ...)` instead of the plain `Unet`: a class
    /// embedding plus a learned null embedding through an MLP, concatenated with the time
    /// embedding in every resnet block. Its layout differs: linear attention (4 heads of 32,
    /// no memory key/values) in every stage, full attention (the configured heads, no memory
    /// key/values) in the middle only, strided 4x4 convolutions to downsample.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_classes: Option<usize>,
}

fn default_heads() -> usize {
    4
}
fn default_dim_head() -> usize {
    32
}
fn default_theta() -> f64 {
    10000.0
}

impl UnetConfig {
    /// `Unet(dim, dim_mults=dim_mults, channels=channels)` with every other argument at its
    /// library default.
    pub fn new(dim: usize, dim_mults: Vec<usize>, channels: usize) -> Self {
        Self {
            dim,
            init_dim: None,
            out_dim: None,
            dim_mults,
            channels,
            attn_heads: default_heads(),
            attn_dim_head: default_dim_head(),
            full_attn: None,
            dropout: 0.0,
            sinusoidal_pos_emb_theta: default_theta(),
            num_classes: None,
        }
    }

    /// `classifier_free_guidance.Unet(dim, num_classes, dim_mults=dim_mults, channels=channels)`:
    /// the class-conditional network (see [`UnetConfig::num_classes`]).
    pub fn conditional(dim: usize, num_classes: usize, dim_mults: Vec<usize>, channels: usize) -> Self {
        Self { num_classes: Some(num_classes), ..Self::new(dim, dim_mults, channels) }
    }

    /// Sets the number of classes (`None`: the unconditional network).
    pub fn with_num_classes(mut self, num_classes: Option<usize>) -> Self {
        self.num_classes = num_classes;
        self
    }

    /// Whether this is the class-conditional network.
    pub fn is_conditional(&self) -> bool {
        self.num_classes.is_some()
    }

    /// Width of the conditioning the resnet blocks' MLP sees: the time embedding, plus the class
    /// embedding (`4 * dim`) for the conditional network.
    pub fn cond_dim(&self) -> usize {
        self.time_dim() + if self.is_conditional() { 4 * self.dim } else { 0 }
    }

    /// Heads and head width of the stage (not middle) attention layers: the configured ones, or
    /// the conditional network's fixed 4 x 32 (its `LinearAttention` takes no arguments).
    pub fn stage_attention_size(&self) -> (usize, usize) {
        if self.is_conditional() {
            (4, 32)
        } else {
            (self.attn_heads, self.attn_dim_head)
        }
    }

    /// The DeepLense diffusion test model: `Unet(dim=64, dim_mults=(1,2,4,8), channels=1)`,
    /// 35,705,089 parameters.
    pub fn deeplense() -> Self {
        Self::new(64, vec![1, 2, 4, 8], 1)
    }

    /// A small model for CPU experiments and tests: `Unet(dim=16, dim_mults=(1,2,4,8),
    /// channels=1)` (2,241,313 parameters).
    pub fn small() -> Self {
        Self::new(16, vec![1, 2, 4, 8], 1)
    }

    /// Sets `init_dim`.
    pub fn with_init_dim(mut self, init_dim: usize) -> Self {
        self.init_dim = Some(init_dim);
        self
    }

    /// Sets `out_dim`.
    pub fn with_out_dim(mut self, out_dim: usize) -> Self {
        self.out_dim = Some(out_dim);
        self
    }

    /// Sets the attention heads and the width of each head.
    pub fn with_attention(mut self, heads: usize, dim_head: usize) -> Self {
        self.attn_heads = heads;
        self.attn_dim_head = dim_head;
        self
    }

    /// Sets which stages use full attention (outermost first; one entry per stage).
    pub fn with_full_attn(mut self, full_attn: Vec<bool>) -> Self {
        self.full_attn = Some(full_attn);
        self
    }

    /// Sets the dropout probability.
    pub fn with_dropout(mut self, dropout: f64) -> Self {
        self.dropout = dropout;
        self
    }

    /// Number of resolution stages (`len(dim_mults)`).
    pub fn num_stages(&self) -> usize {
        self.dim_mults.len()
    }

    /// Width of the input convolution (`init_dim`, default `dim`).
    pub fn resolved_init_dim(&self) -> usize {
        self.init_dim.unwrap_or(self.dim)
    }

    /// Output channels (`out_dim`, default `channels`).
    pub fn resolved_out_dim(&self) -> usize {
        self.out_dim.unwrap_or(self.channels)
    }

    /// Width of the time embedding (`4 * dim`).
    pub fn time_dim(&self) -> usize {
        4 * self.dim
    }

    /// `dims = [init_dim, dim*m for m in dim_mults]`.
    pub fn dims(&self) -> Vec<usize> {
        let mut dims = vec![self.resolved_init_dim()];
        dims.extend(self.dim_mults.iter().map(|m| self.dim * m));
        dims
    }

    /// `(dim_in, dim_out)` of each down stage.
    pub fn in_out(&self) -> Vec<(usize, usize)> {
        let dims = self.dims();
        dims.windows(2).map(|w| (w[0], w[1])).collect()
    }

    /// Full (`true`) or linear attention per down stage, with the default applied.
    pub fn resolved_full_attn(&self) -> Vec<bool> {
        match &self.full_attn {
            Some(v) if !v.is_empty() => v.clone(),
            _ if self.is_conditional() => vec![false; self.num_stages()],
            _ => {
                let n = self.num_stages();
                (0..n).map(|i| i + 1 == n).collect()
            }
        }
    }

    /// Height and width of an input must be multiples of this (`2^(stages-1)`).
    pub fn downsample_factor(&self) -> usize {
        1 << self.num_stages().saturating_sub(1)
    }

    /// Number of trainable parameters of the network this config describes.
    pub fn num_params(&self) -> usize {
        crate::keys::param_specs(self).iter().map(|s| s.torch_shape.iter().product::<usize>()).sum()
    }

    /// Checks that the numbers describe a network that can be built.
    pub fn validate(&self) -> Result<(), UnetError> {
        let bad = |reason: String| Err(UnetError::InvalidConfig { reason });
        if self.dim == 0 || self.channels == 0 {
            return bad(format!("dim ({}) and channels ({}) must be positive", self.dim, self.channels));
        }
        if self.dim < 4 || !self.dim.is_multiple_of(2) {
            return bad(format!(
                "dim must be even and at least 4 (the sinusoidal embedding uses dim/2 - 1 as a \
                 divisor), got {}",
                self.dim
            ));
        }
        if self.dim_mults.is_empty() || self.dim_mults.contains(&0) {
            return bad(format!("dim_mults must be non-empty and positive, got {:?}", self.dim_mults));
        }
        if self.dim_mults.len() > 16 {
            return bad(format!("at most 16 stages, got {}", self.dim_mults.len()));
        }
        if self.init_dim == Some(0) || self.out_dim == Some(0) {
            return bad("init_dim and out_dim must be positive".into());
        }
        if self.attn_heads == 0 || self.attn_dim_head == 0 {
            return bad(format!(
                "attn_heads ({}) and attn_dim_head ({}) must be positive",
                self.attn_heads, self.attn_dim_head
            ));
        }
        if let Some(f) = &self.full_attn {
            if !f.is_empty() && f.len() != self.dim_mults.len() {
                return bad(format!(
                    "full_attn has {} entries but there are {} stages (dim_mults {:?})",
                    f.len(),
                    self.dim_mults.len(),
                    self.dim_mults
                ));
            }
        }
        if let Some(n) = self.num_classes {
            if n == 0 || n > 1_000_000 {
                return bad(format!("num_classes must be in 1..=1000000, got {n}"));
            }
            if self.resolved_full_attn().iter().any(|&f| f) {
                return bad("the class-conditional Unet has linear attention in every stage; full_attn must be \
                            all false"
                    .into());
            }
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("dropout must be in [0, 1), got {}", self.dropout));
        }
        if !(self.sinusoidal_pos_emb_theta > 1.0 && self.sinusoidal_pos_emb_theta.is_finite()) {
            return bad(format!(
                "sinusoidal_pos_emb_theta must be finite and > 1, got {}",
                self.sinusoidal_pos_emb_theta
            ));
        }
        Ok(())
    }

    /// True when `other` builds the same network (same parameter names and shapes); `dropout`
    /// and `sinusoidal_pos_emb_theta` do not count, they hold no weights.
    pub fn same_architecture(&self, other: &UnetConfig) -> bool {
        self.dim == other.dim
            && self.resolved_init_dim() == other.resolved_init_dim()
            && self.resolved_out_dim() == other.resolved_out_dim()
            && self.dim_mults == other.dim_mults
            && self.channels == other.channels
            && self.attn_heads == other.attn_heads
            && self.attn_dim_head == other.attn_dim_head
            && self.resolved_full_attn() == other.resolved_full_attn()
            && self.num_classes == other.num_classes
    }

    /// Short Python-like description, e.g. `Unet(dim=64, dim_mults=(1,2,4,8), channels=1)`.
    pub fn describe(&self) -> String {
        let mults: Vec<String> = self.dim_mults.iter().map(|m| m.to_string()).collect();
        let classes = self.num_classes.map(|n| format!(", num_classes={n}")).unwrap_or_default();
        let mut s = format!(
            "Unet(dim={}{classes}, dim_mults=({}{}), channels={}",
            self.dim,
            mults.join(","),
            if mults.len() == 1 { "," } else { "" },
            self.channels
        );
        if let Some(d) = self.init_dim {
            s += &format!(", init_dim={d}");
        }
        if let Some(d) = self.out_dim {
            s += &format!(", out_dim={d}");
        }
        if self.attn_heads != default_heads() {
            s += &format!(", attn_heads={}", self.attn_heads);
        }
        if self.attn_dim_head != default_dim_head() {
            s += &format!(", attn_dim_head={}", self.attn_dim_head);
        }
        if let Some(f) = &self.full_attn {
            let f: Vec<&str> = f.iter().map(|b| if *b { "True" } else { "False" }).collect();
            s += &format!(", full_attn=({})", f.join(","));
        }
        if self.dropout != 0.0 {
            s += &format!(", dropout={}", self.dropout);
        }
        if self.sinusoidal_pos_emb_theta != default_theta() {
            s += &format!(", sinusoidal_pos_emb_theta={}", self.sinusoidal_pos_emb_theta);
        }
        s + ")"
    }

    /// Builds a randomly initialised network (PyTorch's default initialisation: Kaiming-uniform
    /// convolutions and linears, `N(0,1)` memory key/values, unit RMSNorm gains).
    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<Unet<B>, UnetError> {
        self.validate()?;
        let _one_at_a_time = INIT.lock().unwrap_or_else(|e| e.into_inner());
        Ok(materialized(Unet::new(self, device)))
    }

    /// [`UnetConfig::init`] from `seed`: the same seed gives the same weights, also while other
    /// threads create networks.
    pub fn init_seeded<B: Backend>(&self, seed: u64, device: &B::Device) -> Result<Unet<B>, UnetError> {
        self.validate()?;
        let _one_at_a_time = INIT.lock().unwrap_or_else(|e| e.into_inner());
        B::seed(device, seed);
        Ok(materialized(Unet::new(self, device)))
    }
}

/// burn draws initial weights from one process-wide generator per backend, seeded by `B::seed`,
/// and draws them lazily, at a parameter's first use. Every U-Net is initialised under this lock
/// and drawn in full before it is released, so no other thread's draws fall between a seed and
/// the weights it makes.
static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Draws every lazily initialised parameter of `model` now.
fn materialized<B: Backend>(model: Unet<B>) -> Unet<B> {
    struct Touch;
    impl<B: Backend> burn::module::ModuleVisitor<B> for Touch {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<burn::tensor::Tensor<B, D>>) {
            let _ = param.val();
        }
    }
    burn::module::Module::visit(&model, &mut Touch);
    model
}

impl Default for UnetConfig {
    /// The DeepLense configuration ([`UnetConfig::deeplense`]).
    fn default() -> Self {
        Self::deeplense()
    }
}
