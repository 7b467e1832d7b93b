"""Progress display: a tqdm bar with loss, accuracy and throughput on a terminal, nothing per batch otherwise
(the trainer prints one plain line per epoch either way, so logs stay readable)."""

from __future__ import annotations

import sys
from typing import Optional, Union

from tqdm.auto import tqdm

__all__ = ["Progress"]


class _NoBar:
    def update(self, **_metrics: float) -> None:
        pass

    def close(self) -> None:
        pass


class _Bar:
    def __init__(self, total: int, description: str) -> None:
        self._bar = tqdm(total=total, desc=description, leave=False, dynamic_ncols=True, file=sys.stderr)

    def update(self, *, loss: float, acc: float, throughput: float) -> None:
        self._bar.set_postfix_str(f"loss {loss:.4f}  acc {100 * acc:.1f}%  {throughput:.0f} samples/s", refresh=False)
        self._bar.update(1)

    def close(self) -> None:
        self._bar.close()


class Progress:
    def __init__(self, enabled: Optional[bool] = None, quiet: bool = False) -> None:
        if enabled is None:
            enabled = sys.stderr.isatty()
        self.enabled = enabled and not quiet

    def bar(self, total: int, description: str) -> Union[_Bar, _NoBar]:
        return _Bar(total, description) if self.enabled else _NoBar()
