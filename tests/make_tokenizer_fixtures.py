#!/usr/bin/env python3
"""Records what transformers' GIT tokenizer (BertTokenizer over the real BERT uncased vocabulary,
tests/fixtures/vocab.txt) does with awkward text, for gitcap's own WordPiece tokenizer
(src/tokenizer.rs, tested in tests/native/tokenizer.rs).

    .venv-ref/bin/python tests/make_tokenizer_fixtures.py

Writes tests/fixtures/reference/tokenizer.json: prompts with their ids (no special tokens added),
and id sequences with their decoded text (special tokens skipped), with and without
clean_up_tokenization_spaces. Deterministic.
"""
import json
import random
from pathlib import Path

from transformers import BertTokenizer

ROOT = Path(__file__).resolve().parent
VOCAB = ROOT / "fixtures" / "vocab.txt"
OUT = ROOT / "fixtures" / "reference" / "tokenizer.json"

PROMPTS = [
    "", "a photo of", "A Photo OF a DOG!", "don't stop believing", "café naïve résumé Ångström",
    "北京欢迎你 hello 日本語のテキスト", "한국어 문장", "hello\tworld\nnew\r\nline",
    "zero\u200bwidth joiner\u200d", "weird\x00null\x07bell", "\ufffdreplacement", "soft\u00adhyphen",
    "supercalifragilisticexpialidocious", "x" * 101, "a" * 100, "emoji 😀 test 👍🏽",
    "[CLS] hi [SEP]", "what is[MASK]?", "[cls] lower case", "[UNK][PAD]", "İstanbul",
    "ﬁne ligature", "¿qué? ¡sí!", "rock'n'roll... ok", "  leading and trailing  ", "1,000.50 $ % ^",
    "C++ & C# <tag> {x}", "hyphen-ated—dash – en", "ß straße", "ΩMEGA ΣΑΣ", "xqzjv unknownword",
    "“quoted” ‘single’ «guillemets»", "tab\u3000ideographic space", "naïve\u0301 stacked",
    "ＦＵＬＬＷＩＤＴＨ", "Ⅻ roman", "dog's and dogs' toys", "e.g. i.e. a.m.", "\u2028line sep",
]


def main():
    tok = BertTokenizer(vocab=str(VOCAB), do_lower_case=True)
    cases = {"encode": [], "decode": []}
    for text in PROMPTS:
        cases["encode"].append({"text": text, "ids": tok.encode(text, add_special_tokens=False)})
    rng = random.Random(0)
    words = ["a", "dog", "do", "not", "don", "'", "t", "s", "re", "ve", "m", "n", ".", ",", "?",
             "!", "##s", "##ing", "[SEP]", "[CLS]", "[PAD]", "[MASK]", "[UNK]", "(", ")", "-", "$",
             "cafe", "##ne", "世", "界", "isn", "it", "'s", "\"", ":", ";"]
    ids = tok.convert_tokens_to_ids(words)
    sequences = [[tok.convert_tokens_to_ids("##s"), 1037], [1037, 2123, 2025], [102], []]
    sequences += [[rng.choice(ids) for _ in range(rng.randint(1, 14))] for _ in range(40)]
    sequences += [[rng.randrange(0, tok.vocab_size) for _ in range(12)] for _ in range(20)]
    for seq in sequences:
        cases["decode"].append({
            "ids": seq,
            "text": tok.decode(seq, skip_special_tokens=True, clean_up_tokenization_spaces=False),
            "text_clean_up": tok.decode(seq, skip_special_tokens=True, clean_up_tokenization_spaces=True),
        })
    OUT.write_text(json.dumps(cases, ensure_ascii=False, indent=1) + "\n")
    print(f"wrote {OUT}: {len(cases['encode'])} prompts, {len(cases['decode'])} id sequences")


if __name__ == "__main__":
    main()
