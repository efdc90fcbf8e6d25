//! Layer-wise calibration for llama-family decoders: a forward engine that streams one block of
//! weights at a time from the mapped checkpoint, calibration data, the GPTQ/AWQ pipelines that
//! quantize block by block, and perplexity evaluation.

pub mod calibration;
pub mod engine;
pub mod eval;
pub mod pipeline;
pub mod tokenizer;
