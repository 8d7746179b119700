//! GIT's tokenizer (BERT uncased WordPiece) from `tokenizer.json`, or from `vocab.txt` for
//! checkpoints that ship only that, and incremental detokenization for streaming captions.

use tokenizers::Tokenizer;

use crate::{Error, Result};

pub struct CaptionTokenizer {
    inner: Tokenizer,
    /// transformers' `clean_up_tokenization_spaces` from tokenizer_config.json (default false in
    /// transformers 5): remove spaces before punctuation and around apostrophes after decoding.
    clean_up_spaces: bool,
}

/// The special tokens transformers' BertTokenizer registers (and skips when decoding).
const SPECIAL: [&str; 5] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];

impl CaptionTokenizer {
    pub fn from_tokenizer_json(bytes: &[u8]) -> Result<Self> {
        let inner = Tokenizer::from_bytes(bytes)
            .map_err(|e| Error::model(format!("tokenizer.json could not be read: {e}")))?;
        Ok(Self {
            inner,
            clean_up_spaces: false,
        })
    }

    /// Applies what `tokenizer_config.json` says about decoding.
    pub fn with_tokenizer_config(mut self, bytes: &[u8]) -> Result<Self> {
        let v: serde_json::Value = serde_json::from_slice(bytes)
            .map_err(|e| Error::model(format!("tokenizer_config.json is not valid JSON: {e}")))?;
        self.clean_up_spaces = v
            .get("clean_up_tokenization_spaces")
            .and_then(|b| b.as_bool())
            .unwrap_or(false);
        Ok(self)
    }

    pub fn with_clean_up_spaces(mut self, on: bool) -> Self {
        self.clean_up_spaces = on;
        self
    }

    /// Builds the same tokenizer transformers' `BertTokenizer(vocab=..., do_lower_case=True)` makes.
    pub fn from_vocab_txt(bytes: &[u8]) -> Result<Self> {
        let text =
            std::str::from_utf8(bytes).map_err(|_| Error::model("vocab.txt is not UTF-8 text"))?;
        let mut vocab = serde_json::Map::new();
        for (id, line) in text.lines().enumerate() {
            let token = line.trim_end_matches('\r');
            vocab
                .entry(token.to_string())
                .or_insert_with(|| (id as u64).into());
        }
        let mut added = Vec::new();
        for token in SPECIAL {
            let id = vocab.get(token).and_then(|v| v.as_u64()).ok_or_else(|| {
                Error::model(format!(
                    "vocab.txt has no {token} token; is it a BERT vocabulary?"
                ))
            })?;
            added.push(serde_json::json!({"id": id, "content": token, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true}));
        }
        let json = serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
            "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true,
                           "strip_accents": null, "lowercase": true},
            "pre_tokenizer": {"type": "BertPreTokenizer"},
            "post_processor": null,
            "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
            "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                      "max_input_chars_per_word": 100, "vocab": vocab},
        });
        Self::from_tokenizer_json(json.to_string().as_bytes())
    }

    /// Token ids of a prompt, without special tokens (the caller puts [CLS] in front).
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| Error::invalid(format!("the prompt could not be tokenized: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text of `ids` with special tokens skipped, `##` pieces joined and spaces cleaned up.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let text = self
            .inner
            .decode(ids, true)
            .map_err(|e| Error::model(format!("token ids could not be decoded: {e}")))?;
        Ok(if self.clean_up_spaces {
            clean_up_tokenization(&text)
        } else {
            text
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

/// transformers' `clean_up_tokenization`, in its order.
fn clean_up_tokenization(text: &str) -> String {
    [
        (" .", "."),
        (" ?", "?"),
        (" !", "!"),
        (" ,", ","),
        (" ' ", "'"),
        (" n't", "n't"),
        (" 'm", "'m"),
        (" 's", "'s"),
        (" 've", "'ve"),
        (" 're", "'re"),
    ]
    .iter()
    .fold(text.to_string(), |t, (from, to)| t.replace(from, to))
}

/// Turns a growing list of generated ids into text fragments whose concatenation is exactly the
/// final decoded text. Decoding joins `##` pieces and removes spaces before punctuation and around
/// apostrophes, so the tail of the text can still change when the next token arrives; a fragment
/// therefore stops before the last word (before the last two when the last is an apostrophe, which
/// may yet pull the word before it in, as in "don ' t" → "don't").
#[derive(Debug, Clone, Default)]
pub struct TextStream {
    ids: Vec<u32>,
    emitted: String,
}

impl TextStream {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds one generated id; returns the text that became final, if any.
    pub fn push(&mut self, tokenizer: &CaptionTokenizer, id: u32) -> Result<Option<String>> {
        self.ids.push(id);
        let text = tokenizer.decode(&self.ids)?;
        let stable = stable_prefix(&text);
        Ok(self.advance(&text[..stable]))
    }

    /// Replaces the whole sequence (beam search settles at the end) and flushes everything.
    pub fn finish_with(
        &mut self,
        tokenizer: &CaptionTokenizer,
        ids: &[u32],
    ) -> Result<Option<String>> {
        self.ids = ids.to_vec();
        self.finish(tokenizer)
    }

    /// Everything not yet emitted.
    pub fn finish(&mut self, tokenizer: &CaptionTokenizer) -> Result<Option<String>> {
        let text = tokenizer.decode(&self.ids)?;
        Ok(self.advance(&text))
    }

    pub fn text(&self) -> &str {
        &self.emitted
    }

    fn advance(&mut self, upto: &str) -> Option<String> {
        // Should the decoded text ever rewrite something already sent, send nothing until it
        // extends what was sent again; `finish` then reports the difference.
        if upto.len() > self.emitted.len() && upto.starts_with(self.emitted.as_str()) {
            let fragment = upto[self.emitted.len()..].to_string();
            self.emitted.push_str(&fragment);
            Some(fragment)
        } else {
            None
        }
    }
}

/// Byte length of the part of `text` that later tokens cannot change.
fn stable_prefix(text: &str) -> usize {
    let Some(last_space) = text.rfind(' ') else {
        return 0;
    };
    let last_word = &text[last_space + 1..];
    if last_word == "'" || last_word.ends_with('\'') {
        text[..last_space].rfind(' ').unwrap_or(0)
    } else {
        last_space
    }
}

#[cfg(test)]
mod tests {
    use super::stable_prefix;

    #[test]
    fn holds_back_words_that_may_still_change() {
        assert_eq!(stable_prefix("a dog"), 1);
        assert_eq!(stable_prefix("dog"), 0);
        assert_eq!(stable_prefix("do n '"), 2);
    }
}
