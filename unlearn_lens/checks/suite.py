"""Does the capability come back? Relearning and membership checks of a finished run, kept beside it.

A run shows that forget accuracy falls while retain accuracy holds. Two checks ask
whether the capability was removed or only hidden:

* **relearning** (:mod:`unlearn_lens.checks.relearn`): fine-tune copies of the model, with the
  run's selective masks, its random baseline's masks and no masks, on forget text
  that neither the run's statistics nor its evaluation used, and follow forget top-1
  on the run's own evaluation tokens;
* **membership** (:mod:`unlearn_lens.checks.membership`): how well LOSS, zlib-ratio and
  Min-K % Prob tell the model's training texts from other texts, before and after
  pruning, per domain (only where the training texts are known, as for the demo);
* **overlap** (:mod:`unlearn_lens.checks.overlap`), given other runs (other forget sets against
  the same retain set): the Jaccard overlap of the units each pruned, beside random
  masks with the same counts and, optionally, the same runs on a randomly initialised copy.

:func:`run_checks` runs them for a :class:`~unlearn_lens.results.PruneRun`, reading the
run's data sources again (:func:`run_token_sets`); :meth:`RunChecks.save` writes
``checks.json`` into the run directory, and the report shows it.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unlearn_lens._io import read_json, write_json
from unlearn_lens._version import __version__
from unlearn_lens.checks.membership import membership_check
from unlearn_lens.checks.relearn import RelearnCurve, relearn_comparison
from unlearn_lens.config import is_int
from unlearn_lens.data import TokenSet
from unlearn_lens.errors import UnlearnLensError
from unlearn_lens.pipeline import run_tokens
from unlearn_lens.results import PruneRun

__all__ = ["CHECKS_NAME", "DEMO_MEMBERS", "RunChecks", "run_checks", "run_token_sets"]

CHECKS_NAME = "checks.json"

DEMO_MEMBERS = {"forget": ("demo:code:train", "demo:code"), "retain": ("demo:prose:train", "demo:prose")}
"""The demo model's training texts (members) and test texts (non-members) of each domain."""


def run_token_sets(
    run: PruneRun, model: Any, extra: Sequence[int] = (), *, trust_sources: bool = False
) -> dict[str, list[TokenSet]]:
    """The run's statistics and evaluation tokens of each dataset, read again from its sources, then ``extra``.

    Returns:
        ``{"forget": [statistics, evaluation, *extra], "retain": [...]}``; each budget of
        ``extra`` is packed from texts the run never used (see :func:`~unlearn_lens.pipeline.run_tokens`).

    Raises:
        SourceCheckError: the sources no longer give the run's tokens, or the run recorded no
            checksum of them (without ``trust_sources``).
        UnlearnLensError: the run does not name its data sources, or one cannot be read.
    """
    return {key: run_tokens(run, model, key, extra, trust_sources=trust_sources) for key in ("forget", "retain")}


@dataclass
class RunChecks:
    """The checks of one run.

    Attributes:
        relearn: ``{"selective" | "random" | "unpruned": RelearnCurve}`` (empty when not run).
        membership: per domain (``"forget"``, ``"retain"``): the AUC of each score unpruned
            and pruned, the texts' sources and counts (empty when not run).
        overlap: per unit kind, ``{"trained" | "random masks" | "random init": OverlapMatrix.to_dict()}``
            (empty when no other runs were given).
        notes: why a check is missing, or what to keep in mind reading it.
        version: unlearn_lens version.
        seconds: wall time.
    """

    relearn: dict[str, RelearnCurve] = field(default_factory=dict)
    membership: dict[str, dict[str, Any]] = field(default_factory=dict)
    overlap: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    version: str = __version__
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": 1,
            "version": self.version,
            "seconds": round(self.seconds, 3),
            "notes": list(self.notes),
            "relearn": {k: v.to_dict() for k, v in self.relearn.items()},
            "membership": self.membership,
            "overlap": self.overlap,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunChecks:
        return cls(
            {k: RelearnCurve.from_dict(v) for k, v in data.get("relearn", {}).items()},
            dict(data.get("membership", {})),
            dict(data.get("overlap", {})),
            list(data.get("notes", [])),
            data.get("version", "?"),
            float(data.get("seconds", 0.0)),
        )

    def report_parts(self) -> dict[str, Any]:
        """What the report shows: ``explain`` (paragraphs), ``notes``, ``figures`` (plotly) and ``tables``
        (``{"title", "header", "rows"}`` of strings)."""
        from unlearn_lens.checks.relearn import relearn_figure

        out: dict[str, Any] = {"explain": [], "notes": list(self.notes), "figures": [], "tables": []}
        if self.relearn:
            c = next(iter(self.relearn.values())).config
            out["explain"].append(
                f"Relearning: copies of the model, pruned with the run's selective masks, with its random baseline's "
                f"masks and not at all, are fine-tuned for {c.n_steps} AdamW steps (learning rate {c.lr:g}, "
                f"{c.batch_size} rows a step) on forget text the run never used, the pruned units held at their "
                "ablated values. Forget top-1 (solid) and retain top-1 (dashed) on the run's own evaluation tokens "
                "every few steps: a capability that comes back within a few steps was hidden rather than removed."
            )
            out["figures"].append(relearn_figure(self.relearn))
            rows = [
                [name, f"{curve.forget_top1[0]:.4f}", f"{curve.forget_top1[-1]:.4f}", str(curve.eval_steps[-1])]
                for name, curve in self.relearn.items()
            ]
            out["tables"].append(
                {
                    "title": "Relearning: forget top-1 before and after fine-tuning",
                    "header": ["masks", "before", "after", "steps"],
                    "rows": rows,
                }
            )
        if self.membership:
            out["explain"].append(
                "Membership: the AUC of telling the model's training texts (members) from texts it did not see "
                "(non-members) by LOSS, zlib ratio and Min-K % Prob, on the unpruned and on the pruned model (0.5: "
                "no trace of training). Pruning that unlearns the data, not only the skill, brings the forget "
                "domain's AUCs towards 0.5."
            )
            names = ("loss", "zlib", "min_k")
            rows = [
                [
                    domain,
                    f"{m['n_members']} of {m['members']}",
                    f"{m['n_nonmembers']} of {m['nonmembers']}",
                    *[
                        f"{m['unpruned'][k]:.3f} → {m['pruned'][k]:.3f}"
                        if m.get("pruned")
                        else f"{m['unpruned'][k]:.3f}"
                        for k in names
                    ],
                ]
                for domain, m in self.membership.items()
            ]
            out["tables"].append(
                {
                    "title": "Membership AUC, unpruned → pruned",
                    "rows": rows,
                    "header": ["domain", "members", "non-members", "LOSS", "zlib", "Min-K %"],
                }
            )
        if self.overlap:
            from unlearn_lens.checks.overlap import OverlapMatrix, overlap_figure

            mlp = {label: OverlapMatrix.from_dict(m) for label, m in self.overlap["mlp"].items()}
            out["explain"].append(
                "Capability overlap: the Jaccard overlap |A ∩ B| / |A ∪ B| of the MLP neurons pruned by this run and "
                "by the other runs given (other forget sets against the same retain set), beside random masks with "
                "the same per-layer counts"
                + (
                    " and the same runs on a randomly initialised copy of the model, "
                    "whose overlap comes from the architecture and the data statistics alone"
                    if "random init" in mlp
                    else ""
                )
                + ". Only overlap beyond the controls points to shared "
                "learned units."
            )
            out["figures"].append(overlap_figure(mlp.pop("trained"), controls=mlp))
        return out

    def save(self, run_dir: str | os.PathLike) -> Path:
        """Write ``checks.json`` into a run directory (atomically)."""
        path = Path(run_dir) / CHECKS_NAME
        write_json(path, self.to_dict())
        return path

    @classmethod
    def load(cls, run_dir: str | os.PathLike) -> RunChecks | None:
        """Read ``checks.json`` of a run directory; None if it has none.

        Raises:
            UnlearnLensError: the file is corrupt (named).
        """
        path = Path(run_dir) / CHECKS_NAME
        if not path.is_file():
            return None
        try:
            return cls.from_dict(read_json(path))
        except (KeyError, TypeError, ValueError, AttributeError, UnlearnLensError) as exc:
            raise UnlearnLensError(f"file {str(path)!r} is incomplete or corrupt ({exc})") from exc


def _texts(source: str | Iterable[str], n: int, what: str, seed: int) -> list[str]:
    """``n`` texts drawn at random (seeded) from the first ``10 * n`` of ``source``, in their order there.

    Drawing from a pool rather than taking the first ``n`` keeps the order a source lists
    its files in (alphabetical, by package) from deciding which kinds of text are compared.
    """
    from unlearn_lens.sources import iter_texts

    pool = []
    for text in iter_texts(source) if isinstance(source, (str, os.PathLike)) else source:
        pool.append(text)
        if len(pool) == 10 * n:
            break
    if not pool:
        raise UnlearnLensError(f"no {what} texts in {source!r}")
    picked = sorted(random.Random(seed).sample(range(len(pool)), min(n, len(pool))))
    return [pool[i] for i in picked]


def run_checks(
    model: Any,
    run: PruneRun,
    *,
    relearn: bool = True,
    members: Mapping[str, tuple[str | Iterable[str], str | Iterable[str]]] | None = None,
    n_texts: int = 100,
    others: Mapping[str, PruneRun] | None = None,
    init_control: bool = False,
    n_steps: int = 20,
    lr: float = 1e-4,
    batch_size: int = 8,
    eval_every: int = 5,
    eval_tokens: int = 10_000,
    seed: int = 0,
    trust_sources: bool = False,
    progress: bool = False,
) -> RunChecks:
    """Relearning and membership checks of ``run`` on ``model`` (the unpruned model it was made on).

    Args:
        model: the model.
        run: the run (a selective run; its baseline, if any, is checked beside it).
        relearn: run the relearning check: ``n_steps`` AdamW steps of ``batch_size`` rows on
            forget text after the run's budgets, evaluated on up to ``eval_tokens`` of the
            run's own evaluation tokens every ``eval_every`` steps.
        members: per domain, ``(members, nonmembers)``: training texts of the model and
            texts it did not see (sources as :func:`~unlearn_lens.sources.iter_texts` takes,
            or lists); ``n_texts`` of each, drawn at random from its first ``10 * n_texts``,
            are scored. None: no membership check (for the demo model, :data:`DEMO_MEMBERS`).
        n_texts: texts per side of the membership check.
        others: other runs on the same model, by name (e.g. other forget sets against the
            same retain set), for the overlap check; None: no overlap check.
        init_control: also run this run and ``others`` again on a randomly initialised copy
            of the model (the runs' own settings and data, read again from their sources).
        seed: seed of that draw and of the fine-tuning's row order.
        n_steps, lr, batch_size, eval_every, eval_tokens: relearning settings.
        trust_sources: read again the sources of runs that recorded no checksum of their tokens
            (see :func:`~unlearn_lens.pipeline.run_tokens`).
        progress: show progress bars.

    Returns:
        :class:`RunChecks`.

    Raises:
        UnlearnLensError: not a run, a model the run was not made with, or bad settings.
        SourceCheckError: the run's sources no longer give its tokens.
    """
    if not isinstance(run, PruneRun):
        raise UnlearnLensError(f"run must be a PruneRun, got {type(run).__name__}")
    run.check_model(model)
    if members and (not is_int(n_texts) or n_texts < 1):
        raise UnlearnLensError(f"n_texts must be a positive integer, got {n_texts!r}")
    t0 = time.time()
    out = RunChecks()
    if relearn:
        width = run.config.seq_len
        need = n_steps * batch_size * ((width or 256) - 1)
        data = run_token_sets(run, model, [need], trust_sources=trust_sources)
        forget_collect, forget_eval, forget_train = data["forget"]
        if forget_train.n_tokens < need:
            out.notes.append(
                f"The forget data ran out: relearning used {forget_train.n_tokens:,} training tokens "
                f"instead of {need:,} (rows are reused)."
            )
        out.relearn = relearn_comparison(
            model,
            run,
            forget_train,
            forget_eval,
            data["retain"][1],
            n_steps=n_steps,
            lr=lr,
            batch_size=batch_size,
            eval_every=eval_every,
            eval_tokens=eval_tokens,
            seed=seed,
            progress=progress,
        )
    else:
        out.notes.append("The relearning check was not run.")
    if members:
        cfg = run.config
        for domain, (inside, outside) in members.items():
            result = membership_check(
                model,
                _texts(inside, n_texts, f"{domain} member", seed),
                _texts(outside, n_texts, f"{domain} non-member", seed + 1),
                masks=run.masks,
                ablation=run.ablation,
                seq_len=cfg.seq_len,
                progress=progress,
            )
            out.membership[domain] = {
                "unpruned": result.unpruned,
                "pruned": result.pruned,
                "members": str(inside) if isinstance(inside, str) else "texts given",
                "nonmembers": str(outside) if isinstance(outside, str) else "texts given",
                "n_members": len(result.members),
                "n_nonmembers": len(result.nonmembers),
                "settings": result.settings,
            }
    else:
        out.notes.append("No membership check: the model's training texts were not given.")
    if others:
        out.overlap = _overlap(model, run, others, init_control, trust_sources, progress)
    out.seconds = time.time() - t0
    return out


def _overlap(
    model: Any,
    run: PruneRun,
    others: Mapping[str, PruneRun],
    init_control: bool,
    trust_sources: bool,
    progress: bool,
) -> dict[str, dict[str, Any]]:
    from unlearn_lens.checks.overlap import overlap_matrix, random_control, random_init_control

    runs = {"this run": run, **{str(k): v for k, v in others.items()}}
    if "this run" in others:
        raise UnlearnLensError("'this run' names the checked run; give the other runs other names")
    masks = {"trained": runs, "random masks": random_control(runs)}
    if init_control:

        def tokens(r: PruneRun, key: str) -> TokenSet:  # the run's statistics and evaluation tokens, in one set
            return TokenSet.concat(run_tokens(r, model, key, trust_sources=trust_sources))

        forget = {name: tokens(r, "forget") for name, r in runs.items()}
        retain = tokens(run, "retain")
        masks["random init"] = random_init_control(model, forget, retain, like=runs, progress=progress)
    return {kind: {label: overlap_matrix(m, kind).to_dict() for label, m in masks.items()} for kind in ("mlp", "attn")}
