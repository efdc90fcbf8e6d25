//! Any byte string given to the GGUF parser (header, KVs, tensor infos) yields a file or an
//! error, never a panic, and accepted tensors lie inside the buffer.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(tensors) = qtool_formats::fuzzing::gguf(data) {
        for t in tensors {
            assert!(t.offset.checked_add(t.nbytes).is_some_and(|end| end <= data.len() as u64));
        }
    }
});
