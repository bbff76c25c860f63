//! Moving burn Flex tensors to and from the plain f32 slices of `unet-kernels`, and the shape
//! checks that decide whether a kernel takes a call (else burn's own operation runs).

use burn::tensor::{DType, TensorData, TensorMetadata};
use burn_flex::FlexTensor;

/// The third operand of a convolution call, checked along with `x` and `weight`.
pub enum Operand<'a> {
    /// None.
    None,
    /// A bias, `[C_out]`.
    Bias(&'a FlexTensor),
    /// The output's gradient, `[N, C_out, H, W]`.
    OutputGrad(&'a FlexTensor),
}

/// The same-convolution kernel's geometry when `x`, `weight` and `extra` are f32 tensors of
/// shapes it takes; `None` sends the call to burn's own kernels.
pub fn conv_geometry(
    x: &FlexTensor,
    weight: &FlexTensor,
    extra: Operand<'_>,
) -> Option<unet_kernels::same_conv::Geometry> {
    let f32s = x.dtype() == DType::F32 && weight.dtype() == DType::F32;
    let (xs, ws) = (x.shape().to_vec(), weight.shape().to_vec());
    if !f32s || xs.len() != 4 || ws.len() != 4 || ws[1] != xs[1] || ws[2] != ws[3] || ws[2] % 2 == 0 {
        return None;
    }
    let g = unet_kernels::same_conv::Geometry { n: xs[0], cin: xs[1], h: xs[2], w: xs[3], cout: ws[0], k: ws[2] };
    let fits = match extra {
        Operand::None => true,
        Operand::Bias(b) => b.dtype() == DType::F32 && b.shape().num_elements() == g.cout,
        Operand::OutputGrad(o) => o.dtype() == DType::F32 && o.shape().to_vec() == [g.n, g.cout, g.h, g.w],
    };
    fits.then_some(g)
}

/// The batch-norm kernel's geometry when `x` is an f32 `[N, C, H, W]` tensor and every one of
/// `per_channel` an f32 tensor of `C` values.
pub fn norm_geometry(x: &FlexTensor, per_channel: &[&FlexTensor]) -> Option<unet_kernels::batch_norm::Geometry> {
    let [n, c, h, w] = <[usize; 4]>::try_from(x.shape().to_vec()).ok()?;
    let fits =
        x.dtype() == DType::F32 && per_channel.iter().all(|t| t.dtype() == DType::F32 && t.shape().num_elements() == c);
    fits.then_some(unet_kernels::batch_norm::Geometry { n, c, p: h * w })
}

/// The values of a contiguous f32 tensor.
pub fn f32s(t: &FlexTensor) -> &[f32] {
    t.as_slice::<f32>().expect("contiguous f32 tensor")
}

/// A Flex tensor of `values` with `shape`.
pub fn tensor(values: Vec<f32>, shape: impl Into<burn::tensor::Shape>) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

/// `t` itself when its f32 values are contiguous, else a contiguous copy.
///
/// A batch of transposed matrices (a gradient that came back through `swap_dims`, e.g. an
/// attention operand's) is copied here tile by tile: burn Flex copies any layout that does not
/// collapse to two dimensions with its element-by-element strided iterator, several times slower.
pub fn contiguous(t: FlexTensor) -> FlexTensor {
    if t.as_slice::<f32>().is_some() {
        return t;
    }
    if t.dtype() == DType::F32 {
        if let Some(values) = copy_batched_2d(&t) {
            return tensor(values, t.shape());
        }
    }
    t.to_contiguous()
}

/// Side of the square tiles [`copy_batched_2d`] copies a strided matrix in.
const TILE: usize = 16;

/// The values of an f32 tensor whose layout collapses to exactly three positive-stride
/// dimensions `[batch, rows, cols]`, in row-major order; `None` for any other layout (burn copies
/// those that collapse to one or two dimensions at memory speed itself).
fn copy_batched_2d(t: &FlexTensor) -> Option<Vec<f32>> {
    let layout = t.layout();
    // Drop size-1 dimensions and merge neighbours whose strides chain (row-major order).
    let mut dims: Vec<(usize, isize)> = Vec::new();
    for (&len, &stride) in layout.shape().iter().zip(layout.strides()) {
        if len == 1 {
            continue;
        }
        match dims.last_mut() {
            Some((l, s)) if *s == stride * len as isize => {
                *l *= len;
                *s = stride;
            }
            _ => dims.push((len, stride)),
        }
    }
    if dims.len() != 3 || dims.iter().any(|&(_, s)| s < 0) {
        return None;
    }
    let [(batch, sb), (rows, sr), (cols, sc)] = [dims[0], dims[1], dims[2]];
    let (sb, sr, sc) = (sb as usize, sr as usize, sc as usize);
    let src = &t.storage::<f32>()[layout.start_offset()..];
    let mut out = vec![0f32; batch * rows * cols];
    for (b, dst) in out.chunks_exact_mut((rows * cols).max(1)).enumerate().take(batch) {
        let base = b * sb;
        for r0 in (0..rows).step_by(TILE) {
            for c0 in (0..cols).step_by(TILE) {
                let (r1, c1) = ((r0 + TILE).min(rows), (c0 + TILE).min(cols));
                // Within a tile, walk the source along its smaller stride.
                if sc <= sr {
                    for r in r0..r1 {
                        for c in c0..c1 {
                            dst[r * cols + c] = src[base + r * sr + c * sc];
                        }
                    }
                } else {
                    for c in c0..c1 {
                        for r in r0..r1 {
                            dst[r * cols + c] = src[base + r * sr + c * sc];
                        }
                    }
                }
            }
        }
    }
    Some(out)
}
