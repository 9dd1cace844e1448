"""The only modules that touch Ray (Train, Tune, Data actors) and MLflow."""
