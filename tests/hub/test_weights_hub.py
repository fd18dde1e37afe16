"""Pretrained weights from torchvision sources, with no network: a local HTTP server on
127.0.0.1 serves random weights in torchvision's real layout, and torchvision's ``Weights``
enum is pointed at it (through segzoo's explicit test hook for plain-http loopback URLs)."""

import hashlib
import http.server
import io
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from torchvision.models.segmentation import deeplabv3_mobilenet_v3_large

import segzoo
from segzoo import hub
from segzoo.hub import WeightsError, cache
from segzoo.hub.published import get_weights
from segzoo.hub.weights import pretrained_checkpoint

NAME = "deeplabv3_mobilenetv3_large.tv_coco_voc"
ROOT = Path(__file__).resolve().parents[2]


class Server:
    """Serves ``files[path]``; ``mode[path]`` makes it fail: 404, 500, "truncate", "slow"."""

    def __init__(self):
        self.files, self.mode, self.requests = {}, {}, []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.requests.append(self.path)
                mode, data = outer.mode.get(self.path), outer.files.get(self.path)
                if data is None or mode in (404, 500):
                    self.send_error(mode or 404)
                    return
                if mode == "slow":
                    time.sleep(1.0)
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: len(data) // 2] if mode == "truncate" else data)
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.netloc = f"127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path):
        return f"http://{self.netloc}{path}"

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(scope="module")
def payload():
    """A torchvision DeepLabV3-MobileNetV3 state dict with random weights, as torch.save bytes,
    and its name as torch.hub wants it (``name-<sha256 prefix>.pth``)."""
    torch.manual_seed(0)
    model = deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, aux_loss=True).eval()
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    data = buf.getvalue()
    return model, data, f"/models/deeplabv3_mobilenet_v3_large-{hashlib.sha256(data).hexdigest()[:8]}.pth"


@pytest.fixture
def server():
    s = Server()
    yield s
    s.stop()


def empty_caches(tmp_path, monkeypatch):
    """Empty caches (segzoo, torch.hub, Hugging Face hub) in tmp_path and online mode."""
    monkeypatch.setenv("SEGZOO_HOME", str(tmp_path / "segzoo"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.delenv("SEGZOO_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return tmp_path


@pytest.fixture
def env(tmp_path, monkeypatch):
    return empty_caches(tmp_path, monkeypatch)


@pytest.fixture
def served(env, server, payload, monkeypatch):
    """The enum's URL points at the test server, which serves the payload."""
    _, data, path = payload
    server.files[path] = data
    entry = get_weights(NAME)
    monkeypatch.setattr(entry.weights_enum().value, "url", server.url(path))
    with cache.allow_test_server(server.netloc):
        yield entry, server, path


def test_download_convert_cache_and_reuse(served, payload):
    entry, server, path = served
    tv, _, _ = payload
    ckpt = pretrained_checkpoint(entry)
    assert ckpt == hub.checkpoint_path(NAME) and server.requests == [path]
    model = segzoo.load(ckpt)
    assert model.classes == list(entry.classes) and model.classes[0] == "__background__"
    x = torch.rand(1, 3, 64, 64)
    mean, std = torch.tensor(entry.mean).view(1, 3, 1, 1), torch.tensor(entry.std).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(model(x), tv((x - mean) / std)["out"], atol=1e-4, rtol=0)
    # the second call uses the cache, even with the server gone and torch.hub's copy deleted
    server.stop()
    hub.torch_hub_path(entry.url).unlink()
    assert pretrained_checkpoint(entry) == ckpt and server.requests == [path]


def test_hash_mismatch_deletes_the_download(served, payload):
    entry, server, path = served
    server.files[path] = payload[1][:-10] + b"0123456789"  # same length, other bytes
    with pytest.raises(WeightsError, match="does not match its sha256 prefix.*partial file was deleted"):
        pretrained_checkpoint(entry)
    hub_dir = hub.torch_hub_path(entry.url).parent
    assert list(hub_dir.iterdir()) == [] and not hub.checkpoint_path(NAME).exists()


def test_truncated_transfer_is_caught(served):
    entry, server, path = served
    server.mode[path] = "truncate"
    with pytest.raises(WeightsError, match="interrupted transfer"):
        pretrained_checkpoint(entry)
    assert list(hub.torch_hub_path(entry.url).parent.iterdir()) == []
    server.mode.clear()  # a retry works
    assert pretrained_checkpoint(entry).exists()


@pytest.mark.parametrize("code", [404, 500])
def test_http_errors_say_how_to_get_the_file(served, code):
    entry, server, path = served
    server.mode[path] = code
    with pytest.raises(WeightsError) as e:
        pretrained_checkpoint(entry)
    msg = str(e.value)
    assert f"HTTP {code}" in msg and server.url(path) in msg
    assert str(hub.torch_hub_path(entry.url)) in msg and f"segzoo weights import {NAME} FILE" in msg


@pytest.mark.parametrize("var", ["SEGZOO_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_never_touches_the_network(served, monkeypatch, var, payload):
    entry, server, path = served
    monkeypatch.setenv(var, "1")
    with pytest.raises(WeightsError) as e:
        pretrained_checkpoint(entry)
    msg = str(e.value)
    assert "offline" in msg and server.url(path) in msg and str(hub.torch_hub_path(entry.url)) in msg
    assert f"segzoo weights import {NAME} FILE" in msg and server.requests == []
    # a file put where the message says is used, still without the network
    hub.torch_hub_path(entry.url).parent.mkdir(parents=True)
    hub.torch_hub_path(entry.url).write_bytes(payload[1])
    assert segzoo.load(pretrained_checkpoint(entry)).num_classes == 21 and server.requests == []


def test_corrupt_cached_checkpoint_is_fetched_again(served):
    entry, server, path = served
    ckpt = pretrained_checkpoint(entry)
    hub.torch_hub_path(entry.url).unlink()
    data = bytearray(ckpt.read_bytes())
    data[-100] ^= 0xFF  # one flipped bit in a weight: the safetensors framing is still valid
    ckpt.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="corrupted"):
        assert pretrained_checkpoint(entry) == ckpt
    assert server.requests == [path, path]
    segzoo.load(ckpt)


def test_corrupt_torch_hub_file_is_replaced(served, payload):
    entry, server, path = served
    local = hub.torch_hub_path(entry.url)
    local.parent.mkdir(parents=True)
    local.write_bytes(payload[1][:1000])
    with pytest.warns(UserWarning, match="does not match the sha256 prefix"):
        pretrained_checkpoint(entry)
    assert server.requests == [path]


def test_only_https_from_the_table_hosts(env):
    for url in ("http://download.pytorch.org/models/x-12345678.pth", "https://example.com/x-12345678.pth",
                "ftp://download.pytorch.org/x.pth", "http://127.0.0.1:9/x.pth"):
        with pytest.raises(WeightsError, match="refusing"):
            cache.check_url(url)
    cache.check_url("https://download.pytorch.org/models/x-12345678.pth")
    with pytest.raises(ValueError, match="loopback"):
        with cache.allow_test_server("example.com:80"):
            pass
    for name in segzoo.list_weights():
        entry = get_weights(name)
        if entry.source == "torchvision":
            cache.check_url(entry.url)
            assert cache.hash_prefix(entry.url), entry.url


_WORKER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from segzoo.hub import cache
    from segzoo.hub.published import get_weights
    from segzoo.hub.weights import pretrained_checkpoint
    netloc, url, go = sys.argv[1:4]
    entry = get_weights("{name}")
    entry.weights_enum().value.url = url
    Path(f"{{go}}.{{os.getpid()}}").touch()  # ready: wait until both are
    while not Path(go).exists():
        time.sleep(0.02)
    with cache.allow_test_server(netloc):
        print(pretrained_checkpoint(entry))
""")


def test_two_processes_download_once(served, env):
    entry, server, path = served
    server.mode[path] = "slow"
    go = env / "go"
    cmd = [sys.executable, "-c", _WORKER.format(name=NAME), server.netloc, server.url(path), str(go)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
             for _ in range(2)]
    deadline = time.monotonic() + 240
    while len(list(env.glob("go.*"))) < 2 and time.monotonic() < deadline and all(p.poll() is None for p in procs):
        time.sleep(0.05)
    go.touch()
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    assert {o[0].strip().splitlines()[-1] for o in outs} == {str(hub.checkpoint_path(NAME))}
    assert server.requests == [path]
    segzoo.load(hub.checkpoint_path(NAME))
