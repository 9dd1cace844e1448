"""``platform pretrain`` — iBOT pretraining with a masking strategy as a parameter."""
