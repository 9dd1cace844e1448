"""Shards on a real S3-compatible HTTP server (moto on 127.0.0.1, reached through AWS_ENDPOINT_URL): written by
`platform data shard`, read by `platform data info` and by the Ray Data training stream; bad endpoints, buckets and
credentials give one error line naming the URL."""

from __future__ import annotations

import fsspec
from typer.testing import CliRunner

from mimlab.cli import app
from mimlab.data.imagefolder import shard_imagefolder
from mimlab.data.pipeline import multicrop_dataset
from mimlab.data.transforms import MultiCropConfig

CFG = MultiCropConfig(global_crops=1, global_size=8, local_crops=1, local_size=8)


def test_shard_writes_s3_and_info_reads_it(s3_bucket, tmp_path, make_imagefolder):
    make_imagefolder(tmp_path / "src", {"a": 8, "b": 8, "c": 8}, size=8)
    url = f"{s3_bucket}/shards"
    runner = CliRunner()
    res = runner.invoke(app, ["data", "shard", str(tmp_path / "src"), url, "--shard-size", "10"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["data", "info", url])
    assert res.exit_code == 0 and "images: 24  shards: 3" in res.output, res.output
    # the same plan written to a local folder gives the same bytes (independent write path: the local filesystem)
    shard_imagefolder(tmp_path / "src", tmp_path / "local", shard_size=10)
    s3 = fsspec.filesystem("s3", skip_instance_cache=True)
    for name in ("part-00000.parquet", "part-00001.parquet", "part-00002.parquet", "_plan.json"):
        assert s3.cat(f"{url[5:]}/{name}") == (tmp_path / "local" / name).read_bytes(), name


def test_training_stream_reads_s3_shards(s3_bucket, ray_local, tmp_path, make_imagefolder):
    make_imagefolder(tmp_path / "src", {"a": 8, "b": 8, "c": 8}, size=8)
    url = f"{s3_bucket}/shards"
    shard_imagefolder(tmp_path / "src", url, shard_size=10)
    # the Ray runtime may predate the S3 server's env vars: the read tasks get them through runtime_env
    labels = [y for b in multicrop_dataset(url, CFG, limit=16).iter_batches(batch_size=8, batch_format="numpy")
              for y in b["label"].tolist()]
    assert len(labels) == 16 and set(labels) <= {0, 1, 2}


def test_unreachable_endpoint_fails_fast_naming_the_url(s3_bucket, cli_error, tmp_path, make_imagefolder):
    make_imagefolder(tmp_path / "src", {"a": 2}, size=8)
    dead = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9"}  # port 9 (discard): nothing listens
    cli_error(["data", "info", f"{s3_bucket}/x"], f"'{s3_bucket}/x'", "cannot reach", "127.0.0.1:9",
              env=dead, timeout=30)
    cli_error(["data", "shard", str(tmp_path / "src"), f"{s3_bucket}/out"], f"'{s3_bucket}/out'", "cannot reach",
              env=dead, timeout=30, protect=[tmp_path / "src"])


def test_missing_bucket_is_an_error_not_created(s3_server, cli_error, tmp_path, make_imagefolder):
    make_imagefolder(tmp_path / "src", {"a": 2}, size=8)
    cli_error(["data", "info", "s3://no-such-bucket-mimlab/x"], "'no-such-bucket-mimlab'", "does not exist")
    cli_error(["data", "shard", str(tmp_path / "src"), "s3://no-such-bucket-mimlab/out"],
              "'s3://no-such-bucket-mimlab/out'", "does not exist", protect=[tmp_path / "src"])
    assert not fsspec.filesystem("s3", skip_instance_cache=True).exists("no-such-bucket-mimlab")


def test_wrong_credentials_name_the_url(s3_bucket, cli_error, monkeypatch):
    import moto.settings

    monkeypatch.setattr(moto.settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)  # the server now checks access keys
    cli_error(["data", "info", f"{s3_bucket}/x"], f"'{s3_bucket}/x'", "refused", "AWS_ACCESS_KEY_ID",
              env={"AWS_ACCESS_KEY_ID": "wrong-key"})
