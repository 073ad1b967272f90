"""The loaded models: load (what setup() loads, on which device), cold_start, fine_tuned, memory."""
