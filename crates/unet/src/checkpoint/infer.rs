//! The [`UnetConfig`] implied by a state dict's PyTorch keys and shapes.

use std::collections::BTreeMap;

use crate::config::UnetConfig;

fn get_shape(shapes: &BTreeMap<String, Vec<usize>>, key: &str) -> Option<Vec<usize>> {
    shapes.get(key).cloned()
}

/// Infers a [`UnetConfig`] from PyTorch keys and shapes (`Unet.state_dict()` naming).
///
/// Reads `init_conv` (channels, init_dim), `time_mlp.1` (dim), each down stage (dim_mults),
/// the attention layers (full or linear per stage, heads, dim_head) and `final_conv` (out_dim).
pub fn infer_config_from_shapes(shapes: &BTreeMap<String, Vec<usize>>) -> Result<UnetConfig, String> {
    let need = |key: &str, rank: usize| -> Result<Vec<usize>, String> {
        match get_shape(shapes, key) {
            Some(s) if s.len() == rank => Ok(s),
            Some(s) => Err(format!("`{key}` has shape {s:?}, expected rank {rank}")),
            None => Err(format!("key `{key}` is missing")),
        }
    };
    let init = need("init_conv.weight", 4)?;
    let (init_dim, channels) = (init[0], init[1]);
    let t1 = need("time_mlp.1.weight", 2)?;
    let dim = t1[1];
    if t1[0] != 4 * dim {
        return Err(format!("`time_mlp.1.weight` is {t1:?}; a Unet with dim {dim} has [4*dim, dim]"));
    }
    // The class-conditional network (`classifier_free_guidance.Unet`) has a class table.
    let num_classes = match get_shape(shapes, "classes_emb.weight") {
        Some(s) if s.len() == 2 && s[1] == dim => Some(s[0]),
        Some(s) => return Err(format!("`classes_emb.weight` has shape {s:?}, expected [num_classes, {dim}]")),
        None => None,
    };
    let cfg = num_classes.is_some();
    let mut mults = Vec::new();
    let mut full = Vec::new();
    let mut heads_dh: Option<(usize, usize)> = None;
    let mut i = 0;
    while shapes.contains_key(&format!("downs.{i}.0.block1.proj.weight")) {
        let down = get_shape(shapes, &format!("downs.{i}.3.1.weight"))
            .map(|s| (s, false))
            .or_else(|| get_shape(shapes, &format!("downs.{i}.3.weight")).map(|s| (s, true)));
        let (out, is_last) = match down {
            // The conditional network downsamples with a 4x4 conv at `downs.i.3` too.
            Some((s, _)) if cfg && s.len() == 4 && s[2] == 4 => (s[0], false),
            Some((s, last)) => (s[0], last),
            None => return Err(format!("down stage {i} has no downsample (`downs.{i}.3...`)")),
        };
        if out % dim != 0 {
            return Err(format!("down stage {i} outputs {out} channels, not a multiple of dim {dim}"));
        }
        mults.push(out / dim);
        if cfg {
            full.push(false);
        } else {
            let is_full = shapes.contains_key(&format!("downs.{i}.2.to_out.weight"));
            full.push(is_full);
            let mem = need(&format!("downs.{i}.2.mem_kv"), 4)?;
            let hd = if is_full { (mem[1], mem[3]) } else { (mem[1], mem[2]) };
            match heads_dh {
                None => heads_dh = Some(hd),
                Some(prev) if prev != hd => {
                    return Err(format!(
                        "attention heads/dim_head differ between stages ({prev:?} vs {hd:?}); per-stage \
                         attention sizes are not supported"
                    ))
                }
                _ => {}
            }
        }
        i += 1;
        if is_last {
            break;
        }
    }
    if mults.is_empty() {
        return Err("no down stages (`downs.0.0.block1.proj.weight` is missing)".into());
    }
    let (heads, dim_head) = if cfg {
        // Only the middle attention is sized by the constructor; its heads are not in the shapes
        // (to_qkv is [3 heads dim_head, C]): take the library default 4 and derive dim_head.
        let qkv = need("mid_attn.fn.fn.to_qkv.weight", 4)?;
        if qkv[0] % 12 != 0 {
            return Err(format!("`mid_attn.fn.fn.to_qkv.weight` is {qkv:?}; 3 * heads * dim_head rows expected"));
        }
        (4, qkv[0] / 12)
    } else {
        heads_dh.expect("at least one stage")
    };
    let out_dim = need("final_conv.weight", 4)?[0];
    let n = mults.len();
    let default_full: Vec<bool> = (0..n).map(|j| j + 1 == n && !cfg).collect();
    Ok(UnetConfig {
        dim,
        init_dim: (init_dim != dim).then_some(init_dim),
        out_dim: (out_dim != channels).then_some(out_dim),
        dim_mults: mults,
        channels,
        attn_heads: heads,
        attn_dim_head: dim_head,
        full_attn: (full != default_full).then_some(full),
        dropout: 0.0,
        sinusoidal_pos_emb_theta: 10000.0,
        num_classes,
    })
}

/// Keys of denoising-diffusion-pytorch 1.x (GroupNorm blocks, `Residual(PreNorm(...))`
/// attention), which this crate does not load. The class-conditional network of 2.x still wraps
/// its attention in `PreNorm` (`.fn.`), so `cfg` exempts that.
pub(super) fn is_legacy_key(key: &str, cfg: bool) -> bool {
    let groupnorm = (key.contains("block1.norm.") || key.contains("block2.norm."))
        && (key.ends_with(".norm.weight") || key.ends_with(".norm.bias"));
    groupnorm || (!cfg && key.contains(".fn."))
}
