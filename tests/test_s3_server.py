"""The session S3 server is real HTTP: fsspec/s3fs and pyarrow reach it through AWS_ENDPOINT_URL alone."""

def test_s3fs_writes_what_pyarrow_reads_through_aws_endpoint_url(s3_bucket):
    import fsspec, pyarrow.fs as pafs
    fs = fsspec.filesystem("s3")
    fs.pipe(f"{s3_bucket[5:]}/a.txt", b"hello")
    s3, path = pafs.FileSystem.from_uri(f"{s3_bucket}/a.txt")
    with s3.open_input_stream(path) as f:
        assert f.read() == b"hello"
