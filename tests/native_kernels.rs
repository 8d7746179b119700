//! The native build's two paths for f32 products, each against transformers: the AVX-512 kernel
//! (src/model/avx512.rs, chosen at run time where the CPU has it) for every product down to two
//! rows, and candle's kernels, which every other CPU runs. A test binary of its own: the kernel
//! choice is process-wide.

mod common;

use candle_core::{Device, Tensor};
use common::{ids, max_abs_diff, model_dir, Reference};
use gitcap::checkpoint::load_dir;
use gitcap::model::matmul;
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
fn avx512_kernel_and_candle_both_match_transformers() {
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
