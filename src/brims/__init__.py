"""BRIMs and RIMs: recurrent networks of attention-routed independent modules."""

from brims.cell import BRIMsCell, BRIMsDiagnostics, BRIMsState
from brims.config import BRIMsConfig
from brims.model import BRIMs, RIMs

__all__ = ["BRIMs", "BRIMsCell", "BRIMsConfig", "BRIMsDiagnostics", "BRIMsState", "RIMs"]
__version__ = "0.2.0"
