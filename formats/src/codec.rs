//! Element codecs: every dtype qtool reads, decoded to `f32`, and `f32` encoded to the float
//! formats qtool writes (F16, BF16, F8_E4M3, F8_E5M2) with round-to-nearest-even.
