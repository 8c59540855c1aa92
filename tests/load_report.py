"""The table of what each hostile-load scenario sent and what became of it, filled by the tests
that run those scenarios (`make load-report` runs them and prints it).

Every request a scenario sends ends in one of three columns:
- admitted: the server took it and answered it: with its rewards, or with an error about that
  request itself (its item broke the forward pass, its reward came out NaN, a drain ended);
- refused: turned away at the door with a clear status (429, 503, 401...) or a connection the
  server closed because the request never arrived in full (a read deadline);
- lost: neither; the scenarios' tests assert that this is 0.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

# Where the table goes when set (`make load-report` sets it).
REPORT_VARIABLE = "REWARD_LOAD_REPORT"
MIB = 1024 * 1024


@dataclass
class Tally:
    scenario: str
    load: str
    admitted: int = 0
    refused: int = 0
    lost: int = 0
    peak_growth_bytes: int | None = None  # the server's peak RSS over the scenario, less its start


@dataclass
class LoadReport:
    tallies: list[Tally] = field(default_factory=list)

    def record(self, tally: Tally) -> Tally:
        self.tallies.append(tally)
        return tally

    def markdown(self) -> str:
        lines = [
            "| scenario | load sent | peak memory growth | admitted | refused | lost |",
            "|---|---|---|---|---|---|",
        ]
        for t in self.tallies:
            growth = "" if t.peak_growth_bytes is None else f"{t.peak_growth_bytes / MIB:.0f} MiB"
            lines.append(
                f"| {t.scenario} | {t.load} | {growth} | {t.admitted:,} | {t.refused:,} | "
                f"{t.lost:,} |"
            )
        return "\n".join(lines) + "\n"

    def write_if_asked(self) -> None:
        path = os.environ.get(REPORT_VARIABLE)
        if path and self.tallies:
            Path(path).write_text(self.markdown())
