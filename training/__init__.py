"""perfcost offline pipelines: data, collection, features, training, evaluation (one module per stage)."""
