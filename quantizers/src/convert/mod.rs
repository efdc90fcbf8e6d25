//! Streaming conversion between Hugging Face safetensors checkpoints and GGUF for llama-family
//! models: tensors (names, q/k permutation, dtype), hyper-parameters and tokenizer.
