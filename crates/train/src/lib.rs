//! Training infrastructure shared by every llm2comp trainer (skeleton; filled in by the train crate work).
