"""Test session set-up.

The Hugging Face environment is isolated *before* anything imports `huggingface_hub`
(it reads HF_ENDPOINT, HF_HOME, tokens and offline flags at import time): no real token,
no user cache, no telemetry, never the real hub. Fixture modules under tests/fixtures/
are discovered and loaded as plugins so that each family owns its own fixtures file.
"""

import os
import pkgutil
import tempfile
from pathlib import Path

_HF_HOME = tempfile.mkdtemp(prefix="reconcile-test-hfhome-")
for _var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.pop(_var, None)
os.environ.update({
    "HF_HOME": _HF_HOME,
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
    # Until the hub fixture starts, any accidental call goes to a closed local port, not the internet.
    "HF_ENDPOINT": "http://127.0.0.1:9",
    "TOKENIZERS_PARALLELISM": "false",
    # Node-local state (stat caches of read-only or network roots) stays inside the test session.
    "XDG_CACHE_HOME": os.path.join(_HF_HOME, "xdg-cache"),
})
os.environ.pop("RECONCILE_STATE_DIR", None)

UPSTREAM = Path(__file__).resolve().parents[2] / "shared" / "upstream"

pytest_plugins = [
    f"tests.fixtures.{m.name}"
    for m in pkgutil.iter_modules([str(Path(__file__).parent / "fixtures")])
    if not m.name.startswith("_")
]
