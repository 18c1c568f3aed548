"""BRIMs and RIMs: recurrent networks of attention-routed independent modules."""

from brims.config import BRIMsConfig
from brims.network import BRIMs, BRIMsCell, BRIMsDiagnostics, BRIMsState, RIMs

__all__ = ["BRIMs", "BRIMsCell", "BRIMsConfig", "BRIMsDiagnostics", "BRIMsState", "RIMs"]
__version__ = "0.1.0"
