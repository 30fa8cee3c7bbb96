#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| toolgate::fuzzing::gateway_path(data));
