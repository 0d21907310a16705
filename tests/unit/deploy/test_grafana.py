"""deploy/grafana/lmforge-dashboard.json: valid, and every metric it plots is one LMForge exposes."""

from __future__ import annotations

import json
import re
from pathlib import Path

from gateway.metrics_registry import GatewayMetrics
from manager.metrics import ManagerMetrics
from manager.protocol import BudgetInfo

DASHBOARD = Path(__file__).parents[3] / "deploy" / "grafana" / "lmforge-dashboard.json"


def exposed_families() -> set[str]:
    manager = ManagerMetrics(lambda: ([], BudgetInfo(total_bytes=1, used_bytes=0, source="config")), lambda: 0.0)
    text = GatewayMetrics().exposition().decode() + manager.exposition()
    return {base(name) for name in re.findall(r"^# TYPE (\S+) ", text, re.MULTILINE)} | {"lmforge_manager_up"}


def base(name: str) -> str:
    return re.sub(r"_(total|bucket|count|sum)$", "", name)


def test_every_panel_plots_a_metric_lmforge_exposes() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = {base(name) for e in exprs for name in re.findall(r"lmforge_\w+", e)}
    assert used and used <= exposed_families(), used - exposed_families()
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
