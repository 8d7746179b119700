//! The native build's paths for products, each against transformers: for f32, the AVX-512 kernel
//! (src/model/avx512.rs, chosen at run time where the CPU has it) for every product down to two
//! rows, and candle's kernels, which every other CPU runs; for q8_0, the integer kernel
//! (src/model/int8.rs: portable everywhere, AVX-512 VNNI where the CPU has it) and candle's. A test
//! binary of its own: the kernel choice is process-wide (and the tests take turns at it).

// Native only: these tests read fixtures from disk (the wasm tests are tests/wasm.rs).
#![cfg(not(target_arch = "wasm32"))]

mod common;

use candle_core::{Device, Tensor};
use common::{ids, max_abs_diff, model_dir, Reference, TempDir};
use gitcap::checkpoint::{load_dir, load_gguf};
use gitcap::gguf::QuantType;
use gitcap::model::{int8, matmul};
use gitcap::quantize::quantize_checkpoint;
use gitcap::{Captioner, Decoding};

const TOL: f32 = 1e-4;

/// Held by each test while it sets the process-wide kernel choice.
static KERNEL_CHOICE: std::sync::Mutex<()> = std::sync::Mutex::new(());

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
fn avx512_kernel_and_candle_both_match_transformers() {
    let _turn = KERNEL_CHOICE.lock().unwrap_or_else(|e| e.into_inner());
    let wide_here = matmul::wide(usize::MAX / 2);
    if !wide_here {
        println!("this CPU has no AVX-512 F: only candle's path is checked");
    }
    for name in ["tiny-coco", "tiny-vatex"] {
        let reference = Reference::load(name);
        let model = load_dir(&model_dir(name), &Device::Cpu).unwrap();
        for case in reference.cases() {
            let key = case["key"].as_str().unwrap();
            matmul::set_wide_min_rows(Some(usize::MAX));
            let before = matmul::products();
            let (f_candle, l_candle) =
                assert_matches_transformers(&model, &reference, key, &format!("{name} candle"));
            assert_eq!(matmul::products(), before, "candle's path ran the kernel");
            if wide_here {
                matmul::set_wide_min_rows(Some(2));
                let before = matmul::products();
                let (f_wide, l_wide) =
                    assert_matches_transformers(&model, &reference, key, &format!("{name} avx512"));
                assert!(
                    matmul::products() > before,
                    "the AVX-512 kernel did not run"
                );
                println!(
                    "{name} {key}: avx512 vs candle: features {:.1e}, logits {:.1e}",
                    max_abs_diff(&f_wide, &f_candle),
                    max_abs_diff(&l_wide, &l_candle)
                );
            }
            matmul::set_wide_min_rows(None);
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
    let _turn = KERNEL_CHOICE.lock().unwrap_or_else(|e| e.into_inner());
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
    let model = load_gguf(&file, &Device::Cpu).unwrap();
    let want_features = reference.tensor("case0.image_features");
    let want_logits = reference.tensor("case0.logits");
    let run = |what: &str| {
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

    int8::set_min_rows(Some(usize::MAX));
    let before = int8::products();
    let (f_candle, l_candle) = run("candle");
    assert_eq!(
        int8::products(),
        before,
        "candle's path ran the integer kernel"
    );

    int8::set_min_rows(Some(1));
    int8::set_portable(true);
    let before = int8::products();
    let (f_portable, l_portable) = run("portable int8");
    assert!(int8::products() > before, "the integer kernel did not run");
    println!(
        "portable int8 vs candle's q8_0: features {:.2e}, logits {:.2e}",
        rel_err(&f_portable, &f_candle),
        rel_err(&l_portable, &l_candle)
    );

    int8::set_portable(false);
    let best = int8::Kernel::best();
    if best == int8::Kernel::Portable {
        println!("this CPU has no faster integer form: only the portable one is checked");
    } else {
        let (f_best, l_best) = run(best.describe());
        assert_eq!(max_abs_diff(&f_best, &f_portable), 0.0, "{best:?} features");
        assert_eq!(max_abs_diff(&l_best, &l_portable), 0.0, "{best:?} logits");
    }
    int8::set_min_rows(None);
}
