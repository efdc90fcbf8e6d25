//! Checkpoint-format conventions: recognising which quantization scheme a checkpoint's tensor
//! names, metadata and `config.json` say it holds.
