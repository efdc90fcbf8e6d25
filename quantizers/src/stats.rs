//! Per-tensor statistics (min, max, absmax, mean, std, NaN and Inf counts), computed in parallel
//! over decoded chunks.
