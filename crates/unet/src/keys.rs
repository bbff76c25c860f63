//! The PyTorch state-dict layout of a config: every parameter's torch key, torch shape, and the
//! path of the matching parameter in the burn module.
//!
//! This table is the single source of truth for loading PyTorch/safetensors files and for
//! exporting them; a unit test checks it against the parameters of a built [`crate::Unet`].

use crate::config::{UnetConfig, NUM_MEM_KV};

/// How a tensor is laid out in PyTorch relative to burn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Same layout in both (conv weights `[out, in, kh, kw]`, biases, gains, `mem_kv`).
    Same,
    /// `nn.Linear` weight: torch `[out, in]`, burn `[in, out]`.
    LinearWeight,
}

/// One parameter of the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamSpec {
    /// PyTorch state-dict key, e.g. `downs.0.0.block1.proj.weight`.
    pub torch_key: String,
    /// Path of the parameter in the burn module, e.g. `downs.0.block1.block1.proj.weight`.
    pub burn_path: String,
    /// Shape in PyTorch.
    pub torch_shape: Vec<usize>,
    /// Layout difference between PyTorch and burn.
    pub layout: Layout,
}

impl ParamSpec {
    /// Shape of the burn parameter.
    pub fn burn_shape(&self) -> Vec<usize> {
        match self.layout {
            Layout::Same => self.torch_shape.clone(),
            Layout::LinearWeight => vec![self.torch_shape[1], self.torch_shape[0]],
        }
    }
}

struct Builder {
    specs: Vec<ParamSpec>,
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

impl Builder {
    fn push(&mut self, tk: String, bp: String, shape: Vec<usize>, layout: Layout) {
        self.specs.push(ParamSpec { torch_key: tk, burn_path: bp, torch_shape: shape, layout });
    }

    fn conv(&mut self, tp: &str, bp: &str, cin: usize, cout: usize, k: usize, bias: bool) {
        self.push(join(tp, "weight"), join(bp, "weight"), vec![cout, cin, k, k], Layout::Same);
        if bias {
            self.push(join(tp, "bias"), join(bp, "bias"), vec![cout], Layout::Same);
        }
    }

    fn linear(&mut self, tp: &str, bp: &str, din: usize, dout: usize) {
        self.push(join(tp, "weight"), join(bp, "weight"), vec![dout, din], Layout::LinearWeight);
        self.push(join(tp, "bias"), join(bp, "bias"), vec![dout], Layout::Same);
    }

    fn rmsnorm(&mut self, tp: &str, bp: &str, c: usize) {
        self.push(join(tp, "g"), join(bp, "g"), vec![1, c, 1, 1], Layout::Same);
    }

    fn resnet(&mut self, tp: &str, bp: &str, din: usize, dout: usize, tdim: usize) {
        self.linear(&join(tp, "mlp.1"), &join(bp, "mlp"), tdim, 2 * dout);
        for (blk, cin) in [("block1", din), ("block2", dout)] {
            let (t, b) = (join(tp, blk), join(bp, blk));
            self.conv(&join(&t, "proj"), &join(&b, "proj"), cin, dout, 3, true);
            self.rmsnorm(&join(&t, "norm"), &join(&b, "norm"), dout);
        }
        if din != dout {
            self.conv(&join(tp, "res_conv"), &join(bp, "res_conv"), din, dout, 1, true);
        }
    }

    /// `bp` is the path of the attention module itself (variant included for stage attention).
    /// The plain network keeps its pre-norm and memory key/values inside the attention module
    /// (`tp.norm`, `tp.mem_kv`); the class-conditional one wraps a memory-less attention in
    /// `Residual(PreNorm(...))` (`tp.fn.norm`, the layer under `tp.fn.fn`).
    #[allow(clippy::too_many_arguments)]
    fn attention(&mut self, tp: &str, bp: &str, dim: usize, heads: usize, dh: usize, full: bool, cfg: bool) {
        let hidden = heads * dh;
        let body = if cfg {
            self.rmsnorm(&join(tp, "fn.norm"), &join(bp, "norm"), dim);
            join(tp, "fn.fn")
        } else {
            let mem = if full { vec![2, heads, NUM_MEM_KV, dh] } else { vec![2, heads, dh, NUM_MEM_KV] };
            self.push(join(tp, "mem_kv"), join(bp, "mem_kv"), mem, Layout::Same);
            self.rmsnorm(&join(tp, "norm"), &join(bp, "norm"), dim);
            tp.to_string()
        };
        let tp = body.as_str();
        self.conv(&join(tp, "to_qkv"), &join(bp, "to_qkv"), dim, 3 * hidden, 1, false);
        if full {
            self.conv(&join(tp, "to_out"), &join(bp, "to_out"), hidden, dim, 1, true);
        } else {
            self.conv(&join(tp, "to_out.0"), &join(bp, "to_out"), hidden, dim, 1, true);
            self.rmsnorm(&join(tp, "to_out.1"), &join(bp, "out_norm"), dim);
        }
    }
}

/// All parameters of the network `config` describes, in PyTorch `state_dict()` order.
pub fn param_specs(config: &UnetConfig) -> Vec<ParamSpec> {
    let mut b = Builder { specs: Vec::new() };
    let init_dim = config.resolved_init_dim();
    let time_dim = config.time_dim();
    let tdim = config.cond_dim();
    let (heads, dh) = config.stage_attention_size();
    let in_out = config.in_out();
    let full = config.resolved_full_attn();
    let n = in_out.len();
    let cfg = config.is_conditional();

    if cfg {
        b.push("null_classes_emb".into(), "classes.null".into(), vec![config.dim], Layout::Same);
    }
    b.conv("init_conv", "init_conv", config.channels, init_dim, 7, true);
    b.linear("time_mlp.1", "time_mlp.linear1", config.dim, time_dim);
    b.linear("time_mlp.3", "time_mlp.linear2", time_dim, time_dim);
    if let Some(k) = config.num_classes {
        // nn.Embedding's weight is [num, dim] in both.
        b.push("classes_emb.weight".into(), "classes.table".into(), vec![k, config.dim], Layout::Same);
        b.linear("classes_mlp.0", "classes.linear1", config.dim, 4 * config.dim);
        b.linear("classes_mlp.2", "classes.linear2", 4 * config.dim, 4 * config.dim);
    }

    for (i, &(din, dout)) in in_out.iter().enumerate() {
        let (tp, bp) = (format!("downs.{i}"), format!("downs.{i}"));
        b.resnet(&join(&tp, "0"), &join(&bp, "block1"), din, din, tdim);
        b.resnet(&join(&tp, "1"), &join(&bp, "block2"), din, din, tdim);
        let variant = if full[i] { "attn.Full" } else { "attn.Linear" };
        b.attention(&join(&tp, "2"), &join(&bp, variant), din, heads, dh, full[i], cfg);
        if i + 1 < n && cfg {
            b.conv(&join(&tp, "3"), &join(&bp, "resample.StridedDown"), din, dout, 4, true);
        } else if i + 1 < n {
            b.conv(&join(&tp, "3.1"), &join(&bp, "resample.PixelUnshuffle"), 4 * din, dout, 1, true);
        } else {
            b.conv(&join(&tp, "3"), &join(&bp, "resample.Same"), din, dout, 3, true);
        }
    }

    let mid = *config.dims().last().expect("non-empty dims");
    b.resnet("mid_block1", "mid_block1", mid, mid, tdim);
    b.attention("mid_attn", "mid_attn", mid, config.attn_heads, config.attn_dim_head, true, cfg);
    b.resnet("mid_block2", "mid_block2", mid, mid, tdim);

    for (i, (&(din, dout), &f)) in in_out.iter().rev().zip(full.iter().rev()).enumerate() {
        let (tp, bp) = (format!("ups.{i}"), format!("ups.{i}"));
        b.resnet(&join(&tp, "0"), &join(&bp, "block1"), dout + din, dout, tdim);
        b.resnet(&join(&tp, "1"), &join(&bp, "block2"), dout + din, dout, tdim);
        let variant = if f { "attn.Full" } else { "attn.Linear" };
        b.attention(&join(&tp, "2"), &join(&bp, variant), dout, heads, dh, f, cfg);
        if i + 1 < n {
            b.conv(&join(&tp, "3.1"), &join(&bp, "resample.NearestUp"), dout, din, 3, true);
        } else {
            b.conv(&join(&tp, "3"), &join(&bp, "resample.Same"), dout, din, 3, true);
        }
    }

    b.resnet("final_res_block", "final_res_block", 2 * init_dim, init_dim, tdim);
    b.conv("final_conv", "final_conv", init_dim, config.resolved_out_dim(), 1, true);
    b.specs
}
