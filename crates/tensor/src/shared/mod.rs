//! What both backends share (the backend-neutral contract): option and
//! result types, the dropout hash, row and tile planning, host-side
//! groupings the backward passes sum in. `cpu/` and `cuda/` import from here
//! and never from each other; `ops/` re-exports the public items.

pub mod adamw;
pub mod attention;
pub mod dropout;
pub(crate) mod embedding;
pub mod grad_clip;
pub mod infonce;
pub(crate) mod pooling;
pub mod rope;
pub mod tiling;
