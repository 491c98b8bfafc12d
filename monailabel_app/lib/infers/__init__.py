from .anomaly_infer import AnomalyInferTask

__all__ = ["AnomalyInferTask"]
