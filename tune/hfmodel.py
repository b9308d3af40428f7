"""The base GGUF as a torch model, and where that base comes from.

transformers dequantizes a GGUF into torch (`from_pretrained(dir, gguf_file=...)`),
reversing llama's q/k row permutation on the way in; `export` re-applies it to the
adapter. Only architectures whose linear layers map one-to-one onto llama.cpp
tensors are accepted, so every trained LoRA can be exported.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import hf_hub_download

from nanocommander.gguf_file import read_gguf
from nanocommander.tune.errors import MissingExtra, TrainingError

# GGUF architecture -> does llama.cpp store q/k rows permuted (llama's rotary layout)?
SUPPORTED = {"llama": True, "qwen2": False, "qwen3": False, "gemma3": False}
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class BaseInfo:
    """What export needs to know about the base: its architecture and head layout."""

    path: Path
    arch: str
    n_head: int
    n_head_kv: int
    n_layer: int
    file_type: str  # quantization_name: F32, F16, Q8_0, Q4_K_M, ...

    @property
    def permute_qk(self) -> bool:
        return SUPPORTED[self.arch]

    @property
    def quantized(self) -> bool:
        return self.file_type not in ("F32", "F16", "BF16")


def read_info(path: str | Path) -> BaseInfo:
    """The base's architecture and head layout, from the project's one GGUF header reader."""
    path = Path(path)
    try:
        info = read_gguf(path)
    except (OSError, ValueError) as exc:
        raise TrainingError(f"cannot read GGUF {path}: {exc}") from None
    if info.kind == "adapter":
        raise TrainingError(f"{path.name} is a LoRA adapter; --base needs the model it was made for")
    arch = info.architecture
    if arch not in SUPPORTED:
        raise TrainingError(
            f"{path.name}: architecture '{arch}' is not supported for tuning; "
            f"supported: {', '.join(SUPPORTED)}"
        )
    n_head = int(info.n_head or 0)
    return BaseInfo(
        path,
        arch,
        n_head,
        int(info.n_head_kv or n_head),
        int(info.n_layer or 0),
        info.quantization or "unknown",
    )


def load_torch_model(info: BaseInfo, *, device: str, dtype: str = "float32"):
    """Dequantize the GGUF into a transformers causal LM on `device`."""
    torch, transformers = _require("torch"), _require("transformers")
    quiet_libraries()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            str(info.path.parent), gguf_file=info.path.name, dtype=getattr(torch, dtype)
        )
    except (ValueError, KeyError, OSError, RuntimeError) as exc:
        raise TrainingError(f"transformers cannot load {info.path.name}: {exc}") from None
    return model.to(device)


def quiet_libraries() -> None:
    """Drop warnings about the libraries' internals (deprecations, PEFT's missing config.json)."""

    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    warnings.filterwarnings("ignore", message="Could not find a config file", category=UserWarning)


def resolve_base(spec: str) -> Path:
    """A local GGUF path, or `hf.co/user/repo:file.gguf` downloaded through the Hub cache."""
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    for prefix in ("hf.co/", "huggingface.co/", "hf://"):
        if spec.startswith(prefix):
            repo, _, filename = spec.removeprefix(prefix).partition(":")
            if not filename:
                raise TrainingError(f"'{spec}': name the file, e.g. hf.co/user/repo:model-Q8_0.gguf")

            try:
                return Path(hf_hub_download(repo_id=repo, filename=filename))
            except Exception as exc:  # the Hub's error types vary by version; all mean "not available"
                raise TrainingError(f"cannot download {filename} from {repo}: {exc}") from None
    raise TrainingError(f"base model not found: {spec} (give a .gguf path or hf.co/user/repo:file.gguf)")


def pick_device(requested: str | None) -> str:
    torch = _require("torch")
    if requested:
        return requested
    return "cuda" if torch.cuda.is_available() else "cpu"


def _require(name: str):
    try:
        return __import__(name)
    except ImportError:
        raise MissingExtra(name) from None
