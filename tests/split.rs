//! The split path that the threaded wasm build takes (src/model/parallel.rs), run natively: every
//! linear layer's output columns and every attention's heads in uneven parts on the rayon pool must
//! give transformers' results, and the same ids as the unsplit model, dense and quantized. Each
//! test gives its models the policy it checks; the statistics it checks are that policy's own, so
//! the tests run side by side (and the last one runs a split and a whole model at the same time).

// Native only: these tests read fixtures from disk (the wasm tests are tests/wasm.rs).
#![cfg(not(target_arch = "wasm32"))]

mod common;

use candle_core::{Device, Tensor};
use common::{ids, max_abs_diff, model_dir, Reference};
use gitcap::checkpoint::{load_dir, load_dir_with_policy, load_gguf};
use gitcap::gguf::QuantType;
use gitcap::model::Policy;
use gitcap::quantize::quantize_checkpoint;
use gitcap::{Captioner, Decoding};

const TOL: f32 = 1e-4;

const BEAM4: Decoding = Decoding::Beam {
    num_beams: 4,
    length_penalty: 0.6,
};

/// Every product split into `parts`, however small or few its rows (the fixtures' products are far
/// below the default size, and decoding's are not split by default); `parts` 1 runs it whole.
fn split_everything(parts: usize) -> Policy {
    Policy::default()
        .with_parts(parts)
        .with_min_split_macs(0)
        .with_min_split_rows(1)
}

/// Features, logits (where recorded) and greedy / 4-beam ids of one fixture case against
/// transformers; returns the features and logits for further comparisons.
fn assert_matches_transformers(
    model: &Captioner,
    reference: &Reference,
    case: &serde_json::Value,
    what: &str,
) -> (Tensor, Tensor) {
    let key = case["key"].as_str().unwrap();
    let (features, logits) = reference.features_and_logits(model.model(), key);
    let err = max_abs_diff(
        &features.squeeze(0).unwrap(),
        reference.tensor(&format!("{key}.image_features")),
    );
    assert!(err < TOL, "{what} {key}: image features differ by {err}");
    if let Some(want) = reference.tensors.get(&format!("{key}.logits")) {
        let err = max_abs_diff(&logits, want);
        assert!(err < TOL, "{what} {key}: logits differ by {err}");
        println!("{what} {key}: logits vs transformers {err:.1e}");
    }
    assert_eq!(
        reference.caption_ids(model, key, Decoding::Greedy),
        ids(&case["greedy"]["token_ids"]),
        "{what} {key}: greedy ids"
    );
    assert_eq!(
        reference.caption_ids(model, key, BEAM4),
        ids(&case["beam4"]["token_ids"]),
        "{what} {key}: 4-beam ids"
    );
    (features, logits)
}

#[test]
fn split_model_matches_transformers_and_the_whole_model() {
    for name in ["tiny-coco", "tiny-vatex"] {
        let reference = Reference::load(name);
        let mut model = load_dir(&model_dir(name), &Device::Cpu).unwrap();
        for case in reference.cases() {
            let key = case["key"].as_str().unwrap();
            model.set_policy(split_everything(1));
            let (f_whole, l_whole) = reference.features_and_logits(model.model(), key);
            // Three parts: no dimension of the fixtures divides evenly, so the uneven ranges are used.
            let split = split_everything(3);
            model.set_policy(split.clone());
            let (f_split, l_split) =
                assert_matches_transformers(&model, &reference, case, &format!("{name} split"));
            assert!(split.stats().splits() > 0, "the split model did not split");
            println!(
                "{name} {key}: split vs whole: features {:.1e}, logits {:.1e}",
                max_abs_diff(&f_split, &f_whole),
                max_abs_diff(&l_split, &l_whole)
            );
        }
    }
}

/// The largest magnitude in `t`, the scale that reordered f32 sums are measured against.
fn largest_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn split_quantized_model_matches_the_whole_one() {
    let reference = Reference::load("tiny-coco");
    let out = std::env::temp_dir().join(format!("gitcap-split-{}.gguf", std::process::id()));
    quantize_checkpoint(
        &model_dir("tiny-coco"),
        &out,
        QuantType::Q8_0,
        "tiny-coco",
        &mut |_| {},
    )
    .unwrap();
    let model = load_gguf(&out, &Device::Cpu);
    let _ = std::fs::remove_file(&out);
    let mut model = model.unwrap();
    // The wasm build's rule: quantized weights are split only where they are expanded to f32,
    // which natively never happens unless asked for.
    let expanding = |parts| split_everything(parts).with_dequantize_min_rows(0);
    for case in reference.cases() {
        let key = case["key"].as_str().unwrap();
        model.set_policy(expanding(1));
        let (f_whole, l_whole) = reference.features_and_logits(model.model(), key);
        let whole_ids = [Decoding::Greedy, BEAM4].map(|d| reference.caption_ids(&model, key, d));
        let split = expanding(2);
        model.set_policy(split.clone());
        let (f_split, l_split) = reference.features_and_logits(model.model(), key);
        assert!(split.stats().splits() > 0, "the split model did not split");
        // The same f32 sums cut in other places: relative to the largest feature, since how far
        // reordering moves a sum scales with its terms (1.6e-5 of 3.5 seen on an AVX2-only AMD
        // EPYC, whose gemm kernels sum in another order than AVX-512's; 2.7e-6 with AVX-512).
        let features_scale = largest_abs(&f_whole);
        let features_err = max_abs_diff(&f_split, &f_whole);
        println!(
            "{key}: q8_0 split vs whole features {features_err:.1e} (largest {features_scale:.1})"
        );
        assert!(
            features_err < 8e-6 * features_scale,
            "{key}: features {features_err}"
        );
        // Both sides are the same f32 arithmetic on the same expanded weights, summed in another
        // order: within 5e-5 of the largest logit (1.7e-4 of 13 seen with AVX-512, 4.2e-4 of 13.1
        // on an AVX2-only CPU), well below what changes a token; the ids are checked below.
        let scale = largest_abs(&l_whole);
        let err = max_abs_diff(&l_split, &l_whole);
        println!("{key}: q8_0 split vs whole logits {err:.1e} (largest logit {scale:.1})");
        assert!(err < 5e-5 * scale, "{key}: logits {err}");
        let split_ids = [Decoding::Greedy, BEAM4].map(|d| reference.caption_ids(&model, key, d));
        assert_eq!(split_ids, whole_ids, "{key}: ids");
        // The wasm build's own kernels: the blocked one for every product (q8_0 blocks packed in
        // place), then the matrix-vector loop for every product (on the expanded weights);
        // whole and split.
        for kernel in OWN_KERNELS {
            for parts in [1, 2] {
                let policy = kernel.select(expanding(parts));
                model.set_policy(policy.clone());
                let (f_kernel, l_kernel) = reference.features_and_logits(model.model(), key);
                assert!(
                    policy.stats().kernel_products() > 0,
                    "the kernel did not run"
                );
                let what = format!("{key}: q8_0 {} ({parts} parts)", kernel.name);
                let err = max_abs_diff(&f_kernel, &f_whole);
                println!("{what} vs whole features {err:.1e}");
                assert!(err < 1e-4, "{what}: features {err}");
                let err = max_abs_diff(&l_kernel, &l_whole);
                println!("{what} vs whole logits {err:.1e}");
                assert!(err < 5e-5 * scale, "{what}: logits {err}");
                let ids = [Decoding::Greedy, BEAM4].map(|d| reference.caption_ids(&model, key, d));
                assert_eq!(ids, whole_ids, "{what}: ids");
            }
        }
    }
}

/// The wasm build's own kernels (src/model/matmul.rs, elementwise.rs), here in their portable
/// form, for every product down to single rows, whole and split: transformers' results and ids.
#[test]
fn own_kernels_match_transformers() {
    for name in ["tiny-coco", "tiny-vatex"] {
        let reference = Reference::load(name);
        let mut model = load_dir(&model_dir(name), &Device::Cpu).unwrap();
        for case in reference.cases() {
            for kernel in OWN_KERNELS {
                let mut whole = None;
                for parts in [1, 3] {
                    let policy = kernel.select(own_loops(parts));
                    model.set_policy(policy.clone());
                    let what = format!("{name} {} ({parts} parts)", kernel.name);
                    let (features, logits) =
                        assert_matches_transformers(&model, &reference, case, &what);
                    let stats = policy.stats();
                    assert!(stats.kernel_products() > 0, "the kernel did not run");
                    assert_eq!(stats.splits() > 0, parts > 1, "{what}: splits");
                    // Every output value is computed the same way whichever thread computes it.
                    let results = [features, logits]
                        .map(|t| t.flatten_all().unwrap().to_vec1::<f32>().unwrap());
                    match &whole {
                        None => whole = Some(results),
                        Some(whole) => assert!(whole == &results, "{what}: not the whole result"),
                    }
                }
            }
        }
    }
}

/// Two models in one process, one split into 3 parts and one whole, captioning at the same time on
/// two threads, each computing by its own policy (the blocked kernel for every product, which gives
/// the same bits however a product is shared out): their features, logits and ids are bit for bit
/// the same, and each policy counts its own model's work alone: the same products, splits for the
/// split one only.
#[test]
fn models_with_different_policies_run_side_by_side() {
    let reference = Reference::load("tiny-coco");
    let blocked = &OWN_KERNELS[0];
    let (split, whole) = (blocked.select(own_loops(3)), blocked.select(own_loops(1)));
    let load = |policy: &Policy| {
        load_dir_with_policy(&model_dir("tiny-coco"), &Device::Cpu, policy.clone()).unwrap()
    };
    let (split_model, whole_model) = (load(&split), load(&whole));
    let start = std::sync::Barrier::new(2);
    let run = |model: &Captioner| {
        start.wait();
        let mut results = Vec::new();
        for case in reference.cases() {
            let key = case["key"].as_str().unwrap();
            let (features, logits) = reference.features_and_logits(model.model(), key);
            let bits = [features, logits].map(|t| {
                let values = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                values.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
            });
            results.push((bits, reference.caption_ids(model, key, BEAM4)));
        }
        results
    };
    let (split_results, whole_results) = std::thread::scope(|s| {
        let split_run = s.spawn(|| run(&split_model));
        let whole_run = s.spawn(|| run(&whole_model));
        (split_run.join().unwrap(), whole_run.join().unwrap())
    });
    assert!(split_results == whole_results, "split and whole differ");
    let (split, whole) = (split.stats(), whole.stats());
    assert!(split.splits() > 0, "the split model did not split");
    assert_eq!(whole.splits(), 0, "the whole model's policy counted splits");
    assert!(whole.kernel_products() > 0, "the kernel did not run");
    assert_eq!(split.kernel_products(), whole.kernel_products());
}

/// `split_everything(parts)` with the wasm build's elementwise loops too.
fn own_loops(parts: usize) -> Policy {
    split_everything(parts).with_own_elementwise(true)
}

/// Which of matmul.rs's loops every product of a test run takes.
struct OwnKernel {
    name: &'static str,
    blocked: bool,
}

/// The blocked kernel (the wasm build's for 8 rows or more), then the matrix-vector loop (its
/// decoding path), each for every product however many rows it has.
const OWN_KERNELS: [OwnKernel; 2] = [
    OwnKernel {
        name: "blocked kernel",
        blocked: true,
    },
    OwnKernel {
        name: "few-rows loop",
        blocked: false,
    },
];

impl OwnKernel {
    /// `policy` with every product on this loop.
    fn select(&self, policy: Policy) -> Policy {
        policy
            .with_kernel_min_rows(if self.blocked { 1 } else { usize::MAX })
            .with_few_rows_below(if self.blocked { 0 } else { usize::MAX })
    }
}
