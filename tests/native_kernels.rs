//! The native build's paths for products, each against transformers: for f32, the wide kernel
//! (src/model/wide/, chosen at run time: AVX-512 F, else AVX2 with FMA; the AVX2 form also run on
//! AVX-512 CPUs) for every product down to two rows, and candle's kernels, which every other CPU
//! runs; for q8_0, the integer kernel
//! (src/model/int8.rs: portable everywhere, AVX-512 VNNI where the CPU has it) and candle's. Each
//! run gives the model the policy of the path it checks, and checks that policy's statistics.

// Native only: these tests read fixtures from disk (the wasm tests are tests/wasm.rs).
#![cfg(not(target_arch = "wasm32"))]

mod common;

use candle_core::{Device, Tensor};
use common::{ids, max_abs_diff, model_dir, Reference, TempDir};
use gitcap::checkpoint::{load_dir, load_dir_with_policy, load_gguf};
use gitcap::gguf::QuantType;
use gitcap::model::{int8, matmul, Policy, WideKernel};
use gitcap::quantize::quantize_checkpoint;
use gitcap::{Captioner, Decoding};

const TOL: f32 = 1e-4;

/// Features and logits within 1e-4 of transformers', greedy and 4-beam ids identical.
fn assert_matches_transformers(
    model: &Captioner,
    reference: &Reference,
    key: &str,
    what: &str,
) -> (Tensor, Tensor) {
    let case = reference.case(key);
    let (features, logits) = reference.features_and_logits(model.model(), key);
    let err = max_abs_diff(
        &features.squeeze(0).unwrap(),
        reference.tensor(&format!("{key}.image_features")),
    );
    println!("{what} {key}: image features vs transformers {err:.1e}");
    assert!(err < TOL, "{what} {key}: image features differ by {err}");
    if let Some(want) = reference.tensors.get(&format!("{key}.logits")) {
        let err = max_abs_diff(&logits, want);
        println!("{what} {key}: logits vs transformers {err:.1e}");
        assert!(err < TOL, "{what} {key}: logits differ by {err}");
    }
    for (decoding, name) in [
        (Decoding::Greedy, "greedy"),
        (
            Decoding::Beam {
                num_beams: 4,
                length_penalty: 0.6,
            },
            "beam4",
        ),
    ] {
        assert_eq!(
            reference.caption_ids(model, key, decoding),
            ids(&case[name]["token_ids"]),
            "{what} {key}: {name} ids"
        );
    }
    (features, logits)
}

#[test]
fn wide_kernel_forms_and_candle_all_match_transformers() {
    // Each form of the wide kernel this CPU runs: the widest (AVX-512 where there is one) and
    // the AVX2 form, which an AVX-512 CPU also runs.
    let forms: Vec<(WideKernel, &str)> =
        [(WideKernel::Widest, "widest"), (WideKernel::Avx2, "avx2")]
            .into_iter()
            .filter(|(kernel, _)| {
                matmul::wide(&Policy::default().with_wide_kernel(*kernel), usize::MAX / 2)
            })
            .collect();
    if forms.is_empty() {
        println!("this CPU has neither AVX-512 F nor AVX2 with FMA: only candle's path is checked");
    }
    for name in ["tiny-coco", "tiny-vatex"] {
        let reference = Reference::load(name);
        for case in reference.cases() {
            let key = case["key"].as_str().unwrap();
            // Loaded per policy, so that the image encoder's weights are packed in its form.
            let candle = Policy::default().with_wide_kernel(WideKernel::Off);
            let mut model = load_dir(&model_dir(name), &Device::Cpu).unwrap();
            model.set_policy(candle.clone());
            let (f_candle, l_candle) =
                assert_matches_transformers(&model, &reference, key, &format!("{name} candle"));
            assert_eq!(
                candle.stats().kernel_products(),
                0,
                "candle's path ran the kernel"
            );
            for (kernel, label) in &forms {
                let wide = Policy::default().with_wide_kernel(*kernel);
                let model =
                    load_dir_with_policy(&model_dir(name), &Device::Cpu, wide.clone()).unwrap();
                let (f_wide, l_wide) = assert_matches_transformers(
                    &model,
                    &reference,
                    key,
                    &format!("{name} {label}"),
                );
                assert!(
                    wide.stats().kernel_products() > 0,
                    "the wide kernel ({label}) did not run"
                );
                println!(
                    "{name} {key}: {label} vs candle: features {:.1e}, logits {:.1e}",
                    max_abs_diff(&f_wide, &f_candle),
                    max_abs_diff(&l_wide, &l_candle)
                );
            }
        }
    }
}

/// ‖a − b‖ / ‖b‖
fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
    let norm = |t: &Tensor| {
        t.sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .sqrt()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    norm(&(a - b).unwrap()) / norm(b)
}

/// tiny-coco as q8_0 (its 32- and 64-wide vision matrices are q8_0) with every q8_0 product, down
/// to one row, through the integer kernel: the portable form and the best one here give the same
/// bits, and both stay as close to transformers' f32 model as candle's q8_0 path does (whose
/// kernels also quantize the activations, per block of 32, to 8 bits).
#[test]
fn integer_kernel_and_candle_both_match_transformers_within_q8_0() {
    let reference = Reference::load("tiny-coco");
    let dir = TempDir::new("native-kernels-q8_0");
    let file = dir.0.join("tiny-coco-q8_0.gguf");
    quantize_checkpoint(
        &model_dir("tiny-coco"),
        &file,
        QuantType::Q8_0,
        "tiny-coco",
        &mut |_| {},
    )
    .unwrap();
    let mut model = load_gguf(&file, &Device::Cpu).unwrap();
    let want_features = reference.tensor("case0.image_features");
    let want_logits = reference.tensor("case0.logits");
    let run = |model: &Captioner, what: &str| {
        let (features, logits) = reference.features_and_logits(model.model(), "case0");
        let features = features.squeeze(0).unwrap();
        let (fe, le) = (
            rel_err(&features, want_features),
            rel_err(&logits, want_logits),
        );
        println!("q8_0 {what}: vs transformers' f32: features {fe:.2e}, logits {le:.2e}");
        // The bound of tests/native/quantize.rs for candle's q8_0 path on this model.
        assert!(fe < 3e-2 && le < 3e-2, "q8_0 {what}: {fe} {le}");
        (features, logits)
    };

    let candle = Policy::default().with_int8_min_rows(usize::MAX);
    model.set_policy(candle.clone());
    let (f_candle, l_candle) = run(&model, "candle");
    assert_eq!(
        candle.stats().int8_products(),
        0,
        "candle's path ran the integer kernel"
    );

    // Every q8_0 product through the integer kernel (a policy of its own each time: clones share
    // their statistics).
    let every_product = || Policy::default().with_int8_min_rows(1);
    let portable = every_product().with_portable_int8(true);
    model.set_policy(portable.clone());
    let (f_portable, l_portable) = run(&model, "portable int8");
    assert!(
        portable.stats().int8_products() > 0,
        "the integer kernel did not run"
    );
    // fc2's blocks (64 inputs) are paired by the quantizer: its products of 17 rows step per pair.
    assert!(
        portable.stats().int8_paired_products() > 0,
        "no product stepped per pair of blocks"
    );
    println!(
        "portable int8 vs candle's q8_0: features {:.2e}, logits {:.2e}",
        rel_err(&f_portable, &f_candle),
        rel_err(&l_portable, &l_candle)
    );

    // The relaxed SIMD page's arithmetic (`GITCAP_INT8=relaxed`): activations at ±63 in the image
    // encoder, while the text decoder holds its ±127 (a form that takes them). From the same
    // features its logits are the ±127 run's, bit for bit; with the decoder at ±63 too they are
    // not, so the decoder's levels are what decides.
    let at = |levels| int8::Activations {
        levels,
        per_row: false,
    };
    let logits_from = |model: &Captioner, features: &Tensor| -> Tensor {
        let m = model.model();
        let prefix = m.image_prefix(features).unwrap();
        let input = common::ids(&reference.case("case0")["logits_input_ids"]);
        let t = Tensor::new(input.as_slice(), m.device())
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        m.all_logits(&t, &prefix, &mut gitcap::model::TextCache::new())
            .unwrap()
            .squeeze(0)
            .unwrap()
    };
    let relaxed = || {
        every_product()
            .with_portable_int8(true)
            .with_int8_activations(at(63))
    };
    model.set_policy(relaxed());
    let f_relaxed = model
        .model()
        .encode_image(&reference.pixels("case0"))
        .unwrap();
    assert!(
        max_abs_diff(&f_relaxed.squeeze(0).unwrap(), &f_portable) > 0.0,
        "±63 in the image encoder changed nothing"
    );
    let f_at_127 = f_portable.unsqueeze(0).unwrap();
    assert_eq!(
        max_abs_diff(&logits_from(&model, &f_at_127), &l_portable),
        0.0,
        "the text decoder did not keep ±127"
    );
    model.set_policy(relaxed().with_text_int8_activations(at(63)));
    assert!(
        max_abs_diff(&logits_from(&model, &f_at_127), &l_portable) > 0.0,
        "±63 in the text decoder changed nothing"
    );

    let fastest = every_product();
    let best = int8::kernel(&fastest);
    if best == int8::Kernel::Portable {
        println!("this CPU has no faster integer form: only the portable one is checked");
    } else {
        model.set_policy(fastest.clone());
        let (f_best, l_best) = run(&model, best.describe());
        assert!(
            fastest.stats().int8_products() > 0,
            "the integer kernel did not run"
        );
        assert_eq!(max_abs_diff(&f_best, &f_portable), 0.0, "{best:?} features");
        assert_eq!(max_abs_diff(&l_best, &l_portable), 0.0, "{best:?} logits");
    }
}
