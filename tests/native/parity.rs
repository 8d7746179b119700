//! gitcap against transformers' GitForCausalLM on small random checkpoints (see
//! tests/make_fixtures.py): image features and logits within 1e-4, identical token ids and text.
//! GITCAP_TEST_DEVICE=cuda runs the model on a GPU instead (tools/cuda-parity.sh): within 1e-3.

use crate::common;

use candle_core::{Device, Tensor};
use common::{ids, max_abs_diff, model_dir, test_device, tolerance, Reference};
use gitcap::captioner::CaptionOptions;
use gitcap::checkpoint::load_dir;
use gitcap::model::TextCache;
use gitcap::Decoding;

const MODELS: [&str; 2] = ["tiny-coco", "tiny-vatex"];

fn options(case: &serde_json::Value) -> CaptionOptions {
    let o = &case["options"];
    let max_new_tokens = o["max_new_tokens"].as_u64().unwrap() as usize;
    let decoding = match o.get("num_beams").and_then(|b| b.as_u64()) {
        Some(n) => Decoding::Beam {
            num_beams: n as usize,
            length_penalty: o["length_penalty"].as_f64().unwrap(),
        },
        None => Decoding::Greedy,
    };
    CaptionOptions {
        max_new_tokens,
        decoding,
        prompt: case
            .get("prompt")
            .and_then(|p| p.as_str())
            .map(String::from),
    }
}

#[test]
fn image_features_and_logits_match_transformers() {
    for name in MODELS {
        let reference = Reference::load(name);
        let captioner = load_dir(&model_dir(name), &test_device()).unwrap();
        let model = captioner.model();
        for case in reference.cases() {
            let key = case["key"].as_str().unwrap();
            let (features, logits) = reference.features_and_logits(model, key);
            let err = max_abs_diff(
                &features.squeeze(0).unwrap(),
                reference.tensor(&format!("{key}.image_features")),
            );
            println!("{name} {key}: image features max abs error {err:.2e}");
            assert!(
                err < tolerance(),
                "{name} {key}: image features differ by {err}"
            );

            let (got, want) = match reference.tensors.get(&format!("{key}.logits")) {
                Some(all) => (logits, all.clone()),
                None => (
                    logits.get(logits.dim(0).unwrap() - 1).unwrap(),
                    reference.tensor(&format!("{key}.last_logits")).clone(),
                ),
            };
            let err = max_abs_diff(&got, &want);
            println!("{name} {key}: logits max abs error {err:.2e}");
            assert!(err < tolerance(), "{name} {key}: logits differ by {err}");
        }
    }
}

#[test]
fn cached_decoding_gives_the_logits_of_a_full_pass() {
    // Feeding tokens one at a time through the caches must equal one pass over the whole sequence.
    let reference = Reference::load("tiny-coco");
    let captioner = load_dir(&model_dir("tiny-coco"), &test_device()).unwrap();
    let model = captioner.model();
    let pixels = reference.tensor("case0.pixel_values").unsqueeze(0).unwrap();
    let prefix = model
        .image_prefix(&model.encode_image(&pixels).unwrap())
        .unwrap();
    let input = ids(&reference.cases()[0]["logits_input_ids"]);
    let mut cache = TextCache::new();
    let want = reference.tensor("case0.logits");
    for (i, id) in input.iter().enumerate() {
        let t = Tensor::new(&[[*id]], model.device()).unwrap();
        let step = model
            .next_logits(&t, &prefix, &mut cache)
            .unwrap()
            .squeeze(0)
            .unwrap();
        let err = max_abs_diff(&step, &want.get(i).unwrap());
        assert!(
            err < tolerance(),
            "position {i}: cached logits differ by {err}"
        );
    }
}

#[test]
fn generated_ids_and_text_match_transformers() {
    for name in MODELS {
        let reference = Reference::load(name);
        let captioner = load_dir(&model_dir(name), &test_device()).unwrap();
        for case in reference.cases() {
            let key = case["key"].as_str().unwrap();
            let prefix = captioner.encode_pixels(&reference.pixels(key)).unwrap();
            for run in ["greedy", "beam4", "beam3_lp1", "prompt_greedy"] {
                let expected = &case[run];
                let mut streamed = String::new();
                let caption = captioner
                    .caption_encoded(&prefix, &options(expected), &mut |t| {
                        streamed.push_str(t);
                        true
                    })
                    .unwrap();
                assert_eq!(
                    caption.token_ids,
                    ids(&expected["token_ids"]),
                    "{name} {key} {run}: token ids"
                );
                assert_eq!(
                    caption.text,
                    expected["text"].as_str().unwrap(),
                    "{name} {key} {run}: text"
                );
                assert_eq!(
                    streamed, caption.text,
                    "{name} {key} {run}: streamed fragments"
                );
            }
        }
    }
}

#[test]
fn sampling_is_seeded_and_top_k_1_is_greedy() {
    let reference = Reference::load("tiny-coco");
    let captioner = load_dir(&model_dir("tiny-coco"), &Device::Cpu).unwrap();
    let pixels = reference.tensor("case1.pixel_values").unsqueeze(0).unwrap();
    let prefix = captioner.encode_pixels(&pixels).unwrap();
    let sample = |seed, top_k, temperature| {
        let opts = CaptionOptions {
            decoding: Decoding::Sample {
                temperature,
                top_k,
                top_p: None,
                seed,
            },
            ..Default::default()
        };
        captioner
            .caption_encoded(&prefix, &opts, &mut |_| true)
            .unwrap()
            .token_ids
    };
    // Keeping only the best token makes sampling greedy, whatever the seed.
    assert_eq!(
        sample(7, Some(1), 1.0),
        ids(&reference.cases()[1]["greedy"]["token_ids"])
    );
    // The same seed repeats; a high temperature over the whole vocabulary almost surely differs
    // between seeds (30522 tokens, 20 draws).
    assert_eq!(sample(42, None, 5.0), sample(42, None, 5.0));
    assert_ne!(sample(42, None, 5.0), sample(43, None, 5.0));
}

/// `encode_observed` reports its stages in order, once each, and its prefix is `encode`'s.
#[test]
fn encoding_reports_its_stages_in_order() {
    use gitcap::captioner::EncodeStage;
    let model = load_dir(&model_dir("tiny-coco"), &Device::Cpu).unwrap();
    let bytes = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/images/chelsea.png"
    ));
    let image = gitcap::image::decode_image(&bytes.unwrap(), &Default::default()).unwrap();
    let mut stages = Vec::new();
    let observed = model
        .encode_observed(std::slice::from_ref(&image), &mut |s| stages.push(s))
        .unwrap();
    assert_eq!(
        stages,
        [
            EncodeStage::Preprocessed,
            EncodeStage::ImageEncoded,
            EncodeStage::PrefixComputed
        ]
    );
    let opts = CaptionOptions {
        max_new_tokens: 8,
        decoding: Decoding::Greedy,
        prompt: None,
    };
    let plain = model.encode(std::slice::from_ref(&image)).unwrap();
    let caption = |p| {
        model
            .caption_encoded(p, &opts, &mut |_| true)
            .unwrap()
            .token_ids
    };
    assert_eq!(caption(&observed), caption(&plain));
}
