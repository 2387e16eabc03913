"""Inference without training code: load any model source, image → depth, the evaluation loop, image I/O."""
