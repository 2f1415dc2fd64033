"""``python -m distil_whisper_jax.export --output_dir gs://...`` on a GCS stand-in that runs here: the files
are made and verified locally, then uploaded; existing outputs in the bucket are refused without
``--overwrite``; a bucket that does not exist fails before the model loads."""

from distil_whisper_jax.cli import export as cli

from . import fake_gcs


def test_export_to_a_bucket_url(tmp_path, capsys):
    gcs = fake_gcs.use(tmp_path / "gcs")
    args = ["--no-verify", "--formats", "openai,ggml"]
    assert cli.main(["--output_dir", str(tmp_path / "local"), *args]) == 0
    assert cli.main(["--output_dir", "gs://bucket/E", *args]) == 0
    for name in ("original-model.bin", "ggml-model.bin"):
        assert (tmp_path / "gcs" / "bucket" / "E" / name).read_bytes() == (tmp_path / "local" / name).read_bytes()
        assert f"bucket/E/{name}" in gcs.written
    capsys.readouterr()
    assert cli.main(["--output_dir", "gs://bucket/E", *args]) == 2
    assert "already exist" in capsys.readouterr().err
    assert cli.main(["--output_dir", "gs://nobucket/E", *args]) == 2
    err = capsys.readouterr().err
    assert "--output_dir gs://nobucket/E: cannot write there" in err
