//! A backend that computes shapes only. Running the network on it yields the parameter list
//! (names and shapes), the FLOPs and bytes of each op, and the largest tensor of a forward pass,
//! without touching any data: `flowmap info`, the benchmark and the batch splitter use it.

use crate::backend::{conv2d_out_shape, Backend, Conv2d, OpFamily, Shaped};
use crate::config::Activation;
use crate::error::Result;
use std::cell::RefCell;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeTensor(pub Vec<usize>);

impl Shaped for ShapeTensor {
    fn shape(&self) -> &[usize] {
        &self.0
    }
}

/// What one op call costs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OpCost {
    pub family: OpFamily,
    pub flops: f64,
    /// Bytes read and written (f32), counting each operand once.
    pub bytes: f64,
    /// Elements in the largest batch-sized buffer the op binds (activation operand or output):
    /// the quantity that grows with the batch and meets the adapter's storage-binding limit.
    pub max_elems: usize,
    /// Elements in the largest parameter tensor the op binds (independent of the batch).
    pub param_elems: usize,
}

/// Records the cost of every op it is asked to run.
#[derive(Debug, Default)]
pub struct ShapeBackend {
    ops: RefCell<Vec<OpCost>>,
}

impl ShapeBackend {
    pub fn new() -> Self {
        Self::default()
    }

    /// The ops recorded so far, in program order.
    pub fn ops(&self) -> Vec<OpCost> {
        self.ops.borrow().clone()
    }

    /// The ops recorded so far, leaving none: for a caller that reads each op as it is made
    /// (`bench::Profiled`), where [`Self::ops`] would copy a list that grows with every call.
    pub fn take_ops(&self) -> Vec<OpCost> {
        std::mem::take(&mut *self.ops.borrow_mut())
    }

    pub fn total_flops(&self) -> f64 {
        self.ops.borrow().iter().map(|o| o.flops).sum()
    }

    fn record(
        &self,
        family: OpFamily,
        flops: f64,
        operands: &[&[usize]],
        params: &[&[usize]],
        out: Vec<usize>,
    ) -> ShapeTensor {
        let numel = |s: &[usize]| s.iter().product::<usize>();
        let mut max_elems = numel(&out);
        let mut elems = numel(&out);
        for s in operands {
            max_elems = max_elems.max(numel(s));
            elems += numel(s);
        }
        let param_elems = params.iter().map(|s| numel(s)).max().unwrap_or(0);
        elems += params.iter().map(|s| numel(s)).sum::<usize>();
        self.ops.borrow_mut().push(OpCost {
            family,
            flops,
            bytes: 4.0 * elems as f64,
            max_elems,
            param_elems,
        });
        ShapeTensor(out)
    }
}

fn numel(s: &[usize]) -> f64 {
    s.iter().product::<usize>() as f64
}

impl Backend for ShapeBackend {
    type Tensor = ShapeTensor;

    fn upload(&self, data: &[f32], shape: &[usize]) -> Result<ShapeTensor> {
        crate::backend::check_fill(data.len(), shape)?;
        Ok(ShapeTensor(shape.to_vec()))
    }

    fn download(&self, t: &ShapeTensor) -> Result<Vec<f32>> {
        Ok(vec![0.0; t.len()])
    }

    fn sync(&self) -> Result<()> {
        Ok(())
    }

    fn conv2d(
        &self,
        x: &ShapeTensor,
        w: &ShapeTensor,
        b: &ShapeTensor,
        geom: Conv2d,
        residual: Option<&ShapeTensor>,
    ) -> ShapeTensor {
        assert_eq!(
            x.0[1], w.0[1],
            "conv2d: {:?} input into weight {:?}",
            x.0, w.0
        );
        let out = conv2d_out_shape(&x.0, &w.0, geom);
        let macs = numel(&out) * (w.0[1] * w.0[2] * w.0[3]) as f64;
        let mut ops: Vec<&[usize]> = vec![&x.0];
        if let Some(r) = residual {
            assert_eq!(r.0, out, "conv2d residual shape");
            ops.push(&r.0);
        }
        self.record(OpFamily::Conv2d, 2.0 * macs, &ops, &[&w.0, &b.0], out)
    }

    /// One op: both convolutions' FLOPs, both inputs read, no residual tensor.
    fn conv2d_skip(
        &self,
        x: &ShapeTensor,
        w: &ShapeTensor,
        b: &ShapeTensor,
        geom: Conv2d,
        skip: &ShapeTensor,
        skip_w: &ShapeTensor,
        skip_b: &ShapeTensor,
    ) -> ShapeTensor {
        assert_eq!(
            (x.0[1], skip.0[1], skip_w.0[2..].to_vec()),
            (w.0[1], skip_w.0[1], vec![1, 1]),
            "conv2d skip: {:?} into {:?}, {:?} into {:?}",
            x.0,
            w.0,
            skip.0,
            skip_w.0
        );
        let out = conv2d_out_shape(&x.0, &w.0, geom);
        assert_eq!(
            (skip.0[0], &skip.0[2..], skip_w.0[0]),
            (out[0], &out[2..], out[1]),
            "conv2d skip input shape"
        );
        let macs = numel(&out) * (w.0[1] * w.0[2] * w.0[3] + skip_w.0[1]) as f64;
        self.record(
            OpFamily::Conv2d,
            2.0 * macs,
            &[&x.0, &skip.0],
            &[&w.0, &b.0, &skip_w.0, &skip_b.0],
            out,
        )
    }

    fn group_norm(
        &self,
        x: &ShapeTensor,
        gamma: &ShapeTensor,
        beta: &ShapeTensor,
        groups: usize,
        _eps: f32,
        modulation: Option<&ShapeTensor>,
        silu: bool,
    ) -> ShapeTensor {
        assert_eq!(
            x.0[1] % groups,
            0,
            "group_norm: {} channels in {groups} groups",
            x.0[1]
        );
        assert_eq!(gamma.0, [x.0[1]], "group_norm gamma");
        let per = 7.0 + if modulation.is_some() { 2.0 } else { 0.0 } + if silu { 4.0 } else { 0.0 };
        let mut ops: Vec<&[usize]> = vec![&x.0];
        if let Some(m) = modulation {
            assert_eq!(m.0.len(), 2, "group_norm modulation {:?}", m.0);
            crate::backend::modulation_repeat(x.0[0], x.0[1], m.len());
            ops.push(&m.0);
        }
        let params: [&[usize]; 2] = [&gamma.0, &beta.0];
        self.record(
            OpFamily::GroupNorm,
            per * numel(&x.0),
            &ops,
            &params,
            x.0.clone(),
        )
    }

    fn linear(
        &self,
        x: &ShapeTensor,
        w: &ShapeTensor,
        b: &ShapeTensor,
        modulation: Option<&ShapeTensor>,
        _act: Activation,
    ) -> ShapeTensor {
        assert_eq!(
            x.0[1], w.0[1],
            "linear: {:?} input into weight {:?}",
            x.0, w.0
        );
        let out = vec![x.0[0], w.0[0]];
        let mut ops: Vec<&[usize]> = vec![&x.0];
        if let Some(m) = modulation {
            assert_eq!(m.0.len(), 2, "linear modulation {:?}", m.0);
            crate::backend::modulation_repeat(x.0[0], w.0[0], m.len());
            ops.push(&m.0);
        }
        let flops = 2.0 * numel(&out) * x.0[1] as f64;
        self.record(OpFamily::Linear, flops, &ops, &[&w.0, &b.0], out)
    }

    fn timestep_embedding(
        &self,
        times: &ShapeTensor,
        dim: usize,
        _mp: f32,
        _ts: f32,
    ) -> ShapeTensor {
        let out = vec![times.0[0], dim];
        self.record(
            OpFamily::Embedding,
            8.0 * numel(&out),
            &[&times.0],
            &[],
            out,
        )
    }

    fn attention(&self, qkv: &ShapeTensor, heads: usize) -> ShapeTensor {
        let (n, c, l) = (qkv.0[0], qkv.0[1] / 3, qkv.0[2]);
        assert_eq!(c % heads, 0, "attention: {c} channels in {heads} heads");
        let out = vec![n, c, l];
        // qᵀk and p·v: 2·L·L·C each; the softmax about 5 per score.
        let flops = (n * l * l) as f64 * (4.0 * c as f64 + 5.0 * heads as f64);
        self.record(OpFamily::Attention, flops, &[&qkv.0], &[], out)
    }

    fn upsample_nearest2x(&self, x: &ShapeTensor) -> ShapeTensor {
        let s = &x.0;
        self.record(
            OpFamily::Upsample,
            0.0,
            &[s],
            &[],
            vec![s[0], s[1], 2 * s[2], 2 * s[3]],
        )
    }

    fn concat_channels(&self, a: &ShapeTensor, b: &ShapeTensor) -> ShapeTensor {
        assert_eq!((a.0[0], &a.0[2..]), (b.0[0], &b.0[2..]), "concat shapes");
        let mut out = a.0.clone();
        out[1] += b.0[1];
        self.record(OpFamily::Concat, 0.0, &[&a.0, &b.0], &[], out)
    }

    fn reshape(&self, t: &ShapeTensor, shape: &[usize]) -> ShapeTensor {
        assert_eq!(
            t.len(),
            shape.iter().product::<usize>(),
            "reshape {:?} to {shape:?}",
            t.0
        );
        ShapeTensor(shape.to_vec())
    }

    fn add(&self, a: &ShapeTensor, b: &ShapeTensor) -> ShapeTensor {
        assert_eq!(a.0, b.0, "add shapes");
        self.record(
            OpFamily::Elementwise,
            numel(&a.0),
            &[&a.0, &b.0],
            &[],
            a.0.clone(),
        )
    }

    fn activation(&self, x: &ShapeTensor, _act: Activation) -> ShapeTensor {
        self.record(
            OpFamily::Elementwise,
            4.0 * numel(&x.0),
            &[&x.0],
            &[],
            x.0.clone(),
        )
    }

    fn flow_step(&self, x: &ShapeTensor, v: &ShapeTensor, _dt: f32) -> ShapeTensor {
        assert_eq!(x.0, v.0, "flow_step shapes");
        self.record(
            OpFamily::Elementwise,
            2.0 * numel(&x.0),
            &[&x.0, &v.0],
            &[],
            x.0.clone(),
        )
    }
}
