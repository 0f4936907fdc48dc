//! GPU tests: every CUDA kernel against the CPU reference on fresh random
//! inputs. One test target so the GPU machine runs one executable; each
//! family has its own module. Without a CUDA device every test prints
//! `SKIPPED (no CUDA device)` and returns.

mod adamw;
mod attention;
mod common;
mod core;
mod dropout;
mod embedding;
mod grad_clip;
mod infonce;
mod linear_xent;
mod pooling;
mod small_ops;
