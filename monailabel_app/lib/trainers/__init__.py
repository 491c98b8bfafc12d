from .anomaly_train import AnomalyTrainTask, datastore_items

__all__ = ["AnomalyTrainTask", "datastore_items"]
