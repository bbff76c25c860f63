//! Visitors over the U-Net's parameters: the global gradient norm and its clipping (PyTorch's
//! `clip_grad_norm_`), and the EMA update, matched parameter by parameter through their ids.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor};
use unet::Unet;

struct GradSquares<'a, B: AutodiffBackend> {
    grads: &'a GradientsParams,
    sum: f64,
    _b: std::marker::PhantomData<B>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for GradSquares<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
            let s: f64 = g.square().sum().into_scalar().elem();
            self.sum += s;
        }
    }
}

/// The global L2 norm of all gradients (PyTorch's `clip_grad_norm_` total norm).
pub(crate) fn global_grad_norm<B: AutodiffBackend>(model: &Unet<B>, grads: &GradientsParams) -> f32 {
    let mut v = GradSquares::<B> { grads, sum: 0.0, _b: std::marker::PhantomData };
    model.visit(&mut v);
    v.sum.sqrt() as f32
}

struct GradScaler<'a, B: AutodiffBackend> {
    grads: &'a mut GradientsParams,
    coef: f32,
    _b: std::marker::PhantomData<B>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for GradScaler<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.remove::<B::InnerBackend, D>(param.id) {
            self.grads.register::<B::InnerBackend, D>(param.id, g.mul_scalar(self.coef));
        }
    }
}

pub(crate) fn scale_grads<B: AutodiffBackend>(model: &Unet<B>, grads: &mut GradientsParams, coef: f32) {
    let mut v = GradScaler::<B> { grads, coef, _b: std::marker::PhantomData };
    model.visit(&mut v);
}

struct CollectParams<B: Backend> {
    params: std::collections::HashMap<ParamId, Tensor<B, 1>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for CollectParams<B::InnerBackend> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let t = param.val().inner();
        let n = t.shape().num_elements();
        self.params.insert(param.id, t.reshape([n]));
    }
}

struct EmaMapper<B: Backend> {
    online: std::collections::HashMap<ParamId, Tensor<B, 1>>,
    decay: f32,
}

impl<B: Backend> ModuleMapper<B> for EmaMapper<B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let tensor = match self.online.remove(&id) {
            Some(online) => {
                let shape = tensor.shape();
                let online: Tensor<B, D> = online.reshape(shape);
                if self.decay == 0.0 {
                    online
                } else {
                    tensor.mul_scalar(self.decay) + online.mul_scalar(1.0 - self.decay)
                }
            }
            None => tensor,
        };
        Param::from_mapped_value(id, tensor, mapper)
    }
}

/// `ema <- decay * ema + (1 - decay) * online`, parameter by parameter (matched by id).
pub(crate) fn ema_update<B: AutodiffBackend>(
    online: &Unet<B>,
    ema: Unet<B::InnerBackend>,
    decay: f64,
) -> Unet<B::InnerBackend> {
    let mut c = CollectParams::<B::InnerBackend> { params: Default::default() };
    online.visit(&mut c);
    let mut m = EmaMapper { online: c.params, decay: decay as f32 };
    ema.map(&mut m)
}
