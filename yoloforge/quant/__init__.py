"""int8 post-training quantization (:mod:`.ptq`) with a per-layer sensitivity analysis (:mod:`.sensitivity`)."""
