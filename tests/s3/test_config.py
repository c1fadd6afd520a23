"""``storage.s3`` read as Distribution reads it, and handed to the s3 driver."""

from __future__ import annotations

from pathlib import Path

import pytest

from dockyard.config.load import ConfigError, load_config
from dockyard.storage import S3Driver, create_driver

MiB = 1 << 20

S3_CONFIG = """\
version: 0.1
storage:
  s3:
    accesskey: AKIAEXAMPLE
    secretkey: 0123
    region: eu-west-1
    regionendpoint: minio.internal:9000
    bucket: images
    secure: false
    rootdirectory: /registry
    chunksize: "6291456"
    encrypt: true
    keyid: alias/registry
    storageclass: reduced_redundancy
  delete:
    enabled: true
"""


def load(tmp_path: Path, text: str, **environ: str) -> tuple[dict[str, object], list[str]]:
    path = tmp_path / "config.yml"
    path.write_text(text)
    loaded = load_config(str(path), environ)
    assert loaded.config.storage.driver_name == "s3"
    return loaded.config.storage.driver_params, loaded.warnings


def test_parameters_and_distribution_defaults(tmp_path: Path) -> None:
    params, warnings = load(tmp_path, S3_CONFIG)
    assert warnings == []
    assert params["secretkey"] == "0123"  # text, as Distribution's decoder reads it
    assert params["chunksize"] == 6 * MiB
    assert params["storageclass"] == "REDUCED_REDUNDANCY"
    assert params["multipartcopychunksize"] == 32 * MiB
    assert params["multipartcopythresholdsize"] == 32 * MiB
    assert params["multipartcopymaxconcurrency"] == 100
    assert params["v4auth"] is True
    assert params["redirect"] is True
    driver = create_driver("s3", params)
    assert isinstance(driver, S3Driver)
    assert driver.key("/docker/registry/v2/blobs/sha256/ab/x/data") == (
        "registry/docker/registry/v2/blobs/sha256/ab/x/data"
    )
    # regionendpoint without a scheme takes it from secure; path-style, as Distribution 2.8.
    assert driver.params.endpoint_url == "http://minio.internal:9000"
    assert driver.params.path_style is True
    assert driver.object_args(5.0) == {
        "Metadata": {"mtime": "5.0"},
        "StorageClass": "REDUCED_REDUNDANCY",
        "ServerSideEncryption": "aws:kms",
        "SSEKMSKeyId": "alias/registry",
    }


def test_environment_overrides_and_redirect_disable(tmp_path: Path) -> None:
    params, _ = load(
        tmp_path,
        S3_CONFIG + "  redirect:\n    disable: true\n",
        REGISTRY_STORAGE_S3_BUCKET="other",
        REGISTRY_STORAGE_S3_ROOTDIRECTORY="",
    )
    assert params["bucket"] == "other"
    assert params["redirect"] is False
    driver = create_driver("s3", params)
    assert driver.key("/docker/x") == "docker/x"


def test_switching_to_s3_by_environment(tmp_path: Path) -> None:
    path = tmp_path / "config.yml"
    path.write_text("version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: /srv\n")
    loaded = load_config(
        str(path),
        {
            "REGISTRY_STORAGE": "s3",
            "REGISTRY_STORAGE_S3_REGION": "us-east-1",
            "REGISTRY_STORAGE_S3_BUCKET": "images",
        },
    )
    assert loaded.config.storage.driver_name == "s3"
    assert loaded.config.storage.driver_params["bucket"] == "images"


def test_unacted_keys_warn_and_unknown_keys_warn(tmp_path: Path) -> None:
    text = S3_CONFIG.replace("  delete:", "    loglevel: debug\n    bukcet: typo\n  delete:")
    _, warnings = load(tmp_path, text)
    assert warnings == [
        "config: storage.s3.loglevel is not supported by Dockyard yet and is ignored (line 15)",
        "config: unknown key storage.s3.bukcet at line 16",
    ]


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ("", "storage.s3.region: Field required"),
        ("  region: r\n  chunksize: 1048576\n", "storage.s3.chunksize: must be between"),
        ("  region: r\n  accesskey: a\n", "accesskey and secretkey go together"),
    ],
)
def test_bad_parameters_stop_start_up(tmp_path: Path, extra: str, problem: str) -> None:
    path = tmp_path / "config.yml"
    body = "  bucket: b\n" + extra
    path.write_text(
        "version: 0.1\nstorage:\n  s3:\n"
        + "".join("  " + line + "\n" for line in body.splitlines())
    )
    with pytest.raises(ConfigError, match=problem):
        load_config(str(path), {})


def test_create_driver_validates_parameters() -> None:
    with pytest.raises(ValueError, match="storage.s3.bucket"):
        create_driver("s3", {"region": "us-east-1"})
    with pytest.raises(ValueError, match="redirect"):
        create_driver("s3", {"region": "r", "bucket": "b", "redirect": "yes"})
