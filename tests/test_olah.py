"""The download side over real HTTP: an offline ``olah`` Hub mirror on 127.0.0.1 serves a checkpoint folder
as a git repo, and ``from_pretrained("privzoo/<name>")`` (through ``HF_ENDPOINT``) loads identical weights.

olah serves local git repos found under ``<mirrors-path>/<repo type>/<org>/<repo>`` (its ``mirrors-path``
option); ``[accessibility] offline = true`` keeps it from contacting huggingface.co. The download runs in a
subprocess: huggingface_hub reads ``HF_ENDPOINT`` / ``HF_HUB_OFFLINE`` at import time, and this suite sets
``HF_HUB_OFFLINE=1`` before anything imports it. The test skips itself only if olah cannot start.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO_ROOT
from safetensors.torch import load_file

from models.classifier import ImageClassifier

NAME = "clf-olah"
PICKLE_NAME = "clf-pickle-only"
START_TIMEOUT_S = 15.0

DOWNLOAD = """
import json, sys
from safetensors.torch import save_file
from huggingface_hub import constants
from models.classifier import ImageClassifier
assert constants.ENDPOINT == sys.argv[1] and not constants.HF_HUB_OFFLINE
model = ImageClassifier.from_pretrained("privzoo/{name}", cache_dir=sys.argv[2])
save_file({{k: v.contiguous() for k, v in model.state_dict().items()}}, sys.argv[3])
errors = {{}}
for bad in ("privzoo/{pickle_name}", "privzoo/not-in-the-mirror"):
    try:
        ImageClassifier.from_pretrained(bad, cache_dir=sys.argv[2])
        errors[bad] = None
    except Exception as err:
        errors[bad] = [type(err).__name__, str(err)]
print(json.dumps({{"training": model.training, "hparams": dict(model.hparams),
                  "device": str(next(model.parameters()).device), "errors": errors}}))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def git_commit_all(repo: Path) -> None:
    git("init", "-q", "-b", "main", cwd=repo)
    git("add", ".", cwd=repo)
    git("commit", "-q", "-m", "checkpoint", cwd=repo)


def git(*args: str, cwd: Path) -> None:
    identity = [
        "-c",
        "user.name=privzoo tests",
        "-c",
        "user.email=tests@privzoo.invalid",
        "-c",
        "commit.gpgsign=false",
    ]
    subprocess.run(["git", *identity, *args], cwd=cwd, check=True, capture_output=True, timeout=30)


@pytest.fixture
def olah_mirror(tmp_path):
    """An offline olah on 127.0.0.1 serving git repos under ``tmp/mirrors/models/privzoo/`` (to fill)."""
    olah = shutil.which("olah-cli", path=str(Path(sys.executable).parent)) or shutil.which("olah-cli")
    if olah is None:
        pytest.skip("olah cannot start: no olah-cli executable (pip install olah)")
    if shutil.which("git") is None:
        pytest.skip("olah cannot serve local repos: no git executable")
    org = tmp_path / "mirrors" / "models" / "privzoo"
    org.mkdir(parents=True)
    port = free_port()
    config = tmp_path / "olah.toml"
    config.write_text(
        "[basic]\n"
        'host = "127.0.0.1"\n'
        f"port = {port}\n"
        f'repos-path = "{tmp_path / "olah-cache"}"\n'
        f'mirrors-path = ["{tmp_path / "mirrors"}"]\n'
        "[accessibility]\n"
        "offline = true\n"
    )
    log = open(tmp_path / "olah.log", "w")
    process = subprocess.Popen(
        [olah, "-c", str(config), "--log-path", str(tmp_path / "olah-logs")],
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "NO_PROXY": "127.0.0.1,localhost"},
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                log.flush()
                tail = (tmp_path / "olah.log").read_text()[-1500:]
                pytest.skip(f"olah cannot start: it exited with code {process.returncode}: {tail}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.skip(
                        f"olah cannot start: port {port} did not answer within {START_TIMEOUT_S:.0f} s"
                    )
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}", org
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def test_from_pretrained_over_http_from_an_olah_mirror_loads_identical_weights(olah_mirror, tmp_path):
    endpoint, org = olah_mirror
    torch.manual_seed(0)
    model = ImageClassifier(num_classes=10, in_chans=1)
    repo = org / NAME
    model.save_pretrained(repo, model_card_kwargs={"name": NAME})
    git_commit_all(repo)
    # a repo with pickle weights only: refused over HTTP too
    pickled = org / PICKLE_NAME
    model.save_pretrained(pickled)
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    git_commit_all(pickled)

    downloaded = tmp_path / "downloaded.safetensors"
    env = {
        **os.environ,
        "HF_ENDPOINT": endpoint,
        "HF_HUB_OFFLINE": "0",
        "HF_HOME": str(tmp_path / "hf-home"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
        "HF_HUB_ETAG_TIMEOUT": "30",
        "HF_HUB_DOWNLOAD_TIMEOUT": "30",
        "NO_PROXY": "127.0.0.1,localhost",
        "PYTHONPATH": str(REPO_ROOT),
        "OMP_NUM_THREADS": "1",
    }
    env.pop("HF_TOKEN", None)
    cache = tmp_path / "hf-cache"
    result = subprocess.run(
        [sys.executable, "-c", DOWNLOAD.format(name=NAME, pickle_name=PICKLE_NAME)]
        + [endpoint, str(cache), str(downloaded)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:] + (tmp_path / "olah.log").read_text()[-2000:]
    info = json.loads(result.stdout.strip().splitlines()[-1])
    assert info["training"] is False and info["device"] == "cpu"
    assert info["hparams"] == json.loads((repo / "config.json").read_text())

    got = load_file(str(downloaded))
    expected = ImageClassifier.from_pretrained(repo).state_dict()
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(got[key], value), key
    # the files really came over HTTP into the (temporary) Hugging Face cache
    snapshots = list((cache / f"models--privzoo--{NAME}" / "snapshots").iterdir())
    assert len(snapshots) == 1
    assert (snapshots[0] / "model.safetensors").read_bytes() == (repo / "model.safetensors").read_bytes()
    assert "GET /privzoo/clf-olah/resolve/" in (tmp_path / "olah.log").read_text()

    kind, message = info["errors"][f"privzoo/{PICKLE_NAME}"]
    assert kind == "PickleWeightsError" and "pytorch_model.bin" in message and "arbitrary code" in message
    kind, message = info["errors"]["privzoo/not-in-the-mirror"]
    assert kind == "MissingFileError" and "privzoo/not-in-the-mirror" in message
