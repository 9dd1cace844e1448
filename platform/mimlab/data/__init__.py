"""Data layer: the shard format, fsspec URLs, the embedded synthetic dataset, record loading, crops and Ray Data.

Modules: ``schema`` (shard columns), ``fs`` (URL → filesystem, atomic writes), ``shards`` (Parquet files),
``sources`` (:func:`load_records`, decoding), ``synth`` (:func:`default_dataset`), ``transforms`` (multi-crop,
eval crop, normalise), ``pipeline`` (Ray Data), ``imagefolder`` (ImageFolder → shards), ``info`` (summaries).
Import the submodules directly; this package imports nothing heavy.
"""
