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
pub fn contiguous(t: FlexTensor) -> FlexTensor {
    if t.as_slice::<f32>().is_some() {
        t
    } else {
        t.to_contiguous()
    }
}
