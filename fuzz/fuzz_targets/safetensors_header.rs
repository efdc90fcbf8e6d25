//! Any byte string given to the safetensors parser yields a checkpoint or an error, never a
//! panic, and a checkpoint it accepts only describes bytes inside the buffer.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(tensors) = qtool_formats::fuzzing::safetensors(data) {
        for t in tensors {
            assert!(t.offset.checked_add(t.nbytes).is_some_and(|end| end <= data.len() as u64));
        }
    }
});
