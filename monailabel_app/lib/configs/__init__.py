from .anomaly import AnomalyTaskConfig, model_configs

__all__ = ["AnomalyTaskConfig", "model_configs"]
