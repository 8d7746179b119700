//! gitcap's own WordPiece tokenizer against transformers' GIT tokenizer (tokenizers' BERT
//! pipeline) on awkward prompts and id sequences (tests/fixtures/reference/tokenizer.json, made by
//! tests/make_tokenizer_fixtures.py), and its refusals of tokenizers it does not implement.
//!
//! Streamed caption fragments must concatenate to exactly the decoded caption, with the real GIT
//! (BERT uncased) vocabulary, including the pieces whose decoding rewrites earlier text:
//! `##` continuations, punctuation that pulls spaces in, and apostrophes ("don ' t" → "don't").

use crate::common;

use gitcap::tokenizer::{CaptionTokenizer, TextStream};

fn tokenizer() -> CaptionTokenizer {
    CaptionTokenizer::from_tokenizer_json(
        &std::fs::read(common::model_dir("tiny-coco").join("tokenizer.json")).unwrap(),
    )
    .unwrap()
}

fn stream(tok: &CaptionTokenizer, ids: &[u32]) -> (Vec<String>, String) {
    let mut s = TextStream::new();
    let mut fragments = Vec::new();
    for &id in ids {
        if let Some(f) = s.push(tok, id).unwrap() {
            fragments.push(f);
        }
    }
    if let Some(f) = s.finish(tok).unwrap() {
        fragments.push(f);
    }
    (fragments, tok.decode(ids).unwrap())
}

#[test]
fn fragments_concatenate_to_the_decoded_text() {
    for clean_up in [false, true] {
        fragments_concatenate_with(&tokenizer().with_clean_up_spaces(clean_up));
    }
}

fn fragments_concatenate_with(tok: &CaptionTokenizer) {
    let words = [
        "a", "dog", "playing", "with", "frisbee", "don", "n", "t", "s", "re", "ve", "m", "'", ".",
        ",", "?", "!", "##s", "##ing", "##ed", "it", "man", "[SEP]", "[CLS]", "[PAD]",
    ];
    // Special tokens are not produced by encode_prompt; they have fixed ids.
    let ids: Vec<u32> = words
        .iter()
        .map(|w| match *w {
            "[SEP]" => 102,
            "[CLS]" => 101,
            "[PAD]" => 0,
            _ => tok.encode_prompt(w).unwrap()[0],
        })
        .collect();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for round in 0..3000 {
        let len = 1 + (round % 24);
        let seq: Vec<u32> = (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                ids[(state % ids.len() as u64) as usize]
            })
            .collect();
        let (fragments, text) = stream(tok, &seq);
        assert_eq!(
            fragments.concat(),
            text,
            "ids {seq:?} fragments {fragments:?}"
        );
    }
}

#[test]
fn known_rewrites_stream_correctly() {
    // Expected texts are transformers 5's BertTokenizer.decode(skip_special_tokens=True) with
    // clean_up_tokenization_spaces False (its default) and True, on these very ids.
    let cases: [(&str, &[u32], &str); 3] = [
        (
            "a man doesn ' t like it.",
            &[1037, 2158, 2987, 1005, 1056, 2066, 2009, 1012],
            "a man doesn't like it.",
        ),
        (
            "it ' s a dog, isn ' t it?",
            &[
                2009, 1005, 1055, 1037, 3899, 1010, 3475, 1005, 1056, 2009, 1029,
            ],
            "it's a dog, isn't it?",
        ),
        (
            "i ' m sure we ' re fine, ok?",
            &[
                1045, 1005, 1049, 2469, 2057, 1005, 2128, 2986, 1010, 7929, 1029,
            ],
            "i'm sure we're fine, ok?",
        ),
    ];
    for (plain, ids, cleaned) in cases {
        for (clean_up, want) in [(false, plain), (true, cleaned)] {
            let tok = tokenizer().with_clean_up_spaces(clean_up);
            let (fragments, text) = stream(&tok, ids);
            assert_eq!(text, want);
            assert_eq!(fragments.concat(), text);
        }
    }
    let tok = tokenizer();
    // Words arrive before the caption ends: streaming, not one blob at the end.
    let ids = tok
        .encode_prompt("a dog playing with a frisbee in the park")
        .unwrap();
    let (fragments, _) = stream(&tok, &ids);
    assert!(fragments.len() >= 6, "{fragments:?}");
}

fn reference() -> serde_json::Value {
    let path = common::root()
        .join("fixtures")
        .join("reference/tokenizer.json");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn ids_of(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|id| id.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn prompts_encode_to_transformers_ids() {
    let from_json = tokenizer();
    let from_vocab = CaptionTokenizer::from_vocab_txt(
        &std::fs::read(common::root().join("fixtures").join("vocab.txt")).unwrap(),
    )
    .unwrap();
    let cases = reference();
    let cases = cases["encode"].as_array().unwrap();
    assert!(cases.len() >= 30);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let expected = ids_of(&case["ids"]);
        for tok in [&from_json, &from_vocab] {
            assert_eq!(
                tok.encode_prompt(text).unwrap(),
                expected,
                "prompt {text:?}"
            );
        }
    }
}

#[test]
fn ids_decode_to_transformers_text() {
    let cases = reference();
    let cases = cases["decode"].as_array().unwrap();
    assert!(cases.len() >= 50);
    for clean_up in [false, true] {
        let tok = tokenizer().with_clean_up_spaces(clean_up);
        let key = if clean_up { "text_clean_up" } else { "text" };
        for case in cases {
            let ids = ids_of(&case["ids"]);
            let expected = case[key].as_str().unwrap();
            assert_eq!(
                tok.decode(&ids).unwrap(),
                expected,
                "ids {ids:?}, clean-up {clean_up}"
            );
        }
    }
}

#[test]
fn ids_outside_the_vocabulary_are_skipped() {
    let tok = tokenizer();
    assert_eq!(tok.vocab_size(), 30522);
    assert_eq!(tok.decode(&[1037, 30522, 3899, u32::MAX]).unwrap(), "a dog");
}

#[test]
fn other_kinds_of_tokenizer_are_refused_with_what_differs() {
    let json: serde_json::Value = serde_json::from_slice(
        &std::fs::read(common::model_dir("tiny-coco").join("tokenizer.json")).unwrap(),
    )
    .unwrap();
    let cases: [(&str, serde_json::Value, &str); 5] = [
        ("/model/type", "BPE".into(), "its model is \"BPE\""),
        (
            "/normalizer/type",
            "NFKC".into(),
            "its normalizer is \"NFKC\"",
        ),
        (
            "/pre_tokenizer/type",
            "ByteLevel".into(),
            "its pre-tokenizer is \"ByteLevel\"",
        ),
        (
            "/decoder/type",
            "Metaspace".into(),
            "its decoder is \"Metaspace\"",
        ),
        (
            "/model/unk_token",
            "<unk>".into(),
            "the unknown token \"<unk>\" is not in the vocabulary",
        ),
    ];
    for (pointer, value, message) in cases {
        let mut changed = json.clone();
        *changed.pointer_mut(pointer).unwrap() = value;
        let err = CaptionTokenizer::from_tokenizer_json(changed.to_string().as_bytes())
            .err()
            .unwrap_or_else(|| panic!("{pointer} changed, and the tokenizer was accepted"))
            .to_string();
        assert!(err.contains(message), "{pointer}: {err}");
    }
    let err = CaptionTokenizer::from_tokenizer_json(b"{\"model\": 3")
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("tokenizer.json could not be read"), "{err}");
}
