"""Loading models and addressing the units that selective pruning works on.

Everything is addressed by TransformerLens hook name through the interface that
``TransformerBridge`` (TransformerLens 4) and the legacy ``HookedTransformer``
(TransformerLens 3.9) share: ``hook_dict``, ``cfg``, ``tokenizer`` and a forward
pass that maps tokens ``[batch pos]`` to logits ``[batch pos d_vocab]``.

Two kinds of unit are used:

* MLP neurons: ``blocks.{l}.mlp.hook_post``, ``[batch pos d_mlp]``, the input of the
  MLP output projection (act(gate) * up for gated MLPs);
* attention neurons: ``blocks.{l}.attn.hook_z``, ``[batch pos head d_head]``, the
  per-head attention output before W_O.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from unlearn_lens.demo import DEMO_MODEL_DIR, demo_model_dir
from unlearn_lens.errors import UnlearnLensError

__all__ = [
    "UNIT_KINDS",
    "ModelDims",
    "add_hook",
    "attached",
    "attn_hook_name",
    "check_hooks",
    "check_kind",
    "exclusive",
    "hook_name",
    "load_model",
    "mlp_hook_name",
    "model_device",
    "model_dims",
    "model_fingerprint",
    "model_label",
    "model_name",
    "per_kind",
    "remove_hook",
    "underlying_model",
]

logger = logging.getLogger(__name__)


def mlp_hook_name(layer: int) -> str:
    """Hook of the MLP neurons of ``layer``: ``blocks.{layer}.mlp.hook_post``."""
    return f"blocks.{layer}.mlp.hook_post"


def attn_hook_name(layer: int) -> str:
    """Hook of the attention neurons of ``layer``: ``blocks.{layer}.attn.hook_z``."""
    return f"blocks.{layer}.attn.hook_z"


UNIT_KINDS = ("mlp", "attn")
"""The two kinds of unit: MLP neurons and attention neurons."""


def per_kind(shared: str, mlp: str | None, attn: str | None, *, what: str, choices: Sequence[str]) -> dict[str, str]:
    """A setting for each unit kind: ``mlp`` / ``attn`` where given, else ``shared``.

    Args:
        shared: the setting of both kinds unless overridden.
        mlp, attn: per-kind overrides (None: use ``shared``).
        what: the setting's name, for the error message.
        choices: the allowed values.

    Returns:
        ``{"mlp": ..., "attn": ...}``.

    Raises:
        UnlearnLensError: a value outside ``choices``.
    """
    out = {"mlp": shared if mlp is None else mlp, "attn": shared if attn is None else attn}
    for kind, value in out.items():
        if value not in choices:
            prefix = "" if value == shared else f"{kind}_"
            raise UnlearnLensError(f"unknown {prefix}{what} {value!r}; choose one of {', '.join(choices)}")
    return out


def check_kind(kind: str) -> str:
    """``kind`` itself if it is a unit kind (``"mlp"`` or ``"attn"``).

    Raises:
        UnlearnLensError: any other value.
    """
    if kind not in UNIT_KINDS:
        raise UnlearnLensError(f"unit kind must be 'mlp' or 'attn', got {kind!r}")
    return kind


def hook_name(kind: str, layer: int) -> str:
    """Hook of the units of one kind (``"mlp"`` or ``"attn"``) in ``layer``."""
    check_kind(kind)
    return mlp_hook_name(layer) if kind == "mlp" else attn_hook_name(layer)


@dataclass(frozen=True)
class ModelDims:
    """The unit shapes of a model: ``[n_layers, d_mlp]`` and ``[n_layers, n_heads, d_head]``."""

    n_layers: int
    d_mlp: int
    n_heads: int
    d_head: int

    @classmethod
    def of(cls, model: Any) -> ModelDims:
        """The unit shapes of ``model`` (see :func:`model_dims`)."""
        return model_dims(model)

    @property
    def mlp_shape(self) -> tuple[int, int]:
        return (self.n_layers, self.d_mlp)

    @property
    def attn_shape(self) -> tuple[int, int, int]:
        return (self.n_layers, self.n_heads, self.d_head)

    @property
    def n_mlp(self) -> int:
        """All MLP neurons of the model: ``n_layers * d_mlp``."""
        return self.n_layers * self.d_mlp

    @property
    def n_attn(self) -> int:
        """All attention neurons of the model: ``n_layers * n_heads * d_head``."""
        return self.n_layers * self.n_heads * self.d_head

    def n_units(self, kind: str) -> int:
        """All units of one kind (``"mlp"`` or ``"attn"``)."""
        return self.n_mlp if kind == "mlp" else self.n_attn

    def to_dict(self) -> dict[str, int]:
        return {"n_layers": self.n_layers, "d_mlp": self.d_mlp, "n_heads": self.n_heads, "d_head": self.d_head}


def model_name(model: Any) -> str:
    """A readable name for a model (its config's ``model_name`` or its class)."""
    cfg = getattr(model, "cfg", None)
    name = getattr(cfg, "model_name", None)
    return str(name) if name else type(model).__name__


def check_hooks(model: Any) -> None:
    """Fail unless every layer has ``mlp.hook_post`` and ``attn.hook_z``.

    Raises:
        UnlearnLensError: naming the first missing hook and the model.
    """
    hook_dict = getattr(model, "hook_dict", None)
    if hook_dict is None or not hasattr(model, "cfg"):
        raise UnlearnLensError(
            f"{type(model).__name__} is not a TransformerLens model (no hook_dict/cfg); "
            "pass a TransformerBridge, a HookedTransformer, a hub id or a local HF directory"
        )
    n_layers = int(model.cfg.n_layers)
    for layer in range(n_layers):
        for name in (mlp_hook_name(layer), attn_hook_name(layer)):
            if name not in hook_dict:
                raise UnlearnLensError(
                    f"model {model_name(model)!r} has no hook {name!r}; selective pruning needs "
                    "MLP post-activations and per-head attention outputs in every layer"
                )


def model_dims(model: Any) -> ModelDims:
    """Unit shapes of ``model``, read off its hooks with a two-token forward pass (cached).

    Reading the shapes from a real forward pass (rather than from ``cfg``) gives the
    right answer for gated MLPs and grouped-query attention alike.
    """
    cached = getattr(model, "_unlearn_lens_dims", None)
    if isinstance(cached, ModelDims):
        return cached
    check_hooks(model)
    n_layers = int(model.cfg.n_layers)
    shapes: dict[str, tuple[int, ...]] = {}

    def recorder(kind: str) -> Any:
        def record(x: torch.Tensor, hook: Any) -> None:
            shapes[kind] = tuple(x.shape)

        return record

    tokens = torch.zeros((1, 2), dtype=torch.long, device=model_device(model))
    with attached(model, [(mlp_hook_name(0), recorder("mlp")), (attn_hook_name(0), recorder("attn"))]):
        with torch.no_grad():
            model(tokens)
    mlp, attn = shapes.get("mlp"), shapes.get("attn")
    if mlp is None or attn is None or len(attn) != 4:
        raise UnlearnLensError(f"model {model_name(model)!r}: could not read unit shapes from its hooks (got {shapes})")
    dims = ModelDims(n_layers=n_layers, d_mlp=mlp[-1], n_heads=attn[2], d_head=attn[3])
    try:
        object.__setattr__(model, "_unlearn_lens_dims", dims)
    except Exception:  # pragma: no cover - exotic module classes
        pass
    return dims


def model_device(model: Any) -> torch.device:
    """The device of the model's first parameter (CPU if it has none)."""
    for param in model.parameters():
        return param.device
    return torch.device("cpu")


def _resolve_dtype(dtype: Any) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    names = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "float16": torch.float16,
        "fp16": torch.float16,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float64": torch.float64,
    }
    if str(dtype) not in names:
        raise UnlearnLensError(f"unknown dtype {dtype!r}; choose one of {sorted(names)}")
    return names[str(dtype)]


def _model_source(model: str | os.PathLike) -> tuple[str, Path]:
    """``(source, path)``: what :func:`load_model` loads for ``model`` (a resolved local directory or a Hub id),
    and the path that ``model`` names.

    Raises:
        UnlearnLensError: a local path that is not a Hugging Face model directory.
    """
    source = str(model)
    if source == "demo":
        source = str(demo_model_dir())
    path = Path(source).expanduser()
    # Hub ids are "name" or "org/name"; anything else that does not exist is a missing path.
    looks_local = path.exists() or source.startswith((".", "/", "~")) or source.count("/") > 1
    if looks_local and not path.is_dir():
        raise UnlearnLensError(f"model directory {source!r} does not exist")
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UnlearnLensError(f"model directory {source!r} has no config.json (not a Hugging Face model)")
        source = str(path.resolve())
    return source, path


def load_model(
    model: Any,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    tokenizer: Any = None,
    device_map: str | dict[str, Any] | None = None,
    offload_folder: str | os.PathLike | None = None,
) -> Any:
    """Load a model for selective pruning.

    Args:
        model: ``"demo"`` (the bundled demo model), a local Hugging Face model
            directory, a Hub id such as ``"EleutherAI/pythia-160m"`` (needs the
            network the first time), or an existing ``TransformerBridge`` or legacy
            ``HookedTransformer``, which is returned as it is after the checks.
        device: where to put a loaded model (default: CUDA if available, else CPU).
        dtype: weight dtype of a loaded model (default float32).
        tokenizer: an optional tokenizer to use instead of the model's own.
        device_map: place the layers of a model larger than one device:
            ``"auto"``, ``"balanced"`` or an explicit map of module names to devices
            (``"cuda:0"``, ``"cpu"``, ``"disk"``), as in Hugging Face ``from_pretrained``;
            instead of ``device``. Statistics gather each layer's per-batch sums onto
            the first device; pruning hooks follow each activation's device.
        offload_folder: where weights mapped to ``"disk"`` are kept (default: a temporary folder).

    Returns:
        A TransformerLens model (a ``TransformerBridge`` when loaded here), in eval mode.

    Raises:
        UnlearnLensError: the model cannot be found or loaded, or lacks a needed hook.
    """
    if not isinstance(model, (str, os.PathLike)):
        check_hooks(model)
        if tokenizer is not None:
            model.tokenizer = tokenizer
        return model

    torch_dtype = _resolve_dtype(dtype) or torch.float32
    if device is not None and device_map is not None:
        raise UnlearnLensError("give device or device_map, not both (a device map places every layer itself)")
    if device is None and device_map is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    source, path = _model_source(model)

    from transformer_lens.model_bridge import TransformerBridge

    try:
        placement: dict[str, Any] = {"device": device}
        if device_map is not None:
            placement = {"device_map": device_map}
        if offload_folder is not None:  # older TransformerLens versions have no such argument
            placement["offload_folder"] = str(offload_folder)
        bridge = TransformerBridge.boot_transformers(source, dtype=torch_dtype, tokenizer=tokenizer, **placement)
    except UnlearnLensError:
        raise
    except Exception as exc:
        where = "local directory" if path.is_dir() else "Hub id (is the network reachable?)"
        raise UnlearnLensError(f"could not load model {str(model)!r} as a {where}: {exc}") from exc
    bridge.eval()
    if getattr(bridge, "tokenizer", None) is None:
        raise UnlearnLensError(f"model {str(model)!r} has no tokenizer; pass one with tokenizer=")
    check_hooks(bridge)
    logger.info("loaded %s on %s (%s)", model, device if device_map is None else device_map, torch_dtype)
    return bridge


def underlying_model(model: Any) -> Any:
    """The wrapped Hugging Face model of a bridge (``original_model``), else the model itself."""
    return getattr(model, "original_model", model)


_SIGN_BITS = 64  # sign bits read from each of the first two and last two weight tensors


def model_fingerprint(model: Any) -> str:
    """A short digest that tells this model from others: ``"sha256:<16 hex digits>"``.

    It hashes the unit shapes (:class:`ModelDims`), the vocabulary size, the names and
    shapes of the underlying model's weights, and the signs of the first 64 values of its
    first two and last two weight tensors. Signs survive a change of device or dtype
    (float32, bfloat16), so one model loaded twice has one fingerprint, while two models
    of the same shape with other weights differ in their signs. Every file of a run
    directory records it in place of a machine path, and a run is read again only with
    the model it names.
    """
    import hashlib
    import json

    dims = model_dims(model)
    params = list(underlying_model(model).named_parameters())
    signs = []
    for _, value in params[:2] + params[-2:]:
        if value.device.type == "meta":  # offloaded: its values are elsewhere
            continue
        flat = value.detach().reshape(-1)[:_SIGN_BITS]
        signs.append("".join("1" if v > 0 else "0" for v in flat.float().cpu().tolist()))
    record = {
        "dims": dims.to_dict(),
        "d_vocab": int(getattr(getattr(model, "cfg", None), "d_vocab", 0) or 0),
        "weights": [[name, list(value.shape)] for name, value in params],
        "signs": signs,
    }
    digest = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()
    return f"sha256:{digest[:16]}"


def model_label(model: Any) -> str:
    """A name for a model that holds no machine path: ``"demo"``, a Hub id, or a local directory's own name."""
    name = model_name(model)
    path = Path(name)
    if not path.is_absolute():
        return name
    if path.resolve() == DEMO_MODEL_DIR.resolve():
        return "demo"
    return path.name


def add_hook(model: Any, name: str, fn: Any) -> Any:
    """Add a forward hook ``fn(activation, hook)`` at hook point ``name``; returns a handle for :func:`remove_hook`.

    Goes through ``HookPoint.add_hook`` so that a bridge's hook conversions apply
    (e.g. ``hook_z`` is seen as ``[batch pos head d_head]``).
    """
    point = model.hook_dict[name]
    before = list(point.fwd_hooks)
    handle = point.add_hook(fn, dir="fwd")
    if handle is None:  # older HookPoints return nothing: find the new handle
        handle = next(h for h in point.fwd_hooks if all(h is not b for b in before))
    return point, handle


def remove_hook(token: Any) -> None:
    """Remove a hook added by :func:`add_hook` (and only that one)."""
    point, handle = token
    handle.hook.remove()
    point.fwd_hooks = [h for h in point.fwd_hooks if h is not handle]


_GUARD = threading.Lock()


@contextlib.contextmanager
def exclusive(model: Any, what: str) -> Iterator[None]:
    """Claim ``model`` for the calling thread for the duration of the block.

    Hooks live on the model, not on a thread: two threads measuring one model at once
    would each see the other's activations. A second thread that tries is refused
    with a clear error; the same thread may nest claims (statistics inside pruning).

    Raises:
        UnlearnLensError: another thread holds the model.
    """
    me = threading.get_ident()
    with _GUARD:
        owner, depth = getattr(model, "_unlearn_lens_owner", (None, 0))
        if owner not in (None, me):
            raise UnlearnLensError(
                f"model {model_name(model)!r} is in use by another thread; {what} needs it alone "
                "(give each thread its own copy, e.g. copy.deepcopy(model))"
            )
        object.__setattr__(model, "_unlearn_lens_owner", (me, depth + 1))
    try:
        yield
    finally:
        with _GUARD:
            owner, depth = model._unlearn_lens_owner
            object.__setattr__(model, "_unlearn_lens_owner", (owner, depth - 1) if depth > 1 else (None, 0))


@contextlib.contextmanager
def attached(model: Any, hooks: Sequence[tuple[str, Any]]) -> Iterator[None]:
    """Add forward hooks ``(hook_name, fn(activation, hook))`` for the duration of the block.

    They are removed on exit, also after an exception; other hooks are left alone.
    """
    tokens = []
    try:
        for name, fn in hooks:
            tokens.append(add_hook(model, name, fn))
        yield
    finally:
        for token in reversed(tokens):
            remove_hook(token)
