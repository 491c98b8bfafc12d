from .anomaly_strategies import MostAnomalous, MostUncertain

__all__ = ["MostAnomalous", "MostUncertain"]
