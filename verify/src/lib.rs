//! GPU verification of quantized checkpoints against CPU references.
