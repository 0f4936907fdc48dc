//! LLM2Comp compression pretext task (skeleton; filled in by the compression work).
