//! TODO(issue 2): filled in by the op-family work in progress.
