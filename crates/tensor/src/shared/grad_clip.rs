//! The clipping constant both backends use.

/// Added to the norm in the clip coefficient, as PyTorch does, so that
/// clipping to `max_norm` never overshoots above it.
pub const CLIP_EPS: f64 = 1e-6;
