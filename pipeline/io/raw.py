"""What a format reader hands to the pairing layer: tables, the modalities inside them, cell metadata."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from omicsclip.io.tables import CountTable, View


@dataclass
class RawInput:
    """The modalities found in one input (one or two files), before pairing and feature filtering.

    Attributes
    ----------
    fmt
        The resolved format name.
    files
        Input paths (hashed for provenance).
    rna, prot
        Views on the count tables; ``prot`` holds every antibody feature (isotype controls and
        hashtags are split off by name later); ``None`` when the input lacks the modality.
    hto
        Hashtag (cell multiplexing) counts, kept as per-cell metadata rather than features.
    obs, obs_table
        Per-cell metadata aligned with the rows of ``obs_table``.
    missing
        Why a modality is absent, e.g. ``{"prot": "no obsm['protein']"}`` (for error messages).
    closers
        Called by :meth:`close` (file handles, temporary folders).
    notes
        Things the user should know (logged and recorded in provenance).
    """

    fmt: str
    files: list[Path]
    rna: View | None = None
    prot: View | None = None
    hto: View | None = None
    obs: pd.DataFrame | None = None
    obs_table: CountTable | None = None
    missing: dict[str, str] = field(default_factory=dict)
    closers: list[Callable[[], None]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def close(self) -> None:
        """Run the closers (files, temporary folders) in reverse order; safe to call twice."""
        while self.closers:
            try:
                self.closers.pop()()
            except Exception:  # noqa: BLE001 - closing must not mask the real error
                pass
