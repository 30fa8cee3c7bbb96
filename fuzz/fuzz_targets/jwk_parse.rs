#![no_main]
// Arbitrary bytes as a JWKS document: never panics; a parsed set re-parses from its own JSON.
libfuzzer_sys::fuzz_target!(|data: &[u8]| toolgate::fuzzing::jwk_parse(data));
