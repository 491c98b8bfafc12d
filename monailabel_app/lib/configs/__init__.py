from .anomaly import AnomalyModelConfig, model_configs

__all__ = ["AnomalyModelConfig", "model_configs"]
