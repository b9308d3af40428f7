"""Training telemetry: metrics.jsonl, a PNG of the curves, and MLflow when it is set up.

metrics.jsonl is the source of truth (one JSON object per optimizer step, eval
rows carry eval_loss); the plot and MLflow are views of it. A resumed run
appends to the same file, dropping rows past the checkpoint it resumed from.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

FIELDS = ("step", "epoch", "loss", "eval_loss", "grad_norm", "lr", "tokens_per_s")


class MetricsLog:
    def __init__(self, path: str | Path, *, resume_step: int | None = None):
        self.path = Path(path)
        self.rows: list[dict[str, Any]] = []
        if resume_step is not None and self.path.is_file():
            self.rows = [r for r in read_metrics(self.path) if r.get("step", 0) <= resume_step]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("w", encoding="utf-8") as f:
            for row in self.rows:
                f.write(json.dumps(row) + "\n")
        self.mlflow = _MlflowSink.start()

    def log(self, **row: Any) -> None:
        clean = {k: _finite(v) for k, v in row.items() if v is not None}
        self.rows.append(clean)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(clean) + "\n")
        if self.mlflow:
            self.mlflow.log(clean)

    def close(self, params: dict[str, Any] | None = None, artifacts: list[Path] = ()) -> None:
        if self.mlflow:
            self.mlflow.finish(params or {}, artifacts)
            self.mlflow = None


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            rows.append(json.loads(line))
    return rows


def plot(metrics: str | Path, png: str | Path, title: str = "") -> Path:
    """Loss and eval loss (left axis) and grad norm (right axis) against the optimizer step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics)
    train, evals, grads = (_series(rows, key) for key in ("loss", "eval_loss", "grad_norm"))
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss", color="tab:blue", linewidth=1)
    if evals:
        ax.plot(*zip(*evals, strict=True), "o-", label="eval loss", color="tab:orange")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats/token)")
    handles, labels = ax.get_legend_handles_labels()
    if grads:
        ax2 = ax.twinx()
        ax2.plot(*zip(*grads, strict=True), label="grad norm", color="tab:gray", alpha=0.6, linewidth=1)
        ax2.set_ylabel("grad norm")
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    if handles:
        ax.legend(handles, labels, loc="upper right")
    ax.set_title(title or Path(metrics).parent.name)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    png = Path(png)
    fig.savefig(png)
    plt.close(fig)
    return png


def _series(rows: list[dict[str, Any]], key: str) -> list[tuple[int, float]]:
    return [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]


class _MlflowSink:
    """Logs to MLflow only when it is importable and MLFLOW_TRACKING_URI says where."""

    def __init__(self, mlflow: Any):
        self.mlflow = mlflow
        self.run = mlflow.start_run(run_name=os.environ.get("MLFLOW_RUN_NAME"))

    @classmethod
    def start(cls) -> _MlflowSink | None:
        if not os.environ.get("MLFLOW_TRACKING_URI"):
            return None
        try:
            import mlflow
        except ImportError:
            return None
        return cls(mlflow)

    def log(self, row: dict[str, Any]) -> None:
        step = int(row.get("step", 0))
        metrics = {k: float(v) for k, v in row.items() if k != "step" and isinstance(v, (int, float))}
        self.mlflow.log_metrics(metrics, step=step)

    def finish(self, params: dict[str, Any], artifacts: list[Path]) -> None:
        self.mlflow.log_params({k: str(v) for k, v in params.items()})
        for path in artifacts:
            if Path(path).is_file():
                self.mlflow.log_artifact(str(path))
        self.mlflow.end_run()


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf; keep the fact visible
    if isinstance(value, float):
        return round(value, 6)
    return value
