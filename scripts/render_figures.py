"""Render the main figures of a finished run to PNG files (for the README).

Usage::

    python scripts/render_figures.py RUN_DIR [--out assets]

Each figure is written as a standalone HTML page and photographed by headless
Chromium (``/usr/bin/chromium``, or ``$CHROMIUM``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
from pathlib import Path

import unlearn_lens as ul
from unlearn_lens import viz


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "assets"))
    args = parser.parse_args()
    run_dir, out = Path(args.run_dir), Path(args.out)
    selective = ul.PruneRun.load(run_dir)  # with its random baseline
    scores = selective.initial_scores
    figures = {
        "pruning_effects": (viz.pruning_effects(selective), 1200, 700),
        "separability": (viz.separability_trajectory(selective), 800, 650),
        "specialisation_mlp": (viz.specialisation_map(scores, selective.masks, kind="mlp"), 1200, 500),
        "head_map": (viz.head_map(scores, selective.masks), 1100, 450),
        "pruned_per_layer": (viz.pruned_per_layer(selective), 900, 500),
    }
    chromium = os.environ.get("CHROMIUM", "/usr/bin/chromium")
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for name, (fig, width, height) in figures.items():
            fig.update_layout(width=width, height=height, margin={"t": 70, "b": 60, "l": 70, "r": 40})
            page = Path(tmp) / f"{name}.html"
            fig.write_html(page, include_plotlyjs=True, full_html=True, config={"displayModeBar": False})
            subprocess.run(
                [
                    chromium,
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--no-first-run",
                    "--hide-scrollbars",
                    f"--user-data-dir={tmp}/profile",
                    f"--window-size={width + 20},{height + 20}",
                    "--virtual-time-budget=5000",
                    f"--screenshot={out / f'{name}.png'}",
                    page.as_uri(),
                ],
                check=True,
                capture_output=True,
            )
            print(out / f"{name}.png")


if __name__ == "__main__":
    main()
