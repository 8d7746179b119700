//! Speed of the integer q8_0 kernel (src/model/int8.rs) against candle's q8_0 and f32 products on
//! the image encoder's products (git-large's ViT-L: 257 rows; per layer four 1024 → 1024
//! projections, 1024 → 4096 and 4096 → 1024), natively. Threads: `RAYON_NUM_THREADS`.
//!
//! ```text
//! RAYON_NUM_THREADS=2 cargo run --release --features native --example int8_bench [ROUNDS]
//! ```
//!
//! Prints one JSON line per path: milliseconds per encoder layer's products (median of ROUNDS,
//! default 5) and GFLOP/s, then the 24-layer total.

use std::time::Instant;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{Device, Module, Tensor};
use gitcap::model::{int8, matmul, Policy, WideKernel};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const ROWS: usize = 257;
const LAYERS: usize = 24;
/// (inputs, outputs) of one encoder layer's products.
const PRODUCTS: [(usize, usize); 6] = [
    (1024, 1024),
    (1024, 1024),
    (1024, 1024),
    (1024, 1024),
    (1024, 4096),
    (4096, 1024),
];

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let rounds: usize = match std::env::args().nth(1) {
        Some(r) => r.parse()?,
        None => 5,
    };
    let dev = Device::Cpu;
    let mut layer = Vec::new();
    for (k, n) in PRODUCTS {
        let w = Tensor::randn(0f32, 0.02, (n, k), &dev)?;
        let x = Tensor::randn(0f32, 1.0, (ROWS, k), &dev)?;
        let q = QTensor::quantize(&w, GgmlDType::Q8_0)?;
        layer.push((x, w, q));
    }
    let flops: f64 = PRODUCTS
        .iter()
        .map(|&(k, n)| 2.0 * (ROWS * k * n) as f64)
        .sum();
    let mut candle_q = Vec::new();
    for (_, _, q) in &layer {
        let q = QTensor::quantize(&q.dequantize(&dev)?, GgmlDType::Q8_0)?;
        candle_q.push(QMatMul::from_qtensor(q)?);
    }
    let best = Policy::default();
    let avx2 = Policy::default().with_wide_kernel(WideKernel::Avx2);
    let pack = |policy: &Policy| {
        layer
            .iter()
            .map(|(_, w, _)| matmul::PackedWeight::new(policy, w, ROWS))
            .collect::<gitcap::Result<Vec<_>>>()
    };
    let packed = pack(&best)?;
    let packed_avx2 = pack(&avx2)?;
    // The wide kernel in the form a policy packed for, or candle's where it has none.
    let wide = |policy: &Policy, packed: &[Option<matmul::PackedWeight>], i: usize| match &packed[i]
    {
        Some(w) => Ok(
            matmul::linear_packed(policy, &layer[i].0, w, matmul::Epilogue::default())
                .expect("the wide kernel takes the encoder's products")?,
        ),
        None => Ok(layer[i].0.matmul(&layer[i].1.t()?)?),
    };
    let portable = Policy::default().with_portable_int8(true);
    let int8 = |policy: &Policy, i: usize| -> Result<Tensor> {
        let (x, _, q) = &layer[i];
        Ok(int8::linear(
            policy,
            x,
            q,
            matmul::Epilogue::default(),
            false,
        )?)
    };
    type Path<'a> = (&'a str, Box<dyn Fn(usize) -> Result<Tensor> + 'a>);
    let paths: Vec<Path> = vec![
        (
            "candle f32",
            Box::new(|i| Ok(layer[i].0.matmul(&layer[i].1.t()?)?)),
        ),
        (
            "candle q8_0",
            Box::new(|i| Ok(candle_q[i].forward(&layer[i].0)?)),
        ),
        ("int8 best", Box::new(|i| int8(&best, i))),
        ("own f32", Box::new(|i| wide(&best, &packed, i))),
        ("own f32 avx2", Box::new(|i| wide(&avx2, &packed_avx2, i))),
        ("int8 portable", Box::new(|i| int8(&portable, i))),
    ];
    for (name, f) in &paths {
        let mut times = Vec::new();
        for _ in 0..rounds {
            let t0 = Instant::now();
            for i in 0..layer.len() {
                std::hint::black_box(f(i)?);
            }
            times.push(t0.elapsed().as_secs_f64());
        }
        let t = median(times);
        println!(
            "{}",
            serde_json::json!({"path": name, "kernel": match *name {
                    "int8 best" => int8::kernel(&best).describe(),
                    "int8 portable" => int8::kernel(&portable).describe(),
                    "own f32" => packed[0].as_ref().map_or("", |w| w.describe()),
                    "own f32 avx2" => packed_avx2[0].as_ref().map_or("", |w| w.describe()),
                    _ => "" },
                "threads": rayon::current_num_threads(),
                "layer_ms": t * 1e3, "encoder_products_s": t * LAYERS as f64,
                "gflops": flops / t / 1e9})
        );
    }
    Ok(())
}
