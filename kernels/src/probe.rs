//! Finding the CUDA driver, NVRTC and a GPU.
