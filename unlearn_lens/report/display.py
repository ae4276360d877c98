"""How units and their activations are shown: the rules shared by the neuron cards and the explorer.

* :class:`Unit`: a unit (an MLP neuron ``blocks.{l}.mlp.hook_post[..., i]`` or an attention
  neuron ``blocks.{l}.attn.hook_z[..., h, d]``) and its texts, made from
  :func:`unit_templates` (``"L2.N17"``, ``"attention neuron L1.H3.D5"``, its address);
* :class:`TokenDecoder` and :func:`token_text`: a token as visible text (newlines, tabs and
  carriage returns made visible, ``"∅"`` for an empty one);
* :func:`ramp_colour`: the colour of an activation relative to the unit's scale (red
  positive, blue negative, opacity the size);
* :func:`distinct_top`: the top ``n`` contexts, at most one per stretch of a row.

The explorer's JavaScript does not repeat these rules: :mod:`unlearn_lens.report.explorer`
hands it the unit templates and the colours of its activation levels as data.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from unlearn_lens.errors import UnlearnLensError
from unlearn_lens.models import ModelDims, check_kind, hook_name

__all__ = [
    "EMPTY_TOKEN",
    "TokenDecoder",
    "Unit",
    "distinct_top",
    "ramp_colour",
    "ramp_colours",
    "token_text",
    "unit_templates",
]

EMPTY_TOKEN = "∅"
"""What a token that decodes to no text is shown as."""

_VISIBLE = str.maketrans({"\n": "↵\n", "\t": "→", "\r": "␍"})
_ONE_LINE = str.maketrans({"\n": "↵", "\t": "→", "\r": "␍"})
_POSITIVE = (231, 76, 60)  # red
_NEGATIVE = (52, 152, 219)  # blue

_KIND = {"mlp": "MLP", "attn": "attn"}
_KIND_NAME = {"mlp": "MLP neuron", "attn": "attention neuron"}
_INDEX = {"mlp": "N{unit}", "attn": "H{head}.D{d}"}
_NAME = {"mlp": "L{layer}.mlp.{unit}", "attn": "L{layer}.attn.H{head}.D{d}"}
_NAMED = re.compile(r"L(\d+)\.(?:mlp\.|N)(\d+)|L(\d+)\.(?:attn\.)?H(\d+)\.D(\d+)", re.IGNORECASE)
_SUBSCRIPT = {"mlp": "[..., {unit}]", "attn": "[..., {head}, {d}]"}


def unit_templates(kind: str) -> dict[str, str]:
    """The texts of a unit of ``kind``, as ``str.format`` templates of ``layer``, ``unit``, ``head`` and ``d``.

    ``unit`` is the flat index (for attention ``head * d_head + d``). Keys: ``"kind"``
    (``MLP``, ``attn``), ``"index"`` (``N17``, ``H3.D5``), ``"label"`` (``L2.N17``,
    ``L1.H3.D5``), ``"title"`` (``MLP neuron L2.N17``), ``"address"``
    (``blocks.2.mlp.hook_post[..., 17]``, ``blocks.1.attn.hook_z[..., 3, 5]``) and ``"name"``
    (``L2.mlp.17``, ``L1.attn.H3.D5``: the name of exported records and of ``--dashboard-units``).
    """
    check_kind(kind)
    label = "L{layer}." + _INDEX[kind]
    hook = hook_name(kind, 0).replace(".0.", ".{layer}.", 1)
    return {
        "kind": _KIND[kind],
        "index": _INDEX[kind],
        "label": label,
        "title": f"{_KIND_NAME[kind]} {label}",
        "address": hook + _SUBSCRIPT[kind],
        "name": _NAME[kind],
    }


@dataclass(frozen=True)
class Unit:
    """One unit: its kind, layer and flat index (MLP neuron, or ``head * d_head + d``), and head and d."""

    kind: str
    layer: int
    index: int
    head: int | None = None
    d: int | None = None

    @property
    def hook(self) -> str:
        return hook_name(self.kind, self.layer)

    def text(self, what: str) -> str:
        """One of the unit's texts (a key of :func:`unit_templates`)."""
        return unit_templates(self.kind)[what].format(layer=self.layer, unit=self.index, head=self.head, d=self.d)

    @property
    def label(self) -> str:
        """``"L2.N17"`` or ``"L1.H3.D5"``."""
        return self.text("label")

    @property
    def title(self) -> str:
        """``"MLP neuron L2.N17"`` or ``"attention neuron L1.H3.D5"``."""
        return self.text("title")

    @property
    def address(self) -> str:
        """``"blocks.2.mlp.hook_post[..., 17]"`` or ``"blocks.1.attn.hook_z[..., 3, 5]"``."""
        return self.text("address")

    @property
    def name(self) -> str:
        """``"L2.mlp.17"`` or ``"L1.attn.H3.D5"``."""
        return self.text("name")

    @classmethod
    def parse(cls, text: str, dims: ModelDims) -> Unit:
        """The unit named ``text``: ``L2.mlp.17`` or ``L1.attn.H3.D5`` (also the labels ``L2.N17``, ``L1.H3.D5``).

        Raises:
            UnlearnLensError: a name of neither form, or a unit the model of ``dims`` does not have.
        """
        found = _NAMED.fullmatch(text.strip())
        if found is None:
            raise UnlearnLensError(f"unit {text!r} is not of the form L2.mlp.17 or L1.attn.H3.D5")
        if found.group(1) is not None:
            layer, index = int(found.group(1)), int(found.group(2))
            if layer >= dims.n_layers or index >= dims.d_mlp:
                raise UnlearnLensError(f"unit {text!r} does not exist: {dims.n_layers} layers of {dims.d_mlp} neurons")
            return cls("mlp", layer, index)
        layer, head, d = (int(found.group(g)) for g in (3, 4, 5))
        if layer >= dims.n_layers or head >= dims.n_heads or d >= dims.d_head:
            raise UnlearnLensError(
                f"unit {text!r} does not exist: {dims.n_layers} layers of {dims.n_heads} heads of {dims.d_head}"
            )
        return cls("attn", layer, head * dims.d_head + d, head, d)

    @classmethod
    def of(cls, kind: str, layer: int, index: int, dims: ModelDims) -> Unit:
        """The unit with a flat index in its layer (``head * d_head + d`` for an attention neuron)."""
        if check_kind(kind) == "mlp":
            return cls("mlp", layer, index)
        return cls("attn", layer, index, *divmod(index, dims.d_head))


def token_text(text: str, one_line: bool = False) -> str:
    """A decoded token as it is shown: newlines, tabs and carriage returns visible, :data:`EMPTY_TOKEN` if empty.

    In running text a newline is shown as ``↵`` and still breaks the line; with ``one_line``
    (a token in a table cell) it is ``↵`` alone.
    """
    return text.translate(_ONE_LINE if one_line else _VISIBLE) or EMPTY_TOKEN


class TokenDecoder:
    """Token id -> decoded text (cached), and the ids of the tokenizer's special tokens."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.special = {int(i) for i in (getattr(tokenizer, "all_special_ids", None) or [])}
        self.cache: dict[int, str] = {}

    def __call__(self, token: int) -> str:
        if token not in self.cache:
            if self.tokenizer is None:
                self.cache[token] = f"<{token}>"
            else:
                self.cache[token] = self.tokenizer.decode([token])
        return self.cache[token]

    def shown(self, token: int) -> str:
        """The token as it is shown (:func:`token_text`)."""
        return token_text(self(token))


def ramp_colour(value: float, scale: float = 1.0) -> str:
    """The background of a token whose activation is ``value``, for a unit whose largest |activation| is ``scale``.

    Red for positive, blue for negative activations, with ``|value| / scale`` (at most 1,
    two decimals) as opacity: ``ramp_colour(0.5) == "rgba(231,76,60,0.50)"``. A unit of
    scale 0 is drawn transparent.
    """
    level = max(-1.0, min(1.0, value / scale)) if scale > 0 else 0.0
    r, g, b = _POSITIVE if level >= 0 else _NEGATIVE
    return f"rgba({r},{g},{b},{abs(level):.2f})"


def ramp_colours(levels: int) -> list[str]:
    """The colours of activations quantised to ``-levels .. levels`` (in units of the scale / ``levels``), in order."""
    return [ramp_colour(q, levels) for q in range(-levels, levels + 1)]


def distinct_top(values: Sequence[float], positions: Sequence[int], n: int, gap: int, width: int) -> list[int]:
    """The best ``n`` of some candidate tokens, at most one per ``gap``-token stretch of a row.

    Args:
        values: the candidates' activations, highest first.
        positions: their flat positions ``row * width + pos``; the candidates end at the
            first negative position or ``-inf`` value.
        n: candidates to choose at most.
        gap: a candidate is skipped when a better one chosen lies in its row at most
            ``gap`` tokens away.
        width: the row length.

    Returns:
        Indices into ``values``, best first.
    """
    taken: list[int] = []
    for j, (value, p) in enumerate(zip(values, positions)):
        if len(taken) == n or p < 0 or value == -float("inf"):
            break
        row = p // width
        if all(positions[i] // width != row or abs(positions[i] - p) > gap for i in taken):
            taken.append(j)
    return taken
