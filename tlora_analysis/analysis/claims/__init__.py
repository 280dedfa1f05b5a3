"""The TLoRA paper's six findings, each read every way a careful reader could mean it (see :mod:`.registry`)."""

from . import distribution, geometry, patterns  # noqa: F401 - importing them registers their readings
from .registry import FINDINGS, PAPER_METHOD, READINGS, REFERENCE_METHOD, Reading, Verdict, last_common_epoch, paper_claims

__all__ = ["FINDINGS", "READINGS", "Reading", "Verdict", "paper_claims", "last_common_epoch", "PAPER_METHOD", "REFERENCE_METHOD"]
