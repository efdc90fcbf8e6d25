//! Exporters: the tensor names, dtypes and configs each target runtime loads (ComfyUI current
//! and legacy, compressed-tensors, ModelOpt), and the streaming quantize pipeline that writes
//! them.
