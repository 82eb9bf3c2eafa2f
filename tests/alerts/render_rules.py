#!/usr/bin/env python3
"""Writes the chart's alerting rules as plain Prometheus rule files, for
promtool (tests/integration/alerts.rs runs this, then `promtool check rules`
and `promtool test rules`).

    python3 tests/alerts/render_rules.py OUT_DIR

The rules live once, in helm/orderflow/files/alerts.yaml, a Helm template
(release namespace, workload names, thresholds); the chart renders them into
a PrometheusRule. This renders the chart as Helm would (helm-python-sdk, the
Helm engine as a library) for release "orderflow" in namespace "orders",
takes the PrometheusRule's spec (a rule file: `groups:`) and writes it to
  OUT_DIR/orderflow.rules.yaml         default values
  OUT_DIR/orderflow-static.rules.yaml  worker.staticMembership (the workers a StatefulSet)

Exits 3 when a tool is missing, saying how to install it.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = ROOT / "helm" / "orderflow"
INSTALL_HINT = "pip install -r tests/deploy/requirements.txt"
RELEASE, NAMESPACE = "orderflow", "orders"
RENDERS = {
    "orderflow.rules.yaml": {},
    "orderflow-static.rules.yaml": {"worker": {"staticMembership": True}},
}

try:
    import yaml
    import helm_python as helm
except ImportError as exc:  # pragma: no cover - depends on the machine
    print(f"MISSING TOOL: {exc.name or exc} is not importable from {sys.executable}")
    print(f"Install it with:  {INSTALL_HINT}")
    sys.exit(3)


def rule_file(chart: "helm.Chart", values: dict) -> dict:
    values = {**values, "metrics": {"prometheusRule": {"enabled": True}}}
    rendered = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    rules = [doc for path, text in rendered.items() if not path.endswith("NOTES.txt")
             for doc in yaml.safe_load_all(text) if doc and doc.get("kind") == "PrometheusRule"]
    if len(rules) != 1:
        raise SystemExit(f"expected one PrometheusRule with metrics.prometheusRule.enabled, got {len(rules)}")
    return rules[0]["spec"]


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__)
        return 2
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    chart = helm.Chart.load(CHART_DIR)
    try:
        for name, values in RENDERS.items():
            (out / name).write_text(yaml.safe_dump(rule_file(chart, values), sort_keys=False, width=1000))
            print(out / name)
    finally:
        chart.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
