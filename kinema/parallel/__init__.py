"""Running one request or one training run over several processes (torchrun), with the parallel
plan applied from outside the single-device model code."""
