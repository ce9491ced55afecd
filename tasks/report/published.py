"""Published numbers, each tied to its cited work and table, beside this run's (none are computed here)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from tasks.report.data import BASE_METRICS, Evaluation

PUBLISHED_RESULTS = Path(__file__).resolve().parents[1] / "data" / "published_results.yaml"

COMPARED = ("csim", "lpips", "fid", "apd", "aed")  # the paper's columns that this pipeline measures too
LABELS = {**{name: label for name, (label, _) in BASE_METRICS.items()}, "fid": "FID"}
ARROWS = {"csim": "↑", "lpips": "↓", "fid": "↓", "apd": "↓", "aed": "↓"}
WORK_FIELDS = ("key", "method", "citation", "url")
RESULT_FIELDS = ("work", "table", "protocol", "dataset", "metric", "value")


@dataclass(frozen=True)
class Published:
    works: pd.DataFrame  # key, method, citation, url
    results: pd.DataFrame  # one row per number: its work's fields, table, protocol, dataset, metric, value, note


def load_published(path: str | Path | None = None) -> Published:
    """The published numbers, each tied to a cited work (with its URL) and the table it was read from; an entry
    that lacks any of that is refused, so no number enters the report without its source."""
    path = Path(path) if path else PUBLISHED_RESULTS
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    works = {}
    for work in data.get("works") or []:
        _require(work, WORK_FIELDS, path, "work")
        works[work["key"]] = {name: str(work[name]).strip() for name in WORK_FIELDS}
    rows = []
    for result in data.get("results") or []:
        _require(result, RESULT_FIELDS, path, "published result")
        if result["work"] not in works:
            raise ValueError(f"{path}: published result {result} cites {result['work']!r}, which is not among works")
        if result["metric"] not in COMPARED:
            raise ValueError(f"{path}: metric {result['metric']!r} is not one of {', '.join(COMPARED)}")
        rows.append({**works[result["work"]], "table": str(result["table"]), "protocol": str(result["protocol"]),
                     "dataset": str(result["dataset"]), "metric": result["metric"], "value": float(result["value"]),
                     "note": str(result.get("note") or "")})
    return Published(pd.DataFrame(list(works.values()), columns=list(WORK_FIELDS)),
                     pd.DataFrame(rows, columns=[*WORK_FIELDS, "table", "protocol", "dataset", "metric", "value",
                                                 "note"]))


def _require(entry: dict, names: Sequence[str], path: Path, what: str) -> None:
    missing = [name for name in names if entry.get(name) in (None, "")]
    if missing:
        raise ValueError(f"{path}: a {what} lacks {', '.join(missing)}: {entry}")


def comparison_table(published: Published, tables: pd.DataFrame, evaluation: Evaluation) -> pd.DataFrame:
    """The paper's metrics side by side: one row per published (work, table, protocol, dataset), then one
    "this run" row per protocol, naming the networks that measured this run's numbers."""
    rows = []
    keys = ["method", "citation", "url", "table", "protocol", "dataset"]
    for (method, citation, url, table, protocol, dataset), group in published.results.groupby(keys, sort=False):
        rows.append({"method": method, "protocol": protocol, "dataset": dataset,
                     **dict(zip(group["metric"], group["value"])), "source": f"{citation} {table}", "url": url,
                     "note": "; ".join(sorted({note for note in group["note"] if note}))})
    for protocol in evaluation.protocols:
        measured = tables[tables["protocol"] == protocol].set_index("metric") if len(tables) else pd.DataFrame()
        values = {name: measured.loc[name, "mean"] if not measured.loc[name, "not_measured"]
                  else f"not measured ({measured.loc[name, 'not_measured']})"
                  for name in COMPARED if name in measured.index}
        networks = [f"{LABELS[name]}: {measured.loc[name, 'network']}" for name in values]
        scores, why = evaluation.summary.protocols[protocol].distribution, evaluation.distribution_not_measured(protocol)
        values["fid"] = f"not measured ({why})" if why else scores.fid
        networks.append(f"FID: {scores.network or 'not measured'}")
        rows.append({"method": f"this run ({evaluation.weights_set})", "protocol": protocol,
                     "dataset": evaluation.dataset, **values, "source": "this evaluation", "url": "",
                     "note": "; ".join(networks)})
    return pd.DataFrame(rows, columns=["method", "protocol", "dataset", *COMPARED, "source", "url", "note"])
