"""Typed, validated configs (unknown keys are errors): pretraining (:mod:`.pretrain`) and sweeps (:mod:`.experiment`)."""
