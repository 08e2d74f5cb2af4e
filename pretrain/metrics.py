"""Run logging: JSON lines, TensorBoard scalars and a human-readable text log (main process only)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tqdm import tqdm


def _iteration(line: str) -> float:
    """Iteration of a metrics line; a line cut short by a kill counts as after any resume point."""
    try:
        return json.loads(line)["iteration"]
    except (ValueError, KeyError, TypeError):
        return float("inf")


class RunLogger:
    """Appends to ``metrics.jsonl`` / ``train.log`` and writes TensorBoard events under ``tb/``.

    On resume from iteration ``start``, records of later iterations (written after the checkpoint by
    an interrupted run) are dropped so the trajectory has no duplicates.
    """

    def __init__(self, run_dir: Path, enabled: bool, start: int = 0) -> None:
        self.enabled = enabled
        if not enabled:
            return
        self.metrics_path, self.text_path = run_dir / "metrics.jsonl", run_dir / "train.log"
        if self.metrics_path.exists():
            kept = [line for line in self.metrics_path.read_text().splitlines() if _iteration(line) <= start]
            self.metrics_path.write_text("".join(f"{line}\n" for line in kept))
        from torch.utils.tensorboard import SummaryWriter  # slow import, main process only

        self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=start)
        self.metrics = open(self.metrics_path, "a", buffering=1)  # noqa: SIM115 - closed in close()
        self.text = open(self.text_path, "a", buffering=1)  # noqa: SIM115

    def info(self, message: str) -> None:
        if self.enabled:
            tqdm.write(message)
            self.text.write(message + "\n")

    def record(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.metrics.write(json.dumps(record) + "\n")
        step = record["iteration"]
        for key, value in record.items():
            if key != "iteration" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.tb.add_scalar(key, value, step)
        for name, value in record.get("proj_std_by_role", {}).items():
            self.tb.add_scalar(f"proj_std/{name}", value, step)

    def close(self) -> None:
        if self.enabled:
            self.tb.close()
            self.metrics.close()
            self.text.close()
