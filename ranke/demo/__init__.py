"""The demo world's pipeline stages: the dataset (dataset_stage), the four base models (train) and
their quality bars (quality). Used only when the config says `demo.enabled`."""
