from .anomaly_score import AnomalyScoring, image_scores

__all__ = ["AnomalyScoring", "image_scores"]
