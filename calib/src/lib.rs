//! Layer-wise calibration for llama-family decoders: a forward engine that streams one block of
//! weights at a time from the mapped checkpoint, calibration data, the GPTQ/AWQ pipelines that
//! quantize block by block, and perplexity evaluation.
