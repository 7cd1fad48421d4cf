# -*- test-case-name: tests.test_tap_wiring -*-
"""The transcoder: turns segments into renditions with FFmpeg, on the CPU or NVIDIA GPUs."""
