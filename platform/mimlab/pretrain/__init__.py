"""iBOT pretraining: loss with centres, schedules, EMA teacher, one-epoch engine, checkpoints and the local loop."""
