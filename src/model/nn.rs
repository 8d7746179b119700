//! The few layers GIT is built from, over one weight source that is either dense (safetensors,
//! PyTorch pickles) or quantized (GGUF). The model files are written once against `Weights` and so
//! serve f32, f16 and quantized checkpoints, natively and in wasm.

use std::collections::HashMap;
use std::io::{Read, Seek};
use std::sync::Arc;

use candle_core::quantized::ggml_file::qtensor_from_ggml;
use candle_core::quantized::{gguf_file, GgmlDType, QMatMul, QTensor};
use candle_core::{CpuStorage, DType, Device, Module, Shape, Storage, Tensor};

use super::config::Activation;
use super::policy::Policy;
use super::{int8, matmul, parallel};
use crate::{Error, Result};

#[derive(Clone)]
enum Source {
    Dense(candle_nn::VarBuilder<'static>),
    Quantized(QuantizedTensors),
}

/// Every tensor of a GGUF file, by full name, as stored (quantized or not).
#[derive(Clone)]
pub struct QuantizedTensors {
    tensors: Arc<HashMap<String, Arc<QTensor>>>,
    device: Device,
}

impl QuantizedTensors {
    /// Reads the tensors `content` lists from `reader`, the file `content` was read from.
    pub fn read<R: Read + Seek>(
        content: &gguf_file::Content,
        reader: &mut R,
        device: &Device,
    ) -> candle_core::Result<Self> {
        let mut tensors = HashMap::with_capacity(content.tensor_infos.len());
        for name in content.tensor_infos.keys() {
            let tensor = content.tensor(reader, name, device)?;
            tensors.insert(name.clone(), Arc::new(tensor));
        }
        Ok(Self {
            tensors: Arc::new(tensors),
            device: device.clone(),
        })
    }
}

/// A view of a checkpoint's tensors under a name prefix (`git.encoder.layer.3`, ...).
#[derive(Clone)]
pub struct Weights {
    source: Source,
    prefix: String,
}

impl Weights {
    pub fn dense(vb: candle_nn::VarBuilder<'static>) -> Self {
        Self {
            source: Source::Dense(vb),
            prefix: String::new(),
        }
    }

    pub fn quantized(tensors: QuantizedTensors) -> Self {
        Self {
            source: Source::Quantized(tensors),
            prefix: String::new(),
        }
    }

    pub fn is_quantized(&self) -> bool {
        matches!(self.source, Source::Quantized(_))
    }

    pub fn device(&self) -> Device {
        match &self.source {
            Source::Dense(vb) => vb.device().clone(),
            Source::Quantized(q) => q.device.clone(),
        }
    }

    pub fn pp(&self, name: impl std::fmt::Display) -> Self {
        let prefix = if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        };
        let source = match &self.source {
            Source::Dense(vb) => Source::Dense(vb.pp(name.to_string())),
            Source::Quantized(q) => Source::Quantized(q.clone()),
        };
        Self { source, prefix }
    }

    fn full_name(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        match &self.source {
            Source::Dense(vb) => vb.contains_tensor(name),
            Source::Quantized(q) => q.tensors.contains_key(&self.full_name(name)),
        }
    }

    /// A tensor in the compute dtype (f32), checked against the shape the config implies.
    pub fn tensor(&self, shape: impl Into<Shape>, name: &str) -> Result<Tensor> {
        let t = self.raw_tensor(shape, name)?;
        Ok(t.to_dtype(DType::F32)?)
    }

    /// A tensor in whatever float dtype it is stored in (f16 embeddings stay f16).
    fn raw_tensor(&self, shape: impl Into<Shape>, name: &str) -> Result<Tensor> {
        let shape = shape.into();
        self.require(name)?;
        let wrap = |e: candle_core::Error| {
            Error::weight(self.full_name(name), format!("could not be read: {e}"))
        };
        let t = match &self.source {
            Source::Dense(vb) => {
                let t = vb.get_unchecked(name).map_err(wrap)?;
                self.check_shape(name, t.shape(), &shape)?;
                t
            }
            Source::Quantized(_) => {
                let q = self.quantized_tensor(name)?;
                self.check_shape(name, q.shape(), &shape)?;
                match q.dtype() {
                    GgmlDType::F16 => q.dequantize_f16(&q.device())?,
                    _ => q.dequantize(&q.device())?,
                }
            }
        };
        Ok(t)
    }

    /// A GGUF tensor as stored; an error for dense sources.
    fn quantized_tensor(&self, name: &str) -> Result<Arc<QTensor>> {
        let full = self.full_name(name);
        match &self.source {
            Source::Quantized(q) => match q.tensors.get(&full) {
                Some(t) => Ok(t.clone()),
                None => Err(Error::weight(full, "is missing from the checkpoint")),
            },
            Source::Dense(_) => Err(Error::weight(full, "is not a quantized tensor")),
        }
    }

    fn require(&self, name: &str) -> Result<()> {
        if self.contains(name) {
            Ok(())
        } else {
            Err(Error::weight(
                self.full_name(name),
                "is missing from the checkpoint",
            ))
        }
    }

    fn check_shape(&self, name: &str, got: &Shape, want: &Shape) -> Result<()> {
        if got.dims() == want.dims() {
            Ok(())
        } else {
            Err(Error::weight(
                self.full_name(name),
                format!(
                    "has shape {:?} but the config implies {:?}",
                    got.dims(),
                    want.dims()
                ),
            ))
        }
    }

    fn matmul_weight(&self, out_dim: usize, in_dim: usize, name: &str) -> Result<QMatMul> {
        self.require(name)?;
        match &self.source {
            Source::Dense(_) => Ok(QMatMul::Tensor(self.tensor((out_dim, in_dim), name)?)),
            Source::Quantized(_) => {
                let q = self.quantized_tensor(name)?;
                self.check_shape(name, q.shape(), &Shape::from((out_dim, in_dim)))?;
                Ok(QMatMul::from_arc(q)?)
            }
        }
    }

    pub fn linear(&self, in_dim: usize, out_dim: usize) -> Result<Linear> {
        let weight = self.matmul_weight(out_dim, in_dim, "weight")?;
        let bias = self.tensor(out_dim, "bias")?;
        Linear::new(weight, Some(bias))
    }

    pub fn layer_norm(&self, size: usize, eps: f64) -> Result<LayerNorm> {
        Ok(LayerNorm {
            weight: self.tensor(size, "weight")?,
            bias: self.tensor(size, "bias")?,
            eps,
        })
    }

    pub fn embedding(&self, count: usize, dim: usize) -> Result<Embedding> {
        if let Source::Quantized(_) = &self.source {
            let q = self.quantized_tensor("weight")?;
            self.check_shape("weight", q.shape(), &Shape::from((count, dim)))?;
            if !matches!(q.dtype(), GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16) {
                // Stays quantized: lookups dequantize only the rows they gather.
                return Ok(Embedding {
                    table: Table::Quantized(q),
                    dim,
                });
            }
        }
        Ok(Embedding {
            table: Table::Dense(self.raw_tensor((count, dim), "weight")?),
            dim,
        })
    }

    /// The same table used as a projection (a tied LM head).
    pub fn embedding_as_linear(&self, count: usize, dim: usize, bias: Tensor) -> Result<Linear> {
        Linear::new(self.matmul_weight(count, dim, "weight")?, Some(bias))
    }
}

/// y = act(x Wᵀ + b), with W dense or quantized. Inputs of any rank are folded into one matrix
/// product, which is both what candle's quantized kernels expect and the fastest dense path.
///
/// Every forward takes the model's `Policy`, which chooses the path. Where the model's own kernel
/// takes the product (the wasm build: f32 weights, q8_0 ones for the encoder's rows), it adds the
/// bias and applies the activation to each block of output columns as it finishes it; when the
/// policy splits the model across threads (`parts() > 1`, the threaded wasm build) those column
/// blocks are shared out over the pool, all writing into one output.
/// Elsewhere a large enough split product is cut by output columns: each thread multiplies by a
/// block of the weight's rows (a view of a dense weight; for a quantized one, its rows expanded to
/// f32 by that thread) and adds its slice of the bias and the activation; the slices are then
/// joined. Nothing is split ahead of time, so a split model holds no more memory than a whole one.
#[derive(Clone)]
pub struct Linear {
    weight: LinearWeight,
    bias: Option<Tensor>,
    out_dim: usize,
}

/// A layer's weight: as loaded, or (natively, the image encoder's f32 weights on CPUs with
/// AVX-512) packed once into the kernel's panels, kept in that form alone (see `prepacked`).
#[derive(Clone)]
enum LinearWeight {
    Loaded(QMatMul),
    Packed(Arc<matmul::PackedWeight>),
}

impl Linear {
    fn new(weight: QMatMul, bias: Option<Tensor>) -> Result<Self> {
        let out_dim = match &weight {
            QMatMul::QTensor(q) => q.shape().dims()[0],
            QMatMul::Tensor(w) | QMatMul::TensorF16(w) => w.dim(0)?,
        };
        Ok(Self {
            weight: LinearWeight::Loaded(weight),
            bias,
            out_dim,
        })
    }

    /// A layer without bias over `weight` (out × in, f32).
    pub fn from_weight(weight: Tensor) -> Result<Self> {
        Linear::new(QMatMul::Tensor(weight), None)
    }

    /// The layer with its f32 weight packed for the wide kernel where products of `rows` rows
    /// take it under `policy` (natively, on CPUs with AVX-512 F); as it was elsewhere. For layers
    /// whose every product has that many rows (the image encoder's 257 a frame): packing each
    /// product's panels was 5% of the encoder's time natively. The packed form replaces the
    /// loaded one, so the model holds no more memory.
    pub fn prepacked(self, policy: &Policy, rows: usize) -> Result<Self> {
        let LinearWeight::Loaded(QMatMul::Tensor(w)) = &self.weight else {
            return Ok(self);
        };
        Ok(match matmul::PackedWeight::new(policy, w, rows)? {
            Some(packed) => Self {
                weight: LinearWeight::Packed(Arc::new(packed)),
                ..self
            },
            None => self,
        })
    }

    pub fn forward(&self, policy: &Policy, xs: &Tensor) -> Result<Tensor> {
        self.forward_with(policy, xs, None, None)
    }

    /// The layer followed by `act`, applied to each thread's slice where it was computed.
    pub fn forward_then(&self, policy: &Policy, xs: &Tensor, act: Activation) -> Result<Tensor> {
        self.forward_with(policy, xs, Some(act), None)
    }

    /// `residual + self.forward(xs)` (a residual connection; `residual` has the output's shape),
    /// the sum done by the kernel on each block of the output as it finishes where the kernel
    /// takes the product: the same bits.
    pub fn forward_add(&self, policy: &Policy, xs: &Tensor, residual: &Tensor) -> Result<Tensor> {
        self.forward_with(policy, xs, None, Some(residual))
    }

    fn forward_with(
        &self,
        policy: &Policy,
        xs: &Tensor,
        act: Option<Activation>,
        residual: Option<&Tensor>,
    ) -> Result<Tensor> {
        let dims = xs.dims().to_vec();
        let in_dim = *dims
            .last()
            .expect("linear input has at least one dimension");
        let rows: usize = dims[..dims.len() - 1].iter().product();
        let flat = xs.reshape((rows, in_dim))?;
        let mut out_dims = dims;
        *out_dims.last_mut().expect("non-empty") = self.out_dim;
        if let Some(residual) = residual {
            if residual.dims() != out_dims.as_slice() {
                return Err(crate::Error::invalid(format!(
                    "residual of shape {:?} for a linear layer's output of {out_dims:?}",
                    residual.dims()
                )));
            }
        }
        // The residual as the kernel reads it: contiguous f32 values on the CPU.
        let residual_storage = residual.map(|r| r.storage_and_layout());
        let residual_values = residual_storage
            .as_ref()
            .and_then(|(storage, layout)| cpu_f32_values(storage, layout));
        let fused = ProductEnd {
            act,
            residual: residual_values,
        };
        let weight = match &self.weight {
            LinearWeight::Loaded(weight) => weight,
            LinearWeight::Packed(packed) => {
                if residual.is_none() || residual_values.is_some() {
                    if let Some(ys) = self.packed_forward(policy, &flat, packed, fused) {
                        return Ok(ys?.reshape(out_dims)?);
                    }
                }
                // The policy turned the kernel off after loading (the tests compare it with
                // candle's path): the rows again, the usual way.
                let loaded = Linear::new(QMatMul::Tensor(packed.unpack()?), self.bias.clone())?;
                drop(residual_storage);
                return loaded.forward_with(policy, xs, act, residual);
            }
        };
        if residual.is_none() || residual_values.is_some() {
            if let Some(ys) = self.kernel_forward(policy, weight, &flat, fused) {
                return Ok(ys?.reshape(out_dims)?);
            }
        }
        drop(residual_storage);
        let finish = |mut ys: Tensor, bias: Option<Tensor>| -> Result<Tensor> {
            if let Some(b) = bias {
                ys = ys.broadcast_add(&b)?;
            }
            if let Some(act) = act {
                ys = act.apply(policy, &ys)?;
            }
            Ok(ys)
        };
        let dequantize = match weight {
            QMatMul::QTensor(q) => rows >= policy.dequantize_min_rows(q.dtype()),
            _ => false,
        };
        // A quantized weight is split only where it is expanded to f32 anyway: splitting it for a
        // few rows would copy its blocks on every token.
        let splittable = !matches!(weight, QMatMul::QTensor(_)) || dequantize;
        let ranges = splittable
            .then(|| {
                parallel::split(
                    policy,
                    self.out_dim,
                    rows,
                    rows * in_dim * self.out_dim,
                    matmul::PANEL_COLUMNS,
                )
            })
            .flatten();
        let ys = if let Some(ranges) = ranges {
            let slices = parallel::map(policy.stats(), ranges.len(), |i| {
                let (start, len) = ranges[i];
                let ys = matmul::matmul_t(policy, &flat, &weight_rows_f32(weight, start, len)?)?;
                finish(
                    ys,
                    self.bias
                        .as_ref()
                        .map(|b| b.narrow(0, start, len))
                        .transpose()?,
                )
            })?;
            Tensor::cat(&slices, 1)?
        } else {
            let ys = match weight {
                QMatMul::QTensor(q) if dequantize => {
                    matmul::matmul_t(policy, &flat, &q.dequantize(xs.device())?)?
                }
                QMatMul::Tensor(w) => matmul::matmul_t(policy, &flat, w)?,
                weight => weight.forward(&flat)?,
            };
            finish(ys, self.bias.clone())?
        };
        let ys = ys.reshape(out_dims)?;
        Ok(match residual {
            Some(residual) => (residual + ys)?,
            None => ys,
        })
    }

    /// The layer through the model's own matrix kernel, bias and activation included, its columns
    /// shared out over the threads when the policy splits the model; `None` where the policy does
    /// not send this product to the kernel (a type other than f32 and q8_0, q8_0 for few rows).
    fn kernel_forward(
        &self,
        policy: &Policy,
        weight: &QMatMul,
        flat: &Tensor,
        end: ProductEnd<'_>,
    ) -> Option<Result<Tensor>> {
        let (rows, in_dim) = flat.dims2().ok()?;
        if !(matmul::takes(policy, rows)
            || matmul::wide(policy, rows)
            || matmul::few_wide(policy, rows)
            || int8::takes(policy, rows))
        {
            return None;
        }
        let split = matmul::splits(policy, weight, rows, in_dim, self.out_dim);
        self.with_epilogue(policy, end, |epilogue| {
            matmul::linear(policy, flat, weight, epilogue, split)
        })
    }

    /// The layer through the wide kernel with its packed weight; `None` where the policy has
    /// the kernel off for this product.
    fn packed_forward(
        &self,
        policy: &Policy,
        flat: &Tensor,
        packed: &matmul::PackedWeight,
        end: ProductEnd<'_>,
    ) -> Option<Result<Tensor>> {
        self.with_epilogue(policy, end, |epilogue| {
            matmul::linear_packed(policy, flat, packed, epilogue)
        })
    }

    /// `product(epilogue)` with this layer's bias and `end` in the epilogue: the activation where
    /// it has an in-place form (applied after otherwise, and then the residual too, which must
    /// come after it); `None` where the product is not taken or the bias is not a plain f32
    /// vector.
    fn with_epilogue(
        &self,
        policy: &Policy,
        end: ProductEnd<'_>,
        product: impl FnOnce(matmul::Epilogue<'_>) -> Option<Result<Tensor>>,
    ) -> Option<Result<Tensor>> {
        let ProductEnd { act, residual } = end;
        // The bias is read where it is stored, not copied on every call (this runs per token).
        let bias = self.bias.as_ref().map(|b| b.storage_and_layout());
        let bias = match &bias {
            None => None,
            Some((storage, layout)) => Some(cpu_f32_values(storage, layout)?),
        };
        let in_place = act.and_then(|act| act.in_place(policy));
        let act_after = act.filter(|_| in_place.is_none());
        let epilogue = matmul::Epilogue {
            bias,
            activation: in_place.as_ref().map(|f| f as matmul::InPlace),
            residual: residual.filter(|_| act_after.is_none()),
        };
        let ys = product(epilogue)?;
        Some(ys.and_then(|ys| {
            let Some(act) = act_after else { return Ok(ys) };
            let ys = act.apply(policy, &ys)?;
            Ok(match residual {
                Some(r) => {
                    let r = Tensor::from_slice(r, ys.shape(), ys.device())?;
                    (r + ys)?
                }
                None => ys,
            })
        }))
    }
}

/// A tensor's values where they are stored, if they are contiguous f32 values on the CPU: what the
/// kernels read in place of a copy.
fn cpu_f32_values<'a>(storage: &'a Storage, layout: &candle_core::Layout) -> Option<&'a [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (Storage::Cpu(CpuStorage::F32(v)), Some((start, end))) => Some(&v[start..end]),
        _ => None,
    }
}

/// What follows a layer's product: its activation, then a residual's values (the output's
/// shape, row-major).
#[derive(Clone, Copy)]
struct ProductEnd<'a> {
    act: Option<Activation>,
    residual: Option<&'a [f32]>,
}

/// Rows `start..start + len` of a weight as f32: a view of a dense weight; a quantized one's
/// blocks (which run along rows, so whole rows are whole blocks) expanded.
fn weight_rows_f32(weight: &QMatMul, start: usize, len: usize) -> Result<Tensor> {
    Ok(match weight {
        QMatMul::Tensor(w) => w.narrow(0, start, len)?,
        QMatMul::TensorF16(w) => w.narrow(0, start, len)?.to_dtype(DType::F32)?,
        QMatMul::QTensor(q) => {
            let dtype = q.dtype();
            let in_dim = q.shape().dims()[1];
            let row_bytes = in_dim / dtype.block_size() * dtype.type_size();
            let data = q.data()?;
            let rows = &data[start * row_bytes..(start + len) * row_bytes];
            qtensor_from_ggml(dtype, rows, vec![len, in_dim], &q.device())?
                .dequantize(&q.device())?
        }
    })
}

/// softmax(q kᵀ · scale) v for (batch, heads, rows, head_dim) inputs, the heads split across
/// threads when the policy splits the model (see `parallel`).
pub fn attention(
    policy: &Policy,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
) -> Result<Tensor> {
    let heads = q.dim(1)?;
    let one = |start: usize, len: usize| -> Result<Tensor> {
        let (q, k, v) = (
            q.narrow(1, start, len)?,
            k.narrow(1, start, len)?,
            v.narrow(1, start, len)?,
        );
        let rows = q.dim(2)?;
        if matmul::applies(policy, rows) || matmul::wide_takes(policy, rows) {
            return per_head_attention(policy, &q, &k, &v, scale);
        }
        let scores = (q.matmul(&k.t()?)? * scale)?;
        Ok(softmax_last(policy, &scores)?.matmul(&v)?)
    };
    let (b, rows, head_dim) = (q.dim(0)?, q.dim(2)?, q.dim(3)?);
    let macs = 2 * b * heads * rows * k.dim(2)? * head_dim;
    let Some(ranges) = parallel::split(policy, heads, rows, macs, 1) else {
        return one(0, heads);
    };
    let groups = parallel::map(policy.stats(), ranges.len(), |i| {
        one(ranges[i].0, ranges[i].1)
    })?;
    Ok(Tensor::cat(&groups, 1)?)
}

/// `attention` one head at a time through the model's own matrix kernel (`matmul`), which takes
/// x · Wᵀ: q kᵀ is that form already, and p v is p (vᵀ)ᵀ.
fn per_head_attention(
    policy: &Policy,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    scale: f64,
) -> Result<Tensor> {
    let (b, heads, rows, head_dim) = q.dims4()?;
    let keys = k.dim(2)?;
    let flat = |t: &Tensor, n: usize| t.reshape((b * heads, n, head_dim));
    let (q, k, v) = (flat(q, rows)?, flat(k, keys)?, flat(v, keys)?);
    let head = |i: usize| -> Result<Tensor> {
        let scores = matmul::matmul_t_scaled(policy, &q.get(i)?, &k.get(i)?, scale)?;
        // The own loops natively too once the wide kernel takes the products: their exp is eight or
        // sixteen lanes wide there, candle's scalar (4% of git-large's encoder on one thread).
        let probs = if matmul::wide_takes(policy, rows) {
            super::elementwise::softmax_last_own(&scores)?
        } else {
            softmax_last(policy, &scores)?
        };
        matmul::matmul_t(policy, &probs, &v.get(i)?.t()?.contiguous()?)
    };
    // Natively, through the wide kernel, the heads go to rayon's pool (one thread per core):
    // each product alone is too small to split well (p v has 64 columns, two of its panels).
    // candle's batched products took 5% of git-large's encoder there, these about half as long.
    let outs = if matmul::wide_takes(policy, rows) {
        use rayon::prelude::*;
        (0..b * heads)
            .into_par_iter()
            .map(head)
            .collect::<Result<Vec<_>>>()?
    } else {
        (0..b * heads).map(head).collect::<Result<Vec<_>>>()?
    };
    Ok(Tensor::stack(&outs, 0)?.reshape((b, heads, rows, head_dim))?)
}

#[derive(Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::layer_norm(
            &xs.contiguous()?,
            &self.weight,
            &self.bias,
            self.eps as f32,
        )?)
    }
}

/// A lookup table; an f16 table stays f16 in memory and a quantized one stays quantized: only the
/// looked-up rows become f32.
#[derive(Clone)]
pub struct Embedding {
    table: Table,
    dim: usize,
}

#[derive(Clone)]
enum Table {
    Dense(Tensor),
    Quantized(Arc<QTensor>),
}

impl Embedding {
    fn gather(&self, flat_ids: &Tensor) -> Result<Tensor> {
        Ok(match &self.table {
            Table::Dense(t) => t.index_select(flat_ids, 0)?.to_dtype(DType::F32)?,
            Table::Quantized(q) => q.embedding(flat_ids)?,
        })
    }

    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let mut out_dims = ids.dims().to_vec();
        out_dims.push(self.dim);
        let rows = self.gather(&ids.flatten_all()?)?;
        Ok(rows.reshape(out_dims)?)
    }

    /// Rows `start..start + len` (position embeddings).
    pub fn rows(&self, start: usize, len: usize) -> Result<Tensor> {
        match &self.table {
            Table::Dense(t) => Ok(t.narrow(0, start, len)?.to_dtype(DType::F32)?),
            Table::Quantized(q) => {
                let ids = Tensor::arange(start as u32, (start + len) as u32, &q.device())?;
                self.gather(&ids)
            }
        }
    }
}

/// Softmax over the last dimension, in f32, computed as `policy` says.
pub fn softmax_last(policy: &Policy, xs: &Tensor) -> Result<Tensor> {
    Ok(super::elementwise::softmax_last(policy, xs)?)
}
