"""Resources of one machine: GPU/CPU slots, memory admission, sampling of what a job uses."""
