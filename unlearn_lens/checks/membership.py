"""Membership inference: does pruning hide which texts the model was trained on?

A model usually fits its training texts (members) better than texts it never saw
(non-members). Three standard scores measure how well it fits one text, and the
AUC of each score says how well it tells members from non-members (0.5: not at
all). Comparing the AUC before and inside :func:`unlearn_lens.pruned` shows
whether pruning hides, keeps or sharpens the trace of training.

Each text is scored on its own, in one row laid out as :mod:`unlearn_lens.data`
lays out rows: ``[BOS, t_1, ..., t_m]``, where ``t_1 ... t_n`` are the text's tokens
(no special tokens added, no end-of-text token appended) and ``m = min(n, seq_len - 1)``,
so a long text is cut to its first ``seq_len - 1`` tokens. The ``m`` scored
positions each predict their token ``t_i`` from ``BOS, t_1, ..., t_{i-1}``; let
``log p_i`` be its natural log-probability under the model. Then:

* **LOSS** (Yeom et al. 2018): ``-mean_i log p_i``, the mean next-token
  cross-entropy in nats. Lower is more member-like.
* **zlib ratio** (after Carlini et al. 2021): the model's code length of the scored
  text divided by zlib's, both in bits: ``(-sum_i log2 p_i) / (8 * Z)``, where ``Z``
  is the length in bytes of ``zlib.compress`` (default level) of the UTF-8 bytes of
  the scored text (the whole text when all its tokens are scored, else the decoded
  first ``m`` tokens). Carlini et al. divide log-perplexity by zlib entropy; this
  form compares two code lengths of the same bytes, so it does not grow with the
  text's length. Lower is more member-like (the model compresses the text far
  better than a generic compressor does).
* **Min-K % Prob** (Shi et al. 2023): the mean of ``log p_i`` over the
  ``max(1, floor(k * m + 1/2))`` positions with the lowest ``log p_i`` (k = 0.2 by
  default). Higher is more member-like: a seen text has few very surprising tokens.

The AUC is the Mann-Whitney statistic ``U / (n_members * n_nonmembers)``: the share
of (member, non-member) pairs in which the member's score is the more member-like,
a tie counting one half. 1.0 means every member looks more like a member than
every non-member; 0.5 is chance; below 0.5 the score points the wrong way.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from tqdm.auto import tqdm

from unlearn_lens._version import __version__
from unlearn_lens.ablations import Ablation
from unlearn_lens.data import default_seq_len, special_ids
from unlearn_lens.errors import UnlearnLensError
from unlearn_lens.masks import Masks
from unlearn_lens.models import exclusive, model_device, model_name
from unlearn_lens.pruning import pruned

__all__ = ["MEMBER_SIDE", "SCORES", "MembershipResult", "TextScores", "auc", "membership_check", "text_scores"]

SCORES = ("loss", "zlib", "min_k")
"""The membership scores, by their field names in :class:`TextScores`."""

MEMBER_SIDE = {"loss": "low", "zlib": "low", "min_k": "high"}
"""Which end of each score is member-like: the orientation :func:`membership_check` gives :func:`auc`."""


@dataclass
class TextScores:
    """Membership scores of texts, one entry per text in the order given.

    Attributes:
        loss: ``[n_texts]`` mean next-token cross-entropy over the scored tokens (nats).
        zlib: ``[n_texts]`` model code length / zlib code length of the scored text (bits / bits).
        min_k: ``[n_texts]`` mean log-probability (nats) of the lowest ``k`` share of scored tokens.
        n_tokens: ``[n_texts]`` tokens scored (the text's tokens, at most ``seq_len - 1``).
        zlib_bytes: ``[n_texts]`` length in bytes of the zlib-compressed scored text.
        k: the share of tokens of ``min_k``.
        seq_len: row length (BOS included) the texts were cut to.
    """

    loss: Float[torch.Tensor, " n_texts"]
    zlib: Float[torch.Tensor, " n_texts"]
    min_k: Float[torch.Tensor, " n_texts"]
    n_tokens: Int[torch.Tensor, " n_texts"]
    zlib_bytes: Int[torch.Tensor, " n_texts"]
    k: float
    seq_len: int

    def __len__(self) -> int:
        return int(self.loss.shape[0])

    def score(self, name: str) -> Float[torch.Tensor, " n_texts"]:
        """One score by name (``"loss"``, ``"zlib"`` or ``"min_k"``)."""
        if name not in SCORES:
            raise UnlearnLensError(f"unknown membership score {name!r}; choose one of {', '.join(SCORES)}")
        return getattr(self, name)

    def to_dict(self) -> dict[str, Any]:
        """Every per-text tensor as a list, with ``k`` and ``seq_len``."""
        tensors = {name: getattr(self, name).tolist() for name in (*SCORES, "n_tokens", "zlib_bytes")}
        return tensors | {"k": self.k, "seq_len": self.seq_len}


def _texts(texts: Iterable[str], what: str) -> list[str]:
    if isinstance(texts, str):
        raise UnlearnLensError(f"{what} must be a list of strings, not one string (wrap it in a list)")
    out = list(texts)
    if not out:
        raise UnlearnLensError(f"no {what} to score")
    for i, text in enumerate(out):
        if not isinstance(text, str):
            raise UnlearnLensError(f"{what}[{i}] is a {type(text).__name__}, not a string")
    return out


def _check_k(k: float) -> None:
    if not isinstance(k, (int, float)) or isinstance(k, bool) or not 0 < k <= 1:
        raise UnlearnLensError(f"k (the share of lowest-probability tokens of Min-K %) must be in (0, 1], got {k!r}")


def _row_length(model: Any, seq_len: int | None) -> int:
    width = default_seq_len(model) if seq_len is None else seq_len
    n_ctx = getattr(getattr(model, "cfg", None), "n_ctx", None)
    if not isinstance(width, int) or isinstance(width, bool) or width < 2:
        raise UnlearnLensError(f"seq_len must be an integer of at least 2, got {seq_len!r}")
    if n_ctx and width > n_ctx:
        raise UnlearnLensError(
            f"rows of {width} tokens are longer than the context of model {model_name(model)!r} "
            f"({n_ctx} tokens); choose seq_len <= {n_ctx}"
        )
    return width


def _reduce(
    logp: Float[torch.Tensor, "batch pos"], lengths: Int[torch.Tensor, " batch"], k: float
) -> tuple[Float[torch.Tensor, " batch"], Float[torch.Tensor, " batch"]]:
    """LOSS and Min-K of each row from its token log-probabilities; positions past ``lengths`` are padding."""
    positions = torch.arange(logp.shape[1])
    real = positions[None, :] < lengths[:, None]
    loss = -torch.where(real, logp, 0.0).sum(1) / lengths
    lowest = torch.where(real, logp, math.inf).sort(dim=1).values  # ascending: padding last
    n_low = torch.clamp(torch.floor(k * lengths.double() + 0.5), min=1).long()
    chosen = positions[None, :] < n_low[:, None]
    min_k = torch.where(chosen, lowest, 0.0).sum(1) / n_low
    return loss, min_k


@torch.no_grad()
def text_scores(
    model: Any,
    texts: Iterable[str],
    *,
    seq_len: int | None = None,
    batch_size: int = 8,
    k: float = 0.2,
    progress: bool = False,
) -> TextScores:
    """Score each text with LOSS, zlib ratio and Min-K % Prob (see the module docstring).

    The model is scored as it runs: inside :func:`unlearn_lens.pruned` that is the
    pruned model.

    Args:
        model: a TransformerLens model with a tokenizer.
        texts: the texts (each scored on its own, cut to its first ``seq_len - 1`` tokens).
        seq_len: row length, BOS included (default: the model's context, at most 256).
        batch_size: texts per forward pass (padded to the longest; texts are batched by length).
        k: the share of lowest-probability tokens that Min-K % averages, in (0, 1].
        progress: show a progress bar.

    Returns:
        :class:`TextScores`, tensors ``[n_texts]`` in the order of ``texts``.

    Raises:
        UnlearnLensError: no texts, a text with no tokens, ``k`` out of (0, 1], a bad
            ``seq_len`` or ``batch_size``, or a model without a tokenizer.
    """
    texts = _texts(texts, "texts")
    _check_k(k)
    if not isinstance(batch_size, int) or batch_size <= 0:
        raise UnlearnLensError(f"batch_size must be a positive integer, got {batch_size!r}")
    width = _row_length(model, seq_len)
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise UnlearnLensError(f"model {model_name(model)!r} has no tokenizer")
    bos, _, pad = special_ids(tokenizer)
    full = tokenizer(texts, add_special_tokens=False)["input_ids"]
    empty = [i for i, ids in enumerate(full) if not ids]
    if empty:
        raise UnlearnLensError(f"texts {empty[:5]} give no tokens; every text needs at least one token to score")
    kept = [list(ids[: width - 1]) for ids in full]
    lengths = torch.tensor([len(ids) for ids in kept], dtype=torch.long)
    order = sorted(range(len(kept)), key=lambda i: -len(kept[i]))  # longest first: little padding per batch
    loss = torch.empty(len(kept), dtype=torch.float64)
    min_k = torch.empty(len(kept), dtype=torch.float64)
    device = model_device(model)
    bar = tqdm(total=len(kept), desc="membership scores", unit="text", disable=not progress, leave=False)
    with exclusive(model, "text_scores"):
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            rows = torch.full((len(idx), int(lengths[idx].max()) + 1), pad, dtype=torch.long)
            rows[:, 0] = bos
            for r, i in enumerate(idx):
                rows[r, 1 : 1 + len(kept[i])] = torch.tensor(kept[i], dtype=torch.long)
            rows = rows.to(device)
            logits = model(rows)[:, :-1].float()
            logp = logits.log_softmax(-1).gather(-1, rows[:, 1:, None]).squeeze(-1).double().cpu()
            loss[idx], min_k[idx] = _reduce(logp, lengths[idx], k)
            bar.update(len(idx))
    bar.close()
    scored = [
        text if len(kept[i]) == len(full[i]) else tokenizer.decode(kept[i], clean_up_tokenization_spaces=False)
        for i, text in enumerate(texts)
    ]
    zlib_bytes = torch.tensor([len(zlib.compress(text.encode("utf-8"))) for text in scored], dtype=torch.long)
    model_bits = loss * lengths / math.log(2)
    return TextScores(
        loss=loss,
        zlib=model_bits / (8 * zlib_bytes),
        min_k=min_k,
        n_tokens=lengths,
        zlib_bytes=zlib_bytes,
        k=float(k),
        seq_len=width,
    )


def auc(
    members: Float[torch.Tensor, " n_members"],
    nonmembers: Float[torch.Tensor, " n_nonmembers"],
    *,
    higher_is_member: bool = True,
) -> float:
    """Area under the ROC curve of a score, members against non-members, by Mann-Whitney U.

    ``U / (n_members * n_nonmembers)``, where U counts the (member, non-member) pairs in
    which the member's score is the more member-like (the higher one, or the lower one
    with ``higher_is_member=False``), a tie counting 1/2. Computed from mid-ranks, in
    float64.

    Args:
        members: ``[n_members]`` scores of members.
        nonmembers: ``[n_nonmembers]`` scores of non-members.
        higher_is_member: whether a higher score means "more likely a member".

    Returns:
        The AUC in [0, 1]: 1.0 when every member looks more like a member than every
        non-member, 0.5 for chance.

    Raises:
        UnlearnLensError: an empty side, or a NaN score.
    """
    m = torch.as_tensor(members, dtype=torch.float64).reshape(-1).cpu()
    n = torch.as_tensor(nonmembers, dtype=torch.float64).reshape(-1).cpu()
    if m.numel() == 0 or n.numel() == 0:
        raise UnlearnLensError(f"an AUC needs at least one member and one non-member, got {m.numel()} and {n.numel()}")
    if bool(torch.isnan(m).any() | torch.isnan(n).any()):
        raise UnlearnLensError("cannot compute an AUC of scores that contain NaN")
    if not higher_is_member:
        m, n = -m, -n
    _, inverse, counts = torch.unique(torch.cat([m, n]), sorted=True, return_inverse=True, return_counts=True)
    first = torch.cumsum(counts, 0) - counts  # 0-based rank of each distinct value's first occurrence
    mid_rank = first.double() + (counts.double() + 1) / 2  # 1-based mean rank of the tied group
    rank_sum = mid_rank[inverse[: m.numel()]].sum()
    u = rank_sum - m.numel() * (m.numel() + 1) / 2
    return float(u / (m.numel() * n.numel()))


def _aucs(members: TextScores, nonmembers: TextScores) -> dict[str, float]:
    return {
        name: auc(members.score(name), nonmembers.score(name), higher_is_member=MEMBER_SIDE[name] == "high")
        for name in SCORES
    }


@dataclass
class MembershipResult:
    """AUC of each membership score, members against non-members, unpruned and pruned.

    Attributes:
        unpruned: AUC of each score (``"loss"``, ``"zlib"``, ``"min_k"``) on the model as given.
        pruned: the same inside :func:`unlearn_lens.pruned` with the masks; None without masks.
        members, nonmembers: the unpruned scores of each text.
        members_pruned, nonmembers_pruned: the pruned scores (None without masks).
        settings: k, seq_len, the ablation and the units pruned, the library version.
    """

    unpruned: dict[str, float]
    pruned: dict[str, float] | None
    members: TextScores
    nonmembers: TextScores
    members_pruned: TextScores | None
    nonmembers_pruned: TextScores | None
    settings: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """AUCs, settings and every per-text score, as plain JSON-ready data."""
        parts = {
            "members": self.members,
            "nonmembers": self.nonmembers,
            "members_pruned": self.members_pruned,
            "nonmembers_pruned": self.nonmembers_pruned,
        }
        return {
            "unpruned": dict(self.unpruned),
            "pruned": None if self.pruned is None else dict(self.pruned),
            "settings": dict(self.settings),
        } | {k: None if v is None else v.to_dict() for k, v in parts.items()}


def membership_check(
    model: Any,
    members: Iterable[str],
    nonmembers: Iterable[str],
    *,
    masks: Masks | None = None,
    ablation: Ablation | str = "zero",
    seq_len: int | None = None,
    batch_size: int = 8,
    k: float = 0.2,
    progress: bool = False,
) -> MembershipResult:
    """How well each membership score separates training texts from unseen ones, before and after pruning.

    Scores every text with :func:`text_scores` on the model as given and, with
    ``masks``, again inside ``pruned(model, masks, ablation)``, and
    takes the AUC of each score, members against non-members (:func:`auc`, oriented
    by :data:`MEMBER_SIDE`). The model is left as it was given.

    Args:
        model: a TransformerLens model.
        members: texts the model was trained on.
        nonmembers: texts it was not trained on (best: from the same distribution, and as many).
        masks, ablation: the units to prune and what they read, as for :func:`unlearn_lens.pruned`
            (a run's ``run.masks, run.ablation``); without ``masks`` only the unpruned AUCs are measured.
        seq_len, batch_size, k, progress: as :func:`text_scores`.

    Returns:
        :class:`MembershipResult`.

    Raises:
        UnlearnLensError: no members or no non-members, ``k`` out of (0, 1], or
            masks / means that do not fit the model.
    """
    members = _texts(members, "members")
    nonmembers = _texts(nonmembers, "nonmembers")
    _check_k(k)
    options = dict(seq_len=seq_len, batch_size=batch_size, k=k, progress=progress)
    settings: dict[str, Any] = {
        "k": float(k),
        "n_members": len(members),
        "n_nonmembers": len(nonmembers),
        "version": __version__,
    }
    pruned_scores: tuple[TextScores, TextScores] | None = None
    if masks is not None:  # first, so that masks or means that do not fit fail before any scoring
        with pruned(model, masks, ablation) as handle:
            pruned_scores = (text_scores(model, members, **options), text_scores(model, nonmembers, **options))
        settings |= {"ablation": handle.ablation.to_dict(), "n_mlp_pruned": masks.n_mlp, "n_attn_pruned": masks.n_attn}
    before = (text_scores(model, members, **options), text_scores(model, nonmembers, **options))
    settings["seq_len"] = before[0].seq_len
    return MembershipResult(
        unpruned=_aucs(*before),
        pruned=None if pruned_scores is None else _aucs(*pruned_scores),
        members=before[0],
        nonmembers=before[1],
        members_pruned=None if pruned_scores is None else pruned_scores[0],
        nonmembers_pruned=None if pruned_scores is None else pruned_scores[1],
        settings=settings,
    )
