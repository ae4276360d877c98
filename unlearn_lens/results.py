"""The record of a pruning run: its config, its steps, its separation numbers, and its directory.

:class:`PruneConfig` (from :mod:`unlearn_lens.config`) holds the settings of a run;
:class:`StepRecord` one step's evaluation; :class:`PruneRun` the whole run (and the
random baselines compared with it, one per seed), with :meth:`PruneRun.save` /
:meth:`PruneRun.load` owning the run directory.

The headline number of a run is :func:`retain_at_forget`: retain top-1 (relative to
the unpruned model) where forget top-1 first falls to a level (0.5 by default),
interpolated linearly between steps. It does not depend on where the run stopped,
unlike :func:`separability_area`, which closes the path with a straight line from
the last step to (0, 0).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from unlearn_lens._io import atomic_dir, read_json, read_safetensors, write_json, write_safetensors
from unlearn_lens._version import __version__
from unlearn_lens.ablations import ABLATION_FILES, Ablation
from unlearn_lens.config import PruneConfig
from unlearn_lens.errors import UnlearnLensError
from unlearn_lens.evaluate import EvalResult
from unlearn_lens.masks import Masks
from unlearn_lens.models import ModelDims
from unlearn_lens.rundir import check_results, check_tensor_files, file_sha256
from unlearn_lens.scoring import Scores
from unlearn_lens.stats import ActivationStats

__all__ = [
    "READABLE_FORMATS",
    "RESULTS_FORMAT",
    "STRATEGIES",
    "PruneConfig",
    "PruneRun",
    "StepRecord",
    "relative_path",
    "retain_at_forget",
    "separability_area",
]

logger = logging.getLogger(__name__)

RESULTS_FORMAT = 3
"""Version of the run directory layout written by :meth:`PruneRun.save`."""

READABLE_FORMATS = (2, 3)
"""Versions :meth:`PruneRun.load` reads (format 2: unlearn_lens 0.2, read under today's names)."""

STRATEGIES = ("selective", "random")


@dataclass
class StepRecord:
    """One point of a run's history.

    Attributes:
        step: 0 for the unpruned model.
        new_mlp, new_attn: units pruned at this step, per layer.
        mlp_counts, attn_counts: units pruned so far, per layer.
        forget, retain: evaluation after this step (held-out tokens).
        masks: cumulative masks after this step (in memory only, not saved).
        seconds: wall time of the step.
    """

    step: int
    new_mlp: list[int]
    new_attn: list[int]
    mlp_counts: list[int]
    attn_counts: list[int]
    forget: EvalResult
    retain: EvalResult
    masks: Masks | None = None
    seconds: float = 0.0

    @property
    def n_mlp(self) -> int:
        return sum(self.mlp_counts)

    @property
    def n_attn(self) -> int:
        return sum(self.attn_counts)

    def to_dict(self, dims: ModelDims, base: StepRecord | None = None) -> dict[str, Any]:
        out = {
            "step": self.step,
            "n_mlp": self.n_mlp,
            "n_attn": self.n_attn,
            "mlp_frac": self.n_mlp / dims.n_mlp,
            "attn_frac": self.n_attn / dims.n_attn,
            "new_mlp": self.new_mlp,
            "new_attn": self.new_attn,
            "mlp_counts": self.mlp_counts,
            "attn_counts": self.attn_counts,
            "forget": self.forget.to_dict(),
            "retain": self.retain.to_dict(),
            "seconds": round(self.seconds, 3),
        }
        if base is not None:
            out["forget_rel"] = self.forget.relative_to(base.forget)
            out["retain_rel"] = self.retain.relative_to(base.retain)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StepRecord:
        return cls(
            step=data["step"],
            new_mlp=list(data["new_mlp"]),
            new_attn=list(data["new_attn"]),
            mlp_counts=list(data["mlp_counts"]),
            attn_counts=list(data["attn_counts"]),
            forget=EvalResult.from_dict(data["forget"]),
            retain=EvalResult.from_dict(data["retain"]),
            seconds=float(data.get("seconds", 0.0)),
        )


def relative_path(history: Sequence[StepRecord], metric: str = "top1") -> tuple[list[float], list[float]]:
    """Forget and retain ``metric`` of every step relative to step 0: ``(xs, ys)``, starting at (1, 1)."""
    if metric not in ("top1", "topk"):
        raise UnlearnLensError(f"metric must be 'top1' or 'topk', got {metric!r}")
    if not history:
        raise UnlearnLensError("empty history")
    f0, r0 = getattr(history[0].forget, metric), getattr(history[0].retain, metric)
    if not f0 or not r0:
        raise UnlearnLensError(f"unpruned {metric} is zero; the relative curve is undefined")
    xs = [1.0] + [max(getattr(s.forget, metric) / f0, 0.0) for s in history[1:]]
    ys = [1.0] + [max(getattr(s.retain, metric) / r0, 0.0) for s in history[1:]]
    return xs, ys


def retain_at_forget(history: Sequence[StepRecord], level: float = 0.5, metric: str = "top1") -> float | None:
    """Relative retain ``metric`` where relative forget ``metric`` first falls to ``level``.

    The path runs from (1, 1) through the steps; between the last step above ``level``
    and the first at or below it, retain is interpolated linearly in forget.

    Returns:
        The relative retain value there, or None if forget never falls to ``level``.
    """
    if not 0.0 <= level <= 1.0:
        raise UnlearnLensError(f"level must be in [0, 1], got {level!r}")
    xs, ys = relative_path(history, metric)
    for i, (x, y) in enumerate(zip(xs, ys)):
        if x <= level:
            if i == 0 or x == xs[i - 1]:
                return y
            t = (xs[i - 1] - level) / (xs[i - 1] - x)
            return ys[i - 1] + t * (y - ys[i - 1])
    return None


def separability_area(history: Sequence[StepRecord], metric: str = "top1") -> float:
    """Area under the retain-vs-forget path (relative to step 0), closed from its last step to (0, 0).

    The closing segment is a straight line from wherever the run stopped, so the area
    depends on the stop: a perfect run stopped at forget 0.5 scores at most 0.75,
    and two runs compare fairly only when they stop at similar forget levels. Prefer
    :func:`retain_at_forget` as a headline.
    """
    xs, ys = relative_path(history, metric)
    xs, ys = xs + [0.0], ys + [0.0]
    return sum((x0 - x1) * (y0 + y1) / 2 for x0, y0, x1, y1 in zip(xs, ys, xs[1:], ys[1:]))


PRUNED_STEP_FILE = "pruned_step.safetensors"  # PruneRun.pruned_step
_TENSOR_FILES = {  # attribute -> (file, loader); the ablation's retain values are saved by Ablation.save
    "forget_stats": ("forget_stats.safetensors", ActivationStats.load),
    "retain_stats": ("retain_stats.safetensors", ActivationStats.load),
    "initial_scores": ("initial_scores.safetensors", Scores.load),
    "scores": ("scores.safetensors", Scores.load),
}


@dataclass
class PruneRun:
    """A pruning run: its config, every step's evaluation, and what it leaves behind.

    Attributes:
        config: the settings.
        history: per step (step 0 = unpruned), see :class:`StepRecord`.
        masks: the final cumulative masks.
        dims: the model's unit shapes.
        strategy: ``"selective"`` or ``"random"`` (from :func:`random_baseline`).
        model: the model's name (``"demo"``, a Hub id, or a local directory's own name).
        fingerprint: the model's fingerprint (:func:`~unlearn_lens.models.model_fingerprint`), also
            recorded in every file of the run directory; "" for runs of unlearn_lens 0.2.
        ablation: what the pruned units read: the methods of ``config`` and the unpruned model's
            retain values they need (means, modes or sample); apply the run again with
            ``ul.pruned(model, run.masks, run.ablation)``. Default: the config's methods, no values.
        initial_scores: scores on the unpruned model (selective runs).
        scores: scores of the last step (selective runs).
        forget_stats, retain_stats: statistics of the last step (selective runs).
        baseline: the random baseline compared with this run, if one was made (the first seed).
        baselines: more random baselines of this run, one per further seed (empty: one seed);
            :meth:`random_runs` gives them all, ``baseline`` first.
        info: where the data came from (dataset names, text fields, split), as the
            command line records it.
        version: unlearn_lens version that made the run.
        seconds: total wall time.
        pruned_step: the step that pruned each unit (0: never), int32 ``(mlp [layer d_mlp],
            attn [layer head d_head])``, or None when unknown (runs saved before it was recorded).
    """

    config: PruneConfig
    history: list[StepRecord]
    masks: Masks
    dims: ModelDims
    strategy: str = "selective"
    model: str = ""
    fingerprint: str = ""
    ablation: Ablation = None  # type: ignore[assignment] - set from the config in __post_init__
    initial_scores: Scores | None = None
    scores: Scores | None = None
    forget_stats: ActivationStats | None = None
    retain_stats: ActivationStats | None = None
    baseline: PruneRun | None = None
    baselines: list[PruneRun] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    version: str = __version__
    seconds: float = 0.0
    pruned_step: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.ablation is None:
            self.ablation = Ablation(**self.config.ablations)
        if not isinstance(self.ablation, Ablation) or self.ablation.methods != self.config.ablations:
            got = self.ablation.methods if isinstance(self.ablation, Ablation) else type(self.ablation).__name__
            raise UnlearnLensError(f"the run's ablation {got} is not its config's {self.config.ablations}")

    @property
    def base(self) -> StepRecord:
        """Step 0: the unpruned model."""
        return self.history[0]

    @property
    def final(self) -> StepRecord:
        return self.history[-1]

    @property
    def seed(self) -> int:
        """The seed of the run's random choices: a baseline's own (``info["baseline_seed"]``), else ``config.seed``."""
        return int(self.info.get("baseline_seed", self.config.seed))

    def runs(self) -> dict[str, PruneRun]:
        """This run under its strategy's name, and its first baseline (if any) under ``"random"``."""
        out = {self.strategy: self}
        if self.baseline is not None:
            out[self.baseline.strategy] = self.baseline
        return out

    def random_runs(self) -> list[PruneRun]:
        """Every random baseline of this run, one per seed: ``baseline``, then ``baselines`` (empty without one)."""
        return [] if self.baseline is None else [self.baseline, *self.baselines]

    def relative_path(self, metric: str = "top1") -> tuple[list[float], list[float]]:
        """Forget and retain ``metric`` of every step relative to the unpruned model."""
        return relative_path(self.history, metric)

    def retain_at_forget(self, level: float = 0.5, metric: str = "top1") -> float | None:
        """Relative retain top-1 where relative forget top-1 first falls to ``level``.

        Linear interpolation between steps; None if forget never falls that far. This
        is the headline separation number: it does not depend on where the run stopped.
        """
        return retain_at_forget(self.history, level, metric)

    def separability_area(self, metric: str = "top1") -> float:
        """See :func:`separability_area` (depends on where the run stopped)."""
        return separability_area(self.history, metric)

    def check_model(self, model: Any) -> None:
        """Refuse a model other than the one the run was made with (by fingerprint; runs of 0.2 by shapes).

        Raises:
            UnlearnLensError: the model's unit shapes or fingerprint are not the run's.
        """
        from unlearn_lens.models import model_dims, model_fingerprint, model_name

        dims = model_dims(model)
        if dims != self.dims:
            raise UnlearnLensError(
                f"the run was made with a model of {self.dims.to_dict()}, not {model_name(model)!r} ({dims.to_dict()})"
            )
        if self.fingerprint and model_fingerprint(model) != self.fingerprint:
            raise UnlearnLensError(
                f"the run was made with another model than {model_name(model)!r} (fingerprint "
                f"{model_fingerprint(model)}, the run's is {self.fingerprint}): give the run's own model"
            )

    def summary(self, level: float = 0.5) -> dict[str, Any]:
        """Unpruned and final metrics, relative drops, pruned shares and the separation numbers."""
        return {
            "strategy": self.strategy,
            "n_steps": len(self.history) - 1,
            "mlp_frac": self.final.n_mlp / self.dims.n_mlp,
            "attn_frac": self.final.n_attn / self.dims.n_attn,
            "forget_top1": [self.base.forget.top1, self.final.forget.top1],
            "retain_top1": [self.base.retain.top1, self.final.retain.top1],
            "forget_rel": self.final.forget.relative_to(self.base.forget),
            "retain_rel": self.final.retain.relative_to(self.base.retain),
            "retain_at_forget": {"level": level, "metric": "top1", "value": self.retain_at_forget(level)},
            "separability_area": self.separability_area(),
        }

    def to_dict(self) -> dict[str, Any]:
        """Everything but the tensors (masks, statistics, scores), as JSON-ready data."""
        return {
            "strategy": self.strategy,
            "model": self.model,
            **({"fingerprint": self.fingerprint} if self.fingerprint else {}),
            "version": self.version,
            "dims": self.dims.to_dict(),
            "config": self.config.to_dict(),
            "info": self.info,
            "seconds": round(self.seconds, 3),
            "summary": self.summary(),
            "ablation": self.ablation.to_dict(),
            "history": [s.to_dict(self.dims, self.base) for s in self.history],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], masks: Masks | None = None) -> PruneRun:
        """Rebuild a run from :meth:`to_dict` (masks, scores, statistics and ablation values are stored apart)."""
        dims = ModelDims(**data["dims"])
        if not data["history"]:
            raise UnlearnLensError("the run has no steps (not even the unpruned model)")
        return cls(
            config=PruneConfig.from_dict(data["config"]),
            history=[StepRecord.from_dict(s) for s in data["history"]],
            masks=masks if masks is not None else Masks.empty(dims),
            dims=dims,
            strategy=data["strategy"],
            model=data.get("model", ""),
            fingerprint=data.get("fingerprint", ""),
            info=dict(data.get("info") or {}),
            version=data.get("version", "?"),
            seconds=float(data.get("seconds", 0.0)),
        )

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write the run (and its baseline) into the directory ``path``.

        The directory is built under a temporary name and renamed into place, so an
        interruption leaves either the complete directory or nothing. It holds
        ``results.json`` (config, history, summaries, data sources),
        ``masks.safetensors``, ``baseline_masks.safetensors`` (with a baseline),
        ``baseline_masks_seed<N>.safetensors`` for each further baseline (seed N),
        ``pruned_step.safetensors`` (when known), the ablation's retain values
        (``means``, ``peaks`` and ``resample.safetensors``, see :meth:`Ablation.save
        <unlearn_lens.ablations.Ablation.save>`), and those of ``forget_stats``,
        ``retain_stats``, ``initial_scores`` and ``scores`` that the run has, each as
        ``<name>.safetensors``.

        Args:
            path: the run directory to create.
            overwrite: replace an existing directory (only once the new one is complete).

        Returns:
            The directory.

        Raises:
            UnlearnLensError: ``path`` exists and is not empty (without ``overwrite``), or the
                baselines have no first ``baseline`` or share a seed.
        """
        path = Path(path)
        seeds = [b.seed for b in self.random_runs()]
        if (self.baselines and self.baseline is None) or len(set(seeds)) < len(seeds):
            raise UnlearnLensError(
                f"the random baselines need a first baseline and distinct seeds, got seeds {seeds} "
                f"and {len(self.baselines)} further baselines"
            )
        with atomic_dir(path, overwrite=overwrite) as tmp:
            stamp = {"fingerprint": self.fingerprint} if self.fingerprint else {}
            self.masks.save(tmp / "masks.safetensors", meta={"strategy": self.strategy, **stamp})
            for i, b in enumerate(self.random_runs()):
                b.masks.save(tmp / _baseline_masks_file(b, i), meta={"strategy": b.strategy, **stamp})
            self.ablation.save(tmp)
            for attr, (name, _) in _TENSOR_FILES.items():
                value = getattr(self, attr)
                if value is not None:
                    value.save(tmp / name)
            if self.pruned_step is not None:
                write_safetensors(
                    tmp / PRUNED_STEP_FILE,
                    dict(zip(("mlp", "attn"), self.pruned_step)),
                    {"format": "unlearn_lens.PrunedStep", **stamp},
                )
            extra = {"baselines": [b.to_dict() for b in self.baselines]} if self.baselines else {}
            write_json(
                tmp / "results.json",
                {
                    "library": "unlearn_lens",
                    "format": RESULTS_FORMAT,
                    "version": self.version,
                    "run": self.to_dict(),
                    "baseline": self.baseline.to_dict() if self.baseline is not None else None,
                    **extra,
                    "files": {f.name: file_sha256(f) for f in sorted(tmp.glob("*.safetensors"))},
                },
            )
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> PruneRun:
        """Read a run directory written by :meth:`save` (with its baselines, masks, statistics and scores).

        The directory is input from someone else: every file is checked before it is used
        (see :mod:`unlearn_lens.rundir`), and results format 2 (unlearn_lens 0.2) is read
        under today's names.

        Raises:
            UnlearnLensError: a missing, corrupt or inconsistent file, named in the message with its field.
        """
        path = Path(path)
        data = _read_results(path)
        results_path = path / "results.json"
        try:
            run = cls.from_dict(data["run"])
            baseline = cls.from_dict(data["baseline"]) if data.get("baseline") else None
            extras = [cls.from_dict(b) for b in data.get("baselines") or []] if baseline is not None else []
        except UnlearnLensError as exc:
            raise UnlearnLensError(f"file {str(results_path)!r}: {exc}") from exc
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise UnlearnLensError(f"file {str(results_path)!r} is incomplete or corrupt ({exc!r})") from exc
        run.baseline, run.baselines = baseline, extras
        names = [_baseline_masks_file(b, i) for i, b in enumerate(run.random_runs())]
        names += ["masks.safetensors", PRUNED_STEP_FILE, *ABLATION_FILES.values()]
        check_tensor_files(path, data, names + [name for name, _ in _TENSOR_FILES.values()])
        run.masks = _load_masks(path / "masks.safetensors", run)
        for i, b in enumerate(run.random_runs()):
            b.masks = _load_masks(path / _baseline_masks_file(b, i), b)
        for attr, (name, loader) in _TENSOR_FILES.items():
            if (path / name).is_file():
                setattr(run, attr, _of_dims(loader(path / name), run.dims, path / name))
        if (path / PRUNED_STEP_FILE).is_file():  # absent in older run directories: pruned_step stays None
            run.pruned_step = _load_pruned_step(path / PRUNED_STEP_FILE, run.dims)
        run.ablation = Ablation.load(path, run.config.ablations)
        for name in run.ablation.needs():
            _of_dims(getattr(run.ablation, name), run.dims, path / ABLATION_FILES[name])
        for b in run.random_runs():
            b.ablation = run.ablation
        return run


def _read_results(path: Path) -> dict[str, Any]:
    """A run directory's ``results.json`` in format-3 names, checked (:func:`~unlearn_lens.rundir.check_results`)."""
    results_path = path / "results.json"
    if not results_path.is_file():
        raise UnlearnLensError(f"{str(path)!r} is not a run directory: it has no results.json")
    data = read_json(results_path)
    if (
        not isinstance(data, dict)
        or data.get("format") not in READABLE_FORMATS
        or not isinstance(data.get("run"), dict)
    ):
        raise UnlearnLensError(
            f"file {str(results_path)!r} is not a results file of this version of unlearn_lens "
            f"(format {data.get('format') if isinstance(data, dict) else None!r}, expected {RESULTS_FORMAT})"
        )
    if data["format"] == 2:
        logger.info("%s: results format 2 (unlearn_lens 0.2), read under today's names", results_path)
        data = _results_of_format_2(data)
    return check_results(data, str(results_path))


def _of_dims(value: Any, dims: ModelDims, path: Path) -> Any:
    """``value`` (statistics, scores, histograms, a sample), refused unless it fits a model of ``dims``."""
    shapes = (tuple(value.mlp.shape), tuple(value.attn.shape)) if isinstance(value, Scores) else None
    fits = shapes == (dims.mlp_shape, dims.attn_shape) if shapes is not None else value.dims == dims
    if not fits:
        raise UnlearnLensError(f"file {str(path)!r} was made for a model of other unit shapes than this run's")
    return value


def _load_masks(path: Path, run: PruneRun) -> Masks:
    """A run's masks, which must hold exactly the units its last step records, layer by layer."""
    masks = Masks.load(path, dims=run.dims)
    if masks.mlp_counts() != run.final.mlp_counts or masks.attn_counts() != run.final.attn_counts:
        raise UnlearnLensError(
            f"file {str(path)!r} does not hold the units the run's last step records "
            f"(MLP per layer {masks.mlp_counts()} vs {run.final.mlp_counts}, attention {masks.attn_counts()} vs "
            f"{run.final.attn_counts})"
        )
    return masks


def _load_pruned_step(path: Path, dims: ModelDims) -> tuple[torch.Tensor, torch.Tensor]:
    t, _ = read_safetensors(path, "unlearn_lens.PrunedStep", "cpu")
    if [tuple(t[k].shape) if k in t else None for k in ("mlp", "attn")] != [dims.mlp_shape, dims.attn_shape]:
        raise UnlearnLensError(f"file {str(path)!r} is corrupt or made for another model")
    return t["mlp"].int(), t["attn"].int()


def _results_of_format_2(data: dict[str, Any]) -> dict[str, Any]:
    """A format-2 ``results.json`` under the names of format 3.

    Format 2 called a run's list of step records ``steps`` (format 3: ``history``), its
    shares of pruned units ``frac_mlp`` / ``frac_attn`` (``mlp_frac`` / ``attn_frac``),
    and the count of steps in its summary ``steps`` (``n_steps``); the rest is the same.
    """
    renamed = {"frac_mlp": "mlp_frac", "frac_attn": "attn_frac", "steps": "n_steps"}

    def run_of(run: Any) -> Any:
        if not isinstance(run, dict) or "steps" not in run:
            return run
        run = dict(run)
        run["history"] = [
            {renamed.get(k, k): v for k, v in step.items()} if isinstance(step, dict) else step
            for step in run.pop("steps") or []
        ]
        if isinstance(run.get("summary"), dict):
            run["summary"] = {renamed.get(k, k): v for k, v in run["summary"].items()}
        return run

    out = {**data, "format": RESULTS_FORMAT, "run": run_of(data["run"]), "baseline": run_of(data.get("baseline"))}
    if isinstance(data.get("baselines"), list):
        out["baselines"] = [run_of(b) for b in data["baselines"]]
    return out


def _baseline_masks_file(baseline: PruneRun, index: int) -> str:
    """``baseline_masks.safetensors`` for the first baseline, ``baseline_masks_seed<N>.safetensors`` for the others."""
    return "baseline_masks.safetensors" if index == 0 else f"baseline_masks_seed{baseline.seed}.safetensors"
