#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| toolgate::fuzzing::dpop_proof(data));
