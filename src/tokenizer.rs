//! GIT's tokenizer (BERT uncased WordPiece) from `tokenizer.json`, or from `vocab.txt` for
//! checkpoints that ship only that, and incremental detokenization for streaming captions.
//!
//! The pipeline of Hugging Face `tokenizers` for BERT (the library transformers runs for GIT), step
//! for step and with the same Unicode tables (`unicode_categories`, and the NFD of
//! `unicode-normalization-alignments`): added tokens cut out of the raw text, `BertNormalizer`,
//! `BertPreTokenizer`, the `WordPiece` model and its decoder. Written out here, it is a few hundred
//! lines instead of the whole library (regex engines, a C++ suffix-array builder, derive macros):
//! 40 of the WebAssembly build's 169 crates, and part of the page's download. (Natively,
//! candle-core links the library anyway, for GGUF files' own tokenizers.)

use std::collections::{HashMap, HashSet};

use serde_json::Value;
use unicode_categories::UnicodeCategories;
use unicode_normalization_alignments::UnicodeNormalization;

use crate::{Error, Result};

pub struct CaptionTokenizer {
    /// The WordPiece model's vocabulary.
    vocab: HashMap<String, u32>,
    /// Its inverse, as `tokenizers` builds it (a token listed twice keeps its first id).
    id_to_token: HashMap<u32, String>,
    /// Added tokens (BERT's [CLS], [SEP], ...): matched in the raw text before normalization,
    /// longest first at each position.
    added: Vec<(String, u32)>,
    added_by_id: HashMap<u32, String>,
    /// Added tokens marked special, which decoding skips.
    special: HashSet<String>,
    normalizer: Option<BertNormalizer>,
    unk_id: u32,
    continuing_prefix: String,
    max_input_chars_per_word: usize,
    /// The WordPiece decoder (`None`: tokens joined by spaces, `tokenizers`' default).
    decoder: Option<WordPieceDecoder>,
    /// transformers' `clean_up_tokenization_spaces` from tokenizer_config.json (default false in
    /// transformers 5): remove spaces before punctuation and around apostrophes after decoding.
    clean_up_spaces: bool,
}

#[derive(Debug, Clone, Copy)]
struct BertNormalizer {
    clean_text: bool,
    handle_chinese_chars: bool,
    strip_accents: bool,
    lowercase: bool,
}

#[derive(Debug, Clone)]
struct WordPieceDecoder {
    prefix: String,
    cleanup: bool,
}

/// The special tokens transformers' BertTokenizer registers (and skips when decoding).
const SPECIAL: [&str; 5] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];

fn bad(what: impl std::fmt::Display) -> Error {
    Error::model(format!("tokenizer.json could not be read: {what}"))
}

fn string_field<'a>(v: &'a Value, key: &str, default: &'a str) -> Result<&'a str> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(bad(format!("\"{key}\" is {other}, not a string"))),
    }
}

fn bool_field(v: &Value, key: &str, default: bool) -> Result<bool> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(bad(format!("\"{key}\" is {other}, not true or false"))),
    }
}

impl CaptionTokenizer {
    /// Reads a `tokenizer.json` of a BERT WordPiece tokenizer (GIT's); other kinds are refused
    /// with a message that says which part is not BERT's.
    pub fn from_tokenizer_json(bytes: &[u8]) -> Result<Self> {
        let json: Value = serde_json::from_slice(bytes).map_err(bad)?;
        let model = json
            .get("model")
            .ok_or_else(|| bad("it has no \"model\""))?;
        let kind = string_field(model, "type", "")?;
        if kind != "WordPiece" {
            return Err(bad(format!(
                "its model is {kind:?}, and gitcap reads BERT WordPiece tokenizers (GIT's)"
            )));
        }
        let mut vocab = HashMap::new();
        let entries = model
            .get("vocab")
            .and_then(Value::as_object)
            .ok_or_else(|| bad("its WordPiece model has no vocabulary"))?;
        for (token, id) in entries {
            let id = id
                .as_u64()
                .and_then(|id| u32::try_from(id).ok())
                .ok_or_else(|| bad(format!("the id of {token:?} is {id}")))?;
            vocab.insert(token.clone(), id);
        }
        let unk = string_field(model, "unk_token", "[UNK]")?;
        let unk_id = *vocab.get(unk).ok_or_else(|| {
            bad(format!(
                "the unknown token {unk:?} is not in the vocabulary"
            ))
        })?;
        let continuing_prefix = string_field(model, "continuing_subword_prefix", "##")?.to_string();
        let max_input_chars_per_word = match model.get("max_input_chars_per_word") {
            None | Some(Value::Null) => 100,
            Some(v) => v
                .as_u64()
                .ok_or_else(|| bad(format!("max_input_chars_per_word is {v}")))?
                as usize,
        };

        let normalizer = match json.get("normalizer") {
            None | Some(Value::Null) => None,
            Some(n) if string_field(n, "type", "")? == "BertNormalizer" => {
                let lowercase = bool_field(n, "lowercase", true)?;
                Some(BertNormalizer {
                    clean_text: bool_field(n, "clean_text", true)?,
                    handle_chinese_chars: bool_field(n, "handle_chinese_chars", true)?,
                    // null: strip accents exactly when lowercasing, as BERT's uncased models do.
                    strip_accents: bool_field(n, "strip_accents", lowercase)?,
                    lowercase,
                })
            }
            Some(n) => {
                return Err(bad(format!(
                    "its normalizer is {:?}, and gitcap reads BERT's (BertNormalizer)",
                    string_field(n, "type", "")?
                )))
            }
        };
        match json.get("pre_tokenizer") {
            None | Some(Value::Null) => {}
            Some(p) if string_field(p, "type", "")? == "BertPreTokenizer" => {}
            Some(p) => {
                return Err(bad(format!(
                    "its pre-tokenizer is {:?}, and gitcap reads BERT's (BertPreTokenizer)",
                    string_field(p, "type", "")?
                )))
            }
        }
        let decoder = match json.get("decoder") {
            None | Some(Value::Null) => None,
            Some(d) if string_field(d, "type", "")? == "WordPiece" => Some(WordPieceDecoder {
                prefix: string_field(d, "prefix", "##")?.to_string(),
                cleanup: bool_field(d, "cleanup", true)?,
            }),
            Some(d) => {
                return Err(bad(format!(
                    "its decoder is {:?}, and gitcap reads BERT's (WordPiece)",
                    string_field(d, "type", "")?
                )))
            }
        };

        let mut added = Vec::new();
        let mut added_by_id = HashMap::new();
        let mut special = HashSet::new();
        for token in json
            .get("added_tokens")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            let content = string_field(token, "content", "")?;
            let id = token
                .get("id")
                .and_then(Value::as_u64)
                .and_then(|id| u32::try_from(id).ok())
                .ok_or_else(|| bad(format!("the added token {content:?} has no valid id")))?;
            if content.is_empty() {
                continue;
            }
            if bool_field(token, "special", false)? {
                special.insert(content.to_string());
            }
            added.push((content.to_string(), id));
            added_by_id.insert(id, content.to_string());
        }
        // Longest first, so that at one position the longest added token wins.
        added.sort_by_key(|a| std::cmp::Reverse(a.0.len()));
        let id_to_token = vocab.iter().map(|(t, &id)| (id, t.clone())).collect();
        Ok(Self {
            vocab,
            id_to_token,
            added,
            added_by_id,
            special,
            normalizer,
            unk_id,
            continuing_prefix,
            max_input_chars_per_word,
            decoder,
            clean_up_spaces: false,
        })
    }

    /// Applies what `tokenizer_config.json` says about decoding.
    pub fn with_tokenizer_config(mut self, bytes: &[u8]) -> Result<Self> {
        let v: Value = serde_json::from_slice(bytes)
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
            added.push(serde_json::json!({"id": id, "content": token, "special": true}));
        }
        let json = serde_json::json!({
            "added_tokens": added,
            "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true,
                           "strip_accents": null, "lowercase": true},
            "pre_tokenizer": {"type": "BertPreTokenizer"},
            "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
            "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                      "max_input_chars_per_word": 100, "vocab": vocab},
        });
        Self::from_tokenizer_json(json.to_string().as_bytes())
    }

    /// Token ids of a prompt, without special tokens (the caller puts [CLS] in front).
    pub fn encode_prompt(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            match self.next_added_token(rest) {
                Some((at, token, id)) => {
                    self.encode_plain(&rest[..at], &mut ids);
                    ids.push(id);
                    rest = &rest[at + token.len()..];
                }
                None => {
                    self.encode_plain(rest, &mut ids);
                    break;
                }
            }
        }
        Ok(ids)
    }

    /// The leftmost added token in `text` (the longest where several start there).
    fn next_added_token(&self, text: &str) -> Option<(usize, &str, u32)> {
        self.added
            .iter()
            .filter_map(|(token, id)| {
                text.find(token.as_str())
                    .map(|at| (at, token.as_str(), *id))
            })
            .min_by_key(|&(at, token, _)| (at, std::cmp::Reverse(token.len())))
    }

    /// Normalizes, splits into words and punctuation, and WordPiece-encodes each.
    fn encode_plain(&self, text: &str, ids: &mut Vec<u32>) {
        let normalized = match &self.normalizer {
            Some(n) => n.normalize(text),
            None => text.to_string(),
        };
        for word in normalized.split(char::is_whitespace) {
            let mut start = 0;
            for (i, c) in word.char_indices() {
                if is_bert_punctuation(c) {
                    self.encode_word(&word[start..i], ids);
                    self.encode_word(&word[i..i + c.len_utf8()], ids);
                    start = i + c.len_utf8();
                }
            }
            self.encode_word(&word[start..], ids);
        }
    }

    /// Greedy longest-match-first WordPiece; a word that cannot be covered, or is too long, is
    /// one unknown token.
    fn encode_word(&self, word: &str, ids: &mut Vec<u32>) {
        if word.is_empty() {
            return;
        }
        if word.chars().count() > self.max_input_chars_per_word {
            ids.push(self.unk_id);
            return;
        }
        let first = ids.len();
        let mut start = 0;
        while start < word.len() {
            let mut end = word.len();
            let found = loop {
                let piece = &word[start..end];
                let id = if start > 0 {
                    self.vocab
                        .get(&format!("{}{piece}", self.continuing_prefix))
                } else {
                    self.vocab.get(piece)
                };
                if let Some(&id) = id {
                    break Some(id);
                }
                end -= piece.chars().next_back().map_or(1, char::len_utf8);
                if end <= start {
                    break None;
                }
            };
            match found {
                Some(id) => ids.push(id),
                None => {
                    ids.truncate(first);
                    ids.push(self.unk_id);
                    return;
                }
            }
            start = end;
        }
    }

    /// Text of `ids` with special tokens skipped, `##` pieces joined and spaces cleaned up. Ids
    /// outside the vocabulary are skipped, as `tokenizers` does.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        let tokens = ids.iter().filter_map(|id| {
            self.added_by_id
                .get(id)
                .or_else(|| self.id_to_token.get(id))
                .filter(|token| !self.special.contains(token.as_str()))
        });
        let mut text = String::new();
        match &self.decoder {
            Some(d) => {
                for (i, token) in tokens.enumerate() {
                    let piece = match token.strip_prefix(d.prefix.as_str()) {
                        _ if i == 0 => token.clone(),
                        Some(rest) => rest.to_string(),
                        None => format!(" {token}"),
                    };
                    // `tokenizers` cleans each token up on its own (with its leading space).
                    text.push_str(&if d.cleanup {
                        wordpiece_cleanup(&piece)
                    } else {
                        piece
                    });
                }
            }
            None => text = tokens.cloned().collect::<Vec<_>>().join(" "),
        }
        Ok(if self.clean_up_spaces {
            clean_up_tokenization(&text)
        } else {
            text
        })
    }

    /// Tokens in the vocabulary, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.vocab.len()
            + self
                .added
                .iter()
                .filter(|(token, _)| !self.vocab.contains_key(token))
                .count()
    }
}

impl BertNormalizer {
    /// `tokenizers`' BertNormalizer, in its order: clean text, space out CJK ideographs, strip
    /// accents (NFD, then drop non-spacing marks), lowercase.
    fn normalize(&self, text: &str) -> String {
        let mut s: String = if self.clean_text {
            text.chars()
                .filter(|&c| !(c == '\0' || c == '\u{fffd}' || is_control(c)))
                .map(|c| if is_whitespace(c) { ' ' } else { c })
                .collect()
        } else {
            text.to_string()
        };
        if self.handle_chinese_chars {
            let mut spaced = String::with_capacity(s.len());
            for c in s.chars() {
                if is_chinese_char(c) {
                    spaced.extend([' ', c, ' ']);
                } else {
                    spaced.push(c);
                }
            }
            s = spaced;
        }
        if self.strip_accents {
            s = s
                .as_str()
                .nfd()
                .map(|(c, _)| c)
                .filter(|c| !c.is_mark_nonspacing())
                .collect();
        }
        if self.lowercase {
            s = s.chars().flat_map(char::to_lowercase).collect();
        }
        s
    }
}

fn is_whitespace(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r') || c.is_whitespace()
}

fn is_control(c: char) -> bool {
    !matches!(c, '\t' | '\n' | '\r') && c.is_other()
}

fn is_chinese_char(c: char) -> bool {
    matches!(
        c as u32,
        0x4E00..=0x9FFF
            | 0x3400..=0x4DBF
            | 0x20000..=0x2A6DF
            | 0x2A700..=0x2B73F
            | 0x2B740..=0x2B81F
            | 0x2B920..=0x2CEAF
            | 0xF900..=0xFAFF
            | 0x2F800..=0x2FA1F
    )
}

fn is_bert_punctuation(c: char) -> bool {
    c.is_ascii_punctuation() || c.is_punctuation()
}

/// The WordPiece decoder's cleanup (`tokenizers`' `decoders::wordpiece::cleanup`), in its order.
const WORDPIECE_CLEANUP: [(&str, &str); 11] = [
    (" .", "."),
    (" ?", "?"),
    (" !", "!"),
    (" ,", ","),
    (" ' ", "'"),
    (" n't", "n't"),
    (" 'm", "'m"),
    (" do not", " don't"),
    (" 's", "'s"),
    (" 've", "'ve"),
    (" 're", "'re"),
];

fn wordpiece_cleanup(text: &str) -> String {
    WORDPIECE_CLEANUP
        .iter()
        .fold(text.to_string(), |t, (from, to)| t.replace(from, to))
}

/// transformers' `clean_up_tokenization`: the same rules in the same order, but for " do not".
fn clean_up_tokenization(text: &str) -> String {
    WORDPIECE_CLEANUP
        .iter()
        .filter(|(from, _)| *from != " do not")
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
