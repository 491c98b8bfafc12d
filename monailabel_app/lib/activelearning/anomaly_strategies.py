"""Which image to label next, among those without a final label, by the scores of one model."""
from __future__ import annotations

from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.strategy import Strategy

from ..scoring.anomaly_score import image_scores, pick_model


def unlabelled(datastore: Datastore) -> list[str]:
    return sorted(datastore.get_unlabeled_images())


class _UnlabelledScoreStrategy(Strategy):
    """Scores the unlabelled images with the model the request names; subclasses choose among them."""

    def __init__(self, description: str, configs: dict):
        super().__init__(description)
        self.configs = configs

    def unlabelled_scores(self, request, datastore: Datastore):
        config = pick_model(self.configs, request)
        return config, image_scores(config, datastore, unlabelled(datastore))


class MostAnomalous(_UnlabelledScoreStrategy):
    def __init__(self, configs: dict):
        super().__init__("Highest anomaly score among unlabelled images (params: model)", configs)

    def __call__(self, request, datastore: Datastore):
        config, scores = self.unlabelled_scores(request, datastore)
        if not scores:
            return {}
        image_id = max(scores, key=lambda key: scores[key]["score"])
        return {"id": image_id, "model": config.name, "reason": "highest score", **scores[image_id]}


class MostUncertain(_UnlabelledScoreStrategy):
    def __init__(self, configs: dict):
        super().__init__("Highest mean aleatoric uncertainty where the model gives one, else the score closest to "
                         "the image threshold (params: model)", configs)

    def __call__(self, request, datastore: Datastore):
        config, scores = self.unlabelled_scores(request, datastore)
        if not scores:
            return {}
        with_u = {key: value for key, value in scores.items() if value.get("uncertainty") is not None}
        if with_u:
            image_id = max(with_u, key=lambda key: with_u[key]["uncertainty"])
            reason = "highest mean aleatoric uncertainty"
        else:
            values = sorted(value["score"] for value in scores.values())
            threshold = next((v["image_threshold"] for v in scores.values() if v.get("image_threshold") is not None),
                             values[len(values) // 2])
            image_id = min(scores, key=lambda key: abs(scores[key]["score"] - threshold))
            reason = "score closest to the image threshold"
        return {"id": image_id, "model": config.name, "reason": reason, **scores[image_id]}
