//! Any byte string given to the `model.safetensors.index.json` parser yields a weight map or an
//! error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = qtool_formats::fuzzing::index_json(data);
});
