//! Decoding any tensor qtool can read to `f32`.
