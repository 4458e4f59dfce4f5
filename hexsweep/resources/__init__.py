"""Resources of one machine: GPU (CUDA, Apple MPS) and CPU slots, memory admission, sampling of
what a job uses; assign.py is the one place that decides what a job gets."""
