//! The metrics of the tasks, each in its own file, each a plain function of
//! numbers so it can be checked against hand-computed values.

pub mod average_precision;
pub mod correlation;
pub mod cosine;
pub mod f1;
pub mod kmeans;
pub mod logreg;
pub mod ranking;
pub mod vmeasure;
