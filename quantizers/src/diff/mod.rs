//! Per-tensor error metrics between a reference checkpoint and a candidate (its quantized
//! version), with tensors matched by name across containers and layouts.
