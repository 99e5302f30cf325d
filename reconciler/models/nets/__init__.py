"""Small pure-PyTorch models (Meta MTP, HF Llama) and safetensors header helpers.

Why here: the `loads` and `config_consistent` checks and the micro-model and config
transforms must agree on one answer to "which tensors, of which shapes, does this config
imply", so every one of them asks `expected_shapes`: the model's own config validation, then
the layout rules of `checkpoint_layout` (which the `tensors` check and the converters use too).

Importing this package does not import torch: the header helpers and `expected_shapes` serve
the lock validator and every plug-in at start-up, so the nn.Modules in `mtp` / `llama` are
imported only by `build_model` / `load_strict`, the functions that build a model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ...errors import IntegrityError
from ..checkpoint_layout import LayoutError, hf_llama_shapes, meta_shapes, n_params
from ..safetensors_io import read_header
from .configs import META_LEGACY_KEYS, hf_config_with_defaults, meta_params_with_defaults
from .configs import is_legacy_key as _hf_legacy_key

if TYPE_CHECKING:  # torch is imported where a model is built: the header helpers here must not pay for it
    import torch
    from torch import nn

ARCHES = ("mtp", "llama")

# safetensors dtype codes <-> torch dtype names (the names the locks and configs use).
ST_TO_NAME = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64",
              "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}
NAME_TO_ST = {v: k for k, v in ST_TO_NAME.items()}


class HeaderError(ValueError):
    """A file that is not a readable safetensors file."""


@dataclass(frozen=True)
class WeightsSummary:
    """What a safetensors header says: tensors (dtype name, shape), their dtype and parameter count."""

    tensors: Mapping[str, tuple[str, tuple[int, ...]]]
    metadata: Mapping[str, str]

    @property
    def dtypes(self) -> list[str]:
        """Sorted distinct dtype names of the tensors."""
        return sorted({d for d, _ in self.tensors.values()})

    @property
    def dtype(self) -> str:
        """The one dtype of all tensors, or `mixed(a,b)` when they differ."""
        ds = self.dtypes
        return ds[0] if len(ds) == 1 else f"mixed({','.join(ds)})"

    @property
    def n_params(self) -> int:
        """Total number of elements over all tensors."""
        return n_params({name: shape for name, (_, shape) in self.tensors.items()})

    def shape(self, name: str) -> tuple[int, ...] | None:
        """Shape of a tensor, None when absent."""
        entry = self.tensors.get(name)
        return entry[1] if entry else None


def read_summary(path: str | Path) -> WeightsSummary:
    """The strictly validated safetensors header (`safetensors_io.read_header`), no tensor data read.

    Raises HeaderError for anything read_header rejects (a truncated or corrupt file included).
    """
    try:
        infos, meta = read_header(path)
    except IntegrityError as e:
        raise HeaderError(f"{path}: {e.message}") from None
    return WeightsSummary({n: (ST_TO_NAME.get(i.dtype, i.dtype), i.shape) for n, i in infos.items()}, meta)


def block_count(names, prefix: str) -> int:
    """Number of numbered blocks under `prefix` (e.g. `layers.`): highest index + 1, 0 if none."""
    idx = {int(n[len(prefix):].split(".")[0]) for n in names if n.startswith(prefix)}
    return max(idx) + 1 if idx else 0


def build_model(arch: str, config: Mapping) -> nn.Module:
    """The model an `arch` and its config imply (Meta params.json for mtp, HF config.json for llama).

    Built on the current default device; wrap in `with torch.device("meta")` for shapes only.
    Raises ValueError on a config the model cannot represent.
    """
    if arch == "mtp":
        from .mtp import MTPTransformer
        return MTPTransformer(config)
    if arch == "llama":
        from .llama import LlamaForCausalLM
        return LlamaForCausalLM(config)
    raise ValueError(f"unknown arch {arch!r}; expected one of {', '.join(ARCHES)}")


def expected_shapes(arch: str, config: Mapping) -> dict[str, tuple[int, ...]]:
    """The state-dict keys and shapes a config implies, in sorted key order (tied lm_head left out).

    The config is checked as `build_model` checks it (ValueError when the model cannot represent
    it); the keys and shapes are `checkpoint_layout`'s, which equal the built model's state dict.
    """
    if arch not in ARCHES:
        raise ValueError(f"unknown arch {arch!r}; expected one of {', '.join(ARCHES)}")
    try:
        if arch == "mtp":
            shapes = meta_shapes(meta_params_with_defaults(config))
        else:
            shapes = hf_llama_shapes(hf_config_with_defaults(config))
    except LayoutError as e:
        raise ValueError(e.message) from None
    return dict(sorted(shapes.items()))


def is_legacy_key(arch: str, name: str) -> bool:
    """True for a documented legacy buffer that loading ignores (`rope.freqs`, `rotary_emb.inv_freq`)."""
    return name in META_LEGACY_KEYS if arch == "mtp" else _hf_legacy_key(name)


def key_problems(arch: str, expected: Mapping[str, tuple], found: Mapping[str, tuple]) -> list[str]:
    """Strict key matching: missing keys, unexpected keys and shape mismatches, one line each."""
    problems = [f"missing tensor {k} (expected shape {list(s)})" for k, s in expected.items() if k not in found]
    problems += [f"unexpected tensor {k}" for k in sorted(found)
                 if k not in expected and not is_legacy_key(arch, k)]
    problems += [f"tensor {k} has shape {list(found[k])}, the config implies {list(s)}"
                 for k, s in expected.items() if k in found and tuple(found[k]) != tuple(s)]
    return problems


def load_strict(arch: str, config: Mapping, path: str | Path, device: str | torch.device) -> nn.Module:
    """Build the model and load a safetensors file into it with strict key matching.

    Tensors keep the file's dtype; the model is materialised directly from them on `device`
    (built on `meta`, then assigned), so memory is one copy of the weights plus one tensor in
    flight. The file is read tensor by tensor with ordinary reads (`tensorfile`), never mapped,
    so it loads under an address-space limit too. Raises ValueError listing every key problem.
    """
    import torch

    from ..tensorfile import open_tensor_file

    found = {k: s for k, (_, s) in read_summary(path).tensors.items()}
    problems = key_problems(arch, expected_shapes(arch, config), found)
    if problems:
        raise ValueError("; ".join(problems))
    with open_tensor_file(path) as tf:
        state = {e.name: tf.read(e.name).to(device) for e in tf.entries if not is_legacy_key(arch, e.name)}
    with torch.device("meta"):
        model = build_model(arch, config)
    model.load_state_dict(state, strict=False, assign=True)  # keys already matched strictly above
    if arch == "llama" and model.config["tie_word_embeddings"]:
        model.lm_head.weight = model.model.embed_tokens.weight
    return model.eval()
