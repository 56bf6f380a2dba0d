"""The Grafana dashboard (packaging/grafana/goodsd.json) imports into a current Grafana and
shows goodsd's own metrics.

It is checked against packaging/grafana/dashboard.schema.json, the JSON schema of Grafana's
dashboard model made from the types Grafana publishes (@grafana/schema; update-schema.sh
beside it regenerates the schema). Every query must name metrics that goodsd exports (the
README's metrics table), through the datasource variable, so that an import asks for nothing.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "packaging" / "grafana"
DASHBOARD = json.loads((GRAFANA / "goodsd.json").read_text())
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def panels() -> list[dict[str, object]]:
    return [p for p in DASHBOARD["panels"] if p["type"] != "row"]


def exported_metrics() -> set[str]:
    """Metric names as Prometheus sees them, from the README's table (counters get _total)."""
    readme = (ROOT / "README.md").read_text()
    rows = re.findall(r"^\| `(goodsd_\w+)(?:\{[^}]*\})?` \| (gauge|counter) \|", readme, re.M)
    return {name for name, _ in rows}


def test_the_dashboard_is_a_valid_grafana_dashboard() -> None:
    schema = json.loads((GRAFANA / "dashboard.schema.json").read_text())
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in jsonschema.Draft7Validator(schema).iter_errors(DASHBOARD)
    ]
    assert errors == []
    # And panel ids are unique and every panel fits the 24-column grid
    ids = [p["id"] for p in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))
    for panel in DASHBOARD["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]


def test_the_datasource_is_a_variable_used_everywhere() -> None:
    variables = {v["name"]: v for v in DASHBOARD["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for variable in variables.values():
        if variable["type"] == "query":
            assert variable["datasource"] == DATASOURCE, variable["name"]
    # Then no panel or query names a datasource of one Grafana (no __inputs to map at import)
    assert "__inputs" not in DASHBOARD
    for panel in panels():
        assert panel["datasource"] == DATASOURCE, panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]


def test_every_query_uses_metrics_goodsd_exports() -> None:
    exported = exported_metrics()
    assert "goodsd_queue_backlog" in exported and "goodsd_child_restarts_total" in exported
    used = set()
    for panel in panels():
        for target in panel["targets"]:
            used.update(re.findall(r"\bgoodsd_\w+", target["expr"]))
    for variable in DASHBOARD["templating"]["list"]:
        if variable["type"] == "query":
            used.update(re.findall(r"\bgoodsd_\w+", variable["query"]["query"]))
    assert used <= exported, used - exported


def test_the_panels_cover_what_an_operator_watches() -> None:
    # Given the list: backlog, in flight, retry-waiting, dead, done/failed rates,
    # children by state, restarts, producer paused, reload success
    queries = {p["title"]: " ".join(t["expr"] for t in p["targets"]) for p in panels()}
    wanted = {
        "goodsd_queue_backlog",
        "goodsd_queue_in_flight",
        "goodsd_queue_retry_waiting",
        "goodsd_queue_dead",
        "goodsd_queue_items_done_total",
        "goodsd_queue_items_failed_total",
        "goodsd_children",
        "goodsd_child_restarts_total",
        "goodsd_producer_paused",
        "goodsd_last_reload_success",
    }
    shown = {name for text in queries.values() for name in re.findall(r"goodsd_\w+", text)}
    assert wanted <= shown, wanted - shown
    # And every panel says what it shows
    for panel in panels():
        assert panel.get("description"), panel["title"]


def test_queue_figures_are_aggregated_with_max() -> None:
    # goodsd_queue_* are read from Redis and the same on every master: summing them over
    # masters would multiply them
    for panel in panels():
        for target in panel["targets"]:
            if "goodsd_queue_" in target["expr"]:
                assert "sum" not in target["expr"], (panel["title"], target["expr"])
