"""The transcoder: turns segments into renditions with FFmpeg, on the CPU or NVIDIA GPUs."""
