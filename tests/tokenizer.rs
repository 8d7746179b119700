//! Streamed caption fragments must concatenate to exactly the decoded caption, with the real GIT
//! (BERT uncased) vocabulary, including the pieces whose decoding rewrites earlier text:
//! `##` continuations, punctuation that pulls spaces in, and apostrophes ("don ' t" → "don't").

mod common;

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
