#![no_main]
// Arbitrary bytes as a token through the verify path's checks 1-4: never panics, and whatever
// decodes re-encodes to the same segments.
libfuzzer_sys::fuzz_target!(|data: &[u8]| toolgate::fuzzing::jws_decode(data));
