#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| gitcap_fuzz::tokenizer(data));
