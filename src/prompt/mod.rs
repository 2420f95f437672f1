//! Prompt handling: the two CLIP tokenizers shipped with the worker, token ids with each tokenizer's padding.
