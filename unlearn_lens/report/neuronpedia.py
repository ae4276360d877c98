"""Dashboard records in the dashboard batch layout of SAEDashboard, which Neuronpedia reads.

SAEDashboard's ``NeuronpediaDashboardBatch`` holds the features of one source (an SAE, here
the MLP or the attention neurons of one layer): ``{"model_id", "layer", "sae_set",
"features": [...]}``. :func:`neuronpedia_batches` makes one batch per layer and unit kind
from :func:`~unlearn_lens.report.dashboards.unit_dashboards` records; :data:`MAPPING` says
where each feature field comes from. Fields with nothing to fill (neuron alignment,
correlated neurons and features, decoder weights) are empty lists, as SAEDashboard writes
them when it does not compute them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = ["MAPPING", "SAE_SETS", "neuronpedia_batches"]

SAE_SETS = {"mlp": "mlp-neurons", "attn": "attn-neurons"}
"""The ``sae_set`` of each unit kind."""

MAPPING = {
    "model_id": "the run's model label",
    "layer": "layer",
    "sae_set": '"mlp-neurons" or "attn-neurons" (kind)',
    "feature_index": "index (the flat index in the layer)",
    "pos_str, pos_values": "logits.promoted",
    "neg_str, neg_values": "logits.suppressed",
    "frac_nonzero": "the fraction of tokens with x > 0, forget and retain together (stats.*.fires)",
    "freq_hist_data_bar_values, freq_hist_data_bar_heights": "bin centres of histogram.edges, and the forget and "
    "retain counts added",
    "logits_hist_data_bar_values, logits_hist_data_bar_heights": "bin centres of logits.histogram.edges, its counts",
    "n_prompts_total, n_tokens_in_prompt": "the token rows scanned (stats.*.rows added) and their length",
    "dataset": "the forget dataset's name",
    "activations": "top examples (bin_min -1, bin_max the highest activation, bin_contains -1, as SAEDashboard "
    "writes its top group), then each quantile band (bin_min, bin_max its range, bin_contains its share of the "
    "sampled tokens); tokens and values are the example's tokens and acts",
}
"""Where each field of a Neuronpedia feature comes from in a dashboard record."""

_EMPTY = (
    "neuron_alignment_indices",
    "neuron_alignment_values",
    "neuron_alignment_l1",
    "correlated_neurons_indices",
    "correlated_neurons_l1",
    "correlated_neurons_pearson",
    "correlated_features_indices",
    "correlated_features_l1",
    "correlated_features_pearson",
    "decoder_weights_dist",
)


def _centres(edges: list[float]) -> list[float]:
    return [round((a + b) / 2, 6) for a, b in zip(edges, edges[1:])]


def _activation(example: dict[str, Any], bin_min: float, bin_max: float, bin_contains: float) -> dict[str, Any]:
    values = [v if v is not None else 0.0 for v in example["acts"]]
    return {
        "bin_min": bin_min,
        "bin_max": bin_max,
        "bin_contains": bin_contains,
        "tokens": example["tokens"],
        "values": values,
    }


def _feature(record: dict[str, Any], dataset: str) -> dict[str, Any]:
    stats = [s for s in record["stats"].values() if s.get("tokens")]
    tokens = sum(s["tokens"] for s in stats)
    fires = sum(s["fires"] * s["tokens"] for s in stats) / tokens if tokens else 0.0
    hist = record["histogram"]
    heights = [sum(counts) for counts in zip(*(hist[name] for name in record["stats"]))]
    logits = record["logits"]
    top = record["top"]
    peak = max((e["acts"][e["max_pos"]] for e in top), default=0.0)
    activations = [_activation(e, -1, peak, -1) for e in top]
    share = 1 / len(record["quantiles"]) if record["quantiles"] else 0.0
    for band in record["quantiles"]:
        lo, hi = band["range"]
        activations += [_activation(e, lo, hi, share) for e in band["examples"]]
    return {
        "feature_index": record["index"],
        **{name: [] for name in _EMPTY},
        "neg_str": [t for t, _ in logits["suppressed"]],
        "neg_values": [v for _, v in logits["suppressed"]],
        "pos_str": [t for t, _ in logits["promoted"]],
        "pos_values": [v for _, v in logits["promoted"]],
        "frac_nonzero": fires,
        "freq_hist_data_bar_values": _centres(hist["edges"]),
        "freq_hist_data_bar_heights": heights,
        "logits_hist_data_bar_heights": logits["histogram"]["counts"],
        "logits_hist_data_bar_values": _centres(logits["histogram"]["edges"]),
        "n_prompts_total": sum(s.get("rows", 0) for s in record["stats"].values()),
        "n_tokens_in_prompt": 0,
        "dataset": dataset,
        "activations": activations,
    }


def neuronpedia_batches(
    records: Iterable[dict[str, Any]], *, model_id: str, dataset: str, row_length: int
) -> list[dict[str, Any]]:
    """One SAEDashboard ``NeuronpediaDashboardBatch`` per layer and unit kind, in the order the records come.

    Args:
        records: dashboard records (:data:`~unlearn_lens.report.dashboards.FIELDS`).
        model_id: the model's name on the page.
        dataset: the forget dataset's name.
        row_length: the length of the rows scanned (``n_tokens_in_prompt``).
    """
    batches: dict[tuple[str, int], dict[str, Any]] = {}
    for record in records:
        key = (record["kind"], record["layer"])
        if key not in batches:
            batches[key] = {
                "model_id": model_id,
                "layer": record["layer"],
                "sae_set": SAE_SETS[record["kind"]],
                "features": [],
            }
        feature = _feature(record, dataset)
        feature["n_tokens_in_prompt"] = row_length
        batches[key]["features"].append(feature)
    return list(batches.values())
