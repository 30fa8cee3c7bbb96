#![no_main]
// Arbitrary bytes as the server certificate a pin is checked against: never panics.
libfuzzer_sys::fuzz_target!(|data: &[u8]| toolgate::fuzzing::spki(data));
