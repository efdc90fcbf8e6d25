//! CPU reference implementations of the quantization schemes qtool reads and writes.
//!
//! Everything here is pure computation over slices: no files, no printing, no GPU. Each scheme
//! can both quantize and dequantize, so `diff`, `verify` and `inspect --stats` can decode any
//! tensor qtool knows back to `f32`.

pub mod convert;
pub mod decode;
pub mod diff;
pub mod export;
pub mod float;
pub mod gguf;
pub mod int;
pub mod ptq;
pub mod recipe;
pub mod stats;
