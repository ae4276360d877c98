"""Questions beyond the paper, asked of a finished run.

* :mod:`~unlearn_lens.checks.relearn`: does fine-tuning on forget text bring the capability back?
* :mod:`~unlearn_lens.checks.membership`: can the model still tell its training texts apart?
* :mod:`~unlearn_lens.checks.overlap`: do runs with other forget sets prune the same units?
* :mod:`~unlearn_lens.checks.sweep`: how do the ablations and scoring methods compare on one model?
* :mod:`~unlearn_lens.checks.suite`: :func:`run_checks` runs relearning, membership and overlap
  for a run and keeps them beside it in ``checks.json``.

These modules build on the paper's stages (statistics, scores, pruning, evaluation,
the loop); nothing in the stages imports them.
"""

from __future__ import annotations
